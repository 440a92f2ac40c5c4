"""Greedy placement onto chips and the spikes that cross them, derived by hand on a three-population toy."""
from types import SimpleNamespace

from chip_helpers import digits_batches, firing_tiny_model
from export.compiler import compile_model
from export.placement import crossing_spikes, place, placement_summary
from export.resources import Incoming, Loihi2Limits, ResourceEstimate, estimate, population_resources

# 4 cores and 1,000 synapses per chip, 10 neurons and 100 synapses (100 bytes at 8 bits) per core
LIMITS = Loihi2Limits(cores_per_chip=4, neurons_per_core=10, synapses_per_chip=1000,
                      synaptic_memory_bytes_per_core=100, bits_per_synapse=8)
# a: 25 neurons, no synapses -> 3 cores; b: 16 neurons, 54 shared / 600 dense synapses -> 2 cores shared
# (neurons bind), 6 dense (memory binds); c: 45 neurons -> 5 cores
POPS = (population_resources("a", 25, []), population_resources("b", 16, [Incoming((3, 2, 3, 3), (4, 4), 1, 1, 1)]),
        population_resources("c", 45, []))
NET = SimpleNamespace(synapses=[SimpleNamespace(source="a", target="b"), SimpleNamespace(source="b", target="c"),
                                SimpleNamespace(source="a", target="c")])


def test_populations_fill_chips_in_order_and_spill_onto_the_next():
    placement = place(ResourceEstimate(POPS, LIMITS), shared=True)
    # a takes 3 of chip 0's 4 cores; b gets chip 0's last core and one on chip 1; c the 3 left on chip 1, 2 on chip 2
    assert placement.chips_of("a") == {0: 3} and placement.chips_of("b") == {0: 1, 1: 1}
    assert placement.chips_of("c") == {1: 3, 2: 2} and placement.chips == 3
    assert placement.system() == "Kapoho Point (8 chips)"


def test_a_chip_is_full_when_its_synapse_budget_is():
    # 100 synapses per chip: b's 6 dense cores hold 100 synapses each, so each takes a chip of its own (chips 0-5,
    # the first beside a's 3 cores); c, with no synapses, fills chip 5's other 3 cores and 2 of chip 6
    few = Loihi2Limits(**{**LIMITS.__dict__, "synapses_per_chip": 100})
    placement = place(ResourceEstimate(POPS, few), shared=False)
    assert placement.chips_of("b") == {chip: 1 for chip in range(6)}
    assert placement.chips_of("c") == {5: 3, 6: 2} and placement.chips == 7


def test_a_spike_is_one_message_per_other_chip_of_its_targets():
    placement = place(ResourceEstimate(POPS, LIMITS), shared=True)
    # a (chip 0) reaches b and c on chips {0, 1, 2}: 2 other chips per spike, 10 spikes -> 20 messages.
    # b: half its neurons on chip 0 send to c's chips {1, 2} (2 each), half on chip 1 to {2} (1): 1.5 per spike.
    assert crossing_spikes(NET, placement, {"a": 10.0, "b": 4.0}) == {"a": 20.0, "b": 6.0}


def test_the_shipped_sized_network_fits_one_chip_and_sends_nothing_across():
    net = compile_model(firing_tiny_model(), digits_batches()[:1])
    est = estimate(net)
    summary = placement_summary(net, est, {p.name: 1.0 for p in net.populations})
    assert summary["shared"]["chips"] == 1 and summary["shared"]["system"] == "one Loihi 2 chip"
    assert summary["shared"]["crossing_spikes_per_step"] == 0.0
    assert set(summary["dense"]["populations"]) == {p.name for p in est.populations}
