"""Compiled NIR graphs from other tools (chip networks with spike inputs) on Lava
(deploy.chip_lava.run_spikes_on_lava) and through lava-dl netx (deploy.netx): identical spikes to the bit-accurate
simulator at every step; refusals name the node; a failing run leaves no process behind."""
import dataclasses

import multiprocessing
import time

import h5py
import nir
import numpy as np
import pytest
import torch

from export.chip import ChipFormatError
from export.nir_chip import ChipNirError
from export.nir_foreign import compile_foreign
from nir_helpers import conv_flatten_graph, cuba, feed_forward_graph, integrate_and_fire, lif, recurrent_graph
from simulators.network import ChipSimulator

pytestmark = pytest.mark.lava

STEPS = 30
RATE_MIN, RATE_MAX = 0.02, 0.7  # every neuron node fires, and not all the time: the comparison is not vacuous
CHILDREN_GRACE_S = 5.0  # how long ended OS processes may take to be reaped


def _spikes(*shape, rate=0.3, seed=0):
    return (np.random.default_rng(seed).random((STEPS, *shape)) < rate).astype(np.int64)


def _convolutional():
    # asymmetric on purpose: 7 x 5 images and a 3 x 2 kernel (stride 2), so that a transposed or
    # unflipped kernel, or swapped H and W, cannot pass. (The chip's stride, padding and dilation are square. Not
    # groups: NIR 1.0.8's type inference takes C_in = weight.shape[1] and refuses the graph.)
    rng = np.random.default_rng(2)
    conv = nir.Conv2d(input_shape=(7, 5), weight=rng.normal(0.2, 0.3, (4, 2, 3, 2)), stride=2, padding=1,
                      dilation=1, groups=1, bias=rng.normal(0.02, 0.01, 4))
    return conv_flatten_graph(conv, lambda n: rng.normal(0.02, 0.1, (5, n)))


def simulate(compiled, inputs, tmp_path):
    """The simulator's spikes of one sample, [T, *shape] per neuron node, read from the network's file."""
    from export.nir_chip import write_chip_nir

    path = str(tmp_path / "simulated.nir")
    write_chip_nir(path, compiled)
    out = ChipSimulator.from_file(path).run_spikes({n: torch.from_numpy(x)[:, None] for n, x in inputs.items()})
    return {n: s[:, 0].numpy() for n, s in out.items()}


def assert_spikes_identical(got, expected, what):
    assert sorted(got) == sorted(expected), f"{what}: nodes {sorted(got)} != {sorted(expected)}"
    for name in expected:
        a, b = np.asarray(got[name], dtype=bool), np.asarray(expected[name], dtype=bool)
        assert a.shape == b.shape, f"{what}: node {name!r} shape {a.shape} != {b.shape}"
        differ = np.argwhere(a != b)
        if len(differ):
            step, *index = (int(i) for i in differ[0])
            raise AssertionError(f"{what}: node {name!r} differs first at step {step}, index {tuple(index)}: "
                                 f"{a[(step, *index)]} vs {b[(step, *index)]} ({len(differ)} differences)")


def assert_fires(spikes):
    for name, s in spikes.items():
        rate = float(np.mean(s))
        assert RATE_MIN < rate < RATE_MAX, f"{name} fires at {rate:.3f}: vacuous comparison"


def assert_no_children():
    deadline = time.monotonic() + CHILDREN_GRACE_S
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("graph, inputs", [
    (feed_forward_graph(), {"input": _spikes(12)}),
    (recurrent_graph(), {"input": _spikes(8, seed=1)}),
    (_convolutional(), {"input": _spikes(2, 7, 5, seed=2)}),
], ids=["feed-forward", "recurrent", "conv-flatten"])
def test_lava_spikes_are_identical_to_the_simulator(graph, inputs, tmp_path):
    from deploy.chip_lava import run_spikes_on_lava

    compiled = compile_foreign(graph)
    expected = simulate(compiled, inputs, tmp_path)
    assert_fires(expected)
    assert_spikes_identical(run_spikes_on_lava(compiled, inputs), expected, "Lava vs simulator")
    assert_no_children()


def test_a_compiled_file_runs_from_its_path(tmp_path):
    from deploy.chip_lava import run_spikes_on_lava
    from export.nir_foreign import write_foreign

    path = tmp_path / "net.nir"
    compiled = write_foreign(str(path), feed_forward_graph())  # sealed: Lava's loader checks the digest
    inputs = {"input": _spikes(12, seed=3)}
    assert_spikes_identical(run_spikes_on_lava(path, inputs), simulate(compiled, inputs, tmp_path),
                            "Lava from file vs simulator")


def _raise_injected(*_):
    raise RuntimeError("injected")


