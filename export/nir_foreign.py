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
- Constant drive (an Affine/Conv2d bias, v_leak) switches on at the node's `bias_start`: by default its
  depth, the fewest synapses from an Input, which is the step its first spikes arrive (a source library
  runs every layer at once, so its step 0 is our step `depth` there). A neuron node's metadata
  `bias_start` (an integer) in the source file sets it instead (0: from the first step).

What the libraries' files mean, and the options that read them as written (`Discretization`):
- Norse's `to_nir(dt=d)` writes tau = d / tau_mem_inv (seconds times d) and no CubaLIF w_in, while its
  LIFCell's current jumps by the weight (then integrates into v, then decays: our order). `norse_dt=d`
  reads tau / d as the time constant and a CubaLIF's current gain as 1 (its w_in must be NIR's default
  1). Without it a Norse file is refused at the default dt (dt/tau > 1).
- Sinabs decays by exp(-dt/tau) with input gain 1 - exp(-dt/tau), its tau counted in steps (dt = 1).
  `decay="exp"` replaces forward Euler's 1 - dt/tau and dt/tau by those.
- snnTorch writes v_reset = 0 whatever its reset_mechanism, and the file cannot tell: it is read as NIR
  says (reset to 0), which is snnTorch's "zero" reset of Leaky (and of RLeaky with reset_delay=False).

Lava's LIF runs this with du = round(4096 dt/tau_syn) - 1 (4095, no current memory, for IF and LIF),
dv = round(4096 dt/tau_mem) (0 for IF); the gains dt/tau_syn w_in and dt/tau_mem R fold into the
weights, v_leak dt/tau_mem and an Affine bias into Lava's bias. One integer a-unit stands for
`scale` = v_threshold / VTH_A of the float voltage, so the threshold is VTH_A a-units; weights become
8-bit mantissas with an exponent per synapse, biases 13-bit mantissas with an exponent. Lava's LIF
takes scalar parameters, so every neuron of a node must share them; what does not map is refused by
node name (`ForeignGraphError`).

Checks. `read_foreign` names every node of a file with no or an unknown type, a missing or unknown field,
and every edge to no node; `check_graph` then every field that is missing, not numeric, NaN/inf, not
positive (tau, tau_syn, tau_mem, v_threshold) or of a shape that does not chain. After quantization a
weight above one spike's 2^17 a-units or a bias beyond its exponent is an error, and a synapse whose
weights all round to 0, a node that can never spike, or a decay that rounds to none is "degenerate": an
error suggesting a dt that works, or a `DegenerateGraphWarning` with `allow_degenerate`. Each error
lists every problem found, not only the first.

The output is the source graph, unchanged and still plain NIR, with the integers (and each neuron node's
bias_start) in node metadata and the discretization in the graph metadata (format "sddpm-net-nir"); a
Conv2d without input_shape gets its source's. `run_discrete` runs the same
discretization in float64, without quantization: the yardstick for the integers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import operator
import warnings
from dataclasses import asdict, dataclass

import h5py
import nir
import numpy as np
import torch
import torch.nn.functional as F

from fileio import atomic_path

from .errors import ExportError
from .nir_chip import seal
from .chip import BIAS_EXP_MAX, BIAS_MANT_MAX, CURRENT_LIMIT, WEIGHT_MANT_MAX

FORMAT = "sddpm-net-nir"
VERSION = 2  # 2: every neuron node carries bias_start
DECAY_UNITY = 4096  # Lava's decays are 12-bit fractions
NO_CURRENT_MEMORY = 4095  # du: u = a_in << 6 every step
VTH_A = 1 << 10  # the threshold in a-units: headroom of 2^7 thresholds below the 2^17 a-unit limit (tested)
V_PER_A = 64  # a_in << 6 enters u and v
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


def _fail(problems: list[str]) -> None:
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


def _synapse_weight(node) -> np.ndarray:
    return np.asarray(node.weight, dtype=np.float64)


def _synapse_bias(node) -> np.ndarray | None:
    bias = getattr(node, "bias", None)
    return None if bias is None or not np.any(np.asarray(bias)) else np.asarray(bias, dtype=np.float64)


