"""The NIR node types beyond Affine/Conv2d into IF/LIF/CubaLIF, each on a small graph whose compiled integers are
derived by hand: pooling composed into the convolution or dense synapse that reads it, several edges into a node
with the delays that line the steps up, Scale, Delay, Threshold, a CubaLIF's bias, nested graphs; and what cannot
map exactly, refused by node."""
import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.nir_foreign import ALWAYS_ON_SUFFIX, ForeignGraphError, compile_foreign, run_discrete
from nir_helpers import cuba, integrate_and_fire, simulate_network
from tolerances import FLOAT64_REWRITE_ATOL


def _if(shape, threshold=1.0):
    return nir.IF(r=np.ones(shape), v_threshold=np.full(shape, threshold), v_reset=np.zeros(shape))


def _graph(nodes: dict, edges: list) -> nir.NIRGraph:
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _conv(weight, padding=0, stride=1, bias=None):
    weight = np.asarray(weight, dtype=np.float64)
    return nir.Conv2d(input_shape=None, weight=weight, stride=stride, padding=padding, dilation=1, groups=1,
                      bias=np.zeros(weight.shape[0]) if bias is None else bias)


def _spikes(steps, *shape, seed=0, rate=0.4):
    return (torch.rand(steps, 2, *shape, generator=torch.Generator().manual_seed(seed)) < rate).long()


