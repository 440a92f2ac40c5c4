"""The toolchain at the paper's sizes: wall time and peak RSS of every `sddpm` stage, per model width.

Run on demand, never as a test:

    .venv/bin/python benchmarks/bench_scale.py --ch 16,32            # mnist layout at ch 16 and 32
    .venv/bin/python benchmarks/bench_scale.py --ch 64,128 --cifar10 --timeout-min 15
    .venv/bin/python benchmarks/bench_scale.py --ch 128 --stages compile,verify-zero --repeat 3  # the targets
    git archive main | tar -x -C /tmp/before    # the code before a change, then both, run by run:
    .venv/bin/python benchmarks/bench_scale.py --ch 128 --stages compile --repeat 3 --baseline /tmp/before

Models: the `mnist` preset's layout (1x32x32 images, ch_mult 1,2,2,2, 2 res blocks, T 4) at each --ch, and
with --cifar10 the `cifar10` preset (ch 128, ch_mult 1,2,2,4). Weights are random (seeded PyTorch init, BN
at its initial statistics), saved as an official SDDPM checkpoint ({'net_model': state_dict, 'step': 0}) so
that every stage takes the path a user's official checkpoint takes: its configuration read off the shapes,
calibration on --dataset (mnist for 1 channel; for cifar10, which is not offline, a stand-in folder of random
CIFAR-10 python batches is written next to the checkpoint).

Every stage is a fresh subprocess, so its peak RSS (`os.wait4`'s ru_maxrss) is its own; a stage that runs past
--timeout-min is killed and recorded as not finished. The `sddpm` commands compile the checkpoint themselves
(verify, energy, report and `export --format nir` each include a compile), as a user running them would:
  compile            sddpm compile (default calibration: 4 batches of 16)
  compile (baseline) with --baseline DIR: the same command on the code in DIR, each run right after one of
                     ours, so that both see the same load from other work on the machine
  verify delayed     sddpm verify --steps 1 --batch-size 1 --sim-mode delayed
  verify zero        sddpm verify --steps 1 --batch-size 1 --sim-mode zero_delay
  energy             sddpm energy --steps 1 --batch-size 1
  report             sddpm report --steps 1 --batch-size 1
  export nir         sddpm export --format nir --check-images 4
  export onnx        sddpm export --format onnx --check-images 4
  step b1, step b8   one denoising step (T SNN steps): the simulator (zero-delay) reading compile's file
                     against the float SpikingUNet, median of 3 after a warm-up, batch 1 and 8
  sim memory         the simulator's peak RSS above its loaded file for one zero-delay step at batch 1, 2, 4, 8
  resources          export.resources.estimate of compile's file, and export.placement's chips and crossing
                     spikes (from one simulator run)
  deploy-lava        sddpm deploy --backend lava --nir (compile's file) --steps 1 --json: one denoising step on
                     Lava, identical to the simulator or not
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
VENV_BIN = os.path.dirname(sys.executable)
STAGES = ("compile", "verify-delayed", "verify-zero", "energy", "report", "export-nir", "export-onnx",
          "step-b1", "step-b8", "sim-memory", "resources", "deploy-lava")


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    ch: int
    preset: str  # "mnist" or "cifar10"


@dataclasses.dataclass(frozen=True)
class StageResult:
    seconds: float
    peak_mb: float
    status: str  # "ok", "failed (rc N)", "did not finish in N min"
    detail: str = ""  # what the stage reports (a step's times, the resources)


def write_checkpoint(model: Model, folder: str) -> tuple[str, int]:
    """An official-format checkpoint of a seeded random model; returns (path, parameters)."""
    import torch

    from sddpm.config import PRESETS
    from sddpm.unet import build_model

    cfg = dataclasses.replace(PRESETS[model.preset], ch=model.ch)
    torch.manual_seed(0)
    net = build_model(cfg)
    path = os.path.join(folder, "official.pt")
    if not os.path.exists(path):
        torch.save({"net_model": net.state_dict(), "step": 0}, path)
    return path, sum(p.numel() for p in net.parameters())


def write_cifar10_standin(folder: str, images: int = 256) -> str:
    """CIFAR-10 python batches of smooth random images (the real set is not offline): calibration data only."""
    import numpy as np

    root = os.path.join(folder, "cifar10-standin")
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        coarse = rng.integers(0, 256, (images, 3, 8, 8))
        data = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3).astype(np.uint8).reshape(images, -1)
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": [0] * images}, f, protocol=2)
    return root


def run_stage(argv: list[str], timeout_s: float, log: str, code: str = ROOT) -> StageResult:
    """Run argv in its own process group on the packages in `code`; wall time, its own peak RSS, and its last
    output line."""
    # PYTHONPATH: the repository's packages as they are in `code`, whatever the venv's install lists
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": code}
    begin = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - begin > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    seconds = time.perf_counter() - begin
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    with open(log) as f:
        lines = [line.strip() for line in f if line.strip()]
    if timed_out:
        state = f"did not finish in {timeout_s / 60:.0f} min"
    elif proc.returncode == -signal.SIGKILL:
        state = "killed (out of memory?)"
    else:
        state = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
    detail = lines[-1] if lines and lines[-1].startswith("RESULT ") else ""
    if lines and lines[-1].startswith('{"identical"'):  # sddpm deploy --json
        report = json.loads(lines[-1])
        detail = (f"RESULT {'identical' if report['identical'] else 'DIFFERS'} to the simulator, Lava "
                  f"{report['lava_seconds_per_step']:.0f} s per step (build {report['lava_build_seconds']:.0f} s), "
                  f"{report['lava_processes']} processes")
    if lines and lines[-1].startswith("quantized reference vs simulator"):  # sddpm verify's ladder
        detail = "RESULT " + ("identical" if lines[-1].endswith(" identical") else "DIFFERS: " + lines[-1])
        # the checking itself, after the compile: the elapsed time of verify's finished progress bar
        bars = re.findall(r"verify \(\w+\): 100%.*?\[(\d+):(\d\d)<", "\n".join(lines).replace("\r", "\n"))
        if bars:
            detail += f", {int(bars[-1][0]) * 60 + int(bars[-1][1])} s of it checking"
    # ru_maxrss of a waited child is the largest of it and its reaped descendants (one Lava process, not their sum)
    return StageResult(seconds, usage.ru_maxrss / 1024, state, detail.removeprefix("RESULT "))


def stage_argv(stage: str, ckpt: str, folder: str, calib: list[str]) -> list[str]:
    sddpm = [os.path.join(VENV_BIN, "sddpm")]
    chip = os.path.join(folder, "network.nir")
    one = ["--steps", "1", "--batch-size", "1"]
    scratch = os.path.join(folder, "scratch.nir")  # the commands that recompile do not overwrite compile's file
    if stage == "compile":
        return sddpm + ["compile", "--checkpoint", ckpt, "--out", chip] + calib
    if stage.startswith("verify"):
        mode = "delayed" if stage == "verify-delayed" else "zero_delay"
        return sddpm + ["verify", "--checkpoint", ckpt, *one, "--sim-mode", mode, "--chip-out", scratch] + calib
    if stage == "energy":
        return sddpm + ["energy", "--checkpoint", ckpt, *one, "--chip-out", scratch] + calib
    if stage == "report":
        return sddpm + ["report", "--checkpoint", ckpt, *one, "--out", os.path.join(folder, "report")] + calib
    if stage == "deploy-lava":  # on compile's file, one denoising step, checked against the simulator
        return sddpm + ["deploy", "--backend", "lava", "--nir", chip, "--checkpoint", ckpt, "--steps", "1", "--json"]
    if stage.startswith("export"):
        fmt = stage.removeprefix("export-")
        return sddpm + ["export", "--format", fmt, "--checkpoint", ckpt, "--check-images", "4",
                        "--out", os.path.join(folder, f"export.{fmt}")] + calib
    me = [sys.executable, os.path.abspath(__file__), "--inner", stage, "--inner-args", ckpt, chip]
    return me


def conv_macs(ckpt: str, chip: str) -> tuple[int, int]:
    """MACs of one forward pass of one image as each side computes it: the float SpikingUNet's convs (hooked,
    T folded into the batch where the model does so), and the simulator's dense convs, every synapse at every
    SNN step over its whole output grid, plus the host's convs."""
    import torch

    from export.energy import host_macs
    from export.nir_chip import read_chip_nir
    from sddpm.checkpoint import load_model

    net = read_chip_nir(chip)
    grid = {p.name: p.shape[1:] for p in net.populations} | {"readout": net.readout.shape[1:]}
    chip_macs = net.snn_steps * sum(s.weight.size * grid[s.target][0] * grid[s.target][1] for s in net.synapses)
    chip_macs += sum(host_macs(net).values())
    model = load_model(ckpt).model.eval()
    total = [0]

    def count(module, _inputs, out):
        total[0] += out.numel() * module.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    cfg = net.model_config
    with torch.no_grad():
        model(torch.zeros(1, cfg["img_ch"], cfg["img_size"], cfg["img_size"]), torch.tensor([500]))
    for h in hooks:
        h.remove()
    return total[0], chip_macs


