"""What every backend returns for one forward pass of a chip network: the quantized reference
(`export.reference`), the bit-accurate simulator (`simulators.network`) and Lava (`deploy`).

A data shape and nothing else: it holds no arithmetic, so the simulator, which shares no code with the
compiler, can return it without weakening its independence (the contract in pyproject.toml allows it this
one package). Comparing two runs is `toolchain.verify.compare_runs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

BACKENDS = ("reference", "simulator", "lava")


@dataclass(frozen=True)
class ChipRun:
    """One forward pass (T SNN steps) of a batch x_t at diffusion steps t.

    Every population's spikes are its window: SNN step s of a population at depth d is chip step d + s
    (zero-delay backends have d = 0), so runs of different timing modes compare element by element.
    """
    backend: str  # one of BACKENDS
    spikes: dict[str, torch.Tensor]  # population -> 0/1 [T, B, C, H, W]: bool, or the simulator's float32/int32
    readout: torch.Tensor  # int64 [T, B, C, H, W]: the chip's output currents (a-units), in the readout's window
    eps: torch.Tensor  # float32 [B, img_ch, H, W]
    chip_steps: int  # chip time steps the backend ran
    seconds: dict[str, float] = field(default_factory=dict)  # where the run's wall time went, e.g. build, run
    info: dict[str, object] = field(default_factory=dict)  # what else a backend reports, e.g. Lava's processes

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: one of {', '.join(BACKENDS)}")

    def to(self, device: str | torch.device) -> ChipRun:
        """The same run with its tensors on `device` (a GPU backend's run, compared on the CPU)."""
        return replace(self, spikes={name: s.to(device) for name, s in self.spikes.items()},
                       readout=self.readout.to(device), eps=self.eps.to(device))

    def bool_spikes(self) -> dict[str, torch.Tensor]:
        """Spikes as bool tensors (converted on demand: a sampling chain needs only eps)."""
        return {name: s.bool() for name, s in self.spikes.items()}
