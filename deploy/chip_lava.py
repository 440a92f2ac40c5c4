"""A compiled SDDPM chip network (its NIR file) as a Lava process graph, one denoising step per run.

Mapping (docs/lava-fixed-point.md for every fixed-point rule quoted here):

- Population -> `LIFReset` (du = 4095, dv = 0: integrate-and-fire) of shape (W, H, C), Lava's conv layout,
  with the bias row of this denoising step. The chip contract switches a bias on only inside the
  population's window [depth, depth + T); Lava cannot switch a bias per step without `Var.set`, which
  sends element by element. Instead the bias stays on and `LIFReset` zeroes u and v at the first step of
  the window: whatever the population integrated or emitted before it is gone, and what it emits before or
  after reaches every target outside the target's own window (each synapse's delay is exactly the depth
  difference), so the spikes inside every window are the contract's.
- Synapse without up-sampling -> `Conv` holding the integer weights mant << exp (Lava's Conv ignores
  weight_exp, lava#803), zero-padded over the target's channels; a true convolution on (W, H, C), so the
  PyTorch kernel is flipped and transposed. Its output wraps at 24 bits, as the simulator models.
- Up-sampling synapse (nearest x u, then the conv) -> the same `Conv` reading a `SpikeUpsample` of its
  source (one per source and factor, shared), which repeats each spike u x u times in the same step: the
  kernel is stored once. (Sparse matrices with an entry per target neuron and tap, the earlier mapping,
  needed 25 bytes per entry across the forked processes: 14 GB at ch 64.)
- A synapse of delay d > 1 adds a `DelayLine` of d - 1 steps (a hardware synaptic delay on Loihi 2).
- The host's input current -> a `RingBuffer` wired straight to the first population's a_in (no delay),
  on for the first T steps. Spikes of every population and the readout's currents -> `FileSink`s,
  read once after the run.

Lava processes have no batch dimension: one image per run. States start at zero in every run. A whole sampling
chain on one graph built once: `deploy.chain_lava`.
"""
import os
import tempfile
import time

import numpy as np
import torch
from lava.magma.core.process.ports.ports import OutPort

from export.chip import READOUT, ChipNetwork, ChipPopulation, ChipSynapse, check_ranges, pair
from export.host import host_input_current, readout_to_eps
from chiprun import ChipRun

from deploy.errors import DeployError, DeployInputError
from deploy.layout import lava_conv_weight, lava_shape
from deploy.processes import (DelayLine, FileSink, SpikeUpsample, WindowBiasLIF, check_memory, read_record,
                              run_to_end)

RUN_CONFIGS = ("sim", "loihi2-hw")
# cpu: up-sampling and long delays through process types of ours (SpikeUpsample, DelayLine; Python models only);
# loihi2: only process types that Loihi 2 executes (deploy.loihi2_profile)
PROFILES = ("cpu", "loihi2")
# Process types on the host's side of a graph: feeding it and reading it back (host I/O)
HOST_TYPES = frozenset({"RingBuffer", "FileSink", "HostFeed", "WindowSink", "Monitor"})


class LavaGraphError(DeployError, ValueError):
    """The network cannot be built as a Lava graph; raised before any process starts."""


def run_config(kind: str = "sim"):
    """Lava's run configuration. "sim": the CPU simulator with the bit-accurate fixed-point models.
    "loihi2-hw": Loihi 2 itself, for graphs of the loihi2 profile; it needs Intel's lava-loihi extension (INRC
    members only) and its embedded I/O between host and chip. It has never been run here."""
    from lava.magma.core.run_configs import Loihi2HwCfg, Loihi2SimCfg

    if kind == "sim":
        return Loihi2SimCfg(select_tag="fixed_pt")
    if kind == "loihi2-hw":
        return Loihi2HwCfg()
    raise DeployInputError(f"run config must be one of {RUN_CONFIGS}, got {kind!r}")


def to_lava(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> Lava's (W, H, C)."""
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))


def lava_bias(pop: ChipPopulation, row: int = 0) -> np.ndarray:
    """A population's bias mantissas of one row, per channel, over every neuron in Lava's layout (NIR's axes
    reversed), int32."""
    per_channel = pop.bias_mant[row].astype(np.int32).reshape(-1, *[1] * (len(pop.shape) - 1))
    return np.ascontiguousarray(np.broadcast_to(per_channel, pop.shape).T)


def chip_network(net_or_path: ChipNetwork | str | os.PathLike) -> ChipNetwork:
    """The network, its design rules checked, or the network of a chip file (read and checked)."""
    if isinstance(net_or_path, ChipNetwork):
        check_ranges(net_or_path)
        return net_or_path
    from export.nir_chip import read_chip_nir

    return read_chip_nir(os.fspath(net_or_path))