def _pool_then_conv(pool, conv, size=8):
    return _graph({"input": nir.Input(np.array([2, size, size])), "pool": pool, "conv": conv,
                   "if": _if((3, *[(size // 2 + 2 * int(np.asarray(conv.padding).flat[0]) - conv.weight.shape[2]) + 1] * 2)),
                   "output": nir.Output(np.array([3]))},
                  [("input", "pool"), ("pool", "conv"), ("conv", "if"), ("if", "output")])


def test_sum_pooling_composes_into_the_convolution_that_reads_it():
    # SumPool 2x2 stride 2, then a 3x3 conv with padding 1: pooled tap j covers pixels 2j and 2j + 1, so the
    # composed kernel is 2 + (3 - 1) 2 = 6 wide with K[y, x] = W[y // 2, x // 2], stride 2 x 1 = 2, padding
    # 0 + 1 x 2 = 2 (a padded pooled tap covers two padded pixels, nothing of the image)
    rng = np.random.default_rng(0)
    w = rng.normal(0.1, 0.1, (3, 2, 3, 3))
    graph = _pool_then_conv(nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                          padding=np.array([0, 0])), _conv(w, padding=1))
    (syn,) = compile_foreign(graph).synapses
    assert syn.weight.shape == (3, 2, 6, 6) and (syn.stride, syn.padding, syn.groups) == (2, 2, 1)
    expected = np.repeat(np.repeat(w, 2, axis=2), 2, axis=3) * 1024 / 2 ** syn.weight_exp  # a-units over the exponent
    assert np.array_equal(syn.weight, np.round(expected))
    # the identity itself, in float64: pooling then the conv equals the composed kernel at the compiled geometry
    x = _spikes(1, 2, 8, 8)[0].double()
    pooled_then_conv = F.conv2d(F.avg_pool2d(x, 2) * 4, torch.from_numpy(w), padding=1)
    composed = F.conv2d(x, torch.from_numpy(np.repeat(np.repeat(w, 2, axis=2), 2, axis=3)), stride=syn.stride,
                        padding=syn.padding)
    torch.testing.assert_close(composed, pooled_then_conv, rtol=0, atol=FLOAT64_REWRITE_ATOL)


def test_average_pooling_is_sum_pooling_over_its_area():
    w = np.full((3, 2, 1, 1), 0.5)
    avg = _pool_then_conv(nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                        padding=np.array([0, 0])), _conv(w))
    (syn,) = compile_foreign(avg).synapses
    # 0.5 / 4 of a threshold (1024 a-units) per tap: 128 a-units, mantissa 64 << 1
    assert syn.weight.shape == (3, 2, 2, 2) and syn.stride == 2
    assert np.all(syn.integer_weight() == 128)


def test_pooling_whose_padded_taps_would_read_the_image_is_refused():
    # 5 pixels pooled by 2: pixel 4 is left over, and the conv's right padding (pooled tap 2) would cover it
    graph = _graph({"input": nir.Input(np.array([2, 5, 5])),
                    "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
                    "conv": _conv(np.ones((3, 2, 3, 3)), padding=1), "if": _if((3, 2, 2)),
                    "output": nir.Output(np.array([3]))},
                   [("input", "pool"), ("pool", "conv"), ("conv", "if"), ("if", "output")])
    with pytest.raises(ForeignGraphError, match=r"synapse 'conv': the padding of 'conv' after the pooling or "
                                                r"convolution before it does not compose exactly"):
        compile_foreign(graph)


def test_pooling_into_flatten_and_affine_becomes_one_dense_synapse():
    # SumPool 2x2 of a (1, 2, 2) map is the sum of its 4 pixels: the dense weight reads each pixel with the
    # Affine's one weight
    graph = _graph({"input": nir.Input(np.array([1, 2, 2])),
                    "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
                    "flat": nir.Flatten(input_type={"input": np.array([1, 1, 1])}, start_dim=0, end_dim=-1),
                    "fc": nir.Affine(np.array([[0.25], [-0.5]]), np.zeros(2)), "if": _if((2,)),
                    "output": nir.Output(np.array([2]))},
                   [("input", "pool"), ("pool", "flat"), ("flat", "fc"), ("fc", "if"), ("if", "output")])
    (syn,) = compile_foreign(graph).synapses
    assert syn.dense and syn.flatten
    assert syn.integer_weight().tolist() == [[256] * 4, [-512] * 4]  # 0.25 and -0.5 of 1024 a-units


def test_a_residual_sum_lines_its_paths_up_with_delays():
    # input -> a -> b and input -> b: a library runs both within the step, so b's input at its step t is a's and
    # the input's of step t. b sits 2 synapses deep (the longest path), a 1: the synapse a -> b delays 1 step,
    # input -> b 2 steps; b at chip step t + 2 then reads a's step t + 1 and the input's step t, as the library
    graph = _graph({"input": nir.Input(np.array([1])), "fa": nir.Affine(np.array([[2.0]]), np.zeros(1)), "a": _if((1,)),
                    "fb": nir.Affine(np.array([[0.6]]), np.zeros(1)), "b": _if((1,)), "output": nir.Output(np.array([1]))},
                   [("input", "fa"), ("fa", "a"), ("a", "fb"), ("input", "fb"), ("fb", "b"), ("b", "output")])
    net = compile_foreign(graph)
    assert {(s.source, s.delay) for s in net.synapses if s.target == "b"} == {("a", 1), ("input", 2)}
    assert net.population("b").depth == 2
    # one input spike at step 0: a spikes at step 1 (2 > 1); b gets 0.6 + 0.6 at step 2 > 1 and spikes then
    x = torch.zeros(5, 1, 1, dtype=torch.long)
    x[0] = 1
    assert simulate_network(net, {"input": x})["b"][:, 0, 0].nonzero().flatten().tolist() == [2]
    assert run_discrete(graph, {"input": x})["b"][:, 0, 0].nonzero().flatten().tolist() == [2]


def test_a_cycle_back_across_layers_is_refused_with_the_delay_it_would_need():
    graph = _graph({"input": nir.Input(np.array([1])), "f1": nir.Affine(np.ones((1, 1)), np.zeros(1)), "a": _if((1,)),
                    "f2": nir.Affine(np.ones((1, 1)), np.zeros(1)), "b": _if((1,)),
                    "back": nir.Linear(np.ones((1, 1))), "output": nir.Output(np.array([1]))},
                   [("input", "f1"), ("f1", "a"), ("a", "f2"), ("f2", "b"), ("b", "back"), ("back", "a"),
                    ("b", "output")])
    with pytest.raises(ForeignGraphError, match=r"synapse 'back': closes a cycle from 'b' back to 'a', 1 synapses "
                                                r"upstream; the chip would need a delay of 0 steps"):
        compile_foreign(graph)


def test_scale_and_delay_fold_into_the_synapse():
    # Scale 0.5 before an Affine of 1.0: 0.5 thresholds = 512 a-units; Delay 3 dt: delay 1 + 3 = 4
    dt = 1e-4
    graph = _graph({"input": nir.Input(np.array([2])), "scale": nir.Scale(np.array([0.5, 0.25])),
                    "fc": nir.Linear(np.ones((1, 2))), "delay": nir.Delay(np.array([3 * dt])), "if": _if((1,)),
                    "output": nir.Output(np.array([1]))},
                   [("input", "scale"), ("scale", "fc"), ("fc", "delay"), ("delay", "if"), ("if", "output")])
    (syn,) = compile_foreign(graph).synapses
    assert syn.integer_weight().tolist() == [[512, 256]] and syn.delay == 4
    graph.nodes["delay"] = nir.Delay(np.array([2.5 * dt]))
    with pytest.raises(ForeignGraphError, match=r"node 'delay': delay must be one value, a whole number >= 0 of "
                                                r"steps of dt = 0.0001 s"):
        compile_foreign(graph)


def test_a_threshold_node_fires_wherever_its_input_exceeds_the_threshold():
    # Threshold 1: no voltage memory (dv = 4096), so two inputs of 0.6 fire it only together, at the next step
    graph = _graph({"input": nir.Input(np.array([2])), "fc": nir.Linear(np.full((1, 2), 0.6)),
                    "th": nir.Threshold(np.ones(1)), "output": nir.Output(np.array([1]))},
                   [("input", "fc"), ("fc", "th"), ("th", "output")])
    net = compile_foreign(graph)
    assert net.population("th").dv == 4096
    x = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 1], [1, 1]]).view(5, 1, 2)
    expected = [2, 5]  # step 1 and 4 of the input (both fire), one synapse later
    padded = torch.cat([x, torch.zeros(1, 1, 2, dtype=torch.long)])
    assert simulate_network(net, {"input": padded})["th"][:, 0, 0].nonzero().flatten().tolist() == expected
    assert run_discrete(graph, {"input": padded})["th"][:, 0, 0].nonzero().flatten().tolist() == expected


