"""The quality tables (docs/quality.md): every row a sampling run and an FID, made by `sddpm quality NAME`.

A row is two `sddpm` commands, run in-process exactly as printed by `sddpm quality --commands`:
`sddpm sample` (seeded noise, so rows that differ in one option start from the same noise) and
`sddpm fid --images ... --real-baseline --save ...`, which puts the FID of the samples and the FID
of as many real held-out test images (the small-count floor) in one JSON file. The JSON files are
kept in the repository (docs/quality/), the samples are not (runs/quality/), so the tables can be
rewritten from a fresh clone. A row whose JSON exists is done; a row whose samples exist is only
scored, so an interrupted table run picks up where it stopped. `sddpm quality --markdown` prints the
tables from the JSON files.
"""
from __future__ import annotations

import fnmatch
import json
import os
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from sddpm.config import DEFAULT_DDIM_STEPS, DEFAULT_ETA

from .errors import UsageError

# The FID protocol of every row: reference statistics of REF_COUNT training images (seeded subset; 37-42 min
# per dataset on one core, computed once and cached), all samples of one row drawn in batches of SAMPLE_BATCH,
# batch b from the noise of seed b; the FID's spread from BOOTSTRAP resamplings of the row's images. Rows in
# SCORED_BEFORE_KEEPING were sampled before rows kept their images, so they stay scored against the earlier
# EARLIER_REF_COUNT images until they are sampled again (about 3 h of CPU); the tables give each row's count.
REF_COUNT = 10_000
EARLIER_REF_COUNT = 1000
SAMPLE_BATCH = 100
BOOTSTRAP = 200
GRID_IMAGES = 64
PAPER_SAMPLES = 50_000
PAPER_TRAIN = {"MNIST": 60_000, "Fashion-MNIST": 60_000}  # the paper's reference: the whole training set
GRID_WIDTH_PX = 128  # of a README table cell; the 8 x 8 grid of 32-pixel images is 274 pixels wide


@dataclass(frozen=True)
class Row:
    """One measured row: a checkpoint sampled one way, scored against its dataset."""
    name: str
    table: str
    model: str                 # what the README calls the checkpoint
    checkpoint: str
    dataset: str
    sampler: str               # what the README calls the sampling options
    options: tuple[str, ...]   # the `sddpm sample` options that make `sampler`
    num_images: int
    ref_count: int = REF_COUNT

    def sample_argv(self, out: str) -> list[str]:
        return ["sample", "--checkpoint", self.checkpoint, *self.options, "--num-images", str(self.num_images),
                "--batch-size", str(SAMPLE_BATCH), "--seed", "0", "--out", os.path.join(out, self.name)]

    def samples_path(self, out: str) -> str:
        """Where `sample_argv(out)` writes the row's images (`sddpm sample` names its file samples.npz)."""
        return os.path.join(out, self.name, "samples.npz")

    def fid_argv(self, results: str) -> list[str]:
        return ["fid", "--images", kept_samples_path(self, results), "--dataset", self.dataset,
                "--ref-count", str(self.ref_count), "--real-baseline", "--bootstrap", str(BOOTSTRAP),
                "--save", result_path(self, results)]


@dataclass(frozen=True)
class PaperRow:
    """A published number the table compares with (not measured here)."""
    table: str
    model: str
    sampler: str
    fid: float


def ddim(steps: int, eta: float) -> tuple[str, tuple[str, ...]]:
    """Our DDIM at `steps` steps and `eta` (0: deterministic; 1: the DDPM posterior's noise at every step), eta
    given explicitly so that a change of `sddpm sample`'s default changes no row."""
    return (f"our DDIM {steps}, eta {eta:g}, final image clipped",
            ("--sampler", "ddim", "--steps", str(steps), "--eta", f"{eta:g}"))


# (what the README calls it, the `sddpm sample` options). Our DDPM with x0 clipped is the official DDPM
# (tests/test_official_samplers.py derives it; tools/compare_official_samplers.py measures 2e-6 against the
# official file), so those rows carry both names.
DDPM = ("DDPM 1000, x0 clipped every step (= official DDPM)", ("--sampler", "ddpm", "--clip-x0"))
OFFICIAL_DDIM100 = ("official DDIM 100 (x0 clipped every step, eps kept)",
                    ("--sampler", "official-ddim", "--steps", "100"))