def inner_step(ckpt: str, chip: str, batch: int) -> str:
    """Median seconds of one denoising step: float SpikingUNet vs the simulator in zero-delay mode, beside the
    ratio of the MACs each computes (`conv_macs`)."""
    import statistics

    import torch

    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator

    torch.set_num_threads(1)
    loaded = load_model(ckpt)
    cfg = loaded.model_config
    sim = ChipSimulator.from_file(chip)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.img_ch, cfg.img_size, cfg.img_size, generator=gen)
    t = torch.randint(cfg.diffusion_steps, (batch,), generator=gen)
    runs = {"float": lambda: loaded.model(x, t), "sim": lambda: sim.run(x, t, "zero_delay")}
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        for _ in range(3):
            for key, fn in runs.items():
                begin = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - begin)
    f, s = (statistics.median(times[k]) for k in ("float", "sim"))
    float_macs, chip_macs = conv_macs(ckpt, chip)
    return (f"float {f:.2f} s, sim {s:.2f} s ({s / f:.1f}x); MACs per image float {float_macs / 1e9:.2f} G, "
            f"sim {chip_macs / 1e9:.2f} G ({chip_macs / float_macs:.1f}x)")


def inner_sim_memory(chip: str, batches=(1, 2, 4, 8)) -> str:
    """The simulator's peak RSS above the loaded file for one zero-delay denoising step at growing batch sizes
    (in increasing order, so each run's peak is the new high-water mark): linear in the batch if the
    increments per image stay flat."""
    import resource

    import torch

    from simulators.network import ChipSimulator

    torch.set_num_threads(1)
    sim = ChipSimulator.from_file(chip)
    cfg = sim.meta["model_config"]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = []
    for batch in batches:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, cfg["img_ch"], cfg["img_size"], cfg["img_size"], generator=gen)
        sim.run(x, torch.full((batch,), 500), "zero_delay")
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    per_image = "/".join(f"{p / b:.0f}" for p, b in zip(peaks, batches))
    return (f"above the loaded file ({base:.0f} MB) at batch {'/'.join(map(str, batches))}: "
            f"{'/'.join(f'{p:.0f}' for p in peaks)} MB, per image {per_image} MB")


