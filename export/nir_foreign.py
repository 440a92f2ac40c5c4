"""Compile a NIR graph written by another tool (snnTorch, Norse, Sinabs, ...) to Loihi 2 integers.

NIR leaves time to the backend. This is our documented discretization, step by step (one chip step = dt):

- Nested `NIRGraph` nodes are spliced in (`export.nir_foreign_paths`). Every route from a spike source (an
  `Input`, which emits the given 0/1 trains, or a spiking neuron node) through linear nodes (`Affine`,
  `Linear`, `Conv2d`, `SumPool2d`, `AvgPool2d`, `Flatten`, `Scale`, `Delay`) to a neuron node is one
  synapse: its linear map composed into one convolution or one dense matrix, its `Delay` nodes k whole steps.
  Several edges into a node sum (NIR's meaning); the linear nodes' biases, through what follows them, are
  the node's constant input.
- The libraries run every layer within the step; the chip's synapses take a step each. A node sits `depth`
  synapses deep (the longest chain from an Input), its step t is our step t + depth, and a synapse delays by
  depth(target) - depth(source) + k (+ 1 where it closes a cycle: a recurrent weight reads the previous step),
  so every route into a node delivers the same library step.
- `IF` (v' = R I): v += R I every step. IF has no time constant, so dt does not enter (as in Sinabs and
  the NIR paper's Lava converter).
- `LIF` (tau v' = v_leak - v + R I), forward Euler: v = (1 - dt/tau) v + dt/tau (v_leak + R I).
- `CubaLIF`: I = (1 - dt/tau_syn) I + dt/tau_syn w_in S, then v = (1 - dt/tau_mem) v + dt/tau_mem
  (v_leak + R I) with the *updated* I (Lava's order: the current first, the voltage from the new current).
- `Threshold`: a spike wherever the input exceeds the threshold, no memory (v = the input).
- A neuron spikes when v > v_threshold and resets to v_reset, which must be 0 (Lava resets to 0).
- `LI` (as LIF) and `I` (as IF) never spike: membrane readouts, whose v after each step is the output.
- Constant drive (biases, v_leak) switches on at the node's `bias_start`: by default its depth, the step
  the library's step 0 reaches it. A neuron node's metadata `bias_start` (an integer) in the source file sets
  it instead (0: from the first step).

What the libraries' files mean, and the options that read them as written (`Discretization`):
- Norse's `to_nir(dt=d)` writes tau = d / tau_mem_inv (seconds times d) and no CubaLIF w_in, while its
  LIFCell's current jumps by the weight (then integrates into v, then decays: our order). `norse_dt=d`
  reads tau / d as the time constant and a CubaLIF's current gain as 1 (its w_in must be NIR's default
  1). Without it a Norse file is refused at the default dt (dt/tau > 1).
- Sinabs decays by exp(-dt/tau) with input gain 1 - exp(-dt/tau), its tau counted in steps (dt = 1).
  `decay="exp"` replaces forward Euler's 1 - dt/tau and dt/tau by those.
- snnTorch writes v_reset = 0 whatever its reset_mechanism, and the file cannot tell: it is read as NIR
  says (reset to 0), which is snnTorch's "zero" reset of Leaky (and of RLeaky with reset_delay=False).

Lava's LIF runs this with du = round(4096 dt/tau_syn) - 1 (4095, no current memory, for IF, LIF and
Threshold), dv = round(4096 dt/tau_mem) (0 for IF, 4096 for Threshold); the gains dt/tau_syn w_in and
dt/tau_mem R fold into the weights, v_leak dt/tau_mem and a constant input into Lava's bias (into v). Into
a CubaLIF the constant enters the decaying current, which Lava's bias cannot: an always-on population
(`<node>.bias`, one spike every step from the step before the node's bias start) delivers it through a
synapse whose weights are the constant. One integer a-unit stands for `scale` = v_threshold / VTH_A of the
float voltage, so the threshold is VTH_A a-units; a readout's scale keeps its largest reachable |v| at
VTH_MAX, its threshold (`_readout_scale`). Weights become 8-bit mantissas with an exponent per synapse,
biases 13-bit mantissas with an exponent. Lava's LIF takes scalar parameters, so every neuron of a node must
share them; what does not map is refused by node name (`ForeignGraphError`).

Checks. `read_foreign` (`export/nir_foreign_read.py`) names every node of a file with no or an unknown type, a missing or unknown field,
and every edge to no node; `check_graph` (`export/nir_foreign_check.py`) then every field that is missing, not numeric, NaN/inf, not
positive (tau, tau_syn, tau_mem, v_threshold) or of a shape that does not chain. After quantization a
weight above one spike's 2^17 a-units or a bias beyond its exponent is an error, and a synapse whose
weights all round to 0, a node that can never spike, or a decay that rounds to none is "degenerate": an
error suggesting a dt that works, or a `DegenerateGraphWarning` with `allow_degenerate`. Each error
lists every problem found, not only the first.

The output is a chip network (`export.chip`), the same intermediate representation `sddpm compile` writes,
in the same file format: every neuron node a population (its bias per channel, on from its bias_start; a
readout `voltage_out`), every route a chip synapse of its delay, every Input a spike input and every Output an
output; the discretization is recorded in the network's `source`. `run_discrete` runs the same
discretization in float64, without quantization: the yardstick for the integers.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import asdict

import nir
import numpy as np
import torch

from .chip import (BIAS_EXP_MAX, BIAS_MANT_MAX, CURRENT_LIMIT, DECAY_UNITY, V_PER_A, VTH_MAX, WEIGHT_MANT_MAX, ChipInput,
                   ChipNetwork, ChipPopulation, ChipSynapse, check_ranges, leak_dv, one_or_pair)
from .nir_chip import write_chip_nir
from .nir_foreign_check import (DT_CANDIDATES, NO_CURRENT_MEMORY, VTH_A, CheckedGraph, DegenerateGraphWarning,
                                Discretization, ForeignGraphError, NeuronMap, check_graph, raise_problems)
from .nir_foreign_paths import linear_part


def _mant_exp(values: np.ndarray, mant_max: int) -> tuple[np.ndarray, int]:
    """values ~ mant << exp with |mant| <= mant_max and the smallest exp >= 0 that fits (round half even).
    values must be finite (checked before)."""
    peak = float(np.abs(values).max(initial=0.0))
    exp = max(0, math.ceil(math.log2(peak / mant_max))) if peak > mant_max else 0
    while np.abs(np.round(values / 2.0 ** exp)).max(initial=0) > mant_max:
        exp += 1  # rounding pushed the peak over the limit
    return np.round(values / 2.0 ** exp).astype(np.int64), exp


def _decays(m: NeuronMap) -> tuple[int, int]:
    """Lava's du and dv (12-bit decays: Lava multiplies u by 4096 - (du + 1) and v by 4096 - dv)."""
    du = NO_CURRENT_MEMORY if m.current_keep == 0 else round(DECAY_UNITY * (1 - m.current_keep)) - 1
    return du, leak_dv(m.voltage_keep)


