"""Compile a NIR graph written by another tool (snnTorch, Norse, Sinabs, ...) to Loihi 2 integers.

NIR leaves time to the backend. This is our documented discretization, step by step (one chip step = dt):

- `Affine`/`Linear`/`Conv2d`, optionally after a `Flatten`, are synapses; every synapse delivers at step
  t + 1 the spikes its source emitted at step t (Lava's one step per synapse process). An `Input` emits
  the given spike train (0/1 per step).
- `IF` (v' = R I): v += R I every step. IF has no time constant, so dt does not enter (as in Sinabs and
  the NIR paper's Lava converter).
- `LIF` (tau v' = v_leak - v + R I), forward Euler: v = (1 - dt/tau) v + dt/tau (v_leak + R I).
- `CubaLIF`: I = (1 - dt/tau_syn) I + dt/tau_syn w_in S, then v = (1 - dt/tau_mem) v + dt/tau_mem
  (v_leak + R I) with the *updated* I (Lava's order: the current first, the voltage from the new current).
- A neuron spikes when v > v_threshold and resets to v_reset, which must be 0 (Lava resets to 0).

Lava's LIF runs this with du = round(4096 dt/tau_syn) - 1 (4095, no current memory, for IF and LIF),
dv = round(4096 dt/tau_mem) (0 for IF); the gains dt/tau_syn w_in and dt/tau_mem R fold into the
weights, v_leak dt/tau_mem and an Affine bias into Lava's bias. One integer a-unit stands for
`scale` = v_threshold / VTH_A of the float voltage, so the threshold is VTH_A a-units; weights become
8-bit mantissas with an exponent per synapse, biases 13-bit mantissas with an exponent. Lava's LIF
takes scalar parameters, so every neuron of a node must share them; what does not map is refused by
node name (`ForeignGraphError`).

The output is the source graph, unchanged and still plain NIR, with the integers in node metadata and
the discretization in the graph metadata (format "sddpm-net-nir"). `run_discrete` runs the same
discretization in float64, without quantization: the yardstick for the integers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import nir
import numpy as np
import torch
import torch.nn.functional as F

from sddpm.files import atomic_path

from .errors import ExportError
from .chip import BIAS_EXP_MAX, BIAS_MANT_MAX, WEIGHT_MANT_MAX

FORMAT = "sddpm-net-nir"
VERSION = 1
DECAY_UNITY = 4096  # Lava's decays are 12-bit fractions
NO_CURRENT_MEMORY = 4095  # du: u = a_in << 6 every step
VTH_A = 1 << 10  # the threshold in a-units: headroom of 2^7 thresholds below the 2^17 a-unit limit (tested)
V_PER_A = 64  # a_in << 6 enters u and v

SYNAPSES = (nir.Affine, nir.Linear, nir.Conv2d)
NEURONS = (nir.IF, nir.LIF, nir.CubaLIF)


class ForeignGraphError(ExportError, ValueError):
    """The NIR graph holds a node, parameter or structure that does not map to Lava's integer LIF."""


@dataclass(frozen=True)
class Discretization:
    dt: float = 1e-4  # seconds per step: the snnTorch / NIR-paper convention for tau in seconds


def _uniform(name: str, field: str, value) -> float:
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0 or not np.all(array == array.flat[0]):
        raise ForeignGraphError(f"node {name!r}: {field} differs between neurons; Lava's LIF takes one value "
                                f"per process")
    return float(array.flat[0])


@dataclass(frozen=True)
class NeuronMap:
    """One neuron node's discrete dynamics (float) and its gains."""
    current_keep: float  # 1 - dt/tau_syn (0: no current memory)
    voltage_keep: float  # 1 - dt/tau_mem (1: no leak)
    gain: float  # input weight -> voltage contribution per step
    leak_bias: float  # constant voltage per step from v_leak
    threshold: float


def neuron_map(name: str, node, disc: Discretization) -> NeuronMap:
    if _uniform(name, "v_reset", node.v_reset) != 0.0:
        raise ForeignGraphError(f"node {name!r}: v_reset must be 0 (Lava resets v to 0)")
    threshold = _uniform(name, "v_threshold", node.v_threshold)
    if threshold <= 0:
        raise ForeignGraphError(f"node {name!r}: v_threshold {threshold} must be > 0")
    r = _uniform(name, "r", node.r)
    if isinstance(node, nir.IF):
        return NeuronMap(0.0, 1.0, r, 0.0, threshold)
    k_mem = disc.dt / _uniform(name, "tau" if isinstance(node, nir.LIF) else "tau_mem",
                               node.tau if isinstance(node, nir.LIF) else node.tau_mem)
    if not 0 < k_mem <= 1:
        raise ForeignGraphError(f"node {name!r}: dt/tau_mem = {k_mem} must lie in (0, 1]")
    v_leak = _uniform(name, "v_leak", node.v_leak)
    if isinstance(node, nir.LIF):
        return NeuronMap(0.0, 1.0 - k_mem, k_mem * r, k_mem * v_leak, threshold)
    k_syn = disc.dt / _uniform(name, "tau_syn", node.tau_syn)
    if not 0 < k_syn <= 1:
        raise ForeignGraphError(f"node {name!r}: dt/tau_syn = {k_syn} must lie in (0, 1]")
    w_in = _uniform(name, "w_in", node.w_in)
    return NeuronMap(1.0 - k_syn, 1.0 - k_mem, k_syn * w_in * k_mem * r, k_mem * v_leak, threshold)


