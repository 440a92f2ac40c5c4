"""Checks of a NIR graph written by another tool, before it is quantized: every field a node must have,
finite and positive where the discretization divides by it, shapes that chain, the wiring, and each neuron
node's bias start. Every check appends to a list of problems, so one error lists them all. The
discretization these checks serve is described in `export.nir_foreign`.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import nir
import numpy as np

from .chip import IF_DU
from .errors import ExportError

NO_CURRENT_MEMORY = IF_DU  # du: u = a_in << 6 every step, as for IF
VTH_A = 1 << 10  # the threshold in a-units: headroom of 2^7 thresholds below the 2^17 a-unit limit (tested)
# The dts tried when one leaves the graph degenerate: 1-2-5 steps from 1 us to 1 s.
DT_CANDIDATES = tuple(m * 10.0 ** e for e in range(-6, 1) for m in (1, 2, 5) if m * 10.0 ** e <= 1)

SYNAPSES = (nir.Affine, nir.Linear, nir.Conv2d)
NEURONS = (nir.IF, nir.LIF, nir.CubaLIF)


class ForeignGraphError(ExportError, ValueError):
    """The NIR graph holds a node, parameter or structure that does not map to Lava's integer LIF."""


DECAYS = ("euler", "exp")


@dataclass(frozen=True)
class Discretization:
    dt: float = 1e-4  # seconds per step: the snnTorch / NIR-paper convention for tau in seconds
    decay: str = "euler"  # "exp": keep exp(-dt/tau) per step, gain 1 - exp(-dt/tau) (Sinabs)
    norse_dt: float | None = None  # the file is Norse's to_nir(dt=norse_dt) (see the module docstring)


class DegenerateGraphWarning(UserWarning):
    """A graph compiled with `allow_degenerate`: some synapse, population or leak lost its meaning."""


def raise_problems(problems: list[str]) -> None:
    """One error listing every problem found, so that a user fixes a file in one pass."""
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise ForeignGraphError(count + "; ".join(problems))


