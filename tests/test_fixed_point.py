"""simulators/fixed_point.py against hand-derived values of Lava's fixed-point rules
(docs/lava-fixed-point.md sections 2-4). No Lava here: tests/test_fixed_point_lava.py compares with Lava itself.
"""
import pytest
import torch
import torch.nn.functional as F

from simulators import fixed_point
from simulators.errors import SimulatorInputError
from simulators.fixed_point import (IF_DU, IF_DV, conv_synapse, dense_synapse, dense_weights, lif_step,
                                    scale_bias, wrap_signed)

U = 2**23
NEVER = 2**17  # vth << 6 = 2^23, above the largest v (2^23 - 1): no spike


def ints(*values):
    return torch.tensor(values, dtype=torch.int64)


def if_step(a, v=None, bias=0, vth=NEVER):
    """One integrate-and-fire step from u = 0: u = wrap(a << 6), v = clip(v + u + bias)."""
    a = ints(*a)
    v = torch.zeros_like(a) if v is None else ints(*v)
    return lif_step(torch.zeros_like(a), v, a, du=IF_DU, dv=IF_DV, vth=vth, bias=torch.as_tensor(bias))


def test_wrap_signed():
    assert wrap_signed(ints(U - 1, U, -U, -U - 1, 2**24 + 5), 24).tolist() == [U - 1, -U, -U, U - 1, 5]


def test_lif_current_wraps_once_and_asymmetrically():
    # IF: u = a << 6.  a << 6 = [2^23, -2^23, 2^23 + 64, -2^23 - 64, 2^24 + 2^23 + 64]
    #   2^23 is not > 2^23: kept;  -2^23 <= -2^23: + 2^24 -> +2^23;  2^23 + 64 -> -2^23 + 64;
    #   -2^23 - 64 -> 2^23 - 64;  2^24 + 2^23 + 64 -> 2^23 + 64 (one wrap only: still above 2^23).
    # v = u, saturated at +-(2^23 - 1).
    u, v, s = if_step([2**17, -2**17, 2**17 + 1, -2**17 - 1, 2**18 + 2**17 + 1])
    assert u.tolist() == [U, U, -U + 64, U - 64, U + 64]
    assert v.tolist() == [U - 1, U - 1, -U + 64, U - 64, U - 1]
    assert not s.any()


def test_lif_threshold_is_strict_and_reset_keeps_u():
    # vth = 10 -> 640.  a = 10: v = 640, not > 640;  a = 11: v = 704 > 640: spike, v = 0, u stays 704.
    u, v, s = if_step([10, 11], vth=10)
    assert s.tolist() == [False, True]
    assert v.tolist() == [640, 0]
    assert u.tolist() == [640, 704]


def test_lif_voltage_saturates():
    # v = +-(2^23 - 100) plus u = +-128 gives +-(2^23 + 28): clipped to +-(2^23 - 1), no wrap.
    _, v, _ = if_step([2, -2], v=[U - 100, -(U - 100)])
    assert v.tolist() == [U - 1, -(U - 1)]


def test_lif_decay_rounds_toward_zero():
    # du = 2047 -> factor 4096 - 2048 = 2048 (a half): u = +-5 -> +-2.5 -> +-2 (floor would give -3).
    # dv = 2048 -> factor 2048: v = +-5 -> +-2, then v + u = +-4 (vth 1 -> 64: no spike).
    u, v, s = lif_step(ints(-5, 5), ints(-5, 5), ints(0, 0), du=2047, dv=2048, vth=1, bias=ints(0))
    assert u.tolist() == [-2, 2]
    assert v.tolist() == [-4, 4]
    assert not s.any()


def test_lif_du_zero_decays_and_du_minus_one_does_not():
    # Factor 4096 - (du + 1): du = 0 -> 4095, 4096 * 4095 >> 12 = 4095;  du = -1 -> 4096, u kept.
    for du, expected in [(0, 4095), (-1, 4096)]:
        u, _, _ = lif_step(ints(4096), ints(0), ints(0), du=du, dv=0, vth=NEVER, bias=ints(0))
        assert u.tolist() == [expected]


def test_lif_input_shift_overflows_like_int32():
    # a << 6 = [2^31, 2^31 + 64, 2^32, -2^31 - 64] wraps in int32 to [-2^31, -2^31 + 64, 0, 2^31 - 64];
    # one 24-bit wrap then adds/subtracts 2^24 (u stays outside 24 bits); v = u saturates.
    u, v, _ = if_step([2**25, 2**25 + 1, 2**26, -2**25 - 1])
    assert u.tolist() == [-2**31 + 2**24, -2**31 + 64 + 2**24, 0, 2**31 - 64 - 2**24]
    assert v.tolist() == [-(U - 1), -(U - 1), 0, U - 1]


