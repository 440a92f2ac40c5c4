"""Operation counts of the float spiking U-Net, layer by layer: the measure of the SDDPM paper (rate x T x FLOPs of
each spiking layer) and of NeuroBench's SynapticOperations, beside which `export.energy` puts the chip network's.

Per denoising step of one image (one forward pass), counted with forward pre-hooks on a real forward of every
Conv2d, Conv3d and Linear layer:

  SOPs   a layer that reads a population's spikes (`spiking_inputs`): one accumulate per (spike, synapse) pair,
         i.e. the conv of the 0/1 spike map with an all-ones kernel, summed; no bias.
  MACs   a layer that reads analog values (`ANALOG_LAYERS` says which and why): one multiply-accumulate per
         (nonzero input, synapse) pair, as NeuroBench's Effective_MACs counts them.
  dense  every input counted as nonzero: the layer's (input, synapse) pairs per call (NeuroBench's Dense).
  FLOPs  the layer's MACs as FLOP counters and the paper write them: output elements x C_in x kernel, the padded
         border taps included. The paper's SOPs of a spiking layer are rate x T x FLOPs, with the firing rate of
         its input (`LayerOps.paper`).

The chip network counts differently (`export.energy.count_forward`): it composes the analog shortcuts into spiking
synapses, so a population's spikes fan out to more targets there than its one conv here (docs/energy.md).

Zero-valued weights count as synapses here and on the chip (a Conv process reads every kernel entry);
NeuroBench skips them. A trained float model has no exactly-zero weight, so the counts agree (tests/test_energy.py
checks it against the package).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sddpm.unet import SpikingUNet, SpkDownSample, SpkResBlock, SpkUpSample

from .errors import ExportInputError

# Layers of a SpikingUNet that read analog values, by the last part of their name, with the reason.
ANALOG_LAYERS = {
    "conv": "the first conv reads the analog image x_t (once per forward: it is the same at every SNN step)",
    "shortcut": "a res block's 1x1 shortcut reads the block's analog input (a sum of BN outputs)",
    "tail_conv": "the tail conv reads Swish(BN(h)) of the last block's analog output",
    "T_output_layer": "the output conv reads the tail's analog output",
    "timembedding.1": "the time MLP reads the sinusoidal embedding of t",
    "timembedding.3": "the time MLP reads Swish of its first layer",
    "temb_proj.1": "a res block's projection of the time embedding reads Swish of it",
}


@dataclass(frozen=True)
class LayerOps:
    """One layer's operations per denoising step of one image."""
    layer: str  # module name in the float model
    kind: str  # "sop" (reads spikes) or "mac" (reads analog values)
    source: str  # the population whose spikes it reads, or why it reads analog values
    ops: float  # SOPs or effective MACs
    dense: float  # (input, synapse) pairs with every input nonzero
    flops: float  # output elements x C_in x kernel: padded taps included
    paper: float  # the paper's count: rate x T x FLOPs for spikes (rate x T = mean spikes per input), else FLOPs


def spiking_inputs(model: SpikingUNet) -> dict[str, str]:
    """Layer name -> the population (neuron module) whose spikes it reads, from the U-Net's structure: the head's
    conv_identity reads `neuron`, a res block's conv1/conv2 its neuron1/neuron2, a down- or up-sampling block's conv
    its neuron (through nearest up-sampling in the latter)."""
    pairs = {"conv_identity": "neuron"}
    for name, module in model.named_modules():
        if isinstance(module, SpkResBlock):
            pairs.update({f"{name}.conv1": f"{name}.neuron1", f"{name}.conv2": f"{name}.neuron2"})
        elif isinstance(module, (SpkDownSample, SpkUpSample)):
            pairs[f"{name}.conv"] = f"{name}.neuron"
    return pairs


def _analog_reason(layer: str) -> str:
    for suffix, reason in ANALOG_LAYERS.items():
        if layer == suffix or layer.endswith("." + suffix):
            return reason
    raise ExportInputError(f"layer {layer} reads neither a population's spikes nor a known analog value: "
                           "export.float_ops does not know how to count it")


def connections(nonzero: torch.Tensor, layer: nn.Module) -> int:
    """(nonzero input, synapse) pairs of one call of `layer` on a 0/1 input mask `nonzero`: the layer applied with
    all-ones weights and no bias, summed. With all-ones weights every output channel receives the same sum, so
    the input channels are summed first and the result scaled by the output channels (one small conv, not C_out)."""
    x = nonzero.to(torch.float64)
    if isinstance(layer, nn.Linear):
        return int(round(float(x.sum()))) * layer.out_features
    if layer.groups != 1:
        raise ExportInputError(f"{type(layer).__name__} with groups={layer.groups}: not counted (no such layer in "
                               "the U-Net)")
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv3d
    ones = torch.ones((1, 1, *layer.kernel_size), dtype=torch.float64)
    per_channel = conv(x.sum(1, keepdim=True), ones, stride=layer.stride, padding=layer.padding,
                       dilation=layer.dilation)
    return int(round(float(per_channel.sum()))) * layer.out_channels


@torch.no_grad()
def float_ops(model: SpikingUNet, states: list[tuple[torch.Tensor, torch.Tensor]]) -> list[LayerOps]:
    """Every counted layer of `model` in call order, per denoising step of one image, averaged over the images of
    `states` ((x_t, t) batches, as `toolchain.verify.chain_states` gives them)."""
    if not isinstance(model, SpikingUNet):
        raise ExportInputError(f"float_ops counts a SpikingUNet, got {type(model).__name__}")
    spiking = spiking_inputs(model)
    totals: dict[str, list[float]] = {}  # layer -> [ops, dense, flops, paper]

    def count(name: str, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        if name in spiking and not torch.all((x == 0) | (x == 1)):
            raise ExportInputError(f"layer {name} should read the 0/1 spikes of {spiking[name]}, got other values")
        fan_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels * math.prod(layer.kernel_size)
        flops = output.numel() * fan_in
        rate = float((x != 0).to(torch.float64).mean()) if name in spiking else 1.0
        counts = (connections(x != 0, layer), connections(torch.ones_like(x, dtype=torch.bool), layer), flops,
                  rate * flops)
        entry = totals.setdefault(name, [0.0] * 4)
        for i, value in enumerate(counts):
            entry[i] += value

    hooks = [m.register_forward_hook(lambda m, i, o, name=name: count(name, m, i, o))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    images = 0
    try:
        for x, t in states:
            model(x, t)
            images += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return [LayerOps(name, "sop" if name in spiking else "mac",
                     spiking[name] if name in spiking else _analog_reason(name), *(v / images for v in values))
            for name, values in totals.items()]


def summarize_float(layers: list[LayerOps]) -> dict:
    """JSON-ready, per denoising step of one image: SOPs (exact, and as the paper counts them), the analog layers'
    MACs, NeuroBench's Dense, SOPs per population, and the analog layers with their reason."""
    sop, mac = [l for l in layers if l.kind == "sop"], [l for l in layers if l.kind == "mac"]
    return {"sops": sum(l.ops for l in sop), "paper_sops": sum(l.paper for l in sop),
            "macs": sum(l.ops for l in mac), "dense": sum(l.dense for l in layers),
            "by_population": {l.source: {"layer": l.layer, "sops": l.ops, "paper_sops": l.paper} for l in sop},
            "analog_layers": {l.layer: {"macs": l.ops, "flops": l.flops, "reads": l.source} for l in mac}}
