"""Bit-accurate run of a general NIR spiking network compiled to Loihi 2 integers ("sddpm-net-nir",
written by `export.nir_foreign`): Affine/Linear/Conv2d synapses (after an optional Flatten) into
IF/LIF/CubaLIF nodes, each run as Lava's fixed-point LIF with the du, dv, vth and bias in its metadata.

Timing is Lava's: every synapse delivers at step t + 1 what its source emitted at step t, so cycles
(recurrent graphs) need no special case; an Input emits its given 0/1 spike train. A neuron node's bias
is on from its metadata's step `bias_start` (its depth, unless the source file set it), 0 before.

This module must not import `sddpm` or `export` (the simulator is an independent oracle).
"""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass

import nir
import numpy as np
import torch

from fileio import NIR_READ_ERRORS

from .chip_file import (BIAS_EXP_MAX, BIAS_MANT_MAX, SPIKE_LIMIT, VTH_MAX, WEIGHT_MANT_MAX, ChipFileError, checked,
                        field, scalar, seal_problem)
from .errors import SimulatorInputError
from .fixed_point import conv_synapse, lif_step, scale_bias

FORMAT = "sddpm-net-nir"
VERSIONS = (2,)  # 2: bias_start
SYNAPSES = (nir.Affine, nir.Linear, nir.Conv2d)
NEURONS = (nir.IF, nir.LIF, nir.CubaLIF)
NODE_TYPES = SYNAPSES + NEURONS + (nir.Input, nir.Output, nir.Flatten)
# Lava multiplies u by 4096 - (du + 1) and v by 4096 - dv (12-bit decays): du = -1 keeps u, dv = 4096 forgets v.
DU_RANGE = (-1, 4095)
DV_RANGE = (0, 4096)


@dataclass(frozen=True)
class NetSynapse:
    name: str
    source: str
    target: str
    weight: torch.Tensor  # int64: mant << exp, [out, in] or [C_out, C_in, k, k]
    flatten: bool
    conv: dict | None  # stride, padding, dilation, groups of a Conv2d


@dataclass(frozen=True)
class NetNeuron:
    name: str
    shape: tuple[int, ...]
    du: int
    dv: int
    vth: int
    bias: torch.Tensor  # int64 v-units, broadcastable to [B, *shape]
    bias_start: int  # the first step the bias is on


def _meta(name: str, node, key: str):
    return field(name, node.metadata, key, hint=" (compile the graph with `sddpm import-nir` first)")


