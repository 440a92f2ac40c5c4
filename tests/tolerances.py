"""Every float tolerance of the test suite, named, with the reason for its size."""

# float32 gradients of the same maths summed in a different order (fused IF backward vs autograd).
GRAD_RTOL = 1e-5
GRAD_ATOL = 1e-6
# float32 forward of the same network computed along two code paths (e.g. a conv computed once vs per step).
FORWARD_ATOL = 1e-5
# float64 closed forms of the noise schedule against the implementation.
SCHEDULE_ATOL = 1e-12
# An oracle denoiser drives a sampler to its target up to float32 rounding accumulated over the steps.
SAMPLER_ATOL = 1e-4
