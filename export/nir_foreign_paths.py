"""The linear part of a NIR graph written by another tool: nested graphs flattened, every route from a spike
source through linear nodes to a neuron node found (a *path*), and each path composed into one chip synapse.

NIR's meaning: a node's input is the sum over its incoming edges, and the linear nodes (Affine, Linear,
Conv2d, SumPool2d, AvgPool2d, Flatten, Scale, Delay) act within the step. So a neuron node's input is the sum
over its paths of each path's linear map applied to its source's spikes (delayed by the path's Delay nodes),
plus a constant: what the linear nodes give when every source is silent (their biases, through whatever
follows them, once per edge as NIR sums edges). A path becomes one synapse: its linear map composed into one
convolution (pooling is a convolution with fixed weights: SumPool2d 1 per tap, AvgPool2d 1 / (kh kw) per
tap, PyTorch's count_include_pad) or, where it flattens or holds an Affine/Linear, into one dense matrix. A
nested NIRGraph node is spliced in, its nodes named `<parent>.<node>`, its one Input and one Output replaced
by the edges through them.

Every check appends its problem, by node, to a list, so one error names them all.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import nir
import numpy as np
import torch
import torch.nn.functional as F

POOLS = (nir.SumPool2d, nir.AvgPool2d)
WEIGHTED = (nir.Affine, nir.Linear, nir.Conv2d)
LINEAR = WEIGHTED + POOLS + (nir.Flatten, nir.Scale, nir.Delay)
SPIKING = (nir.IF, nir.LIF, nir.CubaLIF, nir.Threshold)
READOUTS = (nir.LI, nir.I)  # membrane readouts: their voltage is an output, they do not spike
NEURONS = SPIKING + READOUTS  # the nodes a path ends in
SOURCES = SPIKING + (nir.Input,)
SUPPORTED = "Input, Output, Affine, Linear, Conv2d, SumPool2d, AvgPool2d, Flatten, Scale, Delay, IF, LIF, " \
            "CubaLIF, Threshold, LI, I, NIRGraph"
DELAY_TOLERANCE = 1e-6  # a Delay must be a whole number of steps to this fraction of a step


def flatten_graph(graph: nir.NIRGraph, problems: list[str]) -> tuple[dict, list[tuple[str, str]]]:
    """The graph's nodes and edges with every nested NIRGraph spliced in: its nodes named `<parent>.<node>`,
    an edge into it led to its Input node's successors, an edge out of it from its Output node's predecessors."""
    nodes: dict = {}
    edges: list[tuple[str, str]] = []
    relays: set[str] = set()  # the nested graphs' Input and Output nodes, spliced out below

    def add(prefix: str, g: nir.NIRGraph) -> None:
        ends: dict[str, tuple[str | None, str | None]] = {}  # nested graph -> (its Input, its Output), qualified
        for name, node in g.nodes.items():
            if isinstance(node, nir.NIRGraph):
                add(f"{prefix}{name}.", node)
                ends[name] = (_one_end(prefix + name, node, nir.Input, problems),
                              _one_end(prefix + name, node, nir.Output, problems))
                relays.update(e for e in ends[name] if e is not None)
            else:
                nodes[prefix + name] = node
        for a, b in g.edges:
            a = ends[a][1] if a in ends else prefix + a
            b = ends[b][0] if b in ends else prefix + b
            if a is not None and b is not None:
                edges.append((a, b))

    add("", graph)
    for relay in relays:  # a -> relay -> b becomes a -> b
        into = [a for a, b in edges if b == relay]
        out = [b for a, b in edges if a == relay]
        edges = [e for e in edges if relay not in e] + [(a, b) for a in into for b in out]
        nodes.pop(relay, None)
    return nodes, edges


def _one_end(name: str, graph: nir.NIRGraph, kind, problems: list[str]) -> str | None:
    found = [n for n, node in graph.nodes.items() if isinstance(node, kind)]
    if len(found) != 1:
        problems.append(f"graph {name!r}: a nested graph needs exactly one {kind.__name__} node to be spliced in, "
                        f"has {found}")
        return None
    return f"{name}.{found[0]}"


@dataclass(frozen=True)
class Path:
    """One route from a spike source through linear nodes to a neuron node: one chip synapse."""
    name: str  # its last linear node (the source's name where several paths share it), for messages
    source: str
    target: str
    ops: tuple[str, ...]  # the linear nodes, source side first


def trace_paths(nodes: dict, edges: list[tuple[str, str]], problems: list[str]) -> list[Path]:
    """Every path from every source (Input or spiking neuron) to a neuron node; a cycle through linear nodes
    alone, and an Output that reads a linear node, are problems."""
    succ: dict[str, list[str]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    found: list[tuple[str, str, tuple[str, ...]]] = []
    for source in sorted(n for n, node in nodes.items() if isinstance(node, SOURCES)):
        stack = [(source, ())]
        while stack:
            here, ops = stack.pop()
            for nxt in sorted(succ.get(here, [])):
                node = nodes.get(nxt)
                if isinstance(node, NEURONS):
                    found.append((source, nxt, ops))
                elif isinstance(node, LINEAR):
                    if nxt in ops:
                        problems.append(f"node {nxt!r}: on a cycle of linear nodes only (a cycle needs a neuron)")
                    else:
                        stack.append((nxt, ops + (nxt,)))
                elif isinstance(node, nir.Output) and ops:
                    problems.append(f"output {nxt!r}: reads the linear node {ops[-1]!r}; an Output reads a spiking "
                                    f"neuron node")
    bases = [ops[-1] if ops else f"{source} -> {target}" for source, target, ops in found]
    return [Path(base if bases.count(base) == 1 else f"{base} (path {' -> '.join((source, *ops))})", source,
                 target, ops) for base, (source, target, ops) in zip(bases, found)]


def unsupported(nodes: dict, problems: list[str]) -> None:
    for name, node in nodes.items():
        if node is None:
            problems.append(f"node {name!r}: is None (the tool that wrote the graph mapped nothing to it)")
        elif not isinstance(node, LINEAR + NEURONS + (nir.Input, nir.Output)):
            problems.append(f"node {name!r}: NIR type {type(node).__name__} has no chip mapping here (supported: "
                            f"{SUPPORTED})")


# ---- the linear nodes one by one: checks, output shape, float application

def one_int(value) -> int | None:
    """An integer given as a number or a one-element array, else None."""
    try:
        array = np.asarray(value)
        return operator.index(array.reshape(-1)[0].item()) if array.size == 1 and array.dtype.kind in "iu" else None
    except (TypeError, ValueError):
        return None


def _pair(value) -> tuple[int, int] | None:
    try:
        return tuple(operator.index(v) for v in np.broadcast_to(np.asarray(value), (2,)))
    except (TypeError, ValueError):
        return None


def float_array(name: str, node, field: str, problems: list[str]) -> np.ndarray | None:
    """A numeric field as float64, or None with the problem recorded (missing, not numbers, NaN/inf)."""
    value = getattr(node, field, None)
    if value is None:  # np.asarray(None, float) would be a NaN, which misnames the fault
        problems.append(f"node {name!r}: {field} is missing")
        return None
    try:
        array = np.array(value, dtype=np.float64)  # a copy: torch.from_numpy needs it writable
    except (TypeError, ValueError):
        problems.append(f"node {name!r}: {field} is not numeric")
        return None
    if not np.all(np.isfinite(array)):
        problems.append(f"node {name!r}: {field} holds NaN or inf")
        return None
    return array


@dataclass(frozen=True)
class Op:
    """One linear node, checked: what it does to a [B, *shape] float64 tensor."""
    name: str
    kind: str  # "dense", "conv", "flatten", "scale", "delay"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray | None = None  # dense [M, N]; conv [O, C / groups, kh, kw]; scale: broadcast to in_shape
    bias: np.ndarray | None = None  # per output (dense) or channel (conv)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    delay: float = 0.0  # seconds

    def apply(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        if self.kind == "flatten":
            return x.flatten(1)
        if self.kind == "delay":
            return x
        weight = torch.from_numpy(self.weight)
        if self.kind == "scale":
            return x * weight
        bias = torch.from_numpy(self.bias) if with_bias and self.bias is not None else None
        if self.kind == "dense":
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding, dilation=self.dilation,
                        groups=self.groups)


def check_op(name: str, node, shape: tuple[int, ...], dt: float, problems: list[str]) -> Op | None:
    """The linear node reading `shape`, checked, or None with its problems recorded."""
    if isinstance(node, nir.Flatten):
        start, end = one_int(node.start_dim), one_int(node.end_dim)
        if start != 0 or end not in (-1, len(shape) - 1):
            problems.append(f"node {name!r}: Flatten from dim {node.start_dim!r} to {node.end_dim!r}; only the whole "
                            f"array maps (start_dim 0, end_dim -1)")
            return None
        return Op(name, "flatten", shape, (int(np.prod(shape)),))
    if isinstance(node, nir.Scale):
        scale = float_array(name, node, "scale", problems)
        if scale is None:
            return None
        try:
            full = np.array(np.broadcast_to(scale, shape))  # writable: torch.from_numpy reads it
        except ValueError:
            problems.append(f"node {name!r}: scale of shape {scale.shape} does not fit its input {shape}")
            return None
        return Op(name, "scale", shape, shape, weight=full)
    if isinstance(node, nir.Delay):
        delay = float_array(name, node, "delay", problems)
        if delay is None:
            return None
        steps = delay / dt
        if delay.size == 0 or not np.all(delay == delay.flat[0]) or delay.flat[0] < 0 or \
                abs(steps.flat[0] - round(steps.flat[0])) > DELAY_TOLERANCE:
            problems.append(f"node {name!r}: delay must be one value, a whole number >= 0 of steps of dt = {dt:g} s "
                            f"(a chip synapse has one delay), is {delay.min():g} to {delay.max():g} s")
            return None
        return Op(name, "delay", shape, shape, delay=float(delay.flat[0]))
    if isinstance(node, POOLS):
        return _pool(name, node, shape, problems)
    weight = float_array(name, node, "weight", problems)
    bias = float_array(name, node, "bias", problems) if isinstance(node, (nir.Affine, nir.Conv2d)) else None
    if weight is None or (bias is None and isinstance(node, (nir.Affine, nir.Conv2d))):
        return None
    n_out = weight.shape[0] if weight.ndim else 0
    if bias is not None and bias.shape != (n_out,):
        problems.append(f"node {name!r}: bias has shape {bias.shape}, the weight {weight.shape}")
        return None
    bias = bias if bias is not None and np.any(bias) else None
    if not isinstance(node, nir.Conv2d):
        if weight.ndim != 2 or (weight.shape[1],) != shape:
            problems.append(f"synapse {name!r}: weight {weight.shape} does not map its {shape} input")
            return None
        return Op(name, "dense", shape, (n_out,), weight=weight, bias=bias)
    return _conv(name, node, weight, bias, shape, problems)


def _geometry(name: str, problems: list[str], **given) -> dict | None:
    """stride, padding and dilation as pairs of ints, or None with the problem recorded."""
    geo = {}
    for field, low in (("stride", 1), ("padding", 0), ("dilation", 1)):
        pair = _pair(given[field])
        if pair is None or min(pair) < low:
            problems.append(f"synapse {name!r}: {field} must be one or two integers >= {low}, is {given[field]!r}")
            return None
        geo[field] = pair
    return geo


def _out_size(shape, kernel, geo) -> tuple[int, int]:
    return tuple((shape[1 + i] + 2 * geo["padding"][i] - geo["dilation"][i] * (kernel[i] - 1) - 1) // geo["stride"][i]
                 + 1 for i in range(2))


def _conv(name: str, node, weight, bias, shape, problems: list[str]) -> Op | None:
    padding = node.padding
    if isinstance(padding, str):  # NIR allows "valid" (none) and "same" (stride 1; symmetric only here)
        dilation = _pair(node.dilation) or (1, 1)
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])] if weight.ndim == 4 else [1, 1]
        if padding == "same" and (any(t % 2 for t in total) or np.any(np.asarray(node.stride) != 1)):
            problems.append(f"synapse {name!r}: padding 'same' needs stride 1 and an even total padding here "
                            f"(kernel {weight.shape[2:]}); pad explicitly")
            return None
        padding = 0 if padding == "valid" else tuple(t // 2 for t in total)
    geo = _geometry(name, problems, stride=node.stride, padding=padding, dilation=node.dilation)
    groups = one_int(node.groups) or 0
    if geo is None:
        return None
    if groups < 1:
        problems.append(f"synapse {name!r}: groups must be one integer >= 1, is {node.groups!r}")
        return None
    ok = weight.ndim == 4 and len(shape) == 3 and weight.shape[1] * groups == shape[0] and \
        weight.shape[0] % groups == 0
    declared = getattr(node, "input_shape", None)
    if ok and declared is not None and np.asarray(declared).reshape(-1).tolist() != list(shape[1:]):
        problems.append(f"synapse {name!r}: input_shape {np.asarray(declared).tolist()} is not its source's "
                        f"{shape[1:]}")
        return None
    size = _out_size(shape, weight.shape[2:], geo) if ok else (0, 0)
    if not ok or min(size) < 1:
        problems.append(f"synapse {name!r}: a Conv2d of weight {weight.shape} ({geo}, groups {groups}) does not "
                        f"read its {shape} input")
        return None
    return Op(name, "conv", shape, (weight.shape[0], *size), weight=weight, bias=bias, groups=groups, **geo)


def _pool(name: str, node, shape, problems: list[str]) -> Op | None:
    kernel = _pair(node.kernel_size)
    geo = _geometry(name, problems, stride=node.stride, padding=node.padding, dilation=1)
    bad_kernel = kernel is None or min(kernel) < 1
    if bad_kernel:
        problems.append(f"node {name!r}: kernel_size must be one or two integers >= 1, is {node.kernel_size!r}")
    if bad_kernel or geo is None:
        return None
    size = _out_size(shape, kernel, geo) if len(shape) == 3 else (0, 0)
    if min(size) < 1:
        problems.append(f"node {name!r}: a {type(node).__name__} of kernel {kernel} does not read its {shape} input")
        return None
    tap = 1.0 if isinstance(node, nir.SumPool2d) else 1.0 / (kernel[0] * kernel[1])
    weight = np.full((shape[0], 1, *kernel), tap)
    return Op(name, "conv", shape, (shape[0], *size), weight=weight, groups=shape[0], **geo)


# ---- a path's ops composed into one synapse

@dataclass(frozen=True)
class Composed:
    """A path's linear map as one chip synapse (float weights, before quantization)."""
    weight: np.ndarray  # dense [N_out, N_in]; conv [O, C / groups, kh, kw]
    dense: bool
    flatten: bool  # a dense synapse reading a multi-dimensional source
    geometry: dict  # conv: stride, padding, dilation (pairs), groups
    delay_steps: int  # from the path's Delay nodes


