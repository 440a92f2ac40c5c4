import os
import pickle

import pytest
import torch

from helpers import TINY
from sddpm.checkpoint import CheckpointError, infer_model_config, load_model, save_checkpoint
from sddpm.config import DiffusionConfig, ModelConfig
from sddpm.neuron import IF, LIF
from sddpm.unet import SpikingUNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(path, model, **extra):
    save_checkpoint(path, {"model_config": model.cfg.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                           "train_config": None, "step": 7, "model": model.state_dict(), "ema": None, **extra})


def test_round_trip_keeps_weights_and_configuration(tmp_path):
    torch.manual_seed(0)
    model = SpikingUNet(TINY)
    path = str(tmp_path / "m.pt")
    _save(path, model)
    loaded = load_model(path)
    assert loaded.model_config == TINY and loaded.step == 7 and loaded.source == "sddpm"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the atomic write left nothing behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable like any new file, not mkstemp's 0600


def test_official_checkpoint_loads_with_its_configuration_read_off_the_shapes(tmp_path):
    torch.manual_seed(0)
    official_cfg = ModelConfig(img_ch=3, ch=8, ch_mult=(1, 2, 2), num_res_blocks=2)
    net, ema = SpikingUNet(official_cfg), SpikingUNet(official_cfg)
    path = str(tmp_path / "official.pt")
    # The official training script saves these keys (main_SDDPM.py); DataParallel adds "module.".
    torch.save({"net_model": net.state_dict(),
                "ema_model": {f"module.{k}": v for k, v in ema.state_dict().items()},
                "step": 45000, "x_T": torch.randn(2, 3, 32, 32)}, path)
    assert infer_model_config(net.state_dict()) == official_cfg
    loaded = load_model(path)
    assert loaded.source == "official" and loaded.model_config == official_cfg and loaded.step == 45000
    assert torch.equal(loaded.model.state_dict()["conv.weight"], ema.state_dict()["conv.weight"])
    assert torch.equal(load_model(path, use_ema=False).model.state_dict()["conv.weight"],
                       net.state_dict()["conv.weight"])


def test_checkpoints_written_before_the_neuron_was_a_parameter_load_as_if():
    path = os.path.join(ROOT, "checkpoints", "mnist-sddpm-t4-step2000.pt")
    assert not {"neuron", "tau"} & set(torch.load(path, weights_only=True)["model_config"])
    loaded = load_model(path)
    assert loaded.model_config.neuron == "if"
    neurons = [m for m in loaded.model.modules() if isinstance(m, (IF, LIF))]
    assert neurons and all(type(m) is IF for m in neurons)


def test_lif_checkpoint_round_trip_keeps_the_neuron_and_its_output(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.to_dict(), "neuron": "lif", "tau": 3.0})
    model = SpikingUNet(cfg).eval()
    path = str(tmp_path / "lif.pt")
    _save(path, model)
    assert torch.load(path, weights_only=True)["model_config"]["neuron"] == "lif"
    loaded = load_model(path)
    assert loaded.model_config == cfg
    assert all(m.tau == 3.0 for m in loaded.model.modules() if isinstance(m, LIF))
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 900])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), model(x, t))


def test_truncated_file_is_named_corrupt(tmp_path):
    path = str(tmp_path / "m.pt")
    _save(path, SpikingUNet(TINY))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    path = str(tmp_path / "m.pt")
    other = SpikingUNet(TINY)
    state = other.state_dict()
    state["conv.weight"] = torch.zeros(16, 1, 3, 3)  # weights of a wider model under our config
    save_checkpoint(path, {"model_config": TINY.to_dict(), "diffusion_config": DiffusionConfig().to_dict(),
                           "step": 0, "model": state})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conv\.weight"):
        load_model(path)
    torch.save({"net_model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="missing 'time_embedding"):
        load_model(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_executes_code_from_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evil.pt")
    torch.save({"net_model": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path)
    assert not os.path.exists(tmp_path / "pwned")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=99), "format version 99"),
    (lambda d: d.pop("model"), "lacks the field 'model'"),
    (lambda d: d.update(format="other"), "not an SDDPM checkpoint"),
    (lambda d: d["model_config"].update(ch=-1), "invalid configuration"),
    (lambda d: d["model_config"].update(neuron="izhikevich"), "neuron must be one of if, lif"),
    (lambda d: d["model_config"].update(neuron="lif", tau=1.0), "tau must be a finite number > 1"),
])
def test_bad_metadata_is_named(tmp_path, mutate, message):
    path = str(tmp_path / "m.pt")
    _save(path, SpikingUNet(TINY))
    data = torch.load(path, weights_only=True)
    mutate(data)
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))
    path = str(tmp_path / "list.pt")
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_model(path)
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f)  # a plain pickle, not a torch zip archive
    with pytest.raises(CheckpointError):
        load_model(path)


def test_release_keeps_only_the_chosen_weights(tmp_path):
    from sddpm.checkpoint import release_checkpoint

    torch.manual_seed(0)
    raw, ema = SpikingUNet(TINY), SpikingUNet(TINY)
    src = str(tmp_path / "last.pt")
    _save(src, raw, ema=ema.state_dict(), optimizer={"state": {}, "param_groups": []})
    for use_ema, expected in [(True, ema), (False, raw)]:
        dst = str(tmp_path / f"small_{use_ema}.pt")
        assert release_checkpoint(src, dst, use_ema=use_ema)["weights"] == ("ema" if use_ema else "raw")
        assert "optimizer" not in torch.load(dst, weights_only=True)
        loaded = load_model(dst)
        assert loaded.step == 7
        assert torch.equal(loaded.model.state_dict()["conv.weight"], expected.state_dict()["conv.weight"])
