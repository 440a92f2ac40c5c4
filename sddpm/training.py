"""Training: Adam with linear warm-up, gradient clipping, EMA, atomic checkpoints, resume, DDP.

A run lives in one directory: `last.pt` (the full training state, rewritten atomically every
`ckpt_every` steps and at the end), `loss.jsonl` (one line per step), `loss.png` (written at the end)
and `samples/step_XXXXXXX.png`.
Starting `train` on a directory that holds `last.pt` resumes from it and reaches exactly the state
an uninterrupted run would have: the data order is a function of (seed, epoch, position), saved in
the checkpoint, and the diffusion steps and noise of each step a function of (seed, step, rank).

Under `torchrun` (WORLD_SIZE > 1) every rank trains on its shard of each batch with
DistributedDataParallel (gloo on CPU, nccl on GPU); rank 0 writes checkpoints, logs and samples.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint, upgrade_model_config
from durableio import atomic_write
from .config import ConfigError, DiffusionConfig, ModelConfig, TrainConfig
from .batches import ImageBatches
from .data import dataset_shape, load_images
from .images import save_grid
from .plots import plot_loss
from .samplers import ddim_sample
from .schedule import NoiseSchedule, eps_loss
from .unet import build_model

CHECKPOINT_NAME = "last.pt"
PREVIEW_DDIM_STEPS = 50


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that `torchrun` describes in the environment; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available()
    if world_size == 1:
        return DistInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


def leave_distributed() -> None:
    """Leave the process group, if any, once every rank is here. Without the barrier a rank that exits right after
    a collective can close its sockets while a peer still reads the collective's last bytes (the peer then fails
    with a connection reset)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters and float buffers alike.

    BN running statistics are averaged with the weights (as the official `ema()` does over the whole
    state_dict): statistics copied from the raw model would not match the averaged weights, and an IF
    neuron's hard threshold turns that mismatch into wrong spikes. Integer buffers are copied.
    """
    pairs = [(e, p.detach()) for e, p in zip(ema.parameters(), model.parameters()) if p.requires_grad]
    pairs += [(e, b) for e, b in zip(ema.buffers(), model.buffers()) if b.is_floating_point()]
    torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if not b.is_floating_point():
            e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up: min(decay, (1 + step) / (10 + step)), so early averages do not hold on to the init."""
    return min(decay, (1 + step) / (10 + step))


def warmup_factor(step: int, warmup: int) -> float:
    """Linear learning-rate warm-up over `warmup` steps (step counts from 0)."""
    return 1.0 if warmup == 0 else min(step + 1, warmup) / warmup


