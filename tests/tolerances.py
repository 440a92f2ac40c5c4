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
# The float64 chip graph against the float64 model: the same maths with BN folded and 1x1 convs multiplied
# into 3x3 ones, i.e. summed in another order; ~1e-15 relative on eps of order 10, with a wide margin.
FLOAT64_REWRITE_ATOL = 1e-10
# onnxruntime against PyTorch, float32, where every spike agrees: the same maths, the convolutions summed in
# another order; ~1e-6 on eps of order 1-10 (the first rung of the verification ladder, docs/architecture.md
# section 2).
ONNX_ATOL = 1e-4
# diffusers' DDPMScheduler keeps alphas_cumprod in float32: near t = 0, sqrt(1 - abar) (~0.015 at t = 1) loses
# 6e-8 / 2.2e-4 ~ 3e-4 of its value to cancellation, a few 1e-6 on noise of order 1.
DIFFUSERS_SCHEDULE_ATOL = 1e-5
# Inception pool3 features (values up to ~6) recomputed on another thread count or CPU: float32 convolutions
# summed in another order, measured 4e-6 apart here; brightening the images by 4 of 255 moves them by 0.15.
INCEPTION_FEATURE_ATOL = 1e-3
# A library's float32 membrane readout (NIR's LI, Norse's LIBoxCell or Sinabs' ExpLeak) against our float64
# discretization of its file: float32 rounding of sums over tens of weights, ~3e-7 on voltages up to ~3, measured.
LIBRARY_READOUT_RTOL = 1e-5
LIBRARY_READOUT_ATOL = 1e-5
