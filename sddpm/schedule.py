"""The DDPM forward process: linear beta schedule, q(x_t | x_0), posterior coefficients, eps loss.

Pure tensor maths with no network inside. Coefficients are computed in float64 and cast to the
dtype of the tensors they multiply.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DiffusionConfig


def _gather(coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """coef[t] shaped [B, 1, 1, ...] to broadcast against `like`."""
    return coef.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class NoiseSchedule:
    betas: torch.Tensor  # [T] float64

    @classmethod
    def linear(cls, cfg: DiffusionConfig = DiffusionConfig()) -> NoiseSchedule:
        return cls(torch.linspace(cfg.beta_1, cfg.beta_T, cfg.steps, dtype=torch.float64))

    @property
    def steps(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_bar(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def alphas_bar_prev(self) -> torch.Tensor:
        return torch.cat([self.betas.new_ones(1), self.alphas_bar[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """Variance of q(x_{t-1} | x_t, x_0): beta_t (1 - abar_{t-1}) / (1 - abar_t)."""
        return self.betas * (1.0 - self.alphas_bar_prev) / (1.0 - self.alphas_bar)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_bar
        return _gather(ab.sqrt(), t, x0) * x0 + _gather((1.0 - ab).sqrt(), t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_bar
        return _gather((1.0 / ab).sqrt(), t, x_t) * x_t - _gather((1.0 / ab - 1.0).sqrt(), t, x_t) * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab, ab_prev = self.alphas_bar, self.alphas_bar_prev
        coef0 = ab_prev.sqrt() * self.betas / (1.0 - ab)
        coef_t = (1.0 - self.betas).sqrt() * (1.0 - ab_prev) / (1.0 - ab)
        return _gather(coef0, t, x0) * x0 + _gather(coef_t, t, x_t) * x_t


def eps_loss(denoiser, x0: torch.Tensor, schedule: NoiseSchedule,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's simple loss: E_{t, eps} || eps - denoiser(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2."""
    t = torch.randint(schedule.steps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return F.mse_loss(denoiser(schedule.q_sample(x0, t, noise), t), noise)
