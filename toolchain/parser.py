"""The `sddpm` command line: every subcommand's options, each shared option declared once."""
from __future__ import annotations

import argparse
import math
import re

from sddpm.config import (DEFAULT_DDIM_STEPS, DEFAULT_ETA, LIF_TAU, MODEL_KINDS, NEURON_KINDS, PRESETS, ConfigError,
                          TrainConfig)
from toolchain.paths import SHIPPED_CHECKPOINT

EXPORT_FORMATS = ("nir", "nir-float", "onnx")  # `sddpm export --format`, see toolchain.pipeline.EXPORTERS


# The configurations the parsed options stand for: the pipeline takes these, never the options themselves.

def model_config_of(args):
    """`sddpm train`: the preset of the dataset (or --preset), with the options given on top."""
    from sddpm.config import ModelConfig
    from sddpm.data import dataset_shape

    channels, size = dataset_shape(args.dataset)
    preset = args.preset or ("mnist" if channels == 1 else "celeba" if size == 64 else "cifar10")
    values = PRESETS[preset].to_dict()
    values.update(img_ch=channels, img_size=size)
    for name in ("kind", "ch", "ch_mult", "num_res_blocks", "snn_steps", "neuron", "tau"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.tau is not None and values["neuron"] != "lif":
        # an IF model would store the tau it never reads, and the user would believe it leaks
        raise ConfigError(f"--tau is the LIF time constant: give --neuron lif with it (the neuron is "
                          f"{values['neuron']!r})")
    return ModelConfig.from_dict(values)


def sampler_config_of(args):
    from sddpm.generate import SamplerConfig

    eta = args.eta if args.eta is not None else DEFAULT_ETA if args.sampler == "ddim" else 0.0
    return SamplerConfig(sampler=args.sampler, steps=args.steps, eta=eta, var_type=args.var_type,
                         clip_x0=args.clip_x0)


def calibration_of(args):
    from toolchain.pipeline import Calibration

    return Calibration(args.dataset, args.data_root, args.calibration_batches, args.calibration_batch_size)


class Bounded:
    """An argparse type: an int or a finite float inside a declared range (`low`, `high`; open ends say so), or an
    error that names the range. The option test (tests/test_cli_options.py) tries every option of every command
    against its range."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.high is None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        inside = math.isfinite(value) and (self.low is None or value > self.low or (value == self.low and
                                                                                      not self.low_open))
        inside = inside and (self.high is None or value < self.high or (value == self.high and not self.high_open))
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value


_positive_int = Bounded(int, 1)
_count = Bounded(int, 0)  # seeds, periods where 0 means never, resamplings
_positive = Bounded(float, 0, low_open=True)
_non_negative = Bounded(float, 0)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="default: the shipped MNIST model")


def _add_threshold_factor(p, what: str) -> None:
    p.add_argument("--threshold-factor", type=_positive, default=1.0, help=what + " (default: %(default)s)")


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler", f"default: our DDIM, {DEFAULT_DDIM_STEPS} steps, eta {DEFAULT_ETA:g}: the "
                                        "sampler with the fewest network calls whose FID on the shipped SDDPM is "
                                        "within two bootstrap sds of the best of the sampler sweep (docs/quality.md). "
                                        "The spiking network's eps error acts like noise, which eta 1 washes out and "
                                        "eta 0 accumulates; DDPM 1000 costs 20 times the calls for a worse FID")
    g.add_argument("--sampler", choices=("ddpm", "ddim", "official-ddpm", "official-ddim"), default="ddim",
                   help="ddpm: our ancestral sampler over all diffusion steps; ddim: our DDIM on --steps steps spread "
                        "over [0, 999], the model called at t = 0 too; official-ddpm and "
                        "official-ddim: exactly the official SDDPM diffusion.py (DDPM with x0 clipped at every "
                        "step; DDIM with x0 clipped at every step beside the network's eps, on steps 999, 899, ..., "
                        "returning the x reached at t = 0) (default: %(default)s)")
    g.add_argument("--sampler-steps", "--steps", dest="steps", type=_positive_int, default=DEFAULT_DDIM_STEPS,
                   help="DDIM steps (ddim, official-ddim; default: %(default)s)")
    g.add_argument("--eta", type=Bounded(float, 0, 1),
                   help=f"DDIM eta in [0, 1]: 0 is deterministic, 1 adds the DDPM posterior's noise at every step "
                        f"(default: {DEFAULT_ETA:g} for ddim; the official samplers fix 0)")
    g.add_argument("--var-type", choices=("fixedlarge", "fixedsmall"), default="fixedlarge",
                   help="DDPM posterior variance (default: %(default)s, as SDDPM)")
    g.add_argument("--clip-x0", action="store_true",
                   help="ddpm and ddim: clip every intermediate x0 prediction to [-1, 1] (DDPM's clip_denoised, which "
                        "makes ddpm equal official-ddpm; ddim then derives eps again from x_t and the clipped x0); "
                        "without it only the final images are clipped")
    _add_threshold_factor(g, "threshold-guided strategy: multiply every IF threshold by this factor, e.g. 0.997 "
                             "(1.0: the trained thresholds)")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per sampling batch (default: %(default)s)")
    g.add_argument("--seed", type=_count, default=0, help="batch b starts from the noise of seed + b")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")


def _device(text: str):
    """A torch device the chip's integers can run on here; a GPU that torch cannot see is refused up front."""
    import torch

    device = torch.device(text) if re.fullmatch(r"cpu|cuda(:\d+)?", text) else None
    if device is None or (device.type == "cuda" and not torch.cuda.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: the simulator and the reference run on cpu or cuda[:N], "
                                         f"and torch sees {torch.cuda.device_count()} CUDA devices here")
    return device


def _add_device(p) -> None:
    p.add_argument("--device", type=_device, default="cpu",
                   help="where the simulator and the quantized reference run the chip's integers: cpu or cuda[:N]; "
                        "exact on both, the host stages stay on the CPU (default: %(default)s)")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", choices=("float", "sim", "lava"), default="float",
                   help="float: the PyTorch model; sim: compile it and run every denoising step on the "
                        "bit-accurate chip simulator; lava: compile it and run every denoising step on one Lava "
                        "process graph kept up for the whole run (one image at a time) (default: %(default)s)")
    g.add_argument("--sim-mode", choices=("zero_delay", "delayed"), default="zero_delay",
                   help="simulator timing (default: %(default)s; both give identical results)")
    _add_profile(g)
    _add_device(g)
    _add_calibration_args(p)


