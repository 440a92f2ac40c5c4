import json
import os

import pytest
import torch

from helpers import TINY, assert_close
from sddpm.config import PRESETS, ModelConfig
from sddpm.neuron import IF, LIF, if_multistep, if_step, lif_multistep, lif_step, set_threshold_factor
from sddpm.unet import ANNUNet, InputError, SpikingUNet, build_model, count_parameters
from tolerances import FORWARD_ATOL, GRAD_ATOL, GRAD_RTOL

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "official_spk_unet_keys.json")


def test_cifar10_configuration_has_the_official_parameter_count():
    # SDM Tab. 1 prints 63.61 "M" = 66,696,413 / 1024^2 (docs/sources.md section 1.2).
    assert count_parameters(build_model(PRESETS["cifar10"])) == 66_696_413


@pytest.mark.parametrize("preset", ["cifar10", "mnist-small"])
def test_state_dict_keys_and_shapes_match_the_official_spk_unet(preset):
    with open(GOLDEN) as f:
        official = json.load(f)["keys"][preset]
    ours = [[k, list(v.shape)] for k, v in SpikingUNet(PRESETS[preset]).state_dict().items()]
    assert ours == official


def test_if_neuron_spike_train_derived_by_hand():
    # threshold 1, v starts at 0, hard reset to 0:
    # t0: h = 0.6 -> no spike, v = 0.6; t1: h = 1.2 -> spike, v = 0; t2: h = 0.6 -> no spike, v = 0.6;
    # t3: h = 0.6 + 1.5 = 2.1 -> spike. h = 1.0 exactly also spikes (H(0) = 1, SpikingJelly's heaviside).
    x = torch.tensor([[0.6, 1.0], [0.6, 0.0], [0.6, 0.0], [1.5, 1.0]])
    assert if_multistep(x).tolist() == [[0, 1], [1, 0], [0, 0], [1, 1]]


def test_threshold_factor_changes_firing():
    # A constant input of 0.998 stays below threshold 1.0 at t0 but crosses 0.997 (the paper's TG factor).
    layer = IF()
    x = torch.full((1, 1), 0.998)
    assert layer(x).item() == 0.0
    set_threshold_factor(layer, 0.997)
    assert layer.threshold == pytest.approx(0.997)
    assert layer(x).item() == 1.0
    with pytest.raises(ValueError, match="threshold factor"):
        set_threshold_factor(layer, float("nan"))


