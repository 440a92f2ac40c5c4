"""Calibration: the largest current and membrane of every population over the data the chip will meet.

It runs the trained SpikingUNet itself in float32, with forward hooks on its neuron modules, not the float64 chip
graph (`export.graph.simulate_float`): the graph composes the residual stream's synapses (2.4x the model's
multiply-accumulates) and float64 convolutions are several times slower than float32 ones on a CPU, which
made calibration most of a paper-sized compile. Why float32 is safe here:
  - the population of a neuron module is named after it (`export.graph`), and its input current and membrane
    are the graph's (the float64 graph reproduces the model spike for spike, tests/test_compiler.py);
  - float32 moves a peak by a relative ~1e-6, or by one synaptic weight where a membrane within rounding of
    the threshold flips a spike; a scale is 2x the peak over the range (quantize.HEADROOM), so either moves
    a scale in its last bits, far less than the quantized network's own deviation from the float one
    (spike agreement 0.87-0.93 per population on the shipped model). A scale that moves is not a bug: the
    chip file only has to be the one every back end runs, and the reference and simulator check that;
  - what guards the range is the overflow check after quantization (`export.compiler`), not the last bit
    of a peak.

A LIF population's current is the model's neuron input over tau (`export.graph` folds the 1/tau into the
current) and its membrane is the LIF's own (`_lif_scan`).

The host-driven population (the first, fed by the host's conv of x_t) meets x_t far outside the training data
on sampling chains that drift (|x_t| 50-120 on the shipped model's deterministic DDIM chains, against about
4.5 for noisy training images); its scale stays the one the training data set, and the host saturates its
current at a level that changes no spike (`export.chip.host_saturation`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from sddpm.neuron import LIF, SPIKING_NEURONS, _if_scan, _lif_scan, set_threshold_factor

from .errors import ExportInputError
from .quantize import Calibration

@torch.no_grad()
def calibrate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Calibration:
    """The ranges of every population over `batches` of (x_t, t), at the trained thresholds (factor 1)."""
    if not batches:
        raise ExportInputError("calibration needs at least one batch of (x_t, t)")
    model = copy.deepcopy(model).eval().float()
    set_threshold_factor(model, 1.0)  # scales come from the trained dynamics; the factor moves only vth
    names = {m: name for name, m in model.named_modules() if isinstance(m, SPIKING_NEURONS)}
    peak = {name: 0.0 for name in names.values()}  # max(|current|, |membrane|), what the scale must hold
    current, membrane = dict(peak), dict(peak)
    where: dict[str, tuple[int, int]] = {}  # population -> (batch, image) of its peak
    readout = [0.0]
    now = [0]  # the batch being run

    def keep(name: str, neuron: nn.Module, x_seq: torch.Tensor) -> None:
        """Running maxima of the population's input current [T, B, ...] (a LIF's x / tau) and of the membrane
        before the reset, as the neuron computes it; only one module's states are alive at a time (a max is
        exact in any order)."""
        h_seq = torch.empty_like(x_seq)
        if isinstance(neuron, LIF):
            _lif_scan(x_seq, neuron.tau, neuron.threshold, h_seq)
            x_seq = x_seq / neuron.tau
        else:
            _if_scan(x_seq, neuron.threshold, h_seq)
        per_image = torch.maximum(x_seq.abs().amax((0, 2, 3, 4)), h_seq.abs().amax((0, 2, 3, 4)))  # [B]
        current[name] = max(current[name], float(x_seq.abs().max()))
        membrane[name] = max(membrane[name], float(h_seq.abs().max()))
        image = int(per_image.argmax())
        if float(per_image[image]) > peak[name]:
            peak[name], where[name] = float(per_image[image]), (now[0], image)

    def keep_readout(_module, inputs):  # the tail's BN reads the last expression: the chip's readout
        readout[0] = max(readout[0], float(inputs[0].abs().max()))

    hooks = [m.register_forward_hook(lambda m, inputs, _s: keep(names[m], m, inputs[0])) for m in names]
    hooks.append(model.tail_bn.register_forward_pre_hook(keep_readout))
    samples, steps = 0, set()
    try:
        for now[0], (x, t) in enumerate(batches):
            model(x.float(), t)
            samples += x.shape[0]
            steps.update(int(v) for v in t)
    finally:
        for h in hooks:
            h.remove()
    distinct = sorted(set(where.values()))
    peak_inputs = tuple((batches[b][0][i:i + 1], batches[b][1][i:i + 1]) for b, i in distinct)
    peak_at = {name: distinct.index(at) for name, at in where.items()}
    return Calibration(current, membrane, readout[0], samples, tuple(sorted(steps)), peak_at, peak_inputs)
