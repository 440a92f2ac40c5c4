"""Speed and memory of the SDDPM spiking U-Net on this CPU; prints Markdown tables.

Run on demand, never as a test:

    .venv/bin/python benchmarks/bench_model.py                 # full run, about 6 minutes of CPU
    .venv/bin/python benchmarks/bench_model.py --quick         # about a minute: small configs, 1 repeat
    .venv/bin/python benchmarks/bench_model.py --configs mnist-small --compare mnist-ch32 --repeats 5

Two tables:

1. Training step (forward + backward + Adam, MSE on eps) and sampling (one eval forward, no autograd)
   per configuration; images/s and the implied time per image of DDIM-100 and DDPM-1000 sampling
   (100 or 1000 forwards per image: the samplers' own arithmetic is negligible).
2. Our `SpikingUNet` against the same U-Net (a deep copy, same weights) whose every `IF` is
   SpikingJelly's `IFNode(surrogate_function=surrogate.ATan(), step_mode='m')`, reset with
   `functional.reset_net` after each pass. It checks that the forward outputs are identical (max abs
   diff 0, in training and in eval mode) and the parameter gradients equal up to float rounding, then
   times forward + backward and the sampling forward of both, interleaved (ours, SJ, SJ, ours, ...)
   so that the background load of a shared machine falls on both alike.

Method:
- Every measurement runs in a fresh subprocess (one per configuration and mode), so a peak is that
  measurement's own. Peak memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss` (peak resident set
  of the process: torch's CPU allocations are plain malloc, which tracemalloc does not see), shown with
  its increase over the process right after building the model (weights, and nothing else).
- Times are medians over `--repeats` after `--warmup` untimed passes: wall clock (what a user waits)
  and process CPU time (less sensitive to other processes on a shared machine; with 1 thread it is the
  work done). torch runs with `--threads` intra-op threads (default 1, so that a busy 2-core machine
  gives stable numbers; `--threads 2` to use both cores of an idle one).
- The reference times of the official Spk_UNet (torch 2.13, 2 threads, SpikingJelly 0.0.0.0.14) are
  the ones in docs/architecture.md section 4.1.

Configurations: the presets of `sddpm.config.PRESETS` (`cifar10`: ch 128, ch_mult (1,2,2,4), 3 channels;
`mnist`: the paper's 1-channel 32x32 run, ch 128, ch_mult (1,2,2,2); `mnist-small`: the shipped demo
model) and `mnist-ch32`, `mnist-ch64`: the `mnist` preset at ch 32 and 64.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# Run as a script (`make bench`): the repository root holds the `sddpm` package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sddpm.config import PRESETS, ModelConfig  # noqa: E402
from sddpm.neuron import IF  # noqa: E402
from sddpm.unet import SpikingUNet, count_parameters  # noqa: E402

CONFIGS: dict[str, ModelConfig] = {
    "cifar10": PRESETS["cifar10"],
    "mnist": PRESETS["mnist"],
    "mnist-small": PRESETS["mnist-small"],
    "mnist-ch32": dataclasses.replace(PRESETS["mnist"], ch=32),
    "mnist-ch64": dataclasses.replace(PRESETS["mnist"], ch=64),
}
# docs/architecture.md section 4.1: one training step of the official Spk_UNet, batch 8.
OFFICIAL_TRAIN_STEP_S = {"mnist-ch32": 1.11, "mnist-ch64": 3.66}
TARGET_RATIO = 1.3  # ours vs SpikingJelly neurons on forward + backward
# glibc malloc: serve tensors up to 32 MiB from the heap and never give it back to the OS, so a step
# reuses the previous step's pages instead of faulting in fresh ones (see README.md).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
SAMPLER_STEPS = {"DDIM-100": 100, "DDPM-1000": 1000}


# ----------------------------------------------------------------------------------------------------
# Measurements (each runs inside a worker subprocess)

def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _medians(samples: list[tuple[float, float]]) -> dict[str, float]:
    return {"wall": statistics.median(s[0] for s in samples), "cpu": statistics.median(s[1] for s in samples)}


def _inputs(cfg: ModelConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.img_ch, cfg.img_size, cfg.img_size, generator=gen)
    t = torch.randint(0, cfg.diffusion_steps, (batch,), generator=gen)
    return x, t, torch.randn(x.shape, generator=gen)


def measure_one(config: str, mode: str, batch: int, warmup: int, repeats: int) -> dict:
    """Time one mode ('train': forward + backward + Adam; 'sample': eval forward) and its peak RSS."""
    cfg = CONFIGS[config]
    torch.manual_seed(0)
    model = SpikingUNet(cfg)
    x, t, eps = _inputs(cfg, batch)
    rss_model = _peak_rss_mib()
    if mode == "train":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(model(x, t), eps).backward()
            optimizer.step()
    else:
        model.eval()

        def run():
            with torch.no_grad():
                model(x, t)
    samples = [_timed(run) for _ in range(warmup + repeats)][warmup:]
    return {"params": count_parameters(model), "rss_model": rss_model, "rss_peak": _peak_rss_mib(),
            **_medians(samples)}


def with_spikingjelly_neurons(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` with every IF replaced by SpikingJelly's multi-step IFNode (ATan)."""
    from spikingjelly.activation_based import neuron, surrogate

    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if isinstance(child, IF):
                sj = neuron.IFNode(v_threshold=child.threshold, surrogate_function=surrogate.ATan(alpha=child.alpha),
                                   step_mode="m")
                setattr(parent, name, sj)
    return twin


