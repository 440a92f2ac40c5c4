"""The chip network as a NIR graph: the file the simulator and the Lava backend run from.

Every node is a NIR primitive, so `nir.read` loads the file and its type checks pass:

- `input`: `Input` (C, H, W), the host's current into the first population, integer a-units per step.
- one `IF` per population, named as the population: r = 64 (one a-unit of input is 64 units of v),
  v_threshold = vth << 6, v_reset = 0, spike iff v > v_threshold (Lava's strict comparison, and
  NIR's `Threshold`). One NIR time unit is one chip step, integrated by forward Euler, which is
  exact for integer inputs. Node metadata carries what NIR has no field for: `vth`, `scale`,
  the bias table per diffusion step (`bias_mant` [rows, C], `bias_exp`; on only inside the window),
  `depth` (the window is [depth, depth + T)), `host_input`, and `v_saturate_bits` (v saturates at 24).
- one `Conv2d` per synapse (`syn000` ...): the integer weights mant << weight_exp as float32 (exact:
  an 8-bit mantissa times a power of two), zero outside the synapse's output channels (a concatenation
  is a fan-in sum of zero-padded weights, NIR's only way to concatenate); metadata `weight_exp`,
  `out_offset`, `channels` (the slice width), `delay`, `upsample`.
- `readout`: `Scale` (the float current per a-unit) that sums the output synapses, then `output`.

NIR has no up-sampling. A synapse that up-samples its source by u reads from an `Input` port
`<source>.up<u>` of shape (C, uH, uW), and the source feeds an `Output` port `<source>.to_up<u>`; the
graph metadata `links` joins each pair by nearest up-sampling within the step. A reader that does not
know the links sees two more graph ports; nothing in the file claims a meaning NIR does not give it.

Graph metadata: `format` ("sddpm-chip-nir"), `version`, the model config, T, diffusion steps, the
threshold factor, the neuron's integer constants, the host's saturation, the partition (what runs
where), `links`, and `host`: the host stages (head conv, readout bias and time embedding, tail) as
float32 arrays. The file alone runs the network. The root's HDF5 attribute `sddpm_sha256` is a digest
of all of it, so a reader can tell a damaged or edited file from one this writer wrote.
"""
from __future__ import annotations

import hashlib
import json

import h5py
import nir
import numpy as np

from fileio import NIR_READ_ERRORS, atomic_path

from .errors import ExportError

from .chip import (ACT_SHIFT, HOST_INPUT_MAX, IF_DU, IF_DV, READOUT, STATE_BITS, V_PER_A, VTH_SHIFT, ChipHost,
                   ChipNetwork, ChipPopulation, ChipReadout, ChipSynapse, check_ranges)

FORMAT = "sddpm-chip-nir"
VERSION = 1
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


def _if_node(shape, vth: int, metadata: dict) -> nir.IF:
    return nir.IF(r=np.full(shape, float(V_PER_A)), v_threshold=np.full(shape, float(vth << VTH_SHIFT)),
                  v_reset=np.zeros(shape), metadata=metadata)


def _conv_node(syn: ChipSynapse, source_shape, target_channels: int) -> nir.Conv2d:
    c_out, c_in, k, _ = syn.weight.shape
    weight = np.zeros((target_channels, c_in, k, k), dtype=np.float32)
    # float32 holds mant << exp exactly: 8 significant bits times a power of two
    weight[syn.out_offset:syn.out_offset + c_out] = syn.integer_weight()
    _, h, w = source_shape
    return nir.Conv2d(input_shape=(h * syn.upsample, w * syn.upsample), weight=weight, stride=syn.stride,
                      padding=syn.padding, dilation=1, groups=1, bias=np.zeros(target_channels, dtype=np.float32),
                      metadata={"weight_exp": syn.weight_exp, "out_offset": syn.out_offset, "channels": c_out,
                                "delay": syn.delay, "upsample": syn.upsample})


