"""The chip network: the one intermediate representation every front end writes and every back end runs.

Front ends: the SDDPM compiler (`export.compiler`) and the NIR importer (`export.nir_foreign`). Back ends: the
bit-accurate simulator (`simulators`, with its own reader of the file), Lava and lava-dl's netx (`deploy`), and
the analyses (energy, resources, placement). The network is:

- populations of Lava's fixed-point LIF neuron: shape, decays du and dv (IF: du = 4095, dv = 0), threshold,
  a bias per channel (one row, or one row per diffusion step: a bias schedule), the first chip step its input
  and bias arrive (`depth`), and optionally the host's current straight into a_in (`host_input`); a
  `voltage_out` population is a membrane readout (NIR's LI and I): its threshold is the largest, VTH_MAX, which
  v reaches only saturated, and its voltage, not its spikes, is the output;
- synapses: dense or conv (stride, padding, dilation, groups; nearest up-sampling of the spikes first), 8-bit
  mantissas and an exponent, a delay >= 1, into a channel slice of the target (`out_offset`); recurrence allowed;
- inputs: spike sources (`ChipInput`), or the host's current into the `host_input` population;
- outputs: spikes of named populations, or the `readout`, a non-spiking sum of synapses whose current the host
  reads.
- `snn_steps`, the window T: where the network is a feed-forward pipeline (SDDPM), each population's bias is on
  only inside [depth, depth + T); otherwise (None) from `depth` on.
- the application layer (SDDPM's model config, diffusion steps, threshold factor, host stages `ChipHost` with
  the head conv, tail and time-embedding tables) rides along and is read only by the application code.

Units. A population's input arrives at Lava's `a_in` in integer "a-units"; one a-unit stands for
`scale` units of the float current. The IF neuron is Lava's fixed-point LIF with du = 4095, dv = 0:

    u = a << 6                       (24-bit state; du = 4095 keeps no current memory)
    v = sat24(v + u + bias)          bias = bias_mant << bias_exp, in v-units (1 a-unit = 64 v-units)
    spike iff v > vth << 6, then v = 0

A synapse holds 8-bit signed mantissas and an exponent: its integer weight is `mant << weight_exp`
(Lava's Conv ignores weight_exp, lava#803, so a Lava Conv receives the product itself).

The neuron in general is Lava's LIF (simulators/fixed_point.py spells out each rounding):

    u = rz(u * (4096 - (du + 1)), 12) + (a << 6)      rz: shift toward zero; u wraps once at 24 bits
    v = sat24(rz(v * (4096 - dv), 12) + u + bias)

Timing. Every synapse delays by `delay` >= 1 steps (one per Lava synapse process; delays above one
are delay lines on the chip). A population at depth d receives its inputs at steps [d, d + T), with
its bias on only there; the first population (depth 0) receives the host's current directly at
a_in, with no synapse: round half to even of the float32 conv of x_t over its scale, saturated to
+-host_input_max (`host_saturation`). Zero-delay semantics (all populations see SNN step t together) give
the same spikes, shifted by the depth.

File. A NIR graph with the integers in node metadata (`export.nir_chip`): self-contained, so the
simulator and the Lava backend need nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ExportError

# Lava's fixed-point LIF set up as integrate-and-fire: the default neuron.
IF_DU = 4095  # current decay 4096 - (4095 + 1) = 0: u = a << 6
IF_DV = 0  # no voltage decay
DECAY_UNITY = 4096  # du, dv are 12-bit fractions: u is multiplied by 4096 - (du + 1), v by 4096 - dv
DU_RANGE = (-1, DECAY_UNITY - 1)  # du = -1 keeps u (no decay), du = 4095 forgets it every step
DV_RANGE = (0, DECAY_UNITY)  # dv = 0 keeps v, dv = 4096 forgets it every step
ACT_SHIFT = 6  # a_in << 6 enters u
V_PER_A = 1 << ACT_SHIFT  # v-units per a-unit of input current (NIR's r)
VTH_SHIFT = 6  # the threshold is compared as vth << 6
STATE_BITS = 24  # u wraps and v saturates at 24 bits
STATE_MAX = 2 ** (STATE_BITS - 1)
# Hardware ranges of the integer parameters.
WEIGHT_BITS = 8  # signed synaptic weight mantissa
WEIGHT_MANT_MAX = 2 ** (WEIGHT_BITS - 1) - 1  # symmetric: +-127
BIAS_MANT_BITS = 13  # signed bias mantissa (Lava: "precision 13")
BIAS_MANT_MAX = 2 ** (BIAS_MANT_BITS - 1) - 1  # +-4095
BIAS_EXP_MAX = 7  # bias exponent, 3 bits (Lava: "precision 3")
VTH_BITS = 17  # threshold mantissa (Lava: "precision 17")
VTH_MAX = 2 ** VTH_BITS - 1
CURRENT_LIMIT = STATE_MAX >> ACT_SHIFT  # |a| below 2^17 a-units keeps a << 6 inside u's 24 bits
# The most the host may inject into the first population, +-(2^17 - 1) a-units: u cannot wrap below it.
HOST_INPUT_MAX = CURRENT_LIMIT - 1


def host_saturation(vth: int, max_bias_v: int, snn_steps: int) -> int | None:
    """The host's saturation of the first population's current, in a-units, that no input can make overflow and
    that changes no spike; None where no such level exists.

    The host's current c is the same at every one of the T steps of a window (x_t is repeated). Saturated at L
    with 64 L > 64 vth + |bias| and 64 L >= |bias|: a current c >= L still fires at every step (v = 64 L + bias
    > vth << 6 at once, then the reset), and c <= -L still never fires (v only falls), for IF and LIF alike,
    so the spikes are those of the unsaturated current. And with T (64 L + |bias|) <= 2^23 - 1 the voltage
    cannot saturate in T steps (it leaks toward 0 for LIF), nor u wrap. Diverging sampling chains (|x_t| far
    beyond the training data) met the unsaturated host current with v saturating; this level makes them exact
    without coarsening the population's scale for them."""
    level = min(HOST_INPUT_MAX, (STATE_MAX - 1 - snn_steps * max_bias_v) // (V_PER_A * snn_steps))
    return level if V_PER_A * level > V_PER_A * vth + max_bias_v else None


def leak_dv(keep: float) -> int:
    """Lava's dv for a voltage that keeps `keep` of itself per step: v * (4096 - dv) >> 12 (toward zero), so
    dv = round(4096 (1 - keep)). Exact for tau a power of two (tau 2: dv 2048); otherwise the leak moves by at
    most 1/8192 per step, and the truncation of each product by less than one v-unit (1/64 of an a-unit):
    both are in the float-vs-integer rung of the verification ladder, as the weights' rounding is."""
    return round(DECAY_UNITY * (1.0 - keep))


class ChipFormatError(ExportError, ValueError):
    """A chip network (in memory or on file) breaks the format or the hardware ranges."""


@dataclass(frozen=True)
class ChipPopulation:
    name: str
    shape: tuple[int, ...]  # (C, H, W), or (N,) for a dense population
    scale: float  # float value per a-unit (informational for imported graphs)
    vth: int  # spike iff v > vth << 6
    bias_mant: np.ndarray  # int16 [rows, C]: rows = diffusion_steps if time-dependent, else 1
    bias_exp: int
    depth: int  # the first chip step its input and bias arrive (its window's start in a pipeline)
    host_input: bool = False
    du: int = IF_DU
    dv: int = IF_DV
    voltage_out: bool = False  # a membrane readout: v is the output (threshold VTH_MAX)

    def bias_row(self, t: np.ndarray) -> np.ndarray:
        """Row indices into bias_mant for diffusion steps t."""
        return t if self.bias_mant.shape[0] > 1 else np.zeros_like(t)

    @property
    def is_if(self) -> bool:
        return (self.du, self.dv) == (IF_DU, IF_DV)


def pair(value) -> tuple[int, int]:
    """A stride, padding or dilation as (H, W): one int means the same along both."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def one_or_pair(values) -> int | tuple[int, int]:
    """(H, W) as one int where both agree (every SDDPM synapse), else the pair."""
    h, w = (int(v) for v in np.broadcast_to(np.asarray(values), (2,)))
    return h if h == w else (h, w)


@dataclass(frozen=True)
class ChipSynapse:
    source: str  # a population or a spike input
    target: str  # a population name, or READOUT
    weight: np.ndarray  # int8 mantissas: conv [C_out_slice, C_in / groups, k, k] (PyTorch cross-correlation
    #                     layout) or dense [N_out, N_in]
    weight_exp: int
    stride: int | tuple[int, int]  # one int, or (H, W) where they differ (`pair`)
    padding: int | tuple[int, int]
    upsample: int  # nearest up-sampling of the spikes before the conv (1: none)
    out_offset: int  # first target channel
    delay: int
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    flatten: bool = False  # a dense synapse reading a multi-dimensional source in C order

    @property
    def dense(self) -> bool:
        return self.weight.ndim == 2

    def integer_weight(self) -> np.ndarray:
        return self.weight.astype(np.int64) << self.weight_exp


READOUT = "readout"


@dataclass(frozen=True)
class ChipInput:
    """A spike source: 0/1 per neuron per chip step, given at run time."""
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ChipReadout:
    """The chip's output currents: a non-spiking sum of synapses; the host reads h = scale * a + bias."""
    shape: tuple[int, int, int]
    scale: float
    bias: np.ndarray  # float32 [C] (host side)
    temb: np.ndarray | None  # float32 [diffusion_steps, C] or None (host side)
    depth: int


@dataclass(frozen=True)
class ChipHost:
    head_weight: np.ndarray  # float32 [ch, img_ch, 3, 3]
    head_bias: np.ndarray  # float32 [ch]
    tail: dict[str, np.ndarray]  # float32 arrays, see export.host.HostStages
    membrane_decay: float


@dataclass(frozen=True)
class ChipNetwork:
    """One chip network. The SDDPM fields (model_config, diffusion_steps, host, threshold_factor, readout) are
    its application layer: None / empty for a network imported from NIR, whose `inputs` are spike sources
    and whose `outputs` name the populations it reports."""
    populations: tuple[ChipPopulation, ...]  # dependency order where the network is feed-forward
    synapses: tuple[ChipSynapse, ...]
    snn_steps: int | None = None  # the window length T of a pipeline network; None: open-ended
    readout: ChipReadout | None = None
    inputs: tuple[ChipInput, ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()  # (output name, population)
    model_config: dict = field(default_factory=dict)
    diffusion_steps: int = 1
    host: ChipHost | None = None
    threshold_factor: float = 1.0
    host_input_max: int = HOST_INPUT_MAX  # the host's saturation of its current, a-units (`host_saturation`)
    source: dict = field(default_factory=dict)  # how an imported graph was discretized (its front end's record)

    @property
    def is_diffusion(self) -> bool:
        """An SDDPM network: host current in, readout current out, the host stages alongside."""
        return self.host is not None

    def population(self, name: str) -> ChipPopulation:
        for pop in self.populations:
            if pop.name == name:
                return pop
        raise KeyError(name)

    def inputs_of(self, target: str) -> list[ChipSynapse]:
        return [s for s in self.synapses if s.target == target]

    def source_shape(self, name: str) -> tuple[int, ...]:
        for node in self.inputs + self.populations:
            if node.name == name:
                return node.shape
        raise KeyError(name)

    @property
    def weight_count(self) -> int:
        """The stored 8-bit weights of every synapse (a shared kernel counted once)."""
        return sum(int(s.weight.size) for s in self.synapses)

    @property
    def steps_per_denoising_step(self) -> int:
        """Chip time steps of one forward pass with delays: the readout's window ends last."""
        return self.readout.depth + self.snn_steps

    def partition(self) -> dict[str, list[str]]:
        """What runs where."""
        if not self.is_diffusion:
            return {"host": [f"spike input {i.name}" for i in self.inputs], "chip": [p.name for p in self.populations]}
        return {"host": ["head conv (+BN) -> current of " + self.populations[0].name,
                         "time embedding -> bias tables", "tail (BN, Swish, conv, time conv, BN, Swish, membrane)"],
                "chip": [p.name for p in self.populations] + [READOUT]}


def conv_output_shape(syn: ChipSynapse, source_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (C_out, H, W) a conv synapse gives over a (C, H, W) source (before its channel offset)."""
    stride, padding, dilation = pair(syn.stride), pair(syn.padding), pair(syn.dilation)
    size = [(n * syn.upsample + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1
            for i, (n, k) in enumerate(zip(source_shape[1:], syn.weight.shape[2:]))]
    return (syn.weight.shape[0], *size)


# Design rules: each is a named check of one node that returns its violations; `design_rule_violations` runs them
# all over the network, so one error lists every violation with its node.
def _population_rules(pop: ChipPopulation, net: ChipNetwork) -> list[str]:
    out = []
    if not 0 <= pop.vth <= VTH_MAX:
        out.append(f"threshold-range: vth {pop.vth} outside [0, {VTH_MAX}] ({VTH_BITS} bits)")
    if np.abs(pop.bias_mant.astype(np.int64)).max(initial=0) > BIAS_MANT_MAX:
        out.append(f"bias-range: bias mantissa outside +-{BIAS_MANT_MAX} ({BIAS_MANT_BITS} bits)")
    if not 0 <= pop.bias_exp <= BIAS_EXP_MAX:
        out.append(f"bias-range: bias exponent {pop.bias_exp} outside [0, {BIAS_EXP_MAX}]")
    if pop.bias_mant.ndim != 2 or pop.bias_mant.shape[1] != pop.shape[0] or \
            pop.bias_mant.shape[0] not in (1, net.diffusion_steps):
        out.append(f"bias-shape: bias_mant {pop.bias_mant.shape} is not [1 or {net.diffusion_steps}, {pop.shape[0]}]")
    if not DU_RANGE[0] <= pop.du <= DU_RANGE[1] or not DV_RANGE[0] <= pop.dv <= DV_RANGE[1]:
        out.append(f"decay-range: du {pop.du} / dv {pop.dv} outside {DU_RANGE} / {DV_RANGE} (12-bit decays)")
    if pop.depth < 0:
        out.append(f"timing: depth {pop.depth} < 0")
    if pop.voltage_out and pop.vth != VTH_MAX:
        out.append(f"readout: a voltage readout's threshold must be VTH_MAX = {VTH_MAX}, is {pop.vth}")
    if pop.voltage_out and any(s.source == pop.name for s in net.synapses):
        out.append("readout: a voltage readout feeds no synapse (it does not spike)")
    if pop.host_input and not net.is_diffusion:
        out.append("host-input: a host current needs the host stages of a diffusion network")
    if pop.host_input and not 0 < net.host_input_max <= HOST_INPUT_MAX:
        out.append(f"host-input: saturation {net.host_input_max} outside [1, {HOST_INPUT_MAX}] a-units")
    return out


def _synapse_rules(syn: ChipSynapse, net: ChipNetwork, shapes: dict) -> list[str]:
    out = []
    if np.abs(syn.weight.astype(np.int64)).max(initial=0) > WEIGHT_MANT_MAX:
        out.append(f"weight-range: weight mantissa outside +-{WEIGHT_MANT_MAX} ({WEIGHT_BITS} bits)")
    if syn.weight_exp < 0:
        out.append(f"weight-range: weight_exp {syn.weight_exp} < 0")
    elif np.abs(syn.weight.astype(np.int64)).max(initial=0) << syn.weight_exp >= CURRENT_LIMIT:
        out.append(f"weight-range: one spike's weight reaches {CURRENT_LIMIT} a-units (a << 6 must fit u's 24 bits)")
    if syn.delay < 1:
        out.append(f"timing: delay {syn.delay} < 1 (every synapse delays by at least one step)")
    if syn.source not in shapes or syn.source == READOUT:
        return out + [f"chaining: unknown source {syn.source!r}"]
    if syn.target != READOUT and (syn.target not in shapes or syn.target in {i.name for i in net.inputs}):
        return out + [f"chaining: unknown target population {syn.target!r}"]
    if syn.target == READOUT and net.readout is None:
        return out + ["chaining: targets the readout of a network without one"]
    src = shapes[syn.source]
    tgt = net.readout.shape if syn.target == READOUT else shapes[syn.target]
    if syn.dense:
        n_in = int(np.prod(src)) if syn.flatten else (src[0] if len(src) == 1 else -1)
        if syn.weight.shape[1] != n_in or syn.out_offset + syn.weight.shape[0] > int(np.prod(tgt)) or len(tgt) != 1:
            out.append(f"chaining: dense weight {syn.weight.shape} does not map {src}"
                       f"{' (flattened)' if syn.flatten else ''} onto {tgt}")
        return out
    if min(*pair(syn.stride), *pair(syn.dilation), syn.groups, syn.upsample) < 1 or min(pair(syn.padding)) < 0:
        return out + ["conv-geometry: stride, dilation, groups and upsample must be >= 1, padding >= 0"]
    if len(src) != 3 or syn.weight.shape[1] * syn.groups != src[0] or syn.flatten or \
            syn.out_offset + syn.weight.shape[0] > tgt[0] or conv_output_shape(syn, src)[1:] != tuple(tgt[1:]):
        out.append(f"chaining: conv weight {syn.weight.shape} (groups {syn.groups}) does not chain {src} -> {tgt}")
    return out


def design_rule_violations(net: ChipNetwork) -> list[str]:
    """Every violated design rule, as "<node>: <rule>: <what>"."""
    shapes = {i.name: i.shape for i in net.inputs} | {p.name: p.shape for p in net.populations}
    problems = []
    if len(shapes) != len(net.inputs) + len(net.populations):
        problems.append("network: population and input names must be distinct")
    problems += [f"population {p.name}: {v}" for p in net.populations for v in _population_rules(p, net)]
    problems += [f"synapse {s.source} -> {s.target}: {v}" for s in net.synapses for v in _synapse_rules(s, net, shapes)]
    names = {p.name for p in net.populations}
    problems += [f"output {name}: reads {pop!r}, not a population" for name, pop in net.outputs if pop not in names]
    if not net.populations:
        problems.append("network: no population")
    return problems


def check_ranges(net: ChipNetwork) -> None:
    """Every design rule holds (integers within their hardware ranges, synapses chaining); else one error that
    lists every violation with its node."""
    problems = design_rule_violations(net)
    if problems:
        raise ChipFormatError((f"{len(problems)} design-rule violations: " if len(problems) > 1 else "")
                              + "; ".join(problems))


RELAY_SUFFIX = ".relay"  # a relay population is named <source>.relay<delay>, in the Lava graph and the estimate
UP_RELAY = ".up{factor}.relay"  # an up-sampling relay: <source>.up<u>.relay<delay>


def relay_plan(net: ChipNetwork) -> dict[str, list[tuple[int, int]]]:
    """Source -> its relays as (up-sampling factor, delay), in increasing order: one per distinct (factor, d - 1) of
    its conv and sparse paths of delay d > 1 (factor 1: a plain relay). The Lava graph of the loihi2 profile
    builds exactly these (`deploy.loihi2_profile`) and `export.resources` counts them. Here, not there, because
    the Lava backend may not import the training code that `export.resources` reaches."""
    plan: dict[str, set[tuple[int, int]]] = {}
    for s in net.synapses:
        if not s.dense and s.delay > 1:
            plan.setdefault(s.source, set()).add((s.upsample, s.delay - 1))
    return {source: sorted(relays) for source, relays in plan.items()}
