"""Energy accounting: the paper's ANN baseline, synaptic-operation counts derived by hand and by brute force,
the counts of a compiled network, the energy formula, and `sddpm energy`."""
import dataclasses
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from chip_helpers import compiled_tiny, firing_tiny_model
from export.energy import (PAPER_45NM, SAMPLERS, Operations, ann_macs, ann_operations,
                           count_forward, energy, fanout_map, is_time_embedding, per_image, synapse_sops)
from helpers import TINY, TINY_TRAIN
from sddpm.checkpoint import save_checkpoint
from sddpm.config import PRESETS, DiffusionConfig
from simulators.network import ChipSimulator
from toolchain.cli import main

PAPER_ANN_MJ = 29.23  # SDM Tab. 4: DDPM-ANN on CIFAR-10, one forward pass of one image at 4.6 pJ per MAC


def _conv(c_in: int, c_out: int, size: int, k: int = 3) -> int:
    return k * k * c_in * c_out * size * size


def _ddpm_unet_macs(ch: int, ch_mult: tuple[int, ...], res_blocks: int, size: int, img_ch: int) -> int:
    """Conv MACs of the attention-free DDPM U-Net, walked from its layout (not from our modules)."""
    total, skips, now = _conv(img_ch, ch, size), [ch], ch  # input conv
    for level, mult in enumerate(ch_mult):
        for _ in range(res_blocks):  # conv1, conv2, 1x1 shortcut where the width changes
            total += _conv(now, ch * mult, size) + _conv(ch * mult, ch * mult, size)
            total += _conv(now, ch * mult, size, k=1) if now != ch * mult else 0
            now = ch * mult
            skips.append(now)
        if level != len(ch_mult) - 1:
            size //= 2
            total += _conv(now, now, size)  # stride-2 conv: its output grid
            skips.append(now)
    total += 4 * _conv(now, now, size)  # two middle res blocks
    for level, mult in reversed(list(enumerate(ch_mult))):
        for _ in range(res_blocks + 1):  # each reads the concatenation with a skip
            c_in = skips.pop() + now
            total += _conv(c_in, ch * mult, size) + _conv(ch * mult, ch * mult, size)
            total += _conv(c_in, ch * mult, size, k=1) if c_in != ch * mult else 0
            now = ch * mult
        if level != 0:
            size *= 2
            total += _conv(now, now, size)  # nearest up-sampling, then a conv on the larger grid
    return total + _conv(now, img_ch, size)  # output conv


def test_the_cifar10_ann_costs_the_papers_29_23_mj_per_forward_pass():
    # CIFAR-10 DDPM U-Net: ch 128, ch_mult (1, 2, 2, 4), 2 res blocks, 32x32, no attention. Conv MACs =
    # 9 C_in C_out H W (1x1 shortcuts: C_in C_out H W); in millions, per level:
    #   input conv 3 -> 128 at 32^2                                                        3.5
    #   down 0 (32^2, 128): 4 convs 128->128 (151.0 each) + stride-2 conv to 16^2 (37.7)  641.7
    #   down 1 (16^2, 256): 128->256 (75.5 + 151.0 + shortcut 8.4), 256->256 (2 x 151.0),
    #                       stride-2 conv to 8^2 (37.7)                                     574.6
    #   down 2 (8^2, 256): 4 x 37.7 + stride-2 conv to 4^2 (9.4)                           160.4
    #   down 3 (4^2, 512): 256->512 (18.9 + 37.7 + 2.1), 512->512 (2 x 37.7)              134.2
    #   middle (4^2, 512): 4 x 37.7                                                        151.0
    #   up 3 (4^2, 512; inputs 1024, 1024, 768): 2 x (75.5 + 37.7 + 8.4) + (56.6 + 37.7 + 6.3),
    #                       up-sampling conv 512 at 8^2 (151.0)                             494.9
    #   up 2 (8^2, 256; inputs 768, 512, 512): (113.2 + 37.7 + 12.6) + 2 x (75.5 + 37.7 + 8.4),
    #                       up-sampling conv 256 at 16^2 (151.0)                            557.8
    #   up 1 (16^2, 256; inputs 512, 512, 384): 2 x (302.0 + 151.0 + 33.6) + (226.5 + 151.0 + 25.2),
    #                       up-sampling conv 256 at 32^2 (604.0)                            1979.7
    #   up 0 (32^2, 128; inputs 384, 256, 256): (453.0 + 151.0 + 50.3) + 2 x (302.0 + 151.0 + 33.6)  1627.4
    #   output conv 128 -> 3 at 32^2                                                        3.5
    # Sum 6328.9 M MACs x 4.6 pJ = 29.11 mJ: 0.4 % below the paper's 29.23 mJ, so Tab. 4 is one forward pass
    # (one denoising step) of one image. The time-embedding MLP and projections (3.8 M MACs) are reported
    # apart; with them it would be 29.13 mJ.
    cfg = dataclasses.replace(PRESETS["cifar10"], kind="ann")
    expected = _ddpm_unet_macs(128, (1, 2, 2, 4), 2, 32, 3)
    assert expected == 6_328_942_592
    macs = ann_macs(cfg)
    convs = sum(v for k, v in macs.items() if not is_time_embedding(k))
    assert convs == expected
    # MLP 128 -> 512 -> 512, and a 512 -> width projection in each res block: 5 of width 128, 10 of 256, 7 of 512
    assert sum(v for k, v in macs.items() if is_time_embedding(k)) == 128 * 512 + 512 * 512 + 512 * (
        5 * 128 + 10 * 256 + 7 * 512)
    ops = ann_operations(cfg)
    assert ops.macs == convs and ops.sops == 0
    mj = energy(ops, PAPER_45NM)["total"] * 1e3
    assert abs(mj - PAPER_ANN_MJ) / PAPER_ANN_MJ < 0.01, mj