@pytest.mark.parametrize("failure", ["model", "host", "compile"])
def test_a_failing_run_leaves_no_process_behind(failure, monkeypatch):
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.magma.runtime.runtime import Runtime

    from deploy import processes
    from deploy.chip_lava import run_spikes_on_lava

    run_cfg, error, match = None, RuntimeError, "injected"
    if failure == "model":  # a process model raises in the forked Lava processes; Lava reports it
        monkeypatch.setattr(processes.PyFileSinkModel, "run_spk", _raise_injected)
        match = "1 Exception"
    elif failure == "host":  # the host side fails while every Lava process runs
        monkeypatch.setattr(Runtime, "_get_resp_for_run", _raise_injected)
    else:  # FileSink has no floating-point model: Lava's compiler fails
        run_cfg, error, match = Loihi2SimCfg(select_tag="floating_pt"), AssertionError, "No ProcessModels found"
    with pytest.raises(error, match=match):
        run_spikes_on_lava(compile_foreign(recurrent_graph()), {"input": _spikes(8)}, run_cfg)
    assert_no_children()


def _changed(population=None, synapse=None, **network):
    """The compiled feed-forward network with fields of its first population or synapse, or of itself, replaced."""
    net = compile_foreign(feed_forward_graph())
    if population:
        net = dataclasses.replace(net, populations=(dataclasses.replace(net.populations[0], **population),
                                                    *net.populations[1:]))
    if synapse:
        net = dataclasses.replace(net, synapses=(dataclasses.replace(net.synapses[0], **synapse), *net.synapses[1:]))
    return dataclasses.replace(net, **network)


@pytest.mark.parametrize("net, message", [
    (_changed(synapse={"weight": np.full((16, 12), 127, np.int8), "weight_exp": 11}),
     r"synapse input -> lif1: weight-range: one spike's weight reaches 131072 a-units"),
    (_changed(population={"du": 4096}), r"population lif1: decay-range: du 4096"),
    (_changed(population={"vth": -1}), r"population lif1: threshold-range: vth -1"),
    (_changed(synapse={"weight": np.ones((16, 11), np.int8)}), r"synapse input -> lif1: chaining: dense weight"),
    (_changed(synapse={"weight": np.ones((16, 11), np.int8)}, population={"vth": -1}),
     r"2 design-rule violations: population lif1: threshold-range.*; synapse input -> lif1: chaining"),
], ids=["weight", "decay", "vth", "chaining", "all-listed"])
def test_a_network_lava_cannot_run_exactly_is_refused_by_node_before_lava_starts(net, message, monkeypatch):
    from deploy import chip_lava

    monkeypatch.setattr(chip_lava, "run_to_end", _raise_injected)  # the refusal must come first
    with pytest.raises(ChipFormatError, match=message):
        chip_lava.run_spikes_on_lava(net, {"input": _spikes(12)})


# lava-dl netx: chain graphs whose integers netx represents exactly (see deploy/netx.py): dense weights
# within [-256, 254] (|w| * 1024 a-units <= 254 here: threshold 1 is 1024 a-units and every gain is 1),
# biases in whole multiples of 64 v-units (k / 1024 at threshold 1).
# Weights below 127 / 1024 compile to weight_exp 0 (Lava's Dense then gets weight_exp -1), below 254 / 1024 to 1.
# netx's biases are on from step 0, so the biased nodes ask for that (metadata bias_start = 0).
EXP_0_MAX, EXP_1_MAX = 0.12, 0.24
FROM_STEP_0 = {"bias_start": 0}


def _netx_weights(rng, mean, shape, limit):
    return np.clip(rng.normal(mean, 0.1, shape), -limit, limit)


def _from_step_0(node):
    node.metadata = dict(FROM_STEP_0)
    return node


def _dense_chain():
    rng = np.random.default_rng(4)
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([10])),
        "fc1": nir.Linear(_netx_weights(rng, 0.02, (8, 10), EXP_0_MAX)),
        "cuba": cuba(8),
        "fc2": nir.Affine(_netx_weights(rng, 0.1, (5, 8), EXP_1_MAX), rng.integers(-2, 6, 5) / 1024),
        "lif": _from_step_0(lif(5)),
        "output": nir.Output(np.array([5])),
    }, edges=[("input", "fc1"), ("fc1", "cuba"), ("cuba", "fc2"), ("fc2", "lif"), ("lif", "output")])


def _conv_chain():
    rng = np.random.default_rng(5)
    conv = nir.Conv2d(input_shape=(7, 5), weight=rng.normal(0.2, 0.3, (4, 2, 3, 2)), stride=2, padding=1,
                      dilation=1, groups=1, bias=rng.integers(-2, 6, 4) / 1024)
    graph = conv_flatten_graph(conv, lambda n: _netx_weights(rng, 0.02, (5, n), EXP_1_MAX))
    _from_step_0(graph.nodes["if1"])
    return graph


def _flattened_input_chain():
    rng = np.random.default_rng(6)
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([2, 3, 4])),
        "flat": nir.Flatten(input_type={"input": np.array([2, 3, 4])}, start_dim=0, end_dim=-1),
        "fc": nir.Linear(_netx_weights(rng, 0.05, (6, 24), EXP_1_MAX)),
        "if1": integrate_and_fire(6),
        "output": nir.Output(np.array([6])),
    }, edges=[("input", "flat"), ("flat", "fc"), ("fc", "if1"), ("if1", "output")])


def delayed(spikes, steps):
    """spikes [T, ...] delayed by `steps` >= 0 steps (silent before)."""
    return np.concatenate([np.zeros_like(spikes[:steps]), spikes[:len(spikes) - steps]])