def _add_profile(p) -> None:
    p.add_argument("--profile", choices=("cpu", "loihi2"), default=None,
                   help="the Lava graph's process types. cpu: up-sampling and long delays through processes of "
                        "ours with Python models only; loihi2: only types Loihi 2 executes (LIF, LIFReset, Dense, "
                        "Sparse, Conv, DelayDense, DelaySparse): up-sampling as Sparse synapses, long delays as "
                        "relay populations, the time embedding's bias written by the host between denoising steps; "
                        "host I/O on the host side (default: cpu; --run-config loihi2-hw builds loihi2)")


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    from export.compiler import CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES

    g = p.add_argument_group("calibration (compiling to the chip)")
    g.add_argument("--dataset", help="calibration images (default: the checkpoint's training dataset)")
    g.add_argument("--data-root", help="folder of cifar10 pickle batches or celeba images")
    g.add_argument("--calibration-batches", type=_positive_int, default=CALIBRATION_BATCHES,
                   help="batches of noisy training images (default: %(default)s)")
    g.add_argument("--calibration-batch-size", type=_positive_int, default=CALIBRATION_BATCH_SIZE,
                   help="images per calibration batch, t spread over all diffusion steps (default: %(default)s)")


def _add_chain_args(p: argparse.ArgumentParser, steps: int, what: str, batch_size: int | None) -> None:
    """The float DDIM chain from seeded noise whose denoising steps a command takes (batch_size None: one
    image, for backends without a batch dimension)."""
    p.add_argument("--check-steps", "--steps", dest="steps", type=_positive_int, default=steps,
                   help=f"denoising steps of the chain to {what} (default: %(default)s)")
    p.add_argument("--ddim-steps", type=_positive_int, default=100, help="length of the DDIM chain (default: %(default)s)")
    if batch_size is not None:
        p.add_argument("--batch-size", type=_positive_int, default=batch_size, help="images in the chain (default: %(default)s)")
    p.add_argument("--seed", type=_count, default=0, help="noise seed of the chain")




