"""The ANN twin's GroupNorm: it must let the network see each image's mean (sddpm/eps_error.py)."""
import os

import pytest
import torch

from sddpm.checkpoint import load_model, save_checkpoint
from sddpm.config import DiffusionConfig, ModelConfig
from sddpm.eps_error import eps_error_by_step
from sddpm.schedule import NoiseSchedule, eps_loss
from sddpm.unet import build_model, norm_groups

SCHEDULE = NoiseSchedule.linear(DiffusionConfig())
TOY_SIZE = 16
TRAIN_STEPS = 300


def test_norm_groups_keep_at_least_four_channels_per_group():
    # 32 groups at DDPM's widths (128 -> 4 per group, 384 -> 12), ch // 4 below that; the legacy rule
    # gcd(32, ch) gives 16 groups of one channel at ch 16.
    assert [norm_groups(c) for c in (16, 32, 48, 128, 384)] == [4, 8, 12, 32, 32]
    assert norm_groups(18) == 3  # the largest divisor of 18 within 18 // 4 = 4
    assert [norm_groups(c, "gcd32") for c in (16, 48, 128)] == [16, 16, 32]


def _train_toy_twin(rule: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="ann", img_ch=1, img_size=TOY_SIZE, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                      dropout=0.0, group_norm=rule)
    net = build_model(cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    x0 = torch.zeros(32, 1, TOY_SIZE, TOY_SIZE)
    for step in range(TRAIN_STEPS):
        loss = eps_loss(net, x0, SCHEDULE, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize("rule, sees_the_mean", [("ddpm", True), ("gcd32", False)])
def test_twin_learns_the_mean_of_the_noise(rule, sees_the_mean):
    # Toy set: every image is 0, so x_t = sqrt(1 - abar_t) eps and eps = x_t / sqrt(1 - abar_t) exactly;
    # the per-image mean of eps is then known from x_t and a network that sees it can drive the mean part
    # of its error to 0. A network whose feature maps all have their mean removed (one channel per GroupNorm
    # group) keeps most of the blind level E[(mean eps)^2] = 1 / 256, recovering only what the zero padding
    # at the border leaks. Measured after 300 steps at t = 500: 5e-5 ("ddpm") against 1.2e-3 ("gcd32"), blind
    # level 4.1e-3; the bound 1/10 of the blind level separates them with a margin of 2 and 3 on each side.
    net = _train_toy_twin(rule)
    (row,) = eps_error_by_step(net, torch.zeros(256, 1, TOY_SIZE, TOY_SIZE), SCHEDULE, steps=(500,))
    assert (row.mean_part < 0.1 * row.blind_mean_part) == sees_the_mean, row


def test_version_1_twin_checkpoints_keep_their_grouping(tmp_path):
    # A version-1 file has no group_norm field; it was trained with gcd(32, ch) groups and must load so.
    cfg = ModelConfig(kind="ann", img_ch=1, img_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0,
                      group_norm="gcd32")
    old = cfg.to_dict()
    del old["group_norm"]
    path = str(tmp_path / "v1.pt")
    save_checkpoint(path, {"model_config": old, "diffusion_config": DiffusionConfig().to_dict(),
                           "train_config": None, "step": 0, "model": build_model(cfg).state_dict(), "ema": None})
    data = torch.load(path, weights_only=True)
    data["version"] = 1
    torch.save(data, path)
    loaded = load_model(path)
    assert loaded.model_config.group_norm == "gcd32"
    norms = [m for m in loaded.model.modules() if isinstance(m, torch.nn.GroupNorm)]
    # widths 16, 32, 48 and 64 in this U-Net: gcd(32, .) = 16, 32, 16, 32 groups
    assert {(m.num_channels, m.num_groups) for m in norms} == {(16, 16), (32, 32), (48, 16), (64, 32)}


def test_eval_eps_command_prints_the_mean_part_beside_the_blind_level(capsys):
    import json

    from toolchain.cli import main

    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "mnist-sddpm.pt")
    assert main(["eval-eps", "--checkpoint", shipped, "--count", "8", "--t", "0,999", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["t"] for r in out["rows"]] == [0, 999] and out["images"] == 8 and out["dataset"] == "mnist"
    for row in out["rows"]:
        # MSE = mean part + spatial part, so the mean part can never exceed the MSE
        assert 0 <= row["mean_part"] <= row["mse"] and row["blind_mean_part"] > 0
