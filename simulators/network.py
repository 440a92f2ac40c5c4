"""Bit-accurate simulator of a compiled chip network, read from its exported file.

It reads only the NIR file (`simulators.chip_file`, written by `export.nir_chip.write_chip_nir`) and reproduces
what Lava's fixed-point models compute (`simulators.fixed_point`), batched. A network with spike inputs (an
imported NIR graph) runs with `run_spikes`: Lava's timing, every synapse delivering the spikes of step
tau - delay at step tau (recurrence needs nothing more), every population's bias on from its `depth` (and only
inside [depth, depth + T) where the network has a window T). A diffusion network (SDDPM) runs with `run`:

- `delayed` mode is Lava's timing: every synapse delivers the spikes of step tau - delay at step tau
  (one step per Lava synapse process), the first population receives the host's current directly at
  steps [0, T), and every population's bias is on only inside its window [depth, depth + T). A
  forward pass takes readout_depth + T chip steps. Spikes outside a window are an error.
- `zero_delay` mode runs SNN step t of every population together, in dependency order, the
  semantics of the quantized reference. Both modes must give the same spikes.

Every synapse is a Lava `Conv` process (its output wraps at 24 bits); one that up-samples reads the
up-sampled spikes of its source (deploy's `SpikeUpsample`), so here it is the conv of the up-sampled spikes,
wrapped the same way. The host stages (first conv, tail) run in float32 as the file describes them.

This module must not import `sddpm` or `export`: it and the reference cannot share a bug.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from chiprun import ChipRun

from .chip_file import READOUT, ChipFileError, Population, Synapse, read_chip_file
from .errors import SimulatorError, SimulatorInputError
from .fixed_point import (CONV_OUT_BITS, conv_int8, conv_synapse, if_step, int8_columns, int8_matmul_is_exact, lif_step,
                          scale_bias)

WRAP_FREE_PEAK = 1 << (CONV_OUT_BITS - 1)  # below this a Conv synapse's 24-bit wrap never acts
MODES = ("zero_delay", "delayed")
# Every state, spike and current tensor of a run is channels-last (NHWC in memory): oneDNN's convolutions
# are markedly faster on it, and elementwise work between tensors of one layout stays contiguous.
CHANNELS_LAST = torch.channels_last


def _zeros(*shape, dtype, device) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device=device, memory_format=CHANNELS_LAST).zero_()


class TimingError(SimulatorError, RuntimeError):
    """A population spiked outside its window: the delays of the network are not balanced."""


# How the wrap-free synapse groups are summed, fastest first; each gives the exact integers:
# "int8": `conv_int8`, an int8 matmul of the spikes and the 8-bit mantissas with int32 sums (CPU, where
#   `int8_matmul_is_exact`); "float32": a float32 conv, exact because every partial sum is an integer below
#   2^24; "int64": `conv_synapse` for every group, float64 rounded back (a GPU, where float32 may use TF32).
ARITHMETICS = ("int8", "float32", "int64")
ACCUMULATOR = {"int8": torch.int32, "float32": torch.float32, "int64": torch.int64}


def upsampled(spikes: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest up-sampling of [..., H, W] spikes (what deploy's SpikeUpsample sends to the Conv)."""
    if factor == 1:
        return spikes
    return spikes.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


@dataclass(frozen=True)
class SynapseGroup:
    """Synapses into one target with one geometry and one weight exponent, computed as a single conv over
    their sources' spikes stacked along channels. Only synapses whose output can never reach 2^23 are grouped:
    for them Lava's per-synapse 24-bit wrap is the identity, so the sum of the group is exactly the sum of
    the synapses. A synapse that could wrap stays a group of its own."""
    synapses: tuple[Synapse, ...]
    weight: torch.Tensor  # int64 [C_out, sum C_in, k, k]
    weight_f32: torch.Tensor
    columns: torch.Tensor  # the mantissas as `conv_int8`'s int8 matrix
    weight_exp: int
    peak: int  # largest |output| of the group for any 0/1 input

    @classmethod
    def of(cls, synapses: list[Synapse]) -> SynapseGroup:
        weight = torch.cat([s.weight for s in synapses], dim=1)
        exp = synapses[0].weight_exp
        return cls(tuple(synapses), weight, weight.float().contiguous(memory_format=CHANNELS_LAST),
                   int8_columns(weight >> exp), exp, int(weight.abs().flatten(1).sum(1).max()))

    def current(self, spikes: list[torch.Tensor], arithmetic: str) -> torch.Tensor:
        """Output for the spikes each member delivers ([N, C_k, H, W] each, any dtype), without delay.

        "int8" and "float32" need the caller's guarantee that peak < 2^23: then every partial sum is an
        integer below 2^24 in magnitude and the 24-bit wrap is the identity, so the matmul or the float32 conv
        *is* `conv_synapse`, without its conversions. Returns the dtype of ACCUMULATOR[arithmetic].
        """
        first = self.synapses[0]
        s = spikes[0] if len(spikes) == 1 else torch.cat(spikes, dim=-3)
        s = upsampled(s, first.upsample)  # Lava's Conv reads the up-sampled spikes
        if arithmetic == "int8":
            out = conv_int8(s.to(torch.int8).permute(0, 2, 3, 1), self.columns, kernel=tuple(self.weight.shape[2:]),
                            stride=first.stride, padding=first.padding)
            return out << self.weight_exp if self.weight_exp else out
        if arithmetic == "float32":
            return F.conv2d(s.float(), self.weight_f32, stride=first.stride, padding=first.padding)
        # Lava Conv: exact conv, then the 24-bit wrap (the identity for a group)
        return conv_synapse(s, self.weight, stride=first.stride, padding=first.padding)


