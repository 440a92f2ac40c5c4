"""Energy and time of a denoising step on an NVIDIA GPU, measured with NVML's energy counter: the GPU side of the
energy table in docs/energy.md (the ANN twin on the hardware it is made for, beside the float SNN).

For each model and batch size: warm up, then run forward passes (one denoising step of the batch at a fixed t)
for at least --seconds, read nvmlDeviceGetTotalEnergyConsumption (millijoules since the driver loaded) before and
after, synchronize, and divide by passes x batch. --repeats such windows give the median and the spread. The
idle power, read over a window with the GPU doing nothing, times the window's length is subtracted to give the
dynamic part; both are printed. On a machine without CUDA it says so and measures nothing.

    .venv/bin/python benchmarks/bench_gpu_energy.py                     # shipped SDDPM and its ANN twin
    .venv/bin/python benchmarks/bench_gpu_energy.py --batch-sizes 1,64 --seconds 5 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sddpm.checkpoint import load_model  # noqa: E402

MODELS = {"SDDPM (float SNN)": "checkpoints/mnist-sddpm.pt", "ANN twin": "checkpoints/mnist-ann.pt"}


def energy_counter_mj(handle) -> int:
    import pynvml

    return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)


def idle_watts(handle, seconds: float) -> float:
    torch.cuda.synchronize()
    start, t0 = energy_counter_mj(handle), time.perf_counter()
    time.sleep(seconds)
    return (energy_counter_mj(handle) - start) * 1e-3 / (time.perf_counter() - t0)


@torch.no_grad()
def window(model, x, t, handle, seconds: float) -> tuple[float, float]:
    """(joules, seconds) per denoising step of one image over one window of forward passes."""
    torch.cuda.synchronize()
    start, t0, passes = energy_counter_mj(handle), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        model(x, t)
        passes += 1
        if passes % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return (energy_counter_mj(handle) - start) * 1e-3 / (passes * x.shape[0]), elapsed / (passes * x.shape[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measuring window")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_energy: no CUDA device here: nothing measured")
        return 0
    import pynvml  # nvidia-ml-py (requirements/interop.txt)

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    idle = idle_watts(handle, args.seconds)
    print(f"{pynvml.nvmlDeviceGetName(handle)}, torch {torch.__version__}; idle {idle:.1f} W over {args.seconds} s\n")
    print("| model | batch | time per step per image | energy per step per image (total) | dynamic (total - idle) "
          "| DDPM-1000 image | DDIM-50 image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, path in MODELS.items():
        loaded = load_model(str(ROOT / path))
        model, cfg = loaded.model.cuda().eval(), loaded.model_config
        for batch in map(int, args.batch_sizes.split(",")):
            x = torch.randn(batch, cfg.img_ch, cfg.img_size, cfg.img_size, device="cuda")
            t = torch.full((batch,), 500, device="cuda")
            window(model, x, t, handle, 1.0)  # warm-up: kernels chosen, clocks up
            runs = [window(model, x, t, handle, args.seconds) for _ in range(args.repeats)]
            joules = statistics.median(j for j, _ in runs)
            seconds = statistics.median(s for _, s in runs)
            spread = (max(j for j, _ in runs) - min(j for j, _ in runs)) / 2
            dynamic = joules - idle * seconds
            print(f"| {name} | {batch} | {seconds * 1e3:.3f} ms | {joules * 1e3:.3f} +- {spread * 1e3:.3f} mJ | "
                  f"{dynamic * 1e3:.3f} mJ | {joules * 1000:.2f} J, {seconds * 1000:.2f} s | "
                  f"{joules * 50 * 1e3:.1f} mJ, {seconds * 50 * 1e3:.0f} ms |")
    print(f"\nmedians of {args.repeats} windows of {args.seconds} s; +- half the range; t = 500 for every step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
