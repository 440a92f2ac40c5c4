"""Calibration: the largest current and membrane of every population over the data the chip will meet.

It runs the trained SpikingUNet itself in float32, with forward hooks on its IF modules, not the float64 chip
graph (`export.graph.simulate_float`): the graph composes the residual stream's synapses (2.4x the model's
multiply-accumulates) and float64 convolutions are several times slower than float32 ones on a CPU, which
made calibration most of a paper-sized compile. Why float32 is safe here:
  - the population of an IF module is named after it (`export.graph`), and its input current and membrane
    are the graph's (the float64 graph reproduces the model spike for spike, tests/test_compiler.py);
  - float32 moves a peak by a relative ~1e-6, or by one synaptic weight where a membrane within rounding of
    the threshold flips a spike; a scale is 2x the peak over the range (quantize.HEADROOM), so either moves
    a scale in its last bits, far less than the quantized network's own deviation from the float one
    (spike agreement 0.87-0.93 per population on the shipped model). A scale that moves is not a bug: the
    chip file only has to be the one every back end runs, and the reference and simulator check that;
  - what guards the range is the overflow check after quantization (`export.compiler`), not the last bit
    of a peak.

The host-driven population (the first, fed by the host's conv of x_t) is also calibrated on x_t along short
seeded DDIM chains of the float model (`chain_batches`): noisy training images are not what sampling gives
it. Deterministic DDIM chains of a model that predicts eps imperfectly drift far outside the data range
(|x_t| 50-120 for the shipped model, against about 4.5 for any noisy training image), and a constant negative
current accumulates over the T SNN steps until v saturates. Those x_t are what `sddpm verify` and the
samplers feed the chip, so the scale must hold them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from sddpm.neuron import IF, _if_scan, set_threshold_factor
from sddpm.samplers import ddim_step, ddim_timesteps
from sddpm.schedule import NoiseSchedule

from .errors import ExportInputError
from .quantize import Calibration

# The chains the host-driven population is calibrated on: a few images, a few DDIM steps (eta 0, no
# clipping: the chain `sddpm verify` checks, and the one that drifts farthest; DDPM with clipped x0 stays in
# the data range). Short chains drift as far as long ones (the shipped model: 10 steps reach |x_t| 65-91,
# 100 steps 51-61), so a few model calls cover the drift. Seed 1, not the ladder's 0, so a verification
# does not check the chip on the very states it was calibrated on.
CHAIN_IMAGES = 2
CHAIN_STEPS = 10
CHAIN_SEED = 1


@torch.no_grad()
def chain_batches(model: nn.Module, schedule: NoiseSchedule, images: int = CHAIN_IMAGES, steps: int = CHAIN_STEPS,
                  seed: int = CHAIN_SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, t) at every step of `images` deterministic float DDIM chains of `steps` steps from seeded noise
    (`sddpm.samplers.ddim_sample`'s steps at eta 0, through its `ddim_step`)."""
    cfg = model.cfg
    x = torch.randn(images, cfg.img_ch, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed))
    seq, ab = ddim_timesteps(schedule.steps, steps), schedule.alphas_bar
    out = []
    for i in range(len(seq) - 1, -1, -1):
        t = torch.full((images,), seq[i], dtype=torch.long)
        out.append((x, t))
        if i > 0:  # the last state's prediction would make the image, which no population sees
            x = ddim_step(x, model(x, t), float(ab[seq[i]]), float(ab[seq[i - 1]]))
    return out


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
              schedule: NoiseSchedule | None = None) -> Calibration:
    """The ranges of every population over `batches` of (x_t, t), at the trained thresholds (factor 1); with
    a `schedule`, the host-driven population's also over the x_t of `chain_batches` on it."""
    if not batches:
        raise ExportInputError("calibration needs at least one batch of (x_t, t)")
    model = copy.deepcopy(model).eval().float()
    set_threshold_factor(model, 1.0)  # scales come from the trained dynamics; the factor moves only vth
    names = {m: name for name, m in model.named_modules() if isinstance(m, IF)}
    peak = {name: 0.0 for name in names.values()}  # max(|current|, |membrane|), what the scale must hold
    current, membrane = dict(peak), dict(peak)
    where: dict[str, tuple[int, int]] = {}  # population -> (batch, image) of its peak
    readout = [0.0]
    now = [0]  # the batch being run

    def keep(name: str, x_seq: torch.Tensor, threshold: float) -> None:
        """Running maxima of the input current x_seq [T, B, ...] and of the membrane before the reset, as the
        neuron computes it; only one module's states are alive at a time (a max is exact in any order)."""
        h_seq = torch.empty_like(x_seq)
        _if_scan(x_seq, threshold, h_seq)
        per_image = torch.maximum(x_seq.abs().amax((0, 2, 3, 4)), h_seq.abs().amax((0, 2, 3, 4)))  # [B]
        current[name] = max(current[name], float(x_seq.abs().max()))
        membrane[name] = max(membrane[name], float(h_seq.abs().max()))
        image = int(per_image.argmax())
        if float(per_image[image]) > peak[name]:
            peak[name], where[name] = float(per_image[image]), (now[0], image)

    def keep_readout(_module, inputs):  # the tail's BN reads the last expression: the chip's readout
        readout[0] = max(readout[0], float(inputs[0].abs().max()))

    hooks = [m.register_forward_hook(lambda m, inputs, _s: keep(names[m], inputs[0], m.threshold)) for m in names]
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
    inputs = list(batches)
    if schedule is not None:
        # The host-driven population's current is the head conv + BN of x_t, the same at every SNN step: its
        # peaks on the chains need only that, not a pass of the whole network.
        for x, t in chain_batches(model, schedule):
            now[0] = len(inputs)
            inputs.append((x, t))
            c = model.bn(model.conv(x))
            keep(names[model.neuron], c.expand(model.timestep, *c.shape), model.neuron.threshold)
    distinct = sorted(set(where.values()))
    peak_inputs = tuple((inputs[b][0][i:i + 1], inputs[b][1][i:i + 1]) for b, i in distinct)
    peak_at = {name: distinct.index(at) for name, at in where.items()}
    return Calibration(current, membrane, readout[0], samples, tuple(sorted(steps)), peak_at, peak_inputs)
