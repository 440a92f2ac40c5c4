"""simulators/fixed_point.py bit for bit against Lava's own fixed_pt process models (lava-nc 0.10.0):
PyLifModelBitAcc, PyDenseModelBitAcc and PyConvModelFixed, on seeded random integer inputs.

One Lava run per model: a single RingBuffer source fans out to every case (a Lava run only builds the
processes connected to the one it is called on), and each case ends in its own RingBuffer sink, read once
with `.data.get()` (Var reads go element by element, docs/lava-fixed-point.md section 7.2).
"""
import numpy as np
import pytest
import torch

from simulators.fixed_point import (IF_DU, IF_DV, conv_synapse, dense_synapse, dense_weights, lif_step,
                                    scale_bias)

pytestmark = pytest.mark.lava


def run_fixed_pt(proc, steps, read):
    """Run the graph of `proc` for `steps` steps on Lava's fixed-point CPU models; return read()."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    try:
        proc.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        return read()
    finally:
        proc.stop()


def as_int64(x):
    return torch.from_numpy(np.asarray(x).astype(np.int64))  # Lava returns float64 (exact for int32)


# (du, dv, vth): IF, persistent current (du = -1), du = 0 (still decays), leaky both, and vth = 0.
LIF_CASES = [(IF_DU, IF_DV, 10), (-1, 0, 100), (0, 300, 50), (200, 300, 20), (200, 0, 1000), (4095, 300, 0)]


def lif_inputs(steps):
    """Graded a_in for 16 neurons, a bias per neuron; some rows large enough to wrap u and overflow int32."""
    rng = np.random.default_rng(0)
    a = np.concatenate([
        rng.integers(-300, 301, (7, steps)),          # spikes for the thresholds above
        np.full((1, steps), 5),                       # with bias 0, IF reaches v = 640 = 10 << 6: no spike
        rng.integers(-90000, 90001, (4, steps)),      # 64 a up to 5.8e6: u wraps (du = -1), v saturates
        rng.integers(-2**18, 2**18 + 1, (1, steps)),  # 64 a up to 2^24: u wraps within a step
        # 64 a = 2^23, -2^23 (the asymmetric wrap), 2^23 + 64, -2^23 - 64, 2^24 + 2^23 + 64 (one wrap only)
        np.resize([2**17, -2**17, 2**17 + 1, -2**17 - 1, 2**18 + 2**17 + 1], (1, steps)),
        rng.choice([-1, 1], (1, steps)) * rng.integers(2**24, 2**26, (1, steps)),  # a << 6 overflows int32
        np.full((1, steps), 2**25 - 1),               # u near 2^31: with bias 2^30 the int32 v sum wraps
    ])
    bias_mant = rng.integers(-300, 301, 16)
    bias_exp = rng.integers(-3, 4, 16)
    bias_mant[3], bias_exp[3] = 40000, -3   # int16 storage: -25536, then a floor shift
    bias_mant[7] = 0
    bias_mant[15], bias_exp[15] = 4096, 18  # 2^30
    return a, bias_mant, bias_exp


def test_lif_matches_lava():
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    steps = 40
    a, bias_mant, bias_exp = lif_inputs(steps)
    source = Source(data=a)
    lifs, sinks = [], []
    for du, dv, vth in LIF_CASES:
        lif = LIF(shape=(16,), du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp)
        sink = Sink(shape=(16,), buffer=steps)
        source.s_out.connect(lif.a_in)  # no synapse: no delay
        lif.s_out.connect(sink.a_in)
        lifs.append(lif)
        sinks.append(sink)
    lava = run_fixed_pt(lifs[0], steps, lambda: [(lif.u.get(), lif.v.get(), sink.data.get())
                                                  for lif, sink in zip(lifs, sinks)])

    bias = scale_bias(as_int64(bias_mant), as_int64(bias_exp))
    a = as_int64(a)
    for (du, dv, vth), (lava_u, lava_v, lava_spikes) in zip(LIF_CASES, lava):
        u = v = torch.zeros(16, dtype=torch.int64)
        spikes = []
        for t in range(steps):
            u, v, s = lif_step(u, v, a[:, t], du=du, dv=dv, vth=vth, bias=bias)
            spikes.append(s)
        case = f"du={du}, dv={dv}, vth={vth}"
        assert torch.equal(torch.stack(spikes, 1), as_int64(lava_spikes).bool()), case
        assert torch.equal(u, as_int64(lava_u)), case
        assert torch.equal(v, as_int64(lava_v)), case


def test_dense_matches_lava():
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    steps, n_in, n_out = 12, 12, 5
    rng = np.random.default_rng(1)
    s = (rng.random((n_in, steps)) < 0.4).astype(np.int32)
    ranges = {"mixed": (-300, 300), "excitatory": (0, 300), "inhibitory": (-300, 0)}
    cases = [("mixed", 8, 0), ("mixed", 6, -2), ("excitatory", 8, 2), ("excitatory", 6, -2),
             ("inhibitory", 8, -2), ("inhibitory", 6, 2)]
    weights = [rng.integers(*ranges[sign], (n_out, n_in), endpoint=True) for sign, _, _ in cases]
    source = Source(data=s)
    sinks = []
    for w, (_, bits, exp) in zip(weights, cases):
        dense = Dense(weights=w, num_weight_bits=bits, weight_exp=exp)
        sink = Sink(shape=(n_out,), buffer=steps)
        source.s_out.connect(dense.s_in)
        dense.a_out.connect(sink.a_in)
        sinks.append(sink)
    lava = run_fixed_pt(source, steps, lambda: [sink.data.get() for sink in sinks])

    s = as_int64(s).T  # [steps, n_in]
    for w, case, out in zip(weights, cases, lava):
        # One step of delay: Lava sends at step t what it computed from the spikes of step t - 1.
        a = dense_synapse(s[:-1], dense_weights(as_int64(w), case[1]), weight_exp=case[2])
        expected = torch.cat([torch.zeros(1, n_out, dtype=torch.int64), a])
        assert torch.equal(as_int64(out).T, expected), case


def test_conv_matches_lava():
    from lava.proc.conv.process import Conv
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    steps, c_in, height, width = 6, 3, 6, 7
    rng = np.random.default_rng(2)
    # Lava's layout is (X, Y, C) = (W, H, C), time last; PyTorch's is (C, H, W).
    s_lava = (rng.random((width, height, c_in, steps)) < 0.5).astype(np.int32)
    # (weight shape [C_out, C_in / groups, kH, kW], weight range, F.conv2d keywords in (H, W) order)
    cases = [((4, 3, 3, 3), (-100, 100), dict(padding=1)),
             ((4, 3, 3, 3), (-100, 100), dict(stride=2, padding=1)),
             ((5, 3, 1, 1), (-100, 100), dict()),
             ((4, 3, 3, 3), (-2**18, 2**20), dict(padding=1)),  # sums beyond 2^23: the 24-bit wrap
             ((2, 3, 2, 3), (-100, 100), dict(stride=(1, 2), padding=(0, 1))),  # H and W kept apart
             ((3, 1, 3, 3), (-100, 100), dict(padding=2, dilation=2, groups=3))]
    weights = [torch.from_numpy(rng.integers(*bounds, shape, endpoint=True)) for shape, bounds, _ in cases]
    source = Source(data=s_lava)
    sinks = []
    for w, (_, _, kw) in zip(weights, cases):
        # PyTorch cross-correlates with W[o, i, h, w]; Lava truly convolves with W[o, x, y, i]
        # (docs/lava-fixed-point.md section 4.4).
        w_lava = w.numpy().transpose(0, 3, 2, 1)[:, ::-1, ::-1, :].copy()
        lava_kw = {k: v[::-1] if isinstance(v, tuple) else v for k, v in kw.items()}  # (H, W) -> (X, Y)
        conv = Conv(weight=w_lava, input_shape=(width, height, c_in), **lava_kw)
        sink = Sink(shape=conv.a_out.shape, buffer=steps)
        source.s_out.connect(conv.s_in)
        conv.a_out.connect(sink.a_in)
        sinks.append(sink)
    lava = run_fixed_pt(source, steps, lambda: [sink.data.get() for sink in sinks])

    s = as_int64(s_lava.transpose(3, 2, 1, 0))  # [steps, C, H, W]
    for w, (shape, _, kw), out in zip(weights, cases, lava):
        a = conv_synapse(s[:-1], w, **kw)  # one step of delay, as for Dense
        expected = torch.cat([torch.zeros_like(a[:1]), a])
        assert torch.equal(as_int64(out.transpose(3, 2, 1, 0)), expected), (shape, kw)
    exact = torch.nn.functional.conv2d(s.double(), weights[3].double(), padding=1)
    assert (exact.abs() >= 2**23).any()  # the wrap case did wrap
