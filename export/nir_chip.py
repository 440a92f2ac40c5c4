"""The chip network (`export.chip`) as a NIR graph: the one file every front end writes and every back end
runs, whether it came from `sddpm compile` or `sddpm import-nir`.

Every node is a NIR primitive, so `nir.read` loads the file and its type checks pass. One NIR time unit is one
chip step, integrated by forward Euler:

- `input` (diffusion networks): `Input` (C, H, W), the host's current into the first population, integer
  a-units per step. Spike inputs: one `Input` each, named as the input, listed in the graph's `spike_inputs`.
- one neuron node per population, named as the population, by its decays: `IF` (du = 4095, dv = 0) with
  r = 64 (one a-unit of input is 64 units of v); `LIF` (du = 4095, dv > 0) with tau = 4096 / dv steps and
  r = 64 tau; otherwise `CubaLIF` with tau_syn = 4096 / (du + 1), w_in = 64 tau_syn, tau_mem = 4096 / dv and
  r = tau_mem (an infinite tau where a decay is 0). All with v_threshold = vth << 6, v_reset = 0, spike iff
  v > v_threshold (Lava's strict comparison). NIR's float dynamics round differently from Lava's integers, so
  node metadata carries the integers themselves: `du`, `dv`, `vth`, `scale`, the bias table (`bias_mant`
  [rows, C], `bias_exp`), `depth` (input and bias start; in a pipeline the window is [depth, depth + T)),
  `host_input`, and `v_saturate_bits` (v saturates at 24).
- one `Conv2d` or `Affine` per synapse (`syn0000` ...): the integer weights mant << weight_exp as float32
  (exact: an 8-bit mantissa times a power of two), zero outside the synapse's output channels (a concatenation
  is a fan-in sum of zero-padded weights, NIR's only way to concatenate); metadata `weight_exp`, `out_offset`,
  `channels` (the slice width), `delay`, `upsample`. A dense synapse that reads a multi-dimensional source
  reads it through a `Flatten` node `<source>.flat` (C order).
- `readout` (diffusion networks): `Scale` (the float current per a-unit) that sums the output synapses, then
  `output`. Spike outputs: an `Output` per name in the graph's `outputs`, fed by its population.

NIR has no up-sampling. A synapse that up-samples its source by u reads from an `Input` port
`<source>.up<u>` of shape (C, uH, uW), and the source feeds an `Output` port `<source>.to_up<u>`; the
graph metadata `links` joins each pair by nearest up-sampling within the step. A reader that does not
know the links sees two more graph ports; nothing in the file claims a meaning NIR does not give it.

Graph metadata: `format` ("sddpm-chip-nir"), `version`, the window T (`snn_steps`, absent for an open-ended
network), the neuron's integer constants, the partition (what runs where), `order`, `links`, `spike_inputs`,
`outputs`, `source` (how an imported graph was discretized), and for a diffusion network its application
layer: the model config, diffusion steps, threshold factor, the host's saturation and `host`, the host
stages (head conv, readout bias and time embedding, tail) as float32 arrays. The file alone runs the network.
Version 1 files (IF conv networks of `sddpm compile`) read as they are. The root's HDF5 attribute
`sddpm_sha256` is a digest of all of it, so a reader can tell a damaged or edited file from one this writer
wrote.
"""
from __future__ import annotations

import hashlib
import json

import h5py
import nir
import numpy as np

from durableio import NIR_READ_ERRORS, atomic_path

from .errors import ExportError
from .nir_foreign_check import ForeignGraphError
from .nir_foreign_read import structural_problems

from .chip import (ACT_SHIFT, DECAY_UNITY, IF_DU, IF_DV, READOUT, STATE_BITS, V_PER_A, VTH_SHIFT, one_or_pair,
                   ChipHost, ChipInput, ChipNetwork, ChipPopulation, ChipReadout, ChipSynapse, check_ranges)

FORMAT = "sddpm-chip-nir"
VERSION = 2  # 2: any LIF, dense synapses, spike inputs and outputs, imported graphs (1: SDDPM's IF conv networks)
VERSIONS = (1, 2)
# The second stack's format before version 2 of this one: refused with the way to recompile.
OLD_IMPORT_FORMAT = "sddpm-net-nir"
INPUT = "input"
OUTPUT = "output"