def _int_meta(name: str, node, key: str, low: int, high: int | None) -> int:
    """An integer metadata field inside [low, high]: a float or out-of-range value is an error, not a cast."""
    value = _meta(name, node, key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low or \
            (high is not None and value > high):
        raise ChipFileError(f"node {name!r}: {key} = {value!r} must be an integer in [{low}, "
                            f"{'inf' if high is None else high}]")
    return int(value)


def _int_array_meta(name: str, node, key: str, limit: int, shape: tuple[int, ...]) -> torch.Tensor:
    array = np.asarray(_meta(name, node, key))
    if array.dtype.kind not in "iu" or array.shape != shape or np.abs(array.astype(np.int64)).max(initial=0) > limit:
        raise ChipFileError(f"node {name!r}: {key} must be integers within +-{limit} of shape {shape}, is "
                            f"{array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def _shape(name: str, value) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in np.asarray(value).reshape(-1))
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1:
        raise ChipFileError(f"node {name!r}: shape {value!r} is not positive integers")
    return shape


def _single(name: str, what: str, names: list[str]) -> str:
    if len(names) != 1:
        raise ChipFileError(f"node {name!r}: needs exactly one {what}, has {names}")
    return names[0]


def _conv(name: str, node, weight: torch.Tensor, src: tuple[int, ...], tgt: tuple[int, ...]) -> dict:
    try:
        conv = {field: tuple(operator.index(v) for v in np.broadcast_to(np.asarray(getattr(node, field)), (2,)))
                for field in ("stride", "padding", "dilation")}
        conv["groups"] = operator.index(np.asarray(node.groups).reshape(-1)[0].item()) if np.size(node.groups) == 1 \
            else 0
    except (TypeError, ValueError):
        conv = None
    if conv is None or min(conv["stride"] + conv["dilation"] + (conv["groups"],)) < 1 or min(conv["padding"]) < 0:
        raise ChipFileError(f"synapse {name!r}: stride, padding, dilation and groups must be positive integers")
    ok = weight.dim() == 4 and len(src) == 3 and weight.shape[1] * conv["groups"] == src[0] and \
        weight.shape[0] % conv["groups"] == 0
    if ok:
        size = [(src[1 + i] + 2 * conv["padding"][i] - conv["dilation"][i] * (weight.shape[2 + i] - 1) - 1)
                // conv["stride"][i] + 1 for i in range(2)]
        ok = (weight.shape[0], *size) == tgt
    if not ok:
        raise ChipFileError(f"synapse {name!r}: a Conv2d of weight {tuple(weight.shape)} does not map {src} onto {tgt}")
    return conv


def _neuron(name: str, node) -> NetNeuron:
    shape = _shape(name, np.shape(node.v_threshold))
    bias = scale_bias(_int_array_meta(name, node, "bias_mant", BIAS_MANT_MAX, shape),
                      _int_meta(name, node, "bias_exp", 0, BIAS_EXP_MAX))
    return NetNeuron(name, shape, _int_meta(name, node, "du", *DU_RANGE), _int_meta(name, node, "dv", *DV_RANGE),
                     _int_meta(name, node, "vth", 1, VTH_MAX), bias.reshape(1, *bias.shape),
                     _int_meta(name, node, "bias_start", 0, None))


def _synapse(name: str, nodes, into, out_of, shapes) -> NetSynapse:
    node = nodes[name]
    src = _single(name, "input", into[name])
    flatten = isinstance(nodes[src], nir.Flatten)
    if flatten:
        src = _single(src, "input", into[src])
    target = _single(name, "output", out_of[name])
    if src not in shapes or target not in shapes or isinstance(nodes[target], nir.Input):
        raise ChipFileError(f"synapse {name!r}: must read a neuron or Input and drive a neuron, reads {src!r}, "
                            f"drives {target!r}")
    mant = _int_array_meta(name, node, "weight_mant", WEIGHT_MANT_MAX, np.shape(node.weight))
    exp = _int_meta(name, node, "weight_exp", 0, None)
    if int(mant.abs().max()) << exp >= SPIKE_LIMIT:  # Python ints: a huge exponent cannot overflow here
        raise ChipFileError(f"synapse {name!r}: one spike must stay below {SPIKE_LIMIT} a-units")
    weight = mant << exp
    conv = None
    if isinstance(node, nir.Conv2d):
        if flatten:
            raise ChipFileError(f"synapse {name!r}: a Conv2d reads no Flatten")
        conv = _conv(name, node, weight, shapes[src], shapes[target])
    elif weight.dim() != 2 or tuple(weight.shape) != (int(np.prod(shapes[target])), int(np.prod(shapes[src]))) \
            or (len(shapes[src]) != 1 and not flatten):
        raise ChipFileError(f"synapse {name!r}: weight {tuple(weight.shape)} does not map {shapes[src]} onto "
                            f"{shapes[target]}")
    return NetSynapse(name, src, target, weight, flatten, conv)


class NetSimulator:
    def __init__(self, graph: nir.NIRGraph):
        meta = graph.metadata or {}
        if scalar(meta.get("format")) != FORMAT or scalar(meta.get("version", -1)) not in VERSIONS:
            raise ChipFileError(f"not an {FORMAT} graph of version {VERSIONS} (format {scalar(meta.get('format'))!r})"
                                f": compile a NIR graph with `sddpm import-nir` first")
        nodes = graph.nodes
        for name, node in nodes.items():
            if not isinstance(node, NODE_TYPES):
                raise ChipFileError(f"node {name!r}: NIR type {type(node).__name__} is not supported here")
        into: dict[str, list[str]] = {name: [] for name in nodes}
        out_of: dict[str, list[str]] = {name: [] for name in nodes}
        for a, b in graph.edges:
            if a not in nodes or b not in nodes:
                raise ChipFileError(f"edge {a!r} -> {b!r}: unknown node")
            into[b].append(a)
            out_of[a].append(b)
        self.inputs = {n: _shape(n, node.output_type["output"]) for n, node in nodes.items()
                       if isinstance(node, nir.Input)}
        problems: list[str] = []  # every neuron's and synapse's, listed together
        self.neurons = {name: p for name, p in ((n, checked(problems, _neuron, n, node)) for n, node in nodes.items()
                                                if isinstance(node, NEURONS)) if p is not None}
        # a synapse is checked against every neuron node with a shape, not only those that passed
        shapes = {**self.inputs, **{n: s for n, s in ((n, checked([], _shape, n, np.shape(node.v_threshold)))
                                                     for n, node in nodes.items() if isinstance(node, NEURONS)) if s}}
        self.synapses = [syn for syn in (checked(problems, _synapse, name, nodes, into, out_of, shapes)
                                         for name, node in nodes.items() if isinstance(node, SYNAPSES)) if syn]
        if problems:
            raise ChipFileError((f"{len(problems)} problems: " if len(problems) > 1 else "") + "; ".join(problems))
        if "outputs" not in meta:
            raise ChipFileError("the graph's metadata lacks 'outputs'")
        outputs = json.loads(scalar(meta["outputs"]))
        if not isinstance(outputs, dict) or any(v not in self.neurons for v in outputs.values()):
            raise ChipFileError(f"the graph's outputs {outputs!r} must name neuron nodes")
        self.outputs = outputs

    @classmethod
    def from_file(cls, path: str) -> NetSimulator:
        try:
            problem = seal_problem(path)
            graph = nir.read(path)
        except NIR_READ_ERRORS as err:  # h5py's, nir's constructors' and type checks': many kinds
            raise ChipFileError(f"{path}: not a readable NIR file ({type(err).__name__}: {err})") from None
        try:
            sim = cls(graph)
        except ChipFileError as err:
            raise ChipFileError(f"{path}: {err}") from None
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:  # a field of the wrong kind
            raise ChipFileError(f"{path}: malformed {FORMAT} graph ({type(err).__name__}: {err})") from None
        if problem is not None:
            raise ChipFileError(f"{path}: {problem}")
        return sim

    def _current(self, syn: NetSynapse, spikes: torch.Tensor) -> torch.Tensor:
        if syn.conv is not None:
            return conv_synapse(spikes, syn.weight, **syn.conv)
        x = spikes.flatten(1) if syn.flatten else spikes
        # exact: 0/1 inputs times integer weights, summed in int64
        return (x.to(torch.int64).unsqueeze(-2) * syn.weight).sum(-1)

    @torch.no_grad()
    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """inputs: Input name -> 0/1 [T, B, *shape]. Returns every neuron node's spikes, bool [T, B, *shape]."""
        if set(inputs) != set(self.inputs):
            raise SimulatorInputError(f"inputs must be given for {sorted(self.inputs)}, got {sorted(inputs)}")
        steps, batch = next(iter(inputs.values())).shape[:2]
        for name, x in inputs.items():
            if tuple(x.shape) != (steps, batch, *self.inputs[name]):
                raise SimulatorInputError(f"input {name!r}: expected [T={steps}, B={batch}, {self.inputs[name]}], got "
                                 f"{list(x.shape)}")
        u = {n: torch.zeros(batch, *p.shape, dtype=torch.int64) for n, p in self.neurons.items()}
        v = {n: torch.zeros(batch, *p.shape, dtype=torch.int64) for n, p in self.neurons.items()}
        last = {n: torch.zeros(batch, *p.shape, dtype=torch.int64) for n, p in self.neurons.items()}
        last.update({n: torch.zeros(batch, *shape, dtype=torch.int64) for n, shape in self.inputs.items()})
        out = {n: [] for n in self.neurons}
        for step in range(steps):
            a = {n: torch.zeros(batch, *p.shape, dtype=torch.int64) for n, p in self.neurons.items()}
            for syn in self.synapses:
                a[syn.target] += self._current(syn, last[syn.source]).view(batch, *self.neurons[syn.target].shape)
            now = {}
            for n, p in self.neurons.items():
                bias = p.bias if step >= p.bias_start else torch.zeros_like(p.bias)
                u[n], v[n], s = lif_step(u[n], v[n], a[n], du=p.du, dv=p.dv, vth=p.vth, bias=bias)
                now[n] = s.to(torch.int64)
                out[n].append(s)
            last.update(now)
            last.update({n: (x[step] != 0).to(torch.int64) for n, x in inputs.items()})
        return {n: torch.stack(s) for n, s in out.items()}
