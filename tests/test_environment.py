"""The pinned environment works: lava-dl's netx imports, Lava's fixed-point CPU simulator runs and
matches the fixed-point equations (docs/lava-fixed-point.md sections 2.3 and 3), torch/torchvision run.

These guard `make venv` (requirements/*.txt and tools/patch_lava.py) and stay fast (seconds).
"""
import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.lava
def test_lava_dl_netx_imports():
    # netx -> slayer -> object_detection pulls in torchvision, matplotlib, cv2 and PIL,
    # and the Lava compiler imports lava/magma/compiler/var_model.py (patched for Python 3.11).
    import lava.lib.dl.netx  # noqa: F401
    import lava.magma.compiler.var_model  # noqa: F401


@pytest.mark.lava
def test_lava_imports_after_multiprocessing_context_is_in_use():
    # Unpatched, Lava's `mp.set_start_method('fork')` raises "context has already been set" once
    # anything (here a tqdm bar, which creates a multiprocessing RLock) has used the default context.
    # A fresh interpreter, so that the result does not depend on the order of the tests.
    code = ("import multiprocessing, tqdm\n"
            "for _ in tqdm.tqdm(range(1), disable=True): pass\n"
            "assert multiprocessing.get_start_method(allow_none=True) is not None\n"
            "import lava.magma.runtime.runtime\n"
            "assert multiprocessing.get_start_method() == 'fork'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# Hand-derived expectation for test_lava_fixed_pt_integrate_and_fire.
#
# Graph: RingBuffer source (2 binary inputs) -> Dense(W) -> LIF(3) -> RingBuffer sink, 5 steps.
# LIF: du = 4095, dv = 0, vth = 10, bias_mant = [0, 0, 5], bias_exp = 6.
# Fixed-point LIF per step (docs/lava-fixed-point.md section 2.3):
#   u = rz(u * (4096 - (du + 1)), 12) + (a << 6)  = 0 + 64 a          (du = 4095: no current memory)
#   v = rz(v * (4096 - dv), 12) + u + bias        = v + 64 a + bias   (dv = 0: integrate-and-fire)
#   bias = bias_mant << bias_exp = [0, 0, 320];   spike iff v > vth << 6 = 640 (strict); then v = 0.
# Dense: W = [[8, 2], [-6, 6], [2, 0]] has mixed signs, so it is clipped to [-256, 255] and truncated
# to even values (all already even: unchanged). It sends the buffer of the previous step first, so
#   a[1] = 0,  a[t] = W @ s_in[t - 1].
# Input s_in[t] (columns t = 1..5): n0 = 1 1 0 1 0, n1 = 0 1 1 0 0.
#   W @ (1,0) = (8, -6, 2);  W @ (1,1) = (10, 0, 2);  W @ (0,1) = (2, 6, 0)
#   a[1] = (0, 0, 0), a[2] = (8, -6, 2), a[3] = (10, 0, 2), a[4] = (2, 6, 0), a[5] = (8, -6, 2)
# Neuron 0 (bias 0):   v = 0, 512, 1152 > 640 -> spike at t=3, v=0, then 128, 128 + 512 = 640
#                      (640 is NOT > 640: no spike at t=5, tests the strict comparison).
# Neuron 1 (bias 0):   v = 0, -384, -384, 0, -384 (never spikes; negative v is kept).
# Neuron 2 (bias 320): v = 320, 320 + 128 + 320 = 768 -> spike at t=2, v=0; 0 + 128 + 320 = 448;
#                      448 + 0 + 320 = 768 -> spike at t=4, v=0; 0 + 128 + 320 = 448.
# After step 5: u = 64 * a[5] = (512, -384, 128) and v = (640, -384, 448).
# The sink is connected straight to s_out (no synapse, no delay): column t-1 holds the spikes of step t.
W = np.array([[8, 2], [-6, 6], [2, 0]], dtype=np.int32)
S_IN = np.array([[1, 1, 0, 1, 0],
                 [0, 1, 1, 0, 0]], dtype=np.int32)
EXPECTED_U = np.array([512, -384, 128])
EXPECTED_V = np.array([640, -384, 448])
EXPECTED_SPIKES = np.array([[0, 0, 1, 0, 0],
                            [0, 0, 0, 0, 0],
                            [0, 1, 0, 1, 0]])


@pytest.mark.lava
def test_lava_fixed_pt_integrate_and_fire():
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    steps = S_IN.shape[1]
    source = Source(data=S_IN)
    dense = Dense(weights=W)
    lif = LIF(shape=(3,), du=4095, dv=0, vth=10,
              bias_mant=np.array([0, 0, 5]), bias_exp=6)
    sink = Sink(shape=(3,), buffer=steps)
    source.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    lif.s_out.connect(sink.a_in)
    try:
        lif.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        # Small arrays only: Var.get() sends every element as its own message.
        u, v, spikes = lif.u.get(), lif.v.get(), sink.data.get()
    finally:
        lif.stop()
    np.testing.assert_array_equal(spikes.astype(np.int64), EXPECTED_SPIKES)
    np.testing.assert_array_equal(u.astype(np.int64), EXPECTED_U)
    np.testing.assert_array_equal(v.astype(np.int64), EXPECTED_V)


def test_torch_and_torchvision_run_on_cpu():
    import torch
    import torch.nn.functional as F
    import torchvision
    from torchvision.ops import nms

    assert torch.__version__.startswith("2.14.1"), torch.__version__
    assert torchvision.__version__.startswith("0.29.1"), torchvision.__version__
    # A 3x3 all-ones kernel over a 4x4 ramp: each output is the sum of a 3x3 window.
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    y = F.conv2d(x, torch.ones(1, 1, 3, 3))
    assert torch.equal(y, torch.tensor([[[[45.0, 54.0], [81.0, 90.0]]]]))
    # torchvision's compiled ops load (a CUDA-only torchvision build fails here on CPU torch).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