def up_ports(source: str, factor: int) -> tuple[str, str]:
    """(Output port the source feeds, Input port the up-sampling synapses read)."""
    return f"{source}.to_up{factor}", f"{source}.up{factor}"


def wire_synapse(nodes: dict, edges: list, links: list, name: str, source: str, source_shape, upsample: int,
                 target: str) -> None:
    """Edges source -> synapse `name` -> target. An up-sampling synapse reads the source's Input port instead;
    the port pair and its link are added once per (source, factor) and shared by every synapse reading it."""
    if upsample != 1:
        out_port, in_port = up_ports(source, upsample)
        if in_port not in nodes:
            c, h, w = source_shape
            nodes[out_port] = nir.Output(np.array((c, h, w)))
            nodes[in_port] = nir.Input(np.array((c, h * upsample, w * upsample)))
            edges.append((source, out_port))
            links.append({"from": out_port, "to": in_port, "op": "nearest_upsample", "factor": upsample})
        source = in_port
    edges += [(source, name), (name, target)]


def synapse_name(index: int) -> str:
    return f"syn{index:04d}"


def neuron_node(shape, du: int, dv: int, vth: int, metadata: dict) -> nir.NIRNode:
    """The NIR node of a Lava LIF population (module docstring: the NIR type and parameters by decay)."""
    ones = np.ones(shape)
    threshold = ones * float(vth << VTH_SHIFT)
    tau_mem = DECAY_UNITY / dv if dv else np.inf  # no leak: an infinite time constant
    if (du, dv) == (IF_DU, IF_DV):
        return nir.IF(r=ones * float(V_PER_A), v_threshold=threshold, v_reset=ones * 0.0, metadata=metadata)
    if du == IF_DU:
        return nir.LIF(tau=ones * tau_mem, r=ones * V_PER_A * tau_mem, v_leak=ones * 0.0, v_threshold=threshold,
                       v_reset=ones * 0.0, metadata=metadata)
    tau_syn = DECAY_UNITY / (du + 1) if du + 1 else np.inf
    return nir.CubaLIF(tau_syn=ones * tau_syn, tau_mem=ones * tau_mem, r=ones * tau_mem, v_leak=ones * 0.0,
                       v_threshold=threshold, v_reset=ones * 0.0, w_in=ones * V_PER_A * tau_syn, metadata=metadata)


def _synapse_node(syn: ChipSynapse, source_shape, target_shape) -> nir.NIRNode:
    # float32 holds mant << exp exactly: 8 significant bits times a power of two
    md = {"weight_exp": syn.weight_exp, "out_offset": syn.out_offset, "channels": syn.weight.shape[0],
          "delay": syn.delay, "upsample": syn.upsample}
    weight = np.zeros((target_shape[0], *syn.weight.shape[1:]), dtype=np.float32)
    weight[syn.out_offset:syn.out_offset + syn.weight.shape[0]] = syn.integer_weight()
    if syn.dense:
        return nir.Affine(weight=weight, bias=np.zeros(target_shape[0], dtype=np.float32), metadata=md)
    _, h, w = source_shape
    return nir.Conv2d(input_shape=(h * syn.upsample, w * syn.upsample), weight=weight, stride=syn.stride,
                      padding=syn.padding, dilation=syn.dilation, groups=syn.groups,
                      bias=np.zeros(target_shape[0], dtype=np.float32), metadata=md)


def flatten_node(shape) -> nir.Flatten:
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)


