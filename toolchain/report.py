"""`sddpm report`: one Markdown page with PNG plots of a compiled network's activity, energy, verification and
Loihi 2 resources, written next to the JSON it is drawn from."""
from __future__ import annotations

import json
import os

import numpy as np

from export.resources import SOURCES, ResourceEstimate
from durableio import atomic_write
from sddpm.plots import pyplot, save_figure

from .verify import LadderReport

REPORT = "report.md"
PLOTS = {"firing_rate": "firing_rate.png", "sops": "sops.png", "energy": "energy.png"}
DPI = 120
BAR_HEIGHT_IN = 0.19  # inches per population in the horizontal bar plots: room for one readable label each


def _population_bars(names, values, xlabel: str, title: str, path: str, log: bool) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + BAR_HEIGHT_IN * len(names)))
    y = np.arange(len(names))
    ax.barh(y, values, color="tab:blue")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()  # dependency order, top to bottom
    ax.set(xlabel=xlabel, title=title, ylim=(len(names) - 0.5, -0.5))
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path, DPI)


def _energy_plot(summary: dict, path: str) -> None:
    """Bars per generated image and sampler (log scale): the 45 nm model on the float SNN as the paper counts it,
    on the chip network, and on the ANN twin; the Loihi 2 estimate as a low-high range."""
    plt = pyplot()
    paper, loihi2 = summary["energy"]["paper-45nm"], summary["loihi2"]
    samplers = list(paper["ann"]["per_image_j"])
    bars = [("45 nm: SNN, paper's count", paper["float_snn"]["per_image_j"], "tab:blue"),
            ("45 nm: SNN, chip network", paper["chip_snn"]["per_image_j"], "tab:orange"),
            ("45 nm: ANN twin", paper["ann"]["per_image_j"], "tab:gray")]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    x, width = np.arange(len(samplers)), 0.2
    for i, (label, joules, color) in enumerate(bars):
        ax.bar(x + (i - 1.5) * width, [joules[s] for s in samplers], width, label=label, color=color)
    low = [loihi2["energy_j_per_image"][s]["low"] for s in samplers]
    high = [loihi2["energy_j_per_image"][s]["high"] for s in samplers]
    ax.bar(x + 1.5 * width, np.subtract(high, low), width, bottom=low, color="tab:green",
           label="Loihi 2 estimate (low-high)")
    ax.set_xticks(x, [f"image, {s}" for s in samplers], fontsize=8)
    ax.set(yscale="log", ylabel="energy per image (J, log scale)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, DPI)


def si(value: float, unit: str, micro: str = "µ") -> str:
    """3 significant digits with an SI prefix: 1.23e-5 J -> '12.3 µJ' (micro="u" for plain-ASCII terminals)."""
    for prefix, scale in (("", 1.0), ("m", 1e-3), (micro, 1e-6), ("n", 1e-9), ("p", 1e-12)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def _ladder_section(ladder: LadderReport) -> list[str]:
    rows = []
    for i, t in enumerate(ladder.diffusion_steps):
        agree = [values[i] for values in ladder.spike_agreement.values()]
        rows.append([t, f"{ladder.eps_rel_l2[i]:.4f}", f"{ladder.psnr_db[i]:.1f}", f"{min(agree):.4f}",
                     f"{sum(agree) / len(agree):.4f}"])
    verdict = ("identical spikes of every population at every SNN step and identical output currents"
               if ladder.identical else f"DIFFER, first at {ladder.first_mismatch}")
    return ["## Verification ladder", "",
            f"Float model vs quantized reference at {ladder.steps_checked} denoising steps of a DDIM chain; quantized "
            f"reference vs bit-accurate simulator ({ladder.mode} timing): **{verdict}**.", "",
            *_table(["t", "eps relative L2", "eps PSNR (dB)", "spike agreement, min", "spike agreement, mean"], rows)]


def _resources_section(res: ResourceEstimate) -> list[str]:
    lim = res.limits
    rows = []
    for p in res.populations:
        (c_s, b_s), (c_d, b_d) = p.cores(lim, True), p.cores(lim, False)
        rows.append([p.name, f"{p.neurons:,}", f"{p.synapses_shared:,}", f"{p.synapses_dense:,}", f"{p.input_axons:,}",
                     f"{c_s} ({b_s})", f"{c_d} ({b_d})"])
    rows.append(["**total**", f"**{res.neurons:,}**", f"**{res.synapses(True):,}**", f"**{res.synapses(False):,}**",
                 "", f"**{res.cores(True)}**", f"**{res.cores(False)}**"])
    lines = ["## Loihi 2 resources", "",
             "Synapses with convolutional weight sharing (unique weights) and without (every connected (input, "
             "output) neuron pair, exact at borders, strides and up-sampling). Cores per population: the larger of "
             "its neurons over the neurons per core and its synapse bytes over the synaptic memory per core "
             "(the binding limit in parentheses); chips: cores over the cores per chip, or synapses over the "
             "synapses per chip, whichever is larger.", ""]
    for key, shared in (("with weight sharing", True), ("without weight sharing", False)):
        memory, neurons = res.bound_by(shared, "synaptic memory"), res.bound_by(shared, "neurons")
        lines.append(f"- **{key}**: {res.synapses(shared):,} synapses, {res.cores(shared)} cores, "
                     f"{res.chips(shared)} chip(s); {len(memory)} of {len(res.populations)} populations bound by "
                     "synaptic memory" + (f", by neurons: {', '.join(neurons)}" if len(neurons) <= len(memory)
                                           else f" ({', '.join(memory)})" if memory else ", all by their neurons"))
    lines += ["", *_table(["population", "neurons", "synapses (shared)", "synapses (dense)", "input axons",
                           "cores, shared", "cores, dense"], rows), "", "Limits:", ""]
    values = {"synaptic_memory_bytes_per_core": f"{lim.synaptic_memory_bytes_per_core:,} B "
                                                f"({lim.synapses_per_core:,} synapses)"}
    lines += [f"- `{name}` = {values.get(name, f'{getattr(lim, name):,}')}: {source}"
              for name, (source, _) in SOURCES.items()]
    return lines


def _placement_section(placement: dict) -> list[str]:
    lines = ["### Placement on chips", "",
             "A greedy placement (`export/placement.py`): populations in network order fill the cores of one chip "
             "after another, a chip full at its cores or its synapse budget. A spike is one message to every other "
             "chip holding part of one of its targets (an upper bound for convolutions, which reach only nearby "
             "neurons); per denoising step of one image.", ""]
    for key, label in (("shared", "with weight sharing"), ("dense", "without weight sharing")):
        p = placement[key]
        spread = [name for name, chips in p["populations"].items() if len(chips) > 1]
        lines.append(f"- **{label}**: {p['chips']:,} chip(s), fits {p['system']}; "
                     f"{p['crossing_spikes_per_step']:,.0f} spike messages cross chips "
                     f"({p['crossing_per_spike']:.2f} per spike); {len(spread)} populations span more than one chip")
    lines += ["", "Systems: " + "; ".join(f"{s['name']}: {s['source']}" for s in placement["systems"]) + "."]
    return lines


def _energy_section(summary: dict) -> list[str]:
    return ["## Energy", "", f"![energy]({PLOTS['energy']})", "", "```", format_energy(summary), "```"]


def write_report(out_dir: str, summary: dict, ladder: LadderReport, resources: ResourceEstimate,
                 placement: dict, title: str) -> str:
    """Write out_dir/report.md, its PNGs (`PLOTS`) and report.json; returns the Markdown's path."""
    os.makedirs(out_dir, exist_ok=True)
    pops = summary["populations"]
    names = [p["name"] for p in pops]
    steps = summary["snn_steps"]
    _population_bars(names, [p["firing_rate"] for p in pops], f"firing rate (spikes per neuron per SNN step, T = "
                     f"{steps})", "firing rate per population", os.path.join(out_dir, PLOTS["firing_rate"]), log=False)
    _population_bars(names, [max(p["sops"], 1) for p in pops], "SOPs per denoising step of one image (log)",
                     "synaptic operations of each population's outgoing synapses",
                     os.path.join(out_dir, PLOTS["sops"]), log=True)
    _energy_plot(summary, os.path.join(out_dir, PLOTS["energy"]))
    mean_rate = summary["per_denoising_step"]["spikes"] / (sum(p["neurons"] for p in pops) * steps)
    lines = [f"# {title}", "",
             f"{len(pops)} chip populations, T = {steps}, {summary['chip_steps']} chip steps per denoising step "
             f"(Lava's timing); counts at diffusion steps t = {', '.join(map(str, summary['denoising_steps']))} "
             f"of a DDIM-{summary['ddim_chain']} chain of {summary['images']} images.", "",
             "## Activity", "", f"Mean firing rate {mean_rate:.3f}.", "",
             f"![firing rate]({PLOTS['firing_rate']})", "", f"![SOPs]({PLOTS['sops']})", "",
             *_energy_section(summary), "", *_ladder_section(ladder), "", *_resources_section(resources), "",
             *_placement_section(placement), ""]
    with atomic_write(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({"energy": summary, "ladder": ladder.to_json(), "resources": resources.to_json(),
                   "placement": placement}, f)
    path = os.path.join(out_dir, REPORT)
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    return path


def format_network(net) -> str:
    """Populations, scales, thresholds and synapses of a chip network as a terminal table."""
    lines = [f"{'population':<24} {'shape':<14} {'depth':>5} {'scale':>10} {'vth':>6} {'bias_exp':>8} {'inputs':>6}"]
    for p in net.populations:
        inputs = "host" if p.host_input else str(len(net.inputs_of(p.name)))
        lines.append(f"{p.name:<24} {'x'.join(map(str, p.shape)):<14} {p.depth:>5} {p.scale:>10.3e} {p.vth:>6} "
                     f"{p.bias_exp:>8} {inputs:>6}")
    r = net.readout
    lines.append(f"{'readout':<24} {'x'.join(map(str, r.shape)):<14} {r.depth:>5} {r.scale:>10.3e} {'-':>6} {'-':>8} "
                 f"{len(net.inputs_of('readout')):>6}")
    lines.append(f"{len(net.populations)} populations, {len(net.synapses)} synapses "
                 f"({net.weight_count:,} 8-bit weights), "
                 f"{net.steps_per_denoising_step} chip steps per denoising step, threshold factor "
                 f"{net.threshold_factor}")
    return "\n".join(lines)


def format_energy(report: dict) -> str:
    """The counts of `export.energy.summarize`, NeuroBench's metrics, the 45 nm energies and the Loihi 2 estimate
    as terminal tables."""
    steps = report["denoising_steps"]
    lines = [f"one denoising step of one image, T = {report['snn_steps']}: mean over {len(steps)} denoising steps (t = "
             f"{', '.join(map(str, steps))}) of a DDIM-{report['ddim_chain']} chain of {report['images']} images",
             f"{'population':<24} {'neurons':>9} {'rate':>7} {'spikes':>12} {'float SOPs':>12} {'chip SOPs':>13} "
             f"{'chip/float':>10}"]
    for p in report["populations"]:
        ratio = f"{p['sops'] / p['float_sops']:>10.2f}" if p["float_sops"] else f"{'-':>10}"
        lines.append(f"{p['name']:<24} {p['neurons']:>9,} {p['firing_rate']:>7.3f} {p['spikes']:>12,.0f} "
                     f"{p['float_sops']:>12,.0f} {p['sops']:>13,.0f} {ratio}")
    step, floats, neurons = report["per_denoising_step"], report["float_sops"], sum(
        p["neurons"] for p in report["populations"])
    rate = step["spikes"] / (neurons * report["snn_steps"])
    lines.append(f"{'all ' + str(len(report['populations'])) + ' populations':<24} {neurons:>9,} {rate:>7.3f} "
                 f"{step['spikes']:>12,.0f} {floats['sops']:>12,.0f} {step['sops']:>13,.0f} "
                 f"{step['sops'] / floats['sops']:>10.2f}")
    host, paper = step["host_macs"], report["energy"]["paper-45nm"]
    first = paper["float_snn"]["macs"]  # the first conv's FLOPs, the paper's one MAC layer
    lines += [
        "",
        f"{'per denoising step of one image':<42} {'float SNN':>14} {'chip network':>14} {'ANN twin':>14}",
        f"{'SOPs, exact (NeuroBench Effective_ACs)':<42} {floats['sops']:>14,.0f} {step['sops']:>14,.0f} {'-':>14}",
        f"{'SOPs, the paper (rate x T x FLOPs)':<42} {floats['paper_sops']:>14,.0f} {'-':>14} {'-':>14}",
        f"{'MACs priced (first conv / host convs)':<42} {first:>14,.0f} {sum(host.values()):>14,} "
        f"{report['ann']['macs']:>14,}",
        f"{'MACs of every analog layer':<42} {floats['macs']:>14,.0f} {sum(host.values()):>14,} "
        f"{report['ann']['macs']:>14,}",
        f"{'neuron updates (+ idle on Lava timing)':<42} {step['neuron_updates']:>14,} "
        f"{step['neuron_updates']:>7,}+{step['idle_neuron_updates']:,}",
        f"SOPs per SNN step on the chip: {', '.join(f'{v:,.0f}' for v in step['sops_per_snn_step'])}; time "
        f"embedding {step['time_embedding_macs']:,} MACs (compiled into bias tables: not priced); the chip composes "
        "the float model's analog shortcuts into spiking synapses, hence more SOPs",
    ]
    nb = report.get("neurobench")
    if nb and "error" not in nb:
        s, a = nb["snn"], nb["ann"]
        lines += ["", f"NeuroBench {nb['version']} (the package, on the same denoising steps): float SNN Effective_ACs "
                      f"{s['SynapticOperations']['Effective_ACs']:,.0f}, Effective_MACs "
                      f"{s['SynapticOperations']['Effective_MACs']:,.0f}, Dense {s['SynapticOperations']['Dense']:,.0f}, "
                      f"activation sparsity {s['ActivationSparsity']:.3f}, footprint {s['Footprint']:,} B, "
                      f"{s['ParameterCount']:,} parameters; ANN twin Effective_MACs "
                      f"{a['SynapticOperations']['Effective_MACs']:,.0f}, Dense {a['SynapticOperations']['Dense']:,.0f}"]
    elif nb:
        lines += ["", f"NeuroBench: {nb['error']}"]
    samplers = list(paper["ann"]["per_image_j"])
    lines += ["", f"{'45 nm (the paper: 4.6 pJ/MAC, 0.9 pJ/SOP)':<42} {'per step':>10} "
              + " ".join(f"{s:>10}" for s in samplers) + f" {'/ ANN':>7}"]
    for label, e in (("SNN, float model, the paper's count", paper["float_snn"]),
                     ("SNN, chip network", paper["chip_snn"]), ("ANN twin", paper["ann"])):
        ratio = f"{e['over_ann']:>7.3f}" if "over_ann" in e else f"{'':>7}"
        lines.append(f"{'  ' + label:<42} {si(e['per_denoising_step_j']['total'], 'J', 'u'):>10} "
                     + " ".join(f"{si(e['per_image_j'][s], 'J', 'u'):>10}" for s in samplers) + f" {ratio}")
    l2 = report["loihi2"]

    def span(value: dict, unit: str) -> str:
        return f"{si(value['low'], unit, 'u')}-{si(value['high'], unit, 'u')}"

    lines += ["", f"Loihi 2 estimate ({l2['chips']['low']}-{l2['chips']['high']} chips, {l2['cores']['low']}-"
                  f"{l2['cores']['high']} cores with and without weight sharing; {l2['chip_steps_per_denoising_step']} "
                  "chip steps per denoising step; ranges over Intel's Loihi 2 runs; host excluded):",
              f"  {'':<22} " + " ".join(f"{s:>22}" for s in samplers),
              f"  {'latency per image':<22} " + " ".join(f"{span(l2['latency_s_per_image'][s], 's'):>22}"
                                                         for s in samplers),
              f"  {'energy per image':<22} " + " ".join(f"{span(l2['energy_j_per_image'][s], 'J'):>22}"
                                                        for s in samplers),
              f"  static power's share of the energy: {l2['static_share']['low']:.0%} at the low end, "
              f"{l2['static_share']['high']:.0%} at the high end",
              "  from: " + "; ".join(sorted({s["network"] for s in l2["sources"]})) + " (docs/energy.md)"]
    return "\n".join(lines)


def format_deploy(r: dict) -> str:
    lines = [f"Lava ({r['run_config']}, {r['lava_processes']} processes, {r['chip_steps_per_denoising_step']} chip "
             f"steps per denoising step) vs the bit-accurate simulator, {r['nir_file']}:"]
    if r["open_file_limit"]:
        lines.append(f"  {r['open_file_limit']}")
    verdict = "identical spikes of every population and identical output currents" if r["identical"] else \
        f"DIFFERENT: first at {r['first_mismatch']}"
    lines.append(f"  {r['steps_checked']} denoising steps (t = {', '.join(map(str, r['diffusion_steps']))}): {verdict}")
    if r["identical"]:
        counts = "identical" if r["counts_identical"] else f"DIFFERENT: {r['first_count_mismatch']}"
        lines.append(f"  spike and SOP counts from Lava's records vs the simulator's: {counts} "
                     f"(SOPs per step: {', '.join(f'{n:,}' for n in r['sops_per_step'])})")
    lines.append(f"  per denoising step: Lava {r['lava_seconds_per_step']:.1f} s (build "
                 f"{r['lava_build_seconds']:.1f} s), simulator {r['sim_seconds_per_step'] * 1e3:.0f} ms "
                 f"({r['lava_seconds_per_step'] / r['sim_seconds_per_step']:.0f}x faster)")
    return "\n".join(lines)


def format_whole_chain(r: dict) -> str:
    verdict = "identical spikes of every population and identical output currents" if r["identical"] else \
        f"DIFFERENT: first at {r['first_mismatch']}"
    lines = [f"a DDIM chain of {r['steps_checked']} denoising steps of one image on one Lava graph ({r['run_config']}, "
             f"{r['lava_processes']} processes, {r['chip_steps_per_denoising_step']} chip steps per denoising step) "
             f"vs the bit-accurate simulator, {r['nir_file']}:"]
    if r["open_file_limit"]:
        lines.append(f"  {r['open_file_limit']}")
    lines += [f"  every step: {verdict}",
              f"  final image vs the simulator's chain: {'identical' if r['image_identical'] else 'DIFFERENT'}; "
              f"vs the float model's chain: max |diff| {r['max_abs_diff_vs_float']:.3f}",
              f"  build once {r['build_seconds']:.1f} s (processes {r['graph_seconds']:.1f} s, compile and fork "
              f"{r['start_seconds']:.1f} s); per denoising step: Lava {r['lava_seconds_per_step']:.2f} s, simulator "
              f"{r['sim_seconds_per_step'] * 1e3:.0f} ms ({r['lava_seconds_per_step'] / r['sim_seconds_per_step']:.0f}x "
              f"faster)"]
    return "\n".join(lines)


def format_onnx_comparison(report, t) -> str:
    """Agreement of eps on the images with identical spikes, and each image whose spikes differ."""
    from export.onnx_export import ONNX_ATOL, TIE_ATOL

    same = len(report.eps_diff) - len(report.flips)
    images = (f"{same} images with identical spike trains ({report.spikes_compared:,} neuron-steps each)"
              if report.spikes_compared else f"{same} images (no spiking layers)")
    lines = [f"  {images}: max |eps diff| {report.same_spikes_max_abs_diff:.2e} (tolerance {ONNX_ATOL:.0e})"]
    for f in report.flips:
        kind = "a float32 tie" if f.is_tie else f"NOT a tie (membranes more than {TIE_ATOL:.0e} apart)"
        lines.append(f"  image {f.image} (t={int(t[f.image])}): first differing spike {f.population}, SNN step "
                     f"{f.snn_step}, (c, y, x) = {f.index}: h - threshold {f.z_torch:.2e} (PyTorch) vs "
                     f"{f.z_onnx:.2e} (onnxruntime), {kind}; its eps differs by {report.eps_diff[f.image]:.2e}")
    verdict = "DISAGREES" if not report.ok else "agrees" + (
        ": every larger difference follows a spike flipped at a float32 tie" if report.flips else "")
    lines.append(f"  max |eps diff| over all images: {report.max_abs_diff:.2e} -> {verdict}")
    return "\n".join(lines)


def neuron_kind(pop) -> str:
    """The NIR neuron type a population's decays make (export.nir_chip writes it so)."""
    if pop.voltage_out:
        return "readout"
    return "IF" if pop.is_if else "LIF" if pop.du == 4095 else "CubaLIF"


def format_imported(net) -> str:
    """The populations and synapses of an imported network, with their integers."""
    lines = [f"{'node':<20} {'type':<8} {'du':>5} {'dv':>5} {'vth':>5} {'scale':>10} {'weight_exp':>10}"]
    for p in sorted(net.populations, key=lambda p: p.name):
        lines.append(f"{p.name:<20} {neuron_kind(p):<8} {p.du:>5} {p.dv:>5} {p.vth:>5} {p.scale:>10.3e} {'':>10}")
    for s in net.synapses:
        name = f"{s.source} -> {s.target}"
        lines.append(f"{name:<20} {'Dense' if s.dense else 'Conv':<8} {'':>5} {'':>5} {'':>5} {'':>10} "
                     f"{s.weight_exp:>10}")
    return "\n".join(lines)
