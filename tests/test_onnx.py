"""ONNX export of the float denoiser: onnxruntime against PyTorch (eps and every spike), dynamic batch,
self-describing metadata, broken and foreign files, atomic writes, the shipped model, `sddpm export`."""
import copy
import dataclasses
import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from chip_helpers import digits_batches, firing_tiny_model
from helpers import TINY, TINY_TRAIN, assert_close
from tolerances import ONNX_ATOL
from export.compiler import calibration_batches
from export.onnx_export import FORMAT, OnnxExportError, check_onnx, compare_onnx, export_onnx, load_onnx
from sddpm.checkpoint import load_model, save_checkpoint
from sddpm.config import DiffusionConfig, ModelConfig
from sddpm.data import load_images
from sddpm.neuron import IF, set_threshold_factor
from sddpm.schedule import NoiseSchedule
from sddpm.unet import ANNUNet, InputError
from toolchain.cli import main
from toolchain.paths import SHIPPED_CHECKPOINT


@pytest.fixture(scope="module")
def snn():
    return firing_tiny_model()


@pytest.fixture(scope="module")
def snn_file(snn, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    export_onnx(snn, path)
    return path


@pytest.fixture(scope="module")
def batch():
    return digits_batches(1, 16)[0]  # noisy digits, t spread over [0, 1000)


def _ann() -> ANNUNet:
    torch.manual_seed(0)
    model = ANNUNet(dataclasses.replace(TINY, kind="ann"))
    # The official init scales the tail conv by 1e-5: eps would be ~0 and compare trivially.
    nn.init.normal_(model.tail[-1].weight, std=0.1)
    return model.eval()


def test_tiny_snn_matches_pytorch_spike_for_spike(snn, snn_file, batch):
    x, t = batch
    report = compare_onnx(snn, snn_file, x, t)
    assert report.flips == () and report.ok
    # IF neurons per image, by population (channels x pixels): head 8x1024; down res block 2 x 8x1024;
    # down-sample 8x1024; res block 8->16 at 16x16: (8 + 16)x256; middle 4 x 16x256; up res blocks
    # (32 + 16)x256 and (24 + 16)x256; up-sample 16x256; res blocks at 32x32 (24 + 8)x1024 and (16 + 8)x1024:
    # 139,264 neurons, times T = 2 steps
    assert report.spikes_compared == 278_528
    assert report.max_abs_diff < ONNX_ATOL
    assert check_onnx(snn, snn_file, x, t) == report.max_abs_diff
    with torch.no_grad():
        assert float(snn(x, t).abs().max()) > 1  # eps is far from 0, so the tolerance is not met trivially


def test_a_lif_model_matches_pytorch_spike_for_spike(batch, tmp_path):
    # LIF unrolled as `lif_step` (h = v + (x - v) / tau), traced op by op like IF
    model, path = firing_tiny_model(neuron="lif"), str(tmp_path / "lif.onnx")
    export_onnx(model, path)
    report = compare_onnx(model, path, *batch)
    assert report.flips == () and report.ok and report.spikes_compared == 278_528


def test_the_export_copy_computes_the_model_bit_for_bit_and_leaves_it_alone(snn, batch, tmp_path):
    from export.onnx_export import _export_copy

    x, t = batch
    model = copy.deepcopy(snn).train()
    modules = [type(m) for m in model.modules()]
    graph = _export_copy(model)
    assert model.training and not graph.training
    with torch.no_grad():
        assert torch.equal(graph(x, t), model.eval()(x, t))  # the unrolled if_step gives _if_scan's spikes exactly
    model.train()
    export_onnx(model, str(tmp_path / "m.onnx"))
    assert model.training and [type(m) for m in model.modules()] == modules and IF in modules


def test_ann_twin_matches_pytorch(batch, tmp_path):
    x, t = batch
    model, path = _ann(), str(tmp_path / "ann.onnx")
    export_onnx(model, path)
    report = compare_onnx(model, path, x, t)
    assert report.spikes_compared == 0 and report.flips == ()
    assert report.max_abs_diff < ONNX_ATOL
    meta = load_onnx(path).metadata
    assert meta["snn_steps"] == "0" and json.loads(meta["if_thresholds"]) == []


def test_threshold_factor_is_a_constant_of_the_graph_and_named_in_it(snn, snn_file, batch, tmp_path):
    x, t = batch
    guided, path = copy.deepcopy(snn), str(tmp_path / "guided.onnx")
    set_threshold_factor(guided, 0.997)
    export_onnx(guided, path)
    assert json.loads(load_onnx(path).metadata["if_thresholds"]) == [0.997]
    assert compare_onnx(guided, path, x, t).max_abs_diff < ONNX_ATOL
    # and it is not the trained network: some spikes, hence eps, change
    assert float((load_onnx(path)(x, t) - load_onnx(snn_file)(x, t)).abs().max()) > ONNX_ATOL


def test_dynamic_batch(snn, snn_file, batch):
    x, t = batch
    denoiser = load_onnx(snn_file)  # traced with batch 2
    for n in (5, 1):
        with torch.no_grad():
            assert_close(denoiser(x[:n], t[:n]), snn(x[:n], t[:n]), atol=ONNX_ATOL, what=f"batch {n}")


def test_the_file_explains_itself(snn_file):
    proto = onnx.load(snn_file)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == FORMAT and meta["format_version"] == "1" and meta["snn_steps"] == "2"
    assert ModelConfig.from_dict(json.loads(meta["model_config"])) == TINY
    assert json.loads(meta["if_thresholds"]) == [1.0]
    assert "diffusion step" in meta["inputs"] and "predicted noise" in meta["outputs"]
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.input, *proto.graph.output]}
    assert shapes == {"x": ["batch", 1, 32, 32], "t": ["batch"], "eps": ["batch", 1, 32, 32]}
    assert load_onnx(snn_file).config == TINY


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "random bytes"])
def test_broken_files_are_named(snn_file, tmp_path, damage):
    path = tmp_path / "broken.onnx"
    data = open(snn_file, "rb").read()
    contents = {"empty": b"", "truncated": data[: len(data) // 2],
                "random bytes": np.random.default_rng(0).bytes(4096)}
    if damage != "missing":
        path.write_bytes(contents[damage])
    expected = "not found" if damage == "missing" else "not a readable ONNX model"
    with pytest.raises(OnnxExportError, match=expected):
        load_onnx(str(path))


def _linear_onnx(path: str, metadata: dict[str, str] | None = None) -> str:
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter's notice, not silenced here
        torch.onnx.export(nn.Linear(4, 2), (torch.zeros(1, 4),), path, input_names=["x"], output_names=["eps"],
                          dynamo=False)
    if metadata:
        proto = onnx.load(path)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, path)
    return path


