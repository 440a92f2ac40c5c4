"""The verification ladder for denoising steps of real sampling chains.

For each checked denoising step (x_t of a float DDIM chain started from seeded noise):
  float model vs quantized reference: relative L2 error of eps, PSNR of eps, per-population spike
      agreement (fraction of equal spikes) and firing rates;
  quantized reference vs simulator: identical spikes of every population at every SNN step and
      identical integer output currents; the first difference is named (population, SNN step, index).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from statistics import median

import torch
from torch import nn
from tqdm.auto import tqdm

from export.chip import READOUT, ChipNetwork
from export.reference import run_reference
from chiprun import ChipRun
from sddpm.neuron import SPIKING_NEURONS
from sddpm.samplers import ddim_sample, ddim_step, ddim_timesteps
from sddpm.schedule import NoiseSchedule
from simulators.network import ChipSimulator


@dataclass(frozen=True)
class Mismatch:
    """The first element where two runs differ: `expected` is the value of `expected_backend`'s run,
    `actual` that of `actual_backend`'s (snn_step -1: the runs differ in shape or in populations)."""
    expected_backend: str
    actual_backend: str
    denoising_step: int  # diffusion step t
    population: str  # a population name, or "readout"
    snn_step: int
    index: tuple[int, ...]  # (image, channel, y, x)
    expected: int
    actual: int

    def to_json(self) -> dict:
        return asdict(self) | {"index": list(self.index)}

    def __str__(self) -> str:
        where = f"t = {self.denoising_step}, " + ("the readout" if self.population == READOUT else
                                                  f"population {self.population}")
        if self.snn_step < 0:
            return f"{where}: the {self.expected_backend} and {self.actual_backend} runs differ in shape"
        return (f"{where}, SNN step {self.snn_step}, index {self.index}: {self.expected_backend} {self.expected}, "
                f"{self.actual_backend} {self.actual}")


@dataclass
class LadderReport:
    backend: str
    mode: str
    diffusion_steps: list[int] = field(default_factory=list)
    eps_rel_l2: list[float] = field(default_factory=list)
    psnr_db: list[float] = field(default_factory=list)
    spike_agreement: dict[str, list[float]] = field(default_factory=dict)
    rate_float: dict[str, list[float]] = field(default_factory=dict)
    rate_chip: dict[str, list[float]] = field(default_factory=dict)
    first_mismatch: Mismatch | None = None

    @property
    def identical(self) -> bool:
        return self.first_mismatch is None

    @property
    def steps_checked(self) -> int:
        return len(self.diffusion_steps)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(identical=self.identical, steps_checked=self.steps_checked)
        return out


def first_difference(expected: torch.Tensor, actual: torch.Tensor) -> tuple[int, tuple[int, ...]] | None:
    """(SNN step, index) of the first element where two [T, B, ...] tensors differ, in step-major order."""
    diff = expected != actual
    if not bool(diff.any()):
        return None
    flat = int(torch.nonzero(diff.flatten())[0])
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return where[0], where[1:]


def compare_runs(expected: ChipRun, actual: ChipRun, t: int) -> Mismatch | None:
    """Exact comparison of two runs of one network: populations in dependency order (the order every
    backend records them in), then the output currents; None when every spike and current agrees."""
    def mismatch(name, step=-1, index=(), want=-1, got=-1):
        return Mismatch(expected.backend, actual.backend, t, name, step, index, want, got)

    if list(expected.spikes) != list(actual.spikes):
        missing = set(expected.spikes) ^ set(actual.spikes)
        return mismatch(min(missing) if missing else "population order")
    pairs = [(name, train, actual.spikes[name]) for name, train in expected.spikes.items()]
    for name, want, got in pairs + [(READOUT, expected.readout, actual.readout)]:
        if want.shape != got.shape:
            return mismatch(name)
        hit = first_difference(want, got)
        if hit is not None:
            step, index = hit
            return mismatch(name, step, index, int(want[(step, *index)]), int(got[(step, *index)]))
    return None


def first_count_difference(expected, actual) -> str | None:
    """The first population or synapse whose per-step spike or SOP counts differ between two
    `export.energy.ForwardCounts`, or None when every count agrees exactly."""
    for a, b in zip(expected.populations, actual.populations, strict=True):
        for what in ("spikes", "sops"):
            if not torch.equal(getattr(a, what), getattr(b, what)):
                return f"population {a.name}: {what} {getattr(a, what).tolist()} vs {getattr(b, what).tolist()}"
    for a, b in zip(expected.synapses, actual.synapses, strict=True):
        if not torch.equal(a.sops, b.sops):
            return f"synapse {a.source} -> {a.target}: SOPs {a.sops.tolist()} vs {b.sops.tolist()}"
    return None