def test_lif_voltage_sum_wraps_like_int32_before_the_clip():
    # a = 2^25 - 1: u = 2^31 - 64 - 2^24 = 2130706368.  bias = 4096 << 18 = 2^30.
    # v = 0 + 2130706368 + 2^30 = 3204448192 > 2^31 - 1: the int32 sum wraps to 3204448192 - 2^32
    # = -1090519104, which saturates to -(2^23 - 1) (without the wrap: +(2^23 - 1) and a spike).
    u, v, s = if_step([2**25 - 1], bias=scale_bias(4096, 18), vth=10)
    assert u.tolist() == [2130706368]
    assert v.tolist() == [-(U - 1)]
    assert not s.any()


def test_lif_accepts_batch_dims_and_per_neuron_threshold():
    # Same IF step for both batch rows; vth = [1, 2, 3] -> [64, 128, 192] against v = 128 + bias 0.
    a = torch.full((2, 3), 2, dtype=torch.int64)
    zeros = torch.zeros_like(a)
    _, v, s = lif_step(zeros, zeros, a, du=IF_DU, dv=IF_DV, vth=ints(1, 2, 3), bias=ints(0, 0, 0))
    assert s.tolist() == [[True, False, False]] * 2
    assert v.tolist() == [[0, 128, 128]] * 2


def test_scale_bias():
    # Negative exponents shift arithmetically (floor): -7/2 = -3.5 -> -4, -1/4 -> -1, 7/2 -> 3, 1/4 -> 0.
    assert scale_bias(ints(-7, -1, 7, 1, -8), ints(-1, -2, -1, -2, -3)).tolist() == [-4, -1, 3, 0, -1]
    assert int(scale_bias(5, 6)) == 320
    # int16 storage: 40000 - 65536 = -25536; then << 1.
    assert scale_bias(ints(40000, -40000), 1).tolist() == [-51072, 51072]
    # int32 shift: 4095 << 20 = 4293918720 wraps to 4293918720 - 2^32 = -1048576.
    assert int(scale_bias(4095, 20)) == -1048576


def test_conv_wraps_at_24_bits():
    # 1x1 kernels over 2 channels that both spike: out = w0 + w1, then ((x + 2^23) mod 2^24) - 2^23.
    weight = torch.tensor([[U - 1, 0], [U - 1, 1], [-U, -1], [2**24, 3]]).reshape(4, 2, 1, 1)
    out = conv_synapse(torch.ones(2, 1, 1, dtype=torch.bool), weight)
    assert out.flatten().tolist() == [U - 1, -U, U - 1, 3]


def test_conv_stride_2_padding_1_is_cross_correlation():
    # out[p, q] = sum_ij w[i, j] x[2p + i - 1, 2q + j - 1] (zero outside), w = [[1,2,3],[4,5,6],[7,8,9]].
    #   (0,0): x00 w11 + x11 w22 = 5 + 9 = 14        (x01 = x10 = 0)
    #   (0,1): x02 w11 + x11 w20 = 5 + 7 = 12        (x01 = x12 = 0)
    #   (1,0): x11 w02 + x20 w11 + x21 w12 = 3 + 5 + 6 = 14   (x10 = 0)
    #   (1,1): x11 w00 + x21 w10 = 1 + 4 = 5         (x12 = x22 = 0)
    # A true convolution (flipped kernel) would give 6 at (0,0).
    x = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]]).reshape(1, 3, 3)
    w = torch.arange(1, 10).reshape(1, 1, 3, 3)
    assert conv_synapse(x, w, stride=2, padding=1).tolist() == [[[14, 12], [14, 5]]]


def conv_reference(x, w, stride, padding):
    """Integer cross-correlation in int64, one kernel tap at a time (groups = 1, no dilation)."""
    (sh, sw), (ph, pw) = stride, padding
    x = F.pad(x.to(torch.int64), (pw, pw, ph, ph))
    kh, kw = w.shape[-2:]
    ho, wo = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
    out = 0
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            out = out + (patch[:, None] * w[None, :, :, i, j, None, None]).sum(2)
    return out