def test_an_onnx_file_of_another_model_is_refused(snn_file, tmp_path):
    with pytest.raises(OnnxExportError, match="not an SDDPM denoiser: its metadata 'format' is None"):
        load_onnx(_linear_onnx(str(tmp_path / "linear.onnx")))
    # our metadata on a graph that is not ours: its inputs give it away
    forged = _linear_onnx(str(tmp_path / "forged.onnx"), load_onnx(snn_file).metadata)
    with pytest.raises(OnnxExportError, match=r"do not match .* found input x tensor\(float\) \[1, 4\]"):
        load_onnx(forged)
    future = _linear_onnx(str(tmp_path / "future.onnx"), {**load_onnx(snn_file).metadata, "format_version": "2"})
    with pytest.raises(OnnxExportError, match="version '2' is not supported"):
        load_onnx(future)


def test_wrong_inputs_are_named(snn_file, batch):
    x, t = batch
    denoiser = load_onnx(snn_file)
    with pytest.raises(InputError, match=r"x must have shape \[B, 1, 32, 32\], got \[16, 1, 16, 16\]"):
        denoiser(x[:, :, :16, :16], t)
    with pytest.raises(InputError, match=r"t must have shape \[16\]"):
        denoiser(x, t[:3])
    with pytest.raises(InputError, match=r"must lie in \[0, 1000\)"):
        denoiser(x, t + 1000)


