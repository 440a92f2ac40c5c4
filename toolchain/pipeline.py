"""The steps the `sddpm` commands are made of: compile a checkpoint, run a float DDIM chain, sample, verify
and report, export and check a file. Each takes explicit arguments (never the parsed command line); the
commands in `toolchain.cli` parse, call these and print."""
from __future__ import annotations

import os
from dataclasses import dataclass

from export.compiler import CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES
from toolchain.errors import UsageError
from toolchain.report import format_onnx_comparison


@dataclass(frozen=True)
class Calibration:
    """The noisy training images a checkpoint is compiled (and its files checked) with."""
    dataset: str | None = None  # None: the checkpoint's own training dataset
    data_root: str | None = None
    batches: int = CALIBRATION_BATCHES
    batch_size: int = CALIBRATION_BATCH_SIZE

    def dataset_of(self, loaded) -> str:
        if self.dataset:
            return self.dataset
        if loaded.train_config is None:
            raise UsageError(f"{loaded.path} does not say which dataset it was trained on: give --dataset")
        return loaded.train_config.dataset


def compile_chip(loaded, path: str, threshold_factor: float, calibration: Calibration):
    """Compile the loaded model, calibrated on its dataset, and write the chip file; returns the network."""
    from export.compiler import calibration_batches, compile_model
    from export.nir_chip import write_chip_nir
    from sddpm.data import load_images
    from sddpm.schedule import NoiseSchedule

    images = load_images(calibration.dataset_of(loaded), "train", calibration.data_root)
    schedule = NoiseSchedule.linear(loaded.diffusion_config)
    batches = calibration_batches(images, schedule, calibration.batches, calibration.batch_size)
    net = compile_model(loaded.model, batches, threshold_factor)
    write_chip_nir(path, net)
    return net


def float_chain(loaded, threshold_factor: float, batch: int, seed: int, ddim_steps: int, steps: int):
    """The float model at `threshold_factor`, and (x_t, t) at `steps` denoising steps of its DDIM chain
    of `ddim_steps` from the noise of `seed` (`batch` images)."""
    import torch

    from sddpm.generate import model_denoiser
    from sddpm.schedule import NoiseSchedule
    from toolchain.verify import chain_states

    cfg = loaded.model_config
    model = model_denoiser(loaded.model.eval(), threshold_factor)
    x_T = torch.randn(batch, cfg.img_ch, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed))
    return model, chain_states(model, NoiseSchedule.linear(loaded.diffusion_config), x_T, ddim_steps, steps)


def sample_images(loaded, count: int, sampler, *, batch_size: int, seed: int, backend: str = "float",
                  threshold_factor: float = 1.0, calibration: Calibration = Calibration(),
                  sim_mode: str = "zero_delay", sim_device="cpu", out_dir: str = ".", profile: str = "cpu"):
    """`count` images of the loaded model with `sampler` (a `SamplerConfig`) on `backend` (float: PyTorch;
    sim, lava: the model compiled to out_dir/network.nir and run there, the simulator's chip part on
    `sim_device`), and the distributed run's info."""
    from sddpm.generate import generate_images, model_denoiser
    from sddpm.training import init_distributed

    info = init_distributed()
    cfg = loaded.model_config

    def run(denoiser, device):
        return generate_images(denoiser, (cfg.img_ch, cfg.img_size, cfg.img_size), loaded.diffusion_config, count,
                        sampler, batch_size=batch_size, seed=seed, progress=info.is_main, device=device), info

    if backend in ("sim", "lava"):
        chip_path = os.path.join(out_dir, "network.nir")
        compile_chip(loaded, chip_path, threshold_factor, calibration)
        if backend == "lava":  # one Lava graph for every denoising step of every image; stopped on any error
            from deploy.chain_lava import ChainGraph
            from export.nir_chip import read_chip_nir

            with ChainGraph(read_chip_nir(chip_path), profile=profile) as graph:  # the network as exported
                return run(graph.denoiser(), "cpu")
        from simulators.network import ChipSimulator

        return run(ChipSimulator.from_file(chip_path, sim_device).denoiser(sim_mode), "cpu")
    return run(model_denoiser(loaded.model.to(info.device), threshold_factor), info.device)