def wire_synapses(net: ChipNetwork, sources: dict[str, OutPort], targets: dict) -> list:
    """Every chip synapse from its source's port (a population's s_out, a spike input's) to its target's a_in (or
    the readout's sink), with the delay lines that give it its delay; returns the processes made."""
    processes = []
    upsampled: dict[tuple[str, int], OutPort] = {}  # (source, factor) -> its up-sampled spikes, shared
    for syn in net.synapses:
        target_shape = net.readout.shape if syn.target == READOUT else net.population(syn.target).shape
        source = sources[syn.source]
        if syn.upsample != 1:
            if (syn.source, syn.upsample) not in upsampled:
                relay = SpikeUpsample(shape=source.shape, factor=syn.upsample)
                source.connect(relay.s_in)
                processes.append(relay)
                upsampled[syn.source, syn.upsample] = relay.s_out
            source = upsampled[syn.source, syn.upsample]
        out = (_dense if syn.dense else _conv)(syn, source, target_shape, processes)
        if syn.delay > 1:
            line = DelayLine(shape=lava_shape(target_shape), delay=syn.delay - 1)
            processes.append(line)
            out.connect(line.a_in)
            out = line.a_out
        out.connect(targets[syn.target])
    return processes


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise DeployInputError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


def wire(net: ChipNetwork, sources: dict[str, OutPort], targets: dict, profile: str = "cpu") -> list:
    """`wire_synapses` for the cpu profile, `deploy.loihi2_profile.wire_loihi2` for the loihi2 one."""
    if check_profile(profile) == "loihi2":
        from deploy.loihi2_profile import wire_loihi2

        return wire_loihi2(net, sources, targets)
    return wire_synapses(net, sources, targets)


def process_types(processes) -> dict[str, list[str]]:
    """The process types of a graph, split into the chip side and the host side (`HOST_TYPES`)."""
    names = {type(p).__name__ for p in processes}
    return {"chip_process_types": sorted(names - HOST_TYPES), "host_process_types": sorted(names & HOST_TYPES)}


# Lava's Dense keeps only even mixed-sign weights (docs/lava-fixed-point.md section 3.1): it gets doubled
# mantissas and one less in the exponent. Its floor shift then acts on sums of even numbers, so the result is
# mant << exp exactly, exp = 0 too.
DENSE_WEIGHT_FACTOR = 2
DENSE_EXP_OFFSET = -1


def _dense(syn: ChipSynapse, source: OutPort, target_shape, processes: list) -> OutPort:
    """The Lava Dense of one chip synapse reading `source` (flattened in NIR's C order where the synapse says so:
    Lava's axes reversed back are NIR's); returns its output port."""
    from lava.proc.dense.process import Dense

    weight = np.zeros((target_shape[0], syn.weight.shape[1]), dtype=np.int32)
    weight[syn.out_offset:syn.out_offset + syn.weight.shape[0]] = DENSE_WEIGHT_FACTOR * syn.weight.astype(np.int32)
    dense = Dense(weights=weight, weight_exp=syn.weight_exp + DENSE_EXP_OFFSET)
    port = source.transpose().flatten() if syn.flatten and len(source.shape) > 1 else source
    port.connect(dense.s_in)
    processes.append(dense)
    return dense.a_out


def _conv(syn: ChipSynapse, source: OutPort, target_shape, processes: list) -> OutPort:
    """The Lava Conv of one chip synapse reading `source` (the population's spikes, or their up-sampled copy),
    appended to `processes`; returns its output port (target layout)."""
    from lava.proc.conv.process import Conv

    weight = np.zeros((target_shape[0], *syn.weight.shape[1:]), dtype=np.int64)
    weight[syn.out_offset:syn.out_offset + syn.weight.shape[0]] = syn.integer_weight()
    if np.abs(weight).max() >= 2 ** 31:
        raise LavaGraphError(f"synapse {syn.source} -> {syn.target}: weights beyond Lava's int32")
    # Lava's axes are (W, H, C): its stride, padding and dilation are (x, y), our (H, W) reversed
    conv = Conv(weight=lava_conv_weight(weight), input_shape=source.shape, padding=pair(syn.padding)[::-1],
                stride=pair(syn.stride)[::-1], dilation=pair(syn.dilation)[::-1], groups=syn.groups)
    source.connect(conv.s_in)
    processes.append(conv)
    if conv.a_out.shape != lava_shape(target_shape):
        raise LavaGraphError(f"synapse {syn.source} -> {syn.target}: Conv gives {conv.a_out.shape}, the "
                             f"target is {lava_shape(target_shape)}")
    return conv.a_out