# What a neuron node must say, and which of its fields must be positive.
NEURON_FIELDS = {nir.IF: ("r", "v_threshold", "v_reset"),
                 nir.LIF: ("tau", "r", "v_leak", "v_threshold", "v_reset"),
                 nir.CubaLIF: ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in")}
POSITIVE_FIELDS = ("tau", "tau_syn", "tau_mem", "v_threshold")


def _array(name: str, node, field: str, problems: list[str]) -> np.ndarray | None:
    """A numeric field as float64, or None with the problem recorded (missing, not numbers, NaN/inf)."""
    value = getattr(node, field, None)
    if value is None:  # np.asarray(None, float) would be a NaN, which misnames the fault
        problems.append(f"node {name!r}: {field} is missing")
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(f"node {name!r}: {field} is not numeric")
        return None
    if not np.all(np.isfinite(array)):
        problems.append(f"node {name!r}: {field} holds NaN or inf")
        return None
    return array


def _neuron_shape(name: str, node, problems: list[str]) -> tuple[int, ...] | None:
    """The node's neurons: the shape of its v_threshold (NIR's convention)."""
    shape = np.shape(getattr(node, "v_threshold", None))
    if len(shape) == 0 or 0 in shape:
        problems.append(f"node {name!r}: v_threshold must hold one value per neuron, has shape {shape}")
        return None
    return tuple(int(v) for v in shape)


def _neuron_values(name: str, node, problems: list[str]) -> dict[str, float] | None:
    """Every field of the neuron as its one value, or None with each problem recorded."""
    values = {}
    shape = np.shape(getattr(node, "v_threshold", None))
    for field in NEURON_FIELDS[type(node)]:
        array = _array(name, node, field, problems)
        if array is None:
            continue
        if array.size == 0 or array.shape not in ((), (1,), shape):
            problems.append(f"node {name!r}: {field} has shape {array.shape}, the neurons {shape}")
            continue
        first = float(array.flat[0])
        if not np.all(array == first):
            problems.append(f"node {name!r}: {field} differs between neurons ({array.min():g} to {array.max():g}); "
                            f"Lava's LIF takes one value per process")
        elif field in POSITIVE_FIELDS and first <= 0:
            problems.append(f"node {name!r}: {field} = {first:g} must be > 0")
        else:
            values[field] = first
    return values if len(values) == len(NEURON_FIELDS[type(node)]) else None


@dataclass(frozen=True)
class NeuronMap:
    """One neuron node's discrete dynamics (float) and its gains."""
    current_keep: float  # 1 - dt/tau_syn (0: no current memory)
    voltage_keep: float  # 1 - dt/tau_mem (1: no leak)
    gain: float  # input weight -> voltage contribution per step
    leak_bias: float  # constant voltage per step from v_leak
    threshold: float


def _step_fraction(name: str, field: str, tau: float, disc: Discretization, problems: list[str]) -> float | None:
    """The share of the state that one step replaces: dt/tau, which forward Euler needs in (0, 1], or
    1 - exp(-dt/tau). A Norse file's tau is its dt times the time constant."""
    if disc.norse_dt is not None:
        tau = tau / disc.norse_dt
    if disc.decay == "exp":
        return -math.expm1(-disc.dt / tau)
    k = disc.dt / tau
    if k > 1:
        norse = "" if disc.norse_dt is not None else \
            " (Norse's to_nir writes tau = its dt / tau_mem_inv: read such a file with norse_dt)"
        problems.append(f"node {name!r}: dt/{field} = {k:g} must be <= 1 (forward Euler overshoots); use a dt "
                        f"<= {tau:g} s{norse}")
        return None
    return k


def neuron_map(name: str, node, disc: Discretization, problems: list[str]) -> NeuronMap | None:
    """The node's discrete dynamics, or None with its problems recorded."""
    values = _neuron_values(name, node, problems)
    if values is None:
        return None
    if values["v_reset"] != 0.0:
        problems.append(f"node {name!r}: v_reset = {values['v_reset']:g} must be 0 (Lava resets v to 0)")
        return None
    threshold, r = values["v_threshold"], values["r"]
    if isinstance(node, nir.IF):
        return NeuronMap(0.0, 1.0, r, 0.0, threshold)
    tau_field = "tau" if isinstance(node, nir.LIF) else "tau_mem"
    k_mem = _step_fraction(name, tau_field, values[tau_field], disc, problems)
    if isinstance(node, nir.LIF):
        return None if k_mem is None else NeuronMap(0.0, 1.0 - k_mem, k_mem * r, k_mem * values["v_leak"], threshold)
    k_syn = _step_fraction(name, "tau_syn", values["tau_syn"], disc, problems)
    if disc.norse_dt is not None and values["w_in"] != 1.0:
        problems.append(f"node {name!r}: w_in = {values['w_in']:g}; Norse writes none (NIR's default 1), so with "
                        f"norse_dt a w_in is not Norse's")
        return None
    if k_mem is None or k_syn is None:
        return None
    # Norse's LIFCell adds the weight to its current (no dt/tau_syn): a current gain of 1
    current_gain = 1.0 if disc.norse_dt is not None else k_syn * values["w_in"]
    return NeuronMap(1.0 - k_syn, 1.0 - k_mem, current_gain * k_mem * r, k_mem * values["v_leak"], threshold)


@dataclass(frozen=True)
class Wiring:
    """Each synapse's source (a neuron or Input, through an optional Flatten) and target neuron."""
    source: dict[str, str]
    target: dict[str, str]
    flatten: dict[str, bool]
    outputs: dict[str, str]  # Output node -> the neuron it reads


def wiring(graph: nir.NIRGraph, problems: list[str]) -> Wiring:
    """The graph's synapses, neurons and outputs; what does not fit is recorded in `problems`."""
    nodes = graph.nodes
    for name, node in nodes.items():
        if not isinstance(node, SYNAPSES + NEURONS + (nir.Input, nir.Output, nir.Flatten)):
            problems.append(f"node {name!r}: NIR type {type(node).__name__} has no chip mapping here (supported: "
                            f"Input, Output, Flatten, Affine, Linear, Conv2d, IF, LIF, CubaLIF)")
    into: dict[str, list[str]] = {}
    out_of: dict[str, list[str]] = {}
    for a, b in graph.edges:
        if a not in nodes or b not in nodes:
            problems.append(f"edge {a!r} -> {b!r}: no node named {a if a not in nodes else b!r}")
            continue
        into.setdefault(b, []).append(a)
        out_of.setdefault(a, []).append(b)
    source, target, flatten, outputs = {}, {}, {}, {}
    for name, node in nodes.items():
        srcs, dsts = into.get(name, []), out_of.get(name, [])
        if isinstance(node, SYNAPSES):
            if len(srcs) != 1:
                problems.append(f"synapse {name!r}: needs exactly one input, has {srcs}")
                continue
            src, flatten[name] = srcs[0], isinstance(nodes[srcs[0]], nir.Flatten)
            if flatten[name]:
                _check_flatten(srcs[0], nodes[srcs[0]], problems)
                src = into.get(src, [None])[0] if len(into.get(src, [])) == 1 else None
            if not isinstance(nodes.get(src), NEURONS + (nir.Input,)):
                problems.append(f"synapse {name!r}: reads {srcs[0]!r}; a synapse must read spikes (a neuron or an "
                                f"Input, optionally through one Flatten with one input)")
                continue
            source[name] = src
            if len(dsts) != 1 or not isinstance(nodes[dsts[0]], NEURONS):
                problems.append(f"synapse {name!r}: must feed exactly one neuron node, feeds {dsts}")
        elif isinstance(node, NEURONS):
            for s in srcs:
                if not isinstance(nodes[s], SYNAPSES):
                    problems.append(f"neuron {name!r}: input {s!r} is a {type(nodes[s]).__name__}; neurons take "
                                    f"synapses")
                elif len(out_of[s]) == 1:
                    target[s] = name
        elif isinstance(node, nir.Output):
            if len(srcs) != 1 or not isinstance(nodes[srcs[0]], NEURONS):
                problems.append(f"output {name!r}: must read one spiking neuron node, reads {srcs}")
            else:
                outputs[name] = srcs[0]
        elif isinstance(node, nir.Input) and srcs:
            problems.append(f"input {name!r}: an Input takes no edges, has {srcs}")
    return Wiring({k: v for k, v in source.items() if k in target}, target, flatten, outputs)


def _one_int(value) -> int | None:
    """An integer given as a number or a one-element array, else None."""
    try:
        array = np.asarray(value)
        return operator.index(array.reshape(-1)[0].item()) if array.size == 1 and array.dtype.kind in "iu" else None
    except (TypeError, ValueError):
        return None


def _check_flatten(name: str, node, problems: list[str]) -> None:
    """The simulators flatten everything but the batch: NIR's start_dim 0, end_dim -1 (batch excluded)."""
    start, end = _one_int(node.start_dim), _one_int(node.end_dim)
    if start != 0 or end != -1:
        problems.append(f"node {name!r}: Flatten from dim {node.start_dim!r} to {node.end_dim!r}; only the whole "
                        f"array maps (start_dim 0, end_dim -1)")


def _input_shape(name: str, node, problems: list[str]) -> tuple[int, ...] | None:
    try:
        shape = tuple(operator.index(v) for v in np.asarray(node.output_type["output"]).reshape(-1))
    except (TypeError, KeyError, AttributeError):
        shape = ()
    if not shape or min(shape) < 1:
        problems.append(f"input {name!r}: its shape must be positive integers")
        return None
    return shape


def _conv_geometry(name: str, node, problems: list[str]) -> dict | None:
    """stride, padding, dilation as pairs of ints and groups as an int, or None with the problem recorded."""
    geo = {}
    for field, low in (("stride", 1), ("padding", 0), ("dilation", 1)):
        try:
            pair = tuple(operator.index(v) for v in np.broadcast_to(np.asarray(getattr(node, field)), (2,)))
        except (TypeError, ValueError):
            pair = None
        if pair is None or min(pair) < low:
            problems.append(f"synapse {name!r}: {field} must be one or two integers >= {low}, is "
                            f"{getattr(node, field)!r}")
            return None
        geo[field] = pair
    geo["groups"] = _one_int(node.groups) or 0
    if geo["groups"] < 1:
        problems.append(f"synapse {name!r}: groups must be one integer >= 1, is {node.groups!r}")
        return None
    return geo


def _check_synapse(name: str, node, flat: bool, src_shape, tgt_shape, problems: list[str]) -> dict | None:
    """The weight and bias finite and of shapes that chain source to target; a Conv2d's geometry."""
    weight = _array(name, node, "weight", problems)
    bias = _array(name, node, "bias", problems) if isinstance(node, (nir.Affine, nir.Conv2d)) else None
    if weight is None or src_shape is None or tgt_shape is None:
        return None
    n_out = weight.shape[0] if weight.ndim else 0
    if bias is not None and bias.shape != (n_out,):
        problems.append(f"synapse {name!r}: bias has shape {bias.shape}, the weight {weight.shape}")
    if not isinstance(node, nir.Conv2d):
        n_in = int(np.prod(src_shape)) if flat else (src_shape[0] if len(src_shape) == 1 else None)
        if weight.ndim != 2 or weight.shape[1] != n_in or (n_out,) != tgt_shape:
            problems.append(f"synapse {name!r}: weight {weight.shape} does not map {src_shape} spikes"
                            f"{' (flattened)' if flat else ''} onto the {tgt_shape} neurons it feeds")
        return {}
    geo = _conv_geometry(name, node, problems)
    if geo is None:
        return None
    ok = weight.ndim == 4 and len(src_shape) == 3 and not flat and weight.shape[1] * geo["groups"] == src_shape[0] \
        and n_out % geo["groups"] == 0
    declared = getattr(node, "input_shape", None)
    if ok and declared is not None and np.asarray(declared).reshape(-1).tolist() != list(src_shape[1:]):
        problems.append(f"synapse {name!r}: input_shape {np.asarray(declared).tolist()} is not its source's "
                        f"{src_shape[1:]}")
        return None
    if ok:
        size = [(src_shape[1 + i] + 2 * geo["padding"][i] - geo["dilation"][i] * (weight.shape[2 + i] - 1) - 1)
                // geo["stride"][i] + 1 for i in range(2)]
        ok = (n_out, *size) == tgt_shape
    if not ok:
        problems.append(f"synapse {name!r}: a Conv2d of weight {weight.shape} ({geo}) does not map {src_shape} "
                        f"spikes onto the {tgt_shape} neurons it feeds")
    return geo


def synapse_weight(node) -> np.ndarray:
    return np.asarray(node.weight, dtype=np.float64)


def synapse_bias(node) -> np.ndarray | None:
    bias = getattr(node, "bias", None)
    return None if bias is None or not np.any(np.asarray(bias)) else np.asarray(bias, dtype=np.float64)


@dataclass(frozen=True)
class CheckedGraph:
    """A graph whose structure and values passed every check: its wiring, neuron maps, shapes and the step
    each neuron node's bias switches on."""
    wires: Wiring
    maps: dict[str, NeuronMap]
    shapes: dict[str, tuple[int, ...]]
    bias_start: dict[str, int]


def _bias_starts(graph: nir.NIRGraph, wires: Wiring, problems: list[str]) -> dict[str, int]:
    """Each neuron node's bias_start: its metadata's if the file gives one, else its depth, the fewest
    synapses from an Input; a node no Input reaches has depth 0."""
    nodes = graph.nodes
    depth = {name: 0 for name, node in nodes.items() if isinstance(node, nir.Input)}
    changed = True
    while changed:  # shortest paths of unit steps: at most one pass per node
        changed = False
        for syn, src in wires.source.items():
            tgt = wires.target[syn]
            if src in depth and depth[src] + 1 < depth.get(tgt, math.inf):
                depth[tgt], changed = depth[src] + 1, True
    starts = {}
    for name, node in nodes.items():
        if not isinstance(node, NEURONS):
            continue
        given = (node.metadata or {}).get("bias_start")
        if given is None:
            starts[name] = depth.get(name, 0)
        elif _one_int(given) is None or _one_int(given) < 0:
            problems.append(f"node {name!r}: metadata bias_start = {given!r} must be one integer >= 0")
        else:
            starts[name] = _one_int(given)
    return starts


def check_graph(graph: nir.NIRGraph, disc: Discretization) -> CheckedGraph:
    """Every node, field and edge checked; one ForeignGraphError lists all problems."""
    problems = []
    if not (math.isfinite(disc.dt) and disc.dt > 0):
        problems.append(f"dt = {disc.dt} must be a positive number of seconds")
    if disc.decay not in DECAYS:
        problems.append(f"decay = {disc.decay!r} must be one of {DECAYS}")
    if disc.norse_dt is not None and not (math.isfinite(disc.norse_dt) and disc.norse_dt > 0):
        problems.append(f"norse_dt = {disc.norse_dt} must be a positive number of seconds")
    raise_problems(problems)
    wires = wiring(graph, problems)
    nodes = graph.nodes
    maps, shapes = {}, {}
    for name, node in nodes.items():
        if isinstance(node, NEURONS):
            shapes[name] = _neuron_shape(name, node, problems)
            m = neuron_map(name, node, disc, problems)
            if m is not None:
                maps[name] = m
        elif isinstance(node, nir.Input):
            shapes[name] = _input_shape(name, node, problems)
    for name, src in wires.source.items():
        _check_synapse(name, nodes[name], wires.flatten[name], shapes.get(src), shapes.get(wires.target[name]),
                       problems)
        m = maps.get(wires.target[name])
        if m is not None and m.current_keep != 0 and synapse_bias(nodes[name]) is not None:
            problems.append(f"synapse {name!r}: a bias into the CubaLIF {wires.target[name]!r} has no Lava "
                            f"equivalent (it would enter the decaying current)")
    if not any(isinstance(node, NEURONS) for node in nodes.values()):
        problems.append("the graph has no IF, LIF or CubaLIF node: nothing to compile")
    bias_start = _bias_starts(graph, wires, problems)
    raise_problems(problems)
    return CheckedGraph(wires, maps, shapes, bias_start)