def _mant_exp(values: np.ndarray, mant_max: int) -> tuple[np.ndarray, int]:
    """values ~ mant << exp with |mant| <= mant_max and the smallest exp >= 0 that fits (round half even).
    values must be finite (checked before)."""
    peak = float(np.abs(values).max(initial=0.0))
    exp = max(0, math.ceil(math.log2(peak / mant_max))) if peak > mant_max else 0
    while np.abs(np.round(values / 2.0 ** exp)).max(initial=0) > mant_max:
        exp += 1  # rounding pushed the peak over the limit
    return np.round(values / 2.0 ** exp).astype(np.int64), exp


@dataclass(frozen=True)
class _Checked:
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


def check_graph(graph: nir.NIRGraph, disc: Discretization) -> _Checked:
    """Every node, field and edge checked; one ForeignGraphError lists all problems."""
    problems = []
    if not (math.isfinite(disc.dt) and disc.dt > 0):
        problems.append(f"dt = {disc.dt} must be a positive number of seconds")
    if disc.decay not in DECAYS:
        problems.append(f"decay = {disc.decay!r} must be one of {DECAYS}")
    if disc.norse_dt is not None and not (math.isfinite(disc.norse_dt) and disc.norse_dt > 0):
        problems.append(f"norse_dt = {disc.norse_dt} must be a positive number of seconds")
    _fail(problems)
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
        if m is not None and m.current_keep != 0 and _synapse_bias(nodes[name]) is not None:
            problems.append(f"synapse {name!r}: a bias into the CubaLIF {wires.target[name]!r} has no Lava "
                            f"equivalent (it would enter the decaying current)")
    if not any(isinstance(node, NEURONS) for node in nodes.values()):
        problems.append("the graph has no IF, LIF or CubaLIF node: nothing to compile")
    bias_start = _bias_starts(graph, wires, problems)
    _fail(problems)
    return _Checked(wires, maps, shapes, bias_start)


def _decays(m: NeuronMap) -> tuple[int, int]:
    """Lava's du and dv (12-bit decays: Lava multiplies u by 4096 - (du + 1) and v by 4096 - dv)."""
    du = NO_CURRENT_MEMORY if m.current_keep == 0 else round(DECAY_UNITY * (1 - m.current_keep)) - 1
    return du, round(DECAY_UNITY * (1 - m.voltage_keep))


def _quantize(graph: nir.NIRGraph, checked: _Checked) -> tuple[dict, list[str], list[str]]:
    """The integers as node metadata, the problems that make them unrepresentable, and what degenerates."""
    wires, maps = checked.wires, checked.maps
    nodes = graph.nodes
    problems, degenerate = [], []
    scale = {name: m.threshold / VTH_A for name, m in maps.items()}  # float voltage per a-unit
    bias_v = {name: np.full(checked.shapes[name], m.leak_bias / scale[name] * V_PER_A) for name, m in maps.items()}
    new, weights = {}, {}
    for name, src in wires.source.items():
        tgt = wires.target[name]
        node, m = nodes[name], maps[tgt]
        w_int = _synapse_weight(node) * m.gain / scale[tgt]  # a-units per spike
        if not np.all(np.isfinite(w_int)):
            problems.append(f"synapse {name!r}: weights times the gain of {tgt!r} over its threshold overflow "
                            f"float64")
            continue
        mant, exp = _mant_exp(w_int, WEIGHT_MANT_MAX)
        peak = int(np.abs(mant).max(initial=0)) << exp  # Python ints: a huge exponent must not overflow
        if peak >= CURRENT_LIMIT:
            problems.append(f"synapse {name!r}: weights up to {peak} a-units ({peak / VTH_A:.3g} thresholds of "
                            f"{tgt!r}); one spike must stay below {CURRENT_LIMIT} a-units (a << 6 inside u's 24 bits)")
            continue
        if not np.any(mant) and np.any(w_int):
            degenerate.append(f"synapse {name!r}: all {mant.size} weights round to 0 (the largest is "
                              f"{np.abs(w_int).max():.3g} of an a-unit, 1/{VTH_A} of {tgt!r}'s threshold)")
        bias = _synapse_bias(node)
        if bias is not None:
            extra = bias * m.gain / scale[tgt] * V_PER_A
            bias_v[tgt] = bias_v[tgt] + extra.reshape((-1,) + (1,) * (bias_v[tgt].ndim - 1))
        weights[name] = mant << exp
        md = dict(node.metadata or {})
        md.update({"weight_mant": mant.astype(np.int16), "weight_exp": exp})
        # Sinabs leaves a Conv2d's input_shape None, which nir.write cannot store: it is its source's (checked)
        known = {"input_shape": checked.shapes[src][1:]} if isinstance(node, nir.Conv2d) and \
            getattr(node, "input_shape", None) is None else {}
        new[name] = _with_metadata(node, md, **known)
    biases = {}
    for name, m in maps.items():
        node = nodes[name]
        if not np.all(np.isfinite(bias_v[name])):
            problems.append(f"node {name!r}: its bias (v_leak and synapse biases over the threshold) overflows")
            continue
        b_mant, b_exp = _mant_exp(np.round(bias_v[name]), BIAS_MANT_MAX)
        if b_exp > BIAS_EXP_MAX:
            problems.append(f"node {name!r}: bias up to {np.abs(bias_v[name]).max():.4g} v-units needs exponent "
                            f"{b_exp} > {BIAS_EXP_MAX} (a 13-bit mantissa, a 3-bit exponent)")
            continue
        biases[name] = b_mant << b_exp
        du, dv = _decays(m)
        tau = "tau" if isinstance(node, nir.LIF) else "tau_mem"
        if m.voltage_keep < 1 and dv == 0:
            degenerate.append(f"node {name!r}: dt/{tau} = {1 - m.voltage_keep:.3g} rounds to dv = 0 of 4096: the "
                              f"leak rounds to none")
        if m.current_keep != 0 and du + 1 == 0:
            degenerate.append(f"node {name!r}: dt/tau_syn = {1 - m.current_keep:.3g} rounds to du = -1 (a decay of "
                              f"0 in 4096): the current's decay rounds to none")
        md = dict(node.metadata or {})
        md.update({"du": du, "dv": dv, "vth": VTH_A, "scale": scale[name], "bias_mant": b_mant.astype(np.int16),
                   "bias_exp": b_exp, "bias_start": checked.bias_start[name]})
        new[name] = _with_metadata(node, md)
    if not problems:
        degenerate += _silent(checked, weights, biases, nodes)
    return new, problems, degenerate