def inner_resources(chip: str) -> str:
    """The resource estimate and the greedy placement, its crossing spikes from one simulator run (batch 1,
    noise at t = 500)."""
    import torch

    from export.nir_chip import read_chip_nir
    from export.placement import placement_summary
    from export.resources import estimate
    from simulators.network import ChipSimulator

    torch.set_num_threads(1)
    net = read_chip_nir(chip)
    est = estimate(net)
    cfg = net.model_config
    x = torch.randn(1, cfg["img_ch"], cfg["img_size"], cfg["img_size"], generator=torch.Generator().manual_seed(0))
    run = ChipSimulator.from_file(chip).run(x, torch.tensor([500]), "zero_delay")
    spikes = {name: float(s.sum()) for name, s in run.spikes.items()}
    placed = placement_summary(net, est, spikes)
    shared, dense = placed["shared"], placed["dense"]
    return (f"{est.neurons / 1e6:.2f} M neurons, {est.synapses(True) / 1e6:.1f} M shared / "
            f"{est.synapses(False) / 1e6:.0f} M dense synapses, {est.cores(True)} / {est.cores(False)} cores; "
            f"placed: {shared['chips']} chip(s) shared ({shared['system']}, "
            f"{shared['crossing_spikes_per_step'] / 1e3:.0f} k crossing spikes per step), "
            f"{dense['chips']} dense ({dense['system']}, {dense['crossing_spikes_per_step'] / 1e3:.0f} k crossing)")