def group_synapses(synapses: list[Synapse]) -> list[SynapseGroup]:
    groups: dict[tuple, list[Synapse]] = {}
    alone = []
    for syn in synapses:
        if syn.peak >= WRAP_FREE_PEAK:
            alone.append([syn])
            continue
        key = (syn.stride, syn.padding, syn.upsample, syn.out_offset, syn.weight_exp, tuple(syn.weight.shape[::2]))
        groups.setdefault(key, []).append(syn)
    return [SynapseGroup.of(members) for members in list(groups.values()) + alone]


def synapse_current(syn: Synapse, spikes: torch.Tensor) -> torch.Tensor:
    """What one synapse delivers for 0/1 spikes [B, *source shape], int64 [B, channels of its slice, ...]: a Lava
    Conv (exact, wrapped to 24 bits) or Dense (the exact sum, mant << exp; Lava's int32 then enters u, where
    `lif_step` wraps `a << 6` at 32 bits anyway)."""
    if not syn.dense:
        return conv_synapse(upsampled(spikes, syn.upsample), syn.weight, stride=syn.stride, padding=syn.padding,
                            dilation=syn.dilation, groups=syn.groups)
    x = (spikes.flatten(1) if syn.flatten else spikes).to(torch.int64)
    return x @ syn.weight.T  # integers, summed in int64: exact


