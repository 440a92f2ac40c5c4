"""Read a compiled chip network from its NIR file (format "sddpm-chip-nir", see `export/nir_chip.py`), whichever
front end wrote it (`sddpm compile` or `sddpm import-nir`).

The reader trusts nothing it can check: every node must be a NIR primitive it knows, the neuron
parameters must say what the integer metadata says (IF: r = 64; LIF: tau = 4096 / dv, r = 64 tau; CubaLIF:
tau_syn = 4096 / (du + 1), w_in = 64 tau_syn, tau_mem = 4096 / dv, r = tau_mem; all with
v_threshold = vth << 6, v_reset = 0), every
weight must be an integer mantissa << exponent inside the 8-bit range and zero outside the synapse's
channels, every edge must chain, and each up-sampling port pair must be linked. Every range the simulator
relies on is checked: 0 < vth within 17 bits, bias mantissas within 13 bits of one row or one per diffusion
step, bias exponents within 3 bits, integer depths, delays and exponents, one spike's weight below 2^17
a-units, finite scales and host weights. A mismatch is a `ChipFileError` that names the node; the
populations, synapses and host weights are each checked, and every problem among them is listed.

This module must not import `sddpm` or `export`: the simulator and the code it checks cannot share a bug.
"""
from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass

import h5py
import nir
import numpy as np
import torch

from durableio import NIR_READ_ERRORS

from .errors import SimulatorError
from .fixed_point import ACT_SHIFT, DECAY_UNITY, IF_DU, IF_DV, STATE_MAX, VTH_SHIFT

FORMAT = "sddpm-chip-nir"
VERSIONS = (1, 2)  # 1: SDDPM's IF conv networks; 2: any LIF, dense synapses, spike inputs and outputs
READOUT = "readout"
INPUT = "input"
OUTPUT = "output"
WEIGHT_MANT_MAX = 127  # 8-bit signed synaptic mantissa, symmetric
V_PER_A = 1 << ACT_SHIFT
# The hardware ranges this reader relies on (docs/lava-fixed-point.md section 2.1), declared here again: the
# simulator shares no code with the compiler whose files it checks.
VTH_BITS = 17  # threshold mantissa
VTH_MAX = (1 << VTH_BITS) - 1
BIAS_MANT_BITS = 13  # signed bias mantissa (stored in int16, whose wrap a larger value would hit)
BIAS_MANT_MAX = (1 << (BIAS_MANT_BITS - 1)) - 1  # +-4095
BIAS_EXP_MAX = 7  # 3-bit bias exponent
DU_RANGE = (-1, DECAY_UNITY - 1)  # u is multiplied by 4096 - (du + 1): du = -1 keeps it, 4095 forgets it
DV_RANGE = (0, DECAY_UNITY)  # v is multiplied by 4096 - dv
NEURON_TYPES = (nir.IF, nir.LIF, nir.CubaLIF)
SPIKE_LIMIT = STATE_MAX >> ACT_SHIFT  # one spike's weight below 2^17 a-units keeps a << 6 inside u's 24 bits
DIGEST_ATTR = "sddpm_sha256"  # the writer's digest of the file, an attribute of its root
# The host stages the simulator runs (`network.ChipSimulator`); readout_temb is optional.
HOST_KEYS = ("head_weight", "head_bias", "readout_bias", "membrane_decay", "tail_bn_scale", "tail_bn_shift",
             "tail_conv_weight", "tail_conv_bias", "time_conv_weight", "time_conv_bias", "last_bn_scale",
             "last_bn_shift")


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
    du: int = IF_DU
    dv: int = IF_DV
    voltage_out: bool = False  # a membrane readout: its v is the output

    @property
    def is_if(self) -> bool:
        return (self.du, self.dv) == (IF_DU, IF_DV)


