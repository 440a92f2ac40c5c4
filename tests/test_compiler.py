"""The compiler: float rewrite of the U-Net into IF populations, refusal of unknown layers, quantization
to the chip's integer ranges, and the overflow warning."""
import copy
import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from chip_helpers import digits_batches, firing_tiny_model
from export.compiler import CHECKED_MARGIN, calibration_batches, check_overflow, compile_model
from export.chip import HOST_INPUT_MAX, host_saturation
from export.errors import ExportInputError
from export.graph import Expr, FloatGraph, FloatPopulation, Term, UnsupportedModelError, extract_graph, run_float
from export.host import ChipOverflowWarning, HostStages
from export.calibration import calibrate
from export.quantize import Calibration, quantize, quantize_weight
from export.reference import run_reference
from toolchain.verify import compare_runs
from helpers import TINY, assert_close
from sddpm.neuron import SPIKING_NEURONS
from sddpm.unet import ANNUNet, SpikingUNet, SpkResBlock
from tolerances import FLOAT64_REWRITE_ATOL


@pytest.fixture(scope="module")
def compiled():
    """(model, calibration batches, chip network at threshold factor 1)."""
    model, batches = firing_tiny_model(), digits_batches()
    return model, batches, compile_model(model, batches)


def _if_outputs(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """eps and the spike train of every neuron module (IF or LIF), captured by forward hooks in call order."""
    spikes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, SPIKING_NEURONS):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: spikes.__setitem__(name, out)))
    try:
        with torch.no_grad():
            eps = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return eps, spikes


@pytest.mark.parametrize("neuron", ["if", "lif"])
def test_float_graph_reproduces_the_model_spike_for_spike(neuron):
    # a LIF's leak is the population's keep = 1 - 1/tau and its 1/tau on the input is folded into the current
    # expression (head conv included): h = keep v + current is SpikingJelly's v + (x - v) / tau, rounded apart
    model = firing_tiny_model(neuron=neuron).double()
    graph = extract_graph(model)
    # Every kind of analog path is rewritten: identity and 1x1 shortcuts, stride-2 and up-sampling convs.
    assert {type(b.shortcut) for b in model.modules() if isinstance(b, SpkResBlock)} == {nn.Identity, nn.Conv2d}
    terms = [term for p in graph.populations for term in p.current.terms]
    assert {term.stride for term in terms} == {1, 2} and {term.upsample for term in terms} == {1, 2}

    x, t = digits_batches()[0]  # a different diffusion step per image
    assert len(set(t.tolist())) == len(t)
    x = x.double()
    eps, spikes = _if_outputs(model, x, t)
    run = run_float(graph, x, t)
    assert list(run.spikes) == list(spikes)  # one population per IF module, in the order the model calls them
    for name, s in spikes.items():
        assert 0.02 < float(s.mean()) < 0.8, f"{name} fires at {float(s.mean()):.3f}: the test would be vacuous"
        assert torch.equal(run.spikes[name], s), name
    assert_close(run.eps, eps, atol=FLOAT64_REWRITE_ATOL, what="eps of the float chip graph vs the model")


def test_float32_calibration_of_the_model_keeps_the_float64_graphs_peaks():
    # calibrate runs the model in float32 with hooks, keeping running maxima: its peaks must be those of the
    # float64 chip graph's recorded currents, membranes and readout over all batches, to float32 rounding.
    model = firing_tiny_model()
    graph = extract_graph(copy.deepcopy(model).double())
    batches = digits_batches(batches=2)
    runs = [run_float(graph, x.double(), t) for x, t in batches]
    calib = calibrate(model, batches)
    for p in graph.populations:
        for got, states in ((calib.peak_current, "currents"), (calib.peak_membrane, "membranes")):
            want = max(float(getattr(r, states)[p.name].abs().max()) for r in runs)
            assert got[p.name] == pytest.approx(want, rel=1e-5), (p.name, states)
        # the input it names as the population's peak holds it
        x, t = calib.peak_inputs[calib.peak_at[p.name]]
        one = run_float(graph, x.double(), t)
        peak = max(float(one.currents[p.name].abs().max()), float(one.membranes[p.name].abs().max()))
        assert peak == pytest.approx(max(calib.peak_current[p.name], calib.peak_membrane[p.name]), rel=1e-5)
    assert calib.peak_readout == pytest.approx(max(float(r.readout.abs().max()) for r in runs), rel=1e-5)
    assert calib.samples == sum(len(x) for x, _ in batches)


