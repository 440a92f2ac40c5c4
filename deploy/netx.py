"""lava-dl netx for chain networks: a chip network (`export.chip`) that is a straight chain
(spike input -> synapse -> population -> ... -> population) written as lava-dl's netx HDF5
(docs/lava-fixed-point.md section 6) with the same integers, and run through `netx.hdf5.Network`.

Layout written: /layer/0 an `input` layer with the NIR input shape only (no neuron: netx would not wire
its input port to one), then per synapse an optional `flatten` layer and a `dense` or `conv` layer with
its neuron group (type CUBA, iDecay = du + 1, vDecay = dv, vThMant = vth) and, if nonzero, its bias.

Timing: netx's blocks are synapse -> neuron, the same one step per synapse as our own Lava graph, and a
neuron-less input layer adds no block; the RingBuffer drives the first synapse as in
`deploy.chip_lava.run_spikes_on_lava`.
So netx's output spikes at step t are ours at step t: NETX_STEP_OFFSET = 0.

What netx represents exactly, and what is refused (by node name) instead:
- du, dv, vth: exactly (netx sets du = iDecay - 1, dv = vDecay, vth = vThMant).
- Conv weights: exactly; netx passes the stored integers to Lava's Conv (and flips and transposes them
  itself: stored in PyTorch's layout). Stored as float32, exact since |weight| < 2^17 (a design rule).
- Dense weights: netx re-scales them (`optimize_weight_bits`), and Lava's Dense then clips and truncates
  them. `netx_dense_weights` replays both with lava-dl's and Lava's own functions; a synapse is refused
  unless the result is its integers exactly. That holds for mixed signs in [-256, 254], for non-negative
  weights in [0, 255], and for strictly negative ones in [-255, -1] whose most negative weight is not
  minus a power of two (checked on random matrices). It fails beyond those ranges (netx clips, printing a
  warning), for all-zero matrices (netx divides by the maximum), and where the most negative weight is
  minus a power of two: netx scales it to -256, which Lava's inhibitory clip makes -255 and its truncation
  then rounds (e.g. [-2, -4] becomes [-2, -2], [-128] becomes 0, and [0, -1] is lost the same way).
  Our compiled mantissas (|mant| <= 127) fit when weight_exp <= 1, but for that last case.
- Bias: netx fixes bias_exp = 6, so the bias in v-units must be a multiple of 64 whose quotient fits the
  13-bit bias mantissa; and it is on from step 0, so a nonzero bias must start at depth 0 (an imported
  graph asks for that with the node metadata bias_start = 0).
- Topology: one spike input, each population read by at most one synapse of delay 1, no recurrence, no
  up-sampling or channel slices; the outputs are ignored, netx's output is the last population.
"""
import contextlib
import io
import os
import tempfile

import h5py
import numpy as np
from lava.magma.core.run_configs import RunConfig
from lava.proc.io.source import RingBuffer
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

from deploy.chip_lava import chip_network, spikes_from_lava, spikes_to_lava
from deploy.errors import DeployError, DeployInputError
from deploy.processes import FileSink, run_to_end
from export.chip import BIAS_MANT_MAX, ChipNetwork, ChipPopulation, ChipSynapse, pair

NETX_STEP_OFFSET = 0  # netx output step t = our Lava graph's (and the simulator's) step t, see the docstring
NETX_BIAS_EXP = 6  # netx's bias_exp for every CUBA neuron (hdf5.py, get_neuron_params)
LAVA_WEIGHT_BITS = 8  # Lava's Dense clips its weights to 8 bits (plus the sign when mixed)
NEURON_TYPE = "CUBA"  # netx builds Lava's LIF from it
TYPE_DTYPE = "S10"  # netx's layer and neuron type strings (slayer's export_hdf5)


class UnsupportedGraphError(DeployError, ValueError):
    """The network is not one netx can run exactly; names the node."""


def _name(syn: ChipSynapse) -> str:
    return f"{syn.source} -> {syn.target}"