def _spikes_and_grad(fn, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn's spikes of x and the gradient of (spikes * upstream).sum() with respect to x."""
    x.grad = None
    s = fn(x)
    (s * upstream).sum().backward()
    return s.detach(), x.grad.clone()


def _step_loop(step):
    """The spike train [T, ...] of a single-step neuron function step(x_t, v) -> (s, v) run over x_seq from 0."""
    def run(x_seq: torch.Tensor) -> torch.Tensor:
        v, out = torch.zeros_like(x_seq[0]), []
        for t in range(x_seq.shape[0]):
            s, v = step(x_seq[t], v)
            out.append(s)
        return torch.stack(out)
    return run


def test_fused_multistep_equals_the_single_step_reference_and_spikingjelly():
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    x = (torch.randn(4, 3, 64) + 0.4).requires_grad_()
    upstream = torch.randn(4, 3, 64)
    sj = neuron.IFNode(surrogate_function=surrogate.ATan(), step_mode="m")
    s_ours, g_ours = _spikes_and_grad(if_multistep, x, upstream)
    for name, fn in [("if_step loop", _step_loop(if_step)), ("SpikingJelly IFNode", sj)]:
        s_ref, g_ref = _spikes_and_grad(fn, x, upstream)
        assert torch.equal(s_ours, s_ref), name
        assert_close(g_ours, g_ref, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"IF gradient vs {name}")
    # without autograd the forward-only path gives the same spikes
    with torch.no_grad():
        assert torch.equal(if_multistep(x), s_ours)


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_unet_with_spikingjelly_neurons_gives_the_same_output(kind):
    from spikingjelly.activation_based import functional, neuron, surrogate

    node = {"if": neuron.IFNode, "lif": neuron.LIFNode}[kind]
    torch.manual_seed(0)
    ours = SpikingUNet(ModelConfig(**{**TINY.to_dict(), "neuron": kind})).eval()
    theirs = SpikingUNet(TINY).eval()
    theirs.load_state_dict(ours.state_dict())
    for parent in theirs.modules():
        for name, child in parent.named_children():
            if isinstance(child, IF):
                setattr(parent, name, node(surrogate_function=surrogate.ATan(), step_mode="m"))
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([0, 500, 999])
    with torch.no_grad():
        expected = theirs(x, t)
        functional.reset_net(theirs)
        assert_close(ours(x, t), expected, atol=FORWARD_ATOL, what="eps")
        if kind == "lif":  # and the leak matters: the IF model of the same weights gives another eps
            assert not torch.allclose(expected, SpikingUNet(TINY).eval()(x, t))


def test_lif_neuron_spike_train_derived_by_hand():
    # tau 2, threshold 1, v starts at 0, hard reset to 0; h = v + (x - v) / 2:
    # column 0, x = 0.8 always: h = 0.4, 0.6, 0.7, 0.75 -> never spikes (v tends to x < 1; IF spikes at t1);
    # column 1, x = 2, 0, 0, 2: h = 1.0 -> spike (h = 1 exactly spikes, as IF), v = 0; h = 0; h = 0; h = 1.0 -> spike;
    # column 2, x = 1.5 always: h = 0.75; 0.75 + 0.375 = 1.125 -> spike, v = 0; 0.75; 1.125 -> spike.
    x = torch.tensor([[0.8, 2.0, 1.5], [0.8, 0.0, 1.5], [0.8, 0.0, 1.5], [0.8, 2.0, 1.5]])
    assert lif_multistep(x).tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 1]]
    # one step by hand, tau 4: h = 0.5 + (1.3 - 0.5) / 4 = 0.7, no spike, so v = h; then x = 3.1:
    # h = 0.7 + 2.4 / 4 = 1.3 -> spike and v = 0
    s, v = lif_step(torch.tensor(1.3), torch.tensor(0.5), tau=4.0)
    assert s.item() == 0 and v.item() == pytest.approx(0.7)
    s, v = lif_step(torch.tensor(3.1), v, tau=4.0)
    assert s.item() == 1 and v.item() == 0


@pytest.mark.parametrize("steps, tau, threshold", [(4, 2.0, 1.0), (8, 2.0, 0.997), (4, 3.0, 1.0)])
def test_lif_equals_the_single_step_reference_and_spikingjelly_lifnode(steps, tau, threshold):
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    x = (torch.randn(steps, 3, 64) * 1.5 + 1.0).requires_grad_()
    upstream = torch.randn(steps, 3, 64)
    # SpikingJelly's defaults but the surrogate (ours is its ATan): decay_input=True, v_reset 0 (hard reset),
    # detach_reset False. Its training mode loops single steps under autograd.
    sj = neuron.LIFNode(tau=tau, v_threshold=threshold, surrogate_function=surrogate.ATan(), step_mode="m")
    s_ours, g_ours = _spikes_and_grad(lambda x_seq: lif_multistep(x_seq, tau, threshold), x, upstream)
    assert 0 < s_ours.mean() < 1
    reference = _step_loop(lambda x_t, v: lif_step(x_t, v, tau, threshold))
    for name, fn in [("lif_step loop", reference), ("SpikingJelly LIFNode", sj)]:
        s_ref, g_ref = _spikes_and_grad(fn, x, upstream)
        assert torch.equal(s_ours, s_ref), name
        assert_close(g_ours, g_ref, rtol=GRAD_RTOL, atol=GRAD_ATOL, what=f"LIF gradient vs {name}")
    # without autograd the forward-only path gives the same spikes, as does SpikingJelly's eval (jit) path
    with torch.no_grad():
        assert torch.equal(lif_multistep(x, tau, threshold), s_ours)
        sj.reset()
        assert torch.equal(sj.eval()(x), s_ours)


def test_lif_model_has_the_official_keys_and_the_lif_neuron_everywhere():
    with open(GOLDEN) as f:
        official = json.load(f)["keys"]["mnist-small"]
    model = SpikingUNet(ModelConfig(**{**PRESETS["mnist-small"].to_dict(), "neuron": "lif", "tau": 3.0}))
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == official
    neurons = [m for m in model.modules() if isinstance(m, (IF, LIF))]
    # head, 11 res blocks (3 down, 2 middle, 6 up) x 2, 2 down- and 2 up-samplings
    assert len(neurons) == 1 + 11 * 2 + 2 + 2
    assert all(isinstance(m, LIF) and not isinstance(m, IF) and m.tau == 3.0 for m in neurons)
    assert not list(neurons[0].parameters()) and not list(neurons[0].buffers())


