"""What the host computes around the chip: the first conv of x_t, the real-valued tail, and the
conversions between float currents and the chip's a-units.

It imports no model code (no `sddpm`), so the Lava backend can use it without loading the training
code: the float graph (`export.graph`), the quantized reference and Lava share these functions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .chip import HOST_INPUT_MAX, ChipNetwork


class ChipOverflowWarning(UserWarning):
    """An integer current or voltage left its 24-bit state: the chip wraps or saturates it."""


@dataclass(frozen=True)
class HostStages:
    """What runs on the host: the first conv (BN folded) and the real-valued tail, in the dtype of
    the tensors held (float64 in the float graph, float32 in the chip network)."""
    head_weight: torch.Tensor  # [ch, img_ch, 3, 3]
    head_bias: torch.Tensor  # [ch]
    tail: dict[str, torch.Tensor]  # see `tail` for the keys
    membrane_decay: float  # the membrane output layer's decay (sddpm.unet.MEMBRANE_DECAY)


def head_current(host: HostStages, x: torch.Tensor) -> torch.Tensor:
    """The first population's input current, computed on the host: conv(x_t) with BN folded."""
    return F.conv2d(x.to(host.head_weight.dtype), host.head_weight, host.head_bias, padding=1)


def tail(host: HostStages, h_seq: torch.Tensor) -> torch.Tensor:
    """The real-valued tail on the readout h [T, B, C, H, W] -> eps [B, img_ch, H, W]."""
    p = host.tail
    steps, batch = h_seq.shape[:2]
    x = h_seq.flatten(0, 1).to(host.head_weight.dtype)
    x = F.silu(x * p["tail_bn_scale"][:, None, None] + p["tail_bn_shift"][:, None, None])
    x = F.conv2d(x, p["tail_conv_weight"], p["tail_conv_bias"], padding=1)
    y = F.conv2d(x, p["time_conv_weight"], p["time_conv_bias"], padding=1)
    y = F.silu(y * p["last_bn_scale"][:, None, None] + p["last_bn_shift"][:, None, None])
    out = (y + x).view(steps, batch, *x.shape[1:])
    decay = host.membrane_decay ** torch.arange(steps - 1, -1, -1, dtype=out.dtype)
    return (out * decay.view(-1, 1, 1, 1, 1)).sum(0)


def host_stages(net: ChipNetwork) -> HostStages:
    h = net.host
    return HostStages(torch.from_numpy(h.head_weight), torch.from_numpy(h.head_bias),
                      {k: torch.from_numpy(v) for k, v in h.tail.items()}, h.membrane_decay)


def host_input_current(net: ChipNetwork, x: torch.Tensor) -> torch.Tensor:
    """The first population's input in a-units: round half to even of conv(x_t) / scale in float32,
    saturated to +-net.host_input_max. That saturation changes no spike where the compiler could choose it so
    (`export.chip.host_saturation`); at the hardware's limit HOST_INPUT_MAX it may, and warns when it clips."""
    current = head_current(host_stages(net), x)  # float32: the chip network's host weights are float32
    a = torch.round(current / np.float32(net.populations[0].scale))
    limit = net.host_input_max
    clipped = int((a.abs() > limit).sum())
    if clipped and limit == HOST_INPUT_MAX:
        warnings.warn(f"population {net.populations[0].name}: the host saturated {clipped} input currents at "
                      f"+-{HOST_INPUT_MAX} a-units (x_t outside the calibrated range)", ChipOverflowWarning,
                      stacklevel=3)
    return a.clamp(-limit, limit).long()


def readout_to_eps(net: ChipNetwork, a_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Host: h = scale * a + bias (+ temb[t]) in float32, then the real-valued tail."""
    r = net.readout
    bias = torch.from_numpy(r.bias)[None, :].expand(t.shape[0], -1)
    if r.temb is not None:
        bias = bias + torch.from_numpy(r.temb)[t]
    h = a_out.float() * np.float32(r.scale) + bias[None, :, :, None, None]
    return tail(host_stages(net), h)
