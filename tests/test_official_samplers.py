"""The official SDDPM samplers (diffusion.py of AndyCao1125/SDDPM), derived by hand on stub denoisers.

`tools/compare_official_samplers.py` runs the official file itself against ours (README, Samplers).
"""
import math

import pytest
import torch

from helpers import assert_close
from sddpm.config import DiffusionConfig
from sddpm.generate import SamplerConfig
from sddpm.samplers import ddpm_sample, official_ddim_sample, official_ddim_timesteps, official_ddpm_sample
from sddpm.schedule import NoiseSchedule
from tolerances import SAMPLER_ATOL

SCHEDULE = NoiseSchedule.linear(DiffusionConfig())


class ConstantEps:
    """eps = value everywhere; records the diffusion steps it is called at."""

    def __init__(self, value: float):
        self.value, self.calls = value, []

    def __call__(self, x, t):
        self.calls.append(int(t[0]))
        return torch.full_like(x, self.value)


def test_official_ddim_step_list():
    # max(int(999 - (1000 / n) i), 0) for i < n, then 0 appended when missing
    assert official_ddim_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
    # 1000 / 3 = 333.33: 999, int(665.67) = 665, int(332.33) = 332, then 0
    assert official_ddim_timesteps(1000, 3) == [999, 665, 332, 0]
    # n = 1000 reaches 0 itself: nothing appended
    assert official_ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="DDIM steps"):
        official_ddim_timesteps(1000, 0)


def test_official_ddim_two_steps_by_hand():
    # Steps [999, 499, 0]: the model is called at 999 and 499, never at 0.
    # x_T = 0.2, eps = 0.3. At 999: x0 = (0.2 - sqrt(1 - ab999) 0.3) / sqrt(ab999) ~ -0.1 / 0.0064 ~ -16,
    # clipped to -1; x_499 = sqrt(ab499) (-1) + sqrt(1 - ab499) 0.3 (the network's eps kept).
    # At 499: x0 = (x_499 - sqrt(1 - ab499) 0.3) / sqrt(ab499) = -1 exactly, so
    # x_0 = sqrt(ab0) (-1) + sqrt(1 - ab0) 0.3 = -sqrt(1 - 1e-4) + 0.01 * 0.3, returned unclipped.
    stub = ConstantEps(0.3)
    out = official_ddim_sample(stub, torch.full((1, 1, 2, 2), 0.2), SCHEDULE, steps=2)
    assert stub.calls == [999, 499]
    expected = -math.sqrt(1 - 1e-4) + 0.01 * 0.3
    assert_close(out, torch.full((1, 1, 2, 2), expected), atol=SAMPLER_ATOL, what="official DDIM, 2 steps")


def test_official_ddim_returns_the_last_x_unclipped():
    # One step [999, 0], eps = 0, x_T = 0.5: x0 = 0.5 / sqrt(ab999) ~ 78, clipped to 1;
    # x_0 = sqrt(ab0) * 1 = sqrt(1 - 1e-4) = 0.99995: not clamped to 1, as the official code returns it.
    stub = ConstantEps(0.0)
    out = official_ddim_sample(stub, torch.full((1, 1, 2, 2), 0.5), SCHEDULE, steps=1)
    assert stub.calls == [999]
    assert_close(out, torch.full((1, 1, 2, 2), math.sqrt(1 - 1e-4)), atol=1e-7, what="official DDIM, 1 step")


def test_official_ddpm_by_hand_on_a_two_step_schedule():
    # betas 0.1, 0.5: ab0 = 0.9, ab1 = 0.45. x_T = 0.4, eps = 0.2.
    # t = 1: x0 = (0.4 - sqrt(0.55) 0.2) / sqrt(0.45) = 0.37517, inside [-1, 1];
    # posterior mean = sqrt(ab0) beta1 / (1 - ab1) x0 + sqrt(alpha1) (1 - ab0) / (1 - ab1) x_T
    #                = 0.86244 x0 + 0.12856 x_T; fixedlarge variance beta1 = 0.5; x_0 = mean + sqrt(0.5) z
    #                with z the generator's first draw.
    # t = 0: the official code returns clip((x_0 - sqrt(1 - ab0) eps) / sqrt(ab0)).
    schedule = NoiseSchedule.linear(DiffusionConfig(beta_1=0.1, beta_T=0.5, steps=2))
    x_T = torch.full((1, 1, 3, 3), 0.4)
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(5))
    x0_1 = (0.4 - math.sqrt(0.55) * 0.2) / math.sqrt(0.45)
    mean = math.sqrt(0.9) * 0.5 / 0.55 * x0_1 + math.sqrt(0.5) * 0.1 / 0.55 * 0.4
    x_0 = mean + math.sqrt(0.5) * z
    expected = ((x_0 - math.sqrt(0.1) * 0.2) / math.sqrt(0.9)).clamp(-1, 1)
    stub = ConstantEps(0.2)
    out = official_ddpm_sample(stub, x_T, schedule, generator=torch.Generator().manual_seed(5))
    assert stub.calls == [1, 0]
    assert_close(out, expected, atol=1e-6, what="official DDPM, 2-step schedule")


def test_official_ddpm_is_ours_with_x0_clipped():
    stub = lambda x, t: torch.tanh(x) * 0.8  # noqa: E731
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    schedule = NoiseSchedule.linear(DiffusionConfig(steps=50))
    official = official_ddpm_sample(stub, x_T, schedule, generator=torch.Generator().manual_seed(1))
    ours = ddpm_sample(stub, x_T, schedule, var_type="fixedlarge", clip_x0=True,
                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(official, ours)


def test_official_samplers_refuse_options_the_official_code_fixes():
    for options in ({"eta": 1.0}, {"clip_x0": True}, {"var_type": "fixedsmall"}):
        with pytest.raises(ValueError, match="official-ddim fixes"):
            SamplerConfig(sampler="official-ddim", **options)
