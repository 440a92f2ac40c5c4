"""Shared test helpers: tiny configurations and the one closeness check of the suite."""
from __future__ import annotations

import torch

from sddpm.config import ModelConfig, TrainConfig

# Small enough to train a step in well under a second on 2 cores, with both a down- and an up-sampling
# level, an identity and a 1x1-conv shortcut.
TINY = ModelConfig(img_ch=1, img_size=32, ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2)
TINY_TRAIN = TrainConfig(dataset="digits", batch_size=4, lr=1e-3, warmup=2, total_steps=4, ckpt_every=2,
                         sample_every=0, sample_count=4, ema_decay=0.9)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float = 0.0, atol: float, what: str) -> None:
    """Elementwise |a - e| <= atol + rtol |e|; on failure name the worst index and both values."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    excess = (actual - expected).abs() - (atol + rtol * expected.abs())
    if excess.numel() and float(excess.max()) > 0:
        index = tuple(int(i) for i in torch.unravel_index(excess.argmax(), excess.shape))
        raise AssertionError(f"{what}: not close at index {index}: {float(actual[index])!r} vs "
                             f"{float(expected[index])!r} (atol={atol}, rtol={rtol})")
