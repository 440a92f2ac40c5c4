"""The `sddpm` command: train, sample, fid, eval-eps, quality, release, compile, verify, export, import-nir, deploy,
energy, report, run, demo. Each command parses, calls `toolchain.pipeline`, and prints (`toolchain.report`)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from sddpm.config import DiffusionConfig, TrainConfig
from toolchain.errors import UsageError
from toolchain.parser import build_parser, calibration_of, model_config_of, sampler_config_of
from toolchain.paths import SHIPPED_CHECKPOINT
from toolchain.pipeline import (EXPORTERS, Calibration, FileCheck, compile_chip, export_float_nir, export_onnx_file,
                                float_chain, sample_images, verify_and_report)
from toolchain.report import format_deploy, format_energy, format_imported, format_network, format_whole_chain


def cmd_train(args) -> None:
    from sddpm.training import train

    model_cfg = model_config_of(args)
    train_cfg = TrainConfig(dataset=args.dataset, data_root=args.data_root, batch_size=args.batch_size, lr=args.lr,
                            warmup=args.warmup, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
                            total_steps=args.steps, seed=args.seed, ckpt_every=args.ckpt_every,
                            sample_every=args.sample_every, hflip=args.hflip)
    path = train(args.run_dir, model_cfg, train_cfg, DiffusionConfig())
    print(f"checkpoint: {path}")


def _sample(args, count: int):
    """`sddpm sample` and `sddpm fid`: images of --checkpoint with the sampler and backend options."""
    from sddpm.checkpoint import load_model

    # `sddpm fid` samples the float model; `sddpm sample` also the simulator or Lava
    backend = {} if args.command == "fid" else dict(backend=args.backend, calibration=calibration_of(args),
                                                     sim_mode=args.sim_mode, sim_device=args.device, out_dir=args.out,
                                                     profile=profile_of(args))
    return sample_images(load_model(args.checkpoint, use_ema=not args.no_ema), count, sampler_config_of(args),
                         batch_size=args.batch_size, seed=args.seed, threshold_factor=args.threshold_factor, **backend)


def cmd_sample(args) -> None:
    import numpy as np

    from durableio import atomic_write
    from sddpm.images import save_grid

    started = time.time()
    images, info = _sample(args, args.num_images)
    if info.is_main:
        grid = save_grid(images[:256], os.path.join(args.out, "grid.png"))
        with atomic_write(os.path.join(args.out, "samples.npz")) as f:
            np.savez_compressed(f, images=images.numpy())
        print(f"{len(images)} images in {time.time() - started:.1f} s -> {grid}, "
              f"{os.path.join(args.out, 'samples.npz')}")


def _load_images(path: str):
    """The uint8 [N, C, H, W] array 'images' of an .npz (as `sddpm sample` writes it), or a UsageError that says
    what the file is instead."""
    import zipfile

    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UsageError(f"{path}: not a readable .npz of images ({type(err).__name__}: {err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"{path}: a single .npy array; give an .npz with an 'images' array (`sddpm sample` "
                         f"writes one)")
    with data as f:
        if "images" not in f:
            raise UsageError(f"{path} has no 'images' array (keys: {list(f.keys())})")
        try:
            images = f["images"]
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise UsageError(f"{path}: its 'images' array cannot be read ({err})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or not len(images):
        raise UsageError(f"{path}: 'images' must be uint8 [N >= 1, 1 or 3, H, W], is {images.dtype} "
                         f"{list(images.shape)}")
    return images


def cmd_fid(args) -> None:
    import numpy as np
    import torch

    from sddpm.fid import fid_report, real_vs_real_fid, reference_stats_seconds
    from sddpm.images import failed_images

    if args.images:
        images = torch.from_numpy(_load_images(args.images))
        is_main = True
    else:
        images, info = _sample(args, args.num_images)
        is_main = info.is_main
    report = fid_report(images, args.dataset, args.ref_count, args.cache_dir, root=args.data_root,
                        bootstrap=args.bootstrap)
    result = {"fid": report.pop("fid"), "samples": len(images), "dataset": args.dataset,
              "ref_count": args.ref_count, **report,
              "ref_stats_seconds": reference_stats_seconds(args.dataset, count=args.ref_count,
                                                           cache_dir=args.cache_dir),
              "flat_or_washed_out": int(failed_images(images).sum())}
    if args.real_baseline:
        result["real_vs_real_fid"] = real_vs_real_fid(args.dataset, len(images), args.cache_dir,
                                                      ref_count=args.ref_count, root=args.data_root)
    if is_main:
        if args.save:
            from durableio import atomic_write

            with atomic_write(args.save, "w") as f:
                json.dump(result, f, indent=1)
        print(json.dumps(result) if args.json else
              "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))


def cmd_eval_eps(args) -> None:
    from sddpm.checkpoint import load_model
    from sddpm.data import load_images, to_model_range
    from sddpm.eps_error import DEFAULT_STEPS, eps_error_by_step, format_eps_errors
    from sddpm.schedule import NoiseSchedule
    from toolchain.pipeline import Calibration

    loaded = load_model(args.checkpoint, use_ema=not args.no_ema)
    dataset = Calibration(args.dataset, args.data_root).dataset_of(loaded)
    x0 = to_model_range(load_images(dataset, "test", args.data_root)[:args.count])
    rows = eps_error_by_step(loaded.model, x0, NoiseSchedule.linear(loaded.diffusion_config),
                             args.t or DEFAULT_STEPS, seed=args.seed)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "dataset": dataset, "images": len(x0),
                          "step": loaded.step, "rows": [r.to_dict() for r in rows]}))
    else:
        print(f"{args.checkpoint} (step {loaded.step}) on {len(x0)} {dataset} test images:\n"
              + format_eps_errors(rows))


def cmd_quality(args) -> int:
    from toolchain import quality

    rows = quality.select(args.names)
    if args.list:
        for row in rows:
            result = quality.load_result(row, args.results)
            print(f"{row.name:36s} {'FID %.1f' % result['fid'] if result else 'not run'}")
    elif args.commands:
        for row in rows:
            print(f"# {row.name}\n" + "\n".join(quality.command_lines(row, args.out, args.results)))
    elif args.markdown:
        print(quality.markdown(args.results, args.grid_dir), end="")
    elif args.update_readme:
        page_dir = os.path.dirname(os.path.abspath(args.update_readme))  # the grids' links, relative to the page
        quality.update_readme(args.update_readme,
                              quality.markdown(args.results, os.path.relpath(args.grid_dir, page_dir)))
        quality.plot_sweep(args.results, os.path.join(args.grid_dir, "sweep.png"))
    else:
        failed = quality.run_rows(rows, args.out, args.results, args.grid_dir, main)
        if failed:
            print(f"sddpm quality: failed rows: {', '.join(row.name for row in failed)}", file=sys.stderr)
            return 1
    return 0


def _chip_file(path: str | None):
    """The chip network of `path`, read once (None without a file): one with spike inputs (`sddpm import-nir`)
    runs on its own, a diffusion network with its checkpoint."""
    if not path:
        return None
    from export.nir_chip import read_chip_nir

    return read_chip_nir(path)


def _imported(net) -> bool:
    return net is not None and not net.is_diffusion


def _inputs_of(args, net, batch: int = 1):
    from toolchain.spiking import spike_inputs

    return spike_inputs(net, args.input, args.input_steps, seed=args.input_seed, batch=batch)


def _input_label(args) -> str:
    from toolchain.spiking import DEFAULT_RATE

    return args.input or f"random, rate {DEFAULT_RATE}, seed {args.input_seed}"


def _print_check(args, report: dict) -> int:
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.get("float_spike_agreement", {}).items():
            print(f"float discretization vs integers, {name}: spike agreement {value:.3f}")
        for name, value in report.get("float_readout_error", {}).items():
            print(f"float discretization vs integers, {name}: readout voltage relative L2 {value:.4f}")
        where = report["first_mismatch"]
        print(f"{report['compared']} on {report['nir_file']}: {report['steps']} steps x {report['samples']} samples, "
              f"{sum(report['spikes'].values())} spikes: " +
              ("identical" if where is None else f"DIFFER first at population {where['population']}, step "
                                                 f"{where['step']}, index {tuple(where['index'])}: "
                                                 f"{where['expected']} vs {where['actual']}"))
    return 0 if report["identical"] else 1


def check_imported(args, net, path: str, backend: str, batch: int = 1) -> int:
    """`verify --nir` (reference vs simulator) or `deploy --nir` (Lava vs simulator) of an imported network."""
    from export.reference import run_reference_spikes
    from toolchain.spiking import compare, run_network

    inputs = _inputs_of(args, net, batch)
    simulated = run_network(net, path, inputs, "sim")
    if backend == "reference":
        report = compare(net, run_reference_spikes(net, inputs), simulated, ("reference", "simulator"))
        if args.source:
            from toolchain.spiking import float_agreement

            report["float_spike_agreement"], report["float_readout_error"] = \
                float_agreement(net, args.source, inputs, simulated)
    else:
        from deploy.chip_lava import run_config

        report = compare(net, simulated, run_network(net, path, inputs, "lava", run_config(args.run_config)),
                         ("simulator", "lava"))
    steps, samples = next(iter(inputs.values())).shape[:2]
    return _print_check(args, {**report, "nir_file": path, "steps": int(steps), "samples": int(samples),
                               "input": _input_label(args)})


def cmd_run(args) -> int:
    import numpy as np

    from export.nir_chip import read_chip_nir
    from durableio import atomic_write

    net = read_chip_nir(args.file)
    if net.is_diffusion:
        arrays = _run_diffusion(args, net)
    else:
        from toolchain.spiking import run_network

        inputs = _inputs_of(args, net, args.batch_size)
        run_cfg = None
        if args.backend == "lava":
            from deploy.chip_lava import run_config

            run_cfg = run_config("sim")
        spikes = run_network(net, args.file, inputs, args.backend, run_cfg)
        arrays = {name: s.numpy() for name, s in spikes.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_write(args.out) as f:
        np.savez_compressed(f, **arrays)
    counts = {name: int(a.sum()) for name, a in arrays.items() if a.dtype == bool}
    readouts = [name for name, a in arrays.items() if a.dtype != bool]  # membrane readouts: v per step, v-units
    if args.json:
        print(json.dumps({"file": args.file, "backend": args.backend, "out": args.out, "spikes": counts,
                          "readouts": readouts}))
    else:
        print("\n".join([f"{name:<32} {n:>10} spikes" for name, n in counts.items()] +
                        [f"{name:<32} voltage readout (v-units per step)" for name in readouts])
              + f"\noutputs -> {args.out}")
    return 0


def _run_diffusion(args, net) -> dict:
    """One denoising step of seeded noise at the last diffusion step: eps, readout currents and spikes."""
    import torch

    from simulators.network import ChipSimulator

    cfg = net.model_config
    x = torch.randn(args.batch_size, cfg["img_ch"], cfg["img_size"], cfg["img_size"],
                    generator=torch.Generator().manual_seed(args.input_seed))
    t = torch.full((args.batch_size,), net.diffusion_steps - 1)
    if args.backend == "sim":
        runs = [ChipSimulator.from_file(args.file).run(x, t, "delayed")]
    else:
        from deploy.chip_lava import run_config, run_denoising_step

        runs = [run_denoising_step(net, x[i:i + 1], int(t[i]), run_config("sim")) for i in range(args.batch_size)]
    spikes = {name: torch.cat([r.spikes[name].bool() for r in runs], dim=1).numpy() for name in runs[0].spikes}
    return {"eps": torch.cat([r.eps for r in runs]).numpy(), "readout": torch.cat([r.readout for r in runs], 1).numpy(),
            **spikes}


def cmd_deploy(args) -> int:
    from deploy.chip_lava import run_config
    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator
    from toolchain.verify import steps_on_lava

    net = _chip_file(args.nir)
    if _imported(net):
        return check_imported(args, net, args.nir, "lava")
    loaded = load_model(args.checkpoint)
    path = args.nir or args.chip_out
    if net is None:
        net = compile_chip(loaded, path, args.threshold_factor, calibration_of(args))
    sim = ChipSimulator.from_file(path)
    if args.whole_chain:
        return deploy_whole_chain(args, loaded, net, sim, path)
    _, states = float_chain(loaded, args.threshold_factor, 1, args.seed, args.ddim_steps, args.steps)
    report = steps_on_lava(net, sim, states, run_config(args.run_config), profile_of(args))
    report.update(nir_file=path, run_config=args.run_config)
    print(json.dumps(report) if args.json else format_deploy(report))
    return 0 if report["identical"] and report["counts_identical"] else 1


def profile_of(args) -> str:
    """--profile (default cpu), which Loihi 2 hardware (--run-config loihi2-hw) can only run as loihi2."""
    if getattr(args, "run_config", "sim") == "loihi2-hw":
        if args.profile == "cpu":
            raise UsageError("--run-config loihi2-hw runs the loihi2 profile only")
        return "loihi2"
    if args.profile and getattr(args, "backend", "lava") != "lava":
        raise UsageError("--profile chooses the process types of a Lava graph: it needs --backend lava")
    return args.profile or "cpu"


def deploy_whole_chain(args, loaded, net, sim, path: str) -> int:
    """`sddpm deploy --whole-chain`: a DDIM chain of --steps steps of one image on one Lava graph."""
    import torch

    from deploy.chip_lava import run_config
    from sddpm.generate import model_denoiser
    from sddpm.schedule import NoiseSchedule
    from toolchain.verify import whole_chain_on_lava

    cfg = loaded.model_config
    x_T = torch.randn(1, cfg.img_ch, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(args.seed))
    report = whole_chain_on_lava(net, sim, model_denoiser(loaded.model.eval(), args.threshold_factor),
                                 NoiseSchedule.linear(loaded.diffusion_config), x_T, args.steps,
                                 run_config(args.run_config), profile_of(args), args.eta, args.seed)
    report.pop("images")
    report.update(nir_file=path, run_config=args.run_config, seed=args.seed, eta=args.eta)
    print(json.dumps(report) if args.json else format_whole_chain(report))
    return 0 if report["identical"] and report["image_identical"] else 1


def cmd_import_nir(args) -> int:
    from export.nir_foreign import Discretization, write_foreign
    from export.nir_foreign_read import read_foreign

    graph = read_foreign(args.graph)
    compiled = write_foreign(args.out, graph, Discretization(dt=args.dt, decay=args.decay, norse_dt=args.norse_dt),
                             args.allow_degenerate)
    print(format_imported(compiled))
    print(f"compiled (dt = {args.dt:g} s) -> {args.out}")
    return 0


def cmd_compile(args) -> None:
    from sddpm.checkpoint import load_model

    loaded = load_model(args.checkpoint)
    net = compile_chip(loaded, args.out, args.threshold_factor, calibration_of(args))
    print(format_network(net))
    print(f"chip network -> {args.out}")


def cmd_verify(args) -> int:
    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator
    from toolchain.verify import format_ladder, run_ladder

    net = _chip_file(args.nir)
    if _imported(net):
        return check_imported(args, net, args.nir, "reference", args.batch_size)
    loaded = load_model(args.checkpoint)
    path = args.nir or args.chip_out
    net = check_compiled_from(net, loaded, path, args.threshold_factor) if net is not None else \
        compile_chip(loaded, path, args.threshold_factor, calibration_of(args))
    sim = ChipSimulator.from_file(path, args.device)
    model, states = float_chain(loaded, args.threshold_factor, args.batch_size, args.seed, args.ddim_steps, args.steps)
    report = run_ladder(model, net, sim, states, args.sim_mode, progress=not args.json)
    if args.json:
        print(json.dumps({**report.to_json(), "chip_file": path, "threshold_factor": args.threshold_factor,
                          "batch_size": args.batch_size, "device": str(args.device)}))
    else:
        print(format_ladder(report))
    return 0 if report.identical else 1


def check_compiled_from(net, loaded, path: str, threshold_factor: float):
    """The chip network of the file `path` compiled before, refused unless it was compiled from a model of
    `loaded`'s configuration at `threshold_factor` (the weights themselves are what the ladder's first rung
    measures)."""
    from sddpm.config import ModelConfig

    if ModelConfig.from_dict(net.model_config) != loaded.model_config:
        raise UsageError(f"{path} was compiled from another model configuration than {loaded.path}: "
                         f"{net.model_config} against {loaded.model_config.to_dict()}")
    if net.threshold_factor != threshold_factor:
        raise UsageError(f"{path} was compiled with threshold factor {net.threshold_factor}, not {threshold_factor}")
    return net


def energy_of_imported(args, net, path: str) -> dict:
    from toolchain.spiking import network_energy, run_network

    inputs = _inputs_of(args, net, args.batch_size)
    report = network_energy(net, inputs, run_network(net, path, inputs, "sim"))
    return {**report, "nir_file": path, "input": _input_label(args)}


def cmd_energy(args) -> None:
    from export.energy import count_forward
    from sddpm.checkpoint import load_model
    from simulators.network import ChipSimulator
    from toolchain.pipeline import energy_summary

    net = _chip_file(args.nir)
    if _imported(net):
        from toolchain.spiking import format_energy_table

        report = energy_of_imported(args, net, args.nir)
        print(json.dumps(report) if args.json else format_energy_table(report))
        return
    if args.nir:
        raise UsageError(f"{args.nir} is a diffusion network: `sddpm energy` compiles and counts --checkpoint")
    loaded = load_model(args.checkpoint)
    net = compile_chip(loaded, args.chip_out, args.threshold_factor, calibration_of(args))
    sim = ChipSimulator.from_file(args.chip_out)
    model, states = float_chain(loaded, args.threshold_factor, args.batch_size, args.seed, args.ddim_steps, args.steps)
    runs = [count_forward(net, sim.run(x, t).spikes) for x, t in states]
    report = energy_summary(model, net, runs, states)
    report.update(checkpoint=args.checkpoint, chip_file=args.chip_out, ddim_chain=args.ddim_steps,
                  images=args.batch_size, denoising_steps=[int(t[0]) for _, t in states],
                  threshold_factor=args.threshold_factor)
    print(json.dumps(report) if args.json else format_energy(report))


def cmd_report(args) -> int:
    from sddpm.checkpoint import load_model
    from toolchain.verify import format_ladder

    net = _chip_file(args.nir)
    if _imported(net):
        return report_imported(args, net)
    if args.nir:
        raise UsageError(f"{args.nir} is a diffusion network: `sddpm report` compiles and reports --checkpoint")

    loaded = load_model(args.checkpoint)
    chip_path = os.path.join(args.out, "network.nir")
    net = compile_chip(loaded, chip_path, args.threshold_factor, calibration_of(args))
    ladder, summary, path = verify_and_report(loaded, net, chip_path, args.out, batch=args.batch_size, seed=args.seed,
                                              ddim_steps=args.ddim_steps, steps=args.steps,
                                              title=f"SDDPM on Loihi 2: {os.path.basename(args.checkpoint)}")
    print(format_ladder(ladder) + "\n\n" + format_energy(summary) + f"\n\nreport -> {path}")
    return 0 if ladder.identical else 1


def report_imported(args, net) -> int:
    """`sddpm report --nir` of an imported network: OUT/report.md and OUT/report.json."""
    from export.placement import placement_summary
    from export.reference import run_reference_spikes
    from export.resources import estimate
    from durableio import atomic_write
    from toolchain.report import format_imported
    from toolchain.spiking import compare, format_energy_table, network_energy, run_network

    inputs = _inputs_of(args, net, args.batch_size)
    simulated = run_network(net, args.nir, inputs, "sim")
    check = compare(net, run_reference_spikes(net, inputs), simulated, ("reference", "simulator"))
    energy = network_energy(net, inputs, simulated)
    resources = estimate(net)
    placement = placement_summary(net, resources, {name: row["spikes"] for name, row in energy["per_node"].items()})
    os.makedirs(args.out, exist_ok=True)
    text = (f"# {os.path.basename(args.nir)} on Loihi 2 integers\n\nImported by `sddpm import-nir` "
            f"({json.dumps(net.source.get('discretization', {}))}).\n\n```\n{format_imported(net)}\n```\n\n"
            f"Reference vs simulator: {'identical' if check['identical'] else check['first_mismatch']}\n\n"
            f"```\n{format_energy_table(energy)}\n```\n\nLoihi 2 resources (estimate): {resources.neurons} neurons, "
            f"{resources.synapses(shared=False)} synapses, {resources.cores(shared=False)} cores, "
            f"{resources.chips(shared=False)} chip(s); placed greedily (`export/placement.py`) on "
            f"{placement['dense']['chips']} chip(s) ({placement['dense']['system']}), "
            f"{placement['dense']['crossing_spikes_per_step']:.1f} spike messages per sample crossing chips\n")
    with atomic_write(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"nir_file": args.nir, "check": check, "energy": energy, "resources": resources.to_json(),
                   "placement": placement}, f, indent=1)
    print(text + f"\nreport -> {os.path.join(args.out, 'report.md')}")
    return 0 if check["identical"] else 1


def cmd_export(args) -> int:
    from sddpm.checkpoint import load_model

    loaded = load_model(args.checkpoint, use_ema=not args.no_ema)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0]
    check = FileCheck(calibration_of(args), args.check_images, args.threshold_factor)
    report = EXPORTERS[args.format](loaded, args.out or os.path.join("out", "export", f"{name}.{args.format}"), check)
    print(json.dumps(report.to_json()) if args.json else "\n".join(report.lines))
    return 0 if report.ok else 1


# `sddpm demo`: the whole path on the shipped model in minutes on a CPU. Calibration on 2 batches of 16 noisy
# images; the ladder on 3 denoising steps of a 100-step DDIM chain of 2 images; each file checked on 8 images.
DEMO_CALIBRATION = Calibration(batches=2, batch_size=16)
DEMO_LADDER = dict(batch=2, seed=0, ddim_steps=100, steps=3)
DEMO_CHECK_IMAGES = 8


def cmd_demo(args) -> int:
    from deploy.chip_lava import run_config
    from sddpm.checkpoint import load_model
    from sddpm.generate import DEFAULT_SAMPLER, generate_images, model_denoiser
    from sddpm.images import save_grid
    from simulators.network import ChipSimulator
    from toolchain.verify import format_ladder, steps_on_lava

    say = (lambda text: None) if args.json else print  # with --json, one object at the end instead
    loaded = load_model(SHIPPED_CHECKPOINT)
    cfg = loaded.model_config
    say(f"shipped model: {cfg.kind} U-Net ch={cfg.ch} ch_mult={list(cfg.ch_mult)} T={cfg.snn_steps} "
        f"trained {loaded.step} steps on {loaded.train_config.dataset if loaded.train_config else '?'}")
    started = time.time()
    model = model_denoiser(loaded.model)
    # the default sampler of `sddpm sample`, chosen by the sampler sweep (sddpm.config.DEFAULT_DDIM_STEPS)
    images = generate_images(model, (cfg.img_ch, cfg.img_size, cfg.img_size), loaded.diffusion_config, args.num_images,
                             DEFAULT_SAMPLER)
    grid = save_grid(images, os.path.join(args.out, "grid.png"))
    say(f"sampled {args.num_images} images ({DEFAULT_SAMPLER.label}) in {time.time() - started:.1f} s -> {grid}")

    started = time.time()
    chip_path = os.path.join(args.out, "network.nir")
    net = compile_chip(loaded, chip_path, 1.0, DEMO_CALIBRATION)
    say(f"\ncompiled for Loihi 2 in {time.time() - started:.1f} s -> {chip_path}\n" + format_network(net))
    ladder, summary, report = verify_and_report(loaded, net, chip_path, args.out, **DEMO_LADDER,
                                                title="SDDPM on Loihi 2: the shipped MNIST model")
    say("\n" + format_ladder(ladder) + "\n\n" + format_energy(summary) + f"\n\nreport -> {report}")

    say("\ninterchange files, each read back and checked against its source:")
    check = FileCheck(DEMO_CALIBRATION, DEMO_CHECK_IMAGES)
    exported = [exporter(loaded, os.path.join(args.out, name), check)
                for exporter, name in ((export_onnx_file, "denoiser.onnx"), (export_float_nir, "float.nir"))]
    say("\n".join(line for r in exported for line in r.lines))

    say("\none denoising step on Lava (CPU, fixed-point models) from the chip network's NIR file:")
    _, states = float_chain(loaded, 1.0, 1, DEMO_LADDER["seed"], DEMO_LADDER["ddim_steps"], 1)
    deployed = {**steps_on_lava(net, ChipSimulator.from_file(chip_path), states, run_config("sim")),
                "nir_file": chip_path, "run_config": "sim"}
    say(format_deploy(deployed))
    if args.json:
        print(json.dumps({"checkpoint": SHIPPED_CHECKPOINT, "kind": cfg.kind, "step": loaded.step, "grid": grid,
                          "chip_file": chip_path, "ladder": ladder.to_json(), "energy": summary, "report": report,
                          "exports": [r.to_json() for r in exported], "lava": deployed}))
    return 0 if ladder.identical and all(r.ok for r in exported) and deployed["identical"] and deployed["counts_identical"] else 1


def cmd_release(args) -> None:
    from sddpm.checkpoint import release_checkpoint

    payload = release_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema)
    print(f"{args.out}: {payload['weights']} weights of step {payload['step']}, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MiB")


def cmd_install_lava(args) -> int:
    from deploy.lava_install import install

    install()
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "fid": cmd_fid, "release": cmd_release, "compile": cmd_compile,
            "verify": cmd_verify, "export": cmd_export, "import-nir": cmd_import_nir, "deploy": cmd_deploy, "energy": cmd_energy,
            "report": cmd_report, "run": cmd_run,
            "quality": cmd_quality, "demo": cmd_demo, "eval-eps": cmd_eval_eps, "install-lava": cmd_install_lava}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)  # for people at a terminal, not the source line


def main(argv: list[str] | None = None) -> int:
    import warnings

    from toolchain.errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    # under torchrun every rank runs the command; only rank 0 speaks on stdout (one JSON object, one table)
    quiet = int(os.environ.get("RANK", "0")) != 0
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(devnull if quiet else sys.stdout):
            warnings.showwarning = _one_line_warning  # the catch restores the process's display on the way out
            status = COMMANDS[args.command](args) or 0
        if "torch.distributed" in sys.modules:  # a command run under torchrun: the ranks leave together
            from sddpm.training import leave_distributed

            leave_distributed()
        return status
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"sddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if args.debug or not (e.name or "").startswith("lava"):
            raise
        print(f"sddpm {args.command}: error: this needs Lava (lava-nc 0.10.0, lava-dl 0.6.0), which is not installed "
              f"here: run `sddpm install-lava` (`make venv` installs it)", file=sys.stderr)
        return 2