class ChipGraph:
    """The Lava processes of one denoising step of one image."""

    def __init__(self, net: ChipNetwork, a_host: np.ndarray, t: int, sink_dir: str, profile: str = "cpu"):
        from lava.proc.io.source import RingBuffer
        from lava.proc.lif.process import LIFReset

        self.net, self.sink_dir = net, sink_dir
        self.steps = net.steps_per_denoising_step
        self.lif, self.sinks, self.processes = {}, {}, []
        for p in net.populations:
            bias = lava_bias(p, t if p.bias_mant.shape[0] > 1 else 0)
            # Lava counts steps from 1 and resets when time_step % interval == offset: once, at chip step depth
            lif = LIFReset(shape=lava_shape(p.shape), du=p.du, dv=p.dv, vth=p.vth, bias_mant=bias,
                           bias_exp=p.bias_exp, reset_interval=self.steps + 1, reset_offset=p.depth + 1)
            self.lif[p.name] = lif
            self._sink(p.name, p.shape, lif.s_out)
        host = np.zeros((*to_lava(a_host).shape, self.steps), dtype=np.int32)
        host[..., :net.snn_steps] = to_lava(a_host)[..., None]
        source = RingBuffer(data=host)
        source.s_out.connect(self.lif[net.populations[0].name].a_in)
        self.processes.append(source)
        readout_sink = self._sink(READOUT, net.readout.shape)
        self.processes += wire(net, {name: lif.s_out for name, lif in self.lif.items()},
                               {READOUT: readout_sink.a_in} | {name: lif.a_in for name, lif in self.lif.items()},
                               profile)
        self.processes += list(self.lif.values())

    def _sink(self, name: str, shape, port=None) -> FileSink:
        sink = FileSink(shape=lava_shape(shape), steps=self.steps,
                        path=os.path.join(self.sink_dir, f"{len(self.sinks):03d}.npy"))
        self.sinks[name] = sink
        self.processes.append(sink)
        if port is not None:
            port.connect(sink.a_in)
        return sink

    def run(self, run_cfg) -> tuple[dict[str, np.ndarray], float, str | None]:
        """Run one forward pass; returns every sink's record [steps, C, H, W], the run's seconds and the note of
        the open-file limit."""
        check_memory(len(self.processes), self.net.weight_count)  # built, none started yet
        started = time.perf_counter()
        note = run_to_end(self.processes[0], self.steps, run_cfg, len(self.processes))
        seconds = time.perf_counter() - started
        return ({name: np.transpose(read_record(sink), (0, 3, 2, 1)) for name, sink in self.sinks.items()}, seconds,
                note)


def run_denoising_step(net: ChipNetwork, x: torch.Tensor, t: int, run_cfg=None, profile: str = "cpu") -> ChipRun:
    """One forward pass of the chip network on Lava for one image x_t [1, C, H, W] at diffusion step t, its graph
    built for `profile` (`PROFILES`); the time embedding's bias row of t is the populations' bias."""
    check_ranges(net)  # every integer inside its hardware range, before any process starts
    if x.dim() != 4 or x.shape[0] != 1:
        raise DeployInputError(f"Lava runs one image at a time: x must be [1, C, H, W], got {list(x.shape)}")
    if not 0 <= t < net.diffusion_steps:
        raise DeployInputError(f"t must lie in [0, {net.diffusion_steps}), got {t}")
    a_host = host_input_current(net, x)[0].numpy().astype(np.int32)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sddpm-lava-") as sink_dir:
        graph = ChipGraph(net, a_host, t, sink_dir, profile)  # `wire` checks the profile
        build = time.perf_counter() - started
        records, seconds, note = graph.run(run_cfg if run_cfg is not None else run_config("sim"))
    steps = net.snn_steps
    depth = {p.name: p.depth for p in net.populations} | {READOUT: net.readout.depth}
    windows = {name: record[depth[name]:depth[name] + steps] for name, record in records.items()}
    return lava_run(net, windows, t, {"build": build, "run": seconds},
                    {"processes": len(graph.processes), "open_file_limit": note, "profile": profile,
                     **process_types(graph.processes)})


