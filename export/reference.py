"""The quantized reference: the chip network's integers run in PyTorch with zero-delay semantics.

All populations see SNN step t together (no synaptic delay), in dependency order. This is the
reference that the bit-accurate simulator and Lava must match exactly; it is written from the
contract in `export/chip.py`, independently of the simulator. Synaptic sums are computed in float64,
exact for integers below 2^53.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from records import ChipRun

from .chip import ACT_SHIFT, READOUT, STATE_MAX, VTH_SHIFT, ChipNetwork, ChipSynapse
from .host import ChipOverflowWarning, host_input_current, readout_to_eps


def _synaptic_sum(net: ChipNetwork, target: str, shape, spikes: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    a = torch.zeros(batch, *shape, dtype=torch.int64)
    for syn in net.inputs_of(target):
        a[:, syn.out_offset:syn.out_offset + syn.weight.shape[0]] += _apply(syn, spikes[syn.source])
    return a


def _apply(syn: ChipSynapse, spikes: torch.Tensor) -> torch.Tensor:
    x = spikes.double()
    if syn.upsample != 1:
        x = F.interpolate(x, scale_factor=syn.upsample, mode="nearest")
    weight = torch.from_numpy(syn.integer_weight()).double()
    return F.conv2d(x, weight, stride=syn.stride, padding=syn.padding).round().long()


@torch.no_grad()
def run_reference(net: ChipNetwork, x: torch.Tensor, t: torch.Tensor) -> ChipRun:
    """Run one forward pass (T SNN steps) on x_t [B, C, H, W] at diffusion steps t [B]."""
    batch, steps = x.shape[0], net.snn_steps
    t_np = t.cpu().numpy()
    a_host = host_input_current(net, x)
    v = {p.name: torch.zeros(batch, *p.shape, dtype=torch.int64) for p in net.populations}
    bias = {}
    for p in net.populations:
        mant = torch.from_numpy(p.bias_mant[p.bias_row(t_np)].astype(np.int64))  # [B, C]
        bias[p.name] = (mant << p.bias_exp)[:, :, None, None]
    spikes = {p.name: [] for p in net.populations}
    readout = []
    overflow: dict[str, int] = {}
    for _ in range(steps):
        now: dict[str, torch.Tensor] = {}
        for p in net.populations:
            a = a_host if p.host_input else _synaptic_sum(net, p.name, p.shape, now, batch)
            u = a << ACT_SHIFT
            # u is a 24-bit state: one conditional wrap into (-2^23, 2^23] (Lava PyLifModelBitAcc)
            wrapped = (u > STATE_MAX) | (u <= -STATE_MAX)
            u = torch.where(u > STATE_MAX, u - 2 * STATE_MAX, torch.where(u <= -STATE_MAX, u + 2 * STATE_MAX, u))
            total = v[p.name] + u + bias[p.name]
            saturated = total.abs() > STATE_MAX - 1
            v_new = total.clamp(-(STATE_MAX - 1), STATE_MAX - 1)  # v saturates
            s = v_new > (p.vth << VTH_SHIFT)  # strict, as on Loihi
            v[p.name] = torch.where(s, 0, v_new)
            now[p.name] = s
            spikes[p.name].append(s)
            n = int(wrapped.sum()) + int(saturated.sum())
            if n:
                overflow[p.name] = overflow.get(p.name, 0) + n
        readout.append(_synaptic_sum(net, READOUT, net.readout.shape, now, batch))
    for name, n in overflow.items():
        warnings.warn(f"population {name}: {n} current or voltage values overflowed the 24-bit state "
                      "(u wraps, v saturates); recompile with calibration data that covers these inputs",
                      ChipOverflowWarning, stacklevel=2)
    a_out = torch.stack(readout)
    return ChipRun("reference", {k: torch.stack(s) for k, s in spikes.items()}, a_out, readout_to_eps(net, a_out, t),
                   chip_steps=steps)
