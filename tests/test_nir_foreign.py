"""NIR graphs written the way other tools write them, compiled to Loihi 2 integers and run on the simulator:
a hand-derived case, agreement with the float discretization, recurrent and convolutional graphs, the
file round trip, and refusals that name the node."""
import h5py
import nir
import numpy as np
import pytest
import torch

from export.nir_foreign import (DegenerateGraphWarning, Discretization, ForeignGraphError, compile_foreign,
                                run_discrete, write_foreign)
from export.nir_foreign_read import read_foreign
from nir_helpers import (DT, conv_flatten_graph, cuba, feed_forward_graph, integrate_and_fire, lif,
                         recurrent_graph, simulate_network)
from simulators.network import ChipSimulator

# Spike agreement per node between the integers (A) and the float discretization (B), counted over spikes:
# 2|A and B| / (|A| + |B|), so silent cells do not inflate it. 8-bit weights move a membrane by up to half a
# mantissa step per input spike, which flips the odd spike of a neuron near its threshold; the flipped spike
# resets its neuron at another step, and every node downstream inherits it. Measured with these inputs:
# 0.989 and 0.984 (feed-forward), 0.991 (recurrent), 0.992 and 0.877 (convolutional, whose last node fires
# only 184 spikes, so one flip costs half a point). The floor is below the lowest, not derived.
SPIKE_AGREEMENT_MIN = 0.85


def _spikes(steps, batch, *shape, rate=0.3, seed=0):
    return (torch.rand(steps, batch, *shape, generator=torch.Generator().manual_seed(seed)) < rate).long()


def _agreement(graph, inputs):
    """The lowest spike agreement over the graph's neuron nodes."""
    expected = run_discrete(graph, inputs)
    got = simulate_network(compile_foreign(graph), inputs)
    worst = 1.0
    for name, s in expected.items():
        rate = float(s.double().mean())
        assert 0.02 < rate < 0.7, f"{name} fires at {rate:.3f}: vacuous comparison"
        a, b = got[name].bool(), s.bool()
        worst = min(worst, 2 * int((a & b).sum()) / (int(a.sum()) + int(b.sum())))
    return worst


def test_a_hand_derived_integrate_and_fire_chain():
    graph = nir.NIRGraph.from_list(nir.Input(np.array([1])), nir.Affine(np.array([[0.5]]), np.zeros(1)),
                                   nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)),
                                   nir.Output(np.array([1])))
    compiled = compile_foreign(graph)
    # threshold 1.0 = VTH_A = 1024 a-units, so weight 0.5 = 512 a-units = mantissa 64 << 3 (512/127 needs 3 bits)
    (synapse,) = compiled.synapses
    assert synapse.weight_exp == 3 and synapse.weight.tolist() == [[64]] and synapse.delay == 1
    # an input spike every step reaches the neuron one step later: v = 512 << 6 per step from step 1,
    # 98304 > 1024 << 6 = 65536 first at step 3 (65536 at step 2 is not above), then every 3 steps
    out = simulate_network(compiled, {"input": torch.ones(10, 1, 1, dtype=torch.long)})
    neuron = synapse.target
    assert out[neuron][:, 0, 0].nonzero().flatten().tolist() == [3, 6, 9]
    assert run_discrete(graph, {"input": torch.ones(10, 1, 1)})[neuron][:, 0, 0].nonzero().flatten().tolist() == \
        [3, 6, 9]


def test_a_feed_forward_lif_and_cubalif_graph_agrees_with_the_float_discretization():
    graph = feed_forward_graph()
    assert _agreement(graph, {"input": _spikes(60, 8, 12)}) >= SPIKE_AGREEMENT_MIN


def test_a_recurrent_cubalif_graph_runs_with_one_step_per_synapse():
    graph = recurrent_graph()
    assert _agreement(graph, {"input": _spikes(60, 6, 8)}) >= SPIKE_AGREEMENT_MIN


def test_a_convolutional_graph_like_sinabs_writes_it():
    rng = np.random.default_rng(2)
    conv = nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0.15, 0.3, (4, 2, 3, 3)), stride=1, padding=1,
                      dilation=1, groups=1, bias=np.zeros(4))
    graph = conv_flatten_graph(conv, lambda n: rng.normal(0.006, 0.05, (5, n)))
    assert _agreement(graph, {"input": _spikes(30, 4, 2, 8, 8)}) >= SPIKE_AGREEMENT_MIN


