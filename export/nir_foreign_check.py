"""Checks of a NIR graph written by another tool, before it is quantized: every field a node must have,
finite and positive where the discretization divides by it, shapes that chain, the paths from spike sources
to neurons (`export.nir_foreign_paths`) with their delays, and each neuron node's depth and bias start. Every
check appends to a list of problems, so one error lists them all. The discretization these checks serve is
described in `export.nir_foreign`.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import nir
import numpy as np
import torch

from .chip import IF_DU
from .errors import ExportError
from .nir_foreign_paths import (LINEAR, NEURONS, READOUTS, SOURCES, Composed, Op, Path, check_op, compose,
                                flatten_graph, float_array, one_int, trace_paths, unsupported)

NO_CURRENT_MEMORY = IF_DU  # du: u = a_in << 6 every step, as for IF
VTH_A = 1 << 10  # the threshold in a-units: headroom of 2^7 thresholds below the 2^17 a-unit limit (tested)
# The dts tried when one leaves the graph degenerate: 1-2-5 steps from 1 us to 1 s.
DT_CANDIDATES = tuple(m * 10.0 ** e for e in range(-6, 1) for m in (1, 2, 5) if m * 10.0 ** e <= 1)



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
                 nir.CubaLIF: ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
                 nir.Threshold: ("threshold",), nir.LI: ("tau", "r", "v_leak"), nir.I: ("r",)}
POSITIVE_FIELDS = ("tau", "tau_syn", "tau_mem", "v_threshold", "threshold")


def shape_field(node) -> str:
    """The field whose shape is the node's (NIR's convention: the threshold; r for a readout)."""
    return "threshold" if isinstance(node, nir.Threshold) else "r" if isinstance(node, READOUTS) else "v_threshold"


def _neuron_shape(name: str, node, problems: list[str]) -> tuple[int, ...] | None:
    """The node's neurons: the shape of its threshold, or r for a readout."""
    field = shape_field(node)
    shape = np.shape(getattr(node, field, None))
    if len(shape) == 0 or 0 in shape:
        problems.append(f"node {name!r}: {field} must hold one value per neuron, has shape {shape}")
        return None
    return tuple(int(v) for v in shape)


def _neuron_values(name: str, node, problems: list[str]) -> dict[str, float] | None:
    """Every field of the neuron as its one value, or None with each problem recorded."""
    values = {}
    shape = np.shape(getattr(node, shape_field(node), None))
    for field in NEURON_FIELDS[type(node)]:
        array = float_array(name, node, field, problems)
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
    voltage_keep: float  # 1 - dt/tau_mem (1: no leak; 0: no voltage memory, a Threshold)
    gain: float  # input weight -> voltage contribution per step
    leak_bias: float  # constant voltage per step from v_leak
    threshold: float  # inf for a readout (LI, I), which never spikes


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
            " (Norse >= 1.1's to_nir writes tau = its dt / tau_mem_inv: read such a file with norse_dt; earlier " \
            "Norse wrote tau = 1 / tau_mem_inv in seconds, which this dt bound reads as written)"
        problems.append(f"node {name!r}: dt/{field} = {k:g} must be <= 1 (forward Euler overshoots); use a dt "
                        f"<= {tau:g} s{norse}")
        return None
    return k


def neuron_map(name: str, node, disc: Discretization, problems: list[str]) -> NeuronMap | None:
    """The node's discrete dynamics, or None with its problems recorded."""
    values = _neuron_values(name, node, problems)
    if values is None:
        return None
    if isinstance(node, nir.Threshold):  # a spike wherever the input exceeds the threshold: no memory at all
        return NeuronMap(0.0, 0.0, 1.0, 0.0, values["threshold"])
    if isinstance(node, nir.I):  # v' = R I, as IF without a threshold
        return NeuronMap(0.0, 1.0, values["r"], 0.0, math.inf)
    if isinstance(node, nir.LI):
        k = _step_fraction(name, "tau", values["tau"], disc, problems)
        return None if k is None else NeuronMap(0.0, 1.0 - k, k * values["r"], k * values["v_leak"], math.inf)
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


def _input_shape(name: str, node, problems: list[str]) -> tuple[int, ...] | None:
    # NIR keys it 'output'; nirtorch 2.6's tracer keys an Input's in memory 'input' (a file read back says 'output')
    types = getattr(node, "output_type", None) or {}
    try:
        value = types["output"] if "output" in types else (*types.values(),)[0] if len(types) == 1 else None
        shape = tuple(operator.index(v) for v in np.asarray(value).reshape(-1))
    except (TypeError, KeyError, AttributeError):
        shape = ()
    if not shape or min(shape) < 1:
        problems.append(f"input {name!r}: its shape must be positive integers")
        return None
    return shape


