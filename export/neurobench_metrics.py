"""NeuroBench's own metrics (package `neurobench`) of the float spiking U-Net and of its ANN twin, over the same
denoising steps that `sddpm energy` counts on the chip: the field's harness, run as it is, so that our numbers can
be compared with papers that report it.

NeuroBench calls a model with one tensor per batch, but a denoising step needs (x_t, t): `PackedDenoiser` takes
x_t with t as one extra, constant channel and splits them again. One sample is one denoising step of one image,
so its per-sample results are per denoising step of one image, like `export.energy`'s.

Metrics: static Footprint, ConnectionSparsity, ParameterCount; workload SynapticOperations (Effective_ACs: layers
whose input is all 0/+-1, i.e. spikes; Effective_MACs: the others; Dense: every input and weight counted) and
ActivationSparsity over the neuron modules (IF and LIF registered as NeuroBench's activation layers; the ANN's
Swish). MembraneUpdates is not run: it reads snnTorch's `mem` attribute, which our neurons do not have;
`export.energy` counts neuron updates itself.
"""
from __future__ import annotations

import dataclasses

import neurobench
import torch
from neurobench.benchmarks import Benchmark
from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
from neurobench.models import NeuroBenchModel
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sddpm.neuron import IF, LIF
from sddpm.unet import ANNUNet, Swish

VERSION = neurobench.__version__


class PackedDenoiser(NeuroBenchModel):
    """A denoiser eps(x_t, t) called NeuroBench's way: one tensor [B, C + 1, H, W] whose last channel holds t."""

    def __init__(self, net: nn.Module, activations: tuple[type[nn.Module], ...]):
        super().__init__()
        self.net = net.eval()
        for activation in activations:
            self.add_activation_module(activation)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch[:, :-1], batch[:, -1, 0, 0].round().long())

    def __net__(self) -> nn.Module:
        return self.net


def pack(states: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The (x_t, t) batches of `states` as one tensor, t broadcast into an extra channel (exact in float32: t <
    2^24)."""
    return torch.cat([torch.cat([x, t.to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:])], 1)
                      for x, t in states])


def _run(model: PackedDenoiser, states, batch_size: int) -> dict:
    packed = pack(states)
    loader = DataLoader(TensorDataset(packed, torch.zeros(len(packed))), batch_size=batch_size)
    benchmark = Benchmark(model, loader, [], [], [[Footprint, ConnectionSparsity, ParameterCount],
                                                  [SynapticOperations, ActivationSparsity]])
    with torch.no_grad():
        return benchmark.run(quiet=True)


def neurobench_metrics(snn: nn.Module, states: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """JSON-ready: NeuroBench's results for the float SNN `snn` and for a fresh ANN twin of its configuration
    (operation counts do not depend on its weights, which the package only reads to skip exact zeros) over the
    (x_t, t) batches of `states`, and the package's version."""
    batch_size = states[0][0].shape[0]
    ann = ANNUNet(dataclasses.replace(snn.cfg, kind="ann"))
    return {"version": VERSION,
            "snn": _run(PackedDenoiser(snn, (IF, LIF)), states, batch_size),
            "ann": _run(PackedDenoiser(ann, (Swish,)), states, batch_size)}
