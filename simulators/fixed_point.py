"""Bit-exact, vectorized re-implementation of Lava's fixed-point CPU process models (lava-nc 0.10.0).

Reproduced models (the ones `Loihi2SimCfg(select_tag="fixed_pt")` picks), with the spec in
docs/lava-fixed-point.md:
- `lif_step`, `scale_bias`: `PyLifModelBitAcc` (section 2); `if_step`, its IF case in int32;
- `dense_weights`, `dense_synapse`: `PyDenseModelBitAcc` (section 3);
- `conv_synapse`: `PyConvModelFixed` (section 4); `conv_int8`, the same sums for spikes and 8-bit
  mantissas as an int8 matmul with int32 sums, where `int8_matmul_is_exact` holds.
Lava's one step of synaptic delay (a synapse sends the buffer computed in the previous step) is NOT
modelled here: that is the network simulator's job (docs/lava-fixed-point.md section 5).

Conventions: tensors may have any leading batch dims; results are int64 tensors. Lava's int32
arithmetic is emulated with an explicit wrap wherever it can overflow. Layouts are PyTorch's:
conv spikes are [..., C_in, H, W], conv weights [C_out, C_in / groups, kH, kW] used as a
cross-correlation (F.conv2d); dense spikes are [..., N_in] and weights [N_out, N_in].
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .errors import SimulatorInputError

# LIF constants, as in PyLifModelBitAcc (docs/lava-fixed-point.md sections 2.1 and 2.2). Bit widths: du, dv
# 12-bit unsigned, bias_mant 13-bit signed (stored int16), vth 17-bit unsigned, u and v 24-bit signed
# (stored int32).
DECAY_SHIFT = 12                  # decays are 12-bit fractions: x * (4096 - d) >> 12
DECAY_UNITY = 1 << DECAY_SHIFT    # 4096
DS_OFFSET = 1                     # added to du (a Loihi-1 register): du = 0 still decays u by 1/4096
DM_OFFSET = 0                     # added to dv
VTH_SHIFT = 6                     # the threshold is compared as vth << 6
ACT_SHIFT = 6                     # the input enters u as a_in << 6
STATE_BITS = 24                   # u wraps (once) and v saturates at 24 bits
STATE_MAX = 1 << (STATE_BITS - 1)  # 2**23
A_IN_BITS = 32                    # a_in arrives as int32: `a_in << 6` and the u sum are int32 arithmetic
STORE_BITS = 32                   # u, v and the scaled bias are int32: the v sum wraps there before the clip
BIAS_MANT_BITS = 16               # bias_mant is stored as int16 (out-of-range values wrap)
IF_DU, IF_DV = 4095, 0            # integrate-and-fire: u = a_in << 6 (no current memory), no voltage leak

CONV_OUT_BITS = 24                # PyConvModelFixed wraps its output to 24 bits (signed_clamp)
DENSE_WEIGHT_BITS = 8             # Dense weights are clipped to 8 bits magnitude (+ sign when mixed)
INT8_MANT_MAX = 127               # conv_int8's operands: 0/1 spikes and mantissas of 8 signed bits
INT32_SUM_BOUND = 1 << 31          # conv_int8's sums are int32: exact while every |sum| stays below
GPU_EXACT_BOUND = 1 << 31          # below it a float64 GPU convolution rounds back to the integer (_exact_float_dtype)


def wrap_signed(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Two's-complement wrap of an integer tensor into [-2^(bits-1), 2^(bits-1) - 1]."""
    half = 1 << (bits - 1)
    return ((x + half) & ((1 << bits) - 1)) - half


def _shift_toward_zero(x: torch.Tensor, bits: int) -> torch.Tensor:
    # Lava's decays: sign(x) * (|x| >> bits), i.e. rounding toward zero (not floor) for negative x.
    return torch.sign(x) * (x.abs() >> bits)


def scale_bias(bias_mant, bias_exp) -> torch.Tensor:
    """Lava's effective bias in v units: bias_mant << bias_exp, or >> -bias_exp (floor) if bias_exp < 0.

    Ints or integer tensors, elementwise with broadcasting. bias_mant wraps to int16 first (numpy
    assignment into Lava's int16 Var), then the shift is done in int32 (Lava promotes before shifting).
    """
    mant = wrap_signed(torch.as_tensor(bias_mant, dtype=torch.int64), BIAS_MANT_BITS)
    exp = torch.as_tensor(bias_exp, dtype=torch.int64)
    shifted = torch.where(exp >= 0, mant << exp.clamp(min=0), mant >> (-exp).clamp(min=0))
    return wrap_signed(shifted, STORE_BITS)  # an int32 left shift overflows silently