def compose(path: Path, ops: list[Op], source_shape: tuple[int, ...], dt: float,
            problems: list[str]) -> Composed | None:
    """The path's ops (without their biases) as one dense matrix or one convolution."""
    delay = sum(round(op.delay / dt) for op in ops)
    if len(source_shape) != 3 or any(op.kind in ("dense", "flatten") for op in ops):
        return Composed(_dense_matrix(ops, source_shape), True, len(source_shape) > 1, {}, delay)
    conv = None  # (full kernel [O, C, kh, kw], stride, padding, dilation)
    in_scale = np.ones(source_shape[0])
    for op in ops:
        if op.kind == "delay":
            continue
        if op.kind == "scale":
            per_channel = op.weight.reshape(op.weight.shape[0], -1)
            if not np.all(per_channel == per_channel[:, :1]):
                problems.append(f"node {op.name!r}: a Scale on a convolution's path must be one value per channel")
                return None
            if conv is None:
                in_scale = in_scale * per_channel[:, 0]
            else:
                conv = (conv[0] * per_channel[:, 0, None, None, None], *conv[1:])
            continue
        step = (_full_kernel(op.weight, op.groups), op.stride, op.padding, op.dilation)
        if conv is None:
            conv = (step[0] * in_scale[None, :, None, None], *step[1:])
            shape = op.in_shape
        else:
            conv = _compose_convs(path, conv, step, shape, op, problems)
            if conv is None:
                return None
    if conv is None:  # Scale and Delay only: a 1 x 1 convolution per channel
        conv = (np.diag(in_scale)[:, :, None, None], (1, 1), (0, 0), (1, 1))
    kernel, stride, padding, dilation = conv
    groups = _groups(kernel)
    blocks = kernel.reshape(groups, kernel.shape[0] // groups, groups, kernel.shape[1] // groups, *kernel.shape[2:])
    grouped = np.concatenate([blocks[g, :, g] for g in range(groups)])
    return Composed(grouped, False, False, {"stride": stride, "padding": padding, "dilation": dilation,
                                            "groups": groups}, delay)


def linear_part(ops, x: torch.Tensor) -> torch.Tensor:
    """A path's linear nodes applied in order, as the source graph says (not composed), without their biases."""
    for op in ops:
        x = op.apply(x, with_bias=False)
    return x


def _dense_matrix(ops: list[Op], source_shape: tuple[int, ...]) -> np.ndarray:
    """The linear map as a matrix [N_out, N_in]: its transpose applied to every output basis vector (autograd's
    vector-Jacobian product, exact for a linear map)."""
    x = torch.zeros(1, *source_shape, dtype=torch.float64)
    out, pull = torch.func.vjp(lambda v: linear_part(ops, v), x)
    n_out = int(np.prod(out.shape[1:]))
    rows = torch.func.vmap(pull)(torch.eye(n_out, dtype=torch.float64).view(n_out, *out.shape))[0]
    return rows.reshape(n_out, -1).numpy()


def _full_kernel(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped kernel [O, C / g, kh, kw] as the equivalent ungrouped one [O, C, kh, kw]."""
    if groups == 1:
        return weight
    out, per, *k = weight.shape
    full = np.zeros((out, per * groups, *k))
    step = out // groups
    for g in range(groups):
        full[g * step:(g + 1) * step, g * per:(g + 1) * per] = weight[g * step:(g + 1) * step]
    return full


def _groups(kernel: np.ndarray) -> int:
    """The most groups the kernel [O, C, kh, kw] splits into (block-diagonal in output and input channels)."""
    out, inp = kernel.shape[:2]
    for g in sorted((d for d in range(1, math.gcd(out, inp) + 1) if out % d == 0 and inp % d == 0), reverse=True):
        mask = np.kron(np.eye(g, dtype=bool), np.ones((out // g, inp // g), dtype=bool))
        if not np.any(kernel[~mask]):
            return g
    return 1


def _compose_convs(path: Path, a, b, shape, op: Op, problems: list[str]):
    """Convolution b after convolution a (a read `shape`) as one convolution, where that is exact: b's
    kernel through a's stride, a's kernel after it, stride sa sb, padding pa + pb sa. Where b pads, the
    taps it pads must read nothing but a's padding on both sides (so that a's output there is 0)."""
    ka, sa, pa, da = a
    kb, sb, pb, db = b
    if da != (1, 1) or db != (1, 1):
        problems.append(f"synapse {path.name!r}: {op.name!r} follows another convolution or pooling on the path; "
                        f"they compose here only undilated")
        return None
    kernel = F.conv_transpose2d(torch.from_numpy(kb), torch.from_numpy(ka), stride=sa).numpy()
    stride = (sa[0] * sb[0], sa[1] * sb[1])
    padding = (pa[0] + pb[0] * sa[0], pa[1] + pb[1] * sa[1])
    mid = _out_size(shape, ka.shape[2:], {"stride": sa, "padding": pa, "dilation": (1, 1)})
    for i in range(2):
        reads_input = pb[i] and (ka.shape[2 + i] > sa[i] + pa[i] or mid[i] * sa[i] - pa[i] < shape[1 + i])
        if reads_input:
            problems.append(f"synapse {path.name!r}: the padding of {op.name!r} after the pooling or convolution "
                            f"before it does not compose exactly (a padded tap would read the image's border)")
            return None
    direct = _out_size(shape, kernel.shape[2:], {"stride": stride, "padding": padding, "dilation": (1, 1)})
    if direct != op.out_shape[1:]:
        problems.append(f"synapse {path.name!r}: {op.name!r} after the convolution or pooling before it gives "
                        f"{op.out_shape[1:]}, their composition {direct}")
        return None
    return kernel, stride, padding, (1, 1)