def test_a_cubalif_bias_is_the_current_an_always_on_population_delivers():
    # Affine bias 1 into a CubaLIF: the constant enters the decaying current; an always-on population (one spike
    # per step from the step before the CubaLIF's bias starts) delivers the same through a weight of 1
    graph = nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Affine(np.full((3, 2), 0.5), np.ones(3)), cuba(3),
                                   nir.Output(np.array([3])))
    net = compile_foreign(graph)
    always_on = net.population("cubalif" + ALWAYS_ON_SUFFIX)
    assert always_on.depth == 0 and net.population("cubalif").depth == 1
    assert not net.population("cubalif").bias_mant.any()  # nothing of it in v's bias
    x = _spikes(30, 2, seed=3, rate=0.3)
    ours, expected = simulate_network(net, {"input": x})["cubalif"], run_discrete(graph, {"input": x})["cubalif"]
    assert expected.any() and torch.equal(ours.bool(), expected)


def _block(inputs=1):
    nodes = {f"in{i}": nir.Input(np.array([2])) for i in range(inputs)}
    nodes |= {"fc": nir.Linear(np.full((2, 2), 0.6)), "if": integrate_and_fire(2), "out": nir.Output(np.array([2]))}
    return nir.NIRGraph(nodes=nodes, edges=[(f"in{i}", "fc") for i in range(inputs)] + [("fc", "if"), ("if", "out")],
                        type_check=False)


def test_a_nested_graph_is_spliced_in_with_its_names_qualified():
    graph = _graph({"input": nir.Input(np.array([2])), "block": _block(), "output": nir.Output(np.array([2]))},
                   [("input", "block"), ("block", "output")])
    net = compile_foreign(graph)
    assert [p.name for p in net.populations] == ["block.if"] and net.outputs == (("output", "block.if"),)


def test_a_nested_graph_with_two_inputs_is_refused():
    graph = _graph({"input": nir.Input(np.array([2])), "block": _block(inputs=2), "output": nir.Output(np.array([2]))},
                   [("input", "block"), ("block", "output")])
    with pytest.raises(ForeignGraphError, match=r"graph 'block': a nested graph needs exactly one Input node to be "
                                                r"spliced in, has \['in0', 'in1'\]"):
        compile_foreign(graph)


def test_a_convolution_with_its_own_stride_and_padding_per_axis_runs_as_nir_says(tmp_path):
    # stride (2, 1), padding (1, 0), dilation (1, 2): 8 x 8 -> ((8 + 2 - 3) // 2 + 1, (8 - 2 x 2 - 1) // 1 + 1)
    # = (4, 4); the simulator runs the file, Lava too (one sample), and both equal the reference's integers
    from deploy.chip_lava import run_spikes_on_lava
    from export.nir_chip import write_chip_nir
    from export.reference import run_reference_spikes
    from simulators.network import ChipSimulator

    rng = np.random.default_rng(1)
    conv = nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0.3, 0.2, (3, 2, 3, 3)), stride=(2, 1), padding=(1, 0),
                      dilation=(1, 2), groups=1, bias=np.zeros(3))
    graph = _graph({"input": nir.Input(np.array([2, 8, 8])), "conv": conv, "if": _if((3, 4, 4)),
                    "output": nir.Output(np.array([3, 4, 4]))}, [("input", "conv"), ("conv", "if"), ("if", "output")])
    net = compile_foreign(graph)
    (syn,) = net.synapses
    assert (syn.stride, syn.padding, syn.dilation) == ((2, 1), (1, 0), (1, 2))
    path = str(tmp_path / "chip.nir")
    write_chip_nir(path, net)
    x = _spikes(10, 2, 8, 8, seed=4)
    sim = ChipSimulator.from_file(path).run_spikes({"input": x})["if"]
    assert sim.any() and torch.equal(sim, run_reference_spikes(net, {"input": x})["if"])
    assert np.array_equal(run_spikes_on_lava(path, {"input": x[:, 0].numpy()})["if"], sim[:, 0].numpy())
    # and the float discretization agrees but for the odd 8-bit flip
    expected = run_discrete(graph, {"input": x})["if"]
    assert 2 * int((expected & sim).sum()) / (int(expected.sum()) + int(sim.sum())) > 0.95