def lif_step(u: torch.Tensor, v: torch.Tensor, a: torch.Tensor, *, du: int, dv: int, vth,
             bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One time step of PyLifModelBitAcc (docs/lava-fixed-point.md section 2.3). Returns the new (u, v) and
    the spikes (bool).

    u, v, a: int64 tensors of one shape (a is the summed input of this step); du, dv: ints;
    vth: int or int64 tensor broadcastable to v, before its << 6; bias: from `scale_bias`.
    """
    # Current: the product is int64 in Lava, then shifted toward zero.
    u = _shift_toward_zero(u * (DECAY_UNITY - (du + DS_OFFSET)), DECAY_SHIFT)
    # Lava adds `a << 6` to the decayed current in int32, so both the shift and the sum wrap at 32 bits;
    # one wrap of the exact sum gives the same value (wrapping commutes with + and <<).
    u = wrap_signed(u + (a << ACT_SHIFT), A_IN_BITS)
    # ONE conditional wrap, both tests on the unwrapped value: 2^23 stays, -2^23 becomes +2^23, and a
    # value beyond +-(2^24 + 2^23) is not brought back into 24 bits.
    u = torch.where(u > STATE_MAX, u - 2 * STATE_MAX, torch.where(u <= -STATE_MAX, u + 2 * STATE_MAX, u))
    # Voltage: same decay (toward zero), plus the NEW u and the bias; the int32 sum wraps, then saturates.
    v = _shift_toward_zero(v * (DECAY_UNITY - (dv + DM_OFFSET)), DECAY_SHIFT)
    v = wrap_signed(v + u + bias, STORE_BITS).clamp(-(STATE_MAX - 1), STATE_MAX - 1)
    s = v > (vth << VTH_SHIFT)  # strict
    return u, v.masked_fill(s, 0), s  # v is reset to 0, u is not


def if_step(v: torch.Tensor, a: torch.Tensor, *, vth, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`lif_step` with du = IF_DU, dv = IF_DV (integrate-and-fire), in Lava's own int32 arithmetic.

    With du = 4095 the decayed current is rz(u * 0, 12) = 0, and with dv = 0 the decayed voltage is
    rz(v * 4096, 12) = v, so a step is u = wrap24(a << 6), v = sat24(v + u + bias). Computing it in
    int32, as Lava does, makes the int32 wraps of `a << 6` and of the v sum free. Bool tensors are slow
    on CPU, so the spike test and the reset are integer arithmetic too.
    v: int32 state; a: integer-valued input (any dtype holding integers); vth: below 2^17 (Lava's
    17 bits); bias: v units. Returns the new v and the spikes, both int32 (spikes 0/1, as Lava sends them).
    """
    u = a.to(torch.int32) << ACT_SHIFT  # int32 shift: wraps like Lava's
    low, high = torch.aminmax(u)
    if low <= -STATE_MAX or high > STATE_MAX:  # the one conditional wrap, only when some u needs it
        u = torch.where(u > STATE_MAX, u - 2 * STATE_MAX, torch.where(u <= -STATE_MAX, u + 2 * STATE_MAX, u))
    v = torch.add(v, u, out=u).add_(bias.to(torch.int32))  # int32 sums wrap like Lava's
    v.clamp_(-(STATE_MAX - 1), STATE_MAX - 1)  # then v saturates
    # Strict v > vth << 6 as a sign bit: (vth << 6) - v lies within +-2^24, so >> 31 gives -1 exactly
    # where it is negative, i.e. where the neuron fires, and 0 elsewhere.
    fired = ((torch.as_tensor(vth, dtype=torch.int32) << VTH_SHIFT) - v) >> 31
    return v.bitwise_and_(fired.bitwise_not()), fired.neg_()  # reset v to 0 where fired


def _exact_float_dtype(bound: int, device: torch.device) -> torch.dtype:
    """A float dtype in which conv2d / matmul with 0/1 inputs give exact integers, given the bound
    fan_in * max|w| on every partial sum (whatever the summation order)."""
    # float32 holds every integer up to 2^24 and is several times faster than float64 on CPU, where
    # PyTorch's float32 conv2d and matmul are plain IEEE float32 sums of products by default.
    if device.type == "cpu":
        if bound < 1 << 24:
            return torch.float32
        if bound < 1 << 53:
            return torch.float64
        raise SimulatorInputError(f"fan_in * max|weight| = {bound} >= 2^53: no exact float dtype")
    # On a GPU, cuDNN may use TF32 for float32 (operands cut to 11 significant bits) and may pick FFT or
    # Winograd algorithms, which round. So float64 (TF32 never applies to it), and the caller's round() gives
    # back the integer whenever the algorithm's error stays below 1/2: a float64 FFT or Winograd result is
    # off by at most about n * 2^-53 * bound for n <= 2^16 terms, below 2^-6 for bound < 2^31.
    if bound < GPU_EXACT_BOUND:
        return torch.float64
    raise SimulatorInputError(f"fan_in * max|weight| = {bound} >= 2^31: no convolution on {device.type} "
                              f"is provably exact; run on the CPU")


def conv_synapse(s: torch.Tensor, weight: torch.Tensor, *, stride=1, padding=0, dilation=1,
                 groups: int = 1) -> torch.Tensor:
    """PyConvModelFixed's output for the spikes of one step (docs/lava-fixed-point.md section 4), in PyTorch
    layout.

    s: [..., C_in, H, W] spikes (nonzero counts as one spike, like Lava's binary mode);
    weight: integer [C_out, C_in / groups, kH, kW], cross-correlation as in F.conv2d;
    stride, padding, dilation: int or (H, W). Returns int64 [..., C_out, H_out, W_out]: the exact
    integer convolution wrapped to 24 bits. Like Lava, the weights are neither clipped nor scaled
    (Lava ignores weight_exp and num_weight_bits for Conv, lava#803). Lava agrees while the exact sums
    stay below 2^31 in magnitude; beyond, its float64 -> int32 cast is undefined.
    """
    lead = s.shape[:-3]
    spikes = (s != 0).reshape(-1, *s.shape[-3:])
    dtype = _exact_float_dtype(weight[0].numel() * int(weight.abs().max()), s.device)
    y = F.conv2d(spikes.to(dtype), weight.to(dtype), stride=stride, padding=padding, dilation=dilation,
                 groups=groups)
    # round(): a no-op for direct and GEMM algorithms; it absorbs the tiny float64 error of an FFT
    # algorithm, should cuDNN pick one.
    y = wrap_signed(y.round().to(torch.int64), CONV_OUT_BITS)
    return y.reshape(*lead, *y.shape[-3:])


@functools.cache
def int8_matmul_is_exact() -> bool:
    """Whether `torch._int_mm` on this CPU sums int8 products exactly in int32, probed on the worst case.

    oneDNN computes it with AMX or VNNI dot products, which accumulate in int32 exactly. A CPU without VNNI
    may pair products in saturating int16 sums (vpmaddubsw), which spikes on every input times mantissas
    of -128 or 127 saturate at once; so those operands, and random ones, are checked against int64 sums.
    """
    gen = torch.Generator().manual_seed(0)
    spikes = torch.cat([torch.ones(8, 1024), torch.randint(0, 2, (24, 1024), generator=gen)]).to(torch.int8)
    mant = torch.cat([torch.full((1024, 1), -128), torch.full((1024, 1), INT8_MANT_MAX),
                      torch.randint(-128, 128, (1024, 14), generator=gen)], dim=1).to(torch.int8)
    try:
        out = torch._int_mm(spikes, mant)
    except (AttributeError, RuntimeError, NotImplementedError):  # a build or CPU without an int8 matmul
        return False
    return bool(torch.equal(out.long(), spikes.long() @ mant.long()))


def int8_columns(mant: torch.Tensor) -> torch.Tensor:
    """Mantissas [C_out, C_in, kH, kW] (|m| <= 127) as `conv_int8`'s int8 matrix [kH * kW * C_in, C_out]."""
    if int(mant.abs().max()) > INT8_MANT_MAX:
        raise SimulatorInputError(f"mantissas must lie within +-{INT8_MANT_MAX}, got {int(mant.abs().max())}")
    c_out, c_in, kh, kw = mant.shape
    return mant.permute(2, 3, 1, 0).reshape(kh * kw * c_in, c_out).to(torch.int8).contiguous()


def conv_int8(spikes: torch.Tensor, columns: torch.Tensor, *, kernel: tuple[int, int], stride: int,
              padding: int) -> torch.Tensor:
    """The integer cross-correlation of 0/1 spikes with 8-bit mantissas, as one int8 matmul with int32 sums.

    spikes: int8 0/1 [N, H, W, C_in] (NHWC); columns: `int8_columns` of the mantissas; kernel: (kH, kW).
    Returns int32 [N, C_out, H_out, W_out], channels-last in memory. Exact while every sum of |m| into one
    output stays below INT32_SUM_BOUND and `int8_matmul_is_exact()`; no wrap is applied.
    """
    # PyTorch has no int8 convolution with an int32 result (its quantized conv requantizes to 8 bits), so the
    # conv is written out: the kH x kW shifted views of the padded input side by side (each contiguous in C),
    # then one int8 matmul, several times faster than a float32 conv on AMX or VNNI hardware.
    n, h, w, c = spikes.shape
    kh, kw = kernel
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if (kh, kw, stride) == (1, 1, 1) and padding == 0:
        cols = spikes.reshape(n * h * w, c)
    else:
        x = F.pad(spikes, (0, 0, padding, padding, padding, padding))  # zeros: no spikes beyond the border
        views = [x[:, i:i + stride * (h_out - 1) + 1:stride, j:j + stride * (w_out - 1) + 1:stride]
                 for i in range(kh) for j in range(kw)]
        cols = torch.stack(views, dim=3).view(n * h_out * w_out, kh * kw * c)
    return torch._int_mm(cols, columns).view(n, h_out, w_out, -1).permute(0, 3, 1, 2)


def dense_weights(weight, num_weight_bits: int = 8) -> torch.Tensor:
    """PyDenseModelBitAcc's weight processing on its first step (docs/lava-fixed-point.md section 3.1).

    The sign mode comes from the int-cast weights (floats truncate toward zero): all >= 0 excitatory,
    else all <= 0 inhibitory, else mixed. Mixed weights are clipped to [-256, 255], the others to
    magnitudes [0, 255]; then the low k = 8 - num_weight_bits (+1 if mixed) bits are floored away,
    on the magnitudes for inhibitory weights. E.g. mixed, 8 bits: [3, -3, 255, -256] -> [2, -4, 254, -256].
    """
    if not 0 < num_weight_bits <= DENSE_WEIGHT_BITS:
        raise SimulatorInputError(f"num_weight_bits must be in 1..{DENSE_WEIGHT_BITS}, got {num_weight_bits}")
    w = torch.as_tensor(weight).to(torch.int64)
    limit = (1 << DENSE_WEIGHT_BITS) - 1
    if w.min() >= 0:    # excitatory
        sign, low, k = 1, 0, DENSE_WEIGHT_BITS - num_weight_bits
    elif w.max() <= 0:  # inhibitory: Lava negates, processes the magnitudes, negates back
        sign, low, k = -1, 0, DENSE_WEIGHT_BITS - num_weight_bits
    else:               # mixed: one bit of the 9-bit signed range goes to the sign
        sign, low, k = 1, -limit - 1, DENSE_WEIGHT_BITS - num_weight_bits + 1
    w = (sign * w).clamp(low, limit)
    return sign * ((w >> k) << k)  # floor truncation


def dense_synapse(s: torch.Tensor, weight: torch.Tensor, *, weight_exp: int = 0) -> torch.Tensor:
    """PyDenseModelBitAcc's output for the spikes of one step (docs/lava-fixed-point.md section 3.2),
    binary-spike mode.

    s: [..., N_in] spikes (nonzero counts as one spike); weight: [N_out, N_in], already processed by
    `dense_weights`. Returns int64 [..., N_out] = (W @ s) << weight_exp, or >> -weight_exp (floor) on
    the sum when weight_exp < 0. Lava then sends it as int32; that wrap does not change what a LIF
    computes (lif_step wraps `a << 6` at 32 bits anyway), so it is not applied here.
    """
    dtype = _exact_float_dtype(weight.shape[-1] * int(weight.abs().max()), s.device)
    a = ((s != 0).to(dtype) @ weight.to(dtype).T).to(torch.int64)
    return a << weight_exp if weight_exp > 0 else a >> -weight_exp
