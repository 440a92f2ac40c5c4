"""The chip network: integer IF populations, integer synapses, delays, host stages; and its file.

Units. A population's input arrives at Lava's `a_in` in integer "a-units"; one a-unit stands for
`scale` units of the float current. The IF neuron is Lava's fixed-point LIF with du = 4095, dv = 0:

    u = a << 6                       (24-bit state; du = 4095 keeps no current memory)
    v = sat24(v + u + bias)          bias = bias_mant << bias_exp, in v-units (1 a-unit = 64 v-units)
    spike iff v > vth << 6, then v = 0

A synapse holds 8-bit signed mantissas and an exponent: its integer weight is `mant << weight_exp`
(Lava's Conv ignores weight_exp, lava#803, so a Lava Conv receives the product itself).

Timing. Every synapse delays by `delay` >= 1 steps (one per Lava synapse process; delays above one
are delay lines on the chip). A population at depth d receives its inputs at steps [d, d + T), with
its bias on only there; the first population (depth 0) receives the host's current directly at
a_in, with no synapse: round half to even of the float32 conv of x_t over its scale, saturated to
+-HOST_INPUT_MAX. Zero-delay semantics (all populations see SNN step t together) give the same
spikes, shifted by the depth.

File. A NIR graph with the integers in node metadata (`export.nir_chip`): self-contained, so the
simulator and the Lava backend need nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExportError

# Lava's fixed-point LIF set up as integrate-and-fire (research/lava.md section 1.4).
IF_DU = 4095  # current decay 4096 - (4095 + 1) = 0: u = a << 6
IF_DV = 0  # no voltage decay
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
# The host saturates the current it injects into the first population to +-(2^17 - 1): an image outside
# the calibrated range (a diverging sampling chain) then clips instead of wrapping u.
HOST_INPUT_MAX = CURRENT_LIMIT - 1


class ChipFormatError(ExportError, ValueError):
    """A chip network (in memory or on file) breaks the format or the hardware ranges."""


@dataclass(frozen=True)
class ChipPopulation:
    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    scale: float  # float current per a-unit
    vth: int  # spike iff v > vth << 6
    bias_mant: np.ndarray  # int16 [rows, C]: rows = diffusion_steps if time-dependent, else 1
    bias_exp: int
    depth: int
    host_input: bool = False

    def bias_row(self, t: np.ndarray) -> np.ndarray:
        """Row indices into bias_mant for diffusion steps t."""
        return t if self.bias_mant.shape[0] > 1 else np.zeros_like(t)


@dataclass(frozen=True)
class ChipSynapse:
    source: str
    target: str  # a population name, or READOUT
    weight: np.ndarray  # int8 mantissas [C_out_slice, C_in, k, k], PyTorch cross-correlation layout
    weight_exp: int
    stride: int
    padding: int
    upsample: int  # nearest up-sampling of the spikes before the conv (1: none)
    out_offset: int  # first target channel
    delay: int

    def integer_weight(self) -> np.ndarray:
        return self.weight.astype(np.int64) << self.weight_exp


READOUT = "readout"


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
    model_config: dict
    snn_steps: int
    diffusion_steps: int
    populations: tuple[ChipPopulation, ...]  # dependency order
    synapses: tuple[ChipSynapse, ...]
    readout: ChipReadout
    host: ChipHost
    threshold_factor: float

    def population(self, name: str) -> ChipPopulation:
        for pop in self.populations:
            if pop.name == name:
                return pop
        raise KeyError(name)

    def inputs_of(self, target: str) -> list[ChipSynapse]:
        return [s for s in self.synapses if s.target == target]

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
        return {"host": ["head conv (+BN) -> current of " + self.populations[0].name,
                         "time embedding -> bias tables", "tail (BN, Swish, conv, time conv, BN, Swish, membrane)"],
                "chip": [p.name for p in self.populations] + [READOUT]}


def check_ranges(net: ChipNetwork) -> None:
    """Every integer within its declared hardware range, every synapse chaining; else name the culprit."""
    names = {p.name: p for p in net.populations}
    for pop in net.populations:
        if not 0 <= pop.vth <= VTH_MAX:
            raise ChipFormatError(f"population {pop.name}: vth {pop.vth} outside [0, {VTH_MAX}] ({VTH_BITS} bits)")
        if np.abs(pop.bias_mant.astype(np.int64)).max(initial=0) > BIAS_MANT_MAX:
            raise ChipFormatError(f"population {pop.name}: bias mantissa outside +-{BIAS_MANT_MAX}")
        if not 0 <= pop.bias_exp <= BIAS_EXP_MAX:
            raise ChipFormatError(f"population {pop.name}: bias exponent {pop.bias_exp} outside [0, {BIAS_EXP_MAX}]")
    for syn in net.synapses:
        where = f"synapse {syn.source} -> {syn.target}"
        if syn.source not in names:
            raise ChipFormatError(f"{where}: unknown source population")
        if syn.target != READOUT and syn.target not in names:
            raise ChipFormatError(f"{where}: unknown target population")
        if np.abs(syn.weight.astype(np.int64)).max(initial=0) > WEIGHT_MANT_MAX:
            raise ChipFormatError(f"{where}: weight mantissa outside +-{WEIGHT_MANT_MAX} ({WEIGHT_BITS} bits)")
        if syn.weight_exp < 0 or syn.delay < 1:
            raise ChipFormatError(f"{where}: weight_exp must be >= 0 and delay >= 1")
        src = names[syn.source]
        target_shape = net.readout.shape if syn.target == READOUT else names[syn.target].shape
        if syn.weight.shape[1] != src.shape[0] or syn.out_offset + syn.weight.shape[0] > target_shape[0]:
            raise ChipFormatError(f"{where}: weight {syn.weight.shape} does not chain {src.shape} -> {target_shape}")