def _silent(checked: _Checked, weights: dict[str, np.ndarray], biases: dict[str, np.ndarray], nodes) -> list[str]:
    """Neuron nodes that can never spike, whatever the input: their voltage has an upper bound at or below
    the threshold. Every source fires at most once per step, so a neuron's input a (a-units) is at most
    the sum of its positive weights from sources that can fire, A. Lava's u decays by c_u = (4095 - du)/4096
    (rounded toward zero), so u <= 64 A / (1 - c_u), unbounded when c_u = 1 and A > 0; v decays by
    c_v = (4096 - dv)/4096, so v <= (u_max + bias) / (1 - c_v), unbounded when c_v = 1 and u_max + bias > 0.
    A source that can never spike is then dropped and the bound taken again, until nothing changes."""
    wires = checked.wires
    can_fire = set(n for n, node in nodes.items() if isinstance(node, nir.Input)) | set(checked.maps)
    while True:
        bound = {}
        for name, m in checked.maps.items():
            drive = np.zeros(checked.shapes[name])
            for syn, tgt in wires.target.items():
                if tgt == name and wires.source.get(syn) in can_fire:
                    w = np.clip(weights[syn], 0, None).astype(np.float64)
                    per_out = w.reshape(w.shape[0], -1).sum(1)  # a conv's bound ignores its padding
                    drive = drive + per_out.reshape((-1,) + (1,) * (drive.ndim - 1))
            du, dv = _decays(m)
            keep_u, keep_v = (DECAY_UNITY - 1 - du) / DECAY_UNITY, (DECAY_UNITY - dv) / DECAY_UNITY
            u_max = np.where(drive > 0, np.inf, 0.0) if keep_u == 1 else V_PER_A * drive / (1 - keep_u)
            total = u_max + biases[name].astype(np.float64)
            v_max = np.where(total > 0, np.inf, 0.0) if keep_v == 1 else np.maximum(total, 0) / (1 - keep_v)
            bound[name] = float(v_max.max())
        silent = {n for n, v in bound.items() if v <= VTH_A * V_PER_A}
        if not silent & can_fire:
            return [f"node {n!r}: can never spike (its voltage stays at or below {bound[n]:.4g} v-units, the "
                    f"threshold is {VTH_A * V_PER_A})" for n in sorted(silent)]
        can_fire -= silent