def chip_to_nir(net: ChipNetwork) -> nir.NIRGraph:
    check_ranges(net)
    shapes = {i.name: i.shape for i in net.inputs} | {p.name: p.shape for p in net.populations}
    nodes: dict[str, nir.NIRNode] = {i.name: nir.Input(np.array(i.shape)) for i in net.inputs}
    edges: list[tuple[str, str]] = []
    for p in net.populations:
        nodes[p.name] = neuron_node(p.shape, p.du, p.dv, p.vth, {
            "du": p.du, "dv": p.dv, "vth": p.vth, "scale": p.scale, "bias_mant": p.bias_mant.astype(np.int16),
            "bias_exp": p.bias_exp, "depth": p.depth, "host_input": int(p.host_input),
            "v_saturate_bits": STATE_BITS} | ({"voltage_out": 1} if p.voltage_out else {}))
        if p.host_input:
            nodes[INPUT] = nir.Input(np.array(p.shape))
            edges.append((INPUT, p.name))
    r = net.readout
    if r is not None:
        nodes["readout"] = nir.Scale(np.full(r.shape, r.scale), metadata={"depth": r.depth})
        nodes[OUTPUT] = nir.Output(np.array(r.shape))
        edges.append(("readout", OUTPUT))
    for name, pop in net.outputs:
        nodes[name] = nir.Output(np.array(shapes[pop]))
        edges.append((pop, name))
    links = []
    for i, syn in enumerate(net.synapses):
        name = synapse_name(i)
        target = "readout" if syn.target == READOUT else syn.target
        target_shape = r.shape if syn.target == READOUT else shapes[syn.target]
        nodes[name] = _synapse_node(syn, shapes[syn.source], target_shape)
        source = syn.source
        if syn.flatten:
            source = f"{syn.source}.flat"
            if source not in nodes:
                nodes[source] = flatten_node(shapes[syn.source])
                edges.append((syn.source, source))
        wire_synapse(nodes, edges, links, name, source, shapes[syn.source], syn.upsample, target)
    metadata = {
        "format": FORMAT, "version": VERSION, "neuron": json.dumps({"act_shift": ACT_SHIFT, "vth_shift": VTH_SHIFT,
                                                                     "state_bits": STATE_BITS}),
        "partition": json.dumps(net.partition()), "order": json.dumps([p.name for p in net.populations]),
        "links": json.dumps(links), "spike_inputs": json.dumps([i.name for i in net.inputs]),
        "outputs": json.dumps([list(o) for o in net.outputs]), "source": json.dumps(net.source),
        "model_config": json.dumps(net.model_config), "diffusion_steps": net.diffusion_steps,
        "threshold_factor": net.threshold_factor,
    }
    if net.snn_steps is not None:
        metadata["snn_steps"] = net.snn_steps
    if net.is_diffusion:
        host = {"head_weight": net.host.head_weight.astype(np.float32),
                "head_bias": net.host.head_bias.astype(np.float32),
                "readout_bias": r.bias.astype(np.float32), "membrane_decay": float(net.host.membrane_decay),
                **{k: v.astype(np.float32) for k, v in net.host.tail.items()}}
        if r.temb is not None:
            host["readout_temb"] = r.temb.astype(np.float32)
        metadata.update(host_input_max=net.host_input_max, host=host)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


# The file's digest: an HDF5 attribute of its root (nir.read ignores attributes). A value NIR stores
# uncompressed (a scale, a depth, the threshold factor) has no checksum of its own, so without this a
# flipped byte there would be read as a valid, different network.
DIGEST_ATTR = "sddpm_sha256"


def file_digest(h5: h5py.File) -> str:
    """sha256 over every group's and dataset's path and every dataset's dtype, shape and values, in HDF5's
    name order (`simulators.chip_file` computes the same on its own)."""
    digest = hashlib.sha256()

    def visit(name: str, obj) -> None:
        digest.update(name.encode() + b"\0")
        if isinstance(obj, h5py.Dataset):
            value = np.asarray(obj[()])
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(repr(value.tolist()).encode() if value.dtype.kind == "O" else value.tobytes())
    h5.visititems(visit)
    return digest.hexdigest()


def seal(path: str) -> None:
    """Store the digest of the file's contents in the file."""
    with h5py.File(path, "r+") as h5:
        h5.attrs[DIGEST_ATTR] = file_digest(h5)