@dataclass(frozen=True)
class Synapse:
    source: str
    target: str
    weight: torch.Tensor  # int64 mantissa << weight_exp: conv [C_out, C_in / groups, k, k] or dense [N_out, N_in]
    stride: int | tuple[int, int]  # (H, W) where they differ
    padding: int | tuple[int, int]
    upsample: int
    out_offset: int
    delay: int
    weight_exp: int  # weight >> weight_exp is the 8-bit mantissa (|m| <= WEIGHT_MANT_MAX)
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    flatten: bool = False  # a dense synapse reading its source flattened in C order

    @property
    def dense(self) -> bool:
        return self.weight.dim() == 2

    @property
    def peak(self) -> int:
        """Largest |output| any 0/1 input can produce: the largest sum of |w| into one output."""
        return int(self.weight.abs().flatten(1).sum(1).max())


@dataclass(frozen=True)
class ChipFile:
    populations: tuple[Population, ...]  # dependency order
    synapses: tuple[Synapse, ...]
    readout: dict | None  # shape, scale, depth, bias, temb (a diffusion network's)
    host: dict | None  # float32 tensors + membrane_decay (a diffusion network's)
    snn_steps: int | None  # the window T of a pipeline network; None: open-ended
    diffusion_steps: int
    meta: dict  # model_config, threshold_factor, host_input_max
    inputs: dict[str, tuple[int, ...]]  # spike inputs: name -> shape
    outputs: tuple[tuple[str, str], ...]  # (output name, population)


def _digest(h5: h5py.File) -> str:
    """sha256 over every group's and dataset's path and every dataset's dtype, shape and values, in HDF5's
    name order: the writer's `export.nir_chip.file_digest`, written again here (no shared code)."""
    digest = hashlib.sha256()

    def visit(name: str, obj) -> None:
        digest.update(name.encode() + b"\0")
        if isinstance(obj, h5py.Dataset):
            value = np.asarray(obj[()])
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(repr(value.tolist()).encode() if value.dtype.kind == "O" else value.tobytes())
    h5.visititems(visit)
    return digest.hexdigest()


def seal_problem(path: str) -> str | None:
    """Why the file's contents are not the ones its writer sealed, or None."""
    with h5py.File(path, "r") as h5:
        stored = h5.attrs.get(DIGEST_ATTR)
        actual = _digest(h5)
    stored = stored.decode() if isinstance(stored, bytes) else stored
    if stored is None:
        return "the file carries no digest: write it again with `sddpm compile`"
    if stored != actual:
        return "the file's contents differ from the digest written with them: it was damaged or edited"
    return None


NIR_NODE_TYPES = {name for name, value in vars(nir).items()
                  if isinstance(value, type) and issubclass(value, nir.NIRNode) and value is not nir.NIRNode}


def _unknown_types(path: str) -> list[str]:
    """The nodes whose type NIR does not know (nir.read's AssertionError names none): written again here, as
    `export.nir_chip.unknown_node_types` is, so that the simulator shares no code with the exporter."""
    found = []
    try:
        with h5py.File(path, "r") as h5:
            nodes = h5.get("node/nodes")
            for name, node in (nodes.items() if isinstance(nodes, h5py.Group) else ()):
                kind = node.get("type") if isinstance(node, h5py.Group) else None
                kind = kind[()] if isinstance(kind, h5py.Dataset) else None
                kind = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else kind
                if kind not in NIR_NODE_TYPES:  # a chip file has no nested graphs
                    found.append(f"node {name!r}: type {kind!r} is not a NIR node type")
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):  # not HDF5: nir.read's own error says so
        return []
    return found


def read_chip_file(path: str) -> ChipFile:
    try:
        unsealed = seal_problem(path)
        graph = nir.read(path)
    except NIR_READ_ERRORS as err:  # h5py's, nir's constructors' and type checks': many kinds
        unknown = _unknown_types(path)
        if unknown:
            raise ChipFileError(f"{path}: " + "; ".join(unknown)) from None
        raise ChipFileError(f"{path}: not a readable NIR file ({type(err).__name__}: {err})") from None
    try:
        return _from_graph(graph, unsealed)
    except ChipFileError as err:
        raise ChipFileError(f"{path}: {err}") from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:  # a field of the wrong kind
        raise ChipFileError(f"{path}: malformed chip network ({type(err).__name__}: {err})") from None