@pytest.mark.parametrize("batch", [1, 16])  # PyTorch picks other CPU kernels from batch 16 on
@pytest.mark.parametrize("max_w", [2**24 // 36 - 1, 2**20])  # float32 (bound just below 2^24), float64
def test_conv_matches_integer_reference(batch, max_w):
    g = torch.Generator().manual_seed(batch + max_w)
    x = torch.rand(batch, 4, 9, 8, generator=g) < 0.5
    w = torch.randint(-max_w, max_w + 1, (5, 4, 3, 3), generator=g)
    w[0, 0, 0, 0] = max_w  # the bound is reached: fan_in 36 * max_w
    for stride, padding in [((1, 1), (1, 1)), ((2, 1), (1, 0))]:
        expected = wrap_signed(conv_reference(x, w, stride, padding), 24)
        assert torch.equal(conv_synapse(x, w, stride=stride, padding=padding), expected)


def test_conv_accepts_leading_batch_dims():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 5, 5, generator=g) < 0.3
    w = torch.randint(-200, 200, (6, 4, 3, 3), generator=g)
    out = conv_synapse(x, w, padding=1)
    assert out.shape == (2, 3, 6, 5, 5)
    assert torch.equal(out[1, 2], conv_synapse(x[1, 2], w, padding=1))


def test_dense_weights():
    # Mixed, 8 bits: clip [-256, 255], k = 8 - 8 + 1 = 1: floor to even (docs/lava-fixed-point.md section 3.1).
    assert dense_weights(ints(3, -3, 255, -256, 254, 1)).tolist() == [2, -4, 254, -256, 254, 0]
    # Mixed, 6 bits: clip -> [-3, 9, 255, -256], k = 3: floor to multiples of 8.
    assert dense_weights(ints(-3, 9, 300, -300), 6).tolist() == [-8, 8, 248, -256]
    # Excitatory, 6 bits: clip [0, 255] -> [3, 255, 255, 7, 0], k = 2: multiples of 4.
    assert dense_weights(ints(3, 255, 300, 7, 0), 6).tolist() == [0, 252, 252, 4, 0]
    # Inhibitory, 8 bits: magnitudes clipped to 255, k = 0.
    assert dense_weights(ints(-3, -300, 0, -1)).tolist() == [-3, -255, 0, -1]
    # Inhibitory, 6 bits: magnitudes [3, 5, 7] -> k = 2 -> [0, 4, 4], negated (toward zero, unlike mixed).
    assert dense_weights(ints(-3, -5, -7), 6).tolist() == [0, -4, -4]
    # Floats are cast toward zero first: [2, -2, 1], mixed -> even.
    assert dense_weights(torch.tensor([2.7, -2.7, 1.9])).tolist() == [2, -2, 0]
    assert dense_weights(torch.zeros(2, 3)).tolist() == [[0, 0, 0]] * 2  # all zero: excitatory


def test_dense_synapse_shifts_the_sum_with_floor():
    # W @ [1, 1, 0] = [-2, -2];  W @ [1, 0, 1] = [8, 252];  a nonzero input counts as one spike.
    w = torch.tensor([[2, -4, 6], [-2, 0, 254]])
    s = torch.tensor([[1, 1, 0], [1, 0, 1], [3, 0, 0]])
    assert dense_synapse(s, w).tolist() == [[-2, -2], [8, 252], [2, -2]]
    # >> 2 on the sum (floor): -2/4 -> -1, 8/4 = 2, 252/4 = 63, 2/4 -> 0, -2/4 -> -1.
    assert dense_synapse(s, w, weight_exp=-2).tolist() == [[-1, -1], [2, 63], [0, -1]]
    assert dense_synapse(s, w, weight_exp=2).tolist() == [[-8, -8], [32, 1008], [8, -8]]
    assert dense_synapse(s[None], w).shape == (1, 3, 2)


@pytest.mark.parametrize("scale", [1 << 10, 1 << 18, 1 << 26, 1 << 31])
def test_if_step_is_lif_step_with_du_4095_dv_0(scale):
    # The int32 fast path must equal the general int64 step for the IF setting, including inputs that
    # wrap u (|a| >= 2^17), overflow `a << 6` in int32 (|a| >= 2^25) and saturate v.
    gen = torch.Generator().manual_seed(scale % 1000)
    shape = (3, 4, 5, 6)
    u = v = torch.zeros(shape, dtype=torch.int64)
    v32 = torch.zeros(shape, dtype=torch.int32)
    vth = torch.randint(0, 1 << 17, (4, 1, 1), generator=gen)
    bias = scale_bias(torch.randint(-4095, 4096, (4, 1, 1), generator=gen), 6)
    for _ in range(12):
        a = torch.randint(-scale, scale, shape, generator=gen)
        u, v, s = lif_step(u, v, a, du=IF_DU, dv=IF_DV, vth=vth, bias=bias)
        v32, s32 = fixed_point.if_step(v32, a, vth=vth, bias=bias)
        assert s32.dtype == torch.int32 and torch.equal(s, s32.bool())
        assert torch.equal(v, v32.long())


def test_a_gpu_convolution_is_float64_and_refused_where_rounding_could_not_restore_the_integer():
    # On the CPU float32 up to a bound of 2^24, float64 up to 2^53. On a GPU (cuDNN's TF32 and FFT/Winograd
    # algorithms round float32) float64 at any bound, up to 2^31: there a float64 result's error,
    # about n * 2^-53 * bound with n <= 2^16, stays below 2^-6, so rounding gives the integer back.
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert fixed_point._exact_float_dtype(2 ** 24 - 1, cpu) == torch.float32
    assert fixed_point._exact_float_dtype(2 ** 24, cpu) == torch.float64
    assert fixed_point._exact_float_dtype(1, gpu) == torch.float64
    assert fixed_point._exact_float_dtype(2 ** 31 - 1, gpu) == torch.float64
    with pytest.raises(SimulatorInputError, match=r"= 2147483648 >= 2\^31: no convolution on cuda"):
        fixed_point._exact_float_dtype(2 ** 31, gpu)


needs_exact_int8 = pytest.mark.skipif(not fixed_point.int8_matmul_is_exact(),
                                      reason="this CPU's int8 matmul is not exact; the simulator uses float32 here")


@needs_exact_int8
def test_int8_conv_stride_2_padding_1_is_the_hand_derived_cross_correlation():
    # the example of test_conv_stride_2_padding_1_is_cross_correlation: 14, 12 / 14, 5
    x = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.int8).reshape(1, 3, 3, 1)  # NHWC
    w = torch.arange(1, 10).reshape(1, 1, 3, 3)
    out = fixed_point.conv_int8(x, fixed_point.int8_columns(w), kernel=(3, 3), stride=2, padding=1)
    assert out.dtype == torch.int32 and out.tolist() == [[[[14, 12], [14, 5]]]]