def chip_to_nir(net: ChipNetwork) -> nir.NIRGraph:
    check_ranges(net)
    shapes = {p.name: p.shape for p in net.populations}
    first = net.populations[0]
    nodes: dict[str, nir.NIRNode] = {INPUT: nir.Input(np.array(first.shape))}
    edges: list[tuple[str, str]] = [(INPUT, first.name)]
    for p in net.populations:
        nodes[p.name] = _if_node(p.shape, p.vth, {
            "vth": p.vth, "scale": p.scale, "bias_mant": p.bias_mant.astype(np.int16), "bias_exp": p.bias_exp,
            "depth": p.depth, "host_input": int(p.host_input), "v_saturate_bits": STATE_BITS})
    r = net.readout
    nodes["readout"] = nir.Scale(np.full(r.shape, r.scale), metadata={"depth": r.depth})
    nodes[OUTPUT] = nir.Output(np.array(r.shape))
    edges.append(("readout", OUTPUT))
    links = []
    for i, syn in enumerate(net.synapses):
        name = synapse_name(i)
        target = "readout" if syn.target == READOUT else syn.target
        target_channels = r.shape[0] if syn.target == READOUT else shapes[syn.target][0]
        nodes[name] = _conv_node(syn, shapes[syn.source], target_channels)
        wire_synapse(nodes, edges, links, name, syn.source, shapes[syn.source], syn.upsample, target)
    host = {"head_weight": net.host.head_weight.astype(np.float32),
            "head_bias": net.host.head_bias.astype(np.float32),
            "readout_bias": r.bias.astype(np.float32), "membrane_decay": float(net.host.membrane_decay),
            **{k: v.astype(np.float32) for k, v in net.host.tail.items()}}
    if r.temb is not None:
        host["readout_temb"] = r.temb.astype(np.float32)
    metadata = {
        "format": FORMAT, "version": VERSION, "model_config": json.dumps(net.model_config),
        "snn_steps": net.snn_steps, "diffusion_steps": net.diffusion_steps,
        "threshold_factor": net.threshold_factor,
        "neuron": json.dumps({"du": IF_DU, "dv": IF_DV, "act_shift": ACT_SHIFT, "vth_shift": VTH_SHIFT,
                              "state_bits": STATE_BITS}),
        "host_input_max": HOST_INPUT_MAX, "partition": json.dumps(net.partition()),
        "order": json.dumps([p.name for p in net.populations]), "links": json.dumps(links), "host": host,
    }
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


def nir_to_chip(graph: nir.NIRGraph) -> ChipNetwork:
    """The ChipNetwork a graph of `chip_to_nir` holds (the inverse of `chip_to_nir`, ranges checked)."""
    meta = graph.metadata
    if metadata_value(meta, "format", "graph") != FORMAT or int(metadata_value(meta, "version", "graph")) != VERSION:
        raise ChipNirError(f"not an {FORMAT} graph of version {VERSION}")
    nodes = graph.nodes
    links = {link["to"]: link["from"] for link in json.loads(metadata_value(meta, "links", "graph"))}
    feeds = {}
    for a, b in graph.edges:
        feeds.setdefault(b, []).append(a)
    pops = []
    for name in json.loads(metadata_value(meta, "order", "graph")):
        node = nodes.get(name)
        if not isinstance(node, nir.IF):
            raise ChipNirError(f"population {name!r}: no IF node of that name")
        md = node.metadata
        pops.append(ChipPopulation(name, tuple(int(v) for v in node.v_threshold.shape), float(metadata_value(md, "scale", name)),
                                   int(metadata_value(md, "vth", name)), np.asarray(metadata_value(md, "bias_mant", name), np.int16),
                                   int(metadata_value(md, "bias_exp", name)), int(metadata_value(md, "depth", name)),
                                   bool(metadata_value(md, "host_input", name))))
    syns = []
    for name in sorted((n for n, node in nodes.items() if isinstance(node, nir.Conv2d)), key=lambda n: int(n[3:])):
        node, md = nodes[name], nodes[name].metadata
        port = feeds[name][0]  # a population, or the Input port of an up-sampling link
        source = feeds[links[port]][0] if port in links else port
        target = next(b for a, b in graph.edges if a == name)
        exp, offset, channels = (int(metadata_value(md, k, name)) for k in ("weight_exp", "out_offset", "channels"))
        weight = np.asarray(node.weight, np.float64)[offset:offset + channels]
        syns.append(ChipSynapse(source, READOUT if target == "readout" else target,
                                np.round(weight / 2.0 ** exp).astype(np.int8), exp,
                                int(np.asarray(node.stride).flat[0]), int(np.asarray(node.padding).flat[0]),
                                int(metadata_value(md, "upsample", name)), offset, int(metadata_value(md, "delay", name))))
    host = metadata_value(meta, "host", "graph")
    scale = np.asarray(nodes["readout"].scale)
    temb = host.get("readout_temb")
    readout = ChipReadout(tuple(int(v) for v in scale.shape), float(scale.flat[0]),
                          np.asarray(host["readout_bias"], np.float32),
                          None if temb is None else np.asarray(temb, np.float32),
                          int(metadata_value(nodes["readout"].metadata, "depth", "readout")))
    tail = {k: np.asarray(v, np.float32) for k, v in host.items()
            if k not in ("head_weight", "head_bias", "readout_bias", "readout_temb", "membrane_decay")}
    net = ChipNetwork(json.loads(metadata_value(meta, "model_config", "graph")), int(metadata_value(meta, "snn_steps", "graph")),
                      int(metadata_value(meta, "diffusion_steps", "graph")), tuple(pops), tuple(syns), readout,
                      ChipHost(np.asarray(host["head_weight"], np.float32), np.asarray(host["head_bias"], np.float32),
                               tail, float(host["membrane_decay"])),
                      float(metadata_value(meta, "threshold_factor", "graph")))
    check_ranges(net)
    return net


def read_chip_nir(path: str) -> ChipNetwork:
    """The network of a chip file, its digest checked."""
    graph = read_sealed(path, FORMAT, ChipNirError)
    try:
        return nir_to_chip(graph)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, StopIteration) as err:
        raise ChipNirError(f"{path}: {err}") from None