def energy_summary(model, net, runs, states) -> dict:
    """`export.energy.summarize` of the chip's `runs` and of the float `model` on the same (x_t, t) `states`, with
    the Loihi 2 estimate for the network's placement and NeuroBench's metrics (or why they are missing)."""
    from export.energy import SAMPLERS, ann_operations, summarize
    from export.float_ops import float_ops
    from export.loihi2 import Span
    from export.loihi2 import estimate as loihi2_estimate
    from export.placement import place
    from export.resources import estimate

    summary = summarize(runs, ann_operations(model.cfg), float_ops(model, states))
    resources = estimate(net)
    shared, dense = (place(resources, shared) for shared in (True, False))  # with and without weight sharing
    summary["loihi2"] = loihi2_estimate(net.steps_per_denoising_step,
                                        Span(*(sum(b.cores for b in p.blocks) for p in (shared, dense))),
                                        Span(shared.chips, dense.chips), SAMPLERS)
    try:
        from export.neurobench_metrics import neurobench_metrics
    except ModuleNotFoundError as e:  # neurobench is a test and quality dependency (requirements/interop.txt)
        summary["neurobench"] = {"error": f"not installed ({e.name}): pip install --no-deps neurobench==2.3.0"}
    else:
        summary["neurobench"] = neurobench_metrics(model, states)
    return summary


def verify_and_report(loaded, net, chip_path: str, out_dir: str, *, batch: int, seed: int, ddim_steps: int,
                      steps: int, title: str):
    """The ladder on `steps` denoising steps of a seeded DDIM chain, the energy of those same simulator runs,
    the resource estimate, and the report in out_dir; returns (ladder, energy summary, report path)."""
    from export.energy import count_forward
    from export.placement import placement_summary
    from export.resources import estimate
    from simulators.network import ChipSimulator
    from toolchain.report import write_report
    from toolchain.verify import run_ladder

    model, states = float_chain(loaded, net.threshold_factor, batch, seed, ddim_steps, steps)
    runs = []
    ladder = run_ladder(model, net, ChipSimulator.from_file(chip_path), states, "delayed",
                        on_run=lambda out: runs.append(count_forward(net, out.spikes)))
    summary = energy_summary(model, net, runs, states)
    summary.update(checkpoint=loaded.path, chip_file=chip_path, ddim_chain=ddim_steps, images=batch,
                   denoising_steps=ladder.diffusion_steps, threshold_factor=net.threshold_factor)
    resources = estimate(net)
    placement = placement_summary(net, resources, {p["name"]: p["spikes"] for p in summary["populations"]})
    return ladder, summary, write_report(out_dir, summary, ladder, resources, placement, title)


@dataclass(frozen=True)
class FileCheck:
    """How `sddpm export` checks a file it wrote: on `images` noisy training images of the calibration set."""
    calibration: Calibration = Calibration()
    images: int = 8
    threshold_factor: float = 1.0  # of the chip network (format nir)


def check_images(loaded, check: FileCheck, seed: int):
    """(dataset name, (x_t, t)): check.images noisy training images, t spread over the diffusion steps."""
    from export.compiler import calibration_batches
    from sddpm.data import load_images
    from sddpm.schedule import NoiseSchedule

    dataset = check.calibration.dataset_of(loaded)
    ((x, t),) = calibration_batches(load_images(dataset, "train", check.calibration.data_root),
                                    NoiseSchedule.linear(loaded.diffusion_config), 1, check.images, seed=seed)
    return dataset, (x, t)


@dataclass(frozen=True)
class ExportReport:
    """A file `sddpm export` wrote and how its check went: `facts` for --json, `lines` for people."""
    format: str
    file: str
    ok: bool
    facts: dict
    lines: tuple[str, ...]

    def to_json(self) -> dict:
        return {"format": self.format, "file": self.file, "ok": self.ok, "bytes": os.path.getsize(self.file),
                **self.facts}