def _one_spike(c_in: int, h: int, w: int, y: int, x: int) -> torch.Tensor:
    spikes = torch.zeros(1, 1, c_in, h, w)
    spikes[0, 0, c_in - 1, y, x] = 1
    return spikes


@pytest.mark.parametrize("geometry, position, fanout", [
    # 3x3, padding 1, stride 1 on 4x4: a spike reaches the outputs whose 3x3 window covers it.
    ((1, 1, 1), (0, 0), 2 * 2),  # corner: output rows {0, 1} x columns {0, 1}
    ((1, 1, 1), (0, 2), 2 * 3),  # top edge: rows {0, 1} x columns {1, 2, 3}
    ((1, 1, 1), (1, 2), 3 * 3),  # inside: the whole kernel
    # stride 2, padding 1 on 4x4 -> 2x2: output y reads input rows 2y-1..2y+1, i.e. {-1, 0, 1} and {1, 2, 3}
    ((2, 1, 1), (0, 0), 1 * 1),  # row 0 is read by output 0 only
    ((2, 1, 1), (1, 1), 2 * 2),  # row 1 by outputs 0 and 1
    ((2, 1, 1), (1, 2), 2 * 1),  # column 2 by output 1 only
    ((2, 1, 1), (3, 3), 1 * 1),
    # nearest up-sampling x2 then 3x3, padding 1 on 4x4 -> 8x8: input row y becomes rows {2y, 2y+1}, read by
    # outputs 2y-1..2y+2 (distinct outputs: the two copies share two of them)
    ((1, 1, 2), (1, 2), 4 * 4),  # inside: outputs 1..4 x 3..6
    ((1, 1, 2), (0, 1), 3 * 4),  # top edge: outputs 0..2 (row -1 is off the grid) x 1..4
    ((1, 1, 2), (3, 3), 3 * 3),  # corner: outputs 5..7 x 5..7
    # no padding, 3x3, stride 1 on 4x4 -> 2x2: output y reads rows y..y+2
    ((1, 0, 1), (0, 0), 1 * 1),
    ((1, 0, 1), (1, 2), 2 * 2),
])
def test_the_fanout_of_a_single_spike_is_derived_by_hand(geometry, position, fanout):
    stride, padding, upsample = geometry
    c_out, c_in = 5, 3  # every output channel is reached, whatever the input channel
    sops = synapse_sops(_one_spike(c_in, 4, 4, *position), (c_out, c_in, 3, 3), stride, padding, upsample)
    assert sops.dtype == torch.int64 and sops.shape == (1, 1)
    assert int(sops) == c_out * fanout


