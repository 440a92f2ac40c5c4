"""The application layer of a chip network with spike inputs (an imported NIR graph): its inputs, and every
command's work on it (`sddpm run`, `verify --nir`, `deploy --nir`, `energy --nir`, `report --nir`).

A diffusion network has the SDDPM application layer instead (`toolchain.pipeline`); both run the one chip
network of `export.chip` on the same back ends.
"""
from __future__ import annotations

import numpy as np
import torch

from export.chip import V_PER_A, ChipNetwork
from export.energy import synapse_sops
from toolchain.errors import UsageError
from toolchain.verify import first_difference

# Without --input a network gets seeded random spikes: each input neuron fires with this probability per step.
DEFAULT_RATE = 0.3
DEFAULT_STEPS = 32


def spike_inputs(net: ChipNetwork, path: str | None = None, steps: int = DEFAULT_STEPS, rate: float = DEFAULT_RATE,
                 seed: int = 0, batch: int = 1) -> dict[str, torch.Tensor]:
    """0/1 int64 spikes [T, B, *shape] per spike input: from an .npz of arrays named as the inputs ([T, *shape] or
    [T, B, *shape]), or seeded random ones."""
    if not net.inputs:
        raise UsageError("this network takes no spike input: it is a diffusion network (use --checkpoint)")
    if path is None:
        gen = torch.Generator().manual_seed(seed)
        return {i.name: (torch.rand(steps, batch, *i.shape, generator=gen) < rate).long() for i in net.inputs}
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable .npz of spike arrays ({err})") from None
    out = {}
    for i in net.inputs:
        if i.name not in arrays:
            raise UsageError(f"{path}: no array named {i.name!r} (the network's spike inputs: "
                             f"{[j.name for j in net.inputs]}; the file holds {sorted(arrays)})")
        x = arrays[i.name]
        x = x[:, None] if x.ndim == len(i.shape) + 1 else x
        if x.ndim != len(i.shape) + 2 or tuple(x.shape[2:]) != i.shape or not np.isin(x, (0, 1)).all():
            raise UsageError(f"{path}: {i.name!r} must be 0/1 spikes [T, {', '.join(map(str, i.shape))}] or [T, B, ...], "
                             f"is {x.dtype} {list(x.shape)}")
        out[i.name] = torch.from_numpy(x.astype(np.int64))
    if len({tuple(x.shape[:2]) for x in out.values()}) != 1:
        raise UsageError(f"{path}: every input needs the same T and B")
    return out


def run_network(net: ChipNetwork, path: str, inputs: dict[str, torch.Tensor], backend: str = "sim",
                run_cfg=None) -> dict[str, torch.Tensor]:
    """Every population's spikes, bool [T, B, *shape] (a voltage readout's v, int64), on the simulator (from the
    file) or on Lava (one sample at a time)."""
    if backend == "sim":
        from simulators.network import ChipSimulator

        return ChipSimulator.from_file(path).run_spikes(inputs)
    from deploy.chip_lava import run_spikes_on_lava

    batch = next(iter(inputs.values())).shape[1]
    runs = [run_spikes_on_lava(net, {n: x[:, b].numpy() for n, x in inputs.items()}, run_cfg) for b in range(batch)]
    return {name: torch.stack([torch.from_numpy(r[name]) for r in runs], dim=1) for name in runs[0]}


def first_mismatch(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], order: list[str]) -> dict | None:
    """The first (population, step, index) where two runs' spikes (or readout voltages) differ, populations in
    network order."""
    for name in order:
        a, b = expected[name], actual[name]
        if a.shape != b.shape:
            return {"population": name, "step": -1, "index": [], "expected": list(a.shape), "actual": list(b.shape)}
        hit = first_difference(a, b)
        if hit is not None:
            step, index = hit
            return {"population": name, "step": step, "index": list(index), "expected": int(a[(step, *index)]),
                    "actual": int(b[(step, *index)])}
    return None


def compare(net: ChipNetwork, expected: dict, actual: dict, what: tuple[str, str]) -> dict:
    mismatch = first_mismatch(expected, actual, [p.name for p in net.populations])
    spikes = {p.name: int(actual[p.name].sum()) for p in net.populations if not p.voltage_out}
    return {"compared": f"{what[0]} vs {what[1]}", "identical": mismatch is None, "first_mismatch": mismatch,
            "spikes": spikes, "readouts": [p.name for p in net.populations if p.voltage_out]}