def _working_dt(graph: nir.NIRGraph, disc: Discretization) -> float | None:
    """The candidate dt nearest to disc.dt (in ratio) at which the graph compiles without degenerating."""
    for dt in sorted(DT_CANDIDATES, key=lambda c: abs(math.log(c / disc.dt))):
        trial = dataclasses.replace(disc, dt=dt)
        try:
            checked = check_graph(graph, trial)
        except ForeignGraphError:
            continue
        _, problems, degenerate = _quantize(graph, checked)
        if not problems and not degenerate:
            return dt
    return None


def compile_foreign(graph: nir.NIRGraph, disc: Discretization = Discretization(),
                    allow_degenerate: bool = False) -> nir.NIRGraph:
    """The graph with Lava's integers in its metadata (see the module docstring). A synapse whose weights
    all round to 0, a node that can never spike or a leak that rounds to none is an error that suggests
    a dt that works, or with allow_degenerate a DegenerateGraphWarning."""
    checked = check_graph(graph, disc)
    new, problems, degenerate = _quantize(graph, checked)
    _fail(problems)
    if degenerate:
        dt = _working_dt(graph, disc)
        hint = f"dt = {dt:g} s works" if dt is not None else \
            f"no dt from {min(DT_CANDIDATES):g} to {max(DT_CANDIDATES):g} s works (IF nodes do not depend on dt)"
        text = f"at dt = {disc.dt:g} s: " + "; ".join(degenerate) + f" ({hint})"
        if not allow_degenerate:
            raise ForeignGraphError(text + "; --allow-degenerate compiles it anyway")
        warnings.warn(text, DegenerateGraphWarning, stacklevel=2)
    nodes = dict(graph.nodes)
    nodes.update(new)
    metadata = dict(graph.metadata or {})
    metadata.update({"format": FORMAT, "version": VERSION, "discretization": json.dumps(asdict(disc)),
                     "outputs": json.dumps(checked.wires.outputs)})
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=metadata)


def _with_metadata(node, metadata: dict, **changes):
    fields = {k: v for k, v in node.__dict__.items() if k not in ("input_type", "output_type", "metadata")}
    return type(node)(**{**fields, **changes}, metadata=metadata)


def write_foreign(path: str, graph: nir.NIRGraph, disc: Discretization = Discretization(),
                  allow_degenerate: bool = False) -> nir.NIRGraph:
    compiled = compile_foreign(graph, disc, allow_degenerate)
    with atomic_path(path) as tmp:
        nir.write(tmp, compiled)
        seal(tmp)  # the digest the simulator checks, as in a chip file
    return compiled


# NIR's node types as its reader knows them, and the fields of each on file (nir.write writes one dataset
# per dataclass field; Input and Output write their shape).
NIR_TYPES = {name: getattr(nir, name) for name in ("Affine", "AvgPool2d", "Conv1d", "Conv2d", "CubaLI", "CubaLIF",
                                                    "Delay", "Flatten", "I", "IF", "Input", "LI", "LIF", "Linear",
                                                    "NIRGraph", "Output", "Scale", "SumPool2d", "Threshold")}
DERIVED_FIELDS = ("input_type", "output_type", "metadata")


def _file_fields(cls) -> tuple[set[str], set[str]]:
    """The datasets a node of this type must have, and those it may have."""
    if cls in (nir.Input, nir.Output):
        return {"shape"}, {"shape"}
    fields = [f for f in dataclasses.fields(cls) if f.name not in DERIVED_FIELDS]
    required = {f.name for f in fields if f.default is dataclasses.MISSING and
                f.default_factory is dataclasses.MISSING}
    return required, {f.name for f in fields} | ({"input_type"} if cls is nir.Flatten else set())