DDIM100 = ddim(100, 0.0)
DDIM50 = ddim(50, 0.0)
DDIM100_CLIP = ("our DDIM 100, eta 0, x0 clipped every step, eps derived again", (*DDIM100[1], "--clip-x0"))
SAMPLES = {DDPM: 200, OFFICIAL_DDIM100: 500, DDIM100: 500, DDIM50: 500, DDIM100_CLIP: 500}
# The sampler sweep: every (steps, eta) pair for each model in SWEEP_MODELS, SWEEP_SAMPLES images per row (the
# count of the DDPM rows, whose 1,000 network calls per image make them the dearest point of the comparison).
SWEEP_STEPS = (10, 25, 50, 100)
SWEEP_ETAS = (0.0, 0.5, 1.0)
SWEEP_SAMPLES = 200
# `sddpm sample`'s default, the sweep's choice: the neuron, T and chip comparisons are measured with it too
CHOSEN = ddim(DEFAULT_DDIM_STEPS, DEFAULT_ETA)
CHIP_CHAINS = SAMPLES[DDIM100]  # the float-vs-chip rows' sample count at every sampler
TABLE_SAMPLERS = (("ddpm", DDPM), ("official-ddim100", OFFICIAL_DDIM100), ("ddim100", DDIM100),
                  ("ddim50", DDIM50))
THRESHOLD_FACTORS = (0.995, 0.997, 1.003, 1.005)
DATASETS = (("mnist", "mnist", "MNIST"), ("fashion-mnist", "fashion", "Fashion-MNIST"))  # (data, prefix, title)
# checkpoint suffix, what the tables call it, its training budget
KINDS = (("sddpm", "SDDPM, T = 4", "step 13,000"), ("ann", "ANN twin (our U-Net)", "step 13,000"),
         ("diffusers", "diffusers UNet2DModel (yardstick)", "step 13,000"))
# The MNIST SDDPM's step-13,000 state, which the rows named mnist-sddpm-* measure: the shipped demo model
# until it was trained on to 40,000 steps (issue 15), rows mnist-sddpm-step40000-*.
MNIST_SDDPM_13K = "mnist-sddpm-step13000"
LONG_SDDPM = ("mnist-sddpm-step40000", "mnist-sddpm", "SDDPM, T = 4", "step 40,000")  # rows, checkpoint, ...
LONG_SAMPLERS = (("ddpm", DDPM), ("official-ddim100", OFFICIAL_DDIM100), ("ddim100", DDIM100),
                 ("ddim100-clip", DDIM100_CLIP))
# (row prefix, checkpoint, what the tables call it) of the swept models: the shipped SDDPM and the two ANNs
SWEEP_MODELS = (("mnist-sddpm-step40000", "mnist-sddpm", "SDDPM, T = 4, step 40,000 (shipped)"),
                ("mnist-ann", "mnist-ann", "ANN twin (our U-Net), step 13,000"),
                ("mnist-diffusers", "mnist-diffusers", "diffusers UNet2DModel (yardstick), step 13,000"))
SCORED_BEFORE_KEEPING = frozenset(
    [f"{prefix}-sddpm-{tag}" for _, prefix, _ in DATASETS for tag in ("ddpm", "ddim100", "ddim50", "ddim100-clip")]
    + ["mnist-t4-step2000-ddim100", "mnist-t8-step2000-ddim100", "mnist-sddpm-ddim100-chip"]
    + [f"mnist-sddpm-ddim50-tg{factor}" for factor in THRESHOLD_FACTORS])


def _row(name, table, model, checkpoint, dataset, sampler, extra=(), label=None, ref_count=None,
         num_images=None) -> Row:
    sampler_label, options = sampler
    ref_count = ref_count or (EARLIER_REF_COUNT if name in SCORED_BEFORE_KEEPING else REF_COUNT)
    return Row(name, table, model, f"checkpoints/{checkpoint}.pt", dataset, label or sampler_label,
               (*options, *extra), num_images or SAMPLES[sampler], ref_count)


