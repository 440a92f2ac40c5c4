"""Lava against the bit-accurate simulator on the same denoising step of the shipped model.

Run on demand, never as a test:

    .venv/bin/python benchmarks/bench_lava.py                # 3 denoising steps of one image
    .venv/bin/python benchmarks/bench_lava.py --steps 5

For each denoising step (x_t of a float DDIM chain, one image: Lava has no batch dimension):
  lava build   constructing the process graph (Conv, SpikeUpsample, LIFReset, delay lines, sinks)
  lava run     Lava's compile, fork, the chip steps of one forward pass and stop (Loihi2SimCfg fixed_pt)
  lava PSS     peak proportional set size of the Lava child processes (shared pages counted fairly),
               sampled every 0.2 s from /proc/<pid>/smaps_rollup
  sim          the simulator in Lava's timing (delayed mode) on the same x_t, t, one thread
and then the same denoising steps on one persistent graph (`deploy.chain_lava.ChainGraph`), side by side:
  chain build  the process graph, Lava's compile and the fork, once for all the steps
  chain step   one period of chip steps on the running graph, with the host's sends (and, in the loihi2
               profile, the bias rows written with Var.set) and the records read back
Both profiles (`--profile cpu`, `--profile loihi2`: `deploy.loihi2_profile`) in one run, side by side. Every run is
checked identical (spikes and output currents) before it counts. Medians over the steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from deploy.chain_lava import ChainGraph  # noqa: E402
from deploy.chip_lava import PROFILES, run_denoising_step  # noqa: E402
from export.compiler import calibration_batches, compile_model  # noqa: E402
from export.nir_chip import read_chip_nir, write_chip_nir  # noqa: E402
from export.host import ChipOverflowWarning  # noqa: E402
from sddpm.checkpoint import load_model  # noqa: E402
from sddpm.data import load_images  # noqa: E402
from sddpm.generate import model_denoiser  # noqa: E402
from sddpm.schedule import NoiseSchedule  # noqa: E402
from simulators.network import ChipSimulator  # noqa: E402
from toolchain.verify import chain_states, compare_runs  # noqa: E402

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "mnist-sddpm.pt")


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _children(parent: int) -> list[int]:
    """Child pids from /proc. Not multiprocessing.active_children(): it reaps children with waitpid and
    races Lava's own join in the main thread (which then fails with "Cannot close a process while it is
    still running")."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


class PeakChildPss:
    """Samples the summed PSS of this process's children until stopped."""

    def __init__(self, period: float = 0.2):
        self.peak, self.period, self._stop = 0, period, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, sum(_pss_kib(pid) for pid in _children(os.getpid())))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measured_chain(doc: str, extra_steps: int = 0):
    """The options of a Lava benchmark, the shipped (or given) model compiled, and `--steps` + extra_steps
    denoising steps (x_t, t) of its float DDIM chain of one image from seed 0."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=SHIPPED)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps measured (default: %(default)s)")
    parser.add_argument("--ddim-steps", type=int, default=100, help="the chain whose steps are measured")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ChipOverflowWarning)

    loaded = load_model(args.checkpoint)
    schedule = NoiseSchedule.linear(loaded.diffusion_config)
    net = compile_model(loaded.model, calibration_batches(load_images(args.dataset, "train"), schedule))
    cfg = loaded.model_config
    x_T = torch.randn(1, cfg.img_ch, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    states = chain_states(model_denoiser(loaded.model), schedule, x_T, args.ddim_steps, args.steps + extra_steps)
    return args, net, states


def measure(net, sim, states, profile: str) -> tuple[dict[str, float], int]:
    """Medians of the rows for one profile's graphs, and their process count; every run checked identical."""
    rows = {"lava build (s)": [], "lava run (s)": [], "lava PSS (MiB)": [], "sim (s)": [],
            "chain build (s)": [], "chain step (s)": [], "chain PSS (MiB)": []}
    for x, t in states:
        with PeakChildPss() as pss:
            run = run_denoising_step(net, x, int(t[0]), profile=profile)
        started = time.perf_counter()
        out = sim.run(x, t, "delayed")
        rows["sim (s)"].append(time.perf_counter() - started)
        mismatch = compare_runs(out, run, int(t[0]))
        if mismatch is not None:
            raise SystemExit(f"Lava ({profile}) and the simulator differ: {mismatch}")
        rows["lava build (s)"].append(run.seconds["build"])
        rows["lava run (s)"].append(run.seconds["run"])
        rows["lava PSS (MiB)"].append(pss.peak / 1024)
    with PeakChildPss() as pss, ChainGraph(net, profile=profile) as graph:
        for x, t in states:
            step = graph.step(x, int(t[0]))
            out = sim.run(x, t, "delayed")
            mismatch = compare_runs(out, step, int(t[0]))
            if mismatch is not None:
                raise SystemExit(f"the persistent graph ({profile}) and the simulator differ: {mismatch}")
            rows["chain step (s)"].append(step.seconds["run"])
    rows["chain build (s)"].append(graph.build_seconds)
    rows["chain PSS (MiB)"].append(pss.peak / 1024)
    return {k: statistics.median(v) for k, v in rows.items()}, run.info["processes"]


def main() -> None:
    args, net, states = measured_chain(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "network.nir")
        write_chip_nir(path, net)
        net, sim = read_chip_nir(path), ChipSimulator.from_file(path)
        results = {profile: measure(net, sim, states, profile) for profile in PROFILES}
    print(f"shipped model ({os.path.basename(args.checkpoint)}), {len(states)} denoising steps of one image, "
          f"{net.steps_per_denoising_step} chip steps each; medians; identical spikes and output currents in every "
          "step of both profiles")
    print("| per denoising step | " + " | ".join(f"--profile {p}" for p in PROFILES) + " |")
    print("|---|" + "---:|" * len(PROFILES))
    print("| Lava processes | " + " | ".join(str(results[p][1]) for p in PROFILES) + " |")
    for key in results[PROFILES[0]][0]:
        print(f"| {key} | " + " | ".join(f"{results[p][0][key]:.3g}" for p in PROFILES) + " |")
    for label, ratio in (("Lava rebuilt per step / simulator",
                          lambda m: (m["lava build (s)"] + m["lava run (s)"]) / m["sim (s)"]),
                         ("Lava persistent graph / simulator", lambda m: m["chain step (s)"] / m["sim (s)"])):
        print(f"| {label} | " + " | ".join(f"{ratio(results[p][0]):.0f}x" for p in PROFILES) + " |")


if __name__ == "__main__":
    main()
