"""Time to sample with each sampler on this CPU, beside its measured FID: the cost side of the default's choice.

Run on demand, never as a test:

    .venv/bin/python benchmarks/bench_sampler.py                  # `make demo`'s 16 images, 3 repeats
    .venv/bin/python benchmarks/bench_sampler.py --num-images 64 --repeats 5 --threads 2

Each sampler generates `--num-images` images of the shipped model exactly as `sddpm demo` does
(`sddpm.generate.generate_images`, one batch, seed 0): the default (`sddpm.generate.DEFAULT_SAMPLER`, chosen by
the sampler sweep), DDPM 1000 with x0 clipped (the demo's sampler before the sweep) and DDIM 100 with eta 0
(`sddpm sample`'s default before it). Times are medians over --repeats of wall clock and process CPU time,
measured interleaved (default, DDPM, DDIM 100, default, ...) so that the load of a shared machine falls on all
alike, after one untimed pass of the default. The FID column is the sampler's row in the quality tables
(docs/quality/, 200 samples against 10,000 references, bootstrap sd), read from its JSON file, not measured here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from sddpm.checkpoint import load_model  # noqa: E402
from sddpm.generate import DEFAULT_SAMPLER, SamplerConfig, generate_images, model_denoiser  # noqa: E402
from toolchain.quality import BY_NAME, LONG_SDDPM, load_result, sweep_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "checkpoints", "mnist-sddpm.pt")
RESULTS = os.path.join(ROOT, "docs", "quality")
# (sampler, its quality row on the shipped model) in the order they are timed
SAMPLERS = (
    (DEFAULT_SAMPLER, sweep_name(LONG_SDDPM[0], DEFAULT_SAMPLER.steps, DEFAULT_SAMPLER.eta)),
    (SamplerConfig("ddpm", clip_x0=True), f"{LONG_SDDPM[0]}-ddpm"),
    (SamplerConfig("ddim", 100, 0.0), sweep_name(LONG_SDDPM[0], 100, 0.0)),
)


def network_calls(sampler: SamplerConfig, diffusion_steps: int) -> int:
    return diffusion_steps if sampler.sampler.endswith("ddpm") else sampler.steps


def fid_cell(row_name: str) -> str:
    result = load_result(BY_NAME[row_name], RESULTS)
    if result is None:
        return "not run"
    return f"{result['fid']:.1f} ±{result['fid_bootstrap_std']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED)
    parser.add_argument("--num-images", type=int, default=16, help="images per run, one batch (default: the demo's 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.checkpoint)
    cfg = loaded.model_config
    model = model_denoiser(loaded.model)
    shape = (cfg.img_ch, cfg.img_size, cfg.img_size)

    def run(sampler: SamplerConfig) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        generate_images(model, shape, loaded.diffusion_config, args.num_images, sampler,
                        batch_size=args.num_images, progress=False)
        return time.perf_counter() - wall, time.process_time() - cpu

    run(DEFAULT_SAMPLER)  # warm-up: allocator and thread pools
    times: dict[str, list[tuple[float, float]]] = {s.label: [] for s, _ in SAMPLERS}
    for _ in range(args.repeats):
        for sampler, _ in SAMPLERS:
            times[sampler.label].append(run(sampler))

    print(f"{args.num_images} images of {os.path.relpath(args.checkpoint, ROOT)} ({cfg.kind}, ch {cfg.ch}, "
          f"T = {cfg.snn_steps}), one batch, {args.threads} thread(s), medians of {args.repeats}\n")
    print("| sampler | network calls per image | wall s (CPU s) | s per image | wall vs DDPM 1000 | "
          "FID (quality tables) |")
    print("|---|---:|---:|---:|---:|---:|")
    ddpm_wall = statistics.median(w for w, _ in times[SAMPLERS[1][0].label])
    for sampler, row in SAMPLERS:
        wall = statistics.median(w for w, _ in times[sampler.label])
        cpu = statistics.median(c for _, c in times[sampler.label])
        calls = network_calls(sampler, loaded.diffusion_config.steps)
        print(f"| {sampler.label}{' (default)' if sampler == DEFAULT_SAMPLER else ''} | {calls} | "
              f"{wall:.1f} ({cpu:.1f}) | {wall / args.num_images:.2f} | {wall / ddpm_wall:.3f} | {fid_cell(row)} |")


if __name__ == "__main__":
    main()