def netx_dense_weights(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """What a netx dense layer storing `weight` applies in Lava: the integer matrix and the exponent of the
    floor shift of its sums (lava-dl's optimize_weight_bits, then Lava's Dense clip and truncation)."""
    from lava.lib.dl.netx.utils import optimize_weight_bits  # lazy: lava-dl imports torch and slayer (seconds)

    # netx prints a warning where it clips and divides by zero maxima; the caller refuses inexact results
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore"):
        scaled, bits, exp, _ = optimize_weight_bits(weight)
    mode = determine_sign_mode(scaled)  # Lava's Dense decides the sign mode again itself
    return truncate_weights(clip_weights(scaled, mode, num_bits=LAVA_WEIGHT_BITS), mode, bits), exp


def _check_dense(syn: ChipSynapse) -> None:
    weight = syn.integer_weight()
    if not weight.any():
        raise UnsupportedGraphError(f"synapse {_name(syn)}: all weights are 0, which netx cannot scale")
    applied, exp = netx_dense_weights(weight)
    if exp > 0 or not np.array_equal(applied, weight << -exp):
        raise UnsupportedGraphError(f"synapse {_name(syn)}: netx's dense layer would not apply these integer "
                                    f"weights (in [{weight.min()}, {weight.max()}]) exactly")


def _netx_bias(pop: ChipPopulation) -> np.ndarray:
    """The per-neuron bias mantissas netx stores, in NIR's layout."""
    if pop.voltage_out:
        raise UnsupportedGraphError(f"node {pop.name!r}: a voltage readout; netx's blocks output spikes")
    per_channel = pop.bias_mant[0].astype(np.int64) << pop.bias_exp
    bias = np.broadcast_to(per_channel.reshape(-1, *[1] * (len(pop.shape) - 1)), pop.shape)
    if bias.any() and pop.depth > 0:
        raise UnsupportedGraphError(f"node {pop.name!r}: netx's bias is on from step 0, this one from step "
                                    f"{pop.depth} (bias_start)")
    quotient = bias >> NETX_BIAS_EXP
    if np.any(quotient << NETX_BIAS_EXP != bias) or np.abs(quotient).max(initial=0) > BIAS_MANT_MAX:
        raise UnsupportedGraphError(f"node {pop.name!r}: netx's bias is mant << {NETX_BIAS_EXP}; this bias (v-units "
                                    f"in [{bias.min()}, {bias.max()}]) is not a multiple of {1 << NETX_BIAS_EXP} "
                                    f"with a mantissa within +-{BIAS_MANT_MAX}")
    return quotient


def chain(net: ChipNetwork) -> list[ChipSynapse]:
    """The synapses in order from the one spike input, each followed by its population; refuses any other
    network."""
    if len(net.inputs) != 1 or net.is_diffusion:
        raise UnsupportedGraphError(f"netx needs exactly one spike input, the network has {[i.name for i in net.inputs]}")
    reading: dict[str, list[ChipSynapse]] = {}
    for syn in net.synapses:
        reading.setdefault(syn.source, []).append(syn)
    order, current = [], net.inputs[0].name
    while current in reading:
        if len(reading[current]) > 1:
            raise UnsupportedGraphError(f"node {current!r}: read by {[_name(s) for s in reading[current]]}; netx "
                                        f"builds chains only")
        syn = reading[current][0]
        if syn.target in {s.source for s in order} | {s.target for s in order}:
            raise UnsupportedGraphError(f"synapse {_name(syn)}: feeds {syn.target!r} back; netx builds chains only")
        if syn.delay != 1 or syn.upsample != 1 or syn.out_offset or \
                syn.weight.shape[0] != net.population(syn.target).shape[0]:
            raise UnsupportedGraphError(f"synapse {_name(syn)}: a delay, up-sampling or channel slice netx has no "
                                        f"layer for")
        order.append(syn)
        current = syn.target
    left = sorted(_name(s) for s in net.synapses if s not in order)
    if left:
        raise UnsupportedGraphError(f"synapses {left} are off the chain from the input; netx builds chains only")
    return order


def _type(group: h5py.Group, name: str) -> None:
    group.create_dataset("type", data=np.array([name.encode("ascii")], dtype=TYPE_DTYPE))


def _write_neuron(layer: h5py.Group, pop: ChipPopulation) -> None:
    neuron = layer.create_group("neuron")
    _type(neuron, NEURON_TYPE)
    neuron.create_dataset("iDecay", data=pop.du + 1)  # netx: du = iDecay - 1
    neuron.create_dataset("vDecay", data=pop.dv)
    neuron.create_dataset("vThMant", data=pop.vth)
    bias = _netx_bias(pop)
    if bias.any():
        layer.create_dataset("bias", data=bias.T)  # netx takes a per-neuron bias in Lava's (W, H, C) order


def _write_conv(layer: h5py.Group, syn: ChipSynapse, pop: ChipPopulation) -> None:
    _type(layer, "conv")
    layer.create_dataset("shape", data=np.array(pop.shape))
    layer.create_dataset("inChannels", data=syn.weight.shape[1] * syn.groups)
    layer.create_dataset("outChannels", data=syn.weight.shape[0])
    layer.create_dataset("kernelSize", data=np.array(syn.weight.shape[2:]))
    for key, value in (("stride", syn.stride), ("padding", syn.padding), ("dilation", syn.dilation)):
        layer.create_dataset(key, data=np.array(pair(value)))  # (H, W): netx reverses them to Lava's (X, Y)
    layer.create_dataset("groups", data=syn.groups)
    layer.create_dataset("weight", data=syn.integer_weight().astype(np.float32))


def _write_dense(layer: h5py.Group, syn: ChipSynapse, pop: ChipPopulation) -> None:
    _check_dense(syn)
    _type(layer, "dense")
    layer.create_dataset("shape", data=np.array(pop.shape))
    layer.create_dataset("inFeatures", data=syn.weight.shape[1])
    layer.create_dataset("outFeatures", data=syn.weight.shape[0])
    layer.create_dataset("weight", data=syn.integer_weight().astype(np.float32))


def write_netx(net_or_path: ChipNetwork | str | os.PathLike, path: str | os.PathLike) -> None:
    """Write a chain network (or its chip file) as netx HDF5; refuses (by node name) what netx cannot run
    exactly."""
    net = chip_network(net_or_path)
    synapses = chain(net)
    input_shape = net.inputs[0].shape
    with h5py.File(path, "w") as f:
        layers = f.create_group("layer")
        first = layers.create_group("0")
        _type(first, "input")
        first.create_dataset("shape", data=np.array(input_shape))
        for syn in synapses:
            pop = net.population(syn.target)
            if syn.flatten:
                flat = layers.create_group(str(len(layers)))
                _type(flat, "flatten")
                flat.create_dataset("shape", data=np.array([syn.weight.shape[1], 1, 1]))
            layer = layers.create_group(str(len(layers)))
            (_write_dense if syn.dense else _write_conv)(layer, syn, pop)
            _write_neuron(layer, pop)


def run_netx(path: str | os.PathLike, spikes: np.ndarray, run_cfg: RunConfig | None = None) -> np.ndarray:
    """Run a netx HDF5 network on 0/1 input spikes [T, *NIR input shape]; returns its output spikes,
    bool [T, *NIR shape of the last population], aligned with our steps by NETX_STEP_OFFSET."""
    from lava.lib.dl.netx.hdf5 import Network  # lazy, see netx_dense_weights

    net = Network(net_config=os.fspath(path))
    net.net_config.f.close()  # every layer is built; netx would keep the file open for the process's life
    steps = len(spikes)
    data = spikes_to_lava(np.asarray(spikes).reshape(steps, -1) if len(net.inp.shape) == 1 else spikes)
    if data.shape[:-1] != net.inp.shape:
        raise DeployInputError(f"input spikes {np.shape(spikes)} do not fit the network's input {net.inp.shape[::-1]}")
    source = RingBuffer(data=data)
    source.s_out.connect(net.inp)
    with tempfile.TemporaryDirectory(prefix="netx_") as sink_dir:
        sink_path = os.path.join(sink_dir, "out.npy")
        sink = FileSink(net.out.shape, steps, sink_path)
        net.out.connect(sink.a_in)
        run_to_end(sink, steps, run_cfg, process_count=2 * len(net) + 2)  # synapse + LIF per block, source, sink
        return spikes_from_lava(np.load(sink_path))
