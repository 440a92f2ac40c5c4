"""Run a compiled "sddpm-net-nir" graph (a NIR graph from another tool, with Lava's integers in its node
metadata, written by `export.nir_foreign`) on Lava's fixed-point CPU models, one sample at a time.

Mapping (../shared/research/lava.md sections 1-3 and 5):
- an IF/LIF/CubaLIF node -> `LIF(du, dv, vth, bias_mant, bias_exp)` from its metadata, or, where its bias
  is nonzero and switches on after the first step (`bias_start`), `WindowBiasLIF`: Lava's bit-accurate
  LIF whose bias is 0 before that step;
- Affine/Linear -> `Dense`. Lava clips mixed-sign weights to 8 bits and truncates them to even values
  (lava.md 2.1), so it gets `2 * mant` with `weight_exp = exp - 1`: the floor shift applies to the sum,
  which is even, so this is exact also for exp = 0;
- Conv2d -> `Conv` with the integer weights `mant << exp` (Lava's Conv ignores weight_exp, lava#803),
  turned from PyTorch's cross-correlation [C_out, C_in, kH, kW] into Lava's true convolution
  (C_out, kX, kY, C_in): both kernel axes flipped, then the axes reordered (lava.md 3);
- Input -> `RingBuffer` (it sends column t-1 at Lava step t); every neuron node's spikes -> a `FileSink`.

Layout. Lava's conv populations are (X, Y, C) = (W, H, C) where NIR's are (C, H, W). Every population
and input is kept in Lava as its NIR array with the axes reversed (1-D ones unchanged); a Flatten is then
the virtual port `.transpose().flatten()` (transpose reverses the axes back), NIR's C-order flattening.

Every refusal (`UnsupportedGraphError`, naming the node) comes from `plan_net`, before any Lava process
exists; a run that fails is torn down without leaving OS processes behind (`run_to_end`).

Timing is `simulators.nir_net`'s: an Input's spikes of step t reach its neurons at t + 1 through
RingBuffer -> synapse, each synapse delays by one step, and recurrent edges need nothing special
(Lava's synapses send before they receive).

This module reads the integers from node metadata itself and must not import `simulators` or `sddpm`.
Lava's compiler executes every module of this package, outside the package, when it looks for FileSink's
process model: module level stays cheap (Lava only, no lava-dl), and without `from __future__ import
annotations`, whose string annotations dataclasses cannot resolve there.
"""
import operator
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import nir
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.run_configs import RunConfig
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.source import RingBuffer
from lava.proc.lif.models import PyLifModelBitAcc
from lava.proc.lif.process import LIF

from deploy.errors import DeployError, DeployInputError
from deploy.layout import lava_conv_weight, lava_shape
from deploy.processes import FileSink, run_to_end
from export.chip import BIAS_EXP_MAX, BIAS_MANT_MAX, CURRENT_LIMIT, VTH_MAX, WEIGHT_MANT_MAX
from export.nir_chip import metadata_value, read_sealed, scalar

FORMAT = "sddpm-net-nir"  # export.nir_foreign.FORMAT; that module imports torch, so not imported here
VERSIONS = (2,)  # 2: bias_start
SYNAPSES = (nir.Affine, nir.Linear, nir.Conv2d)
NEURONS = (nir.IF, nir.LIF, nir.CubaLIF)
NODE_TYPES = (nir.Input, nir.Output, nir.Flatten) + SYNAPSES + NEURONS

# Decays: Lava multiplies u by 4096 - (du + 1) and v by 4096 - dv (lava.md 1.3). Both factors lie in
# [0, 4096]: du = -1 keeps the current unchanged (netx's iDecay = 0), dv = 4096 forgets v every step.
DECAY_UNITY = 4096
DU_RANGE = (-1, DECAY_UNITY - 1)
DV_RANGE = (0, DECAY_UNITY)
# Dense keeps only even mixed-sign weights (lava.md 2.1): doubled mantissas, one less in the exponent.
DENSE_WEIGHT_FACTOR = 2
DENSE_EXP_OFFSET = -1