@dataclass(frozen=True)
class CheckedPath:
    """A path checked: its ops, its composition, and its chip delay (steps from source spike to target)."""
    path: Path
    ops: tuple[Op, ...]
    composed: Composed
    delay: int


@dataclass(frozen=True)
class CheckedGraph:
    """A graph whose structure and values passed every check: its nodes (nested graphs spliced in), paths,
    neuron maps, shapes, each neuron node's constant drive, depth and bias start, and its outputs."""
    nodes: dict
    paths: tuple[CheckedPath, ...]
    maps: dict[str, NeuronMap]
    shapes: dict[str, tuple[int, ...]]  # every Input and neuron node
    drive: dict[str, np.ndarray]  # neuron node -> constant input (float, its shape) from the linear nodes' biases
    depth: dict[str, int]
    bias_start: dict[str, int]
    outputs: dict[str, str]  # Output node -> the neuron it reads
    inputs: tuple[str, ...]


class _Linear:
    """The linear nodes' ops (each checked once, for the shape its inputs give it) and their output with every
    source silent, evaluated on demand."""

    def __init__(self, nodes, edges, shapes, dt, problems):
        self.nodes, self.shapes, self.dt, self.problems = nodes, shapes, dt, problems
        self.preds: dict[str, list[str]] = {}
        for a, b in edges:
            self.preds.setdefault(b, []).append(a)
        self.ops: dict[str, Op | None] = {}
        self.zero: dict[str, torch.Tensor] = {}

    def in_shape(self, name: str) -> tuple[int, ...] | None:
        shapes = set()
        for pred in self.preds.get(name, []):
            node = self.nodes[pred]
            shapes.add(self.shapes.get(pred) if isinstance(node, SOURCES) else
                       (op.out_shape if (op := self.op(pred)) is not None else None))
        if None in shapes or len(shapes) != 1:
            if len(shapes) > 1 and None not in shapes:
                self.problems.append(f"node {name!r}: its inputs have different shapes {sorted(shapes)}")
            return None
        return shapes.pop()

    def op(self, name: str) -> Op | None:
        if name not in self.ops:
            self.ops[name] = None  # a cycle of linear nodes (reported by trace_paths) ends here
            shape = self.in_shape(name)
            self.ops[name] = None if shape is None else check_op(name, self.nodes[name], shape, self.dt, self.problems)
        return self.ops[name]

    def silent(self, name: str) -> torch.Tensor:
        """The node's output [1, *shape] when every source is silent: the biases through what follows them."""
        if name not in self.zero:
            op = self.ops[name]
            x = torch.zeros(1, *op.in_shape, dtype=torch.float64)
            for pred in self.preds.get(name, []):
                if isinstance(self.nodes[pred], LINEAR):
                    x = x + self.silent(pred)
            self.zero[name] = op.apply(x)
        return self.zero[name]


def _depths(paths: list[Path], inputs: list[str]) -> tuple[dict[str, int], set[int]]:
    """Each node's depth, the longest chain of forward paths from a root (a source no forward path reaches):
    NIR's nodes act within the step, the chip's synapses take a step each, so a node's step t is the chip's
    t + depth. Back paths (those closing a cycle, found depth-first from the inputs) carry the previous step,
    as recurrent weights do; returns the depths and the indices of the back paths."""
    out: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        out.setdefault(p.source, []).append(i)
    back, state = set(), {}  # state: 1 on the stack, 2 done
    roots = inputs + sorted({p.source for p in paths} | {p.target for p in paths})
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(out.get(root, [])))]
        state[root] = 1
        while stack:
            node, todo = stack[-1]
            i = next(todo, None)
            if i is None:
                state[node] = 2
                stack.pop()
                continue
            target = paths[i].target
            if state.get(target) == 1:
                back.add(i)
            elif target not in state:
                state[target] = 1
                stack.append((target, iter(out.get(target, []))))
    depth = {node: 0 for node in state}
    for _ in range(len(depth)):  # longest paths in the acyclic rest: at most one pass per node
        changed = False
        for i, p in enumerate(paths):
            if i not in back and depth[p.source] + 1 > depth[p.target]:
                depth[p.target], changed = depth[p.source] + 1, True
        if not changed:
            break
    return depth, back