@pytest.mark.parametrize("swap, named", [
    (lambda m: setattr(m.downblocks[0], "bn1", nn.GroupNorm(2, 8)), "downblocks.0.bn1 (GroupNorm)"),
    (lambda m: setattr(m.middleblocks[1], "shortcut", nn.Dropout(0.1)), "middleblocks.1.shortcut (Dropout)"),
    (lambda m: setattr(m.upblocks[2], "neuron", nn.ReLU()), "upblocks.2.neuron (ReLU)"),
])
def test_an_unknown_layer_is_refused_by_name(swap, named):
    model = firing_tiny_model()
    swap(model)
    with pytest.raises(UnsupportedModelError, match=re.escape(named)):
        extract_graph(model)


def test_a_lif_model_compiles_its_leak_onto_lavas_dv():
    # tau 2 keeps half of v per step: dv = 4096 / 2 = 2048 exactly (v * 2048 >> 12, toward zero); no current
    # memory (du = 4095) as for IF. The threshold factor moves thresholds only, as for IF.
    model = firing_tiny_model(neuron="lif")
    net = compile_model(model, digits_batches())
    assert {(p.du, p.dv) for p in net.populations} == {(4095, 2048)}
    assert all(0 < p.vth for p in net.populations)


def test_the_ann_twin_is_refused():
    model = ANNUNet(dataclasses.replace(TINY, kind="ann"))
    with pytest.raises(UnsupportedModelError, match="the compiler maps SpikingUNet models, got ANNUNet"):
        compile_model(model, digits_batches())


def test_integers_fit_the_hardware_ranges(compiled):
    net = compiled[2]
    for syn in net.synapses:
        where = f"{syn.source} -> {syn.target}"
        # 8-bit signed mantissas, symmetric range: +-(2^7 - 1)
        assert syn.weight.dtype == np.int8 and np.abs(syn.weight.astype(int)).max() <= 127, where
        assert syn.weight_exp >= 0 and syn.delay >= 1, where
    for pop in net.populations:
        # 13-bit signed bias mantissas +-(2^12 - 1), 3-bit exponent, 17-bit unsigned threshold
        assert np.abs(pop.bias_mant.astype(int)).max() <= 4095 and 0 <= pop.bias_exp <= 7, pop.name
        assert 0 <= pop.vth <= 2 ** 17 - 1, pop.name


def test_every_weight_is_rounded_to_the_nearest_step_of_the_smallest_exponent(compiled):
    model, _, net = compiled
    graph = extract_graph(copy.deepcopy(model).double())
    scale = {p.name: p.scale for p in net.populations} | {"readout": net.readout.scale}
    expected = [(term, p.name) for p in graph.populations for term in p.current.terms]
    expected += [(term, "readout") for term in graph.readout.terms]
    assert [(term.source, target) for term, target in expected] == [(s.source, s.target) for s in net.synapses]
    for (term, target), syn in zip(expected, net.synapses):
        ideal = term.weight.numpy() / scale[target]  # a-units
        step = 2 ** syn.weight_exp
        # rounding, never clipping: within half a step of the float weight
        assert np.abs(syn.integer_weight() - ideal).max() <= step / 2, f"{syn.source} -> {target}"
        # the exponent is the smallest that fits: with e - 1 the peak would exceed 127, so |mant| >= 64
        assert syn.weight_exp == 0 or np.abs(syn.weight.astype(int)).max() >= 64, f"{syn.source} -> {target}"