def scalar(value):
    """Numbers and strings come back from HDF5 as numpy scalars or 0-d arrays."""
    return value.item() if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) \
        else value


def field(node_name: str, metadata: dict | None, key: str, hint: str = ""):
    """The metadata value `key` of a node, as a Python value; missing is an error naming node and key."""
    if not metadata or key not in metadata:
        raise ChipFileError(f"node {node_name!r}: metadata lacks {key!r}{hint}")
    return scalar(metadata[key])


def _one_or_pair(name: str, node, key: str) -> int | tuple[int, int]:
    """A conv's stride, padding or dilation: one int where H and W agree, else (H, W); integers >= 0 only."""
    try:
        values = np.broadcast_to(np.asarray(getattr(node, key)), (2,))
        h, w = (operator.index(v.item()) for v in values)
    except (TypeError, ValueError):
        raise ChipFileError(f"synapse {name!r}: {key} must be one or two integers") from None
    if min(h, w) < 0:
        raise ChipFileError(f"synapse {name!r}: {key} ({h}, {w}) < 0")
    return h if h == w else (h, w)


def _int_field(node_name: str, metadata: dict, key: str, low: int, high: int | None = None) -> int:
    """An integer metadata field inside [low, high]: a float or out-of-range value is an error, not a cast."""
    value = field(node_name, metadata, key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low or \
            (high is not None and value > high):
        raise ChipFileError(f"node {node_name!r}: {key} = {value!r} must be an integer in [{low}, "
                            f"{'inf' if high is None else high}]")
    return int(value)


def _positive(node_name: str, metadata: dict, key: str) -> float:
    raw = field(node_name, metadata, key)
    if np.ndim(raw) != 0:
        raise ChipFileError(f"node {node_name!r}: {key} must be one number, is an array of shape {np.shape(raw)}")
    value = float(raw)
    if not (np.isfinite(value) and value > 0):
        raise ChipFileError(f"node {node_name!r}: {key} = {value} must be finite and > 0")
    return value


def _bias_mant(name: str, md: dict, channels: int, diffusion_steps: int) -> torch.Tensor:
    """The [rows, C] bias mantissas: integers within 13 bits, one row or one per diffusion step."""
    mant = np.asarray(field(name, md, "bias_mant"))
    if mant.dtype.kind not in "iu" or mant.ndim != 2 or mant.shape[1] != channels or \
            mant.shape[0] not in (1, diffusion_steps):
        raise ChipFileError(f"node {name!r}: bias_mant must be integers of shape [1 or {diffusion_steps}, "
                            f"{channels}], is {mant.dtype} {mant.shape}")
    if np.abs(mant.astype(np.int64)).max(initial=0) > BIAS_MANT_MAX:
        raise ChipFileError(f"node {name!r}: bias_mant outside +-{BIAS_MANT_MAX} ({BIAS_MANT_BITS} bits)")
    return torch.from_numpy(mant.astype(np.int64))


def _uniform(node_name: str, what: str, array: np.ndarray, value: float) -> None:
    if not np.all(np.asarray(array) == value):
        raise ChipFileError(f"node {node_name!r}: {what} must be {value} everywhere to match the integer metadata")


def _from_graph(graph: nir.NIRGraph, unsealed: str | None) -> ChipFile:
    meta = graph.metadata
    version = _check_header(meta, unsealed)
    nodes = graph.nodes
    for name, node in nodes.items():
        if not isinstance(node, (nir.Input, nir.Output, nir.Conv2d, nir.Affine, nir.Flatten, nir.Scale) + NEURON_TYPES):
            raise ChipFileError(f"node {name!r}: NIR type {type(node).__name__} has no place in a chip network")
    sources: dict[str, list[str]] = {}
    targets: dict[str, list[str]] = {}
    for a, b in graph.edges:
        targets.setdefault(a, []).append(b)
        sources.setdefault(b, []).append(a)
    links = {link["to"]: link for link in json.loads(field("graph", meta, "links"))}

    order = json.loads(field("graph", meta, "order"))
    if not isinstance(order, list) or not order or len(set(order)) != len(order):
        raise ChipFileError(f"the population order must be a non-empty list of distinct names, is {order!r}")
    diffusion_steps = _int_field("graph", meta, "diffusion_steps", 1)
    problems: list[str] = []  # of every population, synapse and host stage, listed together
    pops = [p for p in (checked(problems, _population, name, nodes, diffusion_steps, version) for name in order) if p]
    if {n for n, node in nodes.items() if isinstance(node, NEURON_TYPES)} != set(order):
        raise ChipFileError("the neuron nodes and the graph's population order differ")
    spike_inputs = json.loads(field("graph", meta, "spike_inputs")) if version > 1 else []
    inputs = {}
    for name in spike_inputs:
        if not isinstance(nodes.get(name), nir.Input) or sources.get(name):
            raise ChipFileError(f"spike input {name!r}: no Input node of that name, or one with inputs")
        inputs[name] = tuple(int(v) for v in np.asarray(nodes[name].output_type["output"]).ravel())
    shapes = {n: tuple(int(v) for v in np.shape(nodes[n].v_threshold)) for n in order} | inputs
    outputs = tuple((str(a), str(b)) for a, b in json.loads(field("graph", meta, "outputs"))) if version > 1 else ()
    for name, pop in outputs:
        if not isinstance(nodes.get(name), nir.Output) or sources.get(name) != [pop] or pop not in order:
            raise ChipFileError(f"output {name!r}: no Output node fed by population {pop!r}")

    diffusion = "host" in meta
    readout = nodes.get(READOUT)
    if diffusion:
        if not isinstance(readout, nir.Scale) or targets.get(READOUT) != [OUTPUT]:
            raise ChipFileError(f"node {READOUT!r}: expected a Scale feeding {OUTPUT!r}")
        if INPUT not in sources.get(order[0], []):
            raise ChipFileError(f"the host input must feed the first population {order[0]!r}")
    elif readout is not None or any(p.host_input for p in pops):
        raise ChipFileError("a readout or a host current input needs the host stages of a diffusion network")

    syns = [checked(problems, _synapse, name, nodes[name], sources.get(name, []), targets.get(name, []), links,
                     sources, nodes, shapes)
            for name in sorted(n for n, node in nodes.items() if isinstance(node, nir.Conv2d | nir.Affine))]
    snn_steps = _int_field("graph", meta, "snn_steps", 1) if "snn_steps" in meta else None
    common = dict(inputs=inputs, outputs=outputs, snn_steps=snn_steps, diffusion_steps=diffusion_steps)
    if not diffusion:
        if problems:
            raise ChipFileError((f"{len(problems)} problems: " if len(problems) > 1 else "") + "; ".join(problems))
        return ChipFile(tuple(pops), tuple(syns), None, None,
                        meta={**_file_meta(meta), "source": json.loads(field("graph", meta, "source"))}, **common)
    host_meta = field("graph", meta, "host")
    problems += _host_problems(host_meta)
    if problems:
        raise ChipFileError((f"{len(problems)} problems: " if len(problems) > 1 else "") + "; ".join(problems))
    if snn_steps is None:
        raise ChipFileError("a diffusion network needs its window T (snn_steps)")
    host = _host(host_meta)
    readout_info = _readout(readout, host_meta)
    _check_host(host, readout_info, pops[0].shape[0], diffusion_steps)
    return ChipFile(tuple(pops), tuple(syns), readout_info, host,
                    meta={**_file_meta(meta), "host_input_max": _int_field("graph", meta, "host_input_max", 1,
                                                                          SPIKE_LIMIT - 1)}, **common)


def _file_meta(meta: dict) -> dict:
    """What every chip file's graph metadata says of the network as a whole."""
    return {"model_config": json.loads(field("graph", meta, "model_config")),
            "threshold_factor": _positive("graph", meta, "threshold_factor")}


def _check_header(meta: dict, unsealed: str | None) -> int:
    """The graph's format, version, seal and (version 1) neuron model, what must hold before any node is read;
    returns the version."""
    if scalar(meta.get("format")) == "sddpm-net-nir":
        raise ChipFileError("a sddpm-net-nir file of an earlier release: its format is retired; compile the source "
                            "NIR graph again with `sddpm import-nir`")
    if scalar(meta.get("format")) != FORMAT:
        raise ChipFileError(f"not an {FORMAT} file (format {scalar(meta.get('format'))!r}): a NIR graph from "
                            f"another tool holds no chip integers")
    if int(field("graph", meta, "version")) not in VERSIONS:
        raise ChipFileError(f"{FORMAT} version {scalar(meta['version'])!r} is not supported (this reader: {VERSIONS})")
    if unsealed is not None:  # after the format: another tool's file is named as such
        raise ChipFileError(unsealed)
    version = int(field("graph", meta, "version"))
    if version == 1:  # one neuron for the whole network, which had to be IF
        neuron = json.loads(field("graph", meta, "neuron"))
        if (neuron["du"], neuron["dv"]) != (IF_DU, IF_DV):
            raise ChipFileError(f"neuron du={neuron['du']}, dv={neuron['dv']}: a version 1 file holds IF "
                                f"(du={IF_DU}, dv={IF_DV})")
    return version


def _host_problems(host_meta: dict) -> list[str]:
    problems = []
    missing = [k for k in HOST_KEYS if k not in host_meta]
    if missing:
        problems.append(f"host: lacks {missing}")
    for key, value in host_meta.items():  # the host's weights run in float: a NaN would spread silently
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            problems.append(f"host {key!r}: holds NaN or inf")
    return problems


def _host(host_meta: dict) -> dict:
    """The host stages' float32 tensors and the membrane decay (the readout's fields are `_readout`'s)."""
    host = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in host_meta.items()
            if k not in ("membrane_decay", "readout_bias", "readout_temb")}
    if np.ndim(host_meta["membrane_decay"]) != 0:
        raise ChipFileError("host: membrane_decay must be one number")
    host["membrane_decay"] = float(scalar(host_meta["membrane_decay"]))
    return host