def _bias_starts(nodes, depth: dict[str, int], problems: list[str]) -> dict[str, int]:
    """Each neuron node's bias_start: its metadata's if the file gives one, else its depth."""
    starts = {}
    for name, node in nodes.items():
        if not isinstance(node, NEURONS):
            continue
        given = (node.metadata or {}).get("bias_start")
        if given is None:
            starts[name] = depth.get(name, 0)
        elif one_int(given) is None or one_int(given) < 0:
            problems.append(f"node {name!r}: metadata bias_start = {given!r} must be one integer >= 0")
        else:
            starts[name] = one_int(given)
    return starts


def _outputs(nodes, edges, problems: list[str]) -> dict[str, str]:
    outputs = {}
    for name, node in nodes.items():
        if isinstance(node, nir.Output):
            srcs = [a for a, b in edges if b == name]
            if len(srcs) != 1 or not isinstance(nodes.get(srcs[0]), NEURONS):
                problems.append(f"output {name!r}: must read one neuron node, reads {srcs}")
            else:
                outputs[name] = srcs[0]
        elif isinstance(node, nir.Input) and any(b == name for _, b in edges):
            problems.append(f"input {name!r}: an Input takes no edges")
    return outputs


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
    nodes, edges = flatten_graph(graph, problems)
    unsupported(nodes, problems)
    for a, b in edges:
        if a not in nodes or b not in nodes:
            problems.append(f"edge {a!r} -> {b!r}: no node named {a if a not in nodes else b!r}")
    edges = [(a, b) for a, b in edges if a in nodes and b in nodes]
    maps, shapes = {}, {}
    for name, node in nodes.items():
        if isinstance(node, NEURONS):
            shapes[name] = _neuron_shape(name, node, problems)
            m = neuron_map(name, node, disc, problems)
            if m is not None:
                maps[name] = m
        elif isinstance(node, nir.Input):
            shapes[name] = _input_shape(name, node, problems)
    if not any(isinstance(node, NEURONS) for node in nodes.values()):
        problems.append("the graph has no IF, LIF, CubaLIF or Threshold node: nothing to compile")
    for a, b in edges:
        if isinstance(nodes[a], READOUTS) and not isinstance(nodes[b], nir.Output):
            problems.append(f"node {a!r}: a membrane readout ({type(nodes[a]).__name__}) feeds only Outputs, not "
                            f"{b!r}")
        if isinstance(nodes[b], NEURONS) and not isinstance(nodes[a], LINEAR):
            problems.append(f"neuron {b!r}: input {a!r} is a {type(nodes[a]).__name__}; neurons take linear nodes "
                            f"(Affine, Linear, Conv2d, pooling, Scale, Delay)")
    paths = trace_paths(nodes, edges, problems)
    linear = _Linear(nodes, edges, shapes, disc.dt, problems)
    inputs = sorted(n for n, node in nodes.items() if isinstance(node, nir.Input))
    depth, back = _depths(paths, inputs)
    checked = []
    for i, p in enumerate(paths):
        ops = [linear.op(name) for name in p.ops]
        src, tgt = shapes.get(p.source), shapes.get(p.target)
        if None in ops or src is None or tgt is None:
            continue
        out = ops[-1].out_shape if ops else src
        if out != tgt:
            problems.append(f"synapse {p.name!r}: gives {out} to the {tgt} neurons of {p.target!r}")
            continue
        composed = compose(p, ops, src, disc.dt, problems)
        if composed is None:
            continue
        # the library's step t of the target reads the source's step t - d (d: the path's Delay steps; t - 1 - d
        # along a back path); on the chip those are steps t + depth(target) and t - d + depth(source)
        delay = depth[p.target] - depth[p.source] + composed.delay_steps + (i in back)
        if delay < 1:
            problems.append(f"synapse {p.name!r}: closes a cycle from {p.source!r} back to {p.target!r}, "
                            f"{depth[p.source] - depth[p.target]} synapses upstream; the chip would need a delay of "
                            f"{delay} steps (at least 1)")
            continue
        checked.append(CheckedPath(p, tuple(ops), composed, delay))
    drive = {}
    for name in maps:
        if shapes[name] is None:
            continue
        total = torch.zeros(1, *shapes[name], dtype=torch.float64)
        for a, b in edges:
            if b == name and linear.ops.get(a) is not None and linear.ops[a].out_shape == shapes[name]:
                total = total + linear.silent(a)
        drive[name] = total[0].numpy()
    bias_start = _bias_starts(nodes, depth, problems)
    outputs = _outputs(nodes, edges, problems)
    raise_problems(problems)
    return CheckedGraph(nodes, tuple(checked), maps, shapes, drive, depth, bias_start, outputs, tuple(inputs))
