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

from .chip import ChipNetwork
from .graph import extract_graph
from .quantize import calibrate, quantize
from .reference import run_reference

# Calibration default: a few batches of noisy training images at diffusion steps spread over [0, 1000).
CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 16


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
    """Fold BN, compose the analog paths, calibrate on `batches` at the trained thresholds, quantize
    with every threshold times `threshold_factor`. Warns, naming the population, if the integer network
    overflows a 24-bit state on the calibration data."""
    model = copy.deepcopy(model).eval().double()
    set_threshold_factor(model, 1.0)  # scales come from the trained dynamics; the factor moves only vth
    graph = extract_graph(model)
    net = quantize(graph, calibrate(graph, batches), model.cfg.to_dict(), threshold_factor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, t in batches:
            run_reference(net, x, t)
    for w in {str(w.message): w for w in caught}.values():
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return net