@needs_exact_int8
@pytest.mark.parametrize("kernel, stride, padding", [((3, 3), 1, 1), ((3, 3), 2, 1), ((1, 1), 1, 0), ((2, 2), 2, 0)])
def test_int8_conv_is_the_integer_conv_at_the_extremes_of_the_mantissas(kernel, stride, padding):
    # Every input spiking, all 64 x 9 mantissas -128 into output 0: -73,728, which saturating int16 pair sums
    # (2 x 128 x 128 = 32,768 > 32,767) could not give; the rest random.
    g = torch.Generator().manual_seed(stride + padding)
    x = torch.rand(3, 64, 7, 6, generator=g) < 0.5
    x[0] = True
    w = torch.randint(-128, 128, (5, 64, *kernel), generator=g)
    w[0] = -128
    mant = w.clone()
    mant[1:] = mant[1:].clamp(min=-127)  # the chip's mantissas are symmetric; output 0 probes the hardware range
    columns = mant.permute(2, 3, 1, 0).reshape(-1, 5).to(torch.int8).contiguous()
    out = fixed_point.conv_int8(x.to(torch.int8).permute(0, 2, 3, 1).contiguous(), columns, kernel=kernel,
                                stride=stride, padding=padding)
    expected = conv_reference(x, mant, (stride, stride), (padding, padding))
    assert int(expected[0, 0].min()) == -128 * 64 * kernel[0] * kernel[1]
    assert torch.equal(out.long(), expected)


def test_int8_columns_refuse_a_mantissa_beyond_8_bits():
    with pytest.raises(SimulatorInputError, match=r"within \+-127, got 128"):
        fixed_point.int8_columns(torch.full((1, 1, 1, 1), 128))


def test_an_int8_matmul_that_saturates_is_found_by_the_probe(monkeypatch):
    # How an int8 GEMM without VNNI computes s8 x s8 (vpmaddubsw wants one unsigned operand): a + 128, pairs of
    # products summed in int16 with saturation, then 128 x the column sums of b taken off. A spike (129) times
    # -128 twice is -33,024 per pair: saturated to -32,768, so the probe's all-spiking rows come out wrong.
    def saturating_int_mm(a, b):
        shifted, b = a.long() + 128, b.long()
        pairs = shifted[:, 0::2, None] * b[None, 0::2] + shifted[:, 1::2, None] * b[None, 1::2]
        return (pairs.clamp(-2 ** 15, 2 ** 15 - 1).sum(1) - 128 * b.sum(0)).to(torch.int32)

    a = torch.tensor([[1, 0, -3, 5]], dtype=torch.int8)
    b = torch.tensor([[2], [7], [1], [-1]], dtype=torch.int8)
    assert saturating_int_mm(a, b).tolist() == [[2 - 3 - 5]]  # exact where nothing saturates
    fixed_point.int8_matmul_is_exact.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", saturating_int_mm)
    try:
        assert not fixed_point.int8_matmul_is_exact()
    finally:
        fixed_point.int8_matmul_is_exact.cache_clear()