def _readout(readout: nir.Scale, host_meta: dict) -> dict:
    temb = host_meta.get("readout_temb")
    scale = np.asarray(readout.scale, dtype=np.float64)
    if scale.size == 0 or not np.all(np.isfinite(scale)) or float(scale.flat[0]) == 0:
        raise ChipFileError(f"node {READOUT!r}: scale must be finite and non-zero")
    _uniform(READOUT, "scale", scale, float(scale.flat[0]))
    readout_info = {"shape": tuple(int(v) for v in scale.shape), "scale": float(scale.flat[0]),
                    "depth": _int_field(READOUT, readout.metadata, "depth", 0),
                    "bias": torch.from_numpy(np.asarray(host_meta["readout_bias"], dtype=np.float32)),
                    "temb": None if temb is None else torch.from_numpy(np.asarray(temb, dtype=np.float32))}
    return readout_info


def _check_host(host: dict, readout: dict, first_channels: int, diffusion_steps: int) -> None:
    """The host stages' shapes, as `network.ChipSimulator` runs them: the head conv (3x3, into the first
    population), the readout's bias (and time-embedding table), the tail's BN, conv and time conv."""
    head = host["head_weight"]
    img, out = (int(head.shape[1]) if head.ndim == 4 else 0), readout["shape"][0]
    expected = {"head_weight": (first_channels, img, 3, 3), "head_bias": (first_channels,), "tail_bn_scale": (out,),
                "tail_bn_shift": (out,), "tail_conv_weight": (img, out, 3, 3), "tail_conv_bias": (img,),
                "time_conv_weight": (img, img, 3, 3), "time_conv_bias": (img,), "last_bn_scale": (img,),
                "last_bn_shift": (img,)}
    shapes = {k: tuple(host[k].shape) for k in expected}
    shapes.update({"readout_bias": tuple(readout["bias"].shape)})
    expected["readout_bias"] = (out,)
    if readout["temb"] is not None:
        shapes["readout_temb"], expected["readout_temb"] = tuple(readout["temb"].shape), (diffusion_steps, out)
    wrong = [f"{k} {shapes[k]} (expected {v})" for k, v in expected.items() if shapes[k] != v]
    if wrong or img < 1:
        raise ChipFileError(f"host: shapes do not chain: {', '.join(wrong) or 'no image channels'}")
    if not 0 <= host["membrane_decay"] <= 1:
        raise ChipFileError(f"host: membrane_decay {host['membrane_decay']} outside [0, 1]")