def _quantize(checked: CheckedGraph) -> tuple[dict, list[ChipSynapse], list[str], list[str]]:
    """The chip populations and synapses, the problems that make them unrepresentable, and what degenerates."""
    maps = checked.maps
    problems, degenerate = [], []
    scale = {name: m.threshold / VTH_A if math.isfinite(m.threshold) else _readout_scale(checked, name)
             for name, m in maps.items()}  # float voltage per a-unit
    synapses = _quantize_synapses(checked, scale, problems, degenerate)
    bias_v, always_on = _constant_drive(checked, scale, problems)
    synapses += always_on
    pops = _quantize_neurons(checked, scale, bias_v, problems, degenerate)
    pops.update(_always_on_populations(checked, always_on))
    if not problems:
        degenerate += _silent(pops, synapses, checked)
    return pops, synapses, problems, degenerate


# A readout without a leak (I) is scaled so that its largest possible input takes this many steps to reach the top
# of its range: enough for a classifier's window; beyond it v saturates (on the simulator and on Lava alike).
READOUT_FULL_DRIVE_STEPS = 1024


def _readout_scale(checked: CheckedGraph, name: str) -> float:
    """A readout's float voltage per a-unit: its largest reachable |v| at VTH_MAX a-units, so that v stays inside
    24 bits and below the threshold it must never cross. Per step |v| grows by at most the sum of |weights| into a
    neuron from every source firing (times the gain), plus its constant drive and leak; an LI's v is bounded by
    that over dt/tau, an I's after READOUT_FULL_DRIVE_STEPS steps."""
    m = checked.maps[name]
    per_step = np.zeros(checked.shapes[name][0])
    for cp in checked.paths:
        if cp.path.target == name:
            w = np.abs(cp.composed.weight)  # a row per target neuron (dense) or channel (conv)
            per_step = per_step + w.reshape(w.shape[0], -1).sum(1)
    drive = np.abs(checked.drive[name]).reshape(per_step.shape[0], -1).max(1)
    step = float((m.gain * (per_step + drive)).max()) + abs(m.leak_bias)
    reach = step / (1 - m.voltage_keep) if m.voltage_keep < 1 else step * READOUT_FULL_DRIVE_STEPS
    return max(reach, np.finfo(np.float64).tiny) / VTH_MAX