def sweep_name(prefix: str, steps: int, eta: float) -> str:
    return f"{prefix}-ddim{steps}-eta{eta:g}"


def _checkpoint(prefix: str, kind: str) -> str:
    return MNIST_SDDPM_13K if (prefix, kind) == ("mnist", "sddpm") else f"{prefix}-{kind}"


def _rows() -> tuple[Row, ...]:
    rows = []
    for dataset, prefix, title in DATASETS:
        for kind, model, budget in KINDS:
            for tag, sampler in TABLE_SAMPLERS:
                rows.append(_row(f"{prefix}-{kind}-{tag}", title, f"{model}, {budget}", _checkpoint(prefix, kind),
                                 dataset, sampler))
    name, checkpoint, model, budget = LONG_SDDPM
    for tag, sampler in LONG_SAMPLERS:
        rows.append(_row(f"{name}-{tag}", "MNIST", f"{model}, {budget}", checkpoint, "mnist", sampler))
    for snn_steps in (4, 8):
        rows.append(_row(f"mnist-t{snn_steps}-step2000-ddim100", "T", f"SDDPM, T = {snn_steps}, step 2,000",
                         f"mnist-sddpm-t{snn_steps}-step2000", "mnist", DDIM100))
    for factor in THRESHOLD_FACTORS:
        rows.append(_row(f"mnist-sddpm-ddim50-tg{factor}", "threshold", "SDDPM, T = 4, step 13,000",
                         MNIST_SDDPM_13K, "mnist", DDIM50, ("--threshold-factor", str(factor)),
                         f"our DDIM 50, eta 0, thresholds x {factor}"))
    rows.append(_row("mnist-sddpm-ddim100-chip", "chip", "SDDPM, T = 4, step 13,000: chip network (simulator)",
                     MNIST_SDDPM_13K, "mnist", DDIM100, ("--backend", "sim")))
    rows.append(_row(f"{name}-ddim100-chip", "chip", f"{model}, {budget}: chip network (simulator)", checkpoint,
                     "mnist", DDIM100, ("--backend", "sim")))
    # the LIF SDDPM beside the IF rows of the same recipe, scored against their 1,000 reference images
    for tag, sampler in (("ddim100", DDIM100), ("ddim50", DDIM50)):
        rows.append(_row(f"mnist-sddpm-lif-{tag}", "neuron", "SDDPM, LIF (tau 2), T = 4, step 13,000",
                         "mnist-sddpm-lif", "mnist", sampler, ref_count=EARLIER_REF_COUNT))
    # the neuron and T comparisons again with the chosen sampler, on the sweep's protocol
    for compared, label, weights, table in (
            ("mnist-sddpm", "SDDPM, T = 4, step 13,000", MNIST_SDDPM_13K, "neuron"),
            ("mnist-sddpm-lif", "SDDPM, LIF (tau 2), T = 4, step 13,000", "mnist-sddpm-lif", "neuron"),
            ("mnist-t4-step2000", "SDDPM, T = 4, step 2,000", "mnist-sddpm-t4-step2000", "T"),
            ("mnist-t8-step2000", "SDDPM, T = 8, step 2,000", "mnist-sddpm-t8-step2000", "T")):
        rows.append(_row(sweep_name(compared, DEFAULT_DDIM_STEPS, DEFAULT_ETA), table, label, weights, "mnist", CHOSEN,
                         num_images=SWEEP_SAMPLES))
    # the chip at the chosen sampler, CHIP_CHAINS chains as under eta 0, beside the float model on the same seeds:
    # the host draws the step noise of both from the same generators (sddpm.generate)
    chosen = f"{sweep_name(name, DEFAULT_DDIM_STEPS, DEFAULT_ETA)}-n{CHIP_CHAINS}"
    rows.append(_row(chosen, "chip", f"{model}, {budget}", checkpoint, "mnist", CHOSEN, num_images=CHIP_CHAINS))
    rows.append(_row(f"{chosen}-chip", "chip", f"{model}, {budget}: chip network (simulator)", checkpoint,
                     "mnist", CHOSEN, ("--backend", "sim"), num_images=CHIP_CHAINS))
    for dataset, prefix, title in DATASETS:
        for kind, model, budget in KINDS:
            rows.append(_row(f"{prefix}-{kind}-ddim100-clip", f"clip {title}", f"{model}, {budget}",
                             _checkpoint(prefix, kind), dataset, DDIM100_CLIP))
    for prefix, checkpoint, model in SWEEP_MODELS:
        for eta in SWEEP_ETAS:
            for steps in SWEEP_STEPS:
                rows.append(_row(sweep_name(prefix, steps, eta), "sweep", model, checkpoint, "mnist",
                                 ddim(steps, eta), num_images=SWEEP_SAMPLES))
    return tuple(rows)


