"""Rewrite a trained SpikingUNet into its chip graph: IF populations fed by linear maps of spikes.

Between two spiking populations everything is linear (conv, folded BN, the analog shortcuts,
concatenation, nearest up-sampling), so the input current of every IF population is

    I_P[t] = sum_k  W_k * s_{src_k}[t]  +  bias_P  (+ temb_P[diffusion step])   (+ host current for the first)

An `Expr` is such a sum. The walk below mirrors `SpikingUNet.forward` and composes the analog paths
into it: BN is folded into the conv before it, a 1x1 shortcut conv is multiplied into every term of
the expression it reads (a 1x1 conv after a 3x3 conv is a 3x3 conv), a concatenation keeps each
term's output-channel offset. Only 1x1 convs ever read an analog value on chip: every 3x3 conv reads
spikes, so biases stay constant per channel. Everything is float64 here, so the rewrite itself adds
no rounding that matters (tested against the model).

Host side: the first conv of the analog image x_t (+ BN) gives the first population's current; the
time-embedding MLP becomes one bias table per population over all diffusion steps; the real-valued
tail reads the final expression (the `readout`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from sddpm.neuron import IF, LIF
from sddpm.unet import (MEMBRANE_DECAY, MembraneOutputLayer, SpikingUNet, SpkDownSample, SpkResBlock, SpkUpSample,
                        Swish)

from .errors import ExportError
from .host import HostStages, head_current, tail


class UnsupportedModelError(ExportError, ValueError):
    """The model holds a layer (or layout) that the compiler cannot map to a chip network."""


# Leaf modules the compiler knows how to map; anything else in the model is named in an error.
SUPPORTED_LEAVES = (nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.Linear, nn.Embedding, nn.Identity, IF, LIF, Swish,
                    MembraneOutputLayer)
SUPPORTED_BLOCKS = (SpkResBlock, SpkDownSample, SpkUpSample)


@dataclass(frozen=True)
class Term:
    """W * spikes of `source`: a conv (after optional nearest up-sampling) into channels
    [out_offset, out_offset + weight.shape[0]) of the target."""
    source: str
    weight: torch.Tensor  # float64 [C_out_slice, C_in, k, k], PyTorch cross-correlation layout
    stride: int = 1
    padding: int = 1
    upsample: int = 1
    out_offset: int = 0

    def key(self) -> tuple:
        return (self.source, tuple(self.weight.shape), self.stride, self.padding, self.upsample, self.out_offset)

    def apply(self, spikes: torch.Tensor) -> torch.Tensor:
        """spikes [N, C_in, H, W] -> current [N, C_out_slice, H', W'] (float, no offset applied)."""
        if self.upsample != 1:
            spikes = F.interpolate(spikes, scale_factor=self.upsample, mode="nearest")
        return F.conv2d(spikes, self.weight.to(spikes.dtype), stride=self.stride, padding=self.padding)


@dataclass(frozen=True)
class Expr:
    """sum of terms + bias[C] (+ temb[diffusion_steps, C]) over an output of shape (C, H, W)."""
    shape: tuple[int, int, int]
    terms: tuple[Term, ...] = ()
    bias: torch.Tensor = None  # float64 [C]
    temb: torch.Tensor | None = None  # float64 [diffusion_steps, C]

    def __post_init__(self):
        if self.bias is None:
            object.__setattr__(self, "bias", torch.zeros(self.shape[0], dtype=torch.float64))

    def bias_table(self) -> torch.Tensor:
        """The constant input, [rows, C]: one row, or one per diffusion step when there is a temb."""
        return self.bias[None, :] if self.temb is None else self.bias[None, :] + self.temb

    def __add__(self, other: Expr) -> Expr:
        if self.shape != other.shape:
            raise UnsupportedModelError(f"cannot add analog values of shapes {self.shape} and {other.shape}")
        merged: dict[tuple, Term] = {}
        for term in self.terms + other.terms:
            k = term.key()
            merged[k] = replace(term, weight=merged[k].weight + term.weight) if k in merged else term
        return Expr(self.shape, tuple(merged.values()), self.bias + other.bias, _add_opt(self.temb, other.temb))


def _add_opt(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None or b is None:
        return b if a is None else a
    return a + b


def concat(a: Expr, b: Expr) -> Expr:
    """Channel concatenation: b's terms move to the channels after a's."""
    if a.shape[1:] != b.shape[1:]:
        raise UnsupportedModelError(f"cannot concatenate analog values of shapes {a.shape} and {b.shape}")
    ca, cb = a.shape[0], b.shape[0]
    shifted = tuple(replace(t, out_offset=t.out_offset + ca) for t in b.terms)
    temb = None
    if a.temb is not None or b.temb is not None:
        steps = (a.temb if a.temb is not None else b.temb).shape[0]
        temb = torch.cat([a.temb if a.temb is not None else torch.zeros(steps, ca, dtype=torch.float64),
                          b.temb if b.temb is not None else torch.zeros(steps, cb, dtype=torch.float64)], dim=1)
    return Expr((ca + cb, *a.shape[1:]), a.terms + shifted, torch.cat([a.bias, b.bias]), temb)


def conv1x1(conv: nn.Conv2d, x: Expr) -> Expr:
    """A 1x1 conv applied to an analog expression: multiplied into every term (channel mixing)."""
    mix = conv.weight.detach().double()[:, :, 0, 0]  # [C_out, C_in]
    terms = []
    for term in x.terms:
        cols = mix[:, term.out_offset:term.out_offset + term.weight.shape[0]]
        terms.append(replace(term, weight=torch.einsum("oc,cikl->oikl", cols, term.weight), out_offset=0))
    bias = mix @ x.bias + conv.bias.detach().double()
    temb = None if x.temb is None else x.temb @ mix.T
    out = Expr((conv.out_channels, *x.shape[1:]), (), bias, temb)
    # Re-adding merges terms that became identical after the mixing (e.g. two halves of a concat).
    return out + Expr(out.shape, tuple(terms), torch.zeros_like(bias))


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv then eval-mode BN as one conv: (weight, bias) in float64."""
    gain = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.detach().double() * gain[:, None, None, None]
    conv_bias = conv.bias.detach().double() if conv.bias is not None else 0.0
    bias = (conv_bias - bn.running_mean.double()) * gain + bn.bias.detach().double()
    return weight, bias


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = scale * x + shift, per channel (float64)."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.detach().double() - bn.running_mean.double() * scale