def compare_one(config: str, batch: int, warmup: int, repeats: int) -> dict:
    """Ours vs SpikingJelly neurons in the same U-Net: equality checks, then interleaved timings."""
    from spikingjelly.activation_based import functional

    cfg = CONFIGS[config]
    torch.manual_seed(0)
    ours = SpikingUNet(cfg).train()
    theirs = with_spikingjelly_neurons(ours)
    x, t, eps = _inputs(cfg, batch)

    def fwd_bwd(model):
        model.zero_grad(set_to_none=True)
        out = model(x, t)
        F.mse_loss(out, eps).backward()
        functional.reset_net(model)  # a no-op for ours: our IF keeps no state
        return out.detach()

    def sample(model):
        with torch.no_grad():
            out = model(x, t)
        functional.reset_net(model)
        return out

    # Equality: training mode (BN batch statistics) with gradients, then eval mode (running statistics).
    out_ours, out_theirs = fwd_bwd(ours), fwd_bwd(theirs)
    grads_ours = torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None])
    grads_theirs = torch.cat([p.grad.flatten() for p in theirs.parameters() if p.grad is not None])
    grad_diff = float((grads_ours - grads_theirs).abs().max())
    ours.eval()
    theirs.eval()
    eval_diff = float((sample(ours) - sample(theirs)).abs().max())
    checks = {"fwd_diff": float((out_ours - out_theirs).abs().max()), "eval_diff": eval_diff,
              "grad_diff": grad_diff, "grad_rel": grad_diff / float(grads_ours.abs().max())}

    timings = {}
    for mode, fn in (("train", fwd_bwd), ("sample", sample)):
        for model in (ours, theirs):
            model.train(mode == "train")
        samples = {"ours": [], "sj": []}
        for i in range(warmup + repeats):
            # Alternate who goes first, so neither always follows the other's memory churn.
            order = ("ours", "sj") if i % 2 == 0 else ("sj", "ours")
            for who in order:
                sample_ = _timed(lambda: fn(ours if who == "ours" else theirs))
                if i >= warmup:
                    samples[who].append(sample_)
        timings[mode] = {who: _medians(s) for who, s in samples.items()}
    return {"checks": checks, "timings": timings}


# ----------------------------------------------------------------------------------------------------
# The driver: one subprocess per measurement, Markdown out