ROWS = _rows()
BY_NAME = {row.name: row for row in ROWS}
PAPER = (PaperRow("MNIST", "paper's SDDPM (ch 128, T = 4; SDM Tab. 1)", "DDPM 1000", 29.48),
         PaperRow("Fashion-MNIST", "paper's SDDPM (ch 128, T = 4; SDM Tab. 1)", "DDPM 1000", 21.38))
# table -> (title, rows borrowed from other tables so that a comparison reads in one place)
TABLES = {
    "MNIST": ("MNIST 32x32: the SDDPM against the paper, its ANN twin and a standard DDPM, four samplers", ()),
    "Fashion-MNIST": ("Fashion-MNIST 32x32: the SDDPM against the paper, its ANN twin and a standard DDPM, "
                      "four samplers", ()),
    "T": ("SNN time steps: T = 4 against T = 8 (MNIST, same budget: 2,000 steps of batch 32)", ()),
    "threshold": ("Threshold-guided strategy (float SDDPM, every IF threshold scaled; MNIST)",
                  ("mnist-sddpm-ddim50",)),
    "neuron": ("Neuron: the official IF against a leaky LIF (tau 2), same recipe and budget (MNIST)",
               ("mnist-sddpm-ddim100", "mnist-sddpm-ddim50")),
    "chip": ("Float model against the quantized chip network on the bit-accurate simulator (MNIST)",
             ("mnist-sddpm-ddim100", f"{LONG_SDDPM[0]}-ddim100")),
    "sweep": ("Sampler sweep: our DDIM at 10 to 100 steps and eta 0, 0.5, 1, beside DDPM 1000 and the official "
              "DDIM 100 (MNIST)",
              tuple(f"{prefix}-{tag}" for prefix, _, _ in SWEEP_MODELS for tag in ("ddpm", "official-ddim100"))),
    # Separates the sampler from the clipping: our DDIM rows clip only the final image.
    **{f"clip {title}": (f"Our DDIM with and without clipping the predicted x0 at every step ({title})",
                         tuple(f"{prefix}-{kind}-ddim100" for kind, _, _ in KINDS))
       for dataset, prefix, title in DATASETS},
}


def select(patterns: list[str]) -> list[Row]:
    """Rows whose names match any of the shell patterns (all rows for none); an unmatched pattern is an error."""
    if not patterns:
        return list(ROWS)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(row.name, pattern) for row in ROWS):
            raise UsageError(f"no quality row matches {pattern!r}; `sddpm quality --list` names them")
    return [row for row in ROWS if any(fnmatch.fnmatchcase(row.name, p) for p in patterns)]


def result_path(row: Row, results: str) -> str:
    return os.path.join(results, f"{row.name}.json")


def kept_samples_path(row: Row, results: str) -> str:
    """Where a row's images are kept beside its result, so that a change of the FID protocol (more
    reference images, another statistic) scores them again without sampling again."""
    return os.path.join(results, "samples", f"{row.name}.npz")


def load_result(row: Row, results: str) -> dict | None:
    path = result_path(row, results)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_current(row: Row, result: dict | None) -> bool:
    """A result counts only under the row's protocol: one scored against another reference count (the
    1,000-image statistics before a change of REF_COUNT) is scored again, from its kept images."""
    return result is not None and result.get("ref_count") == row.ref_count