def _text(value) -> str | None:
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _scan_graph(prefix: str, group: h5py.Group, problems: list[str]) -> None:
    nodes, edges = group.get("nodes"), group.get("edges")
    if not isinstance(nodes, h5py.Group):
        problems.append(f"graph {prefix or '/node'!r}: has no 'nodes' group")
        return
    for name, node in nodes.items():
        _scan_node(prefix + name, node, problems)
    if not isinstance(edges, h5py.Dataset):
        problems.append(f"graph {prefix or '/node'!r}: has no 'edges' dataset")
        return
    array = np.asarray(edges[()], dtype=object)
    if array.size and (array.ndim != 2 or array.shape[1] != 2):
        problems.append(f"graph {prefix or '/node'!r}: edges have shape {array.shape}, not (E, 2)")
        return
    for a, b in array.reshape(-1, 2):
        a, b = _text(a), _text(b)
        for end in (a, b):
            if end is None or end not in nodes:
                problems.append(f"edge {a!r} -> {b!r}: no node named {end!r}")


def _scan_node(name: str, node, problems: list[str]) -> None:
    if not isinstance(node, h5py.Group):
        problems.append(f"node {name!r}: not an HDF5 group")
        return
    kind = _text(node["type"][()]) if isinstance(node.get("type"), h5py.Dataset) else None
    if kind is None:
        problems.append(f"node {name!r}: has no 'type' string")
        return
    cls = NIR_TYPES.get(kind)
    if cls is None:
        problems.append(f"node {name!r}: type {kind!r} is not a NIR node type")
        return
    if "metadata" in node and not isinstance(node["metadata"], h5py.Group):
        problems.append(f"node {name!r}: metadata is not a group")
    if cls is nir.NIRGraph:
        _scan_graph(name + ".", node, problems)
        return
    required, allowed = _file_fields(cls)
    keys = set(node.keys()) - {"type", "metadata"}
    for field in sorted(required - keys):
        problems.append(f"node {name!r} ({kind}): field {field!r} is missing")
    for field in sorted(keys - allowed):
        problems.append(f"node {name!r} ({kind}): unknown field {field!r}")


def read_foreign(path: str) -> nir.NIRGraph:
    """A NIR file read with every structural problem listed by node (a missing or unknown type, a missing
    field, an edge to no node) before `nir.read`, whose own errors do not say where."""
    problems = []
    try:
        with h5py.File(path, "r") as f:
            top = f.get("node")
            kind = _text(top["type"][()]) if isinstance(top, h5py.Group) and \
                isinstance(top.get("type"), h5py.Dataset) else None
            if kind != "NIRGraph":
                raise ForeignGraphError(f"{path}: not a NIR graph (no /node of type NIRGraph)")
            _scan_graph("", top, problems)
    except ForeignGraphError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:  # h5py's on a damaged file
        raise ForeignGraphError(f"{path}: not a readable HDF5 file ({type(err).__name__}: {err})") from None
    if problems:
        _fail([f"{path}: {problems[0]}"] + problems[1:])
    try:
        return nir.read(path)
    except Exception as err:  # nir's constructors and type checks raise many kinds, none naming the node
        raise ForeignGraphError(f"{path}: not a valid NIR graph ({type(err).__name__}: {err})") from None


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
    checked = check_graph(graph, disc)
    wires, maps, nodes = checked.wires, checked.maps, graph.nodes
    steps, batch = next(iter(inputs.values())).shape[:2]
    shape = {n: checked.shapes[n] for n in maps}
    i = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
    v = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
    last = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
    last.update({n: torch.zeros_like(x[0], dtype=torch.float64) for n, x in inputs.items()})
    out = {n: [] for n in maps}
    for step in range(steps):
        drive = {n: torch.zeros(batch, *shape[n], dtype=torch.float64) for n in maps}
        for name, src in wires.source.items():
            node, tgt = nodes[name], wires.target[name]
            current = _apply_synapse(node, last[src], wires.flatten[name], torch.from_numpy(_synapse_weight(node)))
            bias = _synapse_bias(node)
            if bias is not None and step >= checked.bias_start[tgt]:
                current = current + torch.from_numpy(bias).view(-1, *([1] * (current.dim() - 2)))
            drive[tgt] += current.view(batch, *shape[tgt])
        now = {}
        for n, m in maps.items():
            i[n] = m.current_keep * i[n] + m.gain * drive[n]
            v[n] = m.voltage_keep * v[n] + i[n] + (m.leak_bias if step >= checked.bias_start[n] else 0.0)
            s = v[n] > m.threshold
            v[n] = v[n].masked_fill(s, 0.0)
            now[n] = s.double()
            out[n].append(s)
        last.update(now)
        last.update({n: x[step].double() for n, x in inputs.items()})
    return {n: torch.stack(s) for n, s in out.items()}