def scaled(expr: Expr, factor: float) -> Expr:
    """factor times an expression: every term's weights, the bias and the time-embedding bias."""
    return Expr(expr.shape, tuple(replace(t, weight=t.weight * factor) for t in expr.terms), expr.bias * factor,
                None if expr.temb is None else expr.temb * factor)


@dataclass(frozen=True)
class FloatPopulation:
    """A population and the float expression of its input current. An IF keeps its voltage (keep 1); a LIF
    (SpikingJelly's LIFNode with decay_input: h = v + (x - v) / tau) keeps 1 - 1/tau of it, and its current
    expression already carries the input's 1/tau, so that both are h = keep * v + current."""
    name: str
    shape: tuple[int, int, int]
    threshold: float
    current: Expr
    host_input: bool = False  # the first population: its current comes from the host's first conv
    keep: float = 1.0  # the share of v a step keeps: 1 for IF, 1 - 1/tau for LIF


@dataclass(frozen=True)
class FloatGraph:
    populations: tuple[FloatPopulation, ...]  # in dependency order
    readout: Expr  # the analog value the tail reads
    host: HostStages
    snn_steps: int
    diffusion_steps: int


def check_supported(model: nn.Module) -> None:
    """Raise naming every module the compiler cannot map (e.g. attention, another norm, another neuron)."""
    if not isinstance(model, SpikingUNet):
        raise UnsupportedModelError(f"the compiler maps SpikingUNet models, got {type(model).__name__}")
    bad = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
           if name and not list(m.children()) and not isinstance(m, SUPPORTED_LEAVES)]
    for part in (model.downblocks, model.middleblocks, model.upblocks):
        bad += [f"{type(m).__name__}" for m in part if not isinstance(m, SUPPORTED_BLOCKS)]
    if bad:
        raise UnsupportedModelError("unsupported layers for the chip compiler: " + ", ".join(sorted(set(bad))))
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and (m.running_mean is None or m.running_var is None):
            raise UnsupportedModelError(f"{name}: BatchNorm without running statistics cannot be folded")


