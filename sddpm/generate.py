"""Generate images from a trained model with a chosen sampler, batch by batch, optionally over ranks.

Batch b of a run always starts from the noise of `torch.Generator().manual_seed(seed + b)`, so the
images do not depend on the batch-to-rank assignment: 1 process or N under torchrun give the same set.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .config import DEFAULT_DDIM_STEPS, DEFAULT_ETA, ConfigError, DiffusionConfig, VarType
from .data import to_uint8
from .neuron import set_threshold_factor
from .samplers import ddim_sample, ddpm_sample, official_ddim_sample, official_ddpm_sample
from .schedule import NoiseSchedule


SamplerName = Literal["ddpm", "ddim", "official-ddpm", "official-ddim"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "official-ddpm", "official-ddim")


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler and its settings. The official ones fix what the official code fixes (variance, clipping,
    eta), so only `steps` (official-ddim) applies to them."""

    sampler: SamplerName = "ddim"
    steps: int = 100  # DDIM only; DDPM always runs every diffusion step
    eta: float = 0.0
    var_type: VarType = "fixedlarge"
    clip_x0: bool = False

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler.startswith("official-") and (self.eta != 0.0 or self.var_type != "fixedlarge"
                                                     or self.clip_x0):
            raise ConfigError(f"{self.sampler} fixes eta = 0, the fixedlarge variance and its own clipping, "
                             f"as the official code does; --eta, --var-type and --clip-x0 do not apply")

    def sample(self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
               schedule: NoiseSchedule, generator: torch.Generator | None = None,
               progress: bool = False) -> torch.Tensor:
        """Run this sampler from x_T (the generator draws the noise of the stochastic ones)."""
        if self.sampler == "ddpm":
            return ddpm_sample(denoiser, x_T, schedule, var_type=self.var_type, clip_x0=self.clip_x0,
                               generator=generator, progress=progress)
        if self.sampler == "ddim":
            return ddim_sample(denoiser, x_T, schedule, steps=self.steps, eta=self.eta, clip_x0=self.clip_x0,
                               generator=generator, progress=progress)
        if self.sampler == "official-ddpm":
            return official_ddpm_sample(denoiser, x_T, schedule, generator=generator, progress=progress)
        return official_ddim_sample(denoiser, x_T, schedule, steps=self.steps, progress=progress)

    @property
    def label(self) -> str:
        """What a person reads, e.g. 'DDIM 50, eta 1' or 'DDPM 1000, x0 clipped'."""
        name = {"ddpm": "DDPM 1000", "ddim": f"DDIM {self.steps}, eta {self.eta:g}",
                "official-ddpm": "official DDPM 1000", "official-ddim": f"official DDIM {self.steps}"}[self.sampler]
        return name + (", x0 clipped" if self.clip_x0 else "")


DEFAULT_SAMPLER = SamplerConfig("ddim", DEFAULT_DDIM_STEPS, DEFAULT_ETA)


def model_denoiser(model: nn.Module, threshold_factor: float = 1.0) -> nn.Module:
    """A copy of the model in eval mode with every IF threshold times `threshold_factor` (ANNs ignore it); the
    caller's model keeps its thresholds and mode."""
    denoiser = copy.deepcopy(model).eval()
    set_threshold_factor(denoiser, threshold_factor)
    return denoiser


@torch.no_grad()
def generate_images(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], image_shape: tuple[int, int, int],
             diffusion_cfg: DiffusionConfig, count: int, sampler: SamplerConfig, batch_size: int = 64, seed: int = 0,
             progress: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """`count` images as uint8 [count, C, H, W] from eps = denoiser(x_t, t) (a model from `model_denoiser`,
    or any other backend). Under torch.distributed every rank returns all of them."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    schedule = NoiseSchedule.linear(diffusion_cfg)
    n_batches = -(-count // batch_size)
    mine = {}
    for b in tqdm(range(rank, n_batches, world), desc=f"sampling ({sampler.sampler})", disable=not progress):
        n = min(batch_size, count - b * batch_size)
        gen = torch.Generator().manual_seed(seed + b)
        x_T = torch.randn(n, *image_shape, generator=gen).to(device)
        x0 = sampler.sample(denoiser, x_T, schedule, generator=gen, progress=progress)
        mine[b] = to_uint8(x0.cpu())
    if world > 1:
        shards: list[dict] = [None] * world
        dist.all_gather_object(shards, mine)
        mine = {b: images for shard in shards for b, images in shard.items()}
    return torch.cat([mine[b] for b in range(n_batches)])
