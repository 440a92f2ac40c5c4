"""Operation counts and energy of one forward pass (one denoising step): the SNN on the chip, counted from a
run's spikes, and its ANN twin, counted from its layers.

Counts, exact integers per image:
  spikes          of every population at every SNN step
  SOPs            synaptic operations: a spike adds one weight into every (output channel, output position)
                  pair that a synapse leaving its population connects it to (its fan-out); see `fanout_map`
  neuron updates  neurons x T inside the populations' windows; on Lava's timing every compartment is also
                  updated, without input, at the other chip steps of the forward pass (idle updates: with one
                  image in flight; images pipelined back to back would put them to use)
  host MACs       the first conv of the analog x_t (once per forward: x_t is the same at every SNN step) and
                  the tail's two convs (at every SNN step). The time-embedding MLP and projections are counted
                  separately and not priced: the compiled network holds their results as tables indexed by t.
Elementwise work (BN, Swish, the readout's scaling, the membrane output) is not counted, for either network,
as in the paper.

Beside them, the float model's own counts (`export.float_ops`: the paper's and NeuroBench's measure). The chip
network composes the float model's analog shortcuts into spiking synapses, so its SOPs are a different, larger
count of the same forward pass: `summarize` reports both.

Energy of a forward pass under the paper's 45 nm model (`EnergyModel`): E = e_MAC x MACs + e_SOP x SOPs, SDM's
E = E_MAC x FLOP(first conv) + E_AC x sum SOP (docs/sources.md section 2.1). Priced twice: on the float model as
the paper counts it (the first conv's FLOPs, rate x T x FLOPs of the spiking layers), and on the chip network (the
host's convs, which read analog values, as MACs; the chip's SOPs). The ANN twin's energy is its conv MACs x e_MAC:
the paper's baseline. A generated image costs (denoising steps) x (energy of a forward pass). Loihi 2's own time
and energy: `export.loihi2`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from sddpm.config import ModelConfig
from sddpm.unet import ANNUNet, SpikingUNet

from .chip import ChipNetwork, pair
from .errors import ExportInputError
from .float_ops import LayerOps, summarize_float


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, in picojoules."""
    name: str
    mac_pj: float  # per multiply-accumulate: analog inputs (the SNN's first conv or host convs, every ANN layer)
    sop_pj: float  # per synaptic operation (an accumulate)
    source: str


PJ = 1e-12  # joules
# SDM section 5 / Tab. 4 (docs/sources.md section 2.2), citing Panda et al. 2020 and Yao et al. TPAMI 2023:
# Horowitz's (ISSCC 2014) 45 nm energies of a 32-bit float multiply + add (3.7 + 0.9 pJ) and of an add.
PAPER_45NM = EnergyModel(name="paper-45nm", mac_pj=4.6, sop_pj=0.9,
                         source="SDDPM/SDM Tab. 4, 45 nm (Horowitz, ISSCC 2014); neuron updates not counted")
ENERGY_MODELS = (PAPER_45NM,)
FIRST_CONV = "conv"  # the float SNN's layer that reads x_t: the paper's one MAC layer

# Denoising steps of one generated image, per sampler.
SAMPLERS = {"DDPM 1000": 1000, "DDIM 100": 100, "DDIM 50": 50}


# -- the ANN twin ------------------------------------------------------------------------------------------

TIME_EMBEDDING_LAYERS = ("time_embedding.", "temb_proj.")  # name parts of the time path's Linear layers


def is_time_embedding(layer: str) -> bool:
    return any(part in layer for part in TIME_EMBEDDING_LAYERS)


