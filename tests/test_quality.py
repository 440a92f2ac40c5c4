import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import TINY
from sddpm import fid
from sddpm.checkpoint import save_checkpoint
from sddpm.config import DiffusionConfig
from sddpm.unet import SpikingUNet
from toolchain import quality
from toolchain.cli import main
from toolchain.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_row(tmp_path, monkeypatch):
    """A quality row on a tiny untrained checkpoint and scikit-learn's digits; Inception replaced by four
    pixels, the reference shrunk to 20 images, so that the row's two real commands run in a second."""
    torch.manual_seed(0)
    checkpoint = str(tmp_path / "tiny.pt")
    save_checkpoint(checkpoint, {"model_config": TINY.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                                 "step": 0, "model": SpikingUNet(TINY).state_dict()})
    monkeypatch.setattr(fid, "inception_features",
                        lambda images, batch_size=50, progress=True: images[:, 0, 16, 12:16].double().numpy())
    monkeypatch.setattr(quality, "SAMPLE_BATCH", 3)
    monkeypatch.chdir(tmp_path)  # the row's FID cache is relative to the working directory
    return quality.Row("tiny-ddim2", "MNIST", "tiny", checkpoint, "digits", "DDIM 2",
                       ("--sampler", "ddim", "--steps", "2"), 6, ref_count=20)


def test_a_row_samples_scores_and_draws_a_grid_once(tmp_path, tiny_row):
    calls = []

    def run(argv):
        calls.append(argv[0])
        return main(argv)

    assert quality.run_rows([tiny_row], "samples", "results", "grids", run) == []
    result = json.loads((tmp_path / "results" / "tiny-ddim2.json").read_text())
    assert result["samples"] == 6 and result["ref_count"] == 20 and result["dataset"] == "digits"
    assert result["fid"] > 0 and result["real_vs_real_fid"] > 0
    assert result["fid_bootstrap_rounds"] == quality.BOOTSTRAP and result["fid_bootstrap_std"] > 0
    # the images are kept beside the result, the very ones sampled
    assert (tmp_path / "results" / "samples" / "tiny-ddim2.npz").read_bytes() == \
        (tmp_path / "samples" / "tiny-ddim2" / "samples.npz").read_bytes()
    # 6 images, 3 per row (ceil(sqrt(6))): 3 x 2 images of 32 pixels with 2-pixel padding
    assert Image.open(tmp_path / "grids" / "tiny-ddim2.png").size == (2 + 3 * 34, 2 + 2 * 34)
    assert calls == ["sample", "fid"]

    assert quality.run_rows([tiny_row], "samples", "results", "grids", run) == []  # done rows are skipped
    assert calls == ["sample", "fid"]

    # a run killed after sampling only scores again
    (tmp_path / "results" / "tiny-ddim2.json").unlink()
    assert quality.run_rows([tiny_row], "samples", "results", "grids", run) == []
    assert calls == ["sample", "fid", "fid"]
    assert json.loads((tmp_path / "results" / "tiny-ddim2.json").read_text()) == result

    # kept images are scored again without sampling, even when the sampling folder is gone
    (tmp_path / "results" / "tiny-ddim2.json").unlink()
    (tmp_path / "samples" / "tiny-ddim2" / "samples.npz").unlink()
    assert quality.run_rows([tiny_row], "samples", "results", "grids", run) == []
    assert calls == ["sample", "fid", "fid", "fid"]


def test_a_result_under_another_reference_count_is_scored_again_from_its_kept_images(tmp_path, tiny_row):
    calls = []

    def run(argv):
        calls.append(argv[0])
        return main(argv)

    assert quality.run_rows([tiny_row], "samples", "results", "grids", run) == []
    more = dataclasses.replace(tiny_row, ref_count=30)  # the protocol changed: 30 reference images, not 20
    assert quality.run_rows([more], "samples", "results", "grids", run) == []
    assert calls == ["sample", "fid", "fid"]
    assert json.loads((tmp_path / "results" / "tiny-ddim2.json").read_text())["ref_count"] == 30


def test_a_failing_command_fails_its_row_only(tiny_row):
    broken = quality.Row("broken", "MNIST", "missing", "missing.pt", "digits", "DDIM 2", (), 6)
    assert quality.run_rows([broken, tiny_row], "samples", "results", "grids", main) == [broken]
    assert quality.load_result(tiny_row, "results") is not None


def test_rows_are_selected_by_pattern_and_unknown_names_are_refused():
    assert [r.name for r in quality.select(["mnist-t*-ddim100"])] == ["mnist-t4-step2000-ddim100",
                                                                   "mnist-t8-step2000-ddim100"]
    assert len(quality.select([])) == len(quality.ROWS)
    with pytest.raises(UsageError, match="no quality row matches 'cifar-\\*'"):
        quality.select(["cifar-*"])


def test_the_commands_of_every_row_parse():
    from toolchain.cli import build_parser

    parser = build_parser()
    for row in quality.ROWS:
        for argv in (row.sample_argv("runs/quality"), row.fid_argv("docs/quality")):
            parser.parse_args(argv)
    assert len({row.name for row in quality.ROWS}) == len(quality.ROWS)


