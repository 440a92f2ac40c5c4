"""Loihi 2 resources of a chip network: neurons, synapses, neuro cores and chips.

Per chip population (and the readout, whose non-spiking compartments also live on the chip):
  neurons         compartments, C x H x W
  synapses        of its incoming synapses, counted two ways:
                    shared  unique weights: the weight tensors' sizes (convolutional weight sharing)
                    dense   every (input neuron, output neuron) pair a synapse connects: per synapse, C_in x the sum
                            over input positions of the fan-out (`export.energy.fanout_map`), exact at borders,
                            strides and up-sampling; what a dense or sparse matrix per synapse would store
  input axons     source neurons of its incoming synapses (one axon per source neuron and synapse)
The graph counted is the one Loihi 2 would run (`deploy.loihi2_profile`, the Lava graph of `--profile loihi2`):
  - an up-sampling synapse of delay 1 is u x u Sparse matrices, one entry per (output, input, copy) that a tap
    joins, in both counts (a Sparse matrix shares no weight); one of delay d >= 2 is a conv reading an
    up-sampling relay population (`UP_RELAY`: u x u x the source's neurons, delayed by d - 1, one synapse each);
  - any other conv or sparse path of delay d > 1 reads a relay population of its source delayed by d - 1: one
    relay per source and distinct delay (`RELAY_SUFFIX`), as many neurons as the source, fed through an identity
    synapse of one entry per neuron.
Cores of a population: max(ceil(neurons / neurons per core), ceil(synapse bytes / synaptic memory per core)), for
each way of counting synapses; the larger term is what bounds it. The memory term is a lower bound: it prices each
synapse at its weight bits alone (no index or routing overhead) and assumes weights are split across the cores of
a population without copies. Chips: max(ceil(cores / cores per chip), ceil(synapses / synapses per chip)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .chip import READOUT, RELAY_SUFFIX, UP_RELAY, WEIGHT_BITS, ChipNetwork, relay_plan
from .energy import fanout_map


@dataclass(frozen=True)
class Loihi2Limits:
    """Per-core and per-chip capacities of Loihi 2; `SOURCES` says where each comes from."""
    cores_per_chip: int = 128
    neurons_per_core: int = 8192
    synapses_per_chip: int = 120_000_000
    synaptic_memory_bytes_per_core: int = 192 * 1024
    bits_per_synapse: int = WEIGHT_BITS

    @property
    def synapses_per_core(self) -> int:
        """Synapses that fit in one core's synaptic memory at `bits_per_synapse` each."""
        return self.synaptic_memory_bytes_per_core * 8 // self.bits_per_synapse


# field -> (source, confirmed). Confirmed means stated in docs/sources.md section 3.1 (itself quoting
# open-neuromorphic.org's Loihi 2 page) or in this project's own format.
SOURCES = {
    "cores_per_chip": ("128 neuro cores per chip: docs/sources.md section 3.1 (open-neuromorphic.org, Loihi 2)", True),
    "neurons_per_core": ("up to 1 M neurons per chip over 128 cores = 8,192 per core: docs/sources.md section 3.1 "
                         "(open-neuromorphic.org, Loihi 2)", True),
    "synapses_per_chip": ("up to 120 M synapses per chip: docs/sources.md section 3.1 (open-neuromorphic.org, "
                          "Loihi 2)", True),
    "synaptic_memory_bytes_per_core": ("192 KiB: UNCONFIRMED, in no source read (docs/sources.md section 3.2); "
                                       "the figure to check is Intel Labs, 'Taking Neuromorphic Computing to the "
                                       "Next Level with Loihi 2', technology brief 2021, Table 1", False),
    "bits_per_synapse": ("8-bit weight mantissas of the chip format (export/chip.py WEIGHT_BITS); index and "
                         "routing bits not counted", True),
}
LOIHI2 = Loihi2Limits()  # tests/test_resources.py checks that SOURCES cites every limit


@dataclass(frozen=True)
class Incoming:
    """One synapse into a population, as its geometry: conv weights [C_out, C_in / groups, k, k] read a source of
    in_hw, or (dense) weights [N_out, N_in] read N_in neurons."""
    weight_shape: tuple[int, ...]
    in_hw: tuple[int, int]
    stride: int
    padding: int
    upsample: int
    dense: bool = False
    dilation: int = 1
    groups: int = 1
    delay: int = 1


@dataclass(frozen=True)
class PopulationResources:
    name: str
    neurons: int
    synapses_shared: int
    synapses_dense: int
    input_axons: int

    def cores(self, limits: Loihi2Limits, shared: bool) -> tuple[int, str]:
        """Cores this population needs and what bounds it ('neurons' or 'synaptic memory')."""
        synapses = self.synapses_shared if shared else self.synapses_dense
        by_neurons = math.ceil(self.neurons / limits.neurons_per_core)
        by_memory = math.ceil(synapses / limits.synapses_per_core)
        return (by_memory, "synaptic memory") if by_memory > by_neurons else (by_neurons, "neurons")