def _brute_force_sops(spikes: torch.Tensor, weight_shape, stride: int, padding: int, upsample: int) -> int:
    """For every spike, the set of (output channel, output position) pairs that some weight entry connects it to,
    through any of its up-sampled copies."""
    c_out, _, k_h, k_w = weight_shape
    h_up, w_up = spikes.shape[-2] * upsample, spikes.shape[-1] * upsample
    h_out, w_out = (h_up + 2 * padding - k_h) // stride + 1, (w_up + 2 * padding - k_w) // stride + 1
    total = 0
    for _, _, _, y, x in torch.nonzero(spikes).tolist():
        reached = set()
        for o, out_y, out_x, i, j in itertools.product(range(c_out), range(h_out), range(w_out), range(k_h),
                                                       range(k_w)):
            row, col = out_y * stride - padding + i, out_x * stride - padding + j  # in the up-sampled map
            if 0 <= row < h_up and 0 <= col < w_up and (row // upsample, col // upsample) == (y, x):
                reached.add((o, out_y, out_x))
        total += len(reached)
    return total


@pytest.mark.parametrize("kernel, stride, padding, upsample, size", [
    (3, 1, 1, 1, (5, 6)), (3, 2, 1, 1, (7, 6)), (3, 1, 1, 2, (3, 4)), (1, 1, 0, 1, (4, 5)), (3, 1, 0, 1, (5, 5)),
    (3, 2, 1, 2, (3, 3)),
])
def test_sops_equal_a_brute_force_count_of_every_spike(kernel, stride, padding, upsample, size):
    gen = torch.Generator().manual_seed(kernel * 100 + stride * 10 + upsample)
    shape = (3, 4, kernel, kernel)
    spikes = (torch.rand(2, 2, 4, *size, generator=gen) < 0.3).float()  # [T, B, C_in, H, W]
    sops = synapse_sops(spikes, shape, stride, padding, upsample)
    for step, image in itertools.product(range(2), range(2)):
        one = spikes[step:step + 1, image:image + 1]
        assert int(sops[step, image]) == _brute_force_sops(one, shape, stride, padding, upsample), (step, image)
        if upsample == 1:  # one tap per (spike, output): the summed conv of the spikes with an all-ones kernel
            ones = F.conv2d(one[0], torch.ones(shape), stride=stride, padding=padding)
            assert int(sops[step, image]) == int(ones.sum())


@pytest.mark.parametrize("shape, size, stride, padding, dilation, groups", [
    ((4, 3, 3, 3), (6, 5), 1, 2, 2, 1), ((6, 2, 3, 2), (7, 6), 2, 1, 1, 2), ((6, 1, 3, 3), (8, 7), 1, 2, 2, 3),
])
def test_dilated_and_grouped_sops_are_the_summed_conv_with_an_all_ones_kernel(shape, size, stride, padding, dilation,
                                                                            groups):
    # without up-sampling every (spike, output) pair is one tap: the conv of the spikes with all-one weights of
    # the synapse's geometry, summed, counts them (for dilated and grouped convs too)
    spikes = (torch.rand(2, 2, shape[1] * groups, *size, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    sops = synapse_sops(spikes, shape, stride, padding, 1, dilation, groups)
    for step, image in itertools.product(range(2), range(2)):
        ones = F.conv2d(spikes[step, image:image + 1], torch.ones(shape), stride=stride, padding=padding,
                        dilation=dilation, groups=groups)
        assert int(sops[step, image]) == int(ones.sum())


def test_the_fanout_map_is_the_kernel_clipped_at_the_borders():
    assert fanout_map((1, 1, 3, 3), (3, 3), 1, 1, 1).tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]


@pytest.fixture(scope="module")
def tiny_counts(tmp_path_factory):
    """The TINY network compiled, and the counts of one forward pass of 3 images on the simulator."""
    net, path, batch = compiled_tiny(tmp_path_factory.mktemp("chip"))
    trains = ChipSimulator.from_file(path).run(*batch).spikes
    return net, trains, count_forward(net, trains)


def test_counts_of_the_tiny_network_add_up_and_are_integers(tiny_counts):
    net, trains, counts = tiny_counts
    steps, batch = net.snn_steps, 3
    assert [p.name for p in counts.populations] == [p.name for p in net.populations]
    assert len(counts.synapses) == len(net.synapses)
    for c in counts.synapses:
        assert c.sops.dtype == torch.int64 and c.sops.shape == (steps, batch)
    total = counts.sops
    assert torch.equal(total, sum(c.sops for c in counts.synapses))
    assert torch.equal(total, sum(p.sops for p in counts.populations))  # each synapse leaves one population
    assert int(total.min()) > 0
    for p in counts.populations:
        assert p.spikes.dtype == torch.int64
        assert torch.equal(p.spikes, trains[p.name].sum((2, 3, 4)).long())
    assert counts.neurons == sum(c * h * w for c, h, w in (p.shape for p in net.populations))
    assert counts.neuron_updates == counts.neurons * steps
    assert counts.idle_updates == counts.neurons * (net.steps_per_denoising_step - steps)
    # TINY: host conv 1 -> 8 channels, tail conv 8 -> 1 and time conv 1 -> 1 at every SNN step, 3x3 on 32x32
    assert counts.host_macs == {"head_conv": 9 * 1 * 8 * 1024, "tail_conv": 9 * 8 * 1 * 1024 * steps,
                                "time_conv": 9 * 1 * 1 * 1024 * steps}
    # time embedding of ch 8 (tdim 32): MLP 8x32 + 32x32, one projection per res block (widths 8, 16, 16, 16,
    # then up 16, 16, 8, 8)
    assert counts.time_embedding_macs == 8 * 32 + 32 * 32 + 32 * (8 + 16 + 16 + 16 + 16 + 16 + 8 + 8)


def test_a_count_difference_names_the_first_population_or_synapse(tiny_counts):
    from toolchain.verify import first_count_difference

    net, trains, counts = tiny_counts
    assert first_count_difference(counts, count_forward(net, trains)) is None
    name = net.populations[2].name
    moved = dict(trains)
    moved[name] = trains[name].clone()
    moved[name][0, 0, 0, 0, 0] = 1 - moved[name][0, 0, 0, 0, 0]  # one spike more or less, image 0, step 0
    assert first_count_difference(counts, count_forward(net, moved)).startswith(f"population {name}: spikes")


def test_the_energy_of_a_forward_pass_and_of_an_image():
    ops = Operations(macs=1000, sops=2e6, updates=300, idle_updates=4000, time_embedding_macs=77)
    paper = energy(ops, PAPER_45NM)
    assert paper["total"] == pytest.approx(1000 * 4.6e-12 + 2e6 * 0.9e-12)  # neuron updates are free there
    assert per_image(2.0) == {"DDPM 1000": 2000.0, "DDIM 100": 200.0, "DDIM 50": 100.0}
    assert set(SAMPLERS) == set(per_image(1.0))


@pytest.mark.filterwarnings("ignore::export.host.ChipOverflowWarning")  # an untrained model's chain diverges
def test_sddpm_energy_counts_a_chain_on_the_simulator(tmp_path, capsys):
    ckpt = str(tmp_path / "tiny.pt")
    model = firing_tiny_model()
    save_checkpoint(ckpt, {"model_config": model.cfg.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                           "train_config": TINY_TRAIN.to_dict(), "step": 0, "model": model.state_dict()})
    chip = str(tmp_path / "net.nir")
    common = ["energy", "--checkpoint", ckpt, "--chip-out", chip, "--steps", "2", "--ddim-steps", "4",
              "--batch-size", "2", "--calibration-batches", "1", "--calibration-batch-size", "4"]
    assert main([*common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sim = ChipSimulator.from_file(chip)
    assert [p["name"] for p in report["populations"]] == [p.name for p in sim.populations]
    assert report["forward_passes"] == 4 and report["images"] == 2 and len(report["denoising_steps"]) == 2
    step = report["per_denoising_step"]
    assert step["sops"] == pytest.approx(sum(p["sops"] for p in report["populations"]))
    assert step["sops"] == pytest.approx(sum(step["sops_per_snn_step"]))
    assert report["ann"]["macs"] == ann_operations(TINY).macs
    paper = report["energy"]["paper-45nm"]
    expected = sum(step["host_macs"].values()) * 4.6e-12 + step["sops"] * 0.9e-12
    assert paper["chip_snn"]["per_denoising_step_j"]["total"] == pytest.approx(expected)
    assert paper["chip_snn"]["per_image_j"]["DDPM 1000"] == pytest.approx(1000 * expected)
    # the paper's count: the first conv's FLOPs (3x3, 1 -> 8 channels on 32x32: 9 x 8 x 1024) and rate x T x FLOPs
    floats = report["float_sops"]
    assert paper["float_snn"]["macs"] == 9 * 8 * 1024 and paper["float_snn"]["sops"] == floats["paper_sops"]
    assert report["chip_sops"]["total"] == step["sops"]
    assert floats["sops"] == pytest.approx(sum(p["float_sops"] for p in report["populations"]))
    nb = report["neurobench"]["snn"]["SynapticOperations"]
    assert report["neurobench"]["version"] == "2.3.0" and nb["Dense"] == floats["dense"]
    loihi2 = report["loihi2"]
    assert loihi2["chip_steps_per_denoising_step"] == report["chip_steps"] and loihi2["sources"]
    assert set(loihi2["latency_s_per_image"]) == set(loihi2["energy_j_per_image"]) == set(SAMPLERS)

    assert main(common) == 0
    text = capsys.readouterr().out
    for p in report["populations"]:
        assert f"\n{p['name']} " in text
    for name in ("DDPM 1000", "DDIM 100", "DDIM 50", "the paper's count", "chip network", "ANN twin",
                 "NeuroBench 2.3.0", "Loihi 2 estimate", "PilotNet"):
        assert name in text


# -- the float model's counts against NeuroBench, and the Loihi 2 estimate --------------------------------------

def test_a_layer_counts_its_input_synapse_pairs_as_derived_by_hand():
    from export.float_ops import connections

    conv = torch.nn.Conv2d(2, 5, 3, padding=1)
    spikes = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    spikes[0, 1, 0, 0] = True  # a corner: the 3x3 windows of output rows {0, 1} x columns {0, 1} cover it
    assert connections(spikes, conv) == 4 * 5
    spikes[0, 0, 1, 2] = True  # inside: the whole kernel, 9 outputs per output channel
    assert connections(spikes, conv) == (4 + 9) * 5
    # every input: each output position counts its taps inside the image, summed (rows 2 + 3 + 3 + 2 = 10, same
    # for columns), times C_in and C_out
    assert connections(torch.ones(1, 2, 4, 4, dtype=torch.bool), conv) == 10 * 10 * 2 * 5
    assert connections(torch.tensor([[True, False, True]]), torch.nn.Linear(3, 7)) == 2 * 7


@pytest.fixture(scope="module")
def float_states():
    """The firing TINY model and two batches of noisy digits at t = 999 and at t = 0."""
    from chip_helpers import digits_batches

    model = firing_tiny_model().eval()
    (x, _), = digits_batches(batches=1, batch_size=2)
    return model, [(x, torch.full((2,), 999)), (x, torch.zeros(2, dtype=torch.long))]


def test_the_float_sops_are_neurobenchs_effective_acs_where_the_definitions_agree(float_states):
    from export.float_ops import ANALOG_LAYERS, float_ops, summarize_float
    from export.neurobench_metrics import neurobench_metrics

    model, states = float_states
    ours = summarize_float(float_ops(model, states[:1]))
    package = neurobench_metrics(model, states[:1])["snn"]["SynapticOperations"]
    assert ours["sops"] > 0 and ours["sops"] == package["Effective_ACs"]
    assert ours["macs"] == package["Effective_MACs"] and ours["dense"] == package["Dense"]
    # every analog layer is named with its reason; the spiking ones with the population they read
    assert all(any(layer == k or layer.endswith("." + k) for k in ANALOG_LAYERS) for layer in ours["analog_layers"])
    assert set(ours["by_population"]) == {n for n, m in model.named_modules() if type(m).__name__ == "IF"}

    # Where they differ: NeuroBench calls a layer spiking when its whole input is 0/+-1. At t = 0 the sinusoidal
    # embedding is sin(0) = 0 and cos(0) = 1 (ch / 2 of each), so it counts the time MLP's first Linear (ch 8 ->
    # 32) as ACs: ch / 2 = 4 nonzero inputs x 32 outputs = 128 per image, moved from MACs to ACs.
    both = summarize_float(float_ops(model, states))
    package = neurobench_metrics(model, states)["snn"]["SynapticOperations"]
    moved = 4 * 32 / 2  # per denoising step of one image: one of the two steps
    assert package["Effective_ACs"] == both["sops"] + moved and package["Effective_MACs"] == both["macs"] - moved


def test_the_ann_twins_macs_count_padded_taps_and_neurobenchs_dense_does_not(float_states):
    from export.neurobench_metrics import neurobench_metrics

    model, states = float_states
    dense = neurobench_metrics(model, states[:1])["ann"]["SynapticOperations"]["Dense"]
    # the paper's convention (and ann_macs'): output x C_in x k^2, the padded border taps included; a 3x3,
    # padding 1 conv on 32x32 reads (3 x 32 - 2)^2 = 8836 taps per channel pair instead of 9 x 1024 = 9216
    macs = ann_macs(TINY)
    assert macs["head"] == 9 * 1 * 8 * 1024
    # so Dense is smaller, by 8836 / 9216 = 0.959 for a 3x3 conv at 32x32 and (3 x 16 - 2)^2 / (9 x 256) = 0.918 at
    # 16x16; 1x1 convs and Linear layers have no border
    assert 0.918 * sum(macs.values()) < dense < 0.959 * sum(macs.values())


def test_the_loihi2_estimate_from_intels_measurements_derived_by_hand():
    from export.loihi2 import MEASUREMENTS, Span, constants, estimate

    c = constants()
    # time per step: S4D 30.985 us (lowest); PilotNet 1 / (408.91 frames/s x 16 steps) = 152.85 us (highest of
    # its three runs: 408.91, 413.76, 415.51 frames/s)
    assert c["seconds_per_chip_step"].low == pytest.approx(30.98498733e-6)
    assert c["seconds_per_chip_step"].high == pytest.approx(152.846e-6, rel=1e-5)
    assert (c["static_w_per_chip"].low, c["static_w_per_chip"].high) == (0.142275, 0.309377)
    # dynamic J per core and step: S4D 0.010235 W x 30.985 us / 6 cores = 52.85 nJ; PilotNet (run b9e3691)
    # 0.447156 W x 152.846 us / 74 cores = 923.6 nJ
    assert c["dynamic_j_per_core_step"].low == pytest.approx(52.855e-9, rel=1e-4)
    assert c["dynamic_j_per_core_step"].high == pytest.approx(923.6e-9, rel=1e-4)
    assert all("lava-dl" in m.source and "Loihi 2" in m.source for m in MEASUREMENTS)

    # 31 chip steps per denoising step, DDIM 50; 2 chips and 100 cores at the low end, 5 and 500 at the high end:
    #   low:  latency 31 x 30.985 us = 0.9605 ms; energy 2 x 0.142275 W x 0.9605 ms + 31 x 100 x 52.855 nJ
    #         = 0.27332 mJ + 0.16385 mJ = 0.43717 mJ per step, x 50 = 21.86 mJ per image
    #   high: latency 31 x 152.846 us = 4.7382 ms; 5 x 0.309377 x 4.7382 ms + 31 x 500 x 923.6 nJ
    #         = 7.3295 mJ + 14.316 mJ = 21.645 mJ per step, x 50 = 1.0823 J
    e = estimate(31, Span(100, 500), Span(2, 5), {"DDIM 50": 50})
    assert e["latency_s_per_image"]["DDIM 50"]["low"] == pytest.approx(50 * 0.9605e-3, rel=1e-3)
    assert e["latency_s_per_image"]["DDIM 50"]["high"] == pytest.approx(50 * 4.7382e-3, rel=1e-3)
    assert e["energy_j_per_image"]["DDIM 50"]["low"] == pytest.approx(21.86e-3, rel=1e-3)
    assert e["energy_j_per_image"]["DDIM 50"]["high"] == pytest.approx(1.0823, rel=1e-3)
    assert e["static_share"]["low"] == pytest.approx(0.27332 / 0.43717, rel=1e-3)
    assert e["static_share"]["high"] == pytest.approx(7.3295 / 21.645, rel=1e-3)