def lava_run(net: ChipNetwork, windows: dict[str, np.ndarray], t: int, seconds: dict[str, float],
             info: dict) -> ChipRun:
    """The run record of one image from the sinks' windows [T, C, H, W] (every population's and the
    readout's), with the batch axis of one image added."""
    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(windows[name]))[:, None]

    spikes = {p.name: tensor(p.name).bool() for p in net.populations}
    readout = tensor(READOUT).long()
    return ChipRun("lava", spikes, readout, readout_to_eps(net, readout, torch.tensor([t])),
                   net.steps_per_denoising_step, seconds, info)


def check_spike_inputs(net: ChipNetwork, inputs: dict[str, np.ndarray]) -> int:
    """The number of steps of 0/1 spike trains [T, *shape], one per spike input of the network."""
    expected = {i.name: i.shape for i in net.inputs}
    if set(inputs) != set(expected) or not expected:
        raise DeployInputError(f"inputs must be given for the spike inputs {sorted(expected)}, got {sorted(inputs)}")
    steps = {len(x) for x in inputs.values()}
    if len(steps) != 1 or 0 in steps:
        raise DeployInputError(f"every input needs the same number T >= 1 of steps, got {sorted(steps)}")
    steps = steps.pop()
    for name, x in inputs.items():
        if np.shape(x) != (steps, *expected[name]):
            raise DeployInputError(f"input {name!r}: expected [T={steps}, {expected[name]}], got {list(np.shape(x))}")
        if not np.isin(x, (0, 1)).all():
            raise DeployInputError(f"input {name!r}: spikes must be 0 or 1")
    return steps


def spikes_to_lava(spikes: np.ndarray) -> np.ndarray:
    """[T, *NIR shape] -> a RingBuffer's int32 (*Lava shape, T): every axis reversed."""
    return np.ascontiguousarray(np.asarray(spikes).T, dtype=np.int32)


def spikes_from_lava(record: np.ndarray) -> np.ndarray:
    """A FileSink's [T, *Lava shape] -> bool [T, *NIR shape]."""
    return record.transpose(0, *range(record.ndim - 1, 0, -1)).astype(bool)


def run_spikes_on_lava(net: ChipNetwork | str | os.PathLike, inputs: dict[str, np.ndarray],
                       run_cfg=None) -> dict[str, np.ndarray]:
    """Run a network with spike inputs (an imported NIR graph), or its chip file, on Lava, one sample: inputs
    name -> 0/1 [T, *shape].
    Returns every population's spikes, bool [T, *shape], on the timing of `simulators.network.run_spikes`: an
    input's spikes of step t reach its targets at t + delay (a RingBuffer sends column t at Lava's step t + 1); a
    voltage readout's v after each step instead, int64 [T, *shape], read by Lava's Monitor."""
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor

    net = chip_network(net)
    if net.is_diffusion or net.snn_steps is not None:
        raise LavaGraphError("a diffusion or windowed network runs one denoising step at a time (run_denoising_step)")
    steps = check_spike_inputs(net, inputs)
    with tempfile.TemporaryDirectory(prefix="sddpm-lava-") as sink_dir:
        ports = {name: RingBuffer(data=spikes_to_lava(x)).s_out for name, x in inputs.items()}
        lifs, sinks, processes = {}, {}, []
        for p in net.populations:
            params = dict(shape=lava_shape(p.shape), du=p.du, dv=p.dv, vth=p.vth, bias_mant=lava_bias(p),
                          bias_exp=p.bias_exp, name=p.name)
            late = p.depth > 0 and p.bias_mant.any()
            lifs[p.name] = WindowBiasLIF(bias_start=p.depth, **params) if late else LIF(**params)
            sinks[p.name] = FileSink(lava_shape(p.shape), steps, os.path.join(sink_dir, f"{len(sinks):04d}.npy"))
            lifs[p.name].s_out.connect(sinks[p.name].a_in)
            ports[p.name] = lifs[p.name].s_out
        monitors = {p.name: Monitor() for p in net.populations if p.voltage_out}
        for name, monitor in monitors.items():
            monitor.probe(lifs[name].v, steps)
        processes += [*lifs.values(), *sinks.values(), *monitors.values()]
        processes += wire_synapses(net, ports, {name: lif.a_in for name, lif in lifs.items()})
        check_memory(len(processes) + len(inputs), net.weight_count)
        voltages = {}

        def read_voltages():
            for name, monitor in monitors.items():
                record = monitor.get_data()[lifs[name].name]["v"]  # [T, *Lava shape]
                voltages[name] = record.transpose(0, *range(record.ndim - 1, 0, -1)).astype(np.int64)
        run_to_end(processes[0], steps, run_cfg, len(processes) + len(inputs), read_voltages)
        return {name: voltages[name] if name in voltages else spikes_from_lava(read_record(sink))
                for name, sink in sinks.items()}