class UnsupportedGraphError(DeployError, ValueError):
    """The graph is not a compiled sddpm-net-nir graph that Lava can run exactly; names the node."""


@dataclass(frozen=True)
class Population:
    """A neuron node: Lava's LIF integers; shapes in NIR order."""
    name: str
    shape: tuple[int, ...]
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray  # int16, `shape`
    bias_exp: int
    bias_start: int  # the first step (from 0) the bias is on

    @property
    def bias(self) -> np.ndarray:
        """The bias in v-units (bias_exp >= 0 here), as Lava adds it every step."""
        return self.bias_mant.astype(np.int64) << self.bias_exp


@dataclass(frozen=True)
class ConvGeometry:
    """A Conv2d's stride, padding and dilation in NIR's (H, W) order."""
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class Synapse:
    name: str
    source: str  # a population or an Input
    target: str  # a population
    mant: np.ndarray  # int64 mantissas: [out, in], or PyTorch's [C_out, C_in / groups, kH, kW]
    exp: int
    flatten: bool  # reads its source through a Flatten
    conv: ConvGeometry | None

    @property
    def weight(self) -> np.ndarray:
        return self.mant << self.exp


@dataclass(frozen=True)
class NetPlan:
    """Everything a Lava build needs, checked; no Lava process exists yet."""
    inputs: dict[str, tuple[int, ...]]
    populations: dict[str, Population]
    synapses: tuple[Synapse, ...]

    def source_shape(self, name: str) -> tuple[int, ...]:
        return self.inputs[name] if name in self.inputs else self.populations[name].shape

    @property
    def process_count(self) -> int:
        """Lava processes of the build: a RingBuffer per input, a synapse each, a LIF and a sink per population."""
        return len(self.inputs) + len(self.synapses) + 2 * len(self.populations)


def load_graph(graph_or_path: nir.NIRGraph | str | os.PathLike) -> nir.NIRGraph:
    """The graph, or the file's with its digest checked (write_foreign seals what it writes)."""
    if isinstance(graph_or_path, nir.NIRGraph):
        return graph_or_path
    return read_sealed(os.fspath(graph_or_path), FORMAT, UnsupportedGraphError)


def _meta(name: str, node, key: str):
    return metadata_value(node.metadata, key, f"node {name!r}", UnsupportedGraphError,
                          " (compile the graph with `sddpm import-nir` first)")


def _int_meta(name: str, node, key: str, low: int, high: int | None) -> int:
    value = _meta(name, node, key)
    try:
        value = operator.index(value)  # ints only: a float du or vth would make Lava's model raise mid-run
    except TypeError:
        raise UnsupportedGraphError(f"node {name!r}: {key} = {value!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise UnsupportedGraphError(f"node {name!r}: {key} = {value} outside [{low}, {high}]")
    return value


def _int_array_meta(name: str, node, key: str, limit: int) -> np.ndarray:
    array = np.asarray(_meta(name, node, key))
    if not np.issubdtype(array.dtype, np.integer):
        raise UnsupportedGraphError(f"node {name!r}: {key} has dtype {array.dtype}, not integers")
    array = array.astype(np.int64)
    if np.abs(array).max(initial=0) > limit:
        raise UnsupportedGraphError(f"node {name!r}: {key} outside +-{limit}")
    return array


def _population(name: str, node) -> Population:
    shape = tuple(int(v) for v in np.asarray(node.v_threshold).shape)
    bias_mant = _int_array_meta(name, node, "bias_mant", BIAS_MANT_MAX)
    if bias_mant.shape != shape:
        raise UnsupportedGraphError(f"node {name!r}: bias_mant has shape {bias_mant.shape}, the neurons {shape}")
    return Population(name, shape, du=_int_meta(name, node, "du", *DU_RANGE),
                      dv=_int_meta(name, node, "dv", *DV_RANGE), vth=_int_meta(name, node, "vth", 0, VTH_MAX),
                      bias_mant=bias_mant.astype(np.int16), bias_exp=_int_meta(name, node, "bias_exp", 0, BIAS_EXP_MAX),
                      bias_start=_int_meta(name, node, "bias_start", 0, None))


def _pair(name: str, field: str, value) -> tuple[int, int]:
    if isinstance(value, str):
        raise UnsupportedGraphError(f"node {name!r}: {field} {value!r}; give it as integers")
    return tuple(int(v) for v in np.broadcast_to(value, 2))


def _conv_geometry(name: str, node: nir.Conv2d) -> ConvGeometry:
    return ConvGeometry(_pair(name, "stride", node.stride), _pair(name, "padding", node.padding),
                        _pair(name, "dilation", node.dilation), int(node.groups))


def _conv_output(shape: tuple[int, ...], mant: np.ndarray, geo: ConvGeometry) -> tuple[int, ...]:
    kernel = mant.shape[2:]
    spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(shape[1:], kernel, geo.stride, geo.padding, geo.dilation)]
    return (mant.shape[0], *spatial)


