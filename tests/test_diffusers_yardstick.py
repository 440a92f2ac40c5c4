"""The yardstick against diffusers itself: its DDPMScheduler noises and samples as our schedule and our
official DDPM sampler do, and UNet2DModel loads, trains and samples through our checkpoints."""
import dataclasses

import torch
from diffusers import DDPMScheduler

from helpers import TINY, TINY_TRAIN, assert_close
from sddpm.checkpoint import load_model
from sddpm.config import DiffusionConfig, ModelConfig
from sddpm.diffusers_unet import DiffusersUNet, unet2d_kwargs
from sddpm.samplers import official_ddpm_sample
from sddpm.schedule import NoiseSchedule
from sddpm.training import train
from tolerances import DIFFUSERS_SCHEDULE_ATOL, SAMPLER_ATOL

SCHEDULE = NoiseSchedule.linear(DiffusionConfig())
# The SDDPM schedule as diffusers writes it: linear betas 1e-4 .. 0.02 over 1000 steps; fixed_large and
# clip_sample are the official sampler's fixedlarge variance and its clamp of x0 to [-1, 1].
SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                 variance_type="fixed_large", clip_sample=True, clip_sample_range=1.0)


def test_forward_noising_equals_ddpm_scheduler_add_noise():
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 1, 500, 999])
    ours = SCHEDULE.q_sample(x0, t, noise)
    theirs = DDPMScheduler(**SCHEDULER).add_noise(x0, noise, t)
    assert_close(ours, theirs, atol=DIFFUSERS_SCHEDULE_ATOL, what="q_sample vs DDPMScheduler.add_noise")


class WavyEps:
    """A denoiser whose eps depends on x and t, so that a wrong step index or coefficient shows."""

    def __call__(self, x, t):
        return 0.5 * torch.sin(3 * x) + (t.view(-1, 1, 1, 1).float() / 1000) * 0.3


def test_official_ddpm_equals_the_ddpm_scheduler_loop():
    # Both draw the noise of step t > 0 as one torch.randn of the image's shape on a CPU generator, in the
    # same order (999 down to 1), so one seed gives both the same draws: the runs agree up to float32 rounding.
    x_T = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    ours = official_ddpm_sample(WavyEps(), x_T, SCHEDULE, generator=torch.Generator().manual_seed(7))
    scheduler = DDPMScheduler(**SCHEDULER)
    scheduler.set_timesteps(1000)
    generator, x = torch.Generator().manual_seed(7), x_T
    for t in scheduler.timesteps:
        eps = WavyEps()(x, torch.full((len(x),), int(t)))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    assert_close(ours, x.clamp(-1, 1), atol=SAMPLER_ATOL, what="official DDPM vs diffusers DDPMScheduler")


def test_unet2d_at_the_twin_layout():
    cfg = ModelConfig(kind="diffusers", img_ch=1, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0)
    kwargs = unet2d_kwargs(cfg)
    # ch 16: 4 groups (4 channels each, the twin's rule), which also divide 32
    assert kwargs["block_out_channels"] == (16, 32, 32) and kwargs["norm_num_groups"] == 4
    assert kwargs["add_attention"] is False and kwargs["layers_per_block"] == 1
    net = DiffusersUNet(cfg)
    assert net(torch.randn(2, 1, 32, 32), torch.tensor([3, 900])).shape == (2, 1, 32, 32)


def test_diffusers_kind_trains_and_loads_from_its_checkpoint(tmp_path):
    cfg = dataclasses.replace(TINY, kind="diffusers", ch=8, ch_mult=(1, 2))
    train(str(tmp_path), cfg, TINY_TRAIN, progress=False)
    loaded = load_model(str(tmp_path / "last.pt"))
    assert isinstance(loaded.model, DiffusersUNet) and loaded.model_config.kind == "diffusers"
    x, t = torch.randn(1, 1, 32, 32), torch.tensor([10])
    assert torch.isfinite(loaded.model(x, t)).all()
