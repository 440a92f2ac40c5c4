"""Loihi 2 resource estimate: synapse counts and cores derived by hand, and the estimate of a compiled network."""
import math

import pytest

from chip_helpers import digits_batches, firing_tiny_model
from export.chip import READOUT
from export.compiler import compile_model
from export.resources import LOIHI2, RELAY_SUFFIX, SOURCES, UP_RELAY, Incoming, Loihi2Limits, ResourceEstimate, estimate, population_resources


@pytest.mark.parametrize("incoming, dense, shared", [
    # 3x3, padding 1, 4x4 input, 1 -> 1 channel: 4 inner outputs read 9 taps, 8 edge outputs 6, 4 corners 4
    (Incoming((1, 1, 3, 3), (4, 4), 1, 1, 1), 4 * 9 + 8 * 6 + 4 * 4, 9),
    # stride 2 -> 2x2 outputs reading 2x2, 2x3, 3x2 and 3x3 taps inside the input
    (Incoming((1, 1, 3, 3), (4, 4), 2, 1, 1), 4 + 6 + 6 + 9, 9),
    # nearest up-sampling 2x2 -> 4x4, then 3x3 padding 1, delay 1: Loihi 2 holds it as 2 x 2 Sparse matrices, one
    # entry per tap of the conv on the up-sampled 4x4 grid (the first case's 100), shared or not: a Sparse shares
    # nothing
    (Incoming((1, 1, 3, 3), (2, 2), 1, 1, 2), 4 * 9 + 8 * 6 + 4 * 4, 4 * 9 + 8 * 6 + 4 * 4),
    # the same of delay 3: the conv's shared kernel reads an up-sampling relay of the 4x4 grid
    (Incoming((1, 1, 3, 3), (2, 2), 1, 1, 2, delay=3), 4 * 9 + 8 * 6 + 4 * 4, 9),
    # 1x1 shortcut: one pair per position
    (Incoming((1, 1, 1, 1), (4, 4), 1, 0, 1), 16, 1),
])
def test_dense_synapses_are_the_receptive_field_taps_inside_the_input(incoming, dense, shared):
    one = population_resources("p", 16, [incoming])
    assert one.synapses_dense == dense and one.synapses_shared == shared
    # channels multiply both counts: every (input channel, output channel) pair has its own kernel
    wide = Incoming((3, 2) + incoming.weight_shape[2:], incoming.in_hw, incoming.stride, incoming.padding,
                    incoming.upsample, delay=incoming.delay)
    many = population_resources("p", 16, [wide, wide])
    assert many.synapses_dense == 2 * 3 * 2 * dense and many.synapses_shared == 2 * 3 * 2 * one.synapses_shared
    # an axon per neuron read: the source's, or its up-sampling relay's
    read = incoming.upsample ** 2 if incoming.delay > 1 else 1
    assert many.input_axons == 2 * 2 * read * incoming.in_hw[0] * incoming.in_hw[1]


def _ones_conv_pairs(syn: Incoming) -> int:
    """The (source neuron, target neuron) pairs of a conv without up-sampling, counted independently: the sum of a
    convolution of an all-one source with all-one weights of the synapse's geometry (each output counts the taps
    that land inside the source, times the input channels of its group)."""
    import torch
    import torch.nn.functional as F

    ones = torch.ones(1, syn.weight_shape[1] * syn.groups, *syn.in_hw, dtype=torch.float64)
    return int(F.conv2d(ones, torch.ones(syn.weight_shape, dtype=torch.float64), stride=syn.stride,
                        padding=syn.padding, dilation=syn.dilation, groups=syn.groups).sum())


@pytest.mark.parametrize("incoming", [Incoming((1, 1, 3, 3), (4, 4), 1, 1, 1), Incoming((1, 1, 3, 3), (4, 4), 2, 1, 1),
                                      Incoming((3, 2, 3, 3), (5, 7), 2, 1, 1), Incoming((2, 3, 1, 1), (4, 4), 1, 0, 1),
                                      Incoming((4, 2, 3, 3), (5, 6), 1, 2, 1, dilation=2, groups=2),
                                      Incoming((6, 1, 3, 2), (7, 5), 2, 1, 1, dilation=2, groups=3)])
def test_the_conv_count_is_the_receptive_field_count(incoming):
    assert _ones_conv_pairs(incoming) == population_resources("p", 1, [incoming]).synapses_dense


def test_grouped_dilated_and_dense_synapses_counted_by_hand():
    # groups 2, 4 -> 4 channels, 3x3 with dilation 2 and padding 2 on 4x4: per axis the taps at -2, 0, +2 of
    # output o land inside for 2 positions (0: {0, 2}; 1: {1, 3}; 2: {0, 2}; 3: {1, 3}), so each of the 4 x 16
    # outputs reads 2 x 2 = 4 positions of the 2 input channels of its group: 4 x 16 x 4 x 2 pairs
    grouped = Incoming((4, 2, 3, 3), (4, 4), 1, 2, 1, dilation=2, groups=2)
    pop = population_resources("p", 64, [grouped])
    assert pop.synapses_dense == 4 * 16 * 4 * 2 and pop.input_axons == 4 * 16
    # a dense synapse: every weight a synapse, shared or not, every source neuron an axon
    dense = population_resources("q", 6, [Incoming((6, 16), (1, 1), 1, 0, 1, dense=True)])
    assert (dense.synapses_shared, dense.synapses_dense, dense.input_axons) == (96, 96, 16)