def _conv_synapse(name: str, node: nir.Conv2d, mant: np.ndarray, src: tuple[int, ...], tgt: tuple[int, ...],
                  flatten: bool) -> ConvGeometry:
    geo = _conv_geometry(name, node)
    if flatten or len(src) != 3 or src[0] != mant.shape[1] * geo.groups:
        raise UnsupportedGraphError(f"synapse {name!r}: a Conv2d of weight {mant.shape} reads (C, H, W) spikes "
                                    f"with C = {mant.shape[1] * geo.groups}, not {src}"
                                    + (" through a Flatten" if flatten else ""))
    if _conv_output(src, mant, geo) != tgt:
        raise UnsupportedGraphError(f"synapse {name!r}: outputs {_conv_output(src, mant, geo)}, its target has "
                                    f"shape {tgt}")
    return geo


def _check_dense_shapes(name: str, mant: np.ndarray, src: tuple[int, ...], tgt: tuple[int, ...],
                        flatten: bool) -> None:
    if len(src) != 1 and not flatten:
        raise UnsupportedGraphError(f"synapse {name!r}: reads {src} spikes without a Flatten")
    if len(tgt) != 1 or mant.shape != (tgt[0], int(np.prod(src))):
        raise UnsupportedGraphError(f"synapse {name!r}: weight {mant.shape} does not map {src} spikes to a 1-D "
                                    f"population, but to {tgt}")


def _synapse(name: str, node, source: str, flatten: bool, target: str, shapes: Mapping) -> Synapse:
    mant = _int_array_meta(name, node, "weight_mant", WEIGHT_MANT_MAX)
    if mant.shape != np.shape(node.weight):
        raise UnsupportedGraphError(f"node {name!r}: weight_mant has shape {mant.shape}, the weight "
                                    f"{np.shape(node.weight)}")
    exp = _int_meta(name, node, "weight_exp", 0, None)
    peak = int(np.abs(mant).max(initial=0)) << exp  # Python ints: a large exp must not overflow int64
    if peak >= CURRENT_LIMIT:
        raise UnsupportedGraphError(f"synapse {name!r}: weights up to {peak} a-units; one spike must stay below "
                                    f"{CURRENT_LIMIT} (a << 6 inside u's 24 bits)")
    if isinstance(node, nir.Conv2d):
        geo = _conv_synapse(name, node, mant, shapes[source], shapes[target], flatten)
        return Synapse(name, source, target, mant, exp, flatten, geo)
    _check_dense_shapes(name, mant, shapes[source], shapes[target], flatten)
    return Synapse(name, source, target, mant, exp, flatten, None)


def _check_format(graph: nir.NIRGraph) -> None:
    meta = graph.metadata or {}
    fmt, version = scalar(meta.get("format")), scalar(meta.get("version", -1))
    if fmt != FORMAT or version not in VERSIONS:
        raise UnsupportedGraphError(f"not an {FORMAT} graph of version {VERSIONS} (format {fmt!r}, version "
                                    f"{version!r}): compile a NIR graph with `sddpm import-nir` first")
    for name, node in graph.nodes.items():
        if not isinstance(node, NODE_TYPES):
            raise UnsupportedGraphError(f"node {name!r}: NIR type {type(node).__name__} is not supported "
                                        f"(supported: {', '.join(t.__name__ for t in NODE_TYPES)})")