def run_rows(rows: list[Row], out: str, results: str, grid_dir: str, run) -> list[Row]:
    """Run every row without a current result through `run(argv) -> exit status`; returns the rows that failed.

    A row samples into `out`, keeps its images under `results`/samples, scores them and draws their grid;
    kept images are scored without sampling again."""
    import shutil

    import numpy as np
    import torch

    from durableio import atomic_path
    from sddpm.images import save_grid

    failed = []
    for row in tqdm([r for r in rows if not is_current(r, load_result(r, results))], desc="quality rows",
                    unit="row"):
        kept = kept_samples_path(row, results)
        started = time.time()
        if not os.path.isfile(kept):
            if not os.path.isfile(row.samples_path(out)) and run(row.sample_argv(out)) != 0:
                failed.append(row)
                continue
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            with atomic_path(kept) as tmp:
                shutil.copyfile(row.samples_path(out), tmp)
        sample_seconds = time.time() - started
        if run(row.fid_argv(results)) != 0:
            failed.append(row)
            continue
        with np.load(kept) as f:
            save_grid(torch.from_numpy(f["images"][:GRID_IMAGES]), os.path.join(grid_dir, f"{row.name}.png"))
        print(f"{row.name}: FID {load_result(row, results)['fid']:.1f} ({sample_seconds:.0f} s sampling)")
    return failed


def command_lines(row: Row, out: str, results: str) -> list[str]:
    return ["sddpm " + " ".join(row.sample_argv(out)), f"cp {row.samples_path(out)} {kept_samples_path(row, results)}",
            "sddpm " + " ".join(row.fid_argv(results))]


BEGIN_MARK = "<!-- quality tables: made by `sddpm quality --update-readme docs/quality.md`; do not edit by hand -->"
END_MARK = "<!-- end of quality tables -->"


def update_readme(path: str, tables: str) -> None:
    """Replace the text between the two marker lines of `path` by `tables` (atomically)."""
    from sddpm.checkpoint import atomic_write

    with open(path) as f:
        text = f.read()
    begin, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if begin < 0 or end < begin:
        raise UsageError(f"{path} has no quality-table block: put the lines\n{BEGIN_MARK}\n{END_MARK}\n"
                         "where the tables belong")
    with atomic_write(path, "w") as f:
        f.write(text[:begin + len(BEGIN_MARK)] + "\n" + tables + text[end:])


