"""The quantized reference: the chip network's integers run in PyTorch. A diffusion network runs with zero-delay
semantics (`run_reference`); a network with spike inputs on the contract's timing (`run_reference_spikes`).

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

from chiprun import ChipRun

from .chip import (ACT_SHIFT, DECAY_UNITY, READOUT, STATE_MAX, VTH_SHIFT, ChipNetwork, ChipPopulation,
                   ChipSynapse)

DECAY_SHIFT = 12  # du and dv are fractions of DECAY_UNITY = 2^12
from .errors import ExportInputError
from .host import ChipOverflowWarning, host_input_current, readout_to_eps


FLOAT32_INTEGERS = 2 ** 24  # float32 holds every integer of magnitude up to 2^24
GPU_ROUNDED_INTEGERS = 2 ** 31  # a float64 GPU convolution below it rounds back to the integer (`_conv_dtype`)


def _conv_dtype(weight: np.ndarray, device: torch.device) -> torch.dtype:
    """float32 when no partial sum of the convolution (or dense map) can leave the integers float32 holds exactly.

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
    """One synapse's integer output for 0/1 spikes [B, *source shape], weights from `_conv_weights`: a conv (any
    stride, padding, dilation, groups; nearest up-sampling first) or a dense map (of the flattened source)."""
    if syn.dense:
        x = spikes.flatten(1) if syn.flatten else spikes
        return (x.to(weight.dtype) @ weight.T).round().long()
    x = spikes.to(weight.dtype)
    if syn.upsample != 1:
        x = F.interpolate(x, scale_factor=syn.upsample, mode="nearest")
    return F.conv2d(x, weight, stride=syn.stride, padding=syn.padding, dilation=syn.dilation,
                    groups=syn.groups).round().long()


def _decay(x: torch.Tensor, keep: int) -> torch.Tensor:
    """x * keep / 4096, rounded toward zero (Lava's decays of u and v)."""
    product = x * keep
    return torch.sign(product) * (product.abs() >> DECAY_SHIFT)


def neuron_step(p: ChipPopulation, u: torch.Tensor, v: torch.Tensor, a: torch.Tensor, bias: torch.Tensor):
    """One chip step of a population (the contract in `export.chip`), all int64: returns the new u, v, the spikes
    and how many values overflowed the 24-bit state (u wrapped or v saturated)."""
    u = _decay(u, DECAY_UNITY - (p.du + 1)) + (a << ACT_SHIFT)
    # u is a 24-bit state: one conditional wrap into (-2^23, 2^23] (Lava PyLifModelBitAcc)
    wrapped = (u > STATE_MAX) | (u <= -STATE_MAX)
    u = torch.where(u > STATE_MAX, u - 2 * STATE_MAX, torch.where(u <= -STATE_MAX, u + 2 * STATE_MAX, u))
    total = _decay(v, DECAY_UNITY - p.dv) + u + bias
    saturated = total.abs() > STATE_MAX - 1
    v = total.clamp(-(STATE_MAX - 1), STATE_MAX - 1)  # v saturates
    s = v > (p.vth << VTH_SHIFT)  # strict, as on Loihi
    return u, torch.where(s, 0, v), s, int(wrapped.sum()) + int(saturated.sum())


def _warn_overflow(overflow: dict[str, int]) -> None:
    for name, n in overflow.items():
        warnings.warn(f"population {name}: {n} current or voltage values overflowed the 24-bit state "
                      "(u wraps, v saturates); recompile with calibration data that covers these inputs",
                      ChipOverflowWarning, stacklevel=3)


@torch.no_grad()
def run_reference_spikes(net: ChipNetwork, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a network with spike inputs (an imported graph) on the contract's timing: a synapse of delay d delivers
    at step tau the spikes its source emitted at tau - d, a population's bias is on from its depth (inside its
    window, where the network has one). inputs: name -> 0/1 [T, B, *shape]. Returns every population's spikes,
    bool [T, B, *shape]; a voltage readout's v after each step instead, int64."""
    names = {i.name: i.shape for i in net.inputs}
    if set(inputs) != set(names) or not inputs:
        raise ExportInputError(f"inputs must be given for the spike inputs {sorted(names)}, got {sorted(inputs)}")
    steps, batch = next(iter(inputs.values())).shape[:2]
    for name, x in inputs.items():
        if tuple(x.shape) != (steps, batch, *names[name]):
            raise ExportInputError(f"input {name!r}: expected [T={steps}, B={batch}, {names[name]}], got {list(x.shape)}")
    history = {name: [] for name in [*names, *(p.name for p in net.populations)]}
    u = {p.name: torch.zeros(batch, *p.shape, dtype=torch.int64) for p in net.populations}
    v = {p.name: torch.zeros(batch, *p.shape, dtype=torch.int64) for p in net.populations}
    weights = _conv_weights(net, torch.device("cpu"))
    into = {p.name: net.inputs_of(p.name) for p in net.populations}
    bias = {p.name: torch.from_numpy(p.bias_mant[0].astype(np.int64) << p.bias_exp).view(
        1, p.shape[0], *[1] * (len(p.shape) - 1)) for p in net.populations}  # one row: no bias schedule
    overflow: dict[str, int] = {}
    voltages = {p.name: [] for p in net.populations if p.voltage_out}
    for tau in range(steps):
        now = {}
        for p in net.populations:
            a = torch.zeros(batch, *p.shape, dtype=torch.int64)
            for syn in into[p.name]:
                if tau - syn.delay >= 0:
                    out = _apply(syn, history[syn.source][tau - syn.delay], weights[id(syn)])
                    a[:, syn.out_offset:syn.out_offset + out.shape[1]] += out
            on = p.depth <= tau and (net.snn_steps is None or tau < p.depth + net.snn_steps)
            u[p.name], v[p.name], s, n = neuron_step(p, u[p.name], v[p.name], a, bias[p.name] * on)
            now[p.name] = s
            if p.voltage_out:
                voltages[p.name].append(v[p.name])
            if n:
                overflow[p.name] = overflow.get(p.name, 0) + n
        for name in names:
            history[name].append(inputs[name][tau] != 0)
        for name, s in now.items():
            history[name].append(s)
    _warn_overflow(overflow)
    return {p.name: torch.stack(voltages[p.name] if p.voltage_out else history[p.name]) for p in net.populations}


@torch.no_grad()
def run_reference(net: ChipNetwork, x: torch.Tensor, t: torch.Tensor, device: str | torch.device = "cpu") -> ChipRun:
    """Run one forward pass (T SNN steps) on x_t [B, C, H, W] at diffusion steps t [B]; the chip's integers on
    `device`, the host stages and the returned run on the CPU."""
    device = torch.device(device)
    batch, steps = x.shape[0], net.snn_steps
    t_np = t.cpu().numpy()
    a_host = host_input_current(net, x.cpu()).to(device)
    u = {p.name: torch.zeros(batch, *p.shape, dtype=torch.int64, device=device) for p in net.populations}
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
            u[p.name], v[p.name], s, n = neuron_step(p, u[p.name], v[p.name], a, bias[p.name])
            now[p.name] = s
            spikes[p.name].append(s)
            if n:
                overflow[p.name] = overflow.get(p.name, 0) + n
        readout.append(_synaptic_sum(net, READOUT, net.readout.shape, now, batch, weights))
    _warn_overflow(overflow)
    a_out = torch.stack(readout).cpu()
    return ChipRun("reference", {k: torch.stack(s).cpu() for k, s in spikes.items()}, a_out,
                   readout_to_eps(net, a_out, t.cpu()), chip_steps=steps)
