"""The SDDPM spiking U-Net (official `Spk_UNet`) and its ANN twin (the DDPM U-Net without attention).

Module and parameter names follow the official code (`AndyCao1125/SDDPM`, `model/SpikingUNet.py`) so
that an official `state_dict` loads with `strict=True`. Tensors inside the SNN are time-major
[T, B, C, H, W] with T the number of SNN steps.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from .config import GroupNormRule, ModelConfig
from .errors import SddpmError
from .neuron import neuron_factory

MEMBRANE_DECAY = 0.8  # output layer: eps = sum_t 0.8^(T-1-t) h[t] (official MembraneOutputLayer)


class InputError(SddpmError, ValueError):
    """An input tensor has the wrong shape, dtype or values."""


class Swish(nn.Module):
    def forward(self, x):
        return F.silu(x)


def sinusoidal_table(steps: int, dim: int) -> torch.Tensor:
    """[steps, dim] table, interleaved (sin, cos) pairs as in the official TimeEmbedding."""
    freqs = torch.exp(-torch.arange(0, dim, step=2) / dim * math.log(10000))
    angles = torch.arange(steps).float()[:, None] * freqs[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).view(steps, dim)


class TimeEmbedding(nn.Module):
    def __init__(self, steps: int, d_model: int, dim: int):
        super().__init__()
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(sinusoidal_table(steps, d_model)),
            nn.Linear(d_model, dim),
            Swish(),
            nn.Linear(dim, dim),
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init.xavier_uniform_(module.weight)
                init.zeros_(module.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timembedding(t)


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x_seq: torch.Tensor) -> torch.Tensor:
    """Apply a 2-d conv and BN to every SNN step: [T, B, C, H, W] -> [T, B, C', H', W']."""
    steps, batch = x_seq.shape[:2]
    y = bn(conv(x_seq.flatten(0, 1)))
    return y.view(steps, batch, *y.shape[1:])


def _xavier_zero(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init.xavier_uniform_(m.weight)
            init.zeros_(m.bias)


class SpkResBlock(nn.Module):
    """neuron -> conv3x3 -> BN -> (+ temb) -> neuron -> conv3x3 -> BN, plus a real-valued shortcut of the input.

    `neuron` builds each spiking population (the official IF, or LIF: see sddpm.neuron.neuron_factory).
    """

    def __init__(self, in_ch: int, out_ch: int, tdim: int, neuron: Callable[[], nn.Module]):
        super().__init__()
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        self.neuron1 = neuron()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.neuron2 = neuron()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        _xavier_zero(self)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = _conv_bn(self.conv1, self.bn1, self.neuron1(x))
        # The embedding is the same at every SNN step and pixel: broadcast, do not repeat.
        h = h + self.temb_proj(temb)[None, :, :, None, None]
        h = _conv_bn(self.conv2, self.bn2, self.neuron2(h))
        return h + self.shortcut(x.flatten(0, 1)).view_as(h)


class SpkDownSample(nn.Module):
    def __init__(self, ch: int, neuron: Callable[[], nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = neuron()
        _xavier_zero(self)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return _conv_bn(self.conv, self.bn, self.neuron(x))


class SpkUpSample(nn.Module):
    def __init__(self, ch: int, neuron: Callable[[], nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = neuron()
        _xavier_zero(self)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        s = self.neuron(x)
        steps, batch = s.shape[:2]
        up = F.interpolate(s.flatten(0, 1), scale_factor=2, mode="nearest")
        return _conv_bn(self.conv, self.bn, up.view(steps, batch, *up.shape[1:]))


class MembraneOutputLayer(nn.Module):
    """Non-firing leaky integrator over the SNN steps: sum_t decay^(T-1-t) h[t]."""

    def __init__(self, timestep: int):
        super().__init__()
        self.n_steps = timestep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        powers = torch.arange(self.n_steps - 1, -1, -1, device=x.device, dtype=x.dtype)
        coef = (MEMBRANE_DECAY ** powers).view(-1, *([1] * (x.dim() - 1)))
        return (x * coef).sum(0)


def check_inputs(cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor) -> None:
    """Raise InputError naming what is wrong with (x, t) for a model of configuration `cfg`."""
    if torch.jit.is_tracing():
        # A traced graph (the ONNX export) cannot hold Python-side checks; its loader runs them instead.
        return
    expected = (cfg.img_ch, cfg.img_size, cfg.img_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise InputError(f"model input x must have shape [B, {expected[0]}, {expected[1]}, {expected[2]}], "
                         f"got {list(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"model input x must be a float tensor, got {x.dtype}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise InputError(f"diffusion step t must have shape [{x.shape[0]}], got {list(t.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("model input x contains NaN or Inf")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= cfg.diffusion_steps):
        raise InputError(f"diffusion step t must lie in [0, {cfg.diffusion_steps}), got "
                         f"[{int(t.min())}, {int(t.max())}]")


def unet_levels(cfg: ModelConfig, res_block: Callable[[int, int], nn.Module], down_sample: Callable[[int], nn.Module],
                up_sample: Callable[[int], nn.Module]) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList, int]:
    """The DDPM U-Net's levels, which both networks share: per ch_mult entry num_res_blocks blocks down
    (then a down-sampling but at the last level), two blocks in the middle, num_res_blocks + 1 blocks up,
    each fed the skip of its mirror (then an up-sampling but at the first level). `res_block(c_in, c_out)`
    and the samplers build each network's own modules, in the official order (so the same state_dict
    keys and the same draws of the initializer). Returns (down, middle, up, channels out of the last up)."""
    downblocks, skips, now_ch = nn.ModuleList(), [cfg.ch], cfg.ch
    for i, mult in enumerate(cfg.ch_mult):
        for _ in range(cfg.num_res_blocks):
            downblocks.append(res_block(now_ch, cfg.ch * mult))
            now_ch = cfg.ch * mult
            skips.append(now_ch)
        if i != len(cfg.ch_mult) - 1:
            downblocks.append(down_sample(now_ch))
            skips.append(now_ch)
    middleblocks = nn.ModuleList([res_block(now_ch, now_ch), res_block(now_ch, now_ch)])
    upblocks = nn.ModuleList()
    for i, mult in reversed(list(enumerate(cfg.ch_mult))):
        for _ in range(cfg.num_res_blocks + 1):
            upblocks.append(res_block(skips.pop() + now_ch, cfg.ch * mult))
            now_ch = cfg.ch * mult
        if i != 0:
            upblocks.append(up_sample(now_ch))
    return downblocks, middleblocks, upblocks, now_ch


class SpikingUNet(nn.Module):
    """SDDPM's Spk_UNet: eps = model(x_t, t) with x_t [B, C, H, W] and t [B] integer diffusion steps.

    Its neurons are the official IF ones, or LIF ones where `cfg.neuron` says so (same parameters either way).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ch, tdim = cfg.ch, cfg.ch * 4
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, ch, tdim)
        self.timestep = cfg.snn_steps
        self.conv = nn.Conv2d(cfg.img_ch, ch, kernel_size=3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        neuron = neuron_factory(cfg)
        self.neuron = neuron()
        self.conv_identity = nn.Conv2d(ch, ch, kernel_size=3, stride=1, padding=1)
        self.bn_identity = nn.BatchNorm2d(ch)

        self.downblocks, self.middleblocks, self.upblocks, now_ch = unet_levels(
            cfg, lambda c_in, c_out: SpkResBlock(c_in, c_out, tdim, neuron), lambda c: SpkDownSample(c, neuron),
            lambda c: SpkUpSample(c, neuron))

        self.tail_bn = nn.BatchNorm2d(now_ch)
        self.tail_swish = Swish()
        self.tail_conv = nn.Conv2d(now_ch, cfg.img_ch, kernel_size=3, stride=1, padding=1)
        self.T_output_layer = nn.Conv3d(cfg.img_ch, cfg.img_ch, kernel_size=(3, 3, 1), padding=(1, 1, 0))
        self.last_bn = nn.BatchNorm2d(cfg.img_ch)
        self.swish = Swish()
        self.membrane_output_layer = MembraneOutputLayer(cfg.snn_steps)

        init.xavier_uniform_(self.conv.weight)
        init.zeros_(self.conv.bias)
        init.xavier_uniform_(self.tail_conv.weight, gain=1e-5)
        init.zeros_(self.tail_conv.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_inputs(self.cfg, x, t)
        steps, batch = self.timestep, x.shape[0]
        temb = self.time_embedding(t)

        # Direct encoding: x_t is the same at every SNN step, so its conv is computed once. BN still
        # sees all T copies, so its batch statistics (and running-variance correction) are the official ones.
        head = self.conv(x)
        head = self.bn(head.expand(steps, *head.shape).reshape(steps * batch, *head.shape[1:]))
        h = _conv_bn(self.conv_identity, self.bn_identity,
                     self.neuron(head.view(steps, batch, *head.shape[1:])))

        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, SpkResBlock):
                h = torch.cat([h, hs.pop()], dim=2)
            h = layer(h, temb)

        h = self.tail_conv(self.tail_swish(self.tail_bn(h.flatten(0, 1))))
        h = h.view(steps, batch, *h.shape[1:])
        # Conv3d with kernel (3, 3, 1) over [B, C, H, W, T]: a spatial conv applied to each SNN step.
        h_time = self.T_output_layer(h.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)
        h_time = self.last_bn(h_time.flatten(0, 1)).view_as(h)
        return self.membrane_output_layer(self.swish(h_time) + h)


class ResBlock(nn.Module):
    """DDPM residual block (pytorch-ddpm layout): GN -> Swish -> conv -> +temb -> GN -> Swish -> dropout -> conv."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, norm: GroupNormRule):
        super().__init__()
        self.block1 = nn.Sequential(group_norm(in_ch, norm), Swish(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(group_norm(out_ch, norm), Swish(), nn.Dropout(dropout),
                                    nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        _xavier_zero(self)
        init.xavier_uniform_(self.block2[-1].weight, gain=1e-5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.block2(h) + self.shortcut(x)


MAX_NORM_GROUPS = 32  # DDPM's GroupNorm(32, ch)
MIN_CHANNELS_PER_GROUP = 4  # DDPM's ratio at ch 128; one channel per group would be instance norm


def norm_groups(ch: int, rule: GroupNormRule = "ddpm") -> int:
    """The number of GroupNorm groups for `ch` channels under `rule` (see config.GroupNormRule)."""
    if rule == "gcd32":
        return math.gcd(MAX_NORM_GROUPS, ch)
    # The largest divisor of ch within the limit, so that every group has the same width.
    limit = max(1, min(MAX_NORM_GROUPS, ch // MIN_CHANNELS_PER_GROUP))
    return next(g for g in range(limit, 0, -1) if ch % g == 0)


def group_norm(ch: int, rule: GroupNormRule = "ddpm") -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(ch, rule), ch)


class DownSample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        _xavier_zero(self)

    def forward(self, x, temb):
        return self.main(x)


class UpSample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=1, padding=1)
        _xavier_zero(self)

    def forward(self, x, temb):
        return self.main(F.interpolate(x, scale_factor=2, mode="nearest"))


class ANNUNet(nn.Module):
    """The paper's ANN baseline: the same U-Net layout with Swish activations, GroupNorm and no attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ch, tdim = cfg.ch, cfg.ch * 4
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, ch, tdim)
        self.head = nn.Conv2d(cfg.img_ch, ch, 3, padding=1)
        self.downblocks, self.middleblocks, self.upblocks, now_ch = unet_levels(
            cfg, lambda c_in, c_out: ResBlock(c_in, c_out, tdim, cfg.dropout, cfg.group_norm), DownSample, UpSample)
        self.tail = nn.Sequential(group_norm(now_ch, cfg.group_norm), Swish(), nn.Conv2d(now_ch, cfg.img_ch, 3, padding=1))
        init.xavier_uniform_(self.head.weight)
        init.zeros_(self.head.bias)
        init.xavier_uniform_(self.tail[-1].weight, gain=1e-5)
        init.zeros_(self.tail[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_inputs(self.cfg, x, t)
        temb = self.time_embedding(t)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.kind == "diffusers":
        from .diffusers_unet import DiffusersUNet  # lazily: diffusers is needed by this kind only

        return DiffusersUNet(cfg)
    return SpikingUNet(cfg) if cfg.kind == "snn" else ANNUNet(cfg)


def count_parameters(model: nn.Module) -> int:
    """All parameters, the frozen sinusoidal table included (as the official count does)."""
    return sum(p.numel() for p in model.parameters())
