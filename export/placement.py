"""A greedy placement of a chip network's populations onto Loihi 2 cores and chips, and the spikes that cross
chip boundaries per unit of work (a denoising step of one image for SDDPM, one sample's run for a network with
spike inputs).

Placement: populations in dependency order (the order `export.resources.estimate` lists them, the readout last)
take the cores that estimate gives them, one after another; a chip is full when its cores or its synapse budget
(each core of a population carries an equal share of the population's synapses) would be exceeded, and the rest
of the population goes on the next chip. So a population spans consecutive chips and chips fill in network
order, which keeps most synapses between neighbouring layers on one chip.

Crossing spikes: a spike of a source neuron is sent once to every chip, other than its own, that holds part of
a target population of that source (one message per destination chip, the chip's router fanning it out to its
cores). Neurons are assumed spread evenly over their population's cores and every source neuron is assumed to
reach every chip of its target: for a convolution, whose neurons reach only nearby positions, this is an upper
bound. The host's input current into the first population, and spike inputs, are host I/O, not counted here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .chip import ChipNetwork
from .resources import ResourceEstimate

# Multi-chip Loihi 2 systems, largest last: (name, chips, source). Secondary sources, like the per-chip limits.
SYSTEMS = (
    ("one Loihi 2 chip", 1, "docs/sources.md section 3.1"),
    ("Kapoho Point (8 chips)", 8, "Intel's Loihi 2 announcement, 2021: a board of eight Loihi 2 chips"),
    ("Hala Point (1,152 chips)", 1152, "Intel and Sandia National Laboratories, April 2024: 1,152 Loihi 2 chips"),
)


@dataclass(frozen=True)
class CoreBlock:
    """Consecutive cores of one population on one chip."""
    population: str
    chip: int
    cores: int
    synapses: float  # the block's share of the population's synapses


@dataclass(frozen=True)
class Placement:
    blocks: tuple[CoreBlock, ...]
    shared: bool  # synapses counted with convolutional weight sharing

    @property
    def chips(self) -> int:
        return 1 + max(b.chip for b in self.blocks)

    def chips_of(self, population: str) -> dict[int, int]:
        """chip -> cores of `population` on it."""
        return {b.chip: b.cores for b in self.blocks if b.population == population}

    def system(self) -> str:
        """The smallest Loihi 2 system in `SYSTEMS` with enough chips, or what lies beyond them."""
        for name, chips, _ in SYSTEMS:
            if self.chips <= chips:
                return name
        return f"more than {SYSTEMS[-1][0]}"


def place(est: ResourceEstimate, shared: bool = True) -> Placement:
    """Greedy placement of every population of `est` (see the module docstring)."""
    limits = est.limits
    blocks, chip, used_cores, used_synapses = [], 0, 0, 0.0
    for pop in est.populations:
        cores, _ = pop.cores(limits, shared)
        per_core = (pop.synapses_shared if shared else pop.synapses_dense) / max(cores, 1)
        left = cores
        while left:
            room = limits.cores_per_chip - used_cores
            if per_core:
                room = min(room, math.floor((limits.synapses_per_chip - used_synapses) / per_core))
            if room <= 0:
                chip, used_cores, used_synapses = chip + 1, 0, 0.0
                continue
            take = min(left, room)
            blocks.append(CoreBlock(pop.name, chip, take, take * per_core))
            used_cores, used_synapses, left = used_cores + take, used_synapses + take * per_core, left - take
    return Placement(tuple(blocks), shared)


def crossing_spikes(net: ChipNetwork, placement: Placement, spikes: dict[str, float]) -> dict[str, float]:
    """population -> spike messages per unit of work that leave its chips, from `spikes` (population -> spikes per
    unit). A spike reaching several targets on one chip is one message; a spike input is host I/O."""
    targets: dict[str, set[int]] = {}
    for syn in net.synapses:
        targets.setdefault(syn.source, set()).update(placement.chips_of(syn.target))
    out = {}
    for name, chips in targets.items():
        source = placement.chips_of(name)
        if not source:  # a spike input: on the host
            continue
        total = sum(source.values())
        # chip c holds cores / total of the source's neurons; their spikes go to every target chip but c
        out[name] = spikes[name] * sum(cores / total * len(chips - {c}) for c, cores in source.items())
    return out


def placement_summary(net: ChipNetwork, est: ResourceEstimate, spikes: dict[str, float]) -> dict:
    """JSON-ready: per way of counting synapses, the greedy placement's chips, the smallest system that holds
    them, and the spike messages per denoising step of one image that cross chips (total and per source)."""
    out = {"systems": [{"name": n, "chips": c, "source": s} for n, c, s in SYSTEMS]}
    all_spikes = sum(spikes.values())
    for key, shared in (("shared", True), ("dense", False)):
        placement = place(est, shared)
        crossing = crossing_spikes(net, placement, spikes)
        total = sum(crossing.values())
        out[key] = {"chips": placement.chips, "system": placement.system(),
                    "crossing_spikes_per_step": total,
                    "crossing_per_spike": total / all_spikes if all_spikes else 0.0,
                    "populations": {p.name: placement.chips_of(p.name) for p in est.populations},
                    "crossing_by_source": {k: v for k, v in crossing.items() if v}}
    return out