class _Walker:
    def __init__(self, model: SpikingUNet):
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.populations: list[FloatPopulation] = []
        with torch.no_grad():  # in the model's own dtype, as its forward computes it
            self.temb = model.time_embedding(torch.arange(model.cfg.diffusion_steps))  # [diffusion_steps, tdim]

    def population(self, neuron: IF | LIF, current: Expr, host_input: bool = False) -> str:
        name = self.names[neuron]
        keep = 1.0
        if isinstance(neuron, LIF):
            keep, current = 1.0 - 1.0 / neuron.tau, scaled(current, 1.0 / neuron.tau)
        self.populations.append(FloatPopulation(name, current.shape, float(neuron.threshold), current, host_input,
                                                keep))
        return name

    def from_spikes(self, source: str, shape, conv: nn.Conv2d, bn: nn.BatchNorm2d, upsample: int = 1) -> Expr:
        weight, bias = fold_bn(conv, bn)
        c, h, w = shape
        h, w = h * upsample, w * upsample
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        out = (conv.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        return Expr(out, (Term(source, weight, s, p, upsample),), bias)

    def res_block(self, blk: SpkResBlock, x: Expr) -> Expr:
        s1 = self.population(blk.neuron1, x)
        h = self.from_spikes(s1, x.shape, blk.conv1, blk.bn1)
        with torch.no_grad():
            temb = blk.temb_proj(self.temb).double()  # [diffusion_steps, C]: Swish -> Linear
        h = replace(h, temb=temb)
        s2 = self.population(blk.neuron2, h)
        out = self.from_spikes(s2, h.shape, blk.conv2, blk.bn2)
        shortcut = x if isinstance(blk.shortcut, nn.Identity) else conv1x1(blk.shortcut, x)
        return out + shortcut

    def walk(self) -> FloatGraph:
        m, cfg = self.model, self.model.cfg
        head_w, head_b = fold_bn(m.conv, m.bn)
        if isinstance(m.neuron, LIF):  # the host's current into the first population carries its 1/tau too
            head_w, head_b = head_w / m.neuron.tau, head_b / m.neuron.tau
        first = (cfg.ch, cfg.img_size, cfg.img_size)
        s0 = self.population(m.neuron, Expr(first), host_input=True)
        h = self.from_spikes(s0, first, m.conv_identity, m.bn_identity)
        hs = [h]
        for layer in m.downblocks:
            if isinstance(layer, SpkResBlock):
                h = self.res_block(layer, h)
            else:
                s = self.population(layer.neuron, h)
                h = self.from_spikes(s, h.shape, layer.conv, layer.bn)
            hs.append(h)
        for layer in m.middleblocks:
            h = self.res_block(layer, h)
        for layer in m.upblocks:
            if isinstance(layer, SpkResBlock):
                h = self.res_block(layer, concat(h, hs.pop()))
            else:
                s = self.population(layer.neuron, h)
                h = self.from_spikes(s, h.shape, layer.conv, layer.bn, upsample=2)
        return FloatGraph(tuple(self.populations), h, _host_stages(m, head_w, head_b), cfg.snn_steps,
                          cfg.diffusion_steps)


def _host_stages(m: SpikingUNet, head_w: torch.Tensor, head_b: torch.Tensor) -> HostStages:
    tail_scale, tail_shift = bn_affine(m.tail_bn)
    last_scale, last_shift = bn_affine(m.last_bn)
    tail = {
        "tail_bn_scale": tail_scale, "tail_bn_shift": tail_shift,
        "tail_conv_weight": m.tail_conv.weight.detach(), "tail_conv_bias": m.tail_conv.bias.detach(),
        # Conv3d with kernel (3, 3, 1) over [B, C, H, W, T] is a 2-d conv applied at every SNN step.
        "time_conv_weight": m.T_output_layer.weight.detach()[..., 0], "time_conv_bias": m.T_output_layer.bias.detach(),
        "last_bn_scale": last_scale, "last_bn_shift": last_shift,
    }
    return HostStages(head_w, head_b, {k: v.double().contiguous() for k, v in tail.items()}, MEMBRANE_DECAY)


def extract_graph(model: SpikingUNet) -> FloatGraph:
    """The float chip graph of a trained model (eval-mode BN statistics, the IF thresholds as set)."""
    check_supported(model)
    return _Walker(model).walk()


def temb_rows(expr: Expr, t: torch.Tensor) -> torch.Tensor:
    """The bias [B, C] of an expression at diffusion steps t [B]."""
    bias = expr.bias[None, :].expand(t.shape[0], -1)
    return bias if expr.temb is None else bias + expr.temb[t]


def evaluate_expr(expr: Expr, spikes: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """The float value of an expression at one SNN step; spikes[name] is [B, C, H, W]."""
    batch = t.shape[0]
    out = temb_rows(expr, t).to(torch.float64)[:, :, None, None].expand(batch, *expr.shape).clone()
    for term in expr.terms:
        c = term.weight.shape[0]
        out[:, term.out_offset:term.out_offset + c] += term.apply(spikes[term.source].double())
    return out


@dataclass
class FloatRun:
    """One float64 run of the chip graph: spikes and input currents per population, the readout."""
    spikes: dict[str, torch.Tensor]  # name -> [T, B, C, H, W] (float 0/1)
    currents: dict[str, torch.Tensor]  # name -> [T, B, C, H, W]
    membranes: dict[str, torch.Tensor]  # name -> [T, B, C, H, W], before the reset
    readout: torch.Tensor  # [T, B, C, H, W]
    eps: torch.Tensor


@torch.no_grad()
def simulate_float(graph: FloatGraph, x: torch.Tensor, t: torch.Tensor, observe) -> list[torch.Tensor]:
    """Step the float chip graph (float64, the IF dynamics of training) on x_t [B, C, H, W], t [B].

    `observe(population, snn_step, current, membrane, spikes)` sees every population's input current,
    membrane before the reset and spikes as they are made; nothing else is kept, so a caller that needs
    only summaries (calibration) holds one SNN step of the network, not all of them. Returns the
    readout's current at every SNN step."""
    head = head_current(graph.host, x).double()
    v = {p.name: torch.zeros(x.shape[0], *p.shape, dtype=torch.float64) for p in graph.populations}
    readout = []
    for step in range(graph.snn_steps):
        now: dict[str, torch.Tensor] = {}
        for pop in graph.populations:
            current = head if pop.host_input else evaluate_expr(pop.current, now, t)
            h = v[pop.name] * pop.keep + current  # keep 1 (IF): v * 1.0 is v exactly
            s = (h >= pop.threshold).double()
            v[pop.name] = h * (1 - s)
            now[pop.name] = s
            observe(pop.name, step, current, h, s)
        readout.append(evaluate_expr(graph.readout, now, t))
    return readout


@torch.no_grad()
def run_float(graph: FloatGraph, x: torch.Tensor, t: torch.Tensor) -> FloatRun:
    """Run the float chip graph on x_t [B, C, H, W], t [B], keeping every state of every SNN step."""
    spikes: dict[str, list] = {p.name: [] for p in graph.populations}
    currents: dict[str, list] = {p.name: [] for p in graph.populations}
    membranes: dict[str, list] = {p.name: [] for p in graph.populations}

    def record(name, _step, current, h, s):
        spikes[name].append(s)
        currents[name].append(current)
        membranes[name].append(h)

    h_seq = torch.stack(simulate_float(graph, x, t, record))
    return FloatRun({k: torch.stack(v_) for k, v_ in spikes.items()}, {k: torch.stack(v_) for k, v_ in currents.items()},
                    {k: torch.stack(v_) for k, v_ in membranes.items()}, h_seq, tail(graph.host, h_seq))