def checked(problems: list[str], check, *args):
    """check(*args), or None with its ChipFileError recorded in problems."""
    try:
        return check(*args)
    except ChipFileError as err:
        problems.append(str(err))
        return None


def _neuron_parameters(name: str, node, du: int, dv: int, vth: int) -> None:
    """The NIR node's parameters say what its integers say (see the module docstring), computed here anew."""
    tau_mem = DECAY_UNITY / dv if dv else np.inf
    tau_syn = DECAY_UNITY / (du + 1) if du + 1 else np.inf
    if (du, dv) == (IF_DU, IF_DV):
        expected = {nir.IF: {"r": V_PER_A}}
    elif du == IF_DU:
        expected = {nir.LIF: {"tau": tau_mem, "r": V_PER_A * tau_mem, "v_leak": 0}}
    else:
        expected = {nir.CubaLIF: {"tau_syn": tau_syn, "tau_mem": tau_mem, "r": tau_mem, "v_leak": 0,
                                  "w_in": V_PER_A * tau_syn}}
    kind, values = next(iter(expected.items()))
    if type(node) is not kind:
        raise ChipFileError(f"population {name!r}: du = {du}, dv = {dv} is a NIR {kind.__name__}, the node is a "
                            f"{type(node).__name__}")
    for what, value in values.items():
        _uniform(name, what, getattr(node, what), value)
    _uniform(name, "v_threshold", node.v_threshold, vth << VTH_SHIFT)
    _uniform(name, "v_reset", node.v_reset, 0)


