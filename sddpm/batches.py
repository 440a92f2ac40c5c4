"""Shuffled training batches from an in-memory uint8 image set, resumable and shardable over ranks."""
from __future__ import annotations

from typing import Iterator

import torch

from .config import ConfigError
from .data import DataError, to_model_range


class ImageBatches:
    """Endless float batches in [-1, 1].

    Epoch e is the permutation drawn from seed (seed, e), and the flips of a batch from (seed, e, position),
    so (epoch, position) alone restores the exact next batch after a resume. With world_size > 1 each
    rank yields its slice of every global batch; the last partial batch of an epoch is dropped.
    """

    def __init__(self, images_u8: torch.Tensor, batch_size: int, seed: int = 0, hflip: bool = False,
                 rank: int = 0, world_size: int = 1):
        if len(images_u8) < batch_size:
            raise DataError(f"dataset has {len(images_u8)} images, fewer than one batch of {batch_size}")
        if batch_size % world_size:
            raise ConfigError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        self.images, self.batch_size, self.seed = images_u8, batch_size, seed
        self.hflip, self.rank, self.world_size = hflip, rank, world_size
        self.epoch, self.position = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _generator(self, *key: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, *key)) & 0x7FFF_FFFF_FFFF_FFFF)

    def __iter__(self) -> Iterator[torch.Tensor]:
        per_rank = self.batch_size // self.world_size
        order, order_epoch = None, None
        while True:
            if self.position + self.batch_size > len(self.images):
                self.epoch, self.position = self.epoch + 1, 0
            if order_epoch != self.epoch:
                order = torch.randperm(len(self.images), generator=self._generator(self.epoch))
                order_epoch = self.epoch
            mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
            x = to_model_range(self.images[order[self.position:self.position + self.batch_size][mine]])
            if self.hflip:
                # Flips are drawn for the whole global batch, so N ranks see what 1 process would.
                flip = (torch.rand(self.batch_size, generator=self._generator(self.epoch, self.position)) < 0.5)[mine]
                x[flip] = x[flip].flip(-1)
            self.position += self.batch_size
            yield x
