import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY
from sddpm.checkpoint import save_checkpoint
from toolchain.cli import build_parser, main
from sddpm.config import DiffusionConfig
from sddpm.unet import SpikingUNet


@pytest.mark.parametrize("command, words", [
    ([], ["train", "sample", "fid", "quality", "demo", "torchrun"]),
    (["train"], ["resumes", "--snn-steps", "--ema-decay", "--warmup", "--neuron", "integrate-and-fire",
                 "leaky integrate-and-fire", "--tau"]),
    (["sample"], ["grid.png", "--threshold-factor", "--sampler", "--eta"]),
    (["fid"], ["Inception", "--ref-count", "--real-baseline", "--save"]),
    (["quality"], ["resumes", "--markdown", "--update-readme", "fashion-*"]),
])
def test_help_explains_each_command(capsys, command, words):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in words:
        assert word in text, word


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "tiny.pt")
    save_checkpoint(path, {"model_config": TINY.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                           "step": 0, "model": SpikingUNet(TINY).state_dict()})
    return path


def test_sample_writes_a_grid_and_arrays(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", tiny_checkpoint, "--out", str(out), "--num-images", "4",
                 "--steps", "2", "--threshold-factor", "0.997"]) == 0
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (4, 1, 32, 32) and images.dtype == np.uint8
    # 2 x 2 grid of 32-pixel images with 2-pixel padding: 2 + 2 * (32 + 2) = 70
    assert Image.open(out / "grid.png").size == (70, 70)


@pytest.mark.parametrize("argv, message", [
    (["train", "RUN", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "RUN", "--dataset", "digits", "--tau", "3"], "--tau is the LIF time constant"),
    (["train", "RUN", "--dataset", "digits", "--kind", "ann", "--neuron", "lif"], "needs kind 'snn'"),
    (["sample", "--checkpoint", "missing.pt"], "checkpoint not found"),
])
def test_errors_exit_2_with_the_problem_named(tmp_path, capsys, tiny_checkpoint, argv, message):
    argv = [str(tmp_path / "run") if a == "RUN" else tiny_checkpoint if a == "CKPT" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "sample" else argv) == 2
    assert message in capsys.readouterr().err


def test_demo_samples_the_shipped_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--num-images", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # --json: one object, nothing else on stdout
    assert result["checkpoint"].endswith("checkpoints/mnist-sddpm.pt") and result["kind"] == "snn"
    assert Image.open(result["grid"]).size == (70, 70)  # 4 images of 32x32 in a 2x2 grid, 2-pixel borders
    # the ladder on the demo's 3 denoising steps: the simulator identical to the quantized reference
    ladder = result["ladder"]
    assert ladder["identical"] and ladder["steps_checked"] == 3 and ladder["first_mismatch"] is None
    assert result["report"] == str(tmp_path / "report.md") and (tmp_path / "energy.png").exists()
    # the interchange files, each read back and checked against its source
    assert [(e["format"], e["ok"]) for e in result["exports"]] == [("onnx", True), ("nir-float", True)]
    # one denoising step on Lava, identical to the simulator in spikes, currents and counts
    lava = result["lava"]
    assert lava["identical"] and lava["counts_identical"] and lava["steps_checked"] == 1
    assert {"network.nir", "denoiser.onnx", "float.nir"} <= set(os.listdir(tmp_path))


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    import toolchain.cli as cli
    from simulators.errors import SimulatorError

    def fails(error):
        def command(args):
            raise error
        return command

    # a missing file (OSError) and every package's base: one line naming the problem, exit status 2
    for error in (FileNotFoundError("no such file: x.nir"), SimulatorError("timing broken")):
        monkeypatch.setitem(cli.COMMANDS, "compile", fails(error))
        assert main(["compile"]) == 2
        err = capsys.readouterr().err
        assert err == f"sddpm compile: error: {error}\n"
        with pytest.raises(type(error)):  # --debug shows the traceback
            main(["--debug", "compile"])
    # an error no package raised on purpose is a bug: it is not dressed up as a user error
    monkeypatch.setitem(cli.COMMANDS, "compile", fails(ValueError("internal")))
    with pytest.raises(ValueError, match="internal"):
        main(["compile"])


def test_main_leaves_the_warning_display_as_it_found_it(tiny_checkpoint, tmp_path):
    import warnings

    before = warnings.showwarning
    assert main(["sample", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path), "--num-images", "1",
                 "--steps", "1"]) == 0
    assert warnings.showwarning is before


def test_every_error_class_of_the_packages_derives_from_its_package_base():
    import importlib
    import pkgutil

    from toolchain.errors import USER_ERRORS

    wrong = []
    for package in ("sddpm", "export", "simulators", "deploy", "toolchain"):
        for info in pkgutil.iter_modules([os.path.join(os.path.dirname(os.path.dirname(__file__)), package)]):
            if info.name == "__main__":
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            for name, value in vars(module).items():
                if (isinstance(value, type) and issubclass(value, Exception) and not issubclass(value, Warning)
                        and value.__module__ == module.__name__
                        and not issubclass(value, USER_ERRORS)):
                    wrong.append(f"{module.__name__}.{name}")
    assert wrong == []
