"""Samplers. Each takes a denoiser callable eps = denoiser(x_t, t) and knows nothing of the network.

`x_T` and a `torch.Generator` make a run deterministic: the same seed gives the same images.

Two of them reproduce the official SDDPM `diffusion.py` (AndyCao1125/SDDPM, `GaussianDiffusionSampler`):
`official_ddpm_sample` (sample_type 'ddpm', mean_type 'epsilon') and `official_ddim_sample` (sample_type
'ddim', whose eta is fixed at 0). `ddpm_sample` and `ddim_sample` are ours, with the clipping as an option.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError, VarType
from .schedule import NoiseSchedule, _gather

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _steps_tensor(step: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator keeps runs identical across devices), then move.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule,
                var_type: VarType = "fixedlarge", clip_x0: bool = False,
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    fixedlarge: sigma_t^2 = beta_t (with the posterior variance at t = 1, as in DDPM's code);
    fixedsmall: sigma_t^2 = the posterior variance (clipped at t = 0). The predicted x0 is clipped to
    [-1, 1] before forming the posterior mean when clip_x0 is set (DDPM's `clip_denoised`).
    """
    if var_type == "fixedlarge":
        variance = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]])
    elif var_type == "fixedsmall":
        variance = torch.cat([schedule.posterior_variance[1:2], schedule.posterior_variance[1:]])
    else:
        raise ConfigError(f"var_type must be 'fixedlarge' or 'fixedsmall', got {var_type!r}")
    x = x_T
    for step in tqdm(range(schedule.steps - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
        t = _steps_tensor(step, x)
        x0 = schedule.predict_x0(x, t, denoiser(x, t))
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = schedule.posterior_mean(x0, x, t)
        x = mean + _gather(variance.sqrt(), t, x) * _noise(x, generator) if step > 0 else mean
    return x.clamp(-1.0, 1.0)


def ddim_timesteps(total: int, steps: int) -> list[int]:
    """`steps` diffusion steps spread evenly over [0, total - 1], ascending (any count from 1 to total)."""
    if not 1 <= steps <= total:
        raise ConfigError(f"DDIM steps must lie in [1, {total}], got {steps}")
    return sorted({int(s) for s in np.linspace(0, total - 1, steps).round()})


def official_ddpm_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule,
                         generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """The official SDDPM DDPM sampler: every diffusion step, fixedlarge variance, x0 clipped to [-1, 1]
    before the posterior mean at every step; at t = 0 it returns clip(x0) with x0 from the last model call.

    That is `ddpm_sample(var_type="fixedlarge", clip_x0=True)`: at t = 0 the posterior mean's coefficients
    are 1 on x0 and 0 on x_t (abar_{-1} = 1, 1 - abar_0 = beta_0), so our last step returns clip(x0) too.
    """
    return ddpm_sample(denoiser, x_T, schedule, var_type="fixedlarge", clip_x0=True, generator=generator,
                       progress=progress)


def official_ddim_timesteps(total: int, steps: int) -> list[int]:
    """The official DDIM step list, descending: max(int(total - 1 - (total / steps) * i), 0) for
    i < steps, then 0 appended if it is not there (for 10 of 1000: 999, 899, ..., 99, 0). The sampler
    calls the model at every entry but the last, 0, where it returns the x it has reached."""
    if not 1 <= steps <= total:
        raise ConfigError(f"DDIM steps must lie in [1, {total}], got {steps}")
    ratio = total / steps
    seq = [max(int(total - 1 - ratio * i), 0) for i in range(steps)]
    return seq if seq[-1] == 0 else seq + [0]


@torch.no_grad()
def official_ddim_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int = 100,
                         progress: bool = False) -> torch.Tensor:
    """The official SDDPM DDIM sampler (eta 0): on official_ddim_timesteps, from t to the next entry s,
    x0 = clip((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)) with the network's eps kept beside it,
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps. The last move lands on t = 0 (abar_0 = 1 - beta_1, not 1)
    and that x is returned as it is, unclipped and with no model call at t = 0; `to_uint8` clips it when
    images are stored."""
    seq = official_ddim_timesteps(schedule.steps, steps)
    ab = schedule.alphas_bar
    x = x_T
    for t, s in tqdm(list(zip(seq[:-1], seq[1:])), desc="official DDIM", disable=not progress, leave=False):
        eps = denoiser(x, _steps_tensor(t, x))
        x = ddim_step(x, eps, float(ab[t]), float(ab[s]), clip_x0=True, rederive_eps=False)
    return x


def ddim_step(x: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_prev: float, sigma: float = 0.0,
              clip_x0: bool = False, rederive_eps: bool = True) -> torch.Tensor:
    """The mean of one DDIM update (Song et al. 2021, Eq. 12) from x_t to x_prev, before any added noise.

    With clip_x0 the predicted x0 is clipped to [-1, 1] and eps is derived again from x_t and the clipped x0
    (diffusers' `use_clipped_model_output`). Why: keeping the network's eps beside a clipped x0 splits x_t into
    two parts that no longer add up to it, and the chain's noise level drifts; our ANN twin then samples pure
    noise (FID 399 on MNIST). The derived eps makes the step, like DDPM's clipped posterior mean, a function of
    x_t and the clipped x0 alone. rederive_eps=False keeps the network's eps, as the official sampler does.
    """
    x0 = (x - (1.0 - ab_t) ** 0.5 * eps) / ab_t ** 0.5
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        if rederive_eps:
            eps = (x - ab_t ** 0.5 * x0) / (1.0 - ab_t) ** 0.5
    return ab_prev ** 0.5 * x0 + max(1.0 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int = 100,
                eta: float = 0.0, clip_x0: bool = False, generator: torch.Generator | None = None,
                progress: bool = False) -> torch.Tensor:
    """Our DDIM on `steps` diffusion steps spread over [0, T - 1] (see ddim_step); eta = 0 is deterministic.

    Unlike the official sampler it calls the model at t = 0 too and moves to abar = 1, and by default it
    clips only the returned x0 to [-1, 1]; clip_x0 clips every intermediate prediction and derives eps again.
    """
    seq = ddim_timesteps(schedule.steps, steps)
    ab = schedule.alphas_bar
    x = x_T
    for i in tqdm(range(len(seq) - 1, -1, -1), desc="DDIM", disable=not progress, leave=False):
        ab_t = float(ab[seq[i]])
        ab_prev = float(ab[seq[i - 1]]) if i > 0 else 1.0
        sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)) ** 0.5
        x = ddim_step(x, denoiser(x, _steps_tensor(seq[i], x)), ab_t, ab_prev, sigma, clip_x0)
        if sigma > 0 and i > 0:
            x = x + sigma * _noise(x, generator)
    return x.clamp(-1.0, 1.0)
