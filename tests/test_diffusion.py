import math

import pytest
import torch

from helpers import assert_close
from sddpm.config import DiffusionConfig
from sddpm.samplers import ddim_sample, ddim_step, ddim_timesteps, ddpm_sample
from sddpm.schedule import NoiseSchedule, eps_loss
from tolerances import SAMPLER_ATOL, SCHEDULE_ATOL

SCHEDULE = NoiseSchedule.linear(DiffusionConfig())


def test_linear_schedule_closed_forms():
    betas = SCHEDULE.betas
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert float(betas[0]) == pytest.approx(1e-4, abs=SCHEDULE_ATOL)
    assert float(betas[-1]) == pytest.approx(0.02, abs=SCHEDULE_ATOL)
    # beta_t = 1e-4 + t (0.02 - 1e-4) / 999, so beta_1 = 1e-4 + 1.99e-2 / 999
    beta1 = 1e-4 + (0.02 - 1e-4) / 999
    assert float(betas[1]) == pytest.approx(beta1, abs=SCHEDULE_ATOL)
    # abar_1 = (1 - beta_0)(1 - beta_1); posterior variance at t=1 = beta_1 (1 - abar_0) / (1 - abar_1)
    abar1 = (1 - 1e-4) * (1 - beta1)
    assert float(SCHEDULE.alphas_bar[1]) == pytest.approx(abar1, abs=SCHEDULE_ATOL)
    assert float(SCHEDULE.posterior_variance[1]) == pytest.approx(beta1 * 1e-4 / (1 - abar1), abs=SCHEDULE_ATOL)
    # the forward process nearly destroys the signal: abar_999 ~ exp(-sum beta) ~ 4e-5
    assert float(SCHEDULE.alphas_bar[-1]) < 1e-4


def test_q_sample_and_predict_x0_invert_each_other():
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    x_t = SCHEDULE.q_sample(x0, t, noise)
    # at t = 0: x_t = sqrt(1 - 1e-4) x0 + 0.01 noise
    assert_close(x_t[0], math.sqrt(1 - 1e-4) * x0[0] + 0.01 * noise[0], atol=1e-6, what="q_sample t=0")
    assert_close(SCHEDULE.predict_x0(x_t, t, noise), x0, atol=1e-3, what="x0 from the true eps")


def _oracle(target: torch.Tensor):
    """The exact eps-predictor for data concentrated on one image: eps = (x_t - sqrt(abar) c) / sqrt(1 - abar)."""
    abar = SCHEDULE.alphas_bar

    def denoiser(x_t, t):
        a = abar[t].float().view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * target) / (1 - a).sqrt()
    return denoiser


@pytest.mark.parametrize("sample", [
    lambda d, x, g: ddpm_sample(d, x, SCHEDULE, "fixedlarge", generator=g),
    lambda d, x, g: ddpm_sample(d, x, SCHEDULE, "fixedsmall", generator=g),
    lambda d, x, g: ddim_sample(d, x, SCHEDULE, steps=20, generator=g),
    lambda d, x, g: ddim_sample(d, x, SCHEDULE, steps=7, eta=1.0, generator=g),
    lambda d, x, g: ddpm_sample(d, x, SCHEDULE, clip_x0=True, generator=g),
    lambda d, x, g: ddim_sample(d, x, SCHEDULE, steps=20, clip_x0=True, generator=g),
], ids=["ddpm-fixedlarge", "ddpm-fixedsmall", "ddim-20", "ddim-7-eta1", "ddpm-clip", "ddim-clip"])
def test_samplers_reach_the_data_point_with_an_oracle_denoiser(sample):
    target = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = sample(_oracle(target), torch.randn(2, 1, 4, 4, generator=gen), gen)
    assert_close(out, target.expand(2, 1, 4, 4), atol=SAMPLER_ATOL, what="sample")


def test_ddim_step_with_clipping_derives_eps_from_the_clipped_x0():
    x, eps = torch.tensor([1.0]), torch.tensor([0.0])
    # ab_t = 0.25, ab_prev = 0.64: x0 = (1 - sqrt(0.75) 0) / 0.5 = 2, so unclipped x_prev = 0.8 * 2 = 1.6
    assert_close(ddim_step(x, eps, 0.25, 0.64), torch.tensor([1.6]), atol=1e-6, what="unclipped step")
    # clipped: x0 = 1 and eps = (1 - 0.5 * 1) / sqrt(0.75) = 0.57735, x_prev = 0.8 * 1 + 0.6 * 0.57735 = 1.14641
    # (keeping the network's eps = 0 would give 0.8)
    assert_close(ddim_step(x, eps, 0.25, 0.64, clip_x0=True), torch.tensor([1.14641]), atol=1e-5,
                 what="clipped step")


def test_sampling_is_deterministic_under_a_seed():
    def noisy_denoiser(x, t):
        return 0.5 * x

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return ddpm_sample(noisy_denoiser, torch.randn(1, 1, 4, 4, generator=gen), SCHEDULE, generator=gen)
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1) == [0]
    assert ddim_timesteps(1000, 1000) == list(range(1000))
    seq = ddim_timesteps(1000, 50)
    assert len(seq) == 50 and seq[0] == 0 and seq[-1] == 999
    with pytest.raises(ValueError, match="DDIM steps"):
        ddim_timesteps(1000, 0)


def test_eps_loss_is_zero_for_the_oracle():
    target = torch.zeros(1, 1, 4, 4)
    loss = eps_loss(_oracle(target), target.expand(8, 1, 4, 4), SCHEDULE, torch.Generator().manual_seed(0))
    assert float(loss) < 1e-10
