import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import TINY, TINY_TRAIN
from sddpm.checkpoint import load_model, read_checkpoint
from sddpm.training import ema_decay_at, ema_update, train, warmup_factor
from sddpm.unet import build_model

TINY_ARGS = ["--dataset", "digits", "--preset", "mnist-small", "--ch", "8", "--ch-mult", "1,2",
             "--num-res-blocks", "1", "--snn-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--warmup", "2",
             "--ema-decay", "0.9", "--sample-every", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_ema_update_by_hand():
    model, ema = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
        model.running_mean.fill_(3.0)
    ema_update(ema, model, decay=0.9)  # 0.9 * 0 + 0.1 * 1
    assert ema.weight.tolist() == pytest.approx([0.1, 0.1])
    ema_update(ema, model, decay=0.9)  # 0.9 * 0.1 + 0.1 * 1 = 0.19
    assert ema.weight.tolist() == pytest.approx([0.19, 0.19])
    # float buffers are averaged like the weights: 0.9 * (0.9 * 0 + 0.1 * 3) + 0.1 * 3 = 0.57
    assert ema.running_mean.tolist() == pytest.approx([0.57, 0.57])
    assert int(ema.num_batches_tracked) == int(model.num_batches_tracked)  # integer buffers are copied


def test_ema_decay_warms_up():
    # (1 + s) / (10 + s): 0.1 at step 0, 0.5 at step 8, then capped by the configured decay
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.999) == pytest.approx(0.5)
    assert ema_decay_at(100_000, 0.999) == 0.999


def test_warmup_is_linear_then_flat():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_training_writes_checkpoint_log_and_a_moving_ema(tmp_path):
    path = train(str(tmp_path), TINY, TINY_TRAIN, progress=False)
    data = read_checkpoint(path)
    assert data["step"] == 4 and data["model_config"] == TINY.to_dict()
    torch.manual_seed(TINY_TRAIN.seed)
    init = build_model(TINY).state_dict()
    key = "downblocks.0.conv1.weight"
    assert not torch.equal(data["ema"][key], init[key])  # the EMA moved from the initial weights
    assert not torch.equal(data["ema"][key], data["model"][key])  # and lags the raw weights
    lines = [json.loads(line) for line in open(tmp_path / "loss.jsonl")]
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in lines)
    assert load_model(path).step == 4
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_lif_training_writes_a_lif_checkpoint(tmp_path):
    from sddpm.config import ModelConfig
    from sddpm.neuron import LIF

    cfg = ModelConfig(**{**TINY.to_dict(), "neuron": "lif"})
    path = train(str(tmp_path), cfg, TINY_TRAIN, progress=False)
    assert read_checkpoint(path)["model_config"] == cfg.to_dict()
    assert all(np.isfinite(json.loads(line)["loss"]) for line in open(tmp_path / "loss.jsonl"))
    loaded = load_model(path)
    assert loaded.model_config.neuron == "lif" and any(isinstance(m, LIF) for m in loaded.model.modules())


def test_parsed_train_options_choose_the_neuron():
    from toolchain.parser import build_parser, model_config_of

    def config(*options):
        return model_config_of(build_parser().parse_args(["train", "RUN", *TINY_ARGS, *options]))

    assert (config().neuron, config().tau) == ("if", 2.0)
    assert (config("--neuron", "lif").neuron, config("--neuron", "lif").tau) == ("lif", 2.0)
    assert config("--neuron", "lif", "--tau", "4").tau == 4.0


def _train_cmd(run_dir, steps):
    return [sys.executable, "-m", "toolchain", "train", str(run_dir), *TINY_ARGS, "--steps", str(steps),
            "--ckpt-every", "1"]


def test_resume_after_kill_reaches_the_uninterrupted_state(tmp_path):
    steps = 8
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight, steps), check=True, env=ENV, capture_output=True)

    proc = subprocess.Popen(_train_cmd(killed, steps), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(killed / "last.pt") and read_checkpoint(str(killed / "last.pt"))["step"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = read_checkpoint(str(killed / "last.pt"))["step"]
    assert stopped_at < steps, "the run finished before it could be killed"
    subprocess.run(_train_cmd(killed, steps), check=True, env=ENV, capture_output=True)

    a, b = read_checkpoint(str(straight / "last.pt")), read_checkpoint(str(killed / "last.pt"))
    assert a["step"] == b["step"] == steps
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resuming from step {stopped_at}"
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
    assert (straight / "loss.jsonl").read_text() == (killed / "loss.jsonl").read_text()


def _run(cmd):
    """Run a command; on failure, fail with its stderr (which subprocess.CalledProcessError would not show)."""
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr[-4000:]}"


def test_two_process_ddp_training_and_sampling_on_gloo(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run_dir = tmp_path / "ddp"
    _run([*torchrun, "-m", "toolchain", "train", str(run_dir), *TINY_ARGS, "--steps", "2", "--ckpt-every", "2"])
    ckpt = str(run_dir / "last.pt")
    assert read_checkpoint(ckpt)["step"] == 2
    # Batch b always starts from seed + b, so 2 ranks produce exactly the images of 1 process.
    sample = ["-m", "toolchain", "sample", "--checkpoint", ckpt, "--num-images", "6", "--batch-size", "2", "--steps", "3"]
    _run([*torchrun, *sample, "--out", str(tmp_path / "two")])
    _run([sys.executable, *sample, "--out", str(tmp_path / "one")])
    two = np.load(tmp_path / "two" / "samples.npz")["images"]
    one = np.load(tmp_path / "one" / "samples.npz")["images"]
    assert two.shape == (6, 1, 32, 32) and np.array_equal(one, two)