def _population(name, nodes, diffusion_steps: int, version: int) -> Population:
    node = nodes.get(name) if isinstance(name, str) else None
    if not isinstance(node, NEURON_TYPES):
        raise ChipFileError(f"population {name!r}: no IF, LIF or CubaLIF node of that name")
    md = node.metadata
    vth = _int_field(name, md, "vth", 1, VTH_MAX)  # > 0: a threshold of 0 fires on any positive input
    shape = tuple(int(v) for v in np.shape(node.v_threshold))
    if (version == 1 and len(shape) != 3) or not shape or min(shape) < 1:
        raise ChipFileError(f"population {name!r}: v_threshold has shape {shape}, not (C, H, W) or (N,)")
    du, dv = (IF_DU, IF_DV) if version == 1 else (_int_field(name, md, "du", *DU_RANGE),
                                                  _int_field(name, md, "dv", *DV_RANGE))
    _neuron_parameters(name, node, du, dv, vth)
    voltage_out = _int_field(name, md, "voltage_out", 0, 1) if "voltage_out" in md else 0
    if voltage_out and vth != VTH_MAX:
        raise ChipFileError(f"population {name!r}: a voltage readout's vth must be {VTH_MAX}, is {vth}")
    return Population(name, shape, _positive(name, md, "scale"), vth, _bias_mant(name, md, shape[0], diffusion_steps),
                      _int_field(name, md, "bias_exp", 0, BIAS_EXP_MAX), _int_field(name, md, "depth", 0),
                      bool(field(name, md, "host_input")), du, dv, bool(voltage_out))