def _in_subprocess(task: dict, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task), "--threads", str(args.threads)]
    env = {**os.environ, **TUNED_MALLOC} if args.tuned_malloc else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker {task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(task: dict) -> dict:
    kind = task.pop("kind")
    return measure_one(**task) if kind == "measure" else compare_one(**task)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def throughput_table(configs: list[str], args) -> list[str]:
    lines = [
        f"### Training and sampling, batch {args.batch}",
        "",
        "| config | parameters | train step s (CPU s) | official Spk_UNet train step s | "
        "sampling forward s (CPU s) | images/s per denoising step | "
        + " | ".join(f"{name} per image" for name in SAMPLER_STEPS)
        + " | peak RSS train MiB (+ over model) | peak RSS sampling MiB (+ over model) |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(SAMPLER_STEPS) + "---:|---:|",
    ]
    for config in configs:
        res = {mode: _in_subprocess({"kind": "measure", "config": config, "mode": mode, "batch": args.batch,
                                     "warmup": args.warmup, "repeats": args.repeats}, args)
               for mode in ("sample", "train")}
        tr, sa = res["train"], res["sample"]
        per_image = sa["wall"] / args.batch
        official = OFFICIAL_TRAIN_STEP_S.get(config)
        cells = [config, f"{tr['params']:,}", f"{_fmt_s(tr['wall'])} ({_fmt_s(tr['cpu'])})",
                 "-" if official is None else f"{official:.2f}",
                 f"{_fmt_s(sa['wall'])} ({_fmt_s(sa['cpu'])})", f"{1 / per_image:.2f}"]
        cells += [_fmt_duration(steps * per_image) for steps in SAMPLER_STEPS.values()]
        cells += [f"{r['rss_peak']:.0f} (+{r['rss_peak'] - r['rss_model']:.0f})" for r in (tr, sa)]
        lines.append("| " + " | ".join(cells) + " |")
        print(f"  measured {config}", file=sys.stderr, flush=True)
    return lines


def compare_table(configs: list[str], args) -> tuple[list[str], dict[str, float]]:
    lines = [
        f"### Our IF vs SpikingJelly IFNode in the same U-Net, batch {args.batch}",
        "",
        "| config | forward max abs diff (train / eval) | grad max abs diff (relative) | "
        "fwd+bwd ours s (CPU s) | fwd+bwd SJ s (CPU s) | fwd+bwd SJ / ours: wall | **CPU** | "
        "sampling ours s (CPU s) | sampling SJ s (CPU s) | sampling SJ / ours: wall | CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for config in configs:
        res = _in_subprocess({"kind": "compare", "config": config, "batch": args.batch,
                              "warmup": args.warmup, "repeats": args.repeats}, args)
        ch, tm = res["checks"], res["timings"]
        cells = [config, f"{ch['fwd_diff']:.3g} / {ch['eval_diff']:.3g}", f"{ch['grad_diff']:.2g} ({ch['grad_rel']:.2g})"]
        for mode in ("train", "sample"):
            ours, sj = tm[mode]["ours"], tm[mode]["sj"]
            cpu_ratio = sj["cpu"] / ours["cpu"]
            cells += [f"{_fmt_s(ours['wall'])} ({_fmt_s(ours['cpu'])})", f"{_fmt_s(sj['wall'])} ({_fmt_s(sj['cpu'])})",
                      f"{sj['wall'] / ours['wall']:.2f}x", f"**{cpu_ratio:.2f}x**" if mode == "train" else f"{cpu_ratio:.2f}x"]
            if mode == "train":
                ratios[config] = cpu_ratio
        lines.append("| " + " | ".join(cells) + " |")
        print(f"  compared {config}", file=sys.stderr, flush=True)
    return lines, ratios


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small configurations, 1 warm-up and 1 repeat (about a minute)")
    parser.add_argument("--configs", help="comma-separated configurations for the training/sampling table "
                        f"(from {', '.join(CONFIGS)}; default cifar10,mnist,mnist-small); 'none' skips it")
    parser.add_argument("--compare", help="comma-separated configurations for ours vs SpikingJelly "
                        "(default mnist-ch32,mnist-ch64); 'none' skips it")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, help="timed passes per measurement (default 3, --quick 1)")
    parser.add_argument("--warmup", type=int, help="untimed passes first (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--tuned-malloc", action="store_true",
                        help=f"run the measurements with {' '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def _header(args: argparse.Namespace) -> list[str]:
    """The table's heading: the machine, the libraries and how each number was measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    malloc = (" glibc malloc tuned (" + ", ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + ")."
              if args.tuned_malloc else "")
    return [
        "## SDDPM U-Net on CPU",
        "",
        f"`{' '.join(['bench_model.py'] + sys.argv[1:])}`: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"with {args.threads} thread(s), SpikingJelly {importlib.metadata.version('spikingjelly')}, T = 4 SNN steps. "
        f"Medians of {args.repeats} timed pass(es) after {args.warmup} warm-up; wall clock, process CPU time in "
        f"parentheses; peak RSS from getrusage in a fresh subprocess per measurement.{malloc}",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    def names(value: str | None, default: str) -> list[str]:
        chosen = [] if value == "none" else (value or default).split(",")
        unknown = [c for c in chosen if c not in CONFIGS]
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
        return chosen

    configs = names(args.configs, "mnist-small,mnist-ch32" if args.quick else ",".join(CONFIGS))
    compare = names(args.compare, "mnist-ch32" if args.quick else "mnist-ch32,mnist-ch64")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = 1 if args.warmup is None else args.warmup

    out = _header(args)
    started = time.perf_counter()
    if configs:
        out += throughput_table(configs, args) + [
            "", "Official Spk_UNet: one training step as measured in docs/architecture.md section 4.1 (torch 2.13, "
            "2 threads, idle machine), not run here.", ""]
    if compare:
        lines, ratios = compare_table(compare, args)
        verdicts = ", ".join(f"{c} {r:.2f}x ({'met' if r >= TARGET_RATIO else 'NOT met'})" for c, r in ratios.items())
        out += lines + ["", f"Target: ours at least {TARGET_RATIO}x faster than SpikingJelly's neurons on forward + "
                        f"backward, in CPU time (wall clock on a shared machine swings with the other load): "
                        f"{verdicts}.", ""]
    out.append(f"_Benchmark wall time {time.perf_counter() - started:.0f} s._")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