def seal_problem(path: str) -> str | None:
    """Why the file's contents are not the ones its writer sealed, or None."""
    with h5py.File(path, "r") as h5:
        stored, actual = h5.attrs.get(DIGEST_ATTR), file_digest(h5)
    stored = stored.decode() if isinstance(stored, bytes) else stored
    if stored is None:
        return "the file carries no digest: write it again"
    if stored != actual:
        return "the file's contents differ from the digest written with them: it was damaged or edited"
    return None


def read_sealed(path: str, fmt: str, error: type[Exception]) -> nir.NIRGraph:
    """nir.read of a file this project wrote in format `fmt`: a damaged file, or one whose digest fails, is
    `error` naming the file (another tool's file is returned, for the format check to name)."""
    try:
        problem = seal_problem(path)
        graph = nir.read(path)
    except NIR_READ_ERRORS as err:
        # nir.read's own errors name no node (an unknown type is a bare AssertionError): the scan of the file does
        try:
            problems = structural_problems(path)
        except ForeignGraphError:  # not even a NIR graph in HDF5: nir.read's error says what it is
            problems = []
        if problems:
            raise error(f"{path}: " + "; ".join(problems)) from None
        raise error(f"{path}: not a readable NIR file ({type(err).__name__}: {err})") from None
    meta = graph.metadata or {}
    kind = meta.get("format")
    kind = kind.item() if isinstance(kind, np.ndarray) and kind.ndim == 0 else kind
    if problem is not None and kind == fmt:
        raise error(f"{path}: {problem}")
    return graph


def write_chip_nir(path: str, net: ChipNetwork) -> None:
    """Write the network as a NIR file with its digest, atomically (an interrupted write leaves the old
    file, or none)."""
    graph = chip_to_nir(net)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
        seal(tmp)


class ChipNirError(ExportError, ValueError):
    """A file that is not a chip network in this module's NIR layout."""


def scalar(value):
    """A metadata value as the writer had it: nir.read gives numpy scalars or 0-d arrays for Python values."""
    return value.item() if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) \
        else value


def metadata_value(metadata: dict | None, key: str, where: str, error: type[Exception] = ChipNirError,
                   hint: str = ""):
    """metadata[key] as a Python value; a missing key is `error` naming `where` and the key."""
    if not metadata or key not in metadata:
        raise error(f"{where}: metadata lacks {key!r}{hint}")
    return scalar(metadata[key])


def _check_version(meta: dict) -> int:
    fmt, version = scalar((meta or {}).get("format")), scalar((meta or {}).get("version"))
    if fmt == OLD_IMPORT_FORMAT:
        raise ChipNirError(f"a {OLD_IMPORT_FORMAT} file of an earlier release: its format is retired; compile the "
                           f"source NIR graph again with `sddpm import-nir`")
    if fmt != FORMAT or version not in VERSIONS:
        raise ChipNirError(f"not an {FORMAT} graph of a version in {VERSIONS} (format {fmt!r}, version {version!r})")
    return int(version)