def _add_spike_input_args(p: argparse.ArgumentParser) -> None:
    """The spike inputs of an imported network (a chip file whose inputs are spikes, from `sddpm import-nir`)."""
    g = p.add_argument_group("networks with spike inputs (from `sddpm import-nir`)")
    g.add_argument("--input", help="an .npz with one 0/1 array per spike input, named as the input, [T, *shape] or "
                                   "[T, B, *shape] (default: seeded random spikes, each input neuron firing with "
                                   "probability 0.3 per step)")
    g.add_argument("--input-steps", type=_positive_int, default=32,
                   help="steps of the random input without --input (default: %(default)s)")
    g.add_argument("--input-seed", type=_count, default=0, help="seed of the random input (default: %(default)s)")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each `sddpm` subcommand, by name, in the order `sddpm --help` lists them."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand. Long on purpose: one declaration per subcommand, in the order
    `sddpm --help` lists them, reads better than the same split over a dozen functions."""
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
    p.add_argument("--kind", choices=MODEL_KINDS,
                   help="snn: SDDPM spiking U-Net; ann: its DDPM twin (our U-Net with Swish and GroupNorm); "
                        "diffusers: diffusers' UNet2DModel at the twin's size, the yardstick (needs diffusers)")
    p.add_argument("--ch", type=_positive_int, help="base channels")
    p.add_argument("--ch-mult", type=_ints, help="channel multipliers per level, e.g. 1,2,2,4")
    p.add_argument("--num-res-blocks", type=_positive_int, help="residual blocks per level")
    p.add_argument("--snn-steps", type=_positive_int, help="SNN time steps T (paper: 4 or 8)")
    p.add_argument("--neuron", choices=NEURON_KINDS,
                   help="the spiking neuron of the snn kind. if: integrate-and-fire, SDDPM's (SpikingJelly IFNode): "
                        "v = v + x, no leak. lif: leaky integrate-and-fire (SpikingJelly LIFNode, decay_input=True): "
                        "v = v + (x - v) / tau, so v keeps 1 - 1/tau of itself each SNN step and takes x / tau. "
                        "Both spike when v >= 1.0, reset v to 0 and train through the ATan surrogate gradient; "
                        "neither has parameters, so the state_dict keys are the same (default: if)")
    p.add_argument("--tau", type=Bounded(float, 1, low_open=True),
                   help=f"LIF membrane time constant in SNN steps, > 1 (default: {LIF_TAU}, SpikingJelly's)")
    t = TrainConfig()
    p.add_argument("--train-steps", "--steps", dest="steps", type=_positive_int, default=t.total_steps,
                   help="total optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=t.batch_size, help="global batch (default: %(default)s)")
    p.add_argument("--lr", type=_positive, default=t.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=_count, default=t.warmup, help="linear warm-up steps (default: %(default)s)")
    p.add_argument("--grad-clip", type=_positive, default=t.grad_clip, help="gradient norm clip (default: %(default)s)")
    p.add_argument("--ema-decay", type=Bounded(float, 0, 1, high_open=True), default=t.ema_decay, help="EMA decay (default: %(default)s)")
    p.add_argument("--ckpt-every", type=_positive_int, default=t.ckpt_every, help="checkpoint period (default: %(default)s)")
    p.add_argument("--sample-every", type=_count, default=t.sample_every,
                   help="sample-grid period, 0 to disable (default: %(default)s)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (CIFAR-10, CelebA)")
    p.add_argument("--seed", type=_count, default=t.seed)

    p = sub.add_parser("sample", help="generate images: a PNG grid and an .npz of uint8 arrays",
                       description="Sample from a checkpoint (ours or an official SDDPM one) and write "
                                   "OUT/grid.png and OUT/samples.npz (key 'images', uint8 [N, C, H, W]).")
    _add_checkpoint(p)
    p.add_argument("--out", default="out/samples", help="output folder (default: %(default)s)")
    p.add_argument("--num-images", type=_positive_int, default=64, help="number of images (default: %(default)s)")
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
    p.add_argument("--num-images", type=_positive_int, default=1000, help="images to sample with --checkpoint (default: %(default)s)")
    p.add_argument("--ref-count", type=_positive_int, default=10000,
                   help="training images in the reference statistics (default: %(default)s)")
    p.add_argument("--real-baseline", action="store_true",
                   help="also report FID of as many real test images as samples (the small-count bias)")
    p.add_argument("--bootstrap", type=_count, default=0, metavar="ROUNDS",
                   help="also report the FID's spread over this many resamplings of the images (standard "
                        "deviation and 2.5 / 97.5 percentiles; 200 is plenty; default: none)")
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
    _add_checkpoint(p)
    p.add_argument("--dataset", help="test images (default: the checkpoint's training dataset)")
    p.add_argument("--data-root", help="folder of cifar10 pickle batches or celeba images")
    p.add_argument("--count", type=_positive_int, default=256, help="test images (default: %(default)s)")
    p.add_argument("--t", type=_ints, default=None, help="diffusion steps (default: 0,50,100,250,500,750,999)")
    p.add_argument("--seed", type=_count, default=0, help="noise seed (default: %(default)s)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("quality", help="the quality tables (docs/quality.md): sample, FID and grid of each row",
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
                      help="write the tables into PATH between its quality-table marker lines, and the "
                           "sampler sweep's plot into GRID_DIR/sweep.png")

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
    _add_checkpoint(p)
    p.add_argument("--out", default="out/chip/network.nir", help="chip network file (default: %(default)s)")
    _add_threshold_factor(p, "threshold-guided strategy: integer thresholds of threshold x factor")
    _add_calibration_args(p)

    p = sub.add_parser("verify", help="prove denoising steps on the chip network: float vs quantized vs simulator",
                       description="Run a float DDIM chain from seeded noise and, at --steps denoising steps spread "
                                   "over it, compare the float model with the quantized reference (eps relative "
                                   "L2, PSNR, spike agreement) and the quantized reference with the bit-accurate "
                                   "simulator reading the exported file (identical spikes and output currents, or "
                                   "the first (population, SNN step, index) that differs). Exit status 1 if not "
                                   "identical.")
    p.add_argument("--backend", choices=("sim",), default="sim", help="what to check against the reference")
    _add_checkpoint(p)
    _add_chain_args(p, steps=4, what="check", batch_size=4)
    p.add_argument("--sim-mode", choices=("delayed", "zero_delay"), default="delayed",
                   help="delayed: Lava's timing; zero_delay: all populations see SNN step t together "
                        "(default: %(default)s)")
    _add_threshold_factor(p, "threshold factor of both networks")
    _add_device(p)
    p.add_argument("--nir", help="a chip NIR file compiled before to verify instead of compiling again: from "
                                 "--checkpoint (`sddpm compile`; its model configuration and threshold factor must "
                                 "match), or from `sddpm import-nir` (then the integer reference and the simulator "
                                 "run its spike input: identical spikes or the first (population, step, index) "
                                 "that differs)")
    p.add_argument("--chip-out", default="out/chip/network.nir", help="where the exported file is written")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_calibration_args(p)
    _add_spike_input_args(p)
    p.add_argument("--source", help="with --nir of an imported graph: the NIR file it was imported from; adds the "
                                    "ladder's close rung, the spike agreement per population of the source graph's "
                                    "float discretization (the one `sddpm import-nir` recorded) with the simulator")

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
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="onnx: the float denoiser for onnxruntime; nir: the chip network as a NIR graph; nir-float: "
                        "the float spiking network as a NIR graph for other NIR tools")
    _add_checkpoint(p)
    p.add_argument("--out", help="file to write (default: out/export/<checkpoint name>.<format>)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    _add_threshold_factor(p, "nir: threshold factor of the chip network")
    p.add_argument("--json", action="store_true", help="print the file's facts and its check as one JSON object")
    p.add_argument("--check-images", type=_positive_int, default=16,
                   help="noisy training images to check the file on, t spread over all diffusion steps "
                        "(default: %(default)s)")
    _add_calibration_args(p)

    p = sub.add_parser("deploy", help="run denoising steps of a chip network on Lava and compare with the simulator",
                       description="Read the chip network's NIR file (compiled from --checkpoint unless --nir names "
                                   "one), build it as a Lava process graph (LIF populations, Conv synapses, spike "
                                   "up-sampling, delay lines, file sinks) and run --steps denoising steps of a real "
                                   "DDIM chain of one image with Lava's bit-accurate fixed-point models, host stages "
                                   "in PyTorch. Every spike of every population and every output current is compared "
                                   "with the bit-accurate simulator reading the same file: identical, or the first "
                                   "(population, SNN step, index) that differs. Exit status 1 if not identical.")
    p.add_argument("--backend", choices=("lava",), default="lava", help="where to run (default: %(default)s)")
    _add_checkpoint(p)
    p.add_argument("--nir", help="an existing chip NIR file to deploy (default: compile --checkpoint); one from "
                                 "`sddpm import-nir` runs its spike input on Lava against the simulator")
    p.add_argument("--chip-out", default="out/chip/network.nir", help="where a compiled network is written")
    _add_chain_args(p, steps=1, what="run", batch_size=None)
    _add_threshold_factor(p, "threshold factor when compiling")
    p.add_argument("--run-config", choices=("sim", "loihi2-hw"), default="sim",
                   help="sim: Lava's CPU simulator, Loihi2SimCfg(select_tag='fixed_pt'); loihi2-hw: Loihi2HwCfg with "
                        "the loihi2 profile, for a machine with Loihi 2, Intel's lava-loihi and its embedded I/O "
                        "(never run here) (default: %(default)s)")
    _add_profile(p)
    p.add_argument("--whole-chain", action="store_true",
                   help="run a whole DDIM chain of --steps denoising steps of one image on one Lava graph built "
                        "once; compare every step's spikes and the final image with the simulator's chain, and the "
                        "image with the float model's chain from the same noise")
    p.add_argument("--eta", type=Bounded(float, 0, 1), default=DEFAULT_ETA,
                   help="DDIM eta of --whole-chain; above 0 the host draws each step's noise from --seed, the same "
                        "draws for the Lava, simulator and float chains (default: %(default)g, as `sddpm sample`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_calibration_args(p)
    _add_spike_input_args(p)

    p = sub.add_parser("import-nir", help="compile a NIR graph from another tool (snnTorch, Norse, Sinabs, ...) to "
                                          "Loihi 2 integers for the simulator and Lava",
                       description="Read a NIR graph of Affine/Linear/Conv2d synapses (optionally after a Flatten) "
                                   "into IF/LIF/CubaLIF nodes, discretize it by forward Euler with --dt (IF adds R*I "
                                   "per step; the current before the voltage, as Lava does), quantize it to Lava's "
                                   "integer LIF (8-bit weight mantissas, thresholds of 1024 a-units) and write its "
                                   "chip network, the file `sddpm compile` writes (format sddpm-chip-nir), which "
                                   "`sddpm run`, `verify --nir`, `deploy --nir`, `energy --nir` and `report --nir` "
                                   "take. Nodes that do not map are named in the error.")
    p.add_argument("graph", help="NIR file to compile")
    p.add_argument("--out", required=True, help="compiled NIR file to write")
    p.add_argument("--dt", type=_positive, default=1e-4,
                   help="seconds per step for tau of LIF/CubaLIF (default: %(default)s, the snnTorch/NIR-paper "
                        "convention)")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="compile even when at this --dt a synapse's weights all round to 0, a node can never spike "
                        "or a leak rounds to none (a warning instead of an error that suggests a dt that works)")
    p.add_argument("--decay", choices=("euler", "exp"), default="euler",
                   help="euler: v keeps 1 - dt/tau per step (NIR read by forward Euler, the default); exp: it keeps "
                        "exp(-dt/tau) and the input gains 1 - exp(-dt/tau), as Sinabs runs (its tau in steps: --dt 1)")
    p.add_argument("--norse-dt", type=_positive, default=None,
                   help="the file is Norse >= 1.1's to_nir(dt=NORSE_DT), which writes tau = NORSE_DT / tau_mem_inv "
                        "and no CubaLIF w_in: read tau / NORSE_DT as the time constant and the current gain as 1. "
                        "Earlier Norse wrote tau = 1 / tau_mem_inv (seconds): read such a file without it, with the "
                        "--dt its cells ran at (a file does not say which Norse wrote it)")

    p = sub.add_parser("energy", help="count the operations of denoising steps on the float model, the chip network "
                                      "and the ANN twin; NeuroBench's metrics; energy at 45 nm and on Loihi 2",
                       description="Compile a checkpoint, run the bit-accurate simulator on --steps denoising steps "
                                   "spread over a float DDIM chain from seeded noise, and count exactly, per "
                                   "population, the spikes and the synaptic operations (SOPs: spikes x fan-out) of "
                                   "its outgoing synapses on the chip, beside the float model's own SOPs on the same "
                                   "steps (exact, and as the paper counts them: rate x T x FLOPs), neuron updates, "
                                   "MACs, and NeuroBench's metrics computed by the neurobench package on the float "
                                   "SNN and the ANN twin. Prints them per denoising step of one image, with the "
                                   "energy of a step and of a generated image (DDPM 1000, DDIM 100, DDIM 50) under "
                                   "the paper's 45 nm model against the ANN twin, and a Loihi 2 estimate (latency and "
                                   "energy per image, low-high) built on Intel's Loihi 2 hardware measurements and "
                                   "the network's placement (docs/energy.md).")
    _add_checkpoint(p)
    _add_chain_args(p, steps=10, what="count", batch_size=4)
    _add_threshold_factor(p, "threshold factor of the chip network")
    p.add_argument("--chip-out", default="out/chip/network.nir", help="where the chip network file is written")
    p.add_argument("--nir", help="count a chip file compiled before instead of --checkpoint: one from `sddpm "
                                 "import-nir` is counted on its spike input (spikes, SOPs and neuron updates per "
                                 "population)")
    _add_spike_input_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_calibration_args(p)

    p = sub.add_parser("report", help="one report: compile, verify, count energy and estimate Loihi 2 resources",
                       description="Compile a checkpoint, run the verification ladder on --steps denoising steps of "
                                   "a float DDIM chain from seeded noise, count the simulator's spikes and SOPs of "
                                   "those steps (`sddpm energy`), estimate the Loihi 2 resources of the chip "
                                   "network, and write OUT/report.md with PNG plots (firing rate and SOPs per "
                                   "population, energy per step and per image against the ANN twin) and "
                                   "OUT/report.json. Exit status 1 if the simulator and the reference differ.")
    _add_checkpoint(p)
    p.add_argument("--out", default="out/report", help="report folder (default: %(default)s)")
    p.add_argument("--nir", help="report on a chip file from `sddpm import-nir` instead of --checkpoint: its "
                                 "populations and synapses, reference vs simulator on its spike input, and its "
                                 "counts")
    _add_chain_args(p, steps=4, what="verify and count", batch_size=2)
    _add_threshold_factor(p, "threshold factor of the chip network")
    _add_calibration_args(p)
    _add_spike_input_args(p)

    p = sub.add_parser("run", help="run any compiled chip network on the simulator or Lava and write its outputs",
                       description="Run a chip file (from `sddpm compile` or `sddpm import-nir`) on the bit-accurate "
                                   "simulator or on Lava and write OUT.npz. A network with spike inputs runs --input "
                                   "(or seeded random spikes) and writes every population's spikes [T, B, *shape] "
                                   "under its name (a membrane readout's voltage per step instead, int64 v-units: "
                                   "its float value is v times the population's scale / 64); a diffusion network runs one denoising step of seeded noise at "
                                   "the last diffusion step and writes eps, the readout's currents and the spikes.")
    p.add_argument("file", help="chip NIR file")
    p.add_argument("--backend", choices=("sim", "lava"), default="sim",
                   help="sim: the bit-accurate simulator; lava: Lava's CPU fixed-point models, one sample at a time "
                        "(default: %(default)s)")
    p.add_argument("--out", default="out/run/outputs.npz", help="outputs file (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="samples of the random input, or images of noise (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (spike counts per population, the names of the readouts)")
    _add_spike_input_args(p)

    p = sub.add_parser("install-lava", help="install Lava (lava-nc 0.10.0, lava-dl 0.6.0) into this environment and "
                                             "patch it",
                       description="pip install lava-nc 0.10.0 and lava-dl 0.6.0 with --no-deps "
                                   "--ignore-requires-python where they are missing (their metadata says Python < "
                                   "3.11, which stops any resolver on 3.11; on 3.10 `pip install .[lava]` installs "
                                   "them), their dependencies in the ranges of sddpm-loihi's `lava` extra, then patch "
                                   "the installed lava-nc (for Python 3.11, and its multiprocessing start method) and "
                                   "check that it imports. `make venv` does the same from the pinned requirement "
                                   "files.")

    p = sub.add_parser("demo", help="sample the shipped MNIST SDDPM, compile it for Loihi 2, verify it",
                       description="The embedded default job: sample the shipped MNIST SDDPM checkpoint with "
                                   f"the default sampler of `sddpm sample`, our DDIM {DEFAULT_DDIM_STEPS} with eta "
                                   f"{DEFAULT_ETA:g} (out/demo/grid.png), compile it into a chip network "
                                   "(out/demo/network.nir), and check three denoising steps of a sampling chain "
                                   "on the bit-accurate simulator (Lava timing) against the quantized "
                                   "reference and the float model; prints the verification ladder and the "
                                   "energy of those steps, and writes the report (out/demo/report.md); then "
                                   "exports the float denoiser to ONNX and the float spiking network to NIR and "
                                   "checks both files against PyTorch; and runs one denoising step on Lava from the "
                                   "NIR file, compared spike for spike with the simulator.")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--num-images", type=_positive_int, default=16, help="images in the grid (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object of every result instead of the text")
    return parser