def test_markdown_tables_show_results_and_borrowed_rows(tmp_path):
    (tmp_path / "mnist-sddpm-ddim50.json").write_text(json.dumps({"fid": 123.45, "real_vs_real_fid": 15.56}))
    text = quality.markdown(str(tmp_path), "docs/img/quality")
    # a row sampled before rows kept their images: still scored against the earlier 1,000 reference images
    row = ("| SDDPM, T = 4, step 13,000 | our DDIM 50, eta 0, final image clipped | 500 | 1,000 | 123.5 |  | 15.6 |  | "
           '<a href="docs/img/quality/mnist-sddpm-ddim50.png"><img src="docs/img/quality/mnist-sddpm-ddim50.png" '
           'width="128" alt="mnist-sddpm-ddim50"></a> | `sddpm quality mnist-sddpm-ddim50` |')
    # its own MNIST table and, borrowed, the threshold table (as the factor-1 baseline) and the neuron table (the IF
    # beside the LIF)
    assert text.count(row) == 3
    assert ("| paper's SDDPM (ch 128, T = 4; SDM Tab. 1) | DDPM 1000 | 50,000 | all 60,000 | 21.38 | | | | | |"
            in text)
    assert "`sddpm quality mnist-ann-ddpm`" in text and "| not run |" in text
    (tmp_path / "mnist-ann-ddim100.json").write_text(json.dumps(
        {"fid": 40.04, "real_vs_real_fid": 15.56, "fid_bootstrap_std": 1.96, "flat_or_washed_out": 1}))
    assert "| 500 | 10,000 | 40.0 | ±2.0 | 15.6 | 1 |" in quality.markdown(str(tmp_path), "docs/img/quality")
    # a result scored under an earlier protocol says so until the row is scored again
    (tmp_path / "mnist-ann-ddim100.json").write_text(json.dumps({"fid": 40.04, "ref_count": 1000}))
    assert "| 500 | 1,000 | 40.0 |" in quality.markdown(str(tmp_path), "docs/img/quality")


def test_the_readme_block_is_replaced_between_its_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{quality.BEGIN_MARK}\nold table\n{quality.END_MARK}\nafter\n")
    quality.update_readme(str(readme), "new table\n")
    assert readme.read_text() == f"# title\n{quality.BEGIN_MARK}\nnew table\n{quality.END_MARK}\nafter\n"
    readme.write_text("# no markers\n")
    with pytest.raises(UsageError, match="has no quality-table block"):
        quality.update_readme(str(readme), "new table\n")


def test_every_row_samples_a_shipped_checkpoint_that_is_what_the_table_says():
    from sddpm.checkpoint import read_checkpoint

    for checkpoint in sorted({row.checkpoint for row in quality.ROWS}):
        state = read_checkpoint(str(REPO / checkpoint))
        model, train = state["model_config"], state["train_config"]
        for row in (r for r in quality.ROWS if r.checkpoint == checkpoint):
            assert train["dataset"] == row.dataset, row.name
            kind = "ann" if row.model.startswith("ANN") else "diffusers" if "diffusers" in row.model else "snn"
            assert model["kind"] == kind, row.name
            if model["kind"] == "snn":
                assert f"T = {model['snn_steps']}," in row.model, row.name
            assert f"step {state['step']:,}" in row.model, row.name
            assert train["total_steps"] == state["step"] and train["batch_size"] == 32, row.name


def test_every_ddim_row_names_its_eta_so_the_default_sampler_changes_no_row():
    for row in quality.ROWS:
        if row.options[:2] == ("--sampler", "ddim"):
            assert "--eta" in row.options, row.name
            eta = float(row.options[row.options.index("--eta") + 1])
            assert f"eta {eta:g}" in row.sampler, row.name


def test_the_fastest_good_sampler_is_the_fewest_calls_within_two_spreads_of_the_best():
    # best: (100, 1) at FID 50.0 +- 2.0, so the bound is 50 + 2 * 2 = 54: (50, 1) at 53.9 and (50, 0.5) at 52.0 are
    # in, (25, 1) at 54.1 is not; of the two 50-step samplers the lower FID, eta 0.5
    results = {(100, 1.0): {"fid": 50.0, "fid_bootstrap_std": 2.0}, (50, 1.0): {"fid": 53.9},
               (50, 0.5): {"fid": 52.0}, (25, 1.0): {"fid": 54.1}, (10, 0.0): {"fid": 180.0}}
    assert quality.fastest_good_sampler(results) == (50, 0.5)
    assert quality.fastest_good_sampler(results, spreads=0.0) == (100, 1.0)


def test_sddpm_sample_defaults_to_the_sampler_the_sweep_chose():
    from sddpm.config import DEFAULT_DDIM_STEPS, DEFAULT_ETA

    shipped = quality.sweep_results(str(REPO / "docs" / "quality"))["mnist-sddpm-step40000"]
    assert set(shipped) == {(s, e) for s in quality.SWEEP_STEPS for e in quality.SWEEP_ETAS}, "the sweep is incomplete"
    assert quality.fastest_good_sampler(shipped) == (DEFAULT_DDIM_STEPS, DEFAULT_ETA)


def test_the_sweep_plot_is_drawn_from_the_results(tmp_path):
    path = quality.plot_sweep(str(REPO / "docs" / "quality"), str(tmp_path / "sweep.png"))
    assert Image.open(path).size[0] > Image.open(path).size[1] > 300
