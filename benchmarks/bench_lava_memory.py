"""Where Lava's memory goes: the whole process tree of one `sddpm deploy --backend lava` run, sampled.

Run on demand, never as a test (one compiled chip file per width; bench_scale's compile stage writes them):

    .venv/bin/python benchmarks/bench_lava_memory.py runs/scale/mnist-ch-16/network.nir \
        runs/scale/mnist-ch-32/network.nir

Lava forks one OS process per process of the graph. A forked child shares the parent's pages until one of
them writes a page, so a child's RSS counts pages it never copied, and the sum of RSS over 400 children
means nothing. Every `--interval` seconds this reads /proc/PID/smaps_rollup of the deploy command and all its
descendants: Pss (each shared page split among its sharers; summed over the tree it is the tree's real use),
Private (pages only that process holds: what a child has copied or allocated), and the parent's RSS. It
prints, per file, the peaks over the run with the graph's process count. A run that would exhaust the
machine is killed first (--stop-below-mb), and its peaks are those reached until then.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
VENV_BIN = os.path.dirname(sys.executable)

from deploy.processes import mem_available_mb  # noqa: E402  (after the repository is on the path)


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # the command name is in parentheses and may hold spaces: the parent pid follows the last ')'
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(root: int) -> list[int]:
    tree, out, todo = children_of(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def rollup(pid: int) -> dict[str, int] | None:
    """kB fields of /proc/PID/smaps_rollup, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = f.readlines()[1:]
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, value, *_ = line.split()
        fields[key.rstrip(":")] = int(value)
    return fields


def sample(root: int) -> dict[str, float] | None:
    rows = {pid: rollup(pid) for pid in descendants(root)}
    rows = {pid: r for pid, r in rows.items() if r}
    if root not in rows:
        return None
    private = {pid: r["Private_Clean"] + r["Private_Dirty"] for pid, r in rows.items()}
    children = [pid for pid in rows if pid != root]
    return {"processes": len(rows), "pss_mb": sum(r["Pss"] for r in rows.values()) / 1024,
            "parent_rss_mb": rows[root]["Rss"] / 1024,
            "child_private_mb": sum(private[p] for p in children) / 1024,
            "largest_child_private_mb": max((private[p] for p in children), default=0) / 1024,
            "largest_child_rss_mb": max((rows[p]["Rss"] for p in children), default=0) / 1024}


def measure(nir_file: str, interval: float, log: str, stop_below_mb: float) -> dict[str, float]:
    argv = [os.path.join(VENV_BIN, "sddpm"), "deploy", "--backend", "lava", "--nir", nir_file, "--steps", "1",
            "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    peaks: dict[str, float] = {}
    parent_rss_at_fork = 0.0
    begin = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        stopped = False
        while proc.poll() is None:
            if mem_available_mb() < stop_below_mb:  # before the kernel's OOM killer picks a victim itself
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                stopped = True
                break
            now = sample(proc.pid)
            if now:
                if now["processes"] <= 2:  # before the fork: the parent (and perhaps one helper) alone
                    parent_rss_at_fork = now["parent_rss_mb"]
                for key, value in now.items():
                    peaks[key] = max(peaks.get(key, 0.0), value)
            time.sleep(interval)
    peaks["seconds"] = time.perf_counter() - begin
    peaks["parent_rss_at_fork_mb"] = parent_rss_at_fork
    peaks["rc"] = "stopped: memory" if stopped else proc.returncode
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nir_files", nargs="+")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--stop-below-mb", type=float, default=1500.0,
                        help="kill the run when the machine's MemAvailable falls below this (default: %(default)s)")
    args = parser.parse_args()
    print("| chip file | rc | wall s | processes | parent RSS before the fork | tree's peak Pss | children's "
          "private (sum) | largest child: private / RSS | Pss above the parent, per process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.nir_files:
        p = measure(path, args.interval, os.path.splitext(path)[0] + "-lava-memory.log", args.stop_below_mb)
        per_process = (p["pss_mb"] - p["parent_rss_at_fork_mb"]) / max(p["processes"] - 1, 1)
        print(f"| {os.path.relpath(path, ROOT)} | {p['rc']} | {p['seconds']:.0f} | {p['processes']:.0f} | "
              f"{p['parent_rss_at_fork_mb']:.0f} MB | {p['pss_mb']:.0f} MB | {p['child_private_mb']:.0f} MB | "
              f"{p['largest_child_private_mb']:.0f} / {p['largest_child_rss_mb']:.0f} MB | {per_process:.1f} MB |",
              flush=True)


if __name__ == "__main__":
    main()