def _synapse(name, node, srcs, dsts, links, sources, nodes, shapes) -> Synapse:
    if len(srcs) != 1 or len(dsts) != 1:
        raise ChipFileError(f"synapse {name!r}: needs one source and one target, has {srcs} -> {dsts}")
    source, target = srcs[0], dsts[0]
    md = node.metadata
    dense = isinstance(node, nir.Affine)
    upsample = _int_field(name, md, "upsample", 1)
    flatten = isinstance(nodes.get(source), nir.Flatten)
    if flatten:  # the Flatten reads the source: C order over everything but the batch
        flat = nodes[source]
        if not dense or len(sources.get(source, [])) != 1 or \
                (int(np.asarray(flat.start_dim)), int(np.asarray(flat.end_dim))) != (0, -1):
            raise ChipFileError(f"synapse {name!r}: reads the Flatten {source!r}, which must flatten one source "
                                f"whole (start_dim 0, end_dim -1) into a dense synapse")
        source = sources[source][0]
    if upsample != 1:  # source is an Input port joined by a link to the population's Output port
        link = links.get(source)
        if link is None or link["op"] != "nearest_upsample" or int(link["factor"]) != upsample or dense:
            raise ChipFileError(f"synapse {name!r}: reads {source!r}, which no nearest-up-sampling link "
                                f"x{upsample} feeds")
        port = sources.get(link["from"], [])
        if len(port) != 1 or not isinstance(nodes.get(link["from"]), nir.Output):
            raise ChipFileError(f"link {link['from']!r} -> {source!r}: the Output port is fed by {port}")
        source = port[0]
    if source not in shapes:
        raise ChipFileError(f"synapse {name!r}: source {source!r} is not a population or a spike input")
    if target != READOUT and (target not in shapes or isinstance(nodes.get(target), nir.Input)):
        raise ChipFileError(f"synapse {name!r}: target {target!r} is not a population or the readout")
    src = shapes[source]
    weight = np.asarray(node.weight, dtype=np.float64)
    if weight.ndim != (2 if dense else 4) or not np.all(np.isfinite(weight)) or np.any(np.asarray(node.bias) != 0):
        raise ChipFileError(f"synapse {name!r}: weight must be a finite {'[N_out, N_in]' if dense else '[C_out, C_in, k, k]'}"
                            f" array without bias, is {weight.shape}")
    stride = padding = dilation = groups = 1
    if dense:
        padding = 0
        n_in = int(np.prod(src)) if flatten else (src[0] if len(src) == 1 else -1)
        if weight.shape[1] != n_in:
            raise ChipFileError(f"synapse {name!r}: weight {weight.shape} does not read {src} spikes"
                                f"{' flattened' if flatten else ''}")
    else:
        stride, padding, dilation = (_one_or_pair(name, node, k) for k in ("stride", "padding", "dilation"))
        groups = int(np.asarray(node.groups).ravel()[0])
        if groups < 1:
            raise ChipFileError(f"synapse {name!r}: groups {groups} < 1")
        if len(src) != 3 or weight.shape[1] * groups != src[0]:
            raise ChipFileError(f"synapse {name!r}: weight {weight.shape} (groups {groups}) does not read {src}")
    exp, offset, channels = (_int_field(name, md, k, 0) for k in ("weight_exp", "out_offset", "channels"))
    if not 0 <= offset <= offset + channels <= weight.shape[0]:
        raise ChipFileError(f"synapse {name!r}: channels [{offset}, {offset + channels}) outside the weight")
    outside = np.concatenate([weight[:offset], weight[offset + channels:]])
    if np.any(outside != 0):
        raise ChipFileError(f"synapse {name!r}: non-zero weights outside its channels [{offset}, {offset + channels})")
    w = weight[offset:offset + channels].astype(np.float64)
    mant = np.round(w / 2.0 ** exp)
    if np.any(mant * 2.0 ** exp != w) or np.abs(mant).max(initial=0) > WEIGHT_MANT_MAX:
        raise ChipFileError(f"synapse {name!r}: weights are not 8-bit mantissas << {exp}")
    if np.abs(w).max(initial=0) >= SPIKE_LIMIT:  # also keeps mant << exp inside int64
        raise ChipFileError(f"synapse {name!r}: a weight of {np.abs(w).max():.4g} a-units; one spike must stay "
                            f"below {SPIKE_LIMIT}")
    return Synapse(source, target, torch.from_numpy(mant.astype(np.int64)) << exp, stride, padding,
                   upsample, offset, _int_field(name, md, "delay", 1), exp, dilation, groups, flatten)