def test_a_file_of_another_configuration_is_not_compared(snn_file, batch):
    other = ANNUNet(dataclasses.replace(TINY, kind="ann"))
    with pytest.raises(OnnxExportError, match="exported from another model configuration"):
        check_onnx(other, snn_file, *batch)


def test_the_comparison_catches_a_wrong_graph(snn, batch, tmp_path):
    # the same configuration with other weights: spikes differ by whole membranes, not ties
    path = str(tmp_path / "other.onnx")
    export_onnx(firing_tiny_model(seed=1), path)
    report = compare_onnx(snn, path, *batch)
    assert not report.ok and report.flips and not any(f.is_tie for f in report.flips)


def test_an_interrupted_export_leaves_no_file_and_keeps_the_old_one(snn, snn_file, tmp_path, monkeypatch):
    def half_written(model, args, f, **kwargs):
        with open(f, "wb") as out:
            out.write(b"\x08\x07partial")
        raise RuntimeError("killed mid-export")

    old = tmp_path / "model.onnx"
    old.write_bytes(open(snn_file, "rb").read())
    monkeypatch.setattr(torch.onnx, "export", half_written)
    for path in (old, tmp_path / "new.onnx"):
        with pytest.raises(RuntimeError, match="killed mid-export"):
            export_onnx(snn, str(path))
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no new file, no temporary file left behind
    assert old.read_bytes() == open(snn_file, "rb").read()


def test_the_shipped_model(tmp_path):
    # A trained network puts membranes close to the threshold: where float32 rounding puts one on the other
    # side of it, a spike flips (in about 4% of noisy MNIST images: 8 of 192 measured; PyTorch itself flips
    # such spikes between batch sizes 16 and 1). compare_onnx finds each image's first differing spike and
    # checks that its two membranes are a float32 tie; eps must agree on every other image.
    loaded = load_model(SHIPPED_CHECKPOINT)
    path = str(tmp_path / "mnist-sddpm.onnx")
    export_onnx(loaded.model, path)
    ((x, t),) = calibration_batches(load_images("mnist"), NoiseSchedule.linear(loaded.diffusion_config), 1, 16)
    report = compare_onnx(loaded.model, path, x, t)
    assert report.ok, report
    assert report.same_spikes_max_abs_diff < ONNX_ATOL
    assert len(report.flips) <= len(x) // 4  # a wrong graph flips spikes in every image


def _checkpoint(path: str, model) -> str:
    # TINY_TRAIN names the dataset, so export checks on digits without --dataset
    save_checkpoint(path, {"model_config": model.cfg.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                           "train_config": TINY_TRAIN.to_dict(), "step": 0, "model": model.state_dict()})
    return path


def test_cli_export_writes_the_file_and_reports_the_check(snn, tmp_path, capsys):
    checkpoint, out = _checkpoint(str(tmp_path / "tiny.pt"), snn), str(tmp_path / "tiny.onnx")
    assert main(["export", "--format", "onnx", "--checkpoint", checkpoint, "--out", out, "--check-images", "4",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["file"] == out and report["opset"] == 17 and report["bytes"] > 0
    assert (report["dataset"], report["images"], report["spike_flips"]) == ("digits", 4, [])
    assert report["same_spikes_max_abs_diff"] < report["tolerance"]
    assert load_onnx(out).config == TINY


def test_cli_export_exits_1_when_the_file_disagrees(snn, tmp_path, capsys, monkeypatch):
    real_export = torch.onnx.export

    def export_a_changed_model(model, *args, **kwargs):
        with torch.no_grad():
            model.tail_conv.bias += 0.01  # after the last spikes: eps moves by ~0.01, every spike stays
        return real_export(model, *args, **kwargs)

    checkpoint, out = _checkpoint(str(tmp_path / "tiny.pt"), snn), str(tmp_path / "tiny.onnx")
    monkeypatch.setattr(torch.onnx, "export", export_a_changed_model)
    assert main(["export", "--format", "onnx", "--checkpoint", checkpoint, "--out", out, "--check-images", "4",
                 "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["same_spikes_max_abs_diff"] > report["tolerance"]