def export_onnx_file(loaded, path: str, check: FileCheck) -> ExportReport:
    import dataclasses

    from export.onnx_export import ONNX_ATOL, OPSET, compare_onnx, export_onnx

    export_onnx(loaded.model, path)
    cfg = loaded.model_config
    image = f"[batch, {cfg.img_ch}, {cfg.img_size}, {cfg.img_size}]"
    dataset, (x, t) = check_images(loaded, check, seed=0)
    report = compare_onnx(loaded.model, path, x, t)
    facts = {"opset": OPSET, "dataset": dataset, "images": len(x), "max_abs_diff": report.max_abs_diff,
             "same_spikes_max_abs_diff": report.same_spikes_max_abs_diff, "tolerance": ONNX_ATOL,
             "spike_flips": [dataclasses.asdict(f) | {"is_tie": f.is_tie} for f in report.flips]}
    lines = (f"{path}: ONNX opset {OPSET}, {os.path.getsize(path) / 1e6:.1f} MB; x float32 {image}, t int64 "
             f"[batch] -> eps float32 {image}",
             f"onnxruntime vs PyTorch on {len(x)} noisy {dataset} training images:",
             format_onnx_comparison(report, t))
    return ExportReport("onnx", path, report.ok, facts, lines)


def _nir_facts(path: str) -> dict:
    import nir

    graph = nir.read(path)  # NIR's own reader, type checks on
    return {"nir_version": nir.__version__, "nodes": len(graph.nodes), "edges": len(graph.edges),
            "node_types": sorted({type(node).__name__ for node in graph.nodes.values()})}


def export_chip_nir(loaded, path: str, check: FileCheck) -> ExportReport:
    import torch

    from export.reference import run_reference
    from simulators.network import ChipSimulator
    from toolchain.verify import compare_runs

    net = compile_chip(loaded, path, check.threshold_factor, check.calibration)
    facts = _nir_facts(path)
    dataset, (x, t) = check_images(loaded, check, seed=1)
    ref = run_reference(net, x, t)
    out = ChipSimulator.from_file(path).run(x, t, "delayed")
    mismatch = compare_runs(ref, out, t=int(t[0]))
    facts.update(dataset=dataset, images=len(x), identical=mismatch is None,
                 first_mismatch=None if mismatch is None else mismatch.to_json(),
                 eps_identical=bool(torch.equal(out.eps, ref.eps)))
    what = f"simulator reading {path} vs the in-memory quantized reference, {len(x)} noisy {dataset} images"
    found = "identical spikes, output currents and eps" if mismatch is None else f"first difference at {mismatch}"
    lines = (f"{path}: NIR {facts['nir_version']} graph, {facts['nodes']} nodes ({', '.join(facts['node_types'])}), "
             f"{facts['edges']} edges, {os.path.getsize(path) / 1e6:.1f} MB; passes nir.read's type checks",
             f"{what}: {found}")
    return ExportReport("nir", path, facts["identical"] and facts["eps_identical"], facts, lines)


def export_float_nir(loaded, path: str, check: FileCheck) -> ExportReport:
    import copy

    from export.graph import extract_graph, run_float
    from export.nir_float import FILE_ROUND_TRIP_ATOL, read_float_nir, write_float_nir

    graph = extract_graph(copy.deepcopy(loaded.model).double())
    write_float_nir(path, graph)
    facts = _nir_facts(path)
    dataset, (x, t) = check_images(loaded, check, seed=1)
    written, read = run_float(graph, x.double(), t), run_float(read_float_nir(path), x.double(), t)
    flips = [name for name, s in written.spikes.items() if not bool((s == read.spikes[name]).all())]
    diff = float((written.eps - read.eps).abs().max())
    facts.update(dataset=dataset, images=len(x), spikes_differ_in=flips, max_abs_diff=diff,
                 tolerance=FILE_ROUND_TRIP_ATOL)
    lines = (f"{path}: NIR {facts['nir_version']} graph ({', '.join(facts['node_types'])}), "
             f"{os.path.getsize(path) / 1e6:.1f} MB; passes nir.read's type checks",
             f"the graph read back vs the graph written (float64, {len(x)} noisy {dataset} images): spikes "
             f"{'identical' if not flips else 'differ in ' + ', '.join(flips)}, max |eps diff| {diff:.1e} "
             f"(tolerance {FILE_ROUND_TRIP_ATOL:.0e}: weights are float32 on file)")
    return ExportReport("nir-float", path, not flips and diff <= FILE_ROUND_TRIP_ATOL, facts, lines)


# `sddpm export --format NAME`: NAME -> function(loaded checkpoint, output path, FileCheck) -> ExportReport
EXPORTERS = {"onnx": export_onnx_file, "nir": export_chip_nir, "nir-float": export_float_nir}
