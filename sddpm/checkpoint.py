"""Checkpoints: written atomically, self-describing (configs + format version), loaded as data only.

Our format is a dict saved by `torch.save`:
    {"format": "sddpm-checkpoint", "version": 2, "model_config": {...}, "diffusion_config": {...},
     "train_config": {...} | None, "step": int, "model": state_dict, "ema": state_dict | None, ...}
Version 2 added `model_config.group_norm`; a version-1 file is read with the grouping it was trained
with ("gcd32"), never with today's default, since both give the same tensor shapes.
`model_config.neuron` and `tau` came later without a new version: the default ("if") is what every file
written before them was trained with, so such a file loads as IF.

Official SDDPM checkpoints load too: `main_SDDPM.py` saves `{"net_model", "optim", "step", "x_T"}`
(its EMA copy is defined but never updated or saved), so `net_model` is the weights; a file that also
holds an `ema_model` (as some forks write) is read from that when EMA weights are asked for. Their
model configuration is read off the tensor shapes.

Every load uses `torch.load(..., weights_only=True)`: a checkpoint is data, and a file that would
need to run code to unpickle is refused.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import SddpmError
from durableio import atomic_write
from .config import ConfigError, DiffusionConfig, ModelConfig, TrainConfig
from .unet import build_model

FORMAT = "sddpm-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(SddpmError, ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or does not match the architecture."""


def save_checkpoint(path: str, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_write(path) as f:
        torch.save(payload, f)


def read_checkpoint(path: str) -> dict[str, Any]:
    """The raw dict of a checkpoint file, loaded without executing anything from it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain "
                              f"data (loading it would execute code from the file): {e}") from None
    # torch's legacy (non-zip) loader reads any bytes as a pickle stream: on a file that is no checkpoint at all
    # (a text file, say) its weights-only unpickler fails with whatever its parser meets, an IndexError or a
    # KeyError among them
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, KeyError, ValueError, TypeError,
            AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    model_config: ModelConfig
    diffusion_config: DiffusionConfig
    train_config: TrainConfig | None
    step: int
    source: str  # "sddpm" or "official"
    path: str  # the file it was loaded from


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved from a DataParallel/DDP wrapper carry a `module.` prefix."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_model_config(state: dict[str, torch.Tensor], snn_steps: int = 4) -> ModelConfig:
    """Read an official Spk_UNet configuration off its state_dict (SNN steps are not stored there)."""
    try:
        table = state["time_embedding.timembedding.0.weight"]
        head = state["conv.weight"]
    except KeyError as e:
        raise CheckpointError(f"not an SDDPM spiking U-Net state_dict: missing {e.args[0]!r}") from None
    ch, img_ch = head.shape[0], head.shape[1]
    blocks: dict[int, str] = {}
    for key in state:
        m = re.match(r"downblocks\.(\d+)\.(conv1|conv)\.weight$", key)
        if m:
            blocks[int(m.group(1))] = "res" if m.group(2) == "conv1" else "down"
    ch_mult, per_level, level_mult = [], 0, None
    num_res_blocks = None
    for i in sorted(blocks):
        if blocks[i] == "res":
            per_level += 1
            level_mult = state[f"downblocks.{i}.conv1.weight"].shape[0] // ch
        else:
            ch_mult.append(level_mult)
            num_res_blocks, per_level = per_level, 0
    if per_level:
        ch_mult.append(level_mult)
        num_res_blocks = num_res_blocks or per_level
    if not ch_mult or num_res_blocks is None:
        raise CheckpointError("cannot read the U-Net levels off this state_dict (no downblocks found)")
    return ModelConfig(kind="snn", img_ch=int(img_ch), ch=int(ch), ch_mult=tuple(ch_mult),
                       num_res_blocks=num_res_blocks, snn_steps=snn_steps, diffusion_steps=int(table.shape[0]))


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:2]}")
        raise CheckpointError(f"{path}: weights do not match the {type(model).__name__} architecture: "
                              + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def upgrade_model_config(config: Any, version: int) -> Any:
    """A version-1 model config as version 2 reads it: its GroupNorm grouping was gcd(32, ch)."""
    if version == 1 and isinstance(config, dict):
        return {"group_norm": "gcd32", **config}
    return config


def load_model(path: str, use_ema: bool = True, snn_steps: int | None = None) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights (EMA weights when present and asked for)."""
    data = read_checkpoint(path)
    if "net_model" in data and "format" not in data:
        key = "ema_model" if use_ema and isinstance(data.get("ema_model"), dict) else "net_model"
        state = _strip_module_prefix(data[key])
        cfg = infer_model_config(state, snn_steps or 4)
        model = build_model(cfg)
        _load_weights(model, state, path)
        return LoadedModel(model.eval(), cfg, DiffusionConfig(steps=cfg.diffusion_steps), None,
                           int(data.get("step", 0) or 0), "official", path)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an SDDPM checkpoint (no 'format': {FORMAT!r} and no official "
                              f"'net_model' key; top-level keys: {sorted(data)[:8]})")
    if data.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format version {data.get('version')!r} is not supported "
                              f"(this build reads versions {list(READABLE_VERSIONS)})")
    for field in ("model_config", "diffusion_config", "model"):
        if field not in data:
            raise CheckpointError(f"{path}: checkpoint lacks the field {field!r}")
    try:
        model_cfg = ModelConfig.from_dict(upgrade_model_config(data["model_config"], data["version"]))
        if snn_steps is not None:
            model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "snn_steps": snn_steps})
        diffusion_cfg = DiffusionConfig.from_dict(data["diffusion_config"])
        train_cfg = TrainConfig.from_dict(data["train_config"]) if data.get("train_config") else None
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid configuration in checkpoint: {e}") from None
    model = build_model(model_cfg)
    state = data["ema"] if use_ema and data.get("ema") is not None else data["model"]
    _load_weights(model, state, path)
    return LoadedModel(model.eval(), model_cfg, diffusion_cfg, train_cfg, int(data.get("step", 0)), "sddpm", path)


def release_checkpoint(src: str, dst: str, use_ema: bool = True) -> dict[str, Any]:
    """Write a small inference checkpoint: the EMA (or raw) weights as `model`, the configs, no optimizer state."""
    data = read_checkpoint(src)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{src}: not an SDDPM training checkpoint")
    weights = data["ema"] if use_ema and data.get("ema") is not None else data["model"]
    payload = {"model_config": upgrade_model_config(data["model_config"], data.get("version")),
               "diffusion_config": data["diffusion_config"],
               "train_config": data.get("train_config"), "step": data.get("step", 0),
               "model": {k: v.clone() for k, v in weights.items()}, "ema": None,
               "weights": "ema" if weights is data.get("ema") else "raw"}
    save_checkpoint(dst, payload)
    return payload