@torch.no_grad()
def ann_macs(cfg: ModelConfig) -> dict[str, int]:
    """MACs of every conv and linear layer of the ANN twin of `cfg` in one forward pass of one image, by name:
    the input conv, the res blocks' convs and shortcuts, the down- and up-sampling convs, the output conv, and
    (`is_time_embedding`) the time-embedding MLP and the blocks' projections of it. Counted with forward hooks
    on a real forward: conv C_out x H_out x W_out x (C_in / groups) x kH x kW, linear in x out."""
    model = ANNUNet(dataclasses.replace(cfg, kind="ann")).eval()
    macs: dict[str, int] = {}

    def count(name, module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            macs[name] = output[0].numel() * (module.in_channels // module.groups) * k_h * k_w
        else:
            macs[name] = output[0].numel() * module.in_features

    hooks = [m.register_forward_hook(lambda m, i, o, name=name: count(name, m, i, o))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(torch.zeros(1, cfg.img_ch, cfg.img_size, cfg.img_size), torch.zeros(1, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return macs


@lru_cache(maxsize=8)
def snn_time_embedding_macs(cfg: ModelConfig) -> int:
    """MACs of the SNN's time path for one t: every Linear of a SpikingUNet is in it (the MLP, the projections)."""
    with torch.device("meta"):  # shapes only: no weights are allocated or initialized
        model = SpikingUNet(cfg)
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


# -- synaptic operations -------------------------------------------------------------------------------------

def reach(size_in: int, kernel: int, stride: int, padding: int, upsample: int, dilation: int = 1) -> np.ndarray:
    """int64 [size_in]: along one axis, how many distinct output positions each input position reaches through
    nearest up-sampling by `upsample`, then a conv (kernel, stride, padding, dilation)."""
    size_up = size_in * upsample
    size_out = (size_up + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    reached = np.zeros((size_in, size_out), dtype=bool)
    for out in range(size_out):
        for tap in range(kernel):
            row = out * stride - padding + tap * dilation  # the up-sampled input row this tap of `out` reads
            if 0 <= row < size_up:
                reached[row // upsample, out] = True
    return reached.sum(1).astype(np.int64)


def fanout_map(weight_shape: tuple[int, ...], in_hw: tuple[int, int], stride, padding, upsample: int,
               dilation=1, groups: int = 1) -> torch.Tensor:
    """int64 [H_in, W_in]: the fan-out of a spike at each input position through a synapse of weight shape
    [C_out, C_in / groups, kH, kW] - the number of (output channel, output position) pairs it reaches; an input
    channel reaches the C_out / groups output channels of its group. stride, padding, dilation: int or (H, W).

    Structural: zero-valued weights count, as a Conv process reads every kernel entry. The kernel is a full
    box and up-sampling and stride act per axis, so the reach factorizes into rows x columns, and it is the
    same for every input channel: fan-out(y, x) = C_out / groups x reach_rows(y) x reach_cols(x). Without
    up-sampling
    each output position reads an input position through one tap at most, so the fan-out is the kernel clipped
    at the borders (and thinned by the stride): summed over spikes it equals the conv of the spike map with an
    all-ones kernel, summed (`tests/test_energy.py` checks both). With up-sampling, the u x u copies of a spike
    reach some outputs through several taps; Loihi 2 holds that synapse as one sparse matrix whose single
    entry per (output, input) pair sums those taps (export/resources.py counts it so): one SOP per pair. Lava's
    CPU graph computes the same currents as a Conv of the up-sampled spikes (deploy/chip_lava.py).
    """
    c_out, _, k_h, k_w = weight_shape
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    rows = reach(in_hw[0], k_h, stride[0], padding[0], upsample, dilation[0])
    cols = reach(in_hw[1], k_w, stride[1], padding[1], upsample, dilation[1])
    return torch.from_numpy(c_out // groups * np.outer(rows, cols))


def synapse_sops(spikes: torch.Tensor, weight_shape: tuple[int, ...], stride, padding, upsample: int, dilation=1,
                 groups: int = 1) -> torch.Tensor:
    """int64 [T, B]: SOPs of one synapse at every SNN step for every image, given its source's 0/1 spikes
    [T, B, C_in, H, W]: the sum over spikes of their fan-out (`fanout_map`)."""
    if spikes.dim() != 5 or spikes.shape[2] != weight_shape[1] * groups:
        raise ExportInputError(f"spikes must be [T, B, {weight_shape[1] * groups}, H, W] for weights "
                               f"{tuple(weight_shape)} in {groups} groups, got {list(spikes.shape)}")
    fanout = fanout_map(tuple(weight_shape), tuple(spikes.shape[-2:]), stride, padding, upsample, dilation, groups)
    per_position = spikes.sum(2, dtype=torch.int64)  # spikes over the input channels: [T, B, H, W]
    return (per_position * fanout).sum((-2, -1))


# -- one forward pass on the chip ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PopulationCount:
    name: str
    neurons: int
    spikes: torch.Tensor  # int64 [T, B]
    sops: torch.Tensor  # int64 [T, B]: of the synapses leaving the population


@dataclass(frozen=True)
class SynapseCount:
    source: str
    target: str  # a population, or "readout"
    sops: torch.Tensor  # int64 [T, B]


@dataclass(frozen=True)
class ForwardCounts:
    """Exact operation counts of one forward pass (one denoising step) of a batch of images on the chip."""
    populations: tuple[PopulationCount, ...]
    synapses: tuple[SynapseCount, ...]
    snn_steps: int
    chip_steps: int  # of a forward pass on Lava's timing
    host_macs: dict[str, int]  # per image: head_conv, tail_conv, time_conv
    time_embedding_macs: int  # per image; not priced

    @property
    def sops(self) -> torch.Tensor:
        """int64 [T, B], all synapses."""
        return sum(s.sops for s in self.synapses)

    @property
    def spikes(self) -> torch.Tensor:
        """int64 [T, B], all populations."""
        return sum(p.spikes for p in self.populations)

    @property
    def neurons(self) -> int:
        return sum(p.neurons for p in self.populations)

    @property
    def neuron_updates(self) -> int:
        """Per image: every neuron at each of its T steps."""
        return self.neurons * self.snn_steps

    @property
    def idle_updates(self) -> int:
        """Per image: every neuron at the chip steps outside its window (Lava's timing)."""
        return self.neurons * (self.chip_steps - self.snn_steps)


def host_macs(net: ChipNetwork) -> dict[str, int]:
    """MACs of the host's convs per forward pass of one image (3x3, padding 1: output size = input size)."""
    _, h, w = net.populations[0].shape
    _, h_r, w_r = net.readout.shape
    per_step = {key: int(net.host.tail[f"{key}_weight"].size) * h_r * w_r for key in ("tail_conv", "time_conv")}
    return {"head_conv": int(net.host.head_weight.size) * h * w,
            **{key: macs * net.snn_steps for key, macs in per_step.items()}}


def count_forward(net: ChipNetwork, spike_trains: dict[str, torch.Tensor]) -> ForwardCounts:
    """Counts of one forward pass from its spike trains (population -> 0/1 [T, B, C, H, W], the `spikes` of
    any backend's `chiprun.ChipRun`; the timing mode does not matter, the trains are aligned on SNN steps)."""
    synapses = tuple(SynapseCount(s.source, s.target, synapse_sops(spike_trains[s.source], s.weight.shape,
                                                                   s.stride, s.padding, s.upsample))
                     for s in net.synapses)
    pops = []
    for p in net.populations:
        trains = spike_trains[p.name]
        if tuple(trains.shape[2:]) != p.shape or trains.shape[0] != net.snn_steps:
            raise ExportInputError(f"population {p.name}: spikes {list(trains.shape)}, expected [{net.snn_steps}, B, "
                             f"{', '.join(map(str, p.shape))}]")
        outgoing = [s.sops for s in synapses if s.source == p.name]
        pops.append(PopulationCount(p.name, int(np.prod(p.shape)), trains.sum((2, 3, 4), dtype=torch.int64),
                                    sum(outgoing) if outgoing else torch.zeros(trains.shape[:2], dtype=torch.int64)))
    cfg = ModelConfig.from_dict(net.model_config)
    return ForwardCounts(tuple(pops), synapses, net.snn_steps, net.steps_per_denoising_step, host_macs(net),
                         snn_time_embedding_macs(cfg))


# -- energy --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Operations:
    """Operations of one forward pass (one denoising step) of one image; means over runs where measured."""
    macs: float  # priced at e_MAC: the SNN's first conv or host convs, or every conv of the ANN twin
    sops: float = 0.0
    updates: float = 0.0
    idle_updates: float = 0.0
    time_embedding_macs: int = 0  # reported, not priced


def snn_operations(runs: list[ForwardCounts]) -> Operations:
    """Mean per image over the images of all runs."""
    images = sum(r.sops.shape[1] for r in runs)
    first = runs[0]
    return Operations(macs=sum(first.host_macs.values()), sops=sum(int(r.sops.sum()) for r in runs) / images,
                      updates=first.neuron_updates, idle_updates=first.idle_updates,
                      time_embedding_macs=first.time_embedding_macs)


def float_operations(layers: list[LayerOps]) -> Operations:
    """The float SNN's forward pass as the paper prices it: its first conv's FLOPs as MACs, rate x T x FLOPs of
    its spiking layers as SOPs."""
    first = [l for l in layers if l.layer == FIRST_CONV]
    if not first:
        raise ExportInputError(f"the float model's counts hold no layer {FIRST_CONV!r} (its first conv)")
    return Operations(macs=first[0].flops, sops=sum(l.paper for l in layers if l.kind == "sop"))


def ann_operations(cfg: ModelConfig) -> Operations:
    macs = ann_macs(cfg)
    return Operations(macs=sum(v for k, v in macs.items() if not is_time_embedding(k)),
                      time_embedding_macs=sum(v for k, v in macs.items() if is_time_embedding(k)))


def energy(ops: Operations, model: EnergyModel) -> dict[str, float]:
    """Joules of one forward pass of one image, by kind of operation, and their total."""
    joules = {"macs": ops.macs * model.mac_pj * PJ, "sops": ops.sops * model.sop_pj * PJ}
    return {**joules, "total": sum(joules.values())}


def per_image(joules_per_step: float) -> dict[str, float]:
    """Joules of one generated image under each sampler of `SAMPLERS`."""
    return {name: steps * joules_per_step for name, steps in SAMPLERS.items()}


def summarize(runs: list[ForwardCounts], ann: Operations, float_layers: list[LayerOps],
              models: tuple[EnergyModel, ...] = ENERGY_MODELS) -> dict:
    """JSON-ready summary of forward passes on the chip (`runs`) and of the float model over the same denoising
    steps (`float_layers`, from `export.float_ops.float_ops`) against the ANN twin: per population and in total,
    per denoising step (one forward pass) of one image, means over the `forward_passes` (images x runs) counted;
    the energy of a denoising step and of a generated image (`SAMPLERS`) under each model, for the float model as
    the paper counts it and for the chip network."""
    first, passes = runs[0], sum(r.sops.shape[1] for r in runs)
    steps = first.snn_steps

    def mean(values) -> float:  # per image, summed over SNN steps
        return sum(int(v.sum()) for v in values) / passes

    floats = summarize_float(float_layers)
    populations = []
    for i, p in enumerate(first.populations):
        spikes = mean(r.populations[i].spikes for r in runs)
        in_float = floats["by_population"].get(p.name, {})
        populations.append({"name": p.name, "neurons": p.neurons, "firing_rate": spikes / (p.neurons * steps),
                            "spikes": spikes, "sops": mean(r.populations[i].sops for r in runs),
                            "float_sops": in_float.get("sops", 0.0), "paper_sops": in_float.get("paper_sops", 0.0)})
    snn, on_float = snn_operations(runs), float_operations(float_layers)
    out = {
        "snn_steps": steps, "chip_steps": first.chip_steps, "forward_passes": passes, "populations": populations,
        "per_denoising_step": {
            "spikes": mean(r.spikes for r in runs), "sops": snn.sops,
            "sops_per_snn_step": [sum(int(r.sops[k].sum()) for r in runs) / passes for k in range(steps)],
            "neuron_updates": snn.updates, "idle_neuron_updates": snn.idle_updates,
            "host_macs": dict(first.host_macs), "time_embedding_macs": snn.time_embedding_macs},
        "float_sops": floats,
        "chip_sops": {"total": snn.sops, "by_population": {p["name"]: p["sops"] for p in populations}},
        "ann": {"macs": ann.macs, "time_embedding_macs": ann.time_embedding_macs},
        "energy": {},
    }
    for model in models:
        e_ann = energy(ann, model)

        def priced(ops: Operations) -> dict:
            e = energy(ops, model)
            return {"macs": ops.macs, "sops": ops.sops, "per_denoising_step_j": e,
                    "per_image_j": per_image(e["total"]), "over_ann": e["total"] / e_ann["total"]}

        out["energy"][model.name] = {
            "source": model.source, "constants_pj": {"mac_pj": model.mac_pj, "sop_pj": model.sop_pj},
            "float_snn": priced(on_float), "chip_snn": priced(snn),
            "ann": {"macs": ann.macs, "per_denoising_step_j": e_ann, "per_image_j": per_image(e_ann["total"])}}
    return out
