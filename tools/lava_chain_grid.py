"""Generate whole images on Lava: a DDIM chain of the shipped model for a few images, each on one persistent
Lava graph (`deploy.chain_lava`), every denoising step checked against the simulator on the same x_t, and the
simulator's and the float model's chains from the same noise beside it (issue 17, part 4).

    .venv/bin/python tools/lava_chain_grid.py --images 4 --out docs/img/lava-chain

writes OUT.png (rows: float model, simulator, Lava; one column per image) and OUT.json (per image: the
identity checks, the timings, the largest difference from the float image). A killed run resumes after its last
finished image (OUT.partial.pt, removed at the end). The sampler is `sddpm sample`'s
default (our DDIM, its steps and eta); with eta > 0 the host draws image i's step noise from seed + i, the same
draws for the three chains. About 20 min per image of a 50-step chain on this 2-core machine (19 min 40 s measured
alone): run it in the background.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from tqdm import tqdm

from deploy.chip_lava import run_config
from export.nir_chip import read_chip_nir
from durableio import atomic_write
from sddpm.checkpoint import load_model
from sddpm.config import DEFAULT_DDIM_STEPS, DEFAULT_ETA
from sddpm.generate import model_denoiser
from sddpm.images import save_grid
from sddpm.schedule import NoiseSchedule
from simulators.network import ChipSimulator
from toolchain.parser import build_parser, calibration_of
from toolchain.pipeline import compile_chip
from toolchain.verify import whole_chain_on_lava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_DDIM_STEPS,
                        help="DDIM denoising steps per image (default: %(default)s)")
    parser.add_argument("--eta", type=float, default=DEFAULT_ETA, help="DDIM eta (default: %(default)g)")
    parser.add_argument("--images", type=int, default=4, help="images, one chain each (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images' x_T (default: 0)")
    parser.add_argument("--out", default="docs/img/lava-chain", help="OUT.png and OUT.json")
    parser.add_argument("--checkpoint", help="checkpoint (default: the deploy command's, the shipped one)")
    args = parser.parse_args()

    # the deploy command's defaults (calibration, threshold factor), its checkpoint unless one is given
    deploy = build_parser().parse_args(["deploy", "--whole-chain",
                                        *(["--checkpoint", args.checkpoint] if args.checkpoint else [])])
    loaded = load_model(deploy.checkpoint)
    cfg = loaded.model_config
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "network.nir")
        compile_chip(loaded, path, deploy.threshold_factor, calibration_of(deploy))
        net, sim = read_chip_nir(path), ChipSimulator.from_file(path)
    model = model_denoiser(loaded.model.eval(), deploy.threshold_factor)
    schedule = NoiseSchedule.linear(loaded.diffusion_config)
    x_T = torch.randn(args.images, cfg.img_ch, cfg.img_size, cfg.img_size,
                      generator=torch.Generator().manual_seed(args.seed))

    # the images done so far, saved after each one, so that a killed run resumes after its last finished image
    partial = args.out + ".partial.pt"
    run = {"checkpoint": deploy.checkpoint, "steps": args.steps, "eta": args.eta, "seed": args.seed}
    done = torch.load(partial, weights_only=False) if os.path.isfile(partial) else None
    if done is None or done["run"] != run:
        done = {"run": run, "reports": [], "rows": {"float": [], "simulator": [], "lava": []}}
    reports, rows = done["reports"], done["rows"]
    for i in tqdm(range(len(reports), args.images), desc="images on Lava", initial=len(reports), total=args.images):
        started = time.perf_counter()
        report = whole_chain_on_lava(net, sim, model, schedule, x_T[i:i + 1], args.steps,
                                     run_config(deploy.run_config), eta=args.eta, seed=args.seed + i)
        for name, image in report.pop("images").items():
            rows[name].append(image)
        reports.append({**report, "seconds": time.perf_counter() - started})
        with atomic_write(partial) as f:
            torch.save(done, f)
        tqdm.write(f"image {i}: identical {report['identical']}, image_identical {report['image_identical']}, "
                   f"Lava {report['lava_seconds_per_step']:.1f} s/step")
    rows = {name: images[:args.images] for name, images in rows.items()}
    reports = reports[:args.images]
    images = torch.cat([torch.cat(rows[name]) for name in ("float", "simulator", "lava")])
    save_grid(images, args.out + ".png", nrow=args.images)
    summary = {"checkpoint": deploy.checkpoint,
               "sampler": f"ddim (ours, final image clipped), {args.steps} steps, eta {args.eta:g}",
               "seed": args.seed, "images": args.images, "rows": ["float", "simulator", "lava"],
               "all_identical": all(r["identical"] and r["image_identical"] for r in reports),
               "lava_identical_to_float": bool(torch.equal(torch.cat(rows["lava"]), torch.cat(rows["float"]))),
               "seconds": sum(r["seconds"] for r in reports), "per_image": reports}
    with atomic_write(args.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    os.remove(partial)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}))


if __name__ == "__main__":
    main()
