"""Read and check a compiled "sddpm-net-nir" graph (a NIR graph from another tool, with Lava's integers in its
node metadata, written by `export.nir_foreign`) into a `NetPlan`: populations, synapses and inputs with their
integers, every refusal (`UnsupportedGraphError`, naming the node) raised here, before any Lava process exists.

Both Lava backends build from the plan: `deploy.net_lava` (Lava's own processes) and `deploy.netx` (lava-dl's
netx). Like every module of this package (Lava's compiler executes them all when it looks for a process model),
module level stays cheap and without `from __future__ import annotations`; it imports no Lava, `simulators` or
`sddpm` module.
"""
import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass

import nir
import numpy as np

from deploy.errors import DeployError
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