@pytest.mark.parametrize("neuron", ["if", "lif"])
def test_eight_snn_steps_train_with_either_neuron(neuron):
    torch.manual_seed(0)
    model = SpikingUNet(ModelConfig(**{**TINY.to_dict(), "snn_steps": 8, "neuron": neuron}))
    eps = model(torch.randn(2, 1, 32, 32), torch.tensor([3, 700]))
    eps.square().mean().backward()
    assert eps.shape == (2, 1, 32, 32) and torch.isfinite(eps).all()
    grad = model.downblocks[0].conv1.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_neuron_configuration_is_checked_and_tau_matters_to_lif_only():
    from sddpm.config import ConfigError

    with pytest.raises(ConfigError, match="needs kind 'snn'"):
        ModelConfig(kind="ann", neuron="lif")
    with pytest.raises(ConfigError, match="tau must be a finite number > 1"):
        ModelConfig(neuron="lif", tau=0.5)
    # an IF model never reads tau; a LIF model of another tau, or an IF one, is another network
    assert ModelConfig(tau=3.0).same_network(ModelConfig())
    assert not ModelConfig(neuron="lif", tau=3.0).same_network(ModelConfig(neuron="lif"))
    assert not ModelConfig(neuron="lif").same_network(ModelConfig())


def test_forward_leaves_no_state_behind():
    torch.manual_seed(0)
    model = SpikingUNet(TINY).eval()
    assert not any(isinstance(m, IF) and list(m.buffers()) for m in model.modules())
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 20])
    with torch.no_grad():
        first = model(x, t)
        model(torch.randn(2, 1, 32, 32) * 5, t)  # a different input in between
        assert torch.equal(model(x, t), first)


@pytest.mark.parametrize("neuron, cls", [("if", IF), ("lif", LIF)])
def test_threshold_factor_reaches_every_neuron_of_the_unet(neuron, cls):
    model = SpikingUNet(ModelConfig(**{**TINY.to_dict(), "neuron": neuron}))
    set_threshold_factor(model, 0.997)
    thresholds = [m.threshold for m in model.modules() if isinstance(m, cls)]
    assert len(thresholds) == 1 + 8 * 2 + 1 + 1  # head, 8 res blocks (2 down, 2 middle, 4 up) x 2, down, up
    assert all(v == pytest.approx(0.997) for v in thresholds)


def test_threshold_factor_changes_lif_firing():
    # tau 2: a constant input of 1.997 gives h = 0.9985 at t0: below threshold 1.0, above 0.997
    layer = LIF()
    x = torch.full((1, 1), 1.997)
    assert layer(x).item() == 0.0
    set_threshold_factor(layer, 0.997)
    assert layer.threshold == pytest.approx(0.997)
    assert layer(x).item() == 1.0


def test_ann_twin_shapes_and_parameters():
    model = build_model(ModelConfig(**{**TINY.to_dict(), "kind": "ann"}))
    assert isinstance(model, ANNUNet)
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
    assert out.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("x, t, message", [
    (torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), r"shape \[B, 1, 32, 32\]"),
    (torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), r"shape \[B, 1, 32, 32\]"),
    (torch.full((2, 1, 32, 32), float("nan")), torch.tensor([1, 2]), "NaN"),
    (torch.randn(2, 1, 32, 32), torch.tensor([1, 1000]), r"\[0, 1000\)"),
    (torch.randn(2, 1, 32, 32), torch.tensor([1]), "diffusion step t"),
])
def test_bad_model_inputs_are_named(x, t, message):
    with pytest.raises(InputError, match=message):
        SpikingUNet(TINY)(x, t)


def test_model_denoiser_leaves_the_callers_model_as_it_was():
    from sddpm.generate import model_denoiser

    model = SpikingUNet(TINY).train()
    denoiser = model_denoiser(model, 0.997)
    assert model.training and not denoiser.training
    assert {m.threshold for m in model.modules() if isinstance(m, IF)} == {1.0}
    assert {m.threshold for m in denoiser.modules() if isinstance(m, IF)} == {0.997}