def _differences(a, b, where: str) -> list[str]:
    """Paths at which two nested chip-network values differ (dataclasses, sequences, dicts, arrays)."""
    if dataclasses.is_dataclass(a):
        return [d for f in dataclasses.fields(a) for d in _differences(getattr(a, f.name), getattr(b, f.name),
                                                                         f"{where}.{f.name}")]
    if isinstance(a, (tuple, list)):
        if len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [where]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}[{k!r}]")]
    if isinstance(a, np.ndarray):
        return [] if a.dtype == b.dtype and np.array_equal(a, b) else [where]
    return [] if a == b else [where]


def test_threshold_factor_moves_every_threshold_and_nothing_else(compiled):
    model, batches, net = compiled
    guided = compile_model(model, batches, threshold_factor=0.997)
    assert guided.threshold_factor == 0.997
    assert [p.name for p, q in zip(net.populations, guided.populations) if not q.vth < p.vth] == []
    aligned = dataclasses.replace(guided, threshold_factor=net.threshold_factor, populations=tuple(
        dataclasses.replace(q, vth=p.vth) for p, q in zip(net.populations, guided.populations)))
    assert _differences(aligned, net, "net") == []


@pytest.mark.parametrize("weight, scale, mantissas, exp", [
    # /scale: [64, -128, 32]; the peak 128 > 127 needs e = ceil(log2(128 / 127)) = 1: [32, -64, 16]
    ([0.5, -1.0, 0.25], 1 / 128, [32, -64, 16], 1),
    # peak 100 <= 127: e = 0; round half to even: 2.5 -> 2, -1.5 -> -2
    ([2.5, -1.5, 100.0], 1.0, [2, -2, 100], 0),
    # e = ceil(log2(1000 / 127)) = ceil(2.98) = 3: 1000 / 8 = 125, -3 / 8 = -0.375 -> 0
    ([1000.0, -3.0], 1.0, [125, 0], 3),
    # peak exactly 2 * 127: e = log2(2) = 1, and the peak maps to 127 itself
    ([254.0, 1.0], 1.0, [127, 0], 1),  # 1 / 2 = 0.5 -> 0 (half to even)
    ([0.0, 0.0], 1.0, [0, 0], 0),
])
def test_quantize_weight_derived_by_hand(weight, scale, mantissas, exp):
    mant, e = quantize_weight(torch.tensor(weight, dtype=torch.float64), scale)
    assert mant.dtype == np.int8 and mant.tolist() == mantissas and e == exp


def _one_population_graph() -> FloatGraph:
    """A host-fed population of one neuron, threshold 1, read out by a 1x1 synapse of weight 1."""
    shape = (1, 1, 1)
    pop = FloatPopulation("p", shape, 1.0, Expr(shape), host_input=True)
    readout = Expr(shape, (Term("p", torch.ones(1, 1, 1, 1, dtype=torch.float64), padding=0),))
    return FloatGraph((pop,), readout, HostStages(torch.zeros(1, 1, 3, 3), torch.zeros(1), {}, 0.8), snn_steps=1,
                      diffusion_steps=1)


@pytest.mark.parametrize("peak, factor, scale, vth", [
    # peak 1: the range bound 2 * 1 / 2^17 is below the resolution bound 2^-12, so scale = 2^-12.
    # v (a-units) spikes iff v * 2^-12 >= 1 iff v >= 4096 iff v > 4095 = ceil(4096) - 1.
    (1.0, 1.0, 2 ** -12, 4095),
    # factor 0.997: theta / scale = 4083.712; v >= 4083.712 iff v > 4083 = ceil(4083.712) - 1
    (1.0, 0.997, 2 ** -12, 4083),
    # peak 128: the range bound HEADROOM * 128 / 2^17 = 2^-9 wins; theta / scale = 512 -> vth 511
    (128.0, 1.0, 2 ** -9, 511),
    # 0.997 * 512 = 510.464: v = 511 a-units is 0.998 >= 0.997 and spikes, v = 510 is 0.9961 and does not
    (128.0, 0.997, 2 ** -9, 510),
])
def test_integer_threshold_derived_by_hand(peak, factor, scale, vth):
    calib = Calibration({"p": peak}, {"p": 0.0}, peak_readout=1.0, samples=1, diffusion_steps=(0,))
    pop = quantize(_one_population_graph(), calib, TINY.to_dict(), threshold_factor=factor).populations[0]
    assert (pop.scale, pop.vth) == (scale, vth)