def test_the_compiled_file_is_plain_nir_in_the_compilers_format_and_matches_the_reference(tmp_path):
    from export.nir_chip import FORMAT, read_chip_nir
    from export.reference import run_reference_spikes

    rng = np.random.default_rng(3)
    graph = nir.NIRGraph.from_list(nir.Input(np.array([5])), nir.Affine(rng.normal(0.3, 0.3, (4, 5)), np.zeros(4)),
                                   lif(4), nir.Output(np.array([4])))
    path = str(tmp_path / "net.nir")
    compiled = write_foreign(path, graph, Discretization(dt=DT))
    read = nir.read(path)  # NIR's type checks pass; the format is the one `sddpm compile` writes
    assert read.metadata["format"] == FORMAT and isinstance(read.nodes["lif"], nir.LIF)
    assert _same_network(read_chip_nir(path), compiled)
    inputs = {"input": _spikes(20, 3, 5)}
    from_file, reference = ChipSimulator.from_file(path).run_spikes(inputs), run_reference_spikes(compiled, inputs)
    assert all(torch.equal(from_file[n], reference[n]) for n in reference)


def _same_network(a, b) -> bool:
    """Field by field, arrays by value."""
    import dataclasses

    def canon(value):
        if dataclasses.is_dataclass(value):
            return canon(dataclasses.asdict(value))
        if isinstance(value, dict):
            return {k: canon(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [canon(v) for v in value]
        return np.asarray(value).tolist() if isinstance(value, np.ndarray) else value
    return canon(a) == canon(b)


def _cuba_li_graph():
    # a current-based readout: its current decays, then its voltage (two states Lava's LIF has, but a NIR CubaLI
    # is not mapped here yet)
    return nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Affine(np.ones((2, 2)), np.zeros(2)),
                                  nir.CubaLI(tau_syn=np.full(2, 1e-3), tau_mem=np.full(2, 1e-3), r=np.ones(2),
                                             v_leak=np.zeros(2)), nir.Output(np.array([2])))


def _lif_graph(weight=None, **changes):
    params = {"tau": np.full(3, 2e-3), "r": np.full(3, 20.0), "v_leak": np.zeros(3), "v_threshold": np.ones(3),
              **changes}
    weight = np.ones((3, 2)) if weight is None else weight
    nodes = {"input": nir.Input(np.array([2])), "affine": nir.Affine(weight, np.zeros(weight.shape[0])),
             "lif": nir.LIF(**params), "output": nir.Output(np.array([3]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "affine"), ("affine", "lif"), ("lif", "output")],
                        type_check=False)


def _partial_flatten():
    # Flatten of (2, 3, 3) spikes from dim 1: (2, 9), not the (18,) vector the simulators feed the Affine
    shape = np.array([2, 3, 3])
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([1, 3, 3])),
        "conv": nir.Conv2d(input_shape=(3, 3), weight=np.ones((2, 1, 1, 1)), stride=1, padding=0, dilation=1,
                           groups=1, bias=np.zeros(2)),
        "if1": nir.IF(r=np.ones(shape), v_threshold=np.ones(shape), v_reset=np.zeros(shape)),
        "flat": nir.Flatten(input_type={"input": shape}, start_dim=1, end_dim=-1),
        "fc": nir.Affine(np.ones((1, 18)), np.zeros(1)), "if2": integrate_and_fire(1),
        "output": nir.Output(np.array([1])),
    }, edges=[("input", "conv"), ("conv", "if1"), ("if1", "flat"), ("flat", "fc"), ("fc", "if2"), ("if2", "output")],
        type_check=False)


def _cuba_with_bias():
    return nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Affine(np.ones((3, 2)), np.ones(3)), cuba(3),
                                  nir.Output(np.array([3])))


@pytest.mark.parametrize("graph, message", [
    (_cuba_li_graph(), r"node 'cubali': NIR type CubaLI has no chip mapping"),
    (_lif_graph(v_reset=np.full(3, 0.5)), r"node 'lif': v_reset = 0.5 must be 0"),
    (_lif_graph(tau=np.array([1e-3, 2e-3, 3e-3])), r"node 'lif': tau differs between neurons"),
    (_lif_graph(tau=np.full(3, 5e-5)), r"node 'lif': dt/tau = 2 must be <= 1 .*use a dt <= 5e-05 s"),
    (_lif_graph(tau=np.zeros(3)), r"node 'lif': tau = 0 must be > 0"),
    (_lif_graph(tau=np.full(3, -2e-3)), r"node 'lif': tau = -0.002 must be > 0"),
    (_lif_graph(v_threshold=np.full(3, np.nan)), r"node 'lif': v_threshold holds NaN or inf"),
    (_lif_graph(v_threshold=np.full(3, -5.0)), r"node 'lif': v_threshold = -5 must be > 0"),
    (_lif_graph(weight=np.array([[np.nan, 1], [1, 1], [1, 1]])), r"node 'affine': weight holds NaN or inf"),
    (_lif_graph(weight=np.full((3, 2), np.inf)), r"node 'affine': weight holds NaN or inf"),
    # 1e30 x (dt/tau = 0.05) x (r = 20) x 1024 a-units per threshold: far above the 2^17 a-units of one spike
    (_lif_graph(weight=np.full((3, 2), 1e30)), r"synapse 'affine': weights up to \d+ a-units .* below 131072"),
    (_lif_graph(weight=np.ones((4, 2))), r"synapse 'affine': gives \(4,\) to the \(3,\) neurons of 'lif'"),
    (_partial_flatten(), r"node 'flat': Flatten from dim 1 to -1; only the whole array maps"),
    # every problem of a file at once, counted
    (_lif_graph(tau=np.zeros(3), v_threshold=np.full(3, np.inf)),
     r"^2 problems: node 'lif': tau = 0 must be > 0; node 'lif': v_threshold holds NaN or inf$"),
], ids=["CubaLI", "v_reset", "tau", "dt", "tau0", "tau<0", "nan-threshold", "threshold<0", "nan-weight",
        "inf-weight", "huge-weight", "shape", "flatten", "all-listed"])