def _edge_supported(a, b) -> bool:
    spiking = NEURONS + (nir.Input,)
    return ((isinstance(a, SYNAPSES) and isinstance(b, NEURONS))
            or (isinstance(a, spiking) and isinstance(b, SYNAPSES + (nir.Flatten,)))
            or (isinstance(a, nir.Flatten) and isinstance(b, SYNAPSES))
            or (isinstance(a, NEURONS) and isinstance(b, nir.Output)))


def _check_edges(graph: nir.NIRGraph) -> None:
    for a, b in graph.edges:
        if a not in graph.nodes or b not in graph.nodes:
            raise UnsupportedGraphError(f"edge {a!r} -> {b!r}: unknown node")
        if not _edge_supported(graph.nodes[a], graph.nodes[b]):
            raise UnsupportedGraphError(f"edge {a!r} -> {b!r}: {type(graph.nodes[a]).__name__} -> "
                                        f"{type(graph.nodes[b]).__name__} is not supported (synapses read spikes, "
                                        f"optionally through one Flatten, and drive neurons; Outputs read neurons)")


def _single(name: str, what: str, names: list[str]) -> str:
    if len(names) != 1:
        raise UnsupportedGraphError(f"node {name!r}: needs exactly one {what}, has {names}")
    return names[0]


