"""The `sddpm` command: train, sample, fid, release, demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import PRESETS, DiffusionConfig, ModelConfig, TrainConfig

SHIPPED_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "checkpoints", "mnist-sddpm.pt")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim",
                   help="ddpm: ancestral sampling over all diffusion steps; ddim: deterministic (eta=0) on a "
                        "sub-sequence of --steps steps (default: %(default)s)")
    g.add_argument("--steps", type=int, default=100, help="DDIM steps (default: %(default)s)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta; 1.0 adds DDPM-like noise (default: 0)")
    g.add_argument("--var-type", choices=("fixedlarge", "fixedsmall"), default="fixedlarge",
                   help="DDPM posterior variance (default: %(default)s, as SDDPM)")
    g.add_argument("--clip-x0", action="store_true",
                   help="clip every intermediate x0 prediction to [-1, 1] (DDPM's clip_denoised); by default only "
                        "the final images are clipped, as in the official SDDPM sampler")
    g.add_argument("--threshold-factor", type=float, default=1.0,
                   help="threshold-guided strategy: multiply every IF threshold by this factor, e.g. 0.997 "
                        "(default: 1.0, the trained thresholds)")
    g.add_argument("--batch-size", type=int, default=64, help="images per sampling batch (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="batch b starts from the noise of seed + b")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sddpm",
        description="Spiking denoising diffusion models (SDDPM): train, sample, and measure FID. "
                    "Runs on one CPU or GPU, or on many under `torchrun --nproc_per_node N -m sddpm ...`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an SDDPM (or its ANN twin); resumes if RUN_DIR holds a checkpoint",
                       description="Train a spiking U-Net (or the ANN twin) on eps-prediction. The run "
                                   "directory receives last.pt (atomic, resumable), loss.jsonl and sample "
                                   "grids; rerunning the same command after a kill resumes exactly.")
    p.add_argument("run_dir", help="directory for checkpoint, loss log and sample grids")
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, digits, cifar10, celeba")
    p.add_argument("--data-root", help="folder of cifar10 pickle batches or celeba images")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model configuration preset (default: derived "
                   "from the dataset: 'mnist' for 1-channel data, 'cifar10' or 'celeba' otherwise)")
    p.add_argument("--kind", choices=("snn", "ann"), help="snn: SDDPM spiking U-Net; ann: the DDPM twin")
    p.add_argument("--ch", type=int, help="base channels")
    p.add_argument("--ch-mult", type=_ints, help="channel multipliers per level, e.g. 1,2,2,4")
    p.add_argument("--num-res-blocks", type=int, help="residual blocks per level")
    p.add_argument("--snn-steps", type=int, help="SNN time steps T (paper: 4 or 8)")
    t = TrainConfig()
    p.add_argument("--steps", type=int, default=t.total_steps, help="total optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=t.batch_size, help="global batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=t.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=t.warmup, help="linear warm-up steps (default: %(default)s)")
    p.add_argument("--grad-clip", type=float, default=t.grad_clip, help="gradient norm clip (default: %(default)s)")
    p.add_argument("--ema-decay", type=float, default=t.ema_decay, help="EMA decay (default: %(default)s)")
    p.add_argument("--ckpt-every", type=int, default=t.ckpt_every, help="checkpoint period (default: %(default)s)")
    p.add_argument("--sample-every", type=int, default=t.sample_every,
                   help="sample-grid period, 0 to disable (default: %(default)s)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (CIFAR-10, CelebA)")
    p.add_argument("--seed", type=int, default=t.seed)

    p = sub.add_parser("sample", help="generate images: a PNG grid and an .npz of uint8 arrays",
                       description="Sample from a checkpoint (ours or an official SDDPM one) and write "
                                   "OUT/grid.png and OUT/samples.npz (key 'images', uint8 [N, C, H, W]).")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    p.add_argument("--out", default="out/samples", help="output folder (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=64, help="number of images (default: %(default)s)")
    _add_sampler_args(p)

    p = sub.add_parser("fid", help="FID (Inception-v3 pool3) of samples against a dataset's statistics",
                       description="Frechet Inception Distance of generated images against reference "
                                   "statistics of the dataset's training set (computed once, cached). Give "
                                   "--images (an .npz from `sddpm sample`) or --checkpoint to sample first.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help=".npz with key 'images' (uint8 [N, C, H, W])")
    src.add_argument("--checkpoint", help="sample --num-images images from this checkpoint first")
    p.add_argument("--dataset", default="mnist", help="reference dataset (default: %(default)s)")
    p.add_argument("--data-root", help="folder of cifar10 pickle batches or celeba images")
    p.add_argument("--num-images", type=int, default=1000, help="images to sample with --checkpoint (default: %(default)s)")
    p.add_argument("--ref-count", type=int, default=10000,
                   help="training images in the reference statistics (default: %(default)s)")
    p.add_argument("--real-baseline", action="store_true",
                   help="also report FID of as many real test images as samples (the small-count bias)")
    p.add_argument("--cache-dir", default="cache/fid", help="reference statistics cache (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_sampler_args(p)

    p = sub.add_parser("release", help="shrink a training checkpoint to its EMA weights and configs",
                       description="Write a small inference checkpoint (EMA weights stored as the model, "
                                   "configs, step; no optimizer state) for shipping.")
    p.add_argument("checkpoint", help="a training checkpoint (RUN_DIR/last.pt)")
    p.add_argument("out", help="path of the inference checkpoint to write")
    p.add_argument("--no-ema", action="store_true", help="ship the raw weights instead of the EMA weights")

    p = sub.add_parser("demo", help="sample a grid from the shipped MNIST SDDPM",
                       description="The embedded default job: sample the shipped MNIST SDDPM checkpoint with "
                                   "DDIM and write out/demo/grid.png.")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--num-images", type=int, default=64)
    return parser


def _model_config(args) -> ModelConfig:
    from .data import dataset_shape

    channels, size = dataset_shape(args.dataset)
    preset = args.preset or ("mnist" if channels == 1 else "celeba" if size == 64 else "cifar10")
    values = PRESETS[preset].to_dict()
    values.update(img_ch=channels, img_size=size)
    for name in ("kind", "ch", "ch_mult", "num_res_blocks", "snn_steps"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return ModelConfig.from_dict(values)


def cmd_train(args) -> None:
    from .training import train

    model_cfg = _model_config(args)
    train_cfg = TrainConfig(dataset=args.dataset, data_root=args.data_root, batch_size=args.batch_size, lr=args.lr,
                            warmup=args.warmup, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
                            total_steps=args.steps, seed=args.seed, ckpt_every=args.ckpt_every,
                            sample_every=args.sample_every, hflip=args.hflip)
    path = train(args.run_dir, model_cfg, train_cfg, DiffusionConfig())
    print(f"checkpoint: {path}")


def _sampler_config(args):
    from .generate import SamplerConfig

    return SamplerConfig(sampler=args.sampler, steps=args.steps, eta=args.eta, var_type=args.var_type,
                         clip_x0=args.clip_x0, threshold_factor=args.threshold_factor)


def _sample_images(args, count: int):
    from .checkpoint import load_model
    from .generate import generate
    from .training import init_distributed

    info = init_distributed()
    loaded = load_model(args.checkpoint, use_ema=not args.no_ema)
    model = loaded.model.to(info.device)
    return generate(model, loaded.diffusion_config, count, _sampler_config(args), batch_size=args.batch_size,
                    seed=args.seed, progress=info.is_main), info


def cmd_sample(args) -> None:
    import numpy as np

    from .checkpoint import atomic_write
    from .images import save_grid

    started = time.time()
    images, info = _sample_images(args, args.num_images)
    if info.is_main:
        grid = save_grid(images[:256], os.path.join(args.out, "grid.png"))
        with atomic_write(os.path.join(args.out, "samples.npz")) as f:
            np.savez_compressed(f, images=images.numpy())
        print(f"{len(images)} images in {time.time() - started:.1f} s -> {grid}, "
              f"{os.path.join(args.out, 'samples.npz')}")


def cmd_fid(args) -> None:
    import numpy as np
    import torch

    from .fid import fid_against_dataset, real_vs_real_fid

    if args.images:
        with np.load(args.images) as f:
            if "images" not in f:
                raise SystemExit(f"sddpm fid: {args.images} has no 'images' array (keys: {list(f.keys())})")
            images = torch.from_numpy(f["images"])
        is_main = True
    else:
        images, info = _sample_images(args, args.num_images)
        is_main = info.is_main
    fid = fid_against_dataset(images, args.dataset, args.ref_count, args.cache_dir, root=args.data_root)
    result = {"fid": fid, "samples": len(images), "dataset": args.dataset, "ref_count": args.ref_count}
    if args.real_baseline:
        result["real_vs_real_fid"] = real_vs_real_fid(args.dataset, len(images), args.cache_dir,
                                                      ref_count=args.ref_count, root=args.data_root)
    if is_main:
        print(json.dumps(result) if args.json else
              "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))


def cmd_demo(args) -> None:
    from .checkpoint import load_model
    from .generate import SamplerConfig, generate
    from .images import save_grid

    loaded = load_model(SHIPPED_CHECKPOINT)
    cfg = loaded.model_config
    print(f"shipped model: {cfg.kind} U-Net ch={cfg.ch} ch_mult={list(cfg.ch_mult)} T={cfg.snn_steps} "
          f"trained {loaded.step} steps on {loaded.train_config.dataset if loaded.train_config else '?'}")
    started = time.time()
    images = generate(loaded.model, loaded.diffusion_config, args.num_images, SamplerConfig(sampler="ddim", steps=100))
    path = save_grid(images, os.path.join(args.out, "grid.png"))
    print(f"sampled {args.num_images} images (DDIM, 100 steps) in {time.time() - started:.1f} s -> {path}")


def cmd_release(args) -> None:
    from .checkpoint import release_checkpoint

    payload = release_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema)
    print(f"{args.out}: {payload['weights']} weights of step {payload['step']}, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MiB")


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "fid": cmd_fid, "release": cmd_release, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ValueError as e:  # CheckpointError, ConfigError, DataError and InputError are ValueErrors
        print(f"sddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