def _weights(name: str, w_int: np.ndarray, target: str, problems: list[str],
             degenerate: list[str]) -> tuple[np.ndarray, int] | None:
    """Float weights in a-units per spike as 8-bit mantissas and an exponent, or None with the problem recorded."""
    if not np.all(np.isfinite(w_int)):
        problems.append(f"synapse {name!r}: weights times the gain of {target!r} over its threshold overflow float64")
        return None
    mant, exp = _mant_exp(w_int, WEIGHT_MANT_MAX)
    peak = int(np.abs(mant).max(initial=0)) << exp  # Python ints: a huge exponent must not overflow
    if peak >= CURRENT_LIMIT:
        problems.append(f"synapse {name!r}: weights up to {peak} a-units ({peak / VTH_A:.3g} thresholds of "
                        f"{target!r}); one spike must stay below {CURRENT_LIMIT} a-units (a << 6 inside u's 24 bits)")
        return None
    if not np.any(mant) and np.any(w_int):
        degenerate.append(f"synapse {name!r}: all {mant.size} weights round to 0 (the largest is "
                          f"{np.abs(w_int).max():.3g} of an a-unit, 1/{VTH_A} of {target!r}'s threshold)")
    return mant, exp


def _quantize_synapses(checked: CheckedGraph, scale: dict, problems: list[str],
                       degenerate: list[str]) -> list[ChipSynapse]:
    """Each path as a chip synapse of its delay, in name order (a file's node order is HDF5's, not the writer's)."""
    synapses = []
    for cp in sorted(checked.paths, key=lambda cp: cp.path.name):
        p, c = cp.path, cp.composed
        quantized = _weights(p.name, c.weight * checked.maps[p.target].gain / scale[p.target], p.target, problems,
                             degenerate)
        if quantized is None:
            continue
        mant, exp = quantized
        synapses.append(ChipSynapse(p.source, p.target, mant.astype(np.int8), exp, upsample=1, out_offset=0,
                                    delay=cp.delay, flatten=c.flatten, **_geometry(c)))
    return synapses


def _geometry(c) -> dict:
    """A convolution's stride, padding and dilation (one int where H and W agree) and groups; a dense synapse's
    trivial ones."""
    if c.dense:
        return {"stride": 1, "padding": 0}
    return {k: one_or_pair(c.geometry[k]) for k in ("stride", "padding", "dilation")} | {"groups": c.geometry["groups"]}


ALWAYS_ON_SUFFIX = ".bias"  # the population that drives a CubaLIF's constant input


