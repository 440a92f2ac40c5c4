"""Bit-accurate run of a general NIR spiking network compiled to Loihi 2 integers ("sddpm-net-nir",
written by `export.nir_foreign`): Affine/Linear/Conv2d synapses (after an optional Flatten) into
IF/LIF/CubaLIF nodes, each run as Lava's fixed-point LIF with the du, dv, vth and bias in its metadata.

Timing is Lava's: every synapse delivers at step t + 1 what its source emitted at step t, so cycles
(recurrent graphs) need no special case; an Input emits its given 0/1 spike train.

This module must not import `sddpm` or `export` (the simulator is an independent oracle).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import nir
import numpy as np
import torch

from .chip_file import ChipFileError
from .errors import SimulatorInputError
from .fixed_point import conv_synapse, lif_step, scale_bias

FORMAT = "sddpm-net-nir"
VERSIONS = (1,)
SYNAPSES = (nir.Affine, nir.Linear, nir.Conv2d)
NEURONS = (nir.IF, nir.LIF, nir.CubaLIF)


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


def _scalar(value):
    return value.item() if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) \
        else value


def _meta(name: str, node, key: str):
    md = node.metadata or {}
    if key not in md:
        raise ChipFileError(f"node {name!r}: metadata lacks {key!r} (compile the graph with "
                            f"`sddpm import-nir` first)")
    return _scalar(md[key])


class NetSimulator:
    def __init__(self, graph: nir.NIRGraph):
        meta = graph.metadata or {}
        if _scalar(meta.get("format")) != FORMAT or int(_scalar(meta.get("version", -1))) not in VERSIONS:
            raise ChipFileError(f"not an {FORMAT} graph of version {VERSIONS} (format {_scalar(meta.get('format'))!r})"
                                f": compile a NIR graph with `sddpm import-nir` first")
        nodes = graph.nodes
        into: dict[str, list[str]] = {}
        for a, b in graph.edges:
            into.setdefault(b, []).append(a)
        self.inputs = {n: tuple(int(v) for v in node.output_type["output"]) for n, node in nodes.items()
                       if isinstance(node, nir.Input)}
        self.neurons = {}
        for name, node in nodes.items():
            if isinstance(node, NEURONS):
                shape = tuple(int(v) for v in np.asarray(node.v_threshold).shape)
                bias = scale_bias(torch.from_numpy(np.asarray(_meta(name, node, "bias_mant")).astype(np.int64)),
                                  int(_meta(name, node, "bias_exp")))
                self.neurons[name] = NetNeuron(name, shape, int(_meta(name, node, "du")), int(_meta(name, node, "dv")),
                                               int(_meta(name, node, "vth")), bias.reshape(1, *bias.shape))
        self.synapses = []
        for name, node in nodes.items():
            if not isinstance(node, SYNAPSES):
                continue
            src = into[name][0]
            flatten = isinstance(nodes[src], nir.Flatten)
            if flatten:
                src = into[src][0]
            target = next(b for a, b in graph.edges if a == name)
            mant = torch.from_numpy(np.asarray(_meta(name, node, "weight_mant")).astype(np.int64))
            conv = None
            if isinstance(node, nir.Conv2d):
                conv = {"stride": tuple(int(v) for v in np.broadcast_to(node.stride, 2)),
                        "padding": tuple(int(v) for v in np.broadcast_to(node.padding, 2)),
                        "dilation": tuple(int(v) for v in np.broadcast_to(node.dilation, 2)),
                        "groups": int(node.groups)}
            self.synapses.append(NetSynapse(name, src, target, mant << int(_meta(name, node, "weight_exp")), flatten,
                                            conv))
        self.outputs = json.loads(_scalar(meta["outputs"]))

    @classmethod
    def from_file(cls, path: str) -> NetSimulator:
        try:
            graph = nir.read(path)
        except (OSError, KeyError, ValueError, TypeError) as err:  # h5py's, a missing field's, the type checks'
            raise ChipFileError(f"{path}: not a readable NIR file ({type(err).__name__}: {err})") from None
        return cls(graph)

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
                u[n], v[n], s = lif_step(u[n], v[n], a[n], du=p.du, dv=p.dv, vth=p.vth, bias=p.bias)
                now[n] = s.to(torch.int64)
                out[n].append(s)
            last.update(now)
            last.update({n: (x[step] != 0).to(torch.int64) for n, x in inputs.items()})
        return {n: torch.stack(s) for n, s in out.items()}