def test_the_host_saturates_far_out_of_range_inputs_without_overflow_or_a_changed_spike(compiled):
    _, batches, net = compiled
    x, t = batches[0]
    assert net.host_input_max < HOST_INPUT_MAX  # export.chip.host_saturation's level
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChipOverflowWarning)
        run_reference(net, x, t)  # the calibration data itself stays inside the 24-bit states
        saturated = run_reference(net, 1000 * x, t)  # a chain that diverged: clipped, nothing overflows
    # at the hardware's limit the same input overflows the first population's v, and warns naming it ...
    at_limit = dataclasses.replace(net, host_input_max=HOST_INPUT_MAX)
    with pytest.warns(ChipOverflowWarning) as caught:
        unsaturated = run_reference(at_limit, 1000 * x, t)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("population neuron: the host saturated") for m in messages), messages
    names = {p.name for p in net.populations}
    for m in messages:
        assert re.match(r"population (\S+):", m).group(1) in names, m
    # ... with the same spikes: a constant current beyond the level fires at every step or at none either way
    assert compare_runs(unsaturated, saturated, t=int(t[0])) is None


def _scaled_peaks(calib: Calibration, factor: float) -> Calibration:
    return dataclasses.replace(calib, peak_current={k: v * factor for k, v in calib.peak_current.items()},
                               peak_membrane={k: v * factor for k, v in calib.peak_membrane.items()})


def test_overflow_is_checked_at_the_peak_inputs_of_the_populations_near_their_range(monkeypatch):
    model, batches = firing_tiny_model(), digits_batches(batches=2)
    graph = extract_graph(copy.deepcopy(model).double())
    calib = calibrate(model, batches)
    cfg = model.cfg.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChipOverflowWarning)
        check_overflow(quantize(graph, calib, cfg), calib)  # calibrated: silent at its own peaks

    # Peak inputs far outside what the scales were chosen for, the host's current saturated only at the
    # hardware's limit: the check runs them, and passes on the integer network's overflow warnings, naming the
    # populations.
    net = dataclasses.replace(quantize(graph, calib, cfg), host_input_max=HOST_INPUT_MAX)
    wild = dataclasses.replace(calib, peak_inputs=tuple((40 * x, t) for x, t in calib.peak_inputs))
    with pytest.warns(ChipOverflowWarning) as caught:
        check_overflow(net, wild)
    named = {re.match(r"population (\S+):", str(w.message)).group(1) for w in caught}
    assert named and named <= {p.name for p in net.populations}

    # Which inputs run: the peak inputs of the populations whose peak lies within CHECKED_MARGIN of the range.
    ran = []
    monkeypatch.setattr("export.compiler.run_reference", lambda net, x, t: ran.append(len(x)))
    from export.chip import CURRENT_LIMIT
    for factor in (1 / 8, 1.0, 100.0):
        scaled = _scaled_peaks(calib, factor)
        net = quantize(graph, scaled, cfg)
        near = {scaled.peak_at[p.name] for p in net.populations
                if max(scaled.peak_current[p.name], scaled.peak_membrane[p.name]) / p.scale > CURRENT_LIMIT / CHECKED_MARGIN}
        ran.clear()
        check_overflow(net, scaled)
        assert ran == ([len(near)] if near else []), factor
    assert len(set(calib.peak_at.values())) > 1  # several inputs: the test would be vacuous with one


