"""The states a check takes from a float DDIM chain: the right ones, and no model call past the last."""
import torch

from sddpm.config import DiffusionConfig
from sddpm.samplers import ddim_sample
from sddpm.schedule import NoiseSchedule
from toolchain.verify import chain_states


def _stub():
    calls = []

    def model(x, t):  # a denoiser whose eps is a fixed fraction of x: the chain moves deterministically
        calls.append(int(t[0]))
        return 0.1 * x

    return model, calls


def test_states_are_spread_over_the_chain_and_it_stops_after_the_last():
    schedule = NoiseSchedule.linear(DiffusionConfig())
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model, calls = _stub()
    full = chain_states(model, schedule, x_T, ddim_steps=5, check=5)
    # every state of our DDIM-5 grid (linspace(0, 999, 5) rounded, high to low); the last is recorded before its
    # model call, whose eps no check needs, so 4 calls
    assert [int(t[0]) for _, t in full] == [999, 749, 500, 250, 0] and calls == [999, 749, 500, 250]
    # the states are those our DDIM sampler passes its denoiser, bit for bit
    sampled = []
    ddim_sample(lambda x, t: sampled.append((x.clone(), t.clone())) or 0.1 * x, x_T, schedule, steps=5)
    for (x, t), (x_s, t_s) in zip(full, sampled, strict=True):
        assert torch.equal(x, x_s) and torch.equal(t, t_s)
    model, calls = _stub()
    # 3 of 5: round(i * 4 / 2) = states 0, 2, 4, the last again without its call
    three = chain_states(model, schedule, x_T, ddim_steps=5, check=3)
    assert len(calls) == 4
    for (x, t), (x_full, t_full) in zip(three, [full[0], full[2], full[4]]):
        assert torch.equal(x, x_full) and torch.equal(t, t_full)
    model, calls = _stub()
    (x, t), = chain_states(model, schedule, x_T, ddim_steps=100, check=1)
    assert calls == [] and torch.equal(x, x_T) and int(t[0]) == schedule.steps - 1  # the noise itself, at t = T - 1