def _weight_exps(compiled):
    return {syn.target: syn.weight_exp for syn in compiled.synapses}


@pytest.mark.parametrize("graph, shape, last, exps", [
    (_dense_chain(), (10,), "lif", {"cuba": 0, "lif": 1}),
    (_conv_chain(), (2, 7, 5), "if2", {"if1": 3, "if2": 1}),
    (_flattened_input_chain(), (2, 3, 4), "if1", {"if1": 1}),
], ids=["dense-cuba-lif-bias", "conv-flatten-dense", "flattened-input"])
def test_netx_runs_a_chain_identically_at_its_step_offset(graph, shape, last, exps, tmp_path):
    from deploy.chip_lava import run_spikes_on_lava
    from deploy.netx import NETX_STEP_OFFSET, run_netx, write_netx

    compiled = compile_foreign(graph)
    assert _weight_exps(compiled) == exps
    inputs = {"input": _spikes(*shape, seed=7)}
    expected = simulate(compiled, inputs, tmp_path)
    assert_fires(expected)
    ours = run_spikes_on_lava(compiled, inputs)
    assert_spikes_identical(ours, expected, "Lava vs simulator")
    path = tmp_path / "net.h5"
    write_netx(compiled, path)
    out = run_netx(path, inputs["input"])
    assert_spikes_identical({last: out}, {last: delayed(ours[last], NETX_STEP_OFFSET)}, "netx vs our Lava graph")
    assert_spikes_identical({last: out}, {last: delayed(expected[last], NETX_STEP_OFFSET)}, "netx vs simulator")
    assert not np.array_equal(out, delayed(expected[last], NETX_STEP_OFFSET + 1))  # the offset is observable
    assert_no_children()


def test_netx_dense_weights_replay_netx_and_lava_including_its_inhibitory_power_of_two_loss():
    from deploy.netx import netx_dense_weights

    for weight in ([[3, -5], [254, -256]], [[255, 1], [7, 9]], [[-1, -3]], [[-129, -3]]):
        applied, exp = netx_dense_weights(np.array(weight))
        assert exp <= 0 and np.array_equal(applied >> -exp, weight), weight
    # a strictly negative matrix is scaled until its minimum is -256, which Lava's inhibitory clip makes -255
    applied, exp = netx_dense_weights(np.array([[-2, -4]]))
    assert (applied >> -exp).tolist() == [[-2, -2]]
    applied, exp = netx_dense_weights(np.array([[-128]]))
    assert applied.tolist() == [[0]]


def _with_bias(bias):
    graph = _dense_chain()
    graph.nodes["fc2"].bias = np.asarray(bias, dtype=np.float64)
    return graph


def _windowed_bias():
    graph = _dense_chain()
    graph.nodes["lif"].metadata = {}  # its depth then: two synapses from the Input
    return graph


@pytest.mark.parametrize("graph, message", [
    (recurrent_graph(), r"synapse lif -> lif: feeds 'lif' back; netx builds chains only"),
    (feed_forward_graph(), r"synapse input -> lif1: netx's dense layer would not apply these integer weights"),
    (_with_bias(np.full(5, 1.5 / 1024)), r"node 'lif': netx's bias is mant << 6"),
    (_windowed_bias(), r"node 'lif': netx's bias is on from step 0, this one from step 2 \(bias_start\)"),
], ids=["recurrent", "weights", "bias", "bias-window"])
def test_netx_refuses_by_node_what_it_cannot_run_exactly(graph, message, tmp_path):
    from deploy.netx import UnsupportedGraphError, write_netx

    with pytest.raises(UnsupportedGraphError, match=message):
        write_netx(compile_foreign(graph), tmp_path / "net.h5")


def _file_unsealed(path):
    with h5py.File(path, "r+") as h5:
        del h5.attrs["sddpm_sha256"]


def _file_unknown_type(path):
    from export.nir_chip import seal

    with h5py.File(path, "r+") as h5:  # nir.read meets a type it does not know with an empty AssertionError
        del h5["node/nodes/lif1/type"]
        h5["node/nodes/lif1"].create_dataset("type", data=b"Foo")
    seal(path)


@pytest.mark.parametrize("damage, message", [
    (_file_unsealed, r"the file carries no digest"),
    (lambda path: open(path, "r+b").truncate(1000), r"not a readable NIR file \(OSError"),
    (_file_unknown_type, r"node 'lif1': type 'Foo' is not a NIR node type"),
], ids=["no-digest", "truncated", "unknown-type"])
def test_a_damaged_file_is_refused_naming_it_before_lava_starts(damage, message, tmp_path, monkeypatch):
    from deploy import chip_lava
    from export.nir_foreign import write_foreign

    path = str(tmp_path / "net.nir")
    write_foreign(path, feed_forward_graph())
    damage(path)
    monkeypatch.setattr(chip_lava, "run_to_end", _raise_injected)
    with pytest.raises(ChipNirError, match=f"^{path}: {message}"):
        chip_lava.run_spikes_on_lava(path, {"input": _spikes(12)})
