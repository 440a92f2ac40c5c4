"""The quantized reference: the chip network's integers run in PyTorch with zero-delay semantics.

All populations see SNN step t together (no synaptic delay), in dependency order. This is the
reference that the bit-accurate simulator and Lava must match exactly; it is written from the
contract in `export/chip.py`, independently of the simulator. A synapse's convolution runs in float32
when that is exact (see `_conv_dtype`), else in float64, exact for integers below 2^53; the sums of a
population's synapses are added in int64. On a GPU every convolution is float64 and rounded (`_conv_dtype`).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from records import ChipRun

from .chip import ACT_SHIFT, READOUT, STATE_MAX, VTH_SHIFT, ChipNetwork, ChipSynapse
from .errors import ExportInputError
from .host import ChipOverflowWarning, host_input_current, readout_to_eps


FLOAT32_INTEGERS = 2 ** 24  # float32 holds every integer of magnitude up to 2^24
GPU_ROUNDED_INTEGERS = 2 ** 31  # a float64 GPU convolution below it rounds back to the integer (`_conv_dtype`)


def _conv_dtype(weight: np.ndarray, device: torch.device) -> torch.dtype:
    """float32 when no partial sum of the convolution can leave the integers float32 holds exactly.

    The inputs are 0/1 spikes (nearest up-sampling copies them), so every partial sum of output channel c,
    in whatever order the convolution adds its taps, lies within +-sum|W[c]|: if the largest such sum is at
    most 2^24, every addition is exact and float32 gives the integer result. float32 convolutions are
    several times faster than float64 on CPU, which the paper-sized models need.

    On a GPU, float64 whatever the bound: cuDNN may run float32 in TF32 (operands cut to 11 significant bits)
    and may pick an FFT or Winograd algorithm, which rounds. Such a float64 result is off by at most about
    n * 2^-53 * bound for n <= 2^16 terms, below 2^-6 for bound < 2^31, so `_apply`'s round() restores the
    integer; Lava's own int32 cast limits the sums to 2^31 anyway."""
    bound = int(np.abs(weight.astype(np.int64)).reshape(weight.shape[0], -1).sum(1).max(initial=0))
    if device.type != "cpu":
        if bound >= GPU_ROUNDED_INTEGERS:
            raise ExportInputError(f"a synapse's sum |W| = {bound} >= 2^31: no GPU convolution is provably exact; "
                                   f"run the reference on the CPU")
        return torch.float64
    return torch.float32 if bound <= FLOAT32_INTEGERS else torch.float64


def _conv_weights(net: ChipNetwork, device: torch.device) -> dict[int, torch.Tensor]:
    """id(synapse) -> its integer weights as a float tensor of `_conv_dtype` on `device`, converted once per run."""
    out = {}
    for syn in net.synapses:
        weight = syn.integer_weight()
        out[id(syn)] = torch.from_numpy(weight.astype(np.float64)).to(device, _conv_dtype(weight, device))
    return out


def _synaptic_sum(net: ChipNetwork, target: str, shape, spikes: dict[str, torch.Tensor], batch: int,
                  weights: dict[int, torch.Tensor]) -> torch.Tensor:
    a = torch.zeros(batch, *shape, dtype=torch.int64, device=next(iter(weights.values())).device)
    for syn in net.inputs_of(target):
        a[:, syn.out_offset:syn.out_offset + syn.weight.shape[0]] += _apply(syn, spikes[syn.source], weights[id(syn)])
    return a


def _apply(syn: ChipSynapse, spikes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x = spikes.to(weight.dtype)
    if syn.upsample != 1:
        x = F.interpolate(x, scale_factor=syn.upsample, mode="nearest")
    return F.conv2d(x, weight, stride=syn.stride, padding=syn.padding).round().long()


@torch.no_grad()
def run_reference(net: ChipNetwork, x: torch.Tensor, t: torch.Tensor, device: str | torch.device = "cpu") -> ChipRun:
    """Run one forward pass (T SNN steps) on x_t [B, C, H, W] at diffusion steps t [B]; the chip's integers on
    `device`, the host stages and the returned run on the CPU."""
    device = torch.device(device)
    batch, steps = x.shape[0], net.snn_steps
    t_np = t.cpu().numpy()
    a_host = host_input_current(net, x.cpu()).to(device)
    v = {p.name: torch.zeros(batch, *p.shape, dtype=torch.int64, device=device) for p in net.populations}
    bias = {}
    for p in net.populations:
        mant = torch.from_numpy(p.bias_mant[p.bias_row(t_np)].astype(np.int64)).to(device)  # [B, C]
        bias[p.name] = (mant << p.bias_exp)[:, :, None, None]
    weights = _conv_weights(net, device)
    spikes = {p.name: [] for p in net.populations}
    readout = []
    overflow: dict[str, int] = {}
    for _ in range(steps):
        now: dict[str, torch.Tensor] = {}
        for p in net.populations:
            a = a_host if p.host_input else _synaptic_sum(net, p.name, p.shape, now, batch, weights)
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
        readout.append(_synaptic_sum(net, READOUT, net.readout.shape, now, batch, weights))
    for name, n in overflow.items():
        warnings.warn(f"population {name}: {n} current or voltage values overflowed the 24-bit state "
                      "(u wraps, v saturates); recompile with calibration data that covers these inputs",
                      ChipOverflowWarning, stacklevel=2)
    a_out = torch.stack(readout).cpu()
    return ChipRun("reference", {k: torch.stack(s).cpu() for k, s in spikes.items()}, a_out,
                   readout_to_eps(net, a_out, t.cpu()), chip_steps=steps)