def test_what_does_not_map_is_refused_by_node_name(graph, message):
    with pytest.raises(ForeignGraphError, match=message):
        compile_foreign(graph)


def _one_lif(weight: float, tau: float, r: float) -> nir.NIRGraph:
    """Input(2) -> Affine (both weights `weight`) -> one LIF neuron (threshold 1)."""
    return nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Affine(np.full((1, 2), weight), np.zeros(1)),
                                  nir.LIF(tau=np.full(1, tau), r=np.full(1, r), v_leak=np.zeros(1),
                                          v_threshold=np.ones(1)), nir.Output(np.array([1])))


def test_weights_that_all_round_to_zero_are_an_error_that_suggests_a_dt():
    # Norse/Sinabs style (r = 1, tau = 50 ms): a weight is 0.7 x dt/tau x 1024 a-units = 14336 dt, 0.14 at
    # dt = 1e-5, so both round to 0 and the neuron can never spike. The candidates nearest 1e-5 in ratio:
    # 5e-6 and 2e-5 (0.29 a-units) also round to 0, 2e-6 too; at 5e-5 a weight is 0.72 -> 1 a-unit, and
    # the voltage can reach 64 x 2 / (dv = 4 of 4096) = 131072 > 1024 << 6 = 65536.
    graph = _one_lif(0.7, tau=0.05, r=1.0)
    with pytest.raises(ForeignGraphError, match=r"at dt = 1e-05 s: synapse 'affine': all 2 weights round to 0 .*; "
                                                r"node 'lif': can never spike .*\(dt = 5e-05 s works\)"):
        compile_foreign(graph, Discretization(dt=1e-5))
    compiled = compile_foreign(graph, Discretization(dt=5e-5))
    assert compiled.synapses[0].weight.tolist() == [[1, 1]]


def test_a_leak_that_rounds_to_none_is_an_error_or_with_allow_degenerate_a_warning():
    # tau = 1 s at dt = 1e-4: dv = round(4096 x 1e-4) = round(0.41) = 0. At 2e-4, dv = round(0.82) = 1.
    graph = _one_lif(0.5, tau=1.0, r=1e4)
    with pytest.raises(ForeignGraphError, match=r"node 'lif': dt/tau = 0\.0001 rounds to dv = 0 of 4096: the leak "
                                                r"rounds to none \(dt = 0\.0002 s works\)"):
        compile_foreign(graph)
    with pytest.warns(DegenerateGraphWarning, match="the leak rounds to none"):
        compiled = compile_foreign(graph, allow_degenerate=True)
    assert compiled.population("lif").dv == 0


def test_a_node_that_can_never_spike_is_an_error():
    # IF (no dt): weights 1e-3 x 1024 = 1.02 -> 1 a-unit, and v grows without bound; with v_threshold
    # 1e4 they are 1e-3 x 1024 / 1e4 = 1e-4 a-units: 0, so IF can never spike, whatever dt
    graph = nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Linear(np.full((1, 2), 1e-3)),
                                   nir.IF(r=np.ones(1), v_threshold=np.full(1, 1e4), v_reset=np.zeros(1)),
                                   nir.Output(np.array([1])))
    with pytest.raises(ForeignGraphError, match=r"node 'if': can never spike .* \(no dt from 1e-06 to 1 s works; IF "
                                                r"nodes \(if\) do not depend on dt\)"):
        compile_foreign(graph)


def test_a_refusal_says_nothing_of_if_nodes_where_the_graph_has_none():
    # LIF, threshold 1e4 (1024 a-units), r = 1: a weight of 1e-3 is 1e-3 x dt/tau x 1024 / 1e4 <= 1e-4 a-units at
    # every dt up to tau (larger ones overshoot forward Euler): it rounds to 0 and the neuron can never spike
    graph = nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Affine(np.full((1, 2), 1e-3), np.zeros(1)),
                                   nir.LIF(tau=np.full(1, 2e-3), r=np.ones(1), v_leak=np.zeros(1),
                                           v_threshold=np.full(1, 1e4)), nir.Output(np.array([1])))
    with pytest.raises(ForeignGraphError, match=r"no dt from 1e-06 to 1 s works\)") as caught:
        compile_foreign(graph)
    assert "IF nodes" not in str(caught.value)