def markdown(results: str, grid_dir: str) -> str:
    """The quality tables from the results in `results` (rows not yet run say so), their grids linked at
    `grid_dir` (relative to the page they go into)."""
    parts = []
    for table, (title, borrowed) in TABLES.items():
        lines = [f"**{title}**", "",
                 "| model | sampler | samples | reference images | FID | bootstrap sd | "
                 "real test images, same count | flat or white | grid | command |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for row in [BY_NAME[name] for name in borrowed] + [r for r in ROWS if r.table == table]:
            result = load_result(row, results) or {}
            fid = f"{result['fid']:.1f}" if result else "not run"
            floor = f"{result['real_vs_real_fid']:.1f}" if "real_vs_real_fid" in result else ""
            # the bootstrap's spread, not its interval: resampling duplicates images, which lowers the
            # diversity, so the resampled FIDs sit above the point estimate (sddpm.fid.bootstrap_fids)
            spread = f"±{result['fid_bootstrap_std']:.1f}" if "fid_bootstrap_std" in result else ""
            failed = str(result["flat_or_washed_out"]) if "flat_or_washed_out" in result else ""
            # the grid inline (GitHub renders HTML in table cells), linked to its full-size file
            image = f"{grid_dir}/{row.name}.png"
            grid = (f'<a href="{image}"><img src="{image}" width="{GRID_WIDTH_PX}" alt="{row.name}"></a>'
                    if result else "")
            # the count the result was scored against, which lags the row's protocol until it is scored again
            ref_count = result.get("ref_count", row.ref_count)
            lines.append(f"| {row.model} | {row.sampler} | {row.num_images} | {ref_count:,} | {fid} | {spread} | "
                         f"{floor} | {failed} | {grid} | `sddpm quality {row.name}` |")
        for paper in (p for p in PAPER if p.table == table):
            lines.append(f"| {paper.model} | {paper.sampler} | {PAPER_SAMPLES:,} | all {PAPER_TRAIN[table]:,} | "
                         f"{paper.fid} | | | | | |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def sweep_results(results: str) -> dict[str, dict[tuple[int, float], dict]]:
    """Per swept model prefix, the result of each (steps, eta) row that has one."""
    return {prefix: {(steps, eta): result for eta in SWEEP_ETAS for steps in SWEEP_STEPS
                     if (result := load_result(BY_NAME[sweep_name(prefix, steps, eta)], results))}
            for prefix, _, _ in SWEEP_MODELS}


def fastest_good_sampler(by_sampler: dict[tuple[int, float], dict], spreads: float = 2.0) -> tuple[int, float]:
    """The (steps, eta) with the fewest network calls (the cost of a DDIM image is its steps: one call each)
    whose FID is within `spreads` bootstrap sds of the best FID of the sweep; among equal steps, the lower FID."""
    best = min(by_sampler.values(), key=lambda r: r["fid"])
    bound = best["fid"] + spreads * best["fid_bootstrap_std"]
    good = [(steps, r["fid"], eta) for (steps, eta), r in by_sampler.items() if r["fid"] <= bound]
    steps, _, eta = min(good)
    return steps, eta


def plot_sweep(results: str, png_path: str) -> str:
    """FID against DDIM steps, one line per eta with its bootstrap sd, one panel per swept model; each model's
    DDPM 1000 row as a dashed line and the real-image floor at the sweep's sample count as a grey one."""
    from sddpm.plots import pyplot, save_figure

    plt = pyplot()
    swept = sweep_results(results)
    fig, axes = plt.subplots(1, len(SWEEP_MODELS), figsize=(4.2 * len(SWEEP_MODELS), 3.6), dpi=110, sharey=True)
    shown = []  # every FID drawn, for the shared y range
    for ax, (prefix, _, model) in zip(axes, SWEEP_MODELS):
        for eta, color in zip(SWEEP_ETAS, ("tab:red", "tab:orange", "tab:blue")):
            points = sorted((steps, r) for (steps, e), r in swept[prefix].items() if e == eta)
            shown += [r["fid"] for _, r in points]
            if points:
                ax.errorbar([s for s, _ in points], [r["fid"] for _, r in points],
                            yerr=[r.get("fid_bootstrap_std", 0.0) for _, r in points], color=color, marker="o",
                            markersize=4, capsize=3, label=f"DDIM, eta {eta:g}")
        ddpm = load_result(BY_NAME[f"{prefix}-ddpm"], results)
        if ddpm:
            ax.axhline(ddpm["fid"], color="black", linestyle="--", linewidth=1, label="DDPM 1000")
            shown.append(ddpm["fid"])
        floor = next((r["real_vs_real_fid"] for r in swept[prefix].values() if "real_vs_real_fid" in r), None)
        if floor:
            shown.append(floor)
            ax.axhline(floor, color="grey", linestyle=":", linewidth=1.5, label="real images (floor)")
        ax.set(xscale="log", yscale="log", xlabel="DDIM steps (network calls per image)", title=model)
        ax.set_xticks(SWEEP_STEPS, [str(s) for s in SWEEP_STEPS])
        ax.grid(alpha=0.3, which="both")
    if shown:
        low, high = 0.8 * min(shown), 1.25 * max(shown)
        axes[0].set_ylim(low, high)
        ticks = [t for t in (10, 20, 30, 50, 100, 200, 300, 500) if low <= t <= high]
        axes[0].set_yticks(ticks, [str(t) for t in ticks])
        axes[0].minorticks_off()
    axes[0].set_ylabel(f"FID ({SWEEP_SAMPLES} samples, {REF_COUNT:,} references)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, png_path)
