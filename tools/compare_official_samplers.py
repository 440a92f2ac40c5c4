"""Run the official SDDPM samplers (a local copy of AndyCao1125/SDDPM's diffusion.py) beside ours on one
stub denoiser and the same x_T, and print the largest difference per sampler.

    .venv/bin/python tools/compare_official_samplers.py --official path/to/SDDPM/diffusion.py

Not part of the test suite: the official file is not ours to ship. The tests derive the same samplers by hand
(tests/test_official_samplers.py); this checks those derivations against the real code.
"""
from __future__ import annotations

import argparse
import importlib.util

import torch

from sddpm.samplers import ddim_sample, official_ddim_sample, official_ddpm_sample
from sddpm.schedule import NoiseSchedule


class Stub(torch.nn.Module):
    """A smooth eps of x and t, an nn.Module because the official sampler resets it as a network."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.7 * torch.tanh(1.3 * x) + 0.2 * torch.sin(t.float()[:, None, None, None] / 97.0 + x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="the official diffusion.py")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("official_diffusion", args.official)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)

    stub, schedule = Stub(), NoiseSchedule.linear()
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    print("| sampler | steps | max abs diff against the official code |")
    print("|---|---:|---:|")
    for n in (10, 30, 100, 1000):
        ref = official.GaussianDiffusionSampler(stub, 1e-4, 0.02, 1000, img_size=8, mean_type="epsilon",
                                                sample_type="ddim", sample_steps=n)(x_T.clone())
        for name, ours in (("official-ddim", official_ddim_sample(stub, x_T.clone(), schedule, steps=n)),
                           ("ddim", ddim_sample(stub, x_T.clone(), schedule, steps=n)),
                           ("ddim --clip-x0", ddim_sample(stub, x_T.clone(), schedule, steps=n, clip_x0=True))):
            print(f"| {name} | {n} | {float((ours - ref).abs().max()):.2e} |")
    # The official DDPM draws its noise from the global generator, ours from the one it is given: seeded
    # alike, both draw the same numbers in the same order.
    torch.manual_seed(11)
    ref = official.GaussianDiffusionSampler(stub, 1e-4, 0.02, 1000, img_size=8, mean_type="epsilon",
                                            var_type="fixedlarge", sample_type="ddpm", sample_steps=1000)(x_T.clone())
    ours = official_ddpm_sample(stub, x_T.clone(), schedule, generator=torch.Generator().manual_seed(11))
    print(f"| official-ddpm | 1000 | {float((ours - ref).abs().max()):.2e} |")


if __name__ == "__main__":
    main()
