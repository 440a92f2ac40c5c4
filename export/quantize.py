"""Quantize the float chip graph into a `ChipNetwork`, with scales from a calibration (`export.calibration`).

Scale of a population (float current per a-unit). It is the smallest scale that satisfies all of
  - threshold resolution: at most NOMINAL_THRESHOLD / THRESHOLD_UNITS, so the integer threshold is
    about 4096 and a threshold factor of 0.997 moves it by about 12;
  - range: HEADROOM x the largest input current and membrane value seen in calibration stay below
    2^17 a-units, so `a << 6` never wraps the 24-bit u and v never saturates;
  - bias range: the largest bias (constant + time embedding) fits a 13-bit mantissa with an
    exponent of at most 7.
Calibration only ever makes the scale coarser than the resolution bound: the chip wraps currents
that overflow instead of clipping them, which would be far worse than coarser steps.

Weights: per synapse, an exponent e >= 0 and 8-bit mantissas m = round(W / scale / 2^e), the
smallest e for which they fit. Thresholds: the float rule "spike iff v >= theta" on integer a-unit
voltages is "v > ceil(theta / scale) - 1", i.e. vth = ceil(theta / scale) - 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from sddpm.neuron import THRESHOLD as NOMINAL_THRESHOLD

from .chip import (BIAS_EXP_MAX, BIAS_MANT_MAX, CURRENT_LIMIT, HOST_INPUT_MAX, READOUT, V_PER_A,
                   WEIGHT_MANT_MAX, ChipHost, ChipNetwork, ChipPopulation, ChipReadout, ChipSynapse, check_ranges,
                   host_saturation, leak_dv)
from .graph import Expr, FloatGraph

THRESHOLD_UNITS = 2 ** 12  # a-units per nominal threshold at the finest scale
HEADROOM = 2.0  # calibration sees a sample of the inputs: leave a factor 2 of range unused


@dataclass(frozen=True)
class Calibration:
    """Largest magnitudes seen per population over the calibration data (float units); made by
    `export.calibration.calibrate`."""
    peak_current: dict[str, float]
    peak_membrane: dict[str, float]
    peak_readout: float
    samples: int
    diffusion_steps: tuple[int, ...]
    # Where each population's current or membrane peaked: population -> index into peak_inputs, the distinct
    # inputs (x_t [1, C, H, W], t [1]) of those peaks (`export.compiler.check_overflow` runs them).
    peak_at: dict[str, int] = field(default_factory=dict)
    peak_inputs: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


def _population_scale(peak: float, max_bias: float) -> float:
    return max(NOMINAL_THRESHOLD / THRESHOLD_UNITS,
               HEADROOM * peak / CURRENT_LIMIT,
               max_bias * V_PER_A / (BIAS_MANT_MAX * 2 ** BIAS_EXP_MAX))


def _quantize_bias(bias_v: np.ndarray) -> tuple[np.ndarray, int]:
    """Smallest exponent in [0, BIAS_EXP_MAX] whose 13-bit mantissas hold the bias; round half to even."""
    peak = float(np.abs(bias_v).max(initial=0.0))
    exp = 0
    while peak / 2 ** exp > BIAS_MANT_MAX + 0.5 and exp < BIAS_EXP_MAX:
        exp += 1
    return np.clip(np.rint(bias_v / 2 ** exp), -BIAS_MANT_MAX, BIAS_MANT_MAX).astype(np.int16), exp


def quantize_weight(weight: torch.Tensor, scale: float) -> tuple[np.ndarray, int]:
    """Float weights -> (int8 mantissas, exponent): integer weight = mant << exp ~ weight / scale."""
    w = weight.double().numpy() / scale
    peak = float(np.abs(w).max(initial=0.0))
    exp = max(0, math.ceil(math.log2(peak / WEIGHT_MANT_MAX))) if peak > 0 else 0
    return np.clip(np.rint(w / 2 ** exp), -WEIGHT_MANT_MAX, WEIGHT_MANT_MAX).astype(np.int8), exp


def quantize(graph: FloatGraph, calib: Calibration, model_config: dict, threshold_factor: float = 1.0) -> ChipNetwork:
    """The integer chip network of a float graph, with scales from `calib` and every threshold of the
    graph times `threshold_factor` (the threshold-guided strategy; the scales do not depend on it)."""
    pops, synapses, depth = [], [], {}
    for p in graph.populations:
        bias = p.current.bias_table()  # float units, [rows, C]
        peak = max(calib.peak_current[p.name], calib.peak_membrane[p.name])
        scale = _population_scale(peak, float(bias.abs().max()))
        bias_mant, bias_exp = _quantize_bias((bias * (V_PER_A / scale)).numpy())  # in v-units
        depth[p.name] = 1 + max((depth[t.source] for t in p.current.terms), default=-1)
        vth = math.ceil(p.threshold * threshold_factor / scale) - 1
        pops.append(ChipPopulation(p.name, p.shape, scale, vth, bias_mant, bias_exp, depth[p.name], p.host_input,
                                   dv=leak_dv(p.keep)))
        synapses += _synapses(p.current, p.name, scale, depth)
    r = graph.readout
    readout_scale = HEADROOM * max(calib.peak_readout, 1e-12) / CURRENT_LIMIT
    depth[READOUT] = 1 + max(depth[t.source] for t in r.terms)
    synapses += _synapses(r, READOUT, readout_scale, depth)
    readout = ChipReadout(r.shape, readout_scale, r.bias.float().numpy(),
                          None if r.temb is None else r.temb.float().numpy(), depth[READOUT])
    host = graph.host
    chip_host = ChipHost(host.head_weight.float().numpy(), host.head_bias.float().numpy(),
                         {k: v.float().numpy() for k, v in host.tail.items()}, host.membrane_decay)
    first = next(p for p in pops if p.host_input)
    max_bias = int(np.abs(first.bias_mant.astype(np.int64) << first.bias_exp).max(initial=0))
    # the hardware's limit where no spike-exact saturation exists (then the host warns when it clips)
    saturation = host_saturation(first.vth, max_bias, graph.snn_steps) or HOST_INPUT_MAX
    net = ChipNetwork(tuple(pops), tuple(synapses), snn_steps=graph.snn_steps, readout=readout,
                      host_input_max=saturation,
                      model_config=model_config, diffusion_steps=graph.diffusion_steps, host=chip_host,
                      threshold_factor=float(threshold_factor))
    check_ranges(net)
    return net


def _synapses(expr: Expr, target: str, scale: float, depth: dict[str, int]) -> list[ChipSynapse]:
    out = []
    for term in expr.terms:
        mant, exp = quantize_weight(term.weight, scale)
        out.append(ChipSynapse(term.source, target, mant, exp, term.stride, term.padding, term.upsample,
                               term.out_offset, depth[target] - depth[term.source]))
    return out