def test_the_reference_convolves_in_float32_only_where_every_partial_sum_is_exact():
    from types import SimpleNamespace

    from export.reference import _apply, _conv_dtype

    syn = SimpleNamespace(dense=False, upsample=1, stride=1, padding=0, dilation=1, groups=1)
    ones = torch.ones(1, 2, 1, 1, dtype=torch.bool)
    # 1x1 kernels over 2 channels of spikes that are all 1: the output is w0 + w1. 2^23 + 2^23 = 2^24 is the
    # largest sum float32 holds exactly; one more needs float64 (float32 would round 2^24 + 1 to 2^24).
    for weights, dtype in (([2 ** 23, 2 ** 23], torch.float32), ([2 ** 23, 2 ** 23 + 1], torch.float64),
                           ([-2 ** 23, 2 ** 23 + 1], torch.float64)):  # the bound is on |w|, whatever the signs
        w = np.array(weights, dtype=np.int64).reshape(1, 2, 1, 1)
        assert _conv_dtype(w, torch.device("cpu")) == dtype, weights
        got = _apply(syn, ones, torch.from_numpy(w.astype(np.float64)).to(dtype))
        assert int(got) == sum(weights), weights
        # on a GPU always float64 (cuDNN's TF32 and FFT/Winograd algorithms round float32), rounded back
        assert _conv_dtype(w, torch.device("cuda")) == torch.float64, weights
    # ... and refused from 2^31 on, where float64's error bound no longer stays below 1/2 (2^30 + 2^30 = 2^31)
    with pytest.raises(ExportInputError, match=r"sum \|W\| = 2147483648 >= 2\^31"):
        _conv_dtype(np.array([2 ** 30, -2 ** 30]).reshape(1, 2, 1, 1), torch.device("cuda"))


def test_the_shipped_model_does_not_overflow_on_a_sampling_chain_that_drifts():
    # The shipped model's deterministic DDIM chains drift to |x_t| ~ 50 (noisy training images: ~4.5). With the
    # host's current saturated at the hardware's limit its host-driven population saturated v there (make
    # demo's warning); saturated at export.chip.host_saturation's level the chain `sddpm verify` checks runs
    # clean, with the scale the training images set.
    from sddpm.checkpoint import load_model
    from sddpm.data import load_images
    from sddpm.schedule import NoiseSchedule
    from toolchain.paths import SHIPPED_CHECKPOINT
    from toolchain.verify import chain_states

    loaded = load_model(SHIPPED_CHECKPOINT)
    schedule = NoiseSchedule.linear(loaded.diffusion_config)
    images = load_images("mnist", "train")[:64]
    net = compile_model(loaded.model, calibration_batches(images, schedule, 1, 8))
    # the scale the training images set (calibrated on the chains too, its threshold had fallen to 222)
    assert net.host_input_max < HOST_INPUT_MAX and net.populations[0].vth > 2000
    x_T = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    states = chain_states(loaded.model.eval(), schedule, x_T, 100, 3)  # sddpm verify's chain, t = 999, 494, 0
    assert float(states[-1][0].abs().max()) > 20  # the drift this is about
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChipOverflowWarning)
        for x, t in states:
            run_reference(net, x, t)


@pytest.mark.parametrize("vth, bias, steps, level", [
    # T = 4, no bias: 4 steps of 64 L must stay within 2^23 - 1: L = (2^23 - 1) // 256 = 32767
    (4095, 0, 4, 32767),
    # a bias of 1000 v-units: (2^23 - 1 - 4000) // 256 = 8384607 // 256 = 32752; 64 L > 64 * 4095 + 1000
    (4095, 1000, 4, 32752),
    # T = 8: (2^23 - 1) // 512 = 16383
    (4095, 0, 8, 16383),
    # a threshold the level cannot clear: a current of 16383 a-units would not fire at once, an unsaturated
    # larger one would, so no level is spike-exact
    (20000, 0, 8, None),
])
def test_host_saturation_derived_by_hand(vth, bias, steps, level):
    assert host_saturation(vth, bias, steps) == level
