"""Compile a trained SpikingUNet into a Loihi 2 chip network: rewrite, calibrate, quantize, check.

    net = compile_model(model, calibration_batches(images, schedule), threshold_factor=0.997)
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from sddpm.data import to_model_range
from sddpm.neuron import set_threshold_factor
from sddpm.schedule import NoiseSchedule

from .calibration import calibrate
from .chip import CURRENT_LIMIT, ChipNetwork
from .graph import extract_graph
from .quantize import HEADROOM, Calibration, quantize
from .reference import run_reference

# Calibration default: a few batches of noisy training images at diffusion steps spread over [0, 1000).
CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 16
# `check_overflow` runs a population's peak input when its float peak lies within this factor of the range:
# twice HEADROOM, so every population whose scale the range set is checked, and those with room to spare not.
CHECKED_MARGIN = 2 * HEADROOM


def calibration_batches(images_u8: torch.Tensor, schedule: NoiseSchedule, batches: int = CALIBRATION_BATCHES,
                        batch_size: int = CALIBRATION_BATCH_SIZE, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noisy training images x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with t spread evenly over the
    schedule (every batch covers the whole range), from a seeded choice of images and noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        index = torch.randint(images_u8.shape[0], (batch_size,), generator=gen)
        x0 = to_model_range(images_u8[index])
        t = ((torch.arange(batch_size) + (b + 0.5) / batches) * schedule.steps / batch_size).long()
        t = t.clamp(0, schedule.steps - 1)
        out.append((schedule.q_sample(x0, t, torch.randn(x0.shape, generator=gen)), t))
    return out


@torch.no_grad()
def compile_model(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                  threshold_factor: float = 1.0) -> ChipNetwork:
    """Fold BN, compose the analog paths, calibrate on `batches` at the trained thresholds, quantize with every
    threshold times `threshold_factor`. Warns, naming the population, if the integer network overflows a 24-bit state
    at the calibration inputs where a population near its range peaked (`check_overflow`)."""
    exact = copy.deepcopy(model).eval().double()
    set_threshold_factor(exact, 1.0)  # the graph's thresholds are the trained ones; the factor moves only vth
    graph = extract_graph(exact)  # first: it refuses a model it cannot map, naming the layers
    calib = calibrate(model, batches)
    net = quantize(graph, calib, model.cfg.to_dict(), threshold_factor)
    check_overflow(net, calib)
    return net


def check_overflow(net: ChipNetwork, calib: Calibration) -> None:
    """Run the integer reference, as one batch, on the calibration inputs at which the populations near their
    range peaked, and pass on its overflow warnings, each once.

    The rule: a population whose float peak (current or membrane, `Calibration`) lies within a factor
    CHECKED_MARGIN of the 24-bit range at its scale (|peak| / scale > CURRENT_LIMIT / CHECKED_MARGIN a-units) is
    checked at the input where that peak occurred (`Calibration.peak_at`); the others are not checked. Why:
    the integer network overflows a population only where its current or membrane exceeds the float one by
    that margin, and the input that brought the float value nearest the range is where that is nearest too.
    A scale set by the range leaves exactly HEADROOM (2); one set by the threshold resolution or the bias often
    leaves far more (the ch 128 benchmark model: 12-60x for every population but the host-driven one). It is a
    check of the calibration, not a proof for every input: the reference and the simulator warn at run time on
    any input that overflows.
    Rejected: a second pass over every calibration batch (as long as calibration itself, longer at ch 128 than
    the whole compile may take); and a bound from the integer weights alone (sum |W| per output channel, T steps
    of it for the membrane), which rules out a wrap of u in every population of the shipped model but a
    saturation of v in only 5 of its 27, and nothing in any of the 51 at ch 128: summed worst cases lie 2-18x
    above what the networks reach."""
    near = sorted({calib.peak_at[p.name] for p in net.populations
                   if max(calib.peak_current[p.name], calib.peak_membrane[p.name]) / p.scale
                   > CURRENT_LIMIT / CHECKED_MARGIN})
    if not near:
        return
    x = torch.cat([calib.peak_inputs[i][0] for i in near])
    t = torch.cat([calib.peak_inputs[i][1] for i in near])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_reference(net, x, t)
    for w in {str(w.message): w for w in caught}.values():
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