def fmt(result: StageResult) -> str:
    cell = f"{result.seconds:.0f} s, {result.peak_mb / 1024:.1f} GB"
    return cell if result.status == "ok" else f"{result.status} ({cell})"


def repeated(runs: list[StageResult]) -> str:
    """One cell for --repeat runs of a stage: the median time with its range, the largest peak RSS."""
    if len(runs) == 1 or any(r.status != "ok" for r in runs):
        return "; ".join(fmt(r) for r in runs)
    seconds = sorted(r.seconds for r in runs)
    return (f"{statistics.median(seconds):.0f} s (median of {len(runs)}, {seconds[0]:.0f}-{seconds[-1]:.0f}), "
            f"{max(r.peak_mb for r in runs) / 1024:.1f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ch", default="16,32,64,128", help="widths of the mnist layout (default: %(default)s)")
    parser.add_argument("--cifar10", action="store_true", help="also the cifar10 preset (ch 128, ch_mult 1,2,2,4)")
    parser.add_argument("--stages", default=",".join(STAGES), help="which stages (default: all)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each subprocess stage; the cell gives their median (default: %(default)s)")
    parser.add_argument("--timeout-min", type=float, default=15.0, help="per stage (default: %(default)s)")
    parser.add_argument("--baseline", help="a checkout of the code before a change: the compile stage also runs "
                        "on it, alternating run by run with ours (its row: compile (baseline))")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "scale"), help="checkpoints, files and logs")
    parser.add_argument("--inner", choices=("step-b1", "step-b8", "sim-memory", "resources"), help=argparse.SUPPRESS)
    parser.add_argument("--inner-args", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        ckpt, chip = args.inner_args
        if args.inner == "resources":
            detail = inner_resources(chip)
        elif args.inner == "sim-memory":
            detail = inner_sim_memory(chip)
        else:
            detail = inner_step(ckpt, chip, int(args.inner[6:]))
        print("RESULT " + detail)
        return

    models = [Model(f"mnist ch {c}", int(c), "mnist") for c in args.ch.split(",") if c]
    if args.cifar10:
        models.append(Model("cifar10 ch 128", 128, "cifar10"))
    stages = args.stages.split(",")
    header = f"| stage | {' | '.join(m.name for m in models)} |"
    rows: dict[str, list[str]] = {"parameters": [], "NIR file": []}
    rows.update({s: [] for s in stages})
    if args.baseline and "compile" in stages:
        rows["compile (baseline)"] = []
    for model in models:
        folder = os.path.join(args.out, model.name.replace(" ", "-"))
        os.makedirs(folder, exist_ok=True)
        ckpt, params = write_checkpoint(model, folder)
        calib = ["--dataset", "mnist"] if model.preset == "mnist" else \
            ["--dataset", "cifar10", "--data-root", write_cifar10_standin(folder)]
        rows["parameters"].append(f"{params / 1e6:.1f} M")
        for stage in stages:
            runs, before = [], []
            for _ in range(args.repeat):
                runs.append(run_stage(stage_argv(stage, ckpt, folder, calib), args.timeout_min * 60,
                                      os.path.join(folder, f"{stage}.log")))
                if stage == "compile" and args.baseline:  # the baseline writes its own file, beside ours
                    argv = stage_argv(stage, ckpt, folder, calib)
                    argv[argv.index("--out") + 1] = os.path.join(folder, "baseline.nir")
                    before.append(run_stage(argv, args.timeout_min * 60, os.path.join(folder, "baseline.log"),
                                            os.path.abspath(args.baseline)))
            for name, done in ((stage, runs), ("compile (baseline)", before)):
                if done:
                    details = sorted({r.detail for r in done if r.detail})
                    cell = repeated(done) + (f": {' / '.join(details)}" if details else "")
                    rows[name].append(cell)
                    print(f"{model.name} {name}: {cell}", file=sys.stderr, flush=True)
        chip = os.path.join(folder, "network.nir")
        rows["NIR file"].append(f"{os.path.getsize(chip) / 1e6:.0f} MB" if os.path.exists(chip) else "none")
    print(header)
    print("|---|" + "---|" * len(models))
    for name, cells in rows.items():
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