def _written(tmp_path, edit) -> str:
    """_lif_graph written by nir.write, then changed in place by edit(h5py.File)."""
    path = str(tmp_path / "graph.nir")
    nir.write(path, _lif_graph())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["node/nodes/lif"].__delitem__("type"), r"node 'lif': has no 'type' string"),
    (lambda f: (f["node/nodes/lif"].__delitem__("type"), f["node/nodes/lif"].create_dataset("type", data=b"Foo")),
     r"node 'lif': type 'Foo' is not a NIR node type"),
    (lambda f: f["node/nodes/affine"].__delitem__("weight"), r"node 'affine' \(Affine\): field 'weight' is missing"),
    (lambda f: (f["node/nodes/affine"].__delitem__("weight"), f["node/nodes/lif"].__delitem__("tau")),
     r"2 problems: .*node 'affine' \(Affine\): field 'weight' is missing; node 'lif' \(LIF\): field 'tau' is "
     r"missing"),
    (lambda f: (f["node"].__delitem__("edges"), f["node"].create_dataset("edges", data=[[b"input", b"ghost"]])),
     r"edge 'input' -> 'ghost': no node named 'ghost'"),
], ids=["no-type", "unknown-type", "missing-field", "all-listed", "dangling-edge"])
def test_a_broken_file_names_the_node_and_field(tmp_path, edit, message):
    with pytest.raises(ForeignGraphError, match=message):
        read_foreign(_written(tmp_path, edit))


def test_an_uncompiled_graph_is_refused_by_the_simulator(tmp_path):
    from simulators.chip_file import ChipFileError

    path = str(tmp_path / "source.nir")
    nir.write(path, _lif_graph())
    with pytest.raises(ChipFileError, match="not an sddpm-chip-nir file"):
        ChipSimulator.from_file(path)


def test_cli_import_nir_compiles_a_file_and_names_what_does_not_map(tmp_path, capsys):
    from toolchain.cli import main

    source, out = str(tmp_path / "snntorch.nir"), str(tmp_path / "chip.nir")
    nir.write(source, _lif_graph())
    assert main(["import-nir", source, "--out", out]) == 0
    text = capsys.readouterr().out
    # LIF, tau 2 ms at dt 0.1 ms: dv = 4096 * 0.05 = 204.8 -> 205; no current memory: du = 4095
    assert "lif                  LIF       4095   205  1024" in text and text.rstrip().endswith(f"-> {out}")
    assert ChipSimulator.from_file(out).run_spikes({"input": _spikes(5, 1, 2)})["lif"].shape == (5, 1, 3)
    nir.write(source, _cuba_li_graph())
    assert main(["import-nir", source, "--out", str(tmp_path / "cubali.nir")]) == 2
    assert "node 'cubali': NIR type CubaLI has no chip mapping" in capsys.readouterr().err
    assert not (tmp_path / "cubali.nir").exists()
    # tau = 1 s leaks by 1e-4 per step at dt = 1e-4: dv rounds to 0, so only --allow-degenerate compiles it
    nir.write(source, _one_lif(0.5, tau=1.0, r=1e4))
    assert main(["import-nir", source, "--out", out]) == 2
    assert "the leak rounds to none (dt = 0.0002 s works); --allow-degenerate" in capsys.readouterr().err
    assert main(["import-nir", source, "--out", out, "--allow-degenerate"]) == 0
    assert capsys.readouterr().err.startswith("warning: at dt = 0.0001 s: node 'lif': dt/tau = 0.0001 rounds")


def test_the_imported_threshold_fits_lavas_threshold_range():
    from export.chip import VTH_MAX
    from export.nir_foreign import VTH_A

    assert VTH_A <= VTH_MAX


def test_a_file_of_the_retired_import_format_is_refused_with_the_way_to_recompile(tmp_path):
    from export.nir_chip import ChipNirError, read_chip_nir, seal
    from simulators.chip_file import ChipFileError

    graph = _lif_graph()
    path = str(tmp_path / "old.nir")
    nir.write(path, nir.NIRGraph(nodes=graph.nodes, edges=graph.edges,
                                 metadata={"format": "sddpm-net-nir", "version": 2}))
    seal(path)
    with pytest.raises(ChipNirError, match=r"sddpm-net-nir .* retired; compile the source NIR graph again with "
                                           r"`sddpm import-nir`"):
        read_chip_nir(path)
    with pytest.raises(ChipFileError, match=r"retired; compile the source NIR graph again with `sddpm import-nir`"):
        ChipSimulator.from_file(path)