def test_an_imported_network_is_estimated_without_a_readout():
    from export.nir_foreign import compile_foreign
    from nir_helpers import feed_forward_graph

    est = estimate(compile_foreign(feed_forward_graph()))  # Input(12) -> LIF(16) -> CubaLIF(6)
    assert [p.name for p in est.populations] == ["lif1", "cuba"]
    assert est.neurons == 22 and est.synapses(shared=False) == 12 * 16 + 16 * 6


def test_cores_and_chips_take_the_binding_limit():
    # 100 synapses per core (100 bytes at 8 bits), 10 neurons per core, 4 cores and 1,000 synapses per chip
    limits = Loihi2Limits(cores_per_chip=4, neurons_per_core=10, synapses_per_chip=1000,
                          synaptic_memory_bytes_per_core=100, bits_per_synapse=8)
    pop = population_resources("p", 16, [Incoming((3, 2, 3, 3), (4, 4), 1, 1, 1)])  # shared 54, dense 600
    assert pop.cores(limits, shared=True) == (2, "neurons")  # ceil(16 / 10) > ceil(54 / 100)
    assert pop.cores(limits, shared=False) == (6, "synaptic memory")  # ceil(600 / 100)
    est = ResourceEstimate((pop, population_resources("q", 45, [])), limits)
    assert est.neurons == 61 and est.cores(True) == 2 + 5 and est.cores(False) == 6 + 5
    assert est.chips(True) == 2  # ceil(7 / 4)
    assert est.chips(False) == 3  # ceil(11 / 4) cores' worth; the 600 synapses fit in one chip's 1,000
    fewer = ResourceEstimate(est.populations, Loihi2Limits(**{**limits.__dict__, "synapses_per_chip": 100}))
    assert fewer.chips(False) == 6  # now the chip's synapse count binds: ceil(600 / 100)
    assert est.bound_by(False, "synaptic memory") == ["p"] and est.bound_by(True, "synaptic memory") == []
    assert Loihi2Limits(synaptic_memory_bytes_per_core=100, bits_per_synapse=4).synapses_per_core == 200


def test_every_limit_names_its_source_and_the_unconfirmed_one_says_so():
    assert LOIHI2.cores_per_chip == 128 and LOIHI2.neurons_per_core == 8192
    for name, (source, confirmed) in SOURCES.items():
        assert source and (confirmed or "UNCONFIRMED" in source), name
    assert not SOURCES["synaptic_memory_bytes_per_core"][1]


def test_the_estimate_of_a_compiled_network_covers_every_population_and_the_readout():
    net = compile_model(firing_tiny_model(), digits_batches()[:1])
    est = estimate(net)
    relays = [p for p in est.populations if RELAY_SUFFIX in p.name]
    assert [p.name for p in est.populations if p not in relays] == [p.name for p in net.populations] + [READOUT]
    first = est.populations[0]
    assert first.synapses_shared == first.synapses_dense == 0  # the host injects its current
    # one relay per source and distinct delay d - 1 > 0 of its conv paths, each right after its source, as large,
    # with one synapse per neuron; an up-sampling synapse's relay is u x u times as large
    expected = {f"{s.source}{RELAY_SUFFIX}{s.delay - 1}" if s.upsample == 1 else
                f"{s.source}{UP_RELAY.format(factor=s.upsample)}{s.delay - 1}" for s in net.synapses if s.delay > 1}
    assert {r.name for r in relays} == expected and any(".up2." in name for name in expected)
    names = [p.name for p in est.populations]
    for r in relays:
        source = r.name.split(".up")[0].split(RELAY_SUFFIX)[0]
        factor = 2 if ".up2." in r.name else 1
        assert names.index(source) < names.index(r.name)
        n = math.prod(net.population(source).shape)
        assert r.neurons == r.synapses_shared == r.synapses_dense == factor ** 2 * n and r.input_axons == n
    sparse = {s.target for s in net.synapses if s.upsample > 1 and s.delay == 1}  # no step left for a relay
    for p in est.populations[1:]:
        if p not in relays and p.name not in sparse:
            assert p.synapses_dense > p.synapses_shared > 0  # a conv reuses each weight at many positions
    report = est.to_json()
    assert report["neurons"] == est.neurons and len(report["populations"]) == len(est.populations)
    assert report["dense"]["chips"] >= report["shared"]["chips"] >= 1


def test_every_limit_cites_its_source():  # a test, not a module-level assert that python -O drops
    from dataclasses import fields

    assert set(SOURCES) == {f.name for f in fields(Loihi2Limits)}
