"""The float spiking network (`export.graph.FloatGraph`) as a NIR graph, and back.

Every node is a NIR primitive, so `nir.read` loads the file and its type checks pass:

- `input`: `Input` (img_ch, H, W), the noisy image x_t; `head`: `Conv2d`, the host's first conv (BN folded),
  into the first population.
- one `IF` per population, named as the population: r = 1, v_threshold = the threshold, v_reset = 0; or,
  for a LIF population (it keeps 1 - 1/tau of v per step), a `LIF` with that tau (in SNN steps), r = tau
  (its terms already carry the input's 1/tau: v = v - v / tau + r I / tau = (1 - 1/tau) v + I), v_leak = 0.
  Metadata `bias_table` [rows, C]: the constant input current per channel, one row, or one row per
  diffusion step (NIR has no time-dependent bias).
- one `Conv2d` per term (`syn000`, ... over all populations in order, then the readout), zero bias. Its
  weight covers the target's full channel count, zero outside rows [out_offset, out_offset + channels):
  NIR's fan-in is a sum of equal shapes, its only way to concatenate. Metadata `source`, `target`,
  `out_offset`, `channels`, `upsample`.
- `readout`: `Scale` of ones (nirtorch does not sum fan-in into an `Output`), metadata `bias_table`;
  then `output`, the analog value the host's tail turns into eps.

NIR has no up-sampling. A term that up-samples its source by u reads from an `Input` port
`<source>.up<u>` of shape (C, uH, uW), and the source feeds an `Output` port `<source>.to_up<u>`; the
graph metadata `links` joins each pair by nearest up-sampling within the step.

Graph metadata: `format`, `version`, `snn_steps`, `diffusion_steps`, `discretization`, `order` (the
populations in update order), `links` (both JSON: lists of strings do not survive `nir.write`), `host`
(the tail's arrays, `membrane_decay`).

Precision: weights, biases and the host's arrays are float32 on file; thresholds (r, v_threshold, v_reset)
are float64 and exact. `read_float_nir` returns float64 tensors holding the float32 values, i.e. the
written graph with those arrays rounded to float32.
"""
from __future__ import annotations

import functools
import json
import os
import re

import nir
import numpy as np
import torch

from durableio import atomic_path

from .errors import ExportError
from .graph import Expr, FloatGraph, FloatPopulation, Term
from .host import HostStages
from .nir_chip import metadata_value, wire_synapse

FORMAT = "sddpm-float-nir"
VERSION = 1
INPUT, HEAD, READOUT, OUTPUT = "input", "head", "readout", "output"
DISCRETIZATION = ("forward Euler with dt = one SNN step: v[t] = v[t-1] + r I[t] with r = 1 (IF), or "
                  "v[t] = v[t-1] + (r I[t] - v[t-1]) / tau with r = tau (LIF); spike iff "
                  "v[t] >= v_threshold (H(0) = 1), then v = v_reset = 0; x_t and every bias_table row are "
                  "constant over the snn_steps steps; no synaptic delay: a population reads the spikes of the "
                  "same step, populations updated in `order`")
SYNAPSE = re.compile(r"syn(\d+)")
NEURONS = (nir.IF, nir.LIF)
NODE_TYPES = (nir.Input, nir.Output, nir.Conv2d, nir.Scale) + NEURONS
# The graph read back from its file against the graph written, both run in float64: the file rounds weights
# and biases to float32 (relative 2^-24 = 6e-8); measured 2.5e-7 on eps of order 7, with a wide margin.
FILE_ROUND_TRIP_ATOL = 1e-5


class NirFileError(ExportError, ValueError):
    """A file (or NIR graph) that is not a float SDDPM network in this module's NIR layout."""


def _f32(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)


def _if_node(pop: FloatPopulation) -> nir.IF | nir.LIF:
    common = dict(v_threshold=np.full(pop.shape, pop.threshold), v_reset=np.zeros(pop.shape),
                  metadata={"bias_table": _f32(pop.current.bias_table())})
    if pop.keep == 1.0:
        return nir.IF(r=np.ones(pop.shape), **common)
    tau = 1.0 / (1.0 - pop.keep)
    return nir.LIF(tau=np.full(pop.shape, tau), r=np.full(pop.shape, tau), v_leak=np.zeros(pop.shape), **common)


