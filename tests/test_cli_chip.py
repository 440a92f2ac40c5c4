"""`sddpm compile` and `sddpm verify` end to end on a tiny checkpoint calibrated on scikit-learn digits."""
import dataclasses
import json
import shutil

import h5py
import nir
import pytest

from chip_helpers import firing_tiny_model
from export.nir_chip import seal
from helpers import TINY, TINY_TRAIN
from sddpm.checkpoint import save_checkpoint
from sddpm.config import DiffusionConfig
from sddpm.unet import ANNUNet
from simulators.network import ChipSimulator
from toolchain.cli import main

SMALL = ["--calibration-batches", "1", "--calibration-batch-size", "4"]
VERIFY = ["verify", "--steps", "2", "--batch-size", "2", "--ddim-steps", "4", "--json", *SMALL]
# An untrained model's DDIM chain diverges: its late x_t lie far outside the calibrated range, and the
# reference says so. The saturating and wrapping integers must still agree, which these tests check.
DIVERGING_CHAIN = pytest.mark.filterwarnings("ignore::export.host.ChipOverflowWarning")


def _checkpoint(path: str, model) -> str:
    # TINY_TRAIN names the dataset, so compile and verify calibrate on digits without --dataset
    save_checkpoint(path, {"model_config": model.cfg.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                           "train_config": TINY_TRAIN.to_dict(), "step": 0, "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), firing_tiny_model())


def test_compile_writes_the_network_and_prints_its_populations(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "net.nir")
    assert main(["compile", "--checkpoint", checkpoint, "--out", out, "--threshold-factor", "0.997", *SMALL]) == 0
    text = capsys.readouterr().out
    sim = ChipSimulator.from_file(out)
    assert sim.meta["threshold_factor"] == 0.997
    for name in [p.name for p in sim.populations] + ["readout"]:
        assert f"\n{name} " in text, name
    assert f"{len(sim.populations)} populations, {len(sim.synapses)} synapses" in text
    assert text.rstrip().endswith(f"chip network -> {out}")


def test_run_of_a_diffusion_network_writes_one_denoising_step_of_noise(checkpoint, tmp_path, capsys):
    import numpy as np

    chip, out = str(tmp_path / "net.nir"), str(tmp_path / "outputs.npz")
    assert main(["compile", "--checkpoint", checkpoint, "--out", chip, *SMALL]) == 0
    capsys.readouterr()
    assert main(["run", chip, "--out", out, "--batch-size", "2", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["spikes"]
    sim = ChipSimulator.from_file(chip)
    assert set(counts) == {p.name for p in sim.populations} and sum(counts.values()) > 0
    with np.load(out) as f:
        assert f["eps"].shape == (2, 1, 32, 32) and f["readout"].shape[:2] == (sim.snn_steps, 2)


def test_export_nir_writes_a_nir_graph_and_checks_it_on_the_simulator(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "net.nir")
    assert main(["export", "--format", "nir", "--checkpoint", checkpoint, "--out", out, "--check-images", "3",
                 "--json", *SMALL]) == 0
    report = json.loads(capsys.readouterr().out)
    graph = nir.read(out)
    assert report["nodes"] == len(graph.nodes) and report["node_types"] == ["Conv2d", "IF", "Input", "Output", "Scale"]
    assert (report["dataset"], report["images"]) == ("digits", 3)
    assert report["ok"] is report["identical"] is report["eps_identical"] is True and report["first_mismatch"] is None


def test_export_nir_float_writes_the_float_network_and_checks_the_round_trip(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "float.nir")
    assert main(["export", "--format", "nir-float", "--checkpoint", checkpoint, "--out", out, "--check-images", "3",
                 "--json", *SMALL]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["node_types"] == ["Conv2d", "IF", "Input", "Output", "Scale"] and report["spikes_differ_in"] == []
    assert report["ok"] is True and report["max_abs_diff"] <= report["tolerance"] and report["images"] == 3
    assert nir.read(out).metadata["format"] == "sddpm-float-nir"


def test_export_nir_exits_1_naming_the_first_difference(checkpoint, tmp_path, capsys, monkeypatch):
    read = ChipSimulator.from_file

    def read_a_tampered_file(path, device="cpu"):
        with h5py.File(path, "r+") as h5:
            weight = h5["node/nodes/syn0000/weight"]
            weight[...] = -weight[...]
        seal(path)  # as a compiler with a bug would write it
        return read(path, device)

    monkeypatch.setattr(ChipSimulator, "from_file", staticmethod(read_a_tampered_file))
    out = str(tmp_path / "net.nir")
    assert main(["export", "--format", "nir", "--checkpoint", checkpoint, "--out", out, "--check-images", "3",
                 "--json", *SMALL]) == 1
    first = json.loads(capsys.readouterr().out)["first_mismatch"]
    # the simulator read a file whose first synapse is reversed: its target is the first to differ
    assert first["population"] == next(b for a, b in nir.read(out).edges if a == "syn0000")
    assert (first["expected_backend"], first["actual_backend"]) == ("reference", "simulator")
    assert first["expected"] != first["actual"] and len(first["index"]) == 4


@DIVERGING_CHAIN
def test_verify_reports_identical_runs_as_json(checkpoint, tmp_path, capsys):
    chip = str(tmp_path / "net.nir")
    assert main([*VERIFY, "--checkpoint", checkpoint, "--chip-out", chip]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is True and report["first_mismatch"] is None
    assert report["steps_checked"] == 2 and len(report["eps_rel_l2"]) == 2 and len(report["diffusion_steps"]) == 2
    assert report["chip_file"] == chip and report["mode"] == "delayed"


@DIVERGING_CHAIN
def test_verify_of_a_compiled_file_gives_the_ladder_of_compiling_again(checkpoint, tmp_path, capsys):
    chip = str(tmp_path / "net.nir")
    assert main([*VERIFY, "--checkpoint", checkpoint, "--chip-out", chip]) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert main([*VERIFY, "--checkpoint", checkpoint, "--nir", chip, "--chip-out", str(tmp_path / "unused.nir")]) == 0
    reused = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "unused.nir").exists()  # nothing compiled
    assert reused["identical"] is True and reused["chip_file"] == chip
    assert reused["eps_rel_l2"] == compiled["eps_rel_l2"] and reused["spike_agreement"] == compiled["spike_agreement"]


def test_verify_refuses_a_compiled_file_of_another_threshold_factor(checkpoint, tmp_path, capsys):
    chip = str(tmp_path / "net.nir")
    assert main(["compile", "--checkpoint", checkpoint, "--out", chip, "--threshold-factor", "0.997"]) == 0
    capsys.readouterr()
    assert main([*VERIFY, "--checkpoint", checkpoint, "--nir", chip]) == 2
    assert "compiled with threshold factor 0.997, not 1.0" in capsys.readouterr().err


@DIVERGING_CHAIN
def test_verify_exits_1_naming_the_first_difference(checkpoint, tmp_path, capsys, monkeypatch):
    read = ChipSimulator.from_file

    def read_a_tampered_file(path, device="cpu"):
        with h5py.File(path, "r+") as h5:
            weight = h5["node/nodes/syn0000/weight"]
            weight[...] = -weight[...]  # mantissas lie within +-127, so negating never wraps
        seal(path)  # as a compiler with a bug would write it
        found.append(next(b for a, b in nir.read(path).edges if a == "syn0000"))
        return read(path, device)

    found = []
    monkeypatch.setattr(ChipSimulator, "from_file", staticmethod(read_a_tampered_file))
    assert main([*VERIFY, "--checkpoint", checkpoint, "--chip-out", str(tmp_path / "net.nir")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is False
    first = report["first_mismatch"]
    # the simulator read a network whose first synapse is reversed: its target is the first to differ
    assert first["population"] == found[0] and first["denoising_step"] == report["diffusion_steps"][0]
    assert 0 <= first["snn_step"] < TINY.snn_steps and len(first["index"]) == 4


@DIVERGING_CHAIN
@pytest.mark.lava
def test_deploy_runs_a_denoising_step_on_lava_identical_to_the_simulator(checkpoint, tmp_path, capsys):
    chip = str(tmp_path / "net.nir")
    assert main(["deploy", "--checkpoint", checkpoint, "--chip-out", chip, "--ddim-steps", "4", "--json",
                 *SMALL]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is True and report["first_mismatch"] is None and report["steps_checked"] == 1
    assert report["diffusion_steps"] == [999] and report["nir_file"] == chip and report["run_config"] == "sim"
    assert report["lava_seconds_per_step"] > report["sim_seconds_per_step"] > 0 and report["lava_processes"] > 50
    assert report["counts_identical"] is True and report["first_count_mismatch"] is None
    assert len(report["sops_per_step"]) == 1 and report["sops_per_step"][0] > 0


@DIVERGING_CHAIN
@pytest.mark.lava
def test_deploy_exits_1_naming_the_first_spike_lava_and_the_simulator_disagree_on(checkpoint, tmp_path, capsys,
                                                                                   monkeypatch):
    chip = str(tmp_path / "net.nir")
    assert main(["compile", "--checkpoint", checkpoint, "--out", chip, *SMALL]) == 0
    read = ChipSimulator.from_file

    def read_a_tampered_copy(path, device="cpu"):
        # the simulator reads a copy whose first synapse is reversed; Lava does not
        copy = str(tmp_path / "tampered.nir")
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as h5:
            weight = h5["node/nodes/syn0000/weight"]
            weight[...] = -weight[...]
        seal(copy)  # as a compiler with a bug would write it
        return read(copy, device)

    monkeypatch.setattr(ChipSimulator, "from_file", staticmethod(read_a_tampered_copy))
    capsys.readouterr()
    assert main(["deploy", "--checkpoint", checkpoint, "--nir", chip, "--ddim-steps", "4", "--json"]) == 1
    first = json.loads(capsys.readouterr().out)["first_mismatch"]
    assert first["population"] == next(b for a, b in nir.read(chip).edges if a == "syn0000")
    assert (first["expected_backend"], first["actual_backend"]) == ("simulator", "lava")
    assert first["expected"] != first["actual"] and len(first["index"]) == 4


@DIVERGING_CHAIN
@pytest.mark.lava
def test_deploy_whole_chain_runs_a_ddim_chain_on_one_lava_graph_identical_to_the_simulator(checkpoint, tmp_path,
                                                                                          capsys):
    chip = str(tmp_path / "net.nir")
    assert main(["deploy", "--whole-chain", "--steps", "2", "--checkpoint", checkpoint, "--chip-out", chip, "--json",
                 *SMALL]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is True and report["image_identical"] is True and report["first_mismatch"] is None
    assert report["steps_checked"] == 2 and report["diffusion_steps"] == [999, 0]  # DDIM 2 of 1000: 999, then 0
    assert report["build_seconds"] > 0 and report["lava_seconds_per_step"] > report["sim_seconds_per_step"] > 0
    assert 0 < report["max_abs_diff_vs_float"] <= 2  # images in [-1, 1]; the chip is not the float model

    # eta 1: DDPM-like noise at every step but the last, drawn on the host from the seed for all three chains
    assert main(["deploy", "--whole-chain", "--steps", "3", "--eta", "1", "--checkpoint", checkpoint, "--nir", chip,
                 "--json"]) == 0
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["identical"] is True and noisy["image_identical"] is True and noisy["eta"] == 1.0


@DIVERGING_CHAIN
@pytest.mark.lava
def test_the_loihi2_profile_runs_a_step_and_a_chain_with_loihi2_process_types_only(checkpoint, tmp_path, capsys):
    from deploy.loihi2_profile import CHIP_TYPES

    chip = str(tmp_path / "net.nir")
    assert main(["deploy", "--profile", "loihi2", "--checkpoint", checkpoint, "--chip-out", chip, "--ddim-steps", "4",
                 "--json", *SMALL]) == 0
    step = json.loads(capsys.readouterr().out)
    assert step["identical"] is True and step["counts_identical"] is True and step["profile"] == "loihi2"
    # relays for the long skips (LIF, DelaySparse), Sparse for up-sampling; nothing of ours on the chip side
    assert set(step["chip_process_types"]) <= CHIP_TYPES and {"LIF", "Sparse", "DelaySparse"} <= set(
        step["chip_process_types"])
    assert step["host_process_types"] == ["FileSink", "RingBuffer"]
    assert main(["deploy", "--whole-chain", "--steps", "3", "--profile", "loihi2", "--checkpoint", checkpoint,
                 "--nir", chip, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["identical"] is True and chain["image_identical"] is True and chain["steps_checked"] == 3
    assert set(chain["chip_process_types"]) <= CHIP_TYPES  # the time embedding's bias written by the host
    assert chain["host_process_types"] == ["HostFeed", "WindowSink"]


@pytest.mark.parametrize("args, message", [
    (["deploy", "--run-config", "loihi2-hw", "--profile", "cpu"], "--run-config loihi2-hw runs the loihi2 profile"),
    (["sample", "--backend", "sim", "--profile", "loihi2"], "--profile chooses the process types of a Lava graph"),
])
def test_a_profile_that_cannot_run_there_exits_2(checkpoint, args, message, tmp_path, capsys):
    assert main([*args, "--checkpoint", checkpoint, "--out" if args[0] == "sample" else "--chip-out",
                 str(tmp_path / "x"), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@DIVERGING_CHAIN
@pytest.mark.lava
def test_sample_on_lava_writes_the_simulators_images(checkpoint, tmp_path):
    import numpy as np

    common = ["sample", "--checkpoint", checkpoint, "--sampler", "ddim", "--steps", "2", "--num-images", "1", *SMALL]
    assert main([*common, "--backend", "lava", "--out", str(tmp_path / "lava")]) == 0
    assert main([*common, "--backend", "sim", "--out", str(tmp_path / "sim")]) == 0
    assert (tmp_path / "lava" / "grid.png").exists()
    with np.load(tmp_path / "lava" / "samples.npz") as lava, np.load(tmp_path / "sim" / "samples.npz") as sim:
        assert lava["images"].shape == (1, 1, 32, 32) and np.array_equal(lava["images"], sim["images"])


def test_compiling_the_ann_twin_exits_2_with_the_reason(tmp_path, capsys):
    path = _checkpoint(str(tmp_path / "ann.pt"), ANNUNet(dataclasses.replace(TINY, kind="ann")))
    assert main(["compile", "--checkpoint", path, "--out", str(tmp_path / "net.nir"), *SMALL]) == 2
    assert "the compiler maps SpikingUNet models, got ANNUNet" in capsys.readouterr().err
    assert not (tmp_path / "net.nir").exists()


@DIVERGING_CHAIN
def test_sample_on_the_simulator_gives_the_same_images_in_both_timings(checkpoint, tmp_path):
    # Lava's timing and the zero-delay mode compute identical integers, so whole sampling chains agree.
    import numpy as np

    args = ["sample", "--checkpoint", checkpoint, "--backend", "sim", "--num-images", "2", "--steps", "3",
            "--batch-size", "2", *SMALL]
    images = {}
    for mode in ("zero_delay", "delayed"):
        out = str(tmp_path / mode)
        assert main([*args, "--sim-mode", mode, "--out", out]) == 0
        with np.load(f"{out}/samples.npz") as f:
            images[mode] = f["images"]
    assert images["zero_delay"].shape == (2, 1, 32, 32)
    assert np.array_equal(images["zero_delay"], images["delayed"])


@DIVERGING_CHAIN
def test_report_writes_markdown_plots_and_json(checkpoint, tmp_path, capsys):
    from toolchain.report import PLOTS, REPORT

    out = tmp_path / "report"
    assert main(["report", "--checkpoint", checkpoint, "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--ddim-steps", "4", *SMALL]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"report -> {out / REPORT}")
    text = (out / REPORT).read_text()
    for png in PLOTS.values():
        assert f"]({png})" in text, png  # the Markdown names every plot, beside it
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "## Verification ladder" in text and "identical spikes" in text and "## Loihi 2 resources" in text
    report = json.loads((out / "report.json").read_text())
    assert report["ladder"]["identical"] is True and len(report["energy"]["denoising_steps"]) == 2
    assert report["resources"]["populations"][-1]["name"] == "readout"
    assert "### Placement on chips" in text and report["placement"]["shared"]["system"] == "one Loihi 2 chip"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporary file
