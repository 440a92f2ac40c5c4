"""Speed of the bit-accurate chip simulator against the float PyTorch forward of the same model.

Run on demand, never as a test:

    .venv/bin/python benchmarks/bench_simulator.py                  # shipped model, batches 8 and 32
    .venv/bin/python benchmarks/bench_simulator.py --batches 64 --repeats 7
    .venv/bin/python benchmarks/bench_simulator.py --groups --nir runs/scale/mnist-ch-64/network.nir

One forward pass (one denoising step, T SNN steps) of the same x_t, t through:
  float      the PyTorch SpikingUNet (eval mode, float32)
  sim zero   the simulator reading the exported file, zero-delay mode (all populations see SNN step t)
  sim delay  the simulator in Lava's timing (every synapse one step of delay; readout depth + T steps)
  reference  the quantized integer reference of export/ (float64 convs; written for clarity, not speed)
The simulator's outputs are checked identical to the reference before timing. Timings are medians
over --repeats, measured interleaved (float, zero, delay, reference, float, ...) so that the load of
a shared machine falls on all alike; torch runs with --threads intra-op threads (default 1).

--groups times each synapse group of the file alone instead, on random spikes of density 0.2 for one
denoising step (T * batch rows): the int8 matmul (`conv_int8`) against the float32 conv, to see where the
int8 path pays. --nir reads a compiled file (e.g. bench_scale.py's) instead of compiling --checkpoint.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from export.nir_chip import write_chip_nir  # noqa: E402
from export.compiler import calibration_batches, compile_model  # noqa: E402
from export.host import ChipOverflowWarning  # noqa: E402
from export.reference import run_reference  # noqa: E402
from sddpm.checkpoint import load_model  # noqa: E402
from sddpm.data import load_images  # noqa: E402
from sddpm.schedule import NoiseSchedule  # noqa: E402
from simulators.network import ChipSimulator  # noqa: E402

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "mnist-sddpm.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--groups", action="store_true", help="time each synapse group: int8 against float32")
    parser.add_argument("--nir", help="with --groups: a compiled chip file instead of compiling --checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ChipOverflowWarning)
    if args.groups:
        sim = ChipSimulator.from_file(args.nir) if args.nir else None
        if sim is None:
            loaded = load_model(args.checkpoint)
            schedule = NoiseSchedule.linear(loaded.diffusion_config)
            net = compile_model(loaded.model.eval(), calibration_batches(load_images(args.dataset, "train"), schedule))
            with tempfile.TemporaryDirectory() as tmp:
                write_chip_nir(os.path.join(tmp, "network.nir"), net)
                sim = ChipSimulator.from_file(os.path.join(tmp, "network.nir"))
        time_groups(sim, args.batches, args.repeats)
        return

    loaded = load_model(args.checkpoint)
    model = loaded.model.eval()
    schedule = NoiseSchedule.linear(loaded.diffusion_config)
    images = load_images(args.dataset, "train")
    started = time.perf_counter()
    net = compile_model(model, calibration_batches(images, schedule))
    compile_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "network.nir")
        write_chip_nir(path, net)
        sim = ChipSimulator.from_file(path)
    cfg = loaded.model_config
    print(f"model: {cfg.kind} ch={cfg.ch} ch_mult={list(cfg.ch_mult)} T={cfg.snn_steps}, "
          f"{len(net.populations)} populations, {len(net.synapses)} synapses; compile {compile_s:.1f} s; "
          f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| batch | float (ms) | sim zero-delay (ms) | ratio | sim delayed (ms) | ratio | reference (ms) | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        x, t = calibration_batches(images, schedule, batches=1, batch_size=batch, seed=1)[0]
        ref = run_reference(net, x, t)
        for mode in ("zero_delay", "delayed"):
            out = sim.run(x, t, mode)
            same = all(torch.equal(ref.spikes[k], out.spikes[k]) for k in ref.spikes)
            if not (same and torch.equal(ref.readout, out.readout)):
                raise SystemExit(f"simulator ({mode}) differs from the reference: not timing a wrong result")
        runs = {"float": lambda: model(x, t), "zero": lambda: sim.run(x, t, "zero_delay"),
                "delay": lambda: sim.run(x, t, "delayed"), "ref": lambda: run_reference(net, x, t)}
        times = {k: [] for k in runs}
        with torch.no_grad():
            for fn in runs.values():  # warm-up
                fn()
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    begin = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - begin)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"| {batch} | {ms['float']:.0f} | {ms['zero']:.0f} | {ms['zero'] / ms['float']:.2f}x | "
              f"{ms['delay']:.0f} | {ms['delay'] / ms['float']:.2f}x | {ms['ref']:.0f} | "
              f"{ms['ref'] / ms['float']:.2f}x |")


def time_groups(sim: ChipSimulator, batches: list[int], repeats: int, density: float = 0.2) -> None:
    """One row per synapse group and batch: int8 and float32 medians, interleaved, and their ratio."""
    print(f"{len(sim.populations)} populations; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {repeats}\n")
    print("| target | depth (C_in*k*k) | out (C, H, W) | batch | int8 (ms) | float32 (ms) | int8 / float32 |")
    print("|---|---:|---|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    total = {(b, a): 0.0 for b in batches for a in ("int8", "float32")}
    for target, groups in sim._groups.items():
        for group in groups:
            for batch in batches:
                rows = sim.snn_steps * batch
                spikes = [(torch.rand(rows, *sim._shape[syn.source], generator=gen) < density).to(torch.int8)
                          for syn in group.synapses]
                runs = {"int8": lambda: group.current(spikes, "int8"),
                        "float32": lambda: group.current(spikes, "float32")}
                if not torch.equal(runs["int8"]().long(), runs["float32"]().long()):
                    raise SystemExit(f"{target}: int8 and float32 sums differ: not timing a wrong result")
                times = {k: [] for k in runs}
                with torch.no_grad():
                    for _ in range(repeats):
                        for key, fn in runs.items():
                            begin = time.perf_counter()
                            fn()
                            times[key].append(time.perf_counter() - begin)
                ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
                for k in ms:
                    total[batch, k] += ms[k]
                out = runs["float32"]().shape[1:]
                print(f"| {target} | {group.weight[0].numel()} | {tuple(out)} | {batch} | {ms['int8']:.2f} | "
                      f"{ms['float32']:.2f} | {ms['int8'] / ms['float32']:.2f} |")
    for batch in batches:
        print(f"\nbatch {batch}: all groups {total[batch, 'int8']:.0f} ms in int8, "
              f"{total[batch, 'float32']:.0f} ms in float32")


if __name__ == "__main__":
    main()