def population_resources(name: str, neurons: int, incoming: list[Incoming]) -> PopulationResources:
    shared = dense = axons = 0
    for syn in incoming:
        if syn.dense:  # every weight its own synapse, every source neuron an axon
            shared += math.prod(syn.weight_shape)
            dense += math.prod(syn.weight_shape)
            axons += syn.weight_shape[1]
            continue
        c_in = syn.weight_shape[1] * syn.groups
        up = (syn.in_hw[0] * syn.upsample, syn.in_hw[1] * syn.upsample)
        # the pairs of the conv on the up-sampled grid: a conv reading an up-sampling relay there (delay >= 2), or
        # the entries of the Sparse matrices, one per tap and copy (delay 1); without up-sampling the source's
        pairs = c_in * int(fanout_map(syn.weight_shape, up, syn.stride, syn.padding, 1, syn.dilation,
                                      syn.groups).sum())
        sparse = syn.upsample > 1 and syn.delay == 1
        shared += pairs if sparse else math.prod(syn.weight_shape)
        dense += pairs
        axons += c_in * (syn.in_hw[0] * syn.in_hw[1] if sparse else up[0] * up[1])
    return PopulationResources(name, neurons, shared, dense, axons)


def relay_resources(net: ChipNetwork) -> dict[str, list[PopulationResources]]:
    """Source -> its relay populations (`relay_plan`), each u x u x the source's neurons with one synapse per
    neuron, reading one axon per source neuron."""
    out = {}
    for source, relays in relay_plan(net).items():
        n = math.prod(net.source_shape(source))
        out[source] = [PopulationResources(f"{source}{RELAY_SUFFIX}{k}", n, n, n, n) if u == 1 else
                       PopulationResources(f"{source}{UP_RELAY.format(factor=u)}{k}", u * u * n, u * u * n,
                                           u * u * n, n) for u, k in relays]
    return out


@dataclass(frozen=True)
class ResourceEstimate:
    populations: tuple[PopulationResources, ...]
    limits: Loihi2Limits

    @property
    def neurons(self) -> int:
        return sum(p.neurons for p in self.populations)

    def synapses(self, shared: bool) -> int:
        return sum(p.synapses_shared if shared else p.synapses_dense for p in self.populations)

    def cores(self, shared: bool) -> int:
        return sum(p.cores(self.limits, shared)[0] for p in self.populations)

    def chips(self, shared: bool) -> int:
        return max(math.ceil(self.cores(shared) / self.limits.cores_per_chip),
                   math.ceil(self.synapses(shared) / self.limits.synapses_per_chip))

    def bound_by(self, shared: bool, bound: str) -> list[str]:
        """Populations whose core count is set by `bound` ('neurons' or 'synaptic memory')."""
        return [p.name for p in self.populations if p.cores(self.limits, shared)[1] == bound]

    def to_json(self) -> dict:
        out = {"limits": {f.name: {"value": getattr(self.limits, f.name), "source": SOURCES[f.name][0],
                                   "confirmed": SOURCES[f.name][1]} for f in fields(self.limits)},
               "neurons": self.neurons, "populations": []}
        for p in self.populations:
            row = {"name": p.name, "neurons": p.neurons, "synapses_shared": p.synapses_shared,
                   "synapses_dense": p.synapses_dense, "input_axons": p.input_axons}
            for key, shared in (("shared", True), ("dense", False)):
                row[f"cores_{key}"], row[f"bound_{key}"] = p.cores(self.limits, shared)
            out["populations"].append(row)
        for key, shared in (("shared", True), ("dense", False)):
            out[key] = {"synapses": self.synapses(shared), "cores": self.cores(shared), "chips": self.chips(shared),
                        "bound_by_memory": self.bound_by(shared, "synaptic memory")}
        return out


def estimate(net: ChipNetwork, limits: Loihi2Limits = LOIHI2) -> ResourceEstimate:
    """Resources of every population of `net` (and of its readout, where it has one) in network order, each
    followed by its relays."""
    targets = [(p.name, p.shape) for p in net.populations] + \
        ([(READOUT, net.readout.shape)] if net.readout is not None else [])
    relays = relay_resources(net)
    pops = [r for i in net.inputs for r in relays.get(i.name, [])]  # a spike input's relays live on the chip too
    for name, shape in targets:
        pops.append(population_resources(
            name, math.prod(shape),
            [Incoming(tuple(s.weight.shape), tuple(net.source_shape(s.source)[1:]), s.stride, s.padding, s.upsample,
                      s.dense, s.dilation, s.groups, s.delay) for s in net.inputs_of(name)]))
        pops += relays.get(name, [])
    return ResourceEstimate(tuple(pops), limits)
