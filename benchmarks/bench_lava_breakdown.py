"""Where a denoising step on the persistent Lava graph goes: each process model's own computation against
Lava's runtime around it (issue 17: is Lava's per-step cost the floor, and of what?).

Run on demand, never as a test:

    .venv/bin/python benchmarks/bench_lava_breakdown.py            # 3 denoising steps of one image
    .venv/bin/python benchmarks/bench_lava_breakdown.py --steps 5

Lava forks one OS process per process of the graph. Before the fork, every process model's `run_spk` (the
model's work in one chip step: a LIF update, a Conv's convolution, a spike up-sampling, our host feeds and
sinks) is wrapped in a timer of the CPU time of its own thread; each child writes its totals to a file once
per denoising step. Beside that, /proc gives every child's whole CPU time (user + system) over the same
steps. The difference is what Lava's runtime spends outside the models: the phase handshakes with the
runtime service, and sending and receiving every port's message through its channels. Every step is checked
identical to the simulator before it counts.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_lava import _children, measured_chain  # noqa: E402
from deploy.chain_lava import ChainGraph  # noqa: E402
from export.nir_chip import read_chip_nir, write_chip_nir  # noqa: E402
from simulators.network import ChipSimulator  # noqa: E402
from toolchain.verify import compare_runs  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_TIMING = {"dir": None, "period": 1, "depth": 0, "seconds": 0.0, "calls": 0, "model": ""}  # one child's totals


def _timed(run_spk):
    """run_spk with its thread's CPU time added to this process's totals; nested calls (a subclass's run_spk
    calling its base's) count once."""
    def wrapper(self):
        if _TIMING["depth"]:
            return run_spk(self)
        _TIMING["depth"] = 1
        started = time.thread_time()
        try:
            return run_spk(self)
        finally:
            _TIMING["depth"] = 0
            _TIMING["seconds"] += time.thread_time() - started
            _TIMING["calls"] += 1
            _TIMING["model"] = type(self).__name__
            if _TIMING["calls"] % _TIMING["period"] == 0:  # once per denoising step: a small file per child
                with open(os.path.join(_TIMING["dir"], f"{os.getpid()}.json"), "w") as f:
                    json.dump({k: _TIMING[k] for k in ("model", "seconds", "calls")}, f)
    return wrapper


def instrument(directory: str, period: int) -> None:
    """Wrap the run_spk of every process model class that defines one (inherited by the fork)."""
    import lava.proc.conv.models  # noqa: F401  (the models the graph uses, so that their classes exist)
    import lava.proc.lif.models  # noqa: F401
    from lava.magma.core.model.py.model import AbstractPyProcessModel

    import deploy.processes  # noqa: F401

    _TIMING.update(dir=directory, period=period)
    pending, seen = [AbstractPyProcessModel], set()
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                pending.append(sub)
                if "run_spk" in sub.__dict__:
                    sub.run_spk = _timed(sub.__dict__["run_spk"])


def _cpu_seconds(pids) -> dict[int, float]:
    cpu = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        except OSError:
            continue
    return cpu


def _totals(directory: str) -> dict[int, dict]:
    out = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            out[int(name.split(".")[0])] = json.load(f)
    return out


def main() -> None:
    args, net, states = measured_chain(__doc__, extra_steps=1)  # one warm-up step first
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "network.nir")
        write_chip_nir(path, net)
        net, sim = read_chip_nir(path), ChipSimulator.from_file(path)
        period = net.steps_per_denoising_step
        timing = os.path.join(tmp, "timing")
        os.mkdir(timing)
        instrument(timing, period)
        walls = []
        with ChainGraph(net) as graph:
            for i, (x, t) in enumerate(states):
                if i == 1:  # the first step warms caches and channels up: measure from the second
                    before, models_before = _cpu_seconds(_children(os.getpid())), _totals(timing)
                step = graph.step(x, int(t[0]))
                mismatch = compare_runs(sim.run(x, t, "delayed"), step, int(t[0]))
                if mismatch is not None:
                    raise SystemExit(f"the persistent graph and the simulator differ: {mismatch}")
                if i >= 1:
                    walls.append(step.seconds["run"])
            time.sleep(1.0)  # each child writes its totals at the end of its period, maybe after the records came
            after, models_after = _cpu_seconds(before), _totals(timing)  # before the graph stops
    chip_steps = period * len(walls)
    by_model: dict[str, list[float]] = defaultdict(list)
    for pid, total in models_after.items():
        by_model[total["model"]].append(total["seconds"] - models_before.get(pid, {"seconds": 0.0})["seconds"])
    child_cpu = sum(after[pid] - before[pid] for pid in after)
    model_cpu = sum(sum(v) for v in by_model.values())
    wall = statistics.median(walls) / period
    print(f"shipped model ({os.path.basename(args.checkpoint)}), {len(graph.processes)} Lava processes, "
          f"{len(walls)} denoising steps of {period} chip steps on one persistent graph (identical to the "
          f"simulator), {os.cpu_count()} cores; per chip step:")
    print("| where | processes | CPU ms per chip step | share of the children's CPU |\n|---|---|---|---|")
    for model, seconds in sorted(by_model.items(), key=lambda kv: -sum(kv[1])):
        ms = sum(seconds) / chip_steps * 1e3
        print(f"| {model}.run_spk | {len(seconds)} | {ms:.1f} | {sum(seconds) / child_cpu:.0%} |")
    runtime = child_cpu - model_cpu
    print(f"| Lava runtime outside run_spk (phase handshakes, channel sends and receives) | "
          f"{len(after)} | {runtime / chip_steps * 1e3:.1f} | {runtime / child_cpu:.0%} |")
    print(f"| all children | {len(after)} | {child_cpu / chip_steps * 1e3:.1f} | 100% |")
    print(f"\nwall per chip step {wall * 1e3:.0f} ms (median over denoising steps / {period}); the children's CPU "
          f"per chip step / wall = {child_cpu / chip_steps / wall:.2f} of {os.cpu_count()} cores busy")


if __name__ == "__main__":
    main()