@dataclass(frozen=True)
class Wiring:
    """Each synapse's source (a neuron or Input, through an optional Flatten) and target neuron."""
    source: dict[str, str]
    target: dict[str, str]
    flatten: dict[str, bool]
    outputs: dict[str, str]  # Output node -> the neuron it reads


def wiring(graph: nir.NIRGraph) -> Wiring:
    nodes = graph.nodes
    for name, node in nodes.items():
        if not isinstance(node, SYNAPSES + NEURONS + (nir.Input, nir.Output, nir.Flatten)):
            raise ForeignGraphError(f"node {name!r}: NIR type {type(node).__name__} has no chip mapping here "
                                    f"(supported: Input, Output, Flatten, Affine, Linear, Conv2d, IF, LIF, CubaLIF)")
    into: dict[str, list[str]] = {}
    for a, b in graph.edges:
        into.setdefault(b, []).append(a)
    source, target, flatten, outputs = {}, {}, {}, {}
    for name, node in nodes.items():
        srcs = into.get(name, [])
        if isinstance(node, SYNAPSES):
            if len(srcs) != 1:
                raise ForeignGraphError(f"synapse {name!r}: needs exactly one input, has {srcs}")
            src, flatten[name] = srcs[0], isinstance(nodes[srcs[0]], nir.Flatten)
            if flatten[name]:
                src = (into.get(src) or [None])[0]
            if not isinstance(nodes.get(src), NEURONS + (nir.Input,)):
                raise ForeignGraphError(f"synapse {name!r}: reads {src!r}; a synapse must read spikes (a neuron "
                                        f"or an Input, optionally through one Flatten)")
            source[name] = src
        elif isinstance(node, NEURONS):
            for s in srcs:
                if not isinstance(nodes[s], SYNAPSES):
                    raise ForeignGraphError(f"neuron {name!r}: input {s!r} is a {type(nodes[s]).__name__}; "
                                            f"neurons take synapses")
                target[s] = name
        elif isinstance(node, nir.Output):
            if len(srcs) != 1 or not isinstance(nodes[srcs[0]], NEURONS):
                raise ForeignGraphError(f"output {name!r}: must read one spiking neuron node, reads {srcs}")
            outputs[name] = srcs[0]
    for name in source:
        if name not in target:
            raise ForeignGraphError(f"synapse {name!r}: feeds no neuron")
    return Wiring(source, target, flatten, outputs)


def _synapse_weight(node) -> np.ndarray:
    return np.asarray(node.weight, dtype=np.float64)


def _synapse_bias(node) -> np.ndarray | None:
    bias = getattr(node, "bias", None)
    return None if bias is None or not np.any(np.asarray(bias)) else np.asarray(bias, dtype=np.float64)


def _mant_exp(values: np.ndarray, mant_max: int, exp_max: int | None = None) -> tuple[np.ndarray, int]:
    """values ~ mant << exp with |mant| <= mant_max and the smallest exp >= 0 that fits (round half even)."""
    peak = float(np.abs(values).max(initial=0.0))
    exp = max(0, math.ceil(math.log2(peak / mant_max))) if peak > mant_max else 0
    while np.abs(np.round(values / 2.0 ** exp)).max(initial=0) > mant_max:
        exp += 1  # rounding pushed the peak over the limit
    if exp_max is not None and exp > exp_max:
        raise ForeignGraphError(f"value {peak:.4g} needs exponent {exp} > {exp_max}")
    return np.round(values / 2.0 ** exp).astype(np.int64), exp