class ChipSimulator:
    def __init__(self, populations, synapses, readout, host, snn_steps, diffusion_steps, meta,
                 device: str | torch.device = "cpu", inputs: dict | None = None, outputs: tuple = ()):
        self.device = torch.device(device)
        on = self.device
        self.populations: tuple[Population, ...] = tuple(replace(p, bias_mant=p.bias_mant.to(on)) for p in populations)
        self.synapses: tuple[Synapse, ...] = tuple(replace(s, weight=s.weight.to(on)) for s in synapses)
        # The host stages stay on the CPU, so that x_t's input current and eps are the same float32 results
        # whatever device the chip part runs on (a GPU's float32 convolutions may round differently).
        self.readout = readout  # dict: shape, scale, depth, bias, temb
        self.host = host  # dict of float32 tensors + membrane_decay
        self.snn_steps = snn_steps
        self.diffusion_steps = diffusion_steps
        self.meta = meta
        self.inputs = dict(inputs or {})  # spike inputs: name -> shape
        self.outputs = tuple(outputs)
        self._shape = {p.name: p.shape for p in populations}
        # The grouped fast path serves `run` (a diffusion network's conv synapses); `run_spikes` takes synapses one
        # by one, dense or conv, in any order (recurrence).
        targets = [p.name for p in populations] + [READOUT] if readout is not None else []
        self._groups = {name: group_synapses([s for s in synapses if s.target == name]) for name in targets}
        # A target's input can be summed in int32 or float32 when every group is wrap-free and all of them
        # together stay below 2^24: every partial sum is then an exact integer in either.
        self._wrap_free = {name: all(g.peak < WRAP_FREE_PEAK for g in groups) and sum(g.peak for g in groups) < 1 << 24
                           for name, groups in self._groups.items()}
        # One of ARITHMETICS (tests run each); on a GPU always "int64", since float32 convolutions there may use
        # TF32 or rounding algorithms (`fixed_point._exact_float_dtype`)
        self.arithmetic = "int64" if self.device.type != "cpu" else "int8" if int8_matmul_is_exact() else "float32"

    @classmethod
    def from_file(cls, path: str, device: str | torch.device = "cpu") -> ChipSimulator:
        """The network of a chip NIR file (`export.nir_chip.write_chip_nir`), its tensors on `device`."""
        f = read_chip_file(path)
        sim = cls(f.populations, f.synapses, f.readout, f.host, f.snn_steps, f.diffusion_steps, f.meta, device,
                  f.inputs, f.outputs)
        try:
            sim._check()
        except ChipFileError as err:
            raise ChipFileError(f"{path}: {err}") from None
        return sim

    @property
    def is_diffusion(self) -> bool:
        return self.host is not None

    def _check(self) -> None:
        names = {p.name: p for p in self.populations}
        if not self.is_diffusion:
            for s in self.synapses:
                if s.source not in names and s.source not in self.inputs or s.target not in names:
                    raise ChipFileError(f"synapse {s.source} -> {s.target}: unknown source or target")
            return
        depth = {p.name: p.depth for p in self.populations}
        depth[READOUT] = self.readout["depth"]
        for s in self.synapses:
            if s.source not in names or s.target not in depth:
                raise ChipFileError(f"synapse {s.source} -> {s.target}: unknown population")
            if depth[s.target] - depth[s.source] != s.delay:
                raise ChipFileError(f"synapse {s.source} -> {s.target}: delay {s.delay} does not balance depths "
                                    f"{depth[s.source]} -> {depth[s.target]}")
        if sum(p.host_input for p in self.populations) != 1 or not self.populations[0].host_input:
            raise ChipFileError("the first population, and only it, must take the host's input current")

    # -- host stages (float32) ------------------------------------------------------------------

    def host_input(self, x: torch.Tensor) -> torch.Tensor:
        """a-units of the first population: round half to even of float32 conv(x_t) / scale, saturated."""
        current = F.conv2d(x.to("cpu", torch.float32), self.host["head_weight"], self.host["head_bias"], padding=1)
        limit = self.meta["host_input_max"]
        a = torch.round(current / np.float32(self.populations[0].scale)).clamp(-limit, limit).long()
        return a.to(self.device)

    def eps_from_readout(self, a_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r, p = self.readout, self.host
        bias = r["bias"][None, :].expand(t.shape[0], -1)
        if r["temb"] is not None:
            bias = bias + r["temb"][t]
        h = a_out.cpu().float() * np.float32(r["scale"]) + bias[None, :, :, None, None]
        steps, batch = h.shape[:2]
        x = h.flatten(0, 1)
        x = F.silu(x * p["tail_bn_scale"][:, None, None] + p["tail_bn_shift"][:, None, None])
        x = F.conv2d(x, p["tail_conv_weight"], p["tail_conv_bias"], padding=1)
        y = F.conv2d(x, p["time_conv_weight"], p["time_conv_bias"], padding=1)  # Conv3d (3, 3, 1) per step
        y = F.silu(y * p["last_bn_scale"][:, None, None] + p["last_bn_shift"][:, None, None])
        out = (y + x).view(steps, batch, *x.shape[1:])
        decay = p["membrane_decay"] ** torch.arange(steps - 1, -1, -1, dtype=out.dtype)
        return (out * decay.view(-1, 1, 1, 1, 1)).sum(0)  # membrane output layer

    # -- chip -----------------------------------------------------------------------------------

    def _bias(self, p: Population, t: torch.Tensor) -> torch.Tensor:
        rows = t if p.bias_mant.shape[0] > 1 else torch.zeros_like(t)
        return scale_bias(p.bias_mant[rows.to(self.device)], p.bias_exp)[:, :, None, None]  # v-units [B, C, 1, 1]

    def _sum(self, target: str, shape, batch: int, spikes_of, skip_silent: bool = False) -> torch.Tensor:
        """Sum of the synapses into `target` for a batch of `batch` rows; spikes_of(synapse) gives the
        spikes [batch, C, H, W] the synapse delivers (None: nothing yet). In the accumulator of the simulator's
        arithmetic where `_wrap_free` allows it, int64 otherwise."""
        arithmetic = self.arithmetic if self._wrap_free[target] else "int64"
        dtype = ACCUMULATOR[arithmetic]
        a = None
        for group in self._groups[target]:
            spikes = [spikes_of(syn) for syn in group.synapses]
            if skip_silent and all(s is None or not s.any() for s in spikes):  # no spike, no current
                continue
            spikes = [_zeros(batch, *self._shape[syn.source], dtype=torch.int32, device=self.device)
                      if s is None else s for s, syn in zip(spikes, group.synapses)]
            out = group.current(spikes, arithmetic)
            first = group.synapses[0]
            if a is None and first.out_offset == 0 and out.shape[1] == shape[0]:
                a = out  # the first group covering every channel: no zeros to add it to
                continue
            if a is None:
                a = _zeros(batch, *shape, dtype=dtype, device=self.device)
            a[:, first.out_offset:first.out_offset + out.shape[1]] += out
        return _zeros(batch, *shape, dtype=dtype, device=self.device) if a is None else a

    @torch.no_grad()
    def run(self, x: torch.Tensor, t: torch.Tensor, mode: str = "zero_delay") -> ChipRun:
        """One forward pass on x_t [B, C, H, W] at diffusion steps t [B]. The chip's spikes and output currents
        are on the simulator's device (`ChipRun.to` moves them), eps (the host's) on the CPU."""
        if mode not in MODES:
            raise SimulatorInputError(f"mode must be one of {MODES}, got {mode!r}")
        if not self.is_diffusion:
            raise SimulatorInputError(f"this network takes spike inputs {sorted(self.inputs)}: run it with run_spikes")
        cfg = self.meta["model_config"]
        expected = (cfg["img_ch"], cfg["img_size"], cfg["img_size"])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise SimulatorInputError(f"x must have shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        t = t.long().cpu()
        if t.shape != (x.shape[0],) or int(t.min()) < 0 or int(t.max()) >= self.diffusion_steps:
            raise SimulatorInputError(f"t must be [B] diffusion steps in [0, {self.diffusion_steps})")
        run = self._zero_delay if mode == "zero_delay" else self._delayed
        spikes, readout, chip_steps = run(self.host_input(x).contiguous(memory_format=CHANNELS_LAST), t)
        return ChipRun("simulator", spikes, readout, self.eps_from_readout(readout, t), chip_steps)

    def _rest(self, p: Population, batch: int):
        """A population's state at rest: v (int32) for IF, (u, v) (int64) for any other LIF."""
        if p.is_if:
            if len(p.shape) == 3:
                return _zeros(batch, *p.shape, dtype=torch.int32, device=self.device)
            return torch.zeros(batch, *p.shape, dtype=torch.int32, device=self.device)
        return tuple(torch.zeros(batch, *p.shape, dtype=torch.int64, device=self.device) for _ in range(2))

    def _step(self, p: Population, state, a: torch.Tensor, bias: torch.Tensor):
        """One chip step of a population: the new state and its spikes (0/1). IF has its fast int32 path."""
        if p.is_if:
            return if_step(state, a, vth=p.vth, bias=bias)
        u, v, s = lif_step(state[0], state[1], a.to(torch.int64), du=p.du, dv=p.dv, vth=p.vth, bias=bias.to(torch.int64))
        return (u, v), s.to(torch.int32)

    @torch.no_grad()
    def run_spikes(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run a network with spike inputs on Lava's timing. inputs: name -> 0/1 [T, B, *shape], one per spike
        input. Returns every population's spikes, bool [T, B, *shape], all T steps; a voltage readout's voltage
        instead, int64 v-units [T, B, *shape] (after each step)."""
        if set(inputs) != set(self.inputs):
            raise SimulatorInputError(f"inputs must be given for {sorted(self.inputs)}, got {sorted(inputs)}")
        if not inputs:
            raise SimulatorInputError("this network takes no spike input (a diffusion network runs with run)")
        steps, batch = next(iter(inputs.values())).shape[:2]
        for name, x in inputs.items():
            if tuple(x.shape) != (steps, batch, *self.inputs[name]):
                raise SimulatorInputError(f"input {name!r}: expected [T={steps}, B={batch}, {self.inputs[name]}], "
                                          f"got {list(x.shape)}")
        history = {name: [] for name in [*self.inputs, *self._shape]}  # spikes of every step so far, int64 0/1
        voltages = {p.name: [] for p in self.populations if p.voltage_out}
        state = {p.name: self._rest(p, batch) for p in self.populations}
        into = {p.name: [s for s in self.synapses if s.target == p.name] for p in self.populations}
        bias = {p.name: self._bias(p, torch.zeros(batch, dtype=torch.long)).view(batch, p.shape[0],
                                                                                 *[1] * (len(p.shape) - 1))
                for p in self.populations}  # one row: a network with spike inputs has no bias schedule
        for tau in range(steps):
            now = {}
            for p in self.populations:
                a = torch.zeros(batch, *p.shape, dtype=torch.int64, device=self.device)
                for syn in into[p.name]:
                    k = tau - syn.delay
                    if k < 0 or not history[syn.source][k].any():
                        continue
                    a[:, syn.out_offset:syn.out_offset + syn.weight.shape[0]] += synapse_current(
                        syn, history[syn.source][k])
                on = p.depth <= tau and (self.snn_steps is None or tau < p.depth + self.snn_steps)
                b = bias[p.name]
                state[p.name], s = self._step(p, state[p.name], a, b if on else torch.zeros_like(b))
                now[p.name] = s.to(torch.int64)
                if p.voltage_out:
                    voltages[p.name].append((state[p.name] if p.is_if else state[p.name][1]).to(torch.int64))
            for name in self.inputs:
                history[name].append((inputs[name][tau] != 0).to(torch.int64).to(self.device))
            for name, s in now.items():
                history[name].append(s)
        return {p.name: torch.stack(voltages[p.name]) if p.voltage_out else torch.stack(history[p.name]).bool()
                for p in self.populations}

    def _zero_delay(self, a_host, t):
        """Population by population, all T steps at once: in a feed-forward network the inputs of
        step t are the sources' spikes of step t, so the layer-major order computes exactly what the
        step-major order does, with one batched conv per synapse group instead of T."""
        batch, steps = a_host.shape[0], self.snn_steps
        spikes = {}  # name -> int8 0/1 [T * B, C, H, W], the conv input of the consumers
        trains = {}  # name -> float32 0/1 [T, B, C, H, W], the run's record

        for p in self.populations:
            if p.host_input:
                a_seq = a_host.expand(steps, *a_host.shape)
            else:
                a_seq = self._sum(p.name, p.shape, steps * batch, lambda syn: spikes[syn.source])
                a_seq = a_seq.view(steps, batch, *p.shape)
            bias = self._bias(p, t)
            state = self._rest(p, batch)
            out = torch.empty(steps * batch, *p.shape, dtype=torch.float32, device=self.device,
                              memory_format=CHANNELS_LAST)
            out = out.view(steps, batch, *p.shape)
            for step in range(steps):
                state, out[step] = self._step(p, state, a_seq[step], bias)
            trains[p.name] = out
            spikes[p.name] = out.flatten(0, 1).to(torch.int8)
        readout = self._sum(READOUT, self.readout["shape"], steps * batch, lambda syn: spikes[syn.source])
        return trains, readout.long().contiguous().view(steps, batch, *self.readout["shape"]), steps

    def _delayed(self, a_host, t):
        batch, steps = a_host.shape[0], self.snn_steps
        chip_steps = self.readout["depth"] + steps
        v = {p.name: self._rest(p, batch) for p in self.populations}
        bias = {p.name: self._bias(p, t) for p in self.populations}
        zero_bias = torch.zeros(1, dtype=torch.int32, device=self.device)
        history: dict[str, list] = {p.name: [] for p in self.populations}  # spikes of every chip step so far
        readout = []
        for tau in range(chip_steps):
            def delivered(syn, tau=tau):  # what the synapse's delay line releases at step tau
                k = tau - syn.delay
                return history[syn.source][k] if k >= 0 else None

            now = {}
            for p in self.populations:
                if p.host_input:  # direct connection to a_in: no synapse, no delay
                    a = a_host if tau < steps else torch.zeros_like(a_host)
                else:
                    a = self._sum(p.name, p.shape, batch, delivered, skip_silent=True)
                window = p.depth <= tau < p.depth + steps
                v[p.name], s = self._step(p, v[p.name], a, bias[p.name] if window else zero_bias)
                if not window and s.any():
                    raise TimingError(f"population {p.name} spiked at chip step {tau}, outside its window "
                                      f"[{p.depth}, {p.depth + steps})")
                now[p.name] = s
            for name, s in now.items():
                history[name].append(s)
            if tau >= self.readout["depth"]:
                readout.append(self._sum(READOUT, self.readout["shape"], batch, delivered, skip_silent=True))
        spikes = {p.name: torch.stack(history[p.name][p.depth:p.depth + steps]) for p in self.populations}
        return spikes, torch.stack(readout).long().contiguous(), chip_steps

    def denoiser(self, mode: str = "zero_delay"):
        """eps = f(x_t, t) for the samplers of `sddpm.samplers`."""
        return lambda x, t: self.run(x, t, mode).eps.to(x.device, x.dtype)