def _check_connected(graph: nir.NIRGraph) -> None:
    # Lava runs the processes connected to the one it is started from: a separate part would not run.
    neighbours: dict[str, set[str]] = {name: set() for name in graph.nodes}
    for a, b in graph.edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    start = next(iter(graph.nodes))
    seen, todo = {start}, [start]
    while todo:
        for other in neighbours[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    if len(seen) != len(graph.nodes):
        raise UnsupportedGraphError(f"nodes {sorted(set(graph.nodes) - seen)} are not connected to {start!r}")


def plan_net(graph: nir.NIRGraph) -> NetPlan:
    """Check the graph and read its integers; every refusal names the node."""
    _check_format(graph)
    _check_edges(graph)
    nodes = graph.nodes
    into: dict[str, list[str]] = {name: [] for name in nodes}
    out_of: dict[str, list[str]] = {name: [] for name in nodes}
    for a, b in graph.edges:
        into[b].append(a)
        out_of[a].append(b)
    inputs = {name: tuple(int(v) for v in node.output_type["output"]) for name, node in nodes.items()
              if isinstance(node, nir.Input)}
    populations = {name: _population(name, node) for name, node in nodes.items() if isinstance(node, NEURONS)}
    if not populations:
        raise UnsupportedGraphError("the graph has no neuron node: nothing to run")
    shapes = {**inputs, **{name: pop.shape for name, pop in populations.items()}}
    synapses = []
    for name, node in nodes.items():
        if not isinstance(node, SYNAPSES):
            continue
        source = _single(name, "input", into[name])
        flatten = isinstance(nodes[source], nir.Flatten)
        if flatten:
            source = _single(source, "input", into[source])
        target = _single(name, "output", out_of[name])
        synapses.append(_synapse(name, node, source, flatten, target, shapes))
    _check_connected(graph)
    return NetPlan(inputs, populations, tuple(synapses))


class WindowBiasLIF(LIF):
    """Lava's `LIF` whose bias is off before step `bias_start` (counted from 0)."""

    def __init__(self, *, bias_start: int, **lif):
        super().__init__(**lif)
        self.proc_params["bias_start"] = bias_start


@implements(proc=WindowBiasLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowBiasLIFModel(PyLifModelBitAcc):
    # registered for WindowBiasLIF alone; the parent stays LIF's model (Lava's @implements refuses a
    # subclass of a model registered for another process)
    implements_process = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.bias_start = proc_params["bias_start"]

    def scale_bias(self):
        super().scale_bias()  # run_spk calls it every step, before the voltage update
        if self.time_step <= self.bias_start:  # Lava counts steps from 1
            self.effective_bias = np.zeros_like(self.effective_bias)


def check_inputs(expected: Mapping[str, tuple[int, ...]], inputs: Mapping[str, np.ndarray]) -> int:
    """The number of steps of 0/1 spike trains [T, *shape], one per Input."""
    if set(inputs) != set(expected):
        raise DeployInputError(f"inputs must be given for {sorted(expected)}, got {sorted(inputs)}")
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


def to_lava(spikes: np.ndarray) -> np.ndarray:
    """[T, *NIR shape] -> a RingBuffer's int32 (*Lava shape, T): every axis reversed."""
    return np.ascontiguousarray(np.asarray(spikes).T, dtype=np.int32)


def from_lava(record: np.ndarray) -> np.ndarray:
    """A FileSink's [T, *Lava shape] -> bool [T, *NIR shape]."""
    return record.transpose(0, *range(record.ndim - 1, 0, -1)).astype(bool)


def _synapse_process(syn: Synapse, source_shape: tuple[int, ...]) -> AbstractProcess:
    if syn.conv is None:
        return Dense(weights=(DENSE_WEIGHT_FACTOR * syn.mant).astype(np.int32), weight_exp=syn.exp + DENSE_EXP_OFFSET)
    geo = syn.conv
    return Conv(weight=lava_conv_weight(syn.weight), input_shape=lava_shape(source_shape), stride=geo.stride[::-1],
                padding=geo.padding[::-1], dilation=geo.dilation[::-1], groups=geo.groups)


def _read_port(port: OutPort, flatten: bool) -> OutPort:
    # reversing the Lava axes gives NIR's (C, H, W), whose C-order flattening is NIR's Flatten
    return port.transpose().flatten() if flatten and len(port.shape) > 1 else port


def _build(plan: NetPlan, inputs: Mapping[str, np.ndarray], steps: int, sink_dir: str) \
        -> tuple[AbstractProcess, dict[str, str]]:
    """The Lava processes, connected; returns one of them (running it runs the whole connected graph) and each
    population's sink file."""
    ports = {name: RingBuffer(data=to_lava(inputs[name])).s_out for name in plan.inputs}
    lifs, paths = {}, {}
    for name, pop in plan.populations.items():
        params = dict(shape=lava_shape(pop.shape), du=pop.du, dv=pop.dv, vth=pop.vth, bias_mant=pop.bias_mant.T,
                      bias_exp=pop.bias_exp, name=name)
        windowed = pop.bias_start > 0 and pop.bias_mant.any()
        lifs[name] = WindowBiasLIF(bias_start=pop.bias_start, **params) if windowed else LIF(**params)
        paths[name] = os.path.join(sink_dir, f"{len(paths)}.npy")  # node names may hold any character
        sink = FileSink(lava_shape(pop.shape), steps, paths[name])
        lifs[name].s_out.connect(sink.a_in)
        ports[name] = lifs[name].s_out
    for syn in plan.synapses:
        proc = _synapse_process(syn, plan.source_shape(syn.source))
        _read_port(ports[syn.source], syn.flatten).connect(proc.s_in)
        proc.a_out.connect(lifs[syn.target].a_in)
    return next(iter(lifs.values())), paths


def run_net_on_lava(graph_or_path: nir.NIRGraph | str | os.PathLike, inputs: Mapping[str, np.ndarray],
                    run_cfg: RunConfig | None = None) -> dict[str, np.ndarray]:
    """Run a compiled sddpm-net-nir graph on Lava (default: Loihi2SimCfg, fixed_pt), one sample.

    inputs: Input name -> 0/1 spikes [T, *shape]. Returns every neuron node's spikes, bool [T, *shape].
    """
    plan = plan_net(load_graph(graph_or_path))
    steps = check_inputs(plan.inputs, inputs)
    with tempfile.TemporaryDirectory(prefix="net_lava_") as sink_dir:
        anchor, paths = _build(plan, inputs, steps, sink_dir)
        run_to_end(anchor, steps, run_cfg, plan.process_count)
        return {name: from_lava(np.load(path)) for name, path in paths.items()}

