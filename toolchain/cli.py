"""The `sddpm` command: train, sample, fid, quality, release, compile, verify, export, energy, report, demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sddpm.config import PRESETS, DiffusionConfig, ModelConfig, TrainConfig
from toolchain.errors import UsageError
from toolchain.paths import SHIPPED_CHECKPOINT



def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=("ddpm", "ddim", "official-ddpm", "official-ddim"), default="ddim",
                   help="ddpm: our ancestral sampler over all diffusion steps; ddim: our DDIM (eta 0 by default) on "
                        "--steps steps spread over [0, 999], the model called at t = 0 too; official-ddpm and "
                        "official-ddim: exactly the official SDDPM diffusion.py (DDPM with x0 clipped at every "
                        "step; DDIM with x0 clipped at every step beside the network's eps, on steps 999, 899, ..., "
                        "returning the x reached at t = 0) (default: %(default)s)")
    g.add_argument("--steps", type=int, default=100, help="DDIM steps (ddim, official-ddim; default: %(default)s)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta; 1.0 adds DDPM-like noise (default: 0)")
    g.add_argument("--var-type", choices=("fixedlarge", "fixedsmall"), default="fixedlarge",
                   help="DDPM posterior variance (default: %(default)s, as SDDPM)")
    g.add_argument("--clip-x0", action="store_true",
                   help="ddpm and ddim: clip every intermediate x0 prediction to [-1, 1] (DDPM's clip_denoised, which "
                        "makes ddpm equal official-ddpm; ddim then derives eps again from x_t and the clipped x0); "
                        "without it only the final images are clipped")
    g.add_argument("--threshold-factor", type=float, default=1.0,
                   help="threshold-guided strategy: multiply every IF threshold by this factor, e.g. 0.997 "
                        "(default: 1.0, the trained thresholds)")
    g.add_argument("--batch-size", type=int, default=64, help="images per sampling batch (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="batch b starts from the noise of seed + b")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", choices=("float", "sim"), default="float",
                   help="float: the PyTorch model; sim: compile it and run every denoising step on the "
                        "bit-accurate chip simulator (default: %(default)s)")
    g.add_argument("--sim-mode", choices=("zero_delay", "delayed"), default="zero_delay",
                   help="simulator timing (default: %(default)s; both give identical results)")
    _add_calibration_args(p)


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    from export.compiler import CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES

    g = p.add_argument_group("calibration (compiling to the chip)")
    g.add_argument("--dataset", help="calibration images (default: the checkpoint's training dataset)")
    g.add_argument("--data-root", help="folder of cifar10 pickle batches or celeba images")
    g.add_argument("--calibration-batches", type=int, default=CALIBRATION_BATCHES,
                   help="batches of noisy training images (default: %(default)s)")
    g.add_argument("--calibration-batch-size", type=int, default=CALIBRATION_BATCH_SIZE,
                   help="images per calibration batch, t spread over all diffusion steps (default: %(default)s)")


def _add_chain_args(p: argparse.ArgumentParser, steps: int, what: str, batch_size: int | None) -> None:
    """The float DDIM chain from seeded noise whose denoising steps a command takes (batch_size None: one
    image, for backends without a batch dimension)."""
    p.add_argument("--steps", type=int, default=steps, help=f"denoising steps to {what} (default: %(default)s)")
    p.add_argument("--ddim-steps", type=int, default=100, help="length of the DDIM chain (default: %(default)s)")
    if batch_size is not None:
        p.add_argument("--batch-size", type=int, default=batch_size, help="images in the chain (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the chain")


def build_parser() -> argparse.ArgumentParser:
    from export.energy import LOIHI_DAVIES_2018

    parser = argparse.ArgumentParser(
        prog="sddpm",
        description="Spiking denoising diffusion models (SDDPM): train, sample and measure FID; compile for "
                    "Loihi 2, verify the chip network on a bit-accurate simulator and count its operations and "
                    "energy; run it on Lava; export ONNX and NIR files, and import NIR graphs of other tools. "
                    "Runs on one CPU or GPU, or on many under `torchrun --nproc_per_node N -m toolchain ...`.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
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
    _add_backend_args(p)

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
    p.add_argument("--save", help="also write the result as JSON to this file (atomically)")
    _add_sampler_args(p)

    p = sub.add_parser("eval-eps", help="eps MSE per diffusion step and the part from each image's mean",
                       description="Noise test images at fixed diffusion steps with one fixed draw of noise and "
                                   "measure the denoiser's eps MSE and the part of it that comes from each image's "
                                   "per-channel mean, beside what a network blind to that mean scores on the same "
                                   "draws. A mean part near the blind level means the network cannot predict the "
                                   "mean of the noise (the failure of a GroupNorm with one channel per group).")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    p.add_argument("--dataset", help="test images (default: the checkpoint's training dataset)")
    p.add_argument("--data-root", help="folder of cifar10 pickle batches or celeba images")
    p.add_argument("--count", type=int, default=256, help="test images (default: %(default)s)")
    p.add_argument("--t", type=_ints, default=None, help="diffusion steps (default: 0,50,100,250,500,750,999)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("quality", help="the README's quality tables: sample, FID and grid of each row",
                       description="Run the rows of the quality tables (all, or those matching NAME patterns "
                                   "such as 'fashion-*'): each row samples a shipped checkpoint with `sddpm "
                                   "sample` and scores it with `sddpm fid --real-baseline`, then writes a grid "
                                   "of its first images. Rows with a result are skipped, so a killed run "
                                   "resumes. --markdown prints the tables from the results.")
    p.add_argument("names", nargs="*", metavar="NAME", help="row names or shell patterns (default: every row)")
    p.add_argument("--out", default="runs/quality", help="per-row samples (default: %(default)s)")
    p.add_argument("--results", default="docs/quality", help="per-row FID results, kept in the repository "
                   "(default: %(default)s)")
    p.add_argument("--grid-dir", default="docs/img/quality", help="per-row sample grids (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="name the rows and whether each has a result")
    mode.add_argument("--commands", action="store_true", help="print the two sddpm commands of each row")
    mode.add_argument("--markdown", action="store_true", help="print the tables (rows without results say so)")
    mode.add_argument("--update-readme", metavar="PATH",
                      help="write the tables into PATH between its quality-table marker lines")

    p = sub.add_parser("release", help="shrink a training checkpoint to its EMA weights and configs",
                       description="Write a small inference checkpoint (EMA weights stored as the model, "
                                   "configs, step; no optimizer state) for shipping.")
    p.add_argument("checkpoint", help="a training checkpoint (RUN_DIR/last.pt)")
    p.add_argument("out", help="path of the inference checkpoint to write")
    p.add_argument("--no-ema", action="store_true", help="ship the raw weights instead of the EMA weights")

    p = sub.add_parser("compile", help="compile a checkpoint into a Loihi 2 chip network file",
                       description="Fold BN, rewrite the analog paths into spike-to-current synapses, turn the "
                                   "time embedding into bias tables, calibrate on noisy training images and "
                                   "quantize to 8-bit weights and integer thresholds; write the chip network "
                                   "(a NIR graph with the integers in its metadata, format sddpm-chip-nir) and print its populations.")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    p.add_argument("--out", default="out/chip/network.nir", help="chip network file (default: %(default)s)")
    p.add_argument("--threshold-factor", type=float, default=1.0,
                   help="threshold-guided strategy: integer thresholds of threshold x factor (default: 1.0)")
    _add_calibration_args(p)

    p = sub.add_parser("verify", help="prove denoising steps on the chip network: float vs quantized vs simulator",
                       description="Run a float DDIM chain from seeded noise and, at --steps denoising steps spread "
                                   "over it, compare the float model with the quantized reference (eps relative "
                                   "L2, PSNR, spike agreement) and the quantized reference with the bit-accurate "
                                   "simulator reading the exported file (identical spikes and output currents, or "
                                   "the first (population, SNN step, index) that differs). Exit status 1 if not "
                                   "identical.")
    p.add_argument("--backend", choices=("sim",), default="sim", help="what to check against the reference")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    _add_chain_args(p, steps=4, what="check", batch_size=4)
    p.add_argument("--sim-mode", choices=("delayed", "zero_delay"), default="delayed",
                   help="delayed: Lava's timing; zero_delay: all populations see SNN step t together "
                        "(default: %(default)s)")
    p.add_argument("--threshold-factor", type=float, default=1.0, help="threshold factor of both networks")
    p.add_argument("--chip-out", default="out/chip/network.nir", help="where the exported file is written")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_calibration_args(p)

    p = sub.add_parser("export", help="export a checkpoint to ONNX or NIR and check the file against its source",
                       description="Write a checkpoint to an interchange format, atomically, then run the file on "
                                   "noisy training images and compare it with where it came from. onnx: the float "
                                   "denoiser eps = f(x_t, t) with its T SNN steps unrolled (or the ANN twin), inputs "
                                   "x float32 [batch, C, H, W] and t int64 [batch], output eps float32 [batch, C, H, "
                                   "W]; run with onnxruntime and compared image by image and spike by spike. nir: "
                                   "the compiled chip network (Loihi 2 integers; the simulator's and the Lava "
                                   "backend's input), read back by nir.read with its type checks and run on the "
                                   "bit-accurate simulator against the quantized reference: identical or the first "
                                   "difference. nir-float: the float spiking network (IF nodes, float weights, "
                                   "biases per diffusion step in metadata), read back and run against the graph "
                                   "written. Exit status 1 if the file disagrees.")
    p.add_argument("--format", required=True, choices=sorted(EXPORTERS),
                   help="onnx: the float denoiser for onnxruntime; nir: the chip network as a NIR graph; nir-float: "
                        "the float spiking network as a NIR graph for other NIR tools")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    p.add_argument("--out", help="file to write (default: out/export/<checkpoint name>.<format>)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--threshold-factor", type=float, default=1.0, help="nir: threshold factor of the chip network")
    p.add_argument("--check-images", type=int, default=16,
                   help="noisy training images to check the file on, t spread over all diffusion steps "
                        "(default: %(default)s)")
    _add_calibration_args(p)

    p = sub.add_parser("deploy", help="run denoising steps of a chip network on Lava and compare with the simulator",
                       description="Read the chip network's NIR file (compiled from --checkpoint unless --nir names "
                                   "one), build it as a Lava process graph (LIF populations, Conv and Sparse "
                                   "synapses, delay lines, file sinks) and run --steps denoising steps of a real DDIM "
                                   "chain of one image with Lava's bit-accurate fixed-point models, host stages in "
                                   "PyTorch. Every spike of every population and every output current is compared "
                                   "with the bit-accurate simulator reading the same file: identical, or the first "
                                   "(population, SNN step, index) that differs. Exit status 1 if not identical.")
    p.add_argument("--backend", choices=("lava",), default="lava", help="where to run (default: %(default)s)")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    p.add_argument("--nir", help="an existing chip NIR file to deploy (default: compile --checkpoint)")
    p.add_argument("--chip-out", default="out/chip/network.nir", help="where a compiled network is written")
    _add_chain_args(p, steps=1, what="run", batch_size=None)
    p.add_argument("--threshold-factor", type=float, default=1.0, help="threshold factor when compiling")
    p.add_argument("--run-config", choices=("sim", "loihi2-hw"), default="sim",
                   help="sim: Lava's CPU simulator, Loihi2SimCfg(select_tag='fixed_pt'); loihi2-hw: Loihi2HwCfg, for "
                        "a machine with Loihi 2 and Intel's lava-loihi (never run here) (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_calibration_args(p)

    p = sub.add_parser("import-nir", help="compile a NIR graph from another tool (snnTorch, Norse, Sinabs, ...) to "
                                          "Loihi 2 integers for the simulator and Lava",
                       description="Read a NIR graph of Affine/Linear/Conv2d synapses (optionally after a Flatten) "
                                   "into IF/LIF/CubaLIF nodes, discretize it by forward Euler with --dt (IF adds R*I "
                                   "per step; the current before the voltage, as Lava does), quantize it to Lava's "
                                   "integer LIF (8-bit weight mantissas, thresholds of 1024 a-units) and write the "
                                   "same graph with the integers in its node metadata (format sddpm-net-nir). Nodes "
                                   "that do not map are named in the error.")
    p.add_argument("graph", help="NIR file to compile")
    p.add_argument("--out", required=True, help="compiled NIR file to write")
    p.add_argument("--dt", type=float, default=1e-4,
                   help="seconds per step for tau of LIF/CubaLIF (default: %(default)s, the snnTorch/NIR-paper "
                        "convention)")

    p = sub.add_parser("energy", help="count spikes, synaptic operations and host MACs of denoising steps on the "
                                      "chip network; energy per step and per image against the ANN twin",
                       description="Compile a checkpoint, run the bit-accurate simulator on --steps denoising steps "
                                   "spread over a float DDIM chain from seeded noise, and count exactly, per "
                                   "population, the spikes and the synaptic operations (SOPs: spikes x fan-out) of "
                                   "its outgoing synapses, plus neuron updates and the host's MACs. Prints them per "
                                   "denoising step of one image with the energy of a step and of a generated image "
                                   "(DDPM 1000, DDIM 100 and DDIM 50 steps) under the paper's 45 nm model and a "
                                   "Loihi-style model, against the ANN twin of the same configuration.")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    _add_chain_args(p, steps=10, what="count", batch_size=4)
    p.add_argument("--threshold-factor", type=float, default=1.0, help="threshold factor of the chip network")
    p.add_argument("--chip-out", default="out/chip/network.nir", help="where the chip network file is written")
    g = p.add_argument_group("Loihi-style model (Davies et al. 2018 as quoted secondhand: unconfirmed)")
    g.add_argument("--loihi-sop-pj", type=float, default=LOIHI_DAVIES_2018.sop_pj,
                   help="energy per synaptic operation, pJ (default: %(default)s)")
    g.add_argument("--loihi-update-pj", type=float, default=LOIHI_DAVIES_2018.update_pj,
                   help="energy per neuron update inside its window, pJ (default: %(default)s)")
    g.add_argument("--loihi-idle-update-pj", type=float, default=LOIHI_DAVIES_2018.idle_update_pj,
                   help="energy per idle neuron update, pJ (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_calibration_args(p)

    p = sub.add_parser("report", help="one report: compile, verify, count energy and estimate Loihi 2 resources",
                       description="Compile a checkpoint, run the verification ladder on --steps denoising steps of "
                                   "a float DDIM chain from seeded noise, count the simulator's spikes and SOPs of "
                                   "those steps (`sddpm energy`), estimate the Loihi 2 resources of the chip "
                                   "network, and write OUT/report.md with PNG plots (firing rate and SOPs per "
                                   "population, energy per step and per image against the ANN twin) and "
                                   "OUT/report.json. Exit status 1 if the simulator and the reference differ.")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")
    p.add_argument("--out", default="out/report", help="report folder (default: %(default)s)")
    _add_chain_args(p, steps=4, what="verify and count", batch_size=2)
    p.add_argument("--threshold-factor", type=float, default=1.0, help="threshold factor of the chip network")
    _add_calibration_args(p)

    p = sub.add_parser("demo", help="sample the shipped MNIST SDDPM, compile it for Loihi 2, verify it",
                       description="The embedded default job: sample the shipped MNIST SDDPM checkpoint with "
                                   "DDPM, 1000 steps, x0 clipped (out/demo/grid.png), compile it into a chip network "
                                   "(out/demo/network.nir), and check three denoising steps of a sampling chain "
                                   "on the bit-accurate simulator (Lava timing) against the quantized "
                                   "reference and the float model; prints the verification ladder and the "
                                   "energy of those steps, and writes the report (out/demo/report.md); then "
                                   "exports the float denoiser to ONNX and the float spiking network to NIR and "
                                   "checks both files against PyTorch; and runs one denoising step on Lava from the "
                                   "NIR file, compared spike for spike with the simulator.")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--num-images", type=int, default=16, help="images in the grid (default: %(default)s)")
    return parser


def _model_config(args) -> ModelConfig:
    from sddpm.data import dataset_shape

    channels, size = dataset_shape(args.dataset)
    preset = args.preset or ("mnist" if channels == 1 else "celeba" if size == 64 else "cifar10")
    values = PRESETS[preset].to_dict()
    values.update(img_ch=channels, img_size=size)
    for name in ("kind", "ch", "ch_mult", "num_res_blocks", "snn_steps"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return ModelConfig.from_dict(values)


def cmd_train(args) -> None:
    from sddpm.training import train

    model_cfg = _model_config(args)
    train_cfg = TrainConfig(dataset=args.dataset, data_root=args.data_root, batch_size=args.batch_size, lr=args.lr,
                            warmup=args.warmup, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
                            total_steps=args.steps, seed=args.seed, ckpt_every=args.ckpt_every,
                            sample_every=args.sample_every, hflip=args.hflip)
    path = train(args.run_dir, model_cfg, train_cfg, DiffusionConfig())
    print(f"checkpoint: {path}")


def _sampler_config(args):
    from sddpm.generate import SamplerConfig

    return SamplerConfig(sampler=args.sampler, steps=args.steps, eta=args.eta, var_type=args.var_type,
                         clip_x0=args.clip_x0)


def _calibration_dataset(args, loaded) -> str:
    if args.dataset:
        return args.dataset
    if loaded.train_config is None:
        raise UsageError(f"{args.checkpoint} does not say which dataset it was trained on: give --dataset")
    return loaded.train_config.dataset


def _compile(args, loaded, threshold_factor: float, path: str):
    """Compile the loaded model, calibrated on its dataset, and write the chip file; returns the network."""
    from export.nir_chip import write_chip_nir
    from export.compiler import calibration_batches, compile_model
    from sddpm.data import load_images
    from sddpm.schedule import NoiseSchedule

    images = load_images(_calibration_dataset(args, loaded), "train", args.data_root)
    batches = calibration_batches(images, NoiseSchedule.linear(loaded.diffusion_config), args.calibration_batches,
                                  args.calibration_batch_size)
    net = compile_model(loaded.model, batches, threshold_factor)
    write_chip_nir(path, net)
    return net


def _chain(loaded, threshold_factor: float, batch: int, seed: int, ddim_steps: int, steps: int):
    """The float model at `threshold_factor`, and (x_t, t) at `steps` denoising steps of its DDIM chain
    of `ddim_steps` from the noise of `seed` (`batch` images)."""
    import torch

    from sddpm.generate import model_denoiser
    from sddpm.schedule import NoiseSchedule
    from toolchain.verify import chain_states

    cfg = loaded.model_config
    model = model_denoiser(loaded.model.eval(), threshold_factor)
    x_T = torch.randn(batch, cfg.img_ch, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed))
    return model, chain_states(model, NoiseSchedule.linear(loaded.diffusion_config), x_T, ddim_steps, steps)


def _sample_images(args, count: int):
    from sddpm.checkpoint import load_model
    from sddpm.generate import generate, model_denoiser
    from sddpm.training import init_distributed

    info = init_distributed()
    loaded = load_model(args.checkpoint, use_ema=not args.no_ema)
    cfg = loaded.model_config
    if getattr(args, "backend", "float") == "sim":
        from simulators.network import ChipSimulator

        chip_path = os.path.join(args.out, "network.nir")
        _compile(args, loaded, args.threshold_factor, chip_path)
        denoiser, device = ChipSimulator.from_file(chip_path).denoiser(args.sim_mode), "cpu"
    else:
        denoiser, device = model_denoiser(loaded.model.to(info.device), args.threshold_factor), info.device
    return generate(denoiser, (cfg.img_ch, cfg.img_size, cfg.img_size), loaded.diffusion_config, count,
                    _sampler_config(args), batch_size=args.batch_size, seed=args.seed, progress=info.is_main,
                    device=device), info


def cmd_sample(args) -> None:
    import numpy as np

    from sddpm.files import atomic_write
    from sddpm.images import save_grid

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

    from sddpm.fid import fid_against_dataset, real_vs_real_fid

    if args.images:
        with np.load(args.images) as f:
            if "images" not in f:
                raise UsageError(f"{args.images} has no 'images' array (keys: {list(f.keys())})")
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
        if args.save:
            from sddpm.files import atomic_write

            with atomic_write(args.save, "w") as f:
                json.dump(result, f, indent=1)
        print(json.dumps(result) if args.json else
              "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))


def cmd_eval_eps(args) -> None:
    from sddpm.checkpoint import load_model
    from sddpm.data import load_images, to_model_range
    from sddpm.eps_error import DEFAULT_STEPS, eps_error_by_step, format_eps_errors
    from sddpm.schedule import NoiseSchedule

    loaded = load_model(args.checkpoint, use_ema=not args.no_ema)
    dataset = _calibration_dataset(args, loaded)
    x0 = to_model_range(load_images(dataset, "test", args.data_root)[:args.count])
    rows = eps_error_by_step(loaded.model, x0, NoiseSchedule.linear(loaded.diffusion_config),
                             args.t or DEFAULT_STEPS, seed=args.seed)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "dataset": dataset, "images": len(x0),
                          "step": loaded.step, "rows": [r.to_dict() for r in rows]}))
    else:
        print(f"{args.checkpoint} (step {loaded.step}) on {len(x0)} {dataset} test images:\n"
              + format_eps_errors(rows))


def cmd_quality(args) -> int:
    from toolchain import quality

    rows = quality.select(args.names)
    if args.list:
        for row in rows:
            result = quality.load_result(row, args.results)
            print(f"{row.name:36s} {'FID %.1f' % result['fid'] if result else 'not run'}")
    elif args.commands:
        for row in rows:
            print(f"# {row.name}\n" + "\n".join(quality.command_lines(row, args.out, args.results)))
    elif args.markdown:
        print(quality.markdown(args.results, args.grid_dir), end="")
    elif args.update_readme:
        quality.update_readme(args.update_readme, quality.markdown(args.results, args.grid_dir))
    else:
        failed = quality.run_rows(rows, args.out, args.results, args.grid_dir, main)
        if failed:
            print(f"sddpm quality: failed rows: {', '.join(row.name for row in failed)}", file=sys.stderr)
            return 1
    return 0


def cmd_deploy(args) -> int:
    from statistics import median

    import torch

    from deploy.chip_lava import run_config, run_denoising_step
    from export.energy import count_forward
    from export.nir_chip import read_chip_nir
    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator
    from toolchain.verify import compare_runs, first_count_difference

    loaded = load_model(args.checkpoint)
    path = args.nir or args.chip_out
    if not args.nir:
        _compile(args, loaded, args.threshold_factor, path)
    net, sim = read_chip_nir(path), ChipSimulator.from_file(path)
    _, states = _chain(loaded, args.threshold_factor, 1, args.seed, args.ddim_steps, args.steps)
    order = [p.name for p in net.populations]
    cfg = run_config(args.run_config)
    mismatch, count_mismatch, lava_s, sim_s, runs, sops = None, None, [], [], [], []
    for x, t in states:
        run = run_denoising_step(net, x, int(t[0]), cfg)
        started = time.perf_counter()
        out = sim.run(x, t, "delayed")
        sim_s.append(time.perf_counter() - started)
        lava_s.append(run.build_seconds + run.run_seconds)
        runs.append(run)
        lava_spikes = {name: torch.from_numpy(s)[:, None] for name, s in run.spikes.items()}
        mismatch = compare_runs(order, out.spikes, out.readout, lava_spikes, torch.from_numpy(run.readout)[:, None],
                                t=int(t[0]))
        if mismatch is not None:
            break
        # the energy accounting counted from Lava's spike records and from the simulator's
        sim_counts, lava_counts = count_forward(net, out.spike_trains), count_forward(net, lava_spikes)
        count_mismatch = count_mismatch or first_count_difference(sim_counts, lava_counts)
        sops.append(sum(int(p.sops.sum()) for p in lava_counts.populations))
    first = None if mismatch is None else {
        "denoising_step": mismatch.denoising_step, "population": mismatch.population, "snn_step": mismatch.snn_step,
        "index": list(mismatch.index), "simulator": mismatch.reference, "lava": mismatch.simulator}
    report = {"identical": mismatch is None, "steps_checked": len(runs), "first_mismatch": first,
              "counts_identical": mismatch is None and count_mismatch is None, "first_count_mismatch": count_mismatch,
              "sops_per_step": sops,
              "diffusion_steps": [int(t[0]) for _, t in states[:len(runs)]],
              "lava_seconds_per_step": median(lava_s), "sim_seconds_per_step": median(sim_s),
              "lava_build_seconds": median([r.build_seconds for r in runs]), "lava_processes": runs[0].processes,
              "chip_steps_per_denoising_step": net.steps_per_denoising_step, "nir_file": path,
              "run_config": args.run_config, "open_file_limit": runs[0].note}
    if args.json:
        print(json.dumps(report))
    else:
        print(format_deploy(report))
    return 0 if report["identical"] and report["counts_identical"] else 1


def format_deploy(r: dict) -> str:
    lines = [f"Lava ({r['run_config']}, {r['lava_processes']} processes, {r['chip_steps_per_denoising_step']} chip "
             f"steps per denoising step) vs the bit-accurate simulator, {r['nir_file']}:"]
    if r["open_file_limit"]:
        lines.append(f"  {r['open_file_limit']}")
    verdict = "identical spikes of every population and identical output currents" if r["identical"] else \
        f"DIFFERENT: first at {r['first_mismatch']}"
    lines.append(f"  {r['steps_checked']} denoising steps (t = {', '.join(map(str, r['diffusion_steps']))}): {verdict}")
    if r["identical"]:
        counts = "identical" if r["counts_identical"] else f"DIFFERENT: {r['first_count_mismatch']}"
        lines.append(f"  spike and SOP counts from Lava's records vs the simulator's: {counts} "
                     f"(SOPs per step: {', '.join(f'{n:,}' for n in r['sops_per_step'])})")
    lines.append(f"  per denoising step: Lava {r['lava_seconds_per_step']:.1f} s (build "
                 f"{r['lava_build_seconds']:.1f} s), simulator {r['sim_seconds_per_step'] * 1e3:.0f} ms "
                 f"({r['lava_seconds_per_step'] / r['sim_seconds_per_step']:.0f}x faster)")
    return "\n".join(lines)


def cmd_import_nir(args) -> int:
    import nir

    from export.nir_foreign import Discretization, write_foreign

    try:
        graph = nir.read(args.graph)
    except (KeyError, ValueError, TypeError) as err:  # OSError (h5py: not HDF5, missing) is a user error already
        raise UsageError(f"{args.graph}: not a readable NIR file ({type(err).__name__}: {err})") from None
    compiled = write_foreign(args.out, graph, Discretization(dt=args.dt))
    print(f"{'node':<20} {'type':<8} {'du':>5} {'dv':>5} {'vth':>5} {'scale':>10} {'weight_exp':>10}")
    for name, node in sorted(compiled.nodes.items()):
        md = node.metadata or {}
        if "du" in md:
            print(f"{name:<20} {type(node).__name__:<8} {md['du']:>5} {md['dv']:>5} {md['vth']:>5} "
                  f"{md['scale']:>10.3e} {'':>10}")
        elif "weight_exp" in md:
            print(f"{name:<20} {type(node).__name__:<8} {'':>5} {'':>5} {'':>5} {'':>10} {md['weight_exp']:>10}")
    print(f"compiled (dt = {args.dt:g} s) -> {args.out}")
    return 0


def cmd_compile(args) -> None:
    from sddpm.checkpoint import load_model

    loaded = load_model(args.checkpoint)
    net = _compile(args, loaded, args.threshold_factor, args.out)
    print(format_network(net))
    print(f"chip network -> {args.out}")


def format_network(net) -> str:
    """Populations, scales, thresholds and synapses of a chip network as a terminal table."""
    lines = [f"{'population':<24} {'shape':<14} {'depth':>5} {'scale':>10} {'vth':>6} {'bias_exp':>8} {'inputs':>6}"]
    for p in net.populations:
        inputs = "host" if p.host_input else str(len(net.inputs_of(p.name)))
        lines.append(f"{p.name:<24} {'x'.join(map(str, p.shape)):<14} {p.depth:>5} {p.scale:>10.3e} {p.vth:>6} "
                     f"{p.bias_exp:>8} {inputs:>6}")
    r = net.readout
    lines.append(f"{'readout':<24} {'x'.join(map(str, r.shape)):<14} {r.depth:>5} {r.scale:>10.3e} {'-':>6} {'-':>8} "
                 f"{len(net.inputs_of('readout')):>6}")
    weights = sum(s.weight.size for s in net.synapses)
    lines.append(f"{len(net.populations)} populations, {len(net.synapses)} synapses ({weights:,} 8-bit weights), "
                 f"{net.steps_per_denoising_step} chip steps per denoising step, threshold factor "
                 f"{net.threshold_factor}")
    return "\n".join(lines)


def cmd_verify(args) -> int:
    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator
    from toolchain.verify import format_ladder, run_ladder

    loaded = load_model(args.checkpoint)
    net = _compile(args, loaded, args.threshold_factor, args.chip_out)
    sim = ChipSimulator.from_file(args.chip_out)
    model, states = _chain(loaded, args.threshold_factor, args.batch_size, args.seed, args.ddim_steps, args.steps)
    report = run_ladder(model, net, sim, states, args.sim_mode, progress=not args.json)
    if args.json:
        print(json.dumps({**report.to_json(), "chip_file": args.chip_out, "threshold_factor": args.threshold_factor,
                          "batch_size": args.batch_size}))
    else:
        print(format_ladder(report))
    return 0 if report.identical else 1


def cmd_energy(args) -> None:
    import dataclasses

    from export.energy import ENERGY_MODELS, LOIHI_DAVIES_2018, ann_operations, count_forward, summarize
    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator

    loaded = load_model(args.checkpoint)
    cfg = loaded.model_config
    net = _compile(args, loaded, args.threshold_factor, args.chip_out)
    sim = ChipSimulator.from_file(args.chip_out)
    _, states = _chain(loaded, args.threshold_factor, args.batch_size, args.seed, args.ddim_steps, args.steps)
    runs = [count_forward(net, sim.run(x, t).spike_trains) for x, t in states]
    loihi = dataclasses.replace(LOIHI_DAVIES_2018, sop_pj=args.loihi_sop_pj, update_pj=args.loihi_update_pj,
                                idle_update_pj=args.loihi_idle_update_pj)
    report = summarize(runs, ann_operations(cfg), tuple(loihi if m is LOIHI_DAVIES_2018 else m for m in ENERGY_MODELS))
    report.update(checkpoint=args.checkpoint, chip_file=args.chip_out, ddim_chain=args.ddim_steps,
                  images=args.batch_size, denoising_steps=[int(t[0]) for _, t in states],
                  threshold_factor=args.threshold_factor)
    print(json.dumps(report) if args.json else format_energy(report))


def format_energy(report: dict) -> str:
    """The counts of `export.energy.summarize` and the energies as terminal tables."""
    from toolchain.report import si

    steps = report["denoising_steps"]
    lines = [f"one denoising step of one image, T = {report['snn_steps']}: mean over {len(steps)} denoising steps (t = "
             f"{', '.join(map(str, steps))}) of a DDIM-{report['ddim_chain']} chain of {report['images']} images",
             f"{'population':<24} {'neurons':>9} {'rate':>7} {'spikes':>12} {'SOPs (outgoing)':>16}"]
    for p in report["populations"]:
        lines.append(f"{p['name']:<24} {p['neurons']:>9,} {p['firing_rate']:>7.3f} {p['spikes']:>12,.0f} "
                     f"{p['sops']:>16,.0f}")
    step, neurons = report["per_denoising_step"], sum(p["neurons"] for p in report["populations"])
    rate = step["spikes"] / (neurons * report["snn_steps"])
    lines.append(f"{'all ' + str(len(report['populations'])) + ' populations':<24} {neurons:>9,} {rate:>7.3f} "
                 f"{step['spikes']:>12,.0f} {step['sops']:>16,.0f}")
    host = step["host_macs"]
    lines += [
        f"SOPs per SNN step: {', '.join(f'{v:,.0f}' for v in step['sops_per_snn_step'])}",
        f"neuron updates: {step['neuron_updates']:,} in the windows (neurons x T), {step['idle_neuron_updates']:,} "
        f"idle at the other chip steps of Lava's timing ({report['chip_steps']} per denoising step)",
        f"host MACs: {sum(host.values()):,} ({', '.join(f'{k} {v:,}' for k, v in host.items())}); time embedding "
        f"{step['time_embedding_macs']:,} (compiled into bias tables: not priced)",
        f"ANN twin MACs: {report['ann']['macs']:,} (time embedding {report['ann']['time_embedding_macs']:,}, not "
        "priced)", ""]
    samplers = list(next(iter(report["energy"].values()))["snn"]["per_image_j"])
    lines.append(f"{'energy model':<34} {'per step':>10} " + " ".join(f"{s:>10}" for s in samplers))
    notes = []
    for name, e in report["energy"].items():
        c = e["constants_pj"]
        label = name if e["confirmed"] else name + " *"
        for who, kind in ((f"{label}: SNN", "snn"), ("  ANN twin", "ann")):
            joules = e[kind]
            lines.append(f"{who:<34} {si(joules['per_denoising_step_j']['total'], 'J', 'u'):>10} "
                         + " ".join(f"{si(joules['per_image_j'][s], 'J', 'u'):>10}" for s in samplers))
        lines.append(f"{'  SNN / ANN':<34} {e['snn_over_ann']:>10.3f}")
        notes.append(f"{label}: {c['mac_pj']:g} pJ per MAC, {c['sop_pj']:g} pJ per SOP, {c['update_pj']:g} / "
                     f"{c['idle_update_pj']:g} pJ per neuron update / idle update; {e['source']}")
    return "\n".join(lines + [""] + notes)


def _verify_and_report(args, loaded, net, chip_path: str, batch: int, seed: int, ddim_steps: int, steps: int,
                       title: str):
    """The ladder on `steps` denoising steps of a seeded DDIM chain, the energy of those same simulator runs,
    the resource estimate, and the report in args.out; returns (ladder, energy summary, report path)."""
    from export.energy import ann_operations, count_forward, summarize
    from export.resources import estimate
    from simulators.network import ChipSimulator
    from toolchain.report import write_report
    from toolchain.verify import run_ladder

    cfg = loaded.model_config
    model, states = _chain(loaded, net.threshold_factor, batch, seed, ddim_steps, steps)
    runs = []
    ladder = run_ladder(model, net, ChipSimulator.from_file(chip_path), states, "delayed",
                        on_run=lambda out: runs.append(count_forward(net, out.spike_trains)))
    summary = summarize(runs, ann_operations(cfg))
    summary.update(checkpoint=args.checkpoint, chip_file=chip_path, ddim_chain=ddim_steps, images=batch,
                   denoising_steps=ladder.diffusion_steps, threshold_factor=net.threshold_factor)
    return ladder, summary, write_report(args.out, summary, ladder, estimate(net), title)


def cmd_report(args) -> int:
    from sddpm.checkpoint import load_model
    from toolchain.verify import format_ladder

    loaded = load_model(args.checkpoint)
    chip_path = os.path.join(args.out, "network.nir")
    net = _compile(args, loaded, args.threshold_factor, chip_path)
    ladder, summary, path = _verify_and_report(args, loaded, net, chip_path, args.batch_size, args.seed,
                                               args.ddim_steps, args.steps,
                                               f"SDDPM on Loihi 2: {os.path.basename(args.checkpoint)}")
    print(format_ladder(ladder) + "\n\n" + format_energy(summary) + f"\n\nreport -> {path}")
    return 0 if ladder.identical else 1


def cmd_export(args) -> int:
    from sddpm.checkpoint import load_model

    loaded = load_model(args.checkpoint, use_ema=not args.no_ema)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0]
    return EXPORTERS[args.format](args, loaded, args.out or os.path.join("out", "export", f"{name}.{args.format}"))


def _check_images(args, loaded, seed: int):
    """(dataset name, (x_t, t)): --check-images noisy training images, t spread over the diffusion steps."""
    from export.compiler import calibration_batches
    from sddpm.data import load_images
    from sddpm.schedule import NoiseSchedule

    dataset = _calibration_dataset(args, loaded)
    ((x, t),) = calibration_batches(load_images(dataset, "train", args.data_root),
                                    NoiseSchedule.linear(loaded.diffusion_config), 1, args.check_images, seed=seed)
    return dataset, (x, t)


def _export_onnx(args, loaded, path: str) -> int:
    from export.onnx_export import OPSET, compare_onnx, export_onnx

    export_onnx(loaded.model, path)
    cfg = loaded.model_config
    image = f"[batch, {cfg.img_ch}, {cfg.img_size}, {cfg.img_size}]"
    print(f"{path}: ONNX opset {OPSET}, {os.path.getsize(path) / 1e6:.1f} MB; x float32 {image}, t int64 [batch] -> "
          f"eps float32 {image}")
    dataset, (x, t) = _check_images(args, loaded, seed=0)
    report = compare_onnx(loaded.model, path, x, t)
    print(f"onnxruntime vs PyTorch on {len(x)} noisy {dataset} training images:")
    print(format_onnx_comparison(report, t))
    return 0 if report.ok else 1


def _export_nir(args, loaded, path: str) -> int:
    import nir
    import torch

    from export.reference import run_reference
    from simulators.network import ChipSimulator
    from toolchain.verify import compare_runs

    net = _compile(args, loaded, args.threshold_factor, path)
    graph = nir.read(path)  # NIR's own reader, type checks on
    kinds = sorted({type(node).__name__ for node in graph.nodes.values()})
    print(f"{path}: NIR {nir.__version__} graph, {len(graph.nodes)} nodes ({', '.join(kinds)}), "
          f"{len(graph.edges)} edges, {os.path.getsize(path) / 1e6:.1f} MB; passes nir.read's type checks")
    dataset, (x, t) = _check_images(args, loaded, seed=1)
    ref = run_reference(net, x, t)
    out = ChipSimulator.from_file(path).run(x, t, "delayed")
    mismatch = compare_runs([p.name for p in net.populations], ref.spikes, ref.readout, out.spikes, out.readout,
                            t=int(t[0]))
    what = f"simulator reading {path} vs the in-memory quantized reference, {len(x)} noisy {dataset} images"
    found = "identical spikes, output currents and eps" if mismatch is None else \
        f"first difference at population {mismatch.population}, SNN step {mismatch.snn_step}, index {mismatch.index}"
    print(f"{what}: {found}")
    return 0 if mismatch is None and torch.equal(out.eps, ref.eps) else 1


def _export_nir_float(args, loaded, path: str) -> int:
    import copy

    import nir

    from export.graph import extract_graph, run_float
    from export.nir_float import FILE_ROUND_TRIP_ATOL, read_float_nir, write_float_nir

    graph = extract_graph(copy.deepcopy(loaded.model).double())
    write_float_nir(path, graph)
    kinds = sorted({type(node).__name__ for node in nir.read(path).nodes.values()})
    print(f"{path}: NIR {nir.__version__} graph ({', '.join(kinds)}), {os.path.getsize(path) / 1e6:.1f} MB; passes "
          f"nir.read's type checks")
    dataset, (x, t) = _check_images(args, loaded, seed=1)
    written, read = run_float(graph, x.double(), t), run_float(read_float_nir(path), x.double(), t)
    flips = [name for name, s in written.spikes.items() if not bool((s == read.spikes[name]).all())]
    diff = float((written.eps - read.eps).abs().max())
    print(f"the graph read back vs the graph written (float64, {len(x)} noisy {dataset} images): spikes "
          f"{'identical' if not flips else 'differ in ' + ', '.join(flips)}, max |eps diff| {diff:.1e} "
          f"(tolerance {FILE_ROUND_TRIP_ATOL:.0e}: weights are float32 on file)")
    return 0 if not flips and diff <= FILE_ROUND_TRIP_ATOL else 1


def format_onnx_comparison(report, t) -> str:
    """Agreement of eps on the images with identical spikes, and each image whose spikes differ."""
    from export.onnx_export import ONNX_ATOL, TIE_ATOL

    same = len(report.eps_diff) - len(report.flips)
    images = (f"{same} images with identical spike trains ({report.spikes_compared:,} neuron-steps each)"
              if report.spikes_compared else f"{same} images (no spiking layers)")
    lines = [f"  {images}: max |eps diff| {report.same_spikes_max_abs_diff:.2e} (tolerance {ONNX_ATOL:.0e})"]
    for f in report.flips:
        kind = "a float32 tie" if f.is_tie else f"NOT a tie (membranes more than {TIE_ATOL:.0e} apart)"
        lines.append(f"  image {f.image} (t={int(t[f.image])}): first differing spike {f.population}, SNN step "
                     f"{f.snn_step}, (c, y, x) = {f.index}: h - threshold {f.z_torch:.2e} (PyTorch) vs "
                     f"{f.z_onnx:.2e} (onnxruntime), {kind}; its eps differs by {report.eps_diff[f.image]:.2e}")
    verdict = "DISAGREES" if not report.ok else "agrees" + (
        ": every larger difference follows a spike flipped at a float32 tie" if report.flips else "")
    lines.append(f"  max |eps diff| over all images: {report.max_abs_diff:.2e} -> {verdict}")
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from sddpm.checkpoint import load_model
    from sddpm.generate import SamplerConfig, generate, model_denoiser
    from sddpm.images import save_grid
    from toolchain.verify import format_ladder

    loaded = load_model(SHIPPED_CHECKPOINT)
    cfg = loaded.model_config
    print(f"shipped model: {cfg.kind} U-Net ch={cfg.ch} ch_mult={list(cfg.ch_mult)} T={cfg.snn_steps} "
          f"trained {loaded.step} steps on {loaded.train_config.dataset if loaded.train_config else '?'}")
    started = time.time()
    model = model_denoiser(loaded.model)
    # DDPM with x0 clipped (Ho et al.'s clip_denoised): the small model's deterministic DDIM chains drift off the
    # data range late, where ancestral sampling with clipped x0 predictions gives clean digits (README, FID table)
    images = generate(model, (cfg.img_ch, cfg.img_size, cfg.img_size), loaded.diffusion_config, args.num_images,
                      SamplerConfig(sampler="ddpm", clip_x0=True))
    path = save_grid(images, os.path.join(args.out, "grid.png"))
    print(f"sampled {args.num_images} images (DDPM, 1000 steps, x0 clipped) in {time.time() - started:.1f} s -> {path}")

    started = time.time()
    args.checkpoint, args.dataset, args.data_root = SHIPPED_CHECKPOINT, None, None
    args.calibration_batches, args.calibration_batch_size = 2, 16
    chip_path = os.path.join(args.out, "network.nir")
    net = _compile(args, loaded, 1.0, chip_path)
    print(f"\ncompiled for Loihi 2 in {time.time() - started:.1f} s -> {chip_path}")
    print(format_network(net))
    ladder, summary, path = _verify_and_report(args, loaded, net, chip_path, 2, 0, 100, 3,
                                               "SDDPM on Loihi 2: the shipped MNIST model")
    print("\n" + format_ladder(ladder) + "\n\n" + format_energy(summary) + f"\n\nreport -> {path}")

    print("\ninterchange files, each read back and checked against its source:")
    args.check_images, args.no_ema = 8, False
    exported = [exporter(args, loaded, os.path.join(args.out, name)) == 0
                for exporter, name in ((_export_onnx, "denoiser.onnx"), (_export_nir_float, "float.nir"))]

    print("\none denoising step on Lava (CPU, fixed-point models) from the chip network's NIR file:")
    args.nir, args.steps, args.ddim_steps, args.seed, args.threshold_factor = chip_path, 1, 100, 0, 1.0
    args.run_config, args.json = "sim", False
    deployed = cmd_deploy(args) == 0
    return 0 if ladder.identical and all(exported) and deployed else 1


def cmd_release(args) -> None:
    from sddpm.checkpoint import release_checkpoint

    payload = release_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema)
    print(f"{args.out}: {payload['weights']} weights of step {payload['step']}, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MiB")


# `sddpm export --format NAME`: NAME -> function(args, loaded checkpoint, output path) -> exit status
EXPORTERS = {"onnx": _export_onnx, "nir": _export_nir, "nir-float": _export_nir_float}
COMMANDS = {"train": cmd_train, "sample": cmd_sample, "fid": cmd_fid, "release": cmd_release, "compile": cmd_compile,
            "verify": cmd_verify, "export": cmd_export, "import-nir": cmd_import_nir, "deploy": cmd_deploy, "energy": cmd_energy, "report": cmd_report,
            "quality": cmd_quality, "demo": cmd_demo, "eval-eps": cmd_eval_eps}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)  # for people at a terminal, not the source line


def main(argv: list[str] | None = None) -> int:
    import warnings

    from toolchain.errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores the process's warning display on the way out
            warnings.showwarning = _one_line_warning
            return COMMANDS[args.command](args) or 0
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"sddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
