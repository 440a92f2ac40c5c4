"""Frozen configuration dataclasses. Checkpoints carry them as plain dicts, so a file explains itself."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from .errors import SddpmError

ModelKind = Literal["snn", "ann", "diffusers"]
# snn: the SDDPM; ann: its DDPM twin (our U-Net); diffusers: diffusers' UNet2DModel at the twin's size
MODEL_KINDS = ("snn", "ann", "diffusers")
# How the ANN twin groups channels in GroupNorm. "ddpm": 32 groups where the width allows and never fewer
# than 4 channels per group (DDPM's ratio at ch 128). "gcd32": gcd(32, ch) groups, which checkpoints of
# format version 1 used; at ch 16 that is one channel per group (instance norm), which removes every
# image's per-channel mean, so the twin could not predict the mean of the noise (see `sddpm eval-eps`).
GroupNormRule = Literal["ddpm", "gcd32"]
# The spiking U-Net's neuron. if: integrate-and-fire, SDDPM's (SpikingJelly IFNode); lif: leaky
# integrate-and-fire (SpikingJelly LIFNode, decay_input=True) with membrane time constant `tau` SNN steps.
# Both: threshold 1.0, hard reset to 0, ATan surrogate (sddpm/neuron.py).
NeuronKind = Literal["if", "lif"]
NEURON_KINDS = ("if", "lif")
LIF_TAU = 2.0  # SpikingJelly LIFNode's default membrane time constant, in SNN steps
VarType = Literal["fixedlarge", "fixedsmall"]
# The default sampler (our DDIM, final image clipped) of `sddpm sample`, `sddpm demo` and the Lava grid: the one
# with the fewest network calls whose FID on the shipped SDDPM is within two bootstrap sds of the best of the
# sampler sweep (docs/quality.md; a test derives it again from the sweep's results). The spiking network's eps
# error acts like noise: eta 1 re-draws part of x_t at every step and washes it out, where eta 0 accumulates it.
DEFAULT_DDIM_STEPS = 50
DEFAULT_ETA = 1.0


class ConfigError(SddpmError, ValueError):
    """A configuration value is missing, unknown or out of range."""


def _from_dict(cls, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net. Defaults are the official SDDPM CIFAR-10 configuration (66,696,413 parameters).

    `diffusion_steps` sizes the sinusoidal time-embedding table (the official `T`);
    `snn_steps` is the number of SNN time steps (the official `timestep`).
    `neuron` and `tau` choose the spiking U-Net's neuron (see NeuronKind); tau is read by LIF only. A
    checkpoint written before they existed holds neither and is read as IF, which it was.
    """

    kind: ModelKind = "snn"
    img_ch: int = 3
    img_size: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    snn_steps: int = 4
    diffusion_steps: int = 1000
    dropout: float = 0.1  # official SDDPM passes it but never applies it; the ANN twin uses it
    group_norm: GroupNormRule = "ddpm"  # the ANN twin's GroupNorm grouping; the SDDPM has no GroupNorm
    neuron: NeuronKind = "if"
    tau: float = LIF_TAU

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"ModelConfig.kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        for name in ("img_ch", "img_size", "ch", "num_res_blocks", "snn_steps", "diffusion_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.group_norm not in ("ddpm", "gcd32"):
            raise ConfigError(f"ModelConfig.group_norm must be 'ddpm' or 'gcd32', got {self.group_norm!r}")
        if self.neuron not in NEURON_KINDS:
            raise ConfigError(f"ModelConfig.neuron must be one of {', '.join(NEURON_KINDS)}, got {self.neuron!r}")
        if self.neuron != "if" and self.kind != "snn":
            raise ConfigError(f"ModelConfig.neuron {self.neuron!r} needs kind 'snn': the {self.kind} U-Net has no "
                              f"spiking neurons")
        # tau > 1 as SpikingJelly's LIFNode asserts: the membrane keeps the fraction 1 - 1/tau in (0, 1).
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 1.0):
            raise ConfigError(f"ModelConfig.tau must be a finite number > 1 (SNN steps), got {self.tau!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.ch % 2:
            raise ConfigError(f"ModelConfig.ch must be even (sinusoidal embedding), got {self.ch}")
        if not self.ch_mult or any((not isinstance(m, int)) or m < 1 for m in self.ch_mult):
            raise ConfigError(f"ModelConfig.ch_mult must be positive ints, got {self.ch_mult!r}")
        if self.img_size % (2 ** (len(self.ch_mult) - 1)):
            raise ConfigError(
                f"ModelConfig.img_size {self.img_size} is not divisible by 2^{len(self.ch_mult) - 1} "
                f"(one halving per level of ch_mult {self.ch_mult})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def same_network(self, other: ModelConfig) -> bool:
        """Whether both describe the same computation: the spiking U-Net reads neither dropout nor
        group_norm, so SDDPM configs that differ only there (an older preset) are the same network; the
        IF neuron and the ANN twins do not read tau."""
        unused = {"tau": LIF_TAU} if self.neuron == other.neuron == "if" else {}
        if self.kind == other.kind == "snn":
            unused.update(dropout=0.0, group_norm="ddpm")
        return dataclasses.replace(self, **unused) == dataclasses.replace(other, **unused)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DiffusionConfig:
    """Linear beta schedule of DDPM (Ho et al. 2020) as used by SDDPM."""

    beta_1: float = 1e-4
    beta_T: float = 0.02
    steps: int = 1000

    def __post_init__(self):
        if not (0.0 < self.beta_1 < self.beta_T < 1.0):
            raise ConfigError(f"DiffusionConfig needs 0 < beta_1 < beta_T < 1, got {self.beta_1}, {self.beta_T}")
        if not isinstance(self.steps, int) or self.steps < 2:
            raise ConfigError(f"DiffusionConfig.steps must be an int >= 2, got {self.steps!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist"
    data_root: str | None = None
    batch_size: int = 32
    lr: float = 2e-4
    warmup: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    total_steps: int = 10000
    seed: int = 0
    ckpt_every: int = 200
    sample_every: int = 1000
    sample_count: int = 64
    hflip: bool = False

    def __post_init__(self):
        for name in ("batch_size", "total_steps", "ckpt_every", "sample_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.sample_every < 0:
            raise ConfigError("TrainConfig.warmup and sample_every must be >= 0")
        if not (0.0 <= self.ema_decay < 1.0):
            raise ConfigError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ConfigError("TrainConfig.lr and grad_clip must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


PRESETS: dict[str, ModelConfig] = {
    "cifar10": ModelConfig(),
    # The paper's MNIST/Fashion-MNIST runs use the CIFAR-10 U-Net on 1-channel 32x32 images.
    "mnist": ModelConfig(img_ch=1, ch_mult=(1, 2, 2, 2)),
    "celeba": ModelConfig(img_size=64),
    # What trains on a 2-core CPU in an hour (the shipped demo model). No dropout: at 0.28 M parameters
    # and 7 epochs the twin underfits rather than overfits (the SDDPM ignores dropout either way).
    "mnist-small": ModelConfig(img_ch=1, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0),
}