def _conv_node(term: Term, target: str, source_shape, target_shape) -> nir.Conv2d:
    c_out, c_in, k, _ = term.weight.shape
    weight = np.zeros((target_shape[0], c_in, k, k), dtype=np.float32)
    weight[term.out_offset:term.out_offset + c_out] = _f32(term.weight)
    _, h, w = source_shape
    return nir.Conv2d(input_shape=(h * term.upsample, w * term.upsample), weight=weight, stride=term.stride,
                      padding=term.padding, dilation=1, groups=1, bias=np.zeros(target_shape[0], dtype=np.float32),
                      metadata={"source": term.source, "target": target, "out_offset": term.out_offset,
                                "channels": c_out, "upsample": term.upsample})


def float_graph_to_nir(graph: FloatGraph) -> nir.NIRGraph:
    """The float graph as a type-checked NIR graph (layout in the module docstring)."""
    shapes = {p.name: p.shape for p in graph.populations}
    host = graph.host
    first = next(p for p in graph.populations if p.host_input)
    img = (host.head_weight.shape[1], *first.shape[1:])
    nodes: dict[str, nir.NIRNode] = {
        INPUT: nir.Input(np.array(img)),
        HEAD: nir.Conv2d(input_shape=img[1:], weight=_f32(host.head_weight), stride=1, padding=1, dilation=1,
                         groups=1, bias=_f32(host.head_bias)),
        READOUT: nir.Scale(np.ones(graph.readout.shape), metadata={"bias_table": _f32(graph.readout.bias_table())}),
        OUTPUT: nir.Output(np.array(graph.readout.shape)),
    }
    edges = [(INPUT, HEAD), (READOUT, OUTPUT)] + [(HEAD, p.name) for p in graph.populations if p.host_input]
    links = []
    targets = [(p.name, p.current) for p in graph.populations] + [(READOUT, graph.readout)]
    terms = [(target, expr.shape, term) for target, expr in targets for term in expr.terms]
    for p in graph.populations:
        nodes[p.name] = _if_node(p)
    for i, (target, target_shape, term) in enumerate(terms):
        name = f"syn{i:03d}"
        nodes[name] = _conv_node(term, target, shapes[term.source], target_shape)
        wire_synapse(nodes, edges, links, name, term.source, shapes[term.source], term.upsample, target)
    metadata = {
        "format": FORMAT, "version": VERSION, "snn_steps": graph.snn_steps, "diffusion_steps": graph.diffusion_steps,
        "discretization": DISCRETIZATION, "order": json.dumps([p.name for p in graph.populations]),
        "links": json.dumps(links),
        "host": {"membrane_decay": float(host.membrane_decay), **{k: _f32(v) for k, v in host.tail.items()}},
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def write_float_nir(path: str, graph: FloatGraph) -> None:
    """Write the float graph as a NIR file, atomically (an interrupted write leaves the old file, or none)."""
    g = float_graph_to_nir(graph)
    with atomic_path(path) as tmp:
        nir.write(tmp, g)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise NirFileError(message)


_field = functools.partial(metadata_value, error=NirFileError)  # (metadata, key, where) -> value


def _json(metadata: dict, field: str):
    try:
        return json.loads(_field(metadata, field, "graph"))
    except json.JSONDecodeError as e:
        raise NirFileError(f"graph metadata field {field!r} is not JSON: {e}") from None


def _require_type(g: nir.NIRGraph, name: str, kind: type) -> nir.NIRNode:
    _require(isinstance(g.nodes.get(name), kind), f"no {kind.__name__} node {name!r} in the graph")
    return g.nodes[name]


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


def _expr(shape: tuple[int, int, int], terms: list[Term], node: nir.NIRNode, where: str,
          diffusion_steps: int) -> Expr:
    """An expression whose bias_table() is the node's table: one row is the bias, one per step is the temb."""
    table = _tensor(_field(node.metadata, "bias_table", where))
    _require(table.ndim == 2 and table.shape[1] == shape[0] and table.shape[0] in (1, diffusion_steps),
             f"{where}: bias_table {tuple(table.shape)} is not [1 or {diffusion_steps}, {shape[0]}]")
    if table.shape[0] == 1:
        return Expr(shape, tuple(terms), table[0])
    return Expr(shape, tuple(terms), torch.zeros(shape[0], dtype=torch.float64), table)


def _dims(shape) -> list[int] | None:
    """A NIR type (an array, or None where undefined) as a list of ints."""
    return None if shape is None else [int(v) for v in shape]


def _geometry(where: str, node: nir.Conv2d) -> tuple[int, int]:
    """(stride, padding) of a conv the float graph can run: square, undilated, one group."""
    stride, padding, dilation = (np.asarray(v).ravel().tolist() for v in (node.stride, node.padding, node.dilation))
    _require(len(set(stride)) == 1 and len(set(padding)) == 1 and not isinstance(padding[0], str)
             and set(dilation) == {1} and int(node.groups) == 1,
             f"{where}: unsupported conv (stride {stride}, padding {padding}, dilation {dilation}, "
             f"groups {node.groups}); the float graph runs square strides and paddings, dilation 1, one group")
    return int(stride[0]), int(padding[0])


def _term(name: str, node: nir.Conv2d, shapes: dict[str, tuple], readout_shape: tuple) -> tuple[str, Term]:
    """(target, term) of a synapse node, checked to chain its source into its target."""
    where = f"node {name!r}"
    source, target = str(_field(node.metadata, "source", where)), str(_field(node.metadata, "target", where))
    offset, channels, factor = (int(_field(node.metadata, f, where)) for f in ("out_offset", "channels", "upsample"))
    _require(source in shapes, f"{where}: source {source!r} is not a population")
    _require(target in shapes or target == READOUT, f"{where}: target {target!r} is not a population or {READOUT!r}")
    c, h, w = shapes[source]
    target_shape = readout_shape if target == READOUT else shapes[target]
    stride, padding = _geometry(where, node)
    weight = np.asarray(node.weight)
    got_in, got_out = _dims(node.input_type["input"]), _dims(node.output_type["output"])
    chained = (got_in == [c, h * factor, w * factor] and got_out == list(target_shape)
               and 0 <= offset and offset + channels <= target_shape[0])
    _require(chained, f"{where}: Conv2d {got_in} -> {got_out} does not chain {source} {(c, h, w)} "
             f"(up-sampled x{factor}) -> {target} {tuple(target_shape)} at channels [{offset}, {offset + channels})")
    _require(not np.any(node.bias) and not np.any(np.delete(weight, np.s_[offset:offset + channels], axis=0)),
             f"{where}: bias and weight rows outside channels [{offset}, {offset + channels}) must be zero")
    return target, Term(source, _tensor(weight[offset:offset + channels]), stride, padding, factor, offset)


def nir_to_float_graph(g: nir.NIRGraph) -> FloatGraph:
    """Rebuild the float graph from a NIR graph in this module's layout; NirFileError names what is wrong."""
    meta = g.metadata or {}
    fmt = meta.get("format")
    _require(fmt == FORMAT, f"not an sddpm float NIR file: graph metadata format is {fmt!r}, expected {FORMAT!r} "
             f"(a graph from another tool?)")
    version = int(_field(meta, "version", "graph"))
    _require(version == VERSION, f"unsupported {FORMAT} version {version} (this reader knows version {VERSION})")
    for name, node in g.nodes.items():
        _require(isinstance(node, NODE_TYPES), f"node {name!r} has type {type(node).__name__}, which an sddpm float "
                 f"NIR file does not use (only {', '.join(t.__name__ for t in NODE_TYPES)})")
    steps = int(_field(meta, "diffusion_steps", "graph"))
    order, links = _json(meta, "order"), _json(meta, "links")
    host = dict(_field(meta, "host", "graph"))
    for link in links:
        _require(isinstance(g.nodes.get(link["from"]), nir.Output) and isinstance(g.nodes.get(link["to"]), nir.Input),
                 f"link {link['from']!r} -> {link['to']!r}: no Output port {link['from']!r} or no Input port "
                 f"{link['to']!r} in the graph")
    ifs = {name for name, node in g.nodes.items() if isinstance(node, NEURONS)}
    _require(sorted(order) == sorted(ifs), f"metadata order {order} does not list the neuron nodes {sorted(ifs)}")
    shapes = {name: tuple(int(v) for v in g.nodes[name].v_threshold.shape) for name in order}
    readout = _require_type(g, READOUT, nir.Scale)
    readout_shape = tuple(int(v) for v in readout.scale.shape)
    synapses = sorted((int(m.group(1)), name) for name in g.nodes if (m := SYNAPSE.fullmatch(name)))
    terms: dict[str, list[Term]] = {}
    for _, name in synapses:
        target, term = _term(name, _require_type(g, name, nir.Conv2d), shapes, readout_shape)
        terms.setdefault(target, []).append(term)
    head = _require_type(g, HEAD, nir.Conv2d)
    fed = {dst for src, dst in g.edges if src == HEAD}
    img, got_in, got_out = (_dims(_require_type(g, INPUT, nir.Input).output_type["output"]),
                            _dims(head.input_type["input"]), _dims(head.output_type["output"]))
    # head_current runs it as a 3x3 conv with stride 1 and padding 1
    _require(_geometry(f"node {HEAD!r}", head) == (1, 1) and got_in == img and bool(fed) and fed <= ifs
             and all(got_out == list(shapes[name]) for name in fed),
             f"node {HEAD!r}: Conv2d {got_in} -> {got_out} (stride 1, padding 1) does not chain {INPUT} {img} "
             f"-> {sorted(fed)}")
    pops: list[FloatPopulation] = []
    for name in order:
        node, where = g.nodes[name], f"node {name!r}"
        # One SNN step updates the populations in order, each reading spikes of the same step (run_float).
        late = [t.source for t in terms.get(name, []) if t.source not in {p.name for p in pops}]
        _require(not late, f"{where} reads {sorted(set(late))}, which metadata order updates after it")
        keep = 1.0
        if isinstance(node, nir.LIF):
            tau = float(np.asarray(node.tau).flat[0])
            _require(np.ptp(node.tau) == 0 and tau > 1 and np.all(node.r == tau) and np.all(node.v_leak == 0),
                     f"{where}: the float graph runs LIF neurons with one tau > 1, r = tau and v_leak = 0")
            keep = 1.0 - 1.0 / tau
        else:
            _require(np.all(node.r == 1), f"{where}: the float graph runs IF neurons with r = 1")
        _require(np.all(node.v_reset == 0) and np.ptp(node.v_threshold) == 0,
                 f"{where}: the float graph's neurons have v_reset = 0 and one threshold")
        expr = _expr(shapes[name], terms.get(name, []), node, where, steps)
        pops.append(FloatPopulation(name, shapes[name], float(node.v_threshold.flat[0]), expr, name in fed, keep))
    _require(np.all(readout.scale == 1), f"node {READOUT!r}: scale must be ones")
    decay = float(_field(host, "membrane_decay", "graph metadata host"))
    tail = {k: _tensor(v) for k, v in host.items() if k != "membrane_decay"}
    graph = FloatGraph(tuple(pops), _expr(readout_shape, terms.get(READOUT, []), readout, f"node {READOUT!r}", steps),
                       HostStages(_tensor(head.weight), _tensor(head.bias), tail, decay),
                       int(_field(meta, "snn_steps", "graph")), steps)
    _check_wiring(g, graph)
    return graph


def _check_wiring(g: nir.NIRGraph, graph: FloatGraph) -> None:
    """The file's edges, ports and links are those the node metadata implies (the writer's, rebuilt)."""
    expected = float_graph_to_nir(graph)
    missing, extra = set(expected.edges) - set(g.edges), set(g.edges) - set(expected.edges)
    _require(not missing and not extra, f"edges disagree with the node metadata: missing {sorted(missing)}, "
             f"unexpected {sorted(extra)}")
    missing, extra = expected.nodes.keys() - g.nodes.keys(), g.nodes.keys() - expected.nodes.keys()
    _require(not missing and not extra, f"nodes disagree with the node metadata: missing {sorted(missing)}, "
             f"unexpected {sorted(extra)}")
    _require(json.loads(g.metadata["links"]) == json.loads(expected.metadata["links"]),
             f"links {g.metadata['links']} disagree with the up-sampling terms: expected {expected.metadata['links']}")


def read_float_nir(path: str) -> FloatGraph:
    """The float graph of a file written by `write_float_nir` (arrays rounded to float32, see the docstring)."""
    if not os.path.isfile(path):
        raise NirFileError(f"NIR file not found: {path}")
    try:
        g = nir.read(path, type_check=False)  # our own checks below name the node that is wrong
    # h5py's OSError; nir's assert on an unknown node type; KeyError/TypeError/ValueError on missing fields
    except (OSError, AssertionError, KeyError, TypeError, ValueError) as e:
        raise NirFileError(f"{path}: not a readable HDF5/NIR file (truncated or another format?): "
                           f"{type(e).__name__}: {e}") from None
    try:
        return nir_to_float_graph(g)
    except NirFileError as e:
        raise NirFileError(f"{path}: {e}") from None