def nir_to_chip(graph: nir.NIRGraph) -> ChipNetwork:
    """The ChipNetwork a graph of `chip_to_nir` holds (the inverse of `chip_to_nir`, design rules checked)."""
    meta = graph.metadata
    version = _check_version(meta)
    nodes = graph.nodes
    links = {link["to"]: link["from"] for link in json.loads(metadata_value(meta, "links", "graph"))}
    feeds = {}
    for a, b in graph.edges:
        feeds.setdefault(b, []).append(a)
    pops = []
    for name in json.loads(metadata_value(meta, "order", "graph")):
        node = nodes.get(name)
        if not isinstance(node, nir.IF | nir.LIF | nir.CubaLIF):
            raise ChipNirError(f"population {name!r}: no IF, LIF or CubaLIF node of that name")
        md = node.metadata
        decays = (IF_DU, IF_DV) if version == 1 else (int(metadata_value(md, "du", name)),
                                                      int(metadata_value(md, "dv", name)))
        pops.append(ChipPopulation(name, tuple(int(v) for v in node.v_threshold.shape),
                                   float(metadata_value(md, "scale", name)), int(metadata_value(md, "vth", name)),
                                   np.asarray(metadata_value(md, "bias_mant", name), np.int16),
                                   int(metadata_value(md, "bias_exp", name)), int(metadata_value(md, "depth", name)),
                                   bool(metadata_value(md, "host_input", name)), *decays,
                                   bool(scalar((md or {}).get("voltage_out", 0)))))
    syns = []
    for name in sorted((n for n, node in nodes.items() if isinstance(node, nir.Conv2d | nir.Affine)),
                       key=lambda n: int(n[3:])):
        node, md = nodes[name], nodes[name].metadata
        port = feeds[name][0]  # a population or input, its Flatten, or the Input port of an up-sampling link
        source = feeds[links[port]][0] if port in links else port
        flatten = isinstance(nodes[source], nir.Flatten)
        if flatten:
            source = feeds[source][0]
        target = next(b for a, b in graph.edges if a == name)
        exp, offset, channels = (int(metadata_value(md, k, name)) for k in ("weight_exp", "out_offset", "channels"))
        weight = np.round(np.asarray(node.weight, np.float64)[offset:offset + channels] / 2.0 ** exp).astype(np.int8)
        common = dict(source=source, target=READOUT if target == "readout" else target, weight=weight, weight_exp=exp,
                      upsample=int(metadata_value(md, "upsample", name)), out_offset=offset,
                      delay=int(metadata_value(md, "delay", name)))
        if isinstance(node, nir.Affine):
            syns.append(ChipSynapse(stride=1, padding=0, flatten=flatten, **common))
        else:
            syns.append(ChipSynapse(stride=one_or_pair(node.stride), padding=one_or_pair(node.padding),
                                    dilation=one_or_pair(node.dilation), groups=int(node.groups), **common))
    spike_inputs = json.loads(metadata_value(meta, "spike_inputs", "graph")) if version > 1 else []
    inputs = tuple(ChipInput(n, tuple(int(v) for v in np.asarray(nodes[n].output_type["output"]).ravel()))
                   for n in spike_inputs)
    outputs = tuple((str(a), str(b)) for a, b in json.loads(metadata_value(meta, "outputs", "graph"))) \
        if version > 1 else ()
    common = dict(inputs=inputs, outputs=outputs, model_config=json.loads(metadata_value(meta, "model_config", "graph")),
                  diffusion_steps=int(metadata_value(meta, "diffusion_steps", "graph")),
                  threshold_factor=float(metadata_value(meta, "threshold_factor", "graph")),
                  snn_steps=int(metadata_value(meta, "snn_steps", "graph")) if "snn_steps" in meta else None,
                  source=json.loads(metadata_value(meta, "source", "graph")) if version > 1 else {})
    if "host" in meta:
        common.update(_application(meta, nodes))
    net = ChipNetwork(tuple(pops), tuple(syns), **common)
    check_ranges(net)
    return net


def _application(meta: dict, nodes: dict) -> dict:
    """A diffusion network's application layer: the readout, the host stages and the host's saturation."""
    host = metadata_value(meta, "host", "graph")
    scale = np.asarray(nodes["readout"].scale)
    temb = host.get("readout_temb")
    readout = ChipReadout(tuple(int(v) for v in scale.shape), float(scale.flat[0]),
                          np.asarray(host["readout_bias"], np.float32),
                          None if temb is None else np.asarray(temb, np.float32),
                          int(metadata_value(nodes["readout"].metadata, "depth", "readout")))
    tail = {k: np.asarray(v, np.float32) for k, v in host.items()
            if k not in ("head_weight", "head_bias", "readout_bias", "readout_temb", "membrane_decay")}
    return dict(readout=readout, host_input_max=int(metadata_value(meta, "host_input_max", "graph")),
                host=ChipHost(np.asarray(host["head_weight"], np.float32), np.asarray(host["head_bias"], np.float32),
                              tail, float(host["membrane_decay"])))


def read_chip_nir(path: str) -> ChipNetwork:
    """The network of a chip file, its digest checked."""
    graph = read_sealed(path, FORMAT, ChipNirError)
    try:
        return nir_to_chip(graph)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, StopIteration) as err:
        raise ChipNirError(f"{path}: {err}") from None