def _append_log(path: str, records: list[dict]) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _truncate_log(path: str, step: int) -> None:
    """After a resume, drop log lines of steps the checkpoint does not contain."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] < step]
    with atomic_write(path, "w") as f:
        f.writelines(kept)


def train(run_dir: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
          diffusion_cfg: DiffusionConfig = DiffusionConfig(), progress: bool = True) -> str:
    """Train (or resume) a model in `run_dir`; returns the checkpoint path.

    One function of about 70 lines on purpose: the loop and the state it saves and resumes together (model,
    EMA, optimizer, scheduler, data order, log) read top to bottom in one place, as in nanoGPT's train.py.
    """
    info = init_distributed()
    ckpt_path = os.path.join(run_dir, CHECKPOINT_NAME)
    log_path = os.path.join(run_dir, "loss.jsonl")
    channels, size = _check_configs(model_cfg, train_cfg, info)

    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg).to(info.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_factor(s, train_cfg.warmup))
    batches = ImageBatches(load_images(train_cfg.dataset, "train", train_cfg.data_root), train_cfg.batch_size,
                           train_cfg.seed, hflip=train_cfg.hflip, rank=info.rank, world_size=info.world_size)
    preview_noise = torch.randn(train_cfg.sample_count, channels, size, size,
                                generator=torch.Generator().manual_seed(train_cfg.seed + 1))
    step = 0
    if os.path.exists(ckpt_path):
        step = _resume(ckpt_path, model_cfg, model, ema, optimizer, scheduler, batches)
    if info.is_main:
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        _truncate_log(log_path, step)

    net = nn.parallel.DistributedDataParallel(model) if info.world_size > 1 else model
    schedule = NoiseSchedule.linear(diffusion_cfg)
    model.train()
    batch_iter = iter(batches)
    pending: list[dict] = []

    def checkpoint(at_step: int) -> None:
        if info.is_main:
            _append_log(log_path, pending)
            pending.clear()
            save_checkpoint(ckpt_path, {
                "model_config": model_cfg.to_dict(), "diffusion_config": diffusion_cfg.to_dict(),
                "train_config": train_cfg.to_dict(), "step": at_step,
                "model": model.state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "data": batches.state_dict(),
            })
        if info.world_size > 1:
            dist.barrier()

    bar = tqdm(total=train_cfg.total_steps, initial=step, desc="train", disable=not (progress and info.is_main),
               dynamic_ncols=True)
    while step < train_cfg.total_steps:
        x0 = next(batch_iter).to(info.device)
        loss = eps_loss(net, x0, schedule, generator=_noise_generator(train_cfg.seed, step, info))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        ema_update(ema, model, ema_decay_at(step, train_cfg.ema_decay))
        step += 1
        loss_value = float(loss.detach())
        pending.append({"step": step - 1, "loss": loss_value, "grad_norm": float(grad_norm),
                        "lr": optimizer.param_groups[0]["lr"]})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if step % train_cfg.ckpt_every == 0 or step == train_cfg.total_steps:
            checkpoint(step)
        if info.is_main and train_cfg.sample_every and step % train_cfg.sample_every == 0:
            _preview(ema, schedule, preview_noise, os.path.join(run_dir, "samples", f"step_{step:07d}.png"))
    bar.close()
    if info.is_main:
        plot_loss(log_path, os.path.join(run_dir, "loss.png"))
    leave_distributed()
    return ckpt_path


def _check_configs(model_cfg: ModelConfig, train_cfg: TrainConfig, info: DistInfo) -> tuple[int, int]:
    """The dataset's (channels, size), checked against the model and the ranks."""
    if train_cfg.batch_size % info.world_size:
        raise ConfigError(f"batch size {train_cfg.batch_size} is not divisible by {info.world_size} ranks")
    channels, size = dataset_shape(train_cfg.dataset)
    if (model_cfg.img_ch, model_cfg.img_size) != (channels, size):
        raise ConfigError(f"dataset {train_cfg.dataset!r} has {channels}x{size}x{size} images but the model "
                          f"expects {model_cfg.img_ch}x{model_cfg.img_size}x{model_cfg.img_size}")
    return channels, size


def _noise_generator(seed: int, step: int, info: DistInfo) -> torch.Generator:
    """The generator of the diffusion steps and noise of one step on one rank, a function of (seed, step, rank)
    alone: a resumed run draws exactly what the uninterrupted run drew, with no generator state to save."""
    return torch.Generator(device=info.device).manual_seed(seed * 1_000_003 + step * info.world_size + info.rank)


def _resume(path, model_cfg, model, ema, optimizer, scheduler, batches) -> int:
    data = read_checkpoint(path)
    try:
        saved_cfg = ModelConfig.from_dict(upgrade_model_config(data.get("model_config"), data.get("version")))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model configuration in the run's checkpoint: {e}") from None
    if not saved_cfg.same_network(model_cfg):
        raise CheckpointError(f"{path}: the run directory holds a checkpoint of another model configuration "
                              f"({saved_cfg.to_dict()}); use a new directory")
    for field in ("model", "ema", "optimizer", "scheduler", "data"):
        if field not in data:
            raise CheckpointError(f"{path}: cannot resume: the checkpoint lacks {field!r}")
    model.load_state_dict(data["model"])
    ema.load_state_dict(data["ema"])
    optimizer.load_state_dict(data["optimizer"])
    scheduler.load_state_dict(data["scheduler"])
    batches.load_state_dict(data["data"])
    return int(data["step"])


@torch.no_grad()
def _preview(ema: nn.Module, schedule: NoiseSchedule, x_T: torch.Tensor, path: str) -> None:
    ema.eval()
    device = next(ema.parameters()).device
    images = ddim_sample(ema, x_T.to(device), schedule, steps=PREVIEW_DDIM_STEPS)
    save_grid(images.cpu(), path)