def _per_channel(name: str, drive: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """A constant input per channel (per neuron for a 1-D node), or None where it varies across positions."""
    rows = drive.reshape(drive.shape[0], -1)
    if not np.all(rows == rows[:, :1]):
        problems.append(f"node {name!r}: its constant input (the biases before it) varies across positions "
                        f"(a padded convolution after the bias?); the chip's bias is one value per channel")
        return None
    return rows[:, 0]


def _constant_drive(checked: CheckedGraph, scale: dict, problems: list[str]) -> tuple[dict, list[ChipSynapse]]:
    """Each neuron node's constant drive as Lava's bias (v-units per channel) where it enters v; where it enters
    a decaying current (CubaLIF), as a synapse from an always-on population (one spike every step), which
    delivers the same constant into u that the source graph adds to its current."""
    bias_v, always_on = {}, []
    for name, m in checked.maps.items():
        leak = np.full(checked.shapes[name][0], m.leak_bias / scale[name] * V_PER_A)
        drive = _per_channel(name, checked.drive[name], problems)
        if drive is None:
            continue
        if m.current_keep == 0 or not np.any(drive):
            bias_v[name] = leak + drive * m.gain / scale[name] * V_PER_A
            continue
        bias_v[name] = leak
        shape = checked.shapes[name]
        source = name + ALWAYS_ON_SUFFIX
        if source in checked.shapes or checked.bias_start[name] < 1:
            problems.append(f"node {name!r}: its constant input into the current needs an always-on population "
                            + (f"named {source!r}, a name the graph uses" if source in checked.shapes else
                               "that starts a step before it (bias_start >= 1)"))
            continue
        quantized = _weights(source, drive * m.gain / scale[name], name, problems, [])
        if quantized is None:
            continue
        mant, exp = quantized
        # one input neuron and a dense weight per target neuron, or one input neuron per position and a 1 x 1
        # convolution with a weight per channel
        weight = mant.reshape(-1, 1) if len(shape) == 1 else mant.reshape(-1, 1, 1, 1)
        always_on.append(ChipSynapse(source, name, weight.astype(np.int8), exp, stride=1, padding=0, upsample=1,
                                     out_offset=0, delay=1))
    return bias_v, always_on


# The always-on population: IF with the least threshold (1 a-unit, 64 v-units) and a bias just above it, so
# that v = 65 > 64 every step, then the reset.
ALWAYS_ON_VTH = 1
ALWAYS_ON_BIAS = ALWAYS_ON_VTH * V_PER_A + 1


def _always_on_populations(checked: CheckedGraph, synapses: list[ChipSynapse]) -> dict[str, ChipPopulation]:
    pops = {}
    for syn in synapses:
        shape = checked.shapes[syn.target]
        pops[syn.source] = ChipPopulation(syn.source, (1,) if len(shape) == 1 else (1, *shape[1:]), 1.0,
                                          ALWAYS_ON_VTH, np.full((1, 1), ALWAYS_ON_BIAS, dtype=np.int16), 0,
                                          checked.bias_start[syn.target] - 1)
    return pops


def _quantize_neurons(checked: CheckedGraph, scale: dict, bias_v: dict, problems: list[str],
                      degenerate: list[str]) -> dict[str, ChipPopulation]:
    """Each neuron node as a chip population (Lava's LIF integers)."""
    pops = {}
    for name, m in checked.maps.items():
        if name not in bias_v:
            continue
        node = checked.nodes[name]
        if not np.all(np.isfinite(bias_v[name])):
            problems.append(f"node {name!r}: its bias (v_leak and synapse biases over the threshold) overflows")
            continue
        b_mant, b_exp = _mant_exp(np.round(bias_v[name]), BIAS_MANT_MAX)
        if b_exp > BIAS_EXP_MAX:
            problems.append(f"node {name!r}: bias up to {np.abs(bias_v[name]).max():.4g} v-units needs exponent "
                            f"{b_exp} > {BIAS_EXP_MAX} (a 13-bit mantissa, a 3-bit exponent)")
            continue
        du, dv = _decays(m)
        tau = "tau_mem" if isinstance(node, nir.CubaLIF) else "tau"
        if 0 < m.voltage_keep < 1 and dv == 0:
            degenerate.append(f"node {name!r}: dt/{tau} = {1 - m.voltage_keep:.3g} rounds to dv = 0 of 4096: the "
                              f"leak rounds to none")
        if m.current_keep != 0 and du + 1 == 0:
            degenerate.append(f"node {name!r}: dt/tau_syn = {1 - m.current_keep:.3g} rounds to du = -1 (a decay of "
                              f"0 in 4096): the current's decay rounds to none")
        readout = not math.isfinite(m.threshold)
        pops[name] = ChipPopulation(name, checked.shapes[name], scale[name], VTH_MAX if readout else VTH_A,
                                    b_mant[None].astype(np.int16), b_exp, checked.bias_start[name], du=du, dv=dv,
                                    voltage_out=readout)
    return pops


def _silent(pops: dict[str, ChipPopulation], synapses: list[ChipSynapse], checked: CheckedGraph) -> list[str]:
    """Neuron nodes that can never spike, whatever the input: their voltage has an upper bound at or below
    the threshold. Every source fires at most once per step, so a neuron's input a (a-units) is at most
    the sum of its positive weights from sources that can fire, A. Lava's u decays by c_u = (4095 - du)/4096
    (rounded toward zero), so u <= 64 A / (1 - c_u), unbounded when c_u = 1 and A > 0; v decays by
    c_v = (4096 - dv)/4096, so v <= (u_max + bias) / (1 - c_v), unbounded when c_v = 1 and u_max + bias > 0.
    A source that can never spike is then dropped and the bound taken again, until nothing changes."""
    can_fire = set(checked.inputs) | {name for name, pop in pops.items() if not pop.voltage_out}
    while True:
        bound = {}
        for name in checked.maps:
            pop = pops[name]
            if pop.voltage_out:
                continue
            drive = np.zeros(pop.shape)
            for syn in synapses:
                if syn.target == name and syn.source in can_fire:
                    w = np.clip(syn.integer_weight(), 0, None).astype(np.float64)
                    per_out = w.reshape(w.shape[0], -1).sum(1)  # a conv's bound ignores its padding
                    drive = drive + per_out.reshape((-1,) + (1,) * (drive.ndim - 1))
            keep_u, keep_v = (DECAY_UNITY - 1 - pop.du) / DECAY_UNITY, (DECAY_UNITY - pop.dv) / DECAY_UNITY
            u_max = np.where(drive > 0, np.inf, 0.0) if keep_u == 1 else V_PER_A * drive / (1 - keep_u)
            bias = (pop.bias_mant[0].astype(np.float64) * 2.0 ** pop.bias_exp).reshape((-1,) + (1,) * (drive.ndim - 1))
            total = u_max + bias
            v_max = np.where(total > 0, np.inf, 0.0) if keep_v == 1 else np.maximum(total, 0) / (1 - keep_v)
            bound[name] = float(v_max.max())
        silent = {n for n, v in bound.items() if v <= VTH_A * V_PER_A}
        if not silent & can_fire:
            return [f"node {n!r}: can never spike (its voltage stays at or below {bound[n]:.4g} v-units, the "
                    f"threshold is {VTH_A * V_PER_A})" for n in sorted(silent)]
        can_fire -= silent


def _working_dt(graph: nir.NIRGraph, disc: Discretization) -> float | None:
    """The candidate dt nearest to disc.dt (in ratio) at which the graph compiles without degenerating."""
    for dt in sorted(DT_CANDIDATES, key=lambda c: abs(math.log(c / disc.dt))):
        trial = dataclasses.replace(disc, dt=dt)
        try:
            checked = check_graph(graph, trial)
        except ForeignGraphError:
            continue
        _, _, problems, degenerate = _quantize(checked)
        if not problems and not degenerate:
            return dt
    return None


def compile_foreign(graph: nir.NIRGraph, disc: Discretization = Discretization(),
                    allow_degenerate: bool = False) -> ChipNetwork:
    """The graph as a chip network with Lava's integers (see the module docstring). A synapse whose weights
    all round to 0, a node that can never spike or a leak that rounds to none is an error that suggests
    a dt that works, or with allow_degenerate a DegenerateGraphWarning."""
    checked = check_graph(graph, disc)
    pops, synapses, problems, degenerate = _quantize(checked)
    raise_problems(problems)
    if degenerate:
        dt = _working_dt(graph, disc)
        ifs = sorted(name for name, node in checked.nodes.items() if isinstance(node, nir.IF))
        reading = "" if disc.norse_dt is None else \
            f", tau read as Norse >= 1.1 writes it (over norse_dt = {disc.norse_dt:g}); a file of an earlier Norse " \
            f"(tau = 1 / tau_mem_inv) is read without norse_dt"
        hint = f"dt = {dt:g} s works{reading}" if dt is not None else \
            f"no dt from {min(DT_CANDIDATES):g} to {max(DT_CANDIDATES):g} s works" + \
            (f"; IF nodes ({', '.join(ifs)}) do not depend on dt" if ifs else "")
        text = f"at dt = {disc.dt:g} s: " + "; ".join(degenerate) + f" ({hint})"
        if not allow_degenerate:
            raise ForeignGraphError(text + "; --allow-degenerate compiles it anyway")
        warnings.warn(text, DegenerateGraphWarning, stacklevel=2)
    inputs = tuple(ChipInput(name, checked.shapes[name]) for name in checked.inputs)
    # populations by the step their input arrives, then by name: dependency order for a feed-forward graph, and
    # the same network whatever order the file lists its nodes in
    order = sorted(pops, key=lambda name: (pops[name].depth, name))
    net = ChipNetwork(tuple(pops[name] for name in order), tuple(synapses), inputs=inputs,
                      outputs=tuple(sorted(checked.outputs.items())),
                      source={"front_end": "sddpm import-nir", "discretization": asdict(disc)})
    check_ranges(net)
    return net


def write_foreign(path: str, graph: nir.NIRGraph, disc: Discretization = Discretization(),
                  allow_degenerate: bool = False) -> ChipNetwork:
    """Compile the graph and write its chip network (the format `sddpm compile` writes), atomically."""
    net = compile_foreign(graph, disc, allow_degenerate)
    write_chip_nir(path, net)
    return net


@torch.no_grad()
def run_discrete(graph: nir.NIRGraph, inputs: dict[str, torch.Tensor],
                 disc: Discretization = Discretization()) -> dict[str, torch.Tensor]:
    """The discretization in float64 without quantization, on the chip's timing (each path's delay). inputs:
    Input name -> 0/1 [T, B, *shape]. Returns the spikes [T, B, *shape] of every neuron node; a readout's (LI, I)
    voltage after each step instead, float64."""
    checked = check_graph(graph, disc)
    maps, shapes = checked.maps, checked.shapes
    steps, batch = next(iter(inputs.values())).shape[:2]
    i = {n: torch.zeros(batch, *shapes[n], dtype=torch.float64) for n in maps}  # current
    v = dict(i)  # voltage: both start at 0, and every update below makes a new tensor
    history = {n: [] for n in [*maps, *inputs]}
    for step in range(steps):
        drive = {n: torch.zeros(batch, *shapes[n], dtype=torch.float64) for n in maps}
        for cp in checked.paths:
            k = step - cp.delay
            if k >= 0:
                drive[cp.path.target] += linear_part(cp.ops, history[cp.path.source][k])
        for n, m in maps.items():
            if step >= checked.bias_start[n]:
                drive[n] = drive[n] + torch.from_numpy(checked.drive[n])
            i[n] = m.current_keep * i[n] + m.gain * drive[n]
            v[n] = m.voltage_keep * v[n] + i[n] + (m.leak_bias if step >= checked.bias_start[n] else 0.0)
            s = v[n] > m.threshold
            v[n] = v[n].masked_fill(s, 0.0)
            history[n].append(v[n] if math.isinf(m.threshold) else s.double())
        for n, x in inputs.items():
            history[n].append(x[step].double())
    return {n: torch.stack(history[n]) if math.isinf(maps[n].threshold) else torch.stack(history[n]).bool()
            for n in maps}