def compile_foreign(graph: nir.NIRGraph, disc: Discretization = Discretization()) -> nir.NIRGraph:
    """The graph with Lava's integers in its metadata (see the module docstring)."""
    wires = wiring(graph)
    nodes = dict(graph.nodes)
    maps = {name: neuron_map(name, node, disc) for name, node in nodes.items() if isinstance(node, NEURONS)}
    scale = {name: m.threshold / VTH_A for name, m in maps.items()}  # float voltage per a-unit
    bias_v = {name: np.full(nodes[name].v_threshold.shape, m.leak_bias / scale[name] * V_PER_A)
              for name, m in maps.items()}
    new = {}
    for name, src in wires.source.items():
        tgt = wires.target[name]
        node, m = nodes[name], maps[tgt]
        w_int = _synapse_weight(node) * m.gain / scale[tgt]  # a-units per spike
        mant, exp = _mant_exp(w_int, WEIGHT_MANT_MAX)
        bias = _synapse_bias(node)
        if bias is not None:
            if m.current_keep != 0:
                raise ForeignGraphError(f"synapse {name!r}: a bias into the CubaLIF {tgt!r} has no Lava "
                                        f"equivalent (it would enter the decaying current)")
            extra = bias * m.gain / scale[tgt] * V_PER_A
            bias_v[tgt] = bias_v[tgt] + extra.reshape((-1,) + (1,) * (bias_v[tgt].ndim - 1))
        md = dict(node.metadata or {})
        md.update({"weight_mant": mant.astype(np.int16), "weight_exp": exp})
        new[name] = _with_metadata(node, md)
    for name, m in maps.items():
        node = nodes[name]
        b = np.round(bias_v[name]).astype(np.int64)
        try:
            b_mant, b_exp = _mant_exp(b, BIAS_MANT_MAX, BIAS_EXP_MAX)
        except ForeignGraphError as err:
            raise ForeignGraphError(f"node {name!r}: bias {err}") from None
        du = NO_CURRENT_MEMORY if m.current_keep == 0 else round(DECAY_UNITY * (1 - m.current_keep)) - 1
        dv = round(DECAY_UNITY * (1 - m.voltage_keep))
        md = dict(node.metadata or {})
        md.update({"du": du, "dv": dv, "vth": VTH_A, "scale": scale[name], "bias_mant": b_mant.astype(np.int16),
                   "bias_exp": b_exp})
        new[name] = _with_metadata(node, md)
    nodes.update(new)
    metadata = dict(graph.metadata or {})
    metadata.update({"format": FORMAT, "version": VERSION, "discretization": json.dumps(asdict(disc)),
                     "outputs": json.dumps(wires.outputs)})
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=metadata)


def _with_metadata(node, metadata: dict):
    fields = {k: v for k, v in node.__dict__.items() if k not in ("input_type", "output_type", "metadata")}
    return type(node)(**fields, metadata=metadata)


def write_foreign(path: str, graph: nir.NIRGraph, disc: Discretization = Discretization()) -> nir.NIRGraph:
    compiled = compile_foreign(graph, disc)
    with atomic_path(path) as tmp:
        nir.write(tmp, compiled)
    return compiled


def _apply_synapse(node, spikes: torch.Tensor, flatten: bool, weight: torch.Tensor) -> torch.Tensor:
    x = spikes.flatten(1) if flatten else spikes
    if isinstance(node, nir.Conv2d):
        return F.conv2d(x, weight, stride=tuple(np.broadcast_to(node.stride, 2)),
                        padding=tuple(np.broadcast_to(node.padding, 2)),
                        dilation=tuple(np.broadcast_to(node.dilation, 2)), groups=int(node.groups))
    return x @ weight.T


@torch.no_grad()
def run_discrete(graph: nir.NIRGraph, inputs: dict[str, torch.Tensor],
                 disc: Discretization = Discretization()) -> dict[str, torch.Tensor]:
    """The discretization in float64 without quantization. inputs: Input name -> 0/1 [T, B, *shape].
    Returns the spikes [T, B, *shape] of every neuron node."""
    wires = wiring(graph)
    nodes = graph.nodes
    maps = {n: neuron_map(n, node, disc) for n, node in nodes.items() if isinstance(node, NEURONS)}
    steps, batch = next(iter(inputs.values())).shape[:2]
    shape = {n: tuple(nodes[n].v_threshold.shape) for n in maps}
    i = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
    v = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
    last = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
    last.update({n: torch.zeros_like(x[0], dtype=torch.float64) for n, x in inputs.items()})
    out = {n: [] for n in maps}
    for step in range(steps):
        drive = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
        for name, src in wires.source.items():
            node = nodes[name]
            current = _apply_synapse(node, last[src], wires.flatten[name], torch.from_numpy(_synapse_weight(node)))
            bias = _synapse_bias(node)
            if bias is not None:
                current = current + torch.from_numpy(bias).view(-1, *([1] * (current.dim() - 2)))
            drive[wires.target[name]] += current.view(batch, *shape[wires.target[name]])
        now = {}
        for n, m in maps.items():
            i[n] = m.current_keep * i[n] + m.gain * drive[n]
            v[n] = m.voltage_keep * v[n] + i[n] + m.leak_bias
            s = v[n] > m.threshold
            v[n] = v[n].masked_fill(s, 0.0)
            now[n] = s.double()
            out[n].append(s)
        last.update(now)
        last.update({n: x[step].double() for n, x in inputs.items()})
    return {n: torch.stack(s) for n, s in out.items()}
