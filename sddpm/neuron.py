"""The spiking neurons of the U-Net as plain functions with explicit state: SDDPM's integrate-and-fire (IF)
neuron and a leaky one (LIF).

Dynamics (SpikingJelly `IFNode`, v_reset = 0, hard reset, reset not detached), for t = 0..T-1:

    h[t] = v[t-1] + x[t]                  v[-1] = 0
    s[t] = H(h[t] - threshold)            H(z) = 1 if z >= 0 else 0
    v[t] = h[t] * (1 - s[t])

Backward uses the ATan surrogate dH/dz ~ alpha/2 / (1 + (pi/2 * alpha * z)^2) with alpha = 2,
and differentiates through the reset: dv/dh = (1 - s) - h * dH/dz.

`if_step` is the reference single step. `if_multistep` runs all T steps in one autograd node with a
hand-written backward over time: the same maths, but one node instead of ~6T small ones, which is
most of the neuron's cost in training (see benchmarks/bench_model.py).

LIF (SpikingJelly `LIFNode` with decay_input=True, v_reset = 0, hard reset, reset not detached) differs in
the charge only: the membrane decays toward 0 with time constant tau (in SNN steps) and the input is
scaled by 1 / tau too,

    h[t] = v[t-1] + (x[t] - v[t-1]) / tau   i.e. v[t-1] (1 - 1/tau) + x[t] / tau

written as SpikingJelly writes it, so that both round alike. Fire, reset and surrogate are the IF's.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from .config import LIF_TAU, ConfigError, ModelConfig

THRESHOLD = 1.0  # trained firing threshold of every neuron
ATAN_ALPHA = 2.0  # SpikingJelly surrogate.ATan default


def atan_surrogate_grad(z: torch.Tensor, alpha: float = ATAN_ALPHA) -> torch.Tensor:
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)


class _HeavisideATan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, alpha):
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * atan_surrogate_grad(z, ctx.alpha), None


def spike_fn(z: torch.Tensor, alpha: float = ATAN_ALPHA) -> torch.Tensor:
    """Heaviside step (spike where z >= 0) with the ATan surrogate gradient."""
    return _HeavisideATan.apply(z, alpha)


def if_step(x: torch.Tensor, v: torch.Tensor, threshold: float = THRESHOLD,
            alpha: float = ATAN_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """One IF step: returns (spikes, next membrane potential). Differentiable by autograd."""
    h = v + x
    s = spike_fn(h - threshold, alpha)
    return s, h * (1 - s)


def _surrogate_grad_into(sg: torch.Tensor, h: torch.Tensor, threshold: float, alpha: float) -> torch.Tensor:
    """atan_surrogate_grad(h - threshold, alpha) written into sg, the same ops (its scalar / tensor is
    reciprocal() * scalar): a step-sized scratch buffer allocated once stays in cache."""
    torch.sub(h, threshold, out=sg).mul_(math.pi / 2 * alpha).square_().add_(1).reciprocal_()
    if alpha != 2:  # alpha / 2 == 1 for the default: skip an exact multiply by one
        sg.mul_(alpha / 2)
    return sg


def _reset_grad_into(dv_dh: torch.Tensor, h: torch.Tensor, s: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
    """dv/dh through the hard reset v = h (1 - s), written into dv_dh: (1 - s) - h * sg."""
    return torch.sub(1, s, out=dv_dh).addcmul_(h, sg, value=-1)


def _if_scan(x_seq: torch.Tensor, threshold: float, h_seq: torch.Tensor | None = None) -> torch.Tensor:
    """The forward recursion over the T steps: returns the spikes, and writes h into h_seq if given.

    On a CPU the neuron costs memory traffic, not arithmetic: so three passes a step (compare, 1 - s,
    one fused multiply-add) and step-sized temporaries allocated once, not one per step.
    """
    steps = x_seq.shape[0]
    s_seq = torch.empty_like(x_seq)
    h = x_seq[0].clone() if h_seq is None else h_seq[0].copy_(x_seq[0])  # v[-1] = 0
    keep = torch.empty_like(h)
    for t in range(steps):
        torch.ge(h, threshold, out=s_seq[t])
        if t + 1 < steps:
            torch.sub(1, s_seq[t], out=keep)
            # h[t+1] = x[t+1] + h[t] * (1 - s[t]): the product is exactly h or +0, so this rounds like
            # v + x. Without h_seq the new h overwrites the old one in place.
            h = torch.addcmul(x_seq[t + 1], h, keep, out=h if h_seq is None else h_seq[t + 1])
    return s_seq


class _IFMultiStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_seq, threshold, alpha):
        h_seq = torch.empty_like(x_seq)
        s_seq = _if_scan(x_seq, threshold, h_seq)
        ctx.save_for_backward(h_seq, s_seq)
        ctx.threshold, ctx.alpha = threshold, alpha
        return s_seq

    @staticmethod
    def backward(ctx, grad_s):
        h_seq, s_seq = ctx.saved_tensors
        alpha = ctx.alpha
        grad_x = torch.empty_like(h_seq)
        # Step by step through two step-sized scratch buffers allocated once (they stay in cache). The
        # fused multiply-adds may round differently from mul-then-add: gradients agree to float rounding.
        sg, dv_dh = torch.empty_like(h_seq[0]), torch.empty_like(h_seq[0])
        for t in range(h_seq.shape[0] - 1, -1, -1):
            _surrogate_grad_into(sg, h_seq[t], ctx.threshold, alpha)
            torch.mul(grad_s[t], sg, out=grad_x[t])
            if t + 1 < h_seq.shape[0]:  # the final v feeds nothing
                # through the reset: grad_x[t] += grad_x[t+1] * dv/dh
                grad_x[t].addcmul_(grad_x[t + 1], _reset_grad_into(dv_dh, h_seq[t], s_seq[t], sg))
        return grad_x, None, None


def if_multistep(x_seq: torch.Tensor, threshold: float = THRESHOLD, alpha: float = ATAN_ALPHA) -> torch.Tensor:
    """Run T IF steps over x_seq [T, ...] from v = 0; returns the spike train [T, ...].

    The state lives only inside the call, so nothing needs resetting between forward passes.
    """
    if not torch.is_grad_enabled() or not x_seq.requires_grad:
        return _if_scan(x_seq, float(threshold))
    return _IFMultiStep.apply(x_seq, float(threshold), float(alpha))


class IF(nn.Module):
    """IF population over a time-major input [T, B, C, H, W]. Holds no state and no parameters.

    `threshold` is a plain attribute so the threshold-guided strategy (every threshold times a
    factor such as 0.997) can be set at inference with `set_threshold_factor`.
    """

    def __init__(self, threshold: float = THRESHOLD, alpha: float = ATAN_ALPHA):
        super().__init__()
        self.threshold = float(threshold)
        self.alpha = float(alpha)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return if_multistep(x_seq, self.threshold, self.alpha)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, alpha={self.alpha}"


def lif_step(x: torch.Tensor, v: torch.Tensor, tau: float = LIF_TAU, threshold: float = THRESHOLD,
             alpha: float = ATAN_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """One LIF step: returns (spikes, next membrane potential). Differentiable by autograd."""
    h = v + (x - v) / tau
    s = spike_fn(h - threshold, alpha)
    return s, h * (1 - s)


def _lif_scan(x_seq: torch.Tensor, tau: float, threshold: float, h_seq: torch.Tensor) -> torch.Tensor:
    """The forward recursion over the T steps: returns the spikes and writes h into h_seq."""
    s_seq = torch.empty_like(x_seq)
    v = torch.zeros_like(x_seq[0])
    keep = torch.empty_like(v)
    for t in range(x_seq.shape[0]):
        # (x - v) / tau + v rounds as SpikingJelly's v + (x - v) / tau: a sum is the same in either order
        h = torch.sub(x_seq[t], v, out=h_seq[t]).div_(tau).add_(v)
        torch.ge(h, threshold, out=s_seq[t])
        torch.mul(h, torch.sub(1, s_seq[t], out=keep), out=v)
    return s_seq


class _LIFMultiStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_seq, tau, threshold, alpha):
        h_seq = torch.empty_like(x_seq)
        s_seq = _lif_scan(x_seq, tau, threshold, h_seq)
        ctx.save_for_backward(h_seq, s_seq)
        ctx.tau, ctx.threshold, ctx.alpha = tau, threshold, alpha
        return s_seq

    @staticmethod
    def backward(ctx, grad_s):
        h_seq, s_seq = ctx.saved_tensors
        # grad_h[t] = grad_s[t] * sg[t] + grad_h[t+1] * dh[t+1]/dv[t] * dv[t]/dh[t], where
        # dh[t+1]/dv[t] = 1 - 1/tau (the leak) and dv/dh = (1 - s) - h * sg (through the reset, as IF);
        # then grad_x = grad_h / tau, since h[t] takes x[t] / tau.
        grad_h = torch.empty_like(h_seq)
        sg, dv_dh = torch.empty_like(h_seq[0]), torch.empty_like(h_seq[0])
        for t in range(h_seq.shape[0] - 1, -1, -1):
            _surrogate_grad_into(sg, h_seq[t], ctx.threshold, ctx.alpha)
            torch.mul(grad_s[t], sg, out=grad_h[t])
            if t + 1 < h_seq.shape[0]:  # the final v feeds nothing
                grad_h[t].addcmul_(grad_h[t + 1], _reset_grad_into(dv_dh, h_seq[t], s_seq[t], sg),
                                   value=1 - 1 / ctx.tau)
        return grad_h.div_(ctx.tau), None, None, None


def lif_multistep(x_seq: torch.Tensor, tau: float = LIF_TAU, threshold: float = THRESHOLD,
                  alpha: float = ATAN_ALPHA) -> torch.Tensor:
    """Run T LIF steps over x_seq [T, ...] from v = 0; returns the spike train [T, ...].

    One autograd node with a hand-written backward over time, as `if_multistep`: `lif_step` in a loop gives
    the same spikes and gradients to float rounding in 2.4x the time (forward and backward of [4, 32, 32, 32,
    32] on one core: 30 ms against 12.6 ms, and 10 ms for IF).
    """
    if not torch.is_grad_enabled() or not x_seq.requires_grad:
        return _lif_scan(x_seq, float(tau), float(threshold), torch.empty_like(x_seq))
    return _LIFMultiStep.apply(x_seq, float(tau), float(threshold), float(alpha))


class LIF(nn.Module):
    """LIF population over a time-major input [T, B, C, H, W]. Holds no state and no parameters: tau is
    fixed, so the state_dict keys are the IF model's (the official Spk_UNet's).

    Not a subclass of IF on purpose: code that maps IF populations (the chip compiler, the ONNX unrolling)
    must not take a LIF for one.
    """

    def __init__(self, tau: float = LIF_TAU, threshold: float = THRESHOLD, alpha: float = ATAN_ALPHA):
        super().__init__()
        self.tau = float(tau)
        self.threshold = float(threshold)
        self.alpha = float(alpha)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return lif_multistep(x_seq, self.tau, self.threshold, self.alpha)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, threshold={self.threshold}, alpha={self.alpha}"


SPIKING_NEURONS = (IF, LIF)


def neuron_factory(cfg: ModelConfig) -> Callable[[], nn.Module]:
    """What builds one population of the neuron that `cfg.neuron` names (with `cfg.tau` for LIF)."""
    return functools.partial(LIF, cfg.tau) if cfg.neuron == "lif" else IF


def set_threshold_factor(model: nn.Module, factor: float) -> None:
    """Threshold-guided strategy: every neuron's threshold becomes THRESHOLD * factor (1.0 restores training)."""
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"threshold factor must be a positive finite number, got {factor!r}")
    for module in model.modules():
        if isinstance(module, SPIKING_NEURONS):
            module.threshold = THRESHOLD * float(factor)
