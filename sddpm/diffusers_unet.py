"""The yardstick: diffusers' `UNet2DModel`, the DDPM network most people reach for, at the ANN twin's size.

The quality tables train it with the twin's loop, batches and budget and sample it with the same samplers
and seeds, so the only difference from the twin is the network: where the two FIDs part, our U-Net (or
its normalization) is the cause, not our training or sampling. Our schedule's forward noising and our
`official_ddpm_sample` are checked against diffusers' `DDPMScheduler` in tests/test_diffusers_yardstick.py.

diffusers is a quality-only dependency (like spikingjelly for the benchmark): nothing on the chip path
imports this module.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .unet import check_inputs, norm_groups


def unet2d_kwargs(cfg: ModelConfig) -> dict:
    """UNet2DModel's arguments for the twin's layout: one level per ch_mult entry with num_res_blocks
    ResNet blocks down and num_res_blocks + 1 up (as both networks do), a middle of two ResNet blocks
    and no attention (the twin has none), GroupNorm groups by the twin's rule at ch (they divide every
    width, ch * mult)."""
    levels = len(cfg.ch_mult)
    return dict(sample_size=cfg.img_size, in_channels=cfg.img_ch, out_channels=cfg.img_ch,
                block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
                down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                add_attention=False, norm_num_groups=norm_groups(cfg.ch), dropout=cfg.dropout)


class DiffusersUNet(nn.Module):
    """eps = DiffusersUNet(x_t, t): UNet2DModel behind the denoiser interface of our networks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from diffusers import UNet2DModel  # imported here: only this kind needs diffusers installed

        self.cfg = cfg
        self.unet = UNet2DModel(**unet2d_kwargs(cfg))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_inputs(self.cfg, x, t)
        return self.unet(x, t).sample