def psnr_db(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """PSNR of `actual` against `expected`, with the peak taken as the range of `expected`."""
    mse = float(((actual.double() - expected.double()) ** 2).mean())
    peak = float(expected.max() - expected.min())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


@torch.no_grad()
def float_spikes(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """eps and the spikes [T, B, C, H, W] of every population (IF or LIF module) of the float model."""
    spikes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, SPIKING_NEURONS):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: spikes.__setitem__(name, o > 0)))
    try:
        eps = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return eps, spikes


@torch.no_grad()
def chain_states(model: nn.Module, schedule: NoiseSchedule, x_T: torch.Tensor, ddim_steps: int,
                 check: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, t) at `check` denoising steps spread evenly over a deterministic float DDIM chain from x_T.

    The chain is `sddpm.samplers.ddim_sample`'s at eta 0 (its steps, through its `ddim_step`), stopped after
    the last state a check needs: one check step is the noise itself and costs no model call."""
    seq = ddim_timesteps(schedule.steps, ddim_steps)
    picks = sorted({round(i * (len(seq) - 1) / max(check - 1, 1)) for i in range(min(check, len(seq)))})
    ab = schedule.alphas_bar
    x, seen = x_T, []
    for i in range(len(seq) - 1, -1, -1):
        t = torch.full((x.shape[0],), seq[i], dtype=torch.long)
        seen.append((x.clone(), t))
        if len(seen) > picks[-1]:
            break
        x = ddim_step(x, model(x, t), float(ab[seq[i]]), float(ab[seq[i - 1]]) if i > 0 else 1.0)
    return [seen[i] for i in picks]


def run_ladder(model: nn.Module, net: ChipNetwork, sim: ChipSimulator, states, mode: str = "delayed",
               progress: bool = True, on_run: Callable | None = None) -> LadderReport:
    """`on_run(out)`, if given, receives every simulator run: counting its spikes needs no second run.
    The reference runs the chip's integers on the simulator's device; both runs are compared on the CPU."""
    report = LadderReport(backend="sim", mode=mode)
    order = [p.name for p in net.populations]
    for x, t in tqdm(states, desc=f"verify ({mode})", disable=not progress):
        eps_f, spikes_f = float_spikes(model, x, t)
        ref = run_reference(net, x, t, sim.device)
        out = sim.run(x, t, mode).to("cpu")
        if on_run is not None:
            on_run(out)
        step = int(t[0])
        report.diffusion_steps.append(step)
        report.eps_rel_l2.append(float((ref.eps - eps_f).norm() / eps_f.norm()))
        report.psnr_db.append(psnr_db(eps_f, ref.eps))
        for name in order:
            report.spike_agreement.setdefault(name, []).append(float((spikes_f[name] == ref.spikes[name]).float().mean()))
            report.rate_float.setdefault(name, []).append(float(spikes_f[name].float().mean()))
            report.rate_chip.setdefault(name, []).append(float(ref.spikes[name].float().mean()))
        if report.first_mismatch is None:
            report.first_mismatch = compare_runs(ref, out, step)
    return report


def format_ladder(report: LadderReport) -> str:
    """The ladder as a terminal table."""
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    agree = [a for values in report.spike_agreement.values() for a in values]
    rows = [
        ("float model vs quantized reference", "eps relative L2",
         f"mean {mean(report.eps_rel_l2):.4f}, max {max(report.eps_rel_l2):.4f}"),
        ("", "eps PSNR", f"mean {mean(report.psnr_db):.1f} dB, min {min(report.psnr_db):.1f} dB"),
        ("", "spike agreement", f"mean {mean(agree):.4f}, min {min(agree):.4f} (over populations)"),
        (f"quantized reference vs simulator ({report.mode})", "spikes + output currents",
         "identical" if report.identical else f"DIFFER at {report.first_mismatch}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"verification ladder, {report.steps_checked} denoising steps (t = "
             f"{', '.join(map(str, report.diffusion_steps))})"]
    lines += [f"  {a:<{width}}  {b:<24} {c}" for a, b, c in rows]
    return "\n".join(lines)


def steps_on_lava(net: ChipNetwork, sim: ChipSimulator, states, run_cfg=None, profile: str = "cpu") -> dict:
    """Denoising steps (x_t, t) of one image, each on a Lava graph built for it (`deploy.chip_lava`, process types
    of `profile`), compared with the simulator spike for spike, and the energy accounting counted from both; stops
    at a mismatch."""
    from deploy.chip_lava import run_denoising_step
    from export.energy import count_forward

    mismatch, count_mismatch, lava_s, sim_s, runs, sops = None, None, [], [], [], []
    for x, t in states:
        run = run_denoising_step(net, x, int(t[0]), run_cfg, profile)
        started = time.perf_counter()
        out = sim.run(x, t, "delayed")
        sim_s.append(time.perf_counter() - started)
        lava_s.append(sum(run.seconds.values()))
        runs.append(run)
        mismatch = compare_runs(out, run, t=int(t[0]))
        if mismatch is not None:
            break
        sim_counts, lava_counts = count_forward(net, out.spikes), count_forward(net, run.spikes)
        count_mismatch = count_mismatch or first_count_difference(sim_counts, lava_counts)
        sops.append(sum(int(p.sops.sum()) for p in lava_counts.populations))
    return {"identical": mismatch is None, "steps_checked": len(runs),
            "first_mismatch": None if mismatch is None else mismatch.to_json(),
            "counts_identical": mismatch is None and count_mismatch is None, "first_count_mismatch": count_mismatch,
            "sops_per_step": sops, "diffusion_steps": [int(t[0]) for _, t in states[:len(runs)]],
            "lava_seconds_per_step": median(lava_s), "sim_seconds_per_step": median(sim_s),
            "lava_build_seconds": median([r.seconds["build"] for r in runs]),
            "lava_processes": runs[0].info["processes"],
            "chip_steps_per_denoising_step": net.steps_per_denoising_step,
            "open_file_limit": runs[0].info["open_file_limit"], "profile": profile,
            "chip_process_types": runs[0].info["chip_process_types"],
            "host_process_types": runs[0].info["host_process_types"]}


def whole_chain_on_lava(net: ChipNetwork, sim: ChipSimulator, model: nn.Module, schedule: NoiseSchedule,
                        x_T: torch.Tensor, steps: int, run_cfg=None, profile: str = "cpu", eta: float = 0.0,
                        seed: int = 0) -> dict:
    """A DDIM chain (`eta`) of `steps` denoising steps of one image x_T on one Lava graph (`deploy.chain_lava`).
    Every step is compared with the simulator on the same x_t (spikes of every population, output currents);
    the final image with the simulator's own chain and with the float model's, from the same noise. With eta > 0
    the host draws each chain's step noise from a generator seeded with `seed`, so the three chains see the same
    draws."""
    from deploy.chain_lava import ChainGraph
    from deploy.chip_lava import process_types

    mismatch, lava_s, sim_s, checked = None, [], [], []
    graph = ChainGraph(net, run_cfg, profile)
    with graph:
        def lava_checked(x, t):
            nonlocal mismatch
            step = graph.step(x, int(t[0]))
            started = time.perf_counter()
            out = sim.run(x, t, "delayed")
            sim_s.append(time.perf_counter() - started)
            lava_s.append(step.seconds["run"])
            checked.append(int(t[0]))
            mismatch = mismatch or compare_runs(out, step, t=int(t[0]))
            return step.eps

        def chain(denoiser):
            return ddim_sample(denoiser, x_T, schedule, steps=steps, eta=eta,
                               generator=torch.Generator().manual_seed(seed))

        lava_image = chain(lava_checked)
    sim_image = chain(sim.denoiser("delayed"))
    with torch.no_grad():
        float_image = chain(model)
    return {"identical": mismatch is None and len(checked) == steps, "steps_checked": len(checked),
            "image_identical": bool(torch.equal(lava_image, sim_image)),
            "first_mismatch": None if mismatch is None else mismatch.to_json(),
            "diffusion_steps": checked, "build_seconds": graph.build_seconds,
            "graph_seconds": graph.graph_seconds, "start_seconds": graph.start_seconds,
            "lava_seconds_per_step": median(lava_s), "sim_seconds_per_step": median(sim_s),
            "max_abs_diff_vs_float": float((lava_image - float_image).abs().max()),
            "lava_processes": len(graph.processes), "chip_steps_per_denoising_step": net.steps_per_denoising_step,
            "open_file_limit": graph.note, "profile": profile, **process_types(graph.processes),
            "images": {"lava": lava_image, "simulator": sim_image, "float": float_image}}