def outgoing_sops(syn, spikes: torch.Tensor) -> int:
    """Synaptic operations of one synapse over a run of 0/1 spikes [T, B, *source shape]: every source spike
    times the targets it reaches (`export.energy.synapse_sops` for a conv, the outputs for a dense synapse)."""
    if syn.dense:
        return int(spikes.sum()) * int(syn.weight.shape[0])
    return int(synapse_sops(spikes, tuple(syn.weight.shape), syn.stride, syn.padding, syn.upsample, syn.dilation,
                            syn.groups).sum())


def network_energy(net: ChipNetwork, inputs: dict[str, torch.Tensor], spikes: dict[str, torch.Tensor]) -> dict:
    """Per population and in total, per sample: spikes, SOPs of its outgoing synapses and neuron updates (every
    neuron every step: Lava updates each compartment every step)."""
    steps, batch = next(iter(inputs.values())).shape[:2]
    trains = {**{n: x.bool() for n, x in inputs.items()}, **spikes}
    for p in net.populations:
        if p.voltage_out:  # a membrane readout: no spikes
            trains[p.name] = torch.zeros(spikes[p.name].shape, dtype=torch.bool)
    rows = {}
    for name in [*inputs, *(p.name for p in net.populations)]:
        sops = sum(outgoing_sops(s, trains[name]) for s in net.synapses if s.source == name)
        neurons = int(np.prod(net.source_shape(name)))
        rows[name] = {"spikes": int(trains[name].sum()) / batch, "sops": sops / batch,
                      "rate": float(trains[name].float().mean()), "neuron_updates": 0 if name in inputs
                      else neurons * steps}
    return {"steps": steps, "samples": batch, "per_node": rows,
            "total": {k: sum(r[k] for r in rows.values()) for k in ("spikes", "sops", "neuron_updates")}}


def format_energy_table(report: dict) -> str:
    lines = [f"per sample over {report['steps']} steps ({report['samples']} samples):",
             f"{'node':<24} {'spikes':>10} {'rate':>7} {'SOPs':>12} {'updates':>10}"]
    for name, r in report["per_node"].items():
        lines.append(f"{name:<24} {r['spikes']:>10.1f} {r['rate']:>7.3f} {r['sops']:>12.1f} {r['neuron_updates']:>10}")
    t = report["total"]
    lines.append(f"{'total':<24} {t['spikes']:>10.1f} {'':>7} {t['sops']:>12.1f} {t['neuron_updates']:>10}")
    return "\n".join(lines)


def float_agreement(net: ChipNetwork, source_path: str, inputs: dict[str, torch.Tensor],
                    spikes: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """The close rung of an imported graph's ladder: per population, the spike agreement 2|A and B| / (|A| + |B|)
    (1 where neither fires) of the source graph's float discretization, as `sddpm import-nir` recorded it,
    with the integer network's spikes; and per voltage readout the relative L2 distance |V_int - V_float| / |V_float|
    over the run (the integer voltage times the population's scale / 64). Returns (agreements, readout errors). Both run on the same timing (one step per synapse), so step t is step t."""
    from export.nir_foreign import ALWAYS_ON_SUFFIX, Discretization, run_discrete
    from export.nir_foreign_read import read_foreign

    disc = net.source.get("discretization")
    if disc is None:
        raise UsageError("the network records no discretization: --source needs a file of `sddpm import-nir`")
    floats = run_discrete(read_foreign(source_path), inputs, Discretization(**disc))
    # an always-on population is the compiler's, no node of the source (a CubaLIF's constant input)
    missing = sorted(name for name in set(spikes) - set(floats) if not name.endswith(ALWAYS_ON_SUFFIX))
    if missing:
        raise UsageError(f"{source_path} has no neuron nodes {missing}: not the graph this network was imported from")
    agreement, readout_error = {}, {}
    for pop in (p for p in net.populations if p.name in floats):
        name, s = pop.name, spikes[pop.name]
        if pop.voltage_out:
            ours = s.double() * pop.scale / V_PER_A
            readout_error[name] = float((ours - floats[name]).norm() / floats[name].norm().clamp_min(1e-300))
            continue
        a, b = s.bool(), floats[name].bool()
        both, total = int((a & b).sum()), int(a.sum()) + int(b.sum())
        agreement[name] = 1.0 if total == 0 else 2 * both / total
    return agreement, readout_error
