"""Read a compiled chip network from its NIR file (format "sddpm-chip-nir", see `export/nir_chip.py`).

The reader trusts nothing it can check: every node must be a NIR primitive it knows, the IF
parameters must say what the integer metadata says (r = 64, v_threshold = vth << 6, v_reset = 0), every
weight must be an integer mantissa << exponent inside the 8-bit range and zero outside the synapse's
channels, every edge must chain, and each up-sampling port pair must be linked. A mismatch is a
`ChipFileError` that names the node.

This module must not import `sddpm` or `export`: the simulator and the code it checks cannot share a bug.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import nir
import numpy as np
import torch

from .errors import SimulatorError
from .fixed_point import ACT_SHIFT, IF_DU, IF_DV, VTH_SHIFT

FORMAT = "sddpm-chip-nir"
VERSIONS = (1,)
READOUT = "readout"
INPUT = "input"
OUTPUT = "output"
WEIGHT_MANT_MAX = 127  # 8-bit signed synaptic mantissa, symmetric
V_PER_A = 1 << ACT_SHIFT


class ChipFileError(SimulatorError, ValueError):
    """The file is not a readable chip network of a version this simulator knows."""


@dataclass(frozen=True)
class Population:
    name: str
    shape: tuple[int, int, int]
    scale: float
    vth: int
    bias_mant: torch.Tensor  # int64 [rows, C]
    bias_exp: int
    depth: int
    host_input: bool


@dataclass(frozen=True)
class Synapse:
    source: str
    target: str
    weight: torch.Tensor  # int64 [C_out, C_in, k, k]: mantissa << weight_exp
    stride: int
    padding: int
    upsample: int
    out_offset: int
    delay: int

    @property
    def peak(self) -> int:
        """Largest |output| any 0/1 input can produce: the largest sum of |w| into one output."""
        return int(self.weight.abs().flatten(1).sum(1).max())


@dataclass(frozen=True)
class ChipFile:
    populations: tuple[Population, ...]  # dependency order
    synapses: tuple[Synapse, ...]
    readout: dict  # shape, scale, depth, bias, temb
    host: dict  # float32 tensors + membrane_decay
    snn_steps: int
    diffusion_steps: int
    meta: dict  # model_config, threshold_factor, host_input_max


def read_chip_file(path: str) -> ChipFile:
    try:
        graph = nir.read(path)
    except (OSError, KeyError, ValueError, TypeError) as err:  # h5py's, a missing field's, the type checks'
        raise ChipFileError(f"{path}: not a readable NIR file ({type(err).__name__}: {err})") from None
    try:
        return _from_graph(graph)
    except ChipFileError as err:
        raise ChipFileError(f"{path}: {err}") from None
    except (KeyError, ValueError, TypeError) as err:
        raise ChipFileError(f"{path}: malformed chip network ({type(err).__name__}: {err})") from None


def _scalar(value):
    """Numbers and strings come back from HDF5 as numpy scalars or 0-d arrays."""
    return value.item() if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) \
        else value


def _field(node_name: str, metadata: dict, key: str):
    if key not in metadata:
        raise ChipFileError(f"node {node_name!r}: metadata lacks {key!r}")
    return _scalar(metadata[key])


def _uniform(node_name: str, what: str, array: np.ndarray, value: float) -> None:
    if not np.all(np.asarray(array) == value):
        raise ChipFileError(f"node {node_name!r}: {what} must be {value} everywhere to match the integer metadata")


def _from_graph(graph: nir.NIRGraph) -> ChipFile:
    meta = graph.metadata
    if _scalar(meta.get("format")) != FORMAT:
        raise ChipFileError(f"not an {FORMAT} file (format {_scalar(meta.get('format'))!r}): a NIR graph from "
                            f"another tool holds no chip integers")
    if int(_field("graph", meta, "version")) not in VERSIONS:
        raise ChipFileError(f"{FORMAT} version {_scalar(meta['version'])!r} is not supported (this reader: {VERSIONS})")
    neuron = json.loads(_field("graph", meta, "neuron"))
    if (neuron["du"], neuron["dv"]) != (IF_DU, IF_DV):
        raise ChipFileError(f"neuron du={neuron['du']}, dv={neuron['dv']}: this simulator runs IF "
                            f"(du={IF_DU}, dv={IF_DV})")
    nodes = graph.nodes
    for name, node in nodes.items():
        if not isinstance(node, nir.Input | nir.Output | nir.IF | nir.Conv2d | nir.Scale):
            raise ChipFileError(f"node {name!r}: NIR type {type(node).__name__} has no place in a chip network")
    sources: dict[str, list[str]] = {}
    targets: dict[str, list[str]] = {}
    for a, b in graph.edges:
        targets.setdefault(a, []).append(b)
        sources.setdefault(b, []).append(a)
    links = {link["to"]: link for link in json.loads(_field("graph", meta, "links"))}

    order = json.loads(_field("graph", meta, "order"))
    pops = []
    for name in order:
        node = nodes.get(name)
        if not isinstance(node, nir.IF):
            raise ChipFileError(f"population {name!r}: no IF node of that name")
        md = node.metadata
        vth = int(_field(name, md, "vth"))
        _uniform(name, "r", node.r, V_PER_A)
        _uniform(name, "v_threshold", node.v_threshold, vth << VTH_SHIFT)
        _uniform(name, "v_reset", node.v_reset, 0)
        pops.append(Population(name, tuple(int(v) for v in node.v_threshold.shape), float(_field(name, md, "scale")),
                               vth, torch.from_numpy(np.asarray(_field(name, md, "bias_mant")).astype(np.int64)),
                               int(_field(name, md, "bias_exp")), int(_field(name, md, "depth")),
                               bool(_field(name, md, "host_input"))))
    if {n for n, node in nodes.items() if isinstance(node, nir.IF)} != set(order):
        raise ChipFileError("the IF nodes and the graph's population order differ")
    shapes = {p.name: p.shape for p in pops}

    readout = nodes.get(READOUT)
    if not isinstance(readout, nir.Scale) or targets.get(READOUT) != [OUTPUT]:
        raise ChipFileError(f"node {READOUT!r}: expected a Scale feeding {OUTPUT!r}")
    if INPUT not in sources.get(order[0], []):
        raise ChipFileError(f"the host input must feed the first population {order[0]!r}")

    syns = []
    for name in sorted(n for n, node in nodes.items() if isinstance(node, nir.Conv2d)):
        syns.append(_synapse(name, nodes[name], sources.get(name, []), targets.get(name, []), links, sources,
                             nodes, shapes))
    host_meta = _field("graph", meta, "host")
    host = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in host_meta.items()
            if k not in ("membrane_decay", "readout_bias", "readout_temb")}
    host["membrane_decay"] = float(_scalar(host_meta["membrane_decay"]))
    temb = host_meta.get("readout_temb")
    scale = np.asarray(readout.scale)
    _uniform(READOUT, "scale", scale, float(scale.flat[0]))
    readout_info = {"shape": tuple(int(v) for v in scale.shape), "scale": float(scale.flat[0]),
                    "depth": int(_field(READOUT, readout.metadata, "depth")),
                    "bias": torch.from_numpy(np.asarray(host_meta["readout_bias"], dtype=np.float32)),
                    "temb": None if temb is None else torch.from_numpy(np.asarray(temb, dtype=np.float32))}
    return ChipFile(tuple(pops), tuple(syns), readout_info, host, int(_field("graph", meta, "snn_steps")),
                    int(_field("graph", meta, "diffusion_steps")),
                    {"model_config": json.loads(_field("graph", meta, "model_config")),
                     "threshold_factor": float(_field("graph", meta, "threshold_factor")),
                     "host_input_max": int(_field("graph", meta, "host_input_max"))})


def _synapse(name, node: nir.Conv2d, srcs, dsts, links, sources, nodes, shapes) -> Synapse:
    if len(srcs) != 1 or len(dsts) != 1:
        raise ChipFileError(f"synapse {name!r}: needs one source and one target, has {srcs} -> {dsts}")
    source, target = srcs[0], dsts[0]
    md = node.metadata
    upsample = int(_field(name, md, "upsample"))
    if upsample != 1:  # source is an Input port joined by a link to the population's Output port
        link = links.get(source)
        if link is None or link["op"] != "nearest_upsample" or int(link["factor"]) != upsample:
            raise ChipFileError(f"synapse {name!r}: reads {source!r}, which no nearest-up-sampling link "
                                f"x{upsample} feeds")
        port = sources.get(link["from"], [])
        if len(port) != 1 or not isinstance(nodes.get(link["from"]), nir.Output):
            raise ChipFileError(f"link {link['from']!r} -> {source!r}: the Output port is fed by {port}")
        source = port[0]
    if source not in shapes:
        raise ChipFileError(f"synapse {name!r}: source {source!r} is not a population")
    if target != READOUT and target not in shapes:
        raise ChipFileError(f"synapse {name!r}: target {target!r} is not a population or the readout")
    stride, padding, dilation = (np.broadcast_to(np.asarray(v), (2,)) for v in (node.stride, node.padding,
                                                                                 node.dilation))
    if stride[0] != stride[1] or padding[0] != padding[1] or np.any(dilation != 1) or int(node.groups) != 1:
        raise ChipFileError(f"synapse {name!r}: only square stride/padding, dilation 1 and groups 1 map to the chip")
    c_in = shapes[source][0]
    weight = np.asarray(node.weight)
    if weight.shape[1] != c_in or np.any(np.asarray(node.bias) != 0):
        raise ChipFileError(f"synapse {name!r}: weight {weight.shape} does not read {c_in} channels, or has a bias")
    exp, offset, channels = (int(_field(name, md, k)) for k in ("weight_exp", "out_offset", "channels"))
    if exp < 0 or not 0 <= offset <= offset + channels <= weight.shape[0]:
        raise ChipFileError(f"synapse {name!r}: weight_exp {exp} / channels [{offset}, {offset + channels}) invalid")
    outside = np.concatenate([weight[:offset], weight[offset + channels:]])
    if np.any(outside != 0):
        raise ChipFileError(f"synapse {name!r}: non-zero weights outside its channels [{offset}, {offset + channels})")
    w = weight[offset:offset + channels].astype(np.float64)
    mant = np.round(w / 2.0 ** exp)
    if np.any(mant * 2.0 ** exp != w) or np.abs(mant).max(initial=0) > WEIGHT_MANT_MAX:
        raise ChipFileError(f"synapse {name!r}: weights are not 8-bit mantissas << {exp}")
    return Synapse(source, target, torch.from_numpy(mant.astype(np.int64)) << exp, int(stride[0]), int(padding[0]),
                   upsample, offset, int(_field(name, md, "delay")))
