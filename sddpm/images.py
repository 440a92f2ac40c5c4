"""Pictures people look at: sample grids as PNG, written atomically."""
from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.utils import make_grid

from .files import atomic_write


def grid_image(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """float [-1, 1] or uint8 [N, C, H, W] -> one PIL image, `nrow` images per row (default: square)."""
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1.0
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(((images.clamp(-1, 1) + 1) / 2).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if images.shape[1] == 1 else array)


def save_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> str:
    with atomic_write(path) as f:
        grid_image(images, nrow).save(f, format="PNG")
    return path
