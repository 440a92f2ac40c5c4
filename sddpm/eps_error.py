"""How well a denoiser predicts the noise, per diffusion step, split into the part that comes from each
image's mean.

For fixed test images x0 and fixed noise eps, the error e = eps_hat(x_t, t) - eps of one image and
channel over its P pixels splits exactly as

    mean_p e^2 = (mean_p e)^2 + var_p(e)            (MSE = mean part + spatial part)

A network that cannot see the per-image mean of the noise (GroupNorm with one channel per group removes it
from every feature map) leaves the mean part at E[(mean_p eps)^2] = 1 / P: 1/1024 = 0.000977 for 32x32
images, at every t in expectation; `blind_mean_part` is its value on the noise actually drawn (the mean
part of a network whose prediction has zero spatial mean), printed beside the measurement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import ConfigError
from .schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_STEPS = (0, 50, 100, 250, 500, 750, 999)


@dataclass(frozen=True)
class EpsError:
    t: int
    mse: float  # mean over images, channels and pixels of (eps_hat - eps)^2
    mean_part: float  # mean over images and channels of (spatial mean of eps_hat - eps)^2
    blind_mean_part: float  # mean_part of a prediction with zero spatial mean, on the same draws (about 1 / pixels)

    def to_dict(self) -> dict[str, float]:
        return {"t": self.t, "mse": self.mse, "mean_part": self.mean_part, "blind_mean_part": self.blind_mean_part}


@torch.no_grad()
def eps_error_by_step(denoiser: Denoiser, x0: torch.Tensor, schedule: NoiseSchedule,
                      steps: tuple[int, ...] = DEFAULT_STEPS, seed: int = 0, batch_size: int = 64) -> list[EpsError]:
    """The eps MSE and its per-image-mean part at each diffusion step in `steps`, on images x0 in [-1, 1].

    The noise is drawn once from `seed` and reused at every step, so steps are compared on the same draws.
    """
    if x0.dim() != 4:
        raise ConfigError(f"x0 must be [N, C, H, W], got shape {list(x0.shape)}")
    for t in steps:
        if not 0 <= t < schedule.steps:
            raise ConfigError(f"diffusion step {t} is outside [0, {schedule.steps - 1}]")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    cells = x0.shape[0] * x0.shape[1]
    blind = float(noise.double().mean(dim=(2, 3)).pow(2).sum()) / cells
    results = []
    for t in steps:
        sq_sum, mean_sq_sum = 0.0, 0.0
        for start in range(0, x0.shape[0], batch_size):
            x, eps = x0[start:start + batch_size], noise[start:start + batch_size]
            tt = torch.full((x.shape[0],), t, dtype=torch.long)
            err = (denoiser(schedule.q_sample(x, tt, eps), tt) - eps).double()
            sq_sum += float(err.pow(2).mean(dim=(2, 3)).sum())
            mean_sq_sum += float(err.mean(dim=(2, 3)).pow(2).sum())
        results.append(EpsError(t, sq_sum / cells, mean_sq_sum / cells, blind))
    return results


def format_eps_errors(rows: list[EpsError]) -> str:
    lines = ["| t | eps MSE | per-image-mean part | blind network's mean part |", "|---:|---:|---:|---:|"]
    lines += [f"| {r.t} | {r.mse:.5f} | {r.mean_part:.6f} | {r.blind_mean_part:.6f} |" for r in rows]
    return "\n".join(lines)
