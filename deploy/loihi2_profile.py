"""The chip network's synapses built only from process types that Loihi 2 executes (`--profile loihi2`).

The CPU profile (`chip_lava.wire_synapses`) uses two process types of ours with Python models only:
`SpikeUpsample` (nearest up-sampling in front of a Conv) and `DelayLine` (a delay of more than one step). Lava's
compiler finds no Loihi 2 model for them. This profile replaces them:

- **Up-sampling synapse** (nearest x u, then the conv), whichever costs less on the chip:
  - of delay d >= 2: an **up-sampling relay population** of the up-sampled grid (u x u x the source's neurons),
    each relay neuron fed by its source neuron through a `Sparse` (or a `DelaySparse` of delay d - 2) of weight 1,
    then the synapse's `Conv` with its shared kernel: the relay spikes in the step its input arrives (see the
    relays below), so the path takes 1 + (d - 2) + 1 = d steps. Cost: u x u x n neurons and as many synapses.
  - of delay 1, where no step is left for a relay: u x u `Sparse` synapses from the source's spikes, one per
    copy (a, b) of the up-sampled grid: entry [output neuron, input neuron] = the kernel tap through which the
    output reads copy (a, b) of the input, if any. Within one copy an (output, input) pair meets at most one tap
    (the tap row is fixed by the output row and the copy's row), so every entry is one 8-bit mantissa, and the
    currents summed at the target are the up-sampled conv's (a single Sparse holding the sum of the taps would
    need up to 10-bit weights). Cost: no neuron; an entry per tap and copy, the conv's pairs on the up-sampled
    grid, instead of a shared kernel.
- **Delay d > 1 on a Conv or Sparse path** -> a **relay population** in front of the synapse, delayed by d - 1:
  LIFs with du = dv = 4095 (no current or voltage kept from the step before) and vth = 0, fed through an identity
  synapse of weight 1; a spike gives u = 1 << 6 = 64 > vth << 6 = 0, so a relay spikes exactly one step after its
  input arrives (docs/lava-fixed-point.md section 2.3). The identity synapse is a `DelaySparse` of delay k (a
  spike at t arrives at t + 1 + k), so one relay stands for any delay up to 63 steps; the relays of one source
  form a chain in increasing delay, each fed by the one before, and are shared by every synapse of that source and
  delay. Cost: one population of the source's size and one synapse per neuron for each distinct delay of the
  source. Lava 0.10 has no delayed Conv, and a DelaySparse of the conv itself (every (output, input) pair its own
  entry) costs C_out x k x k entries per source neuron instead of one.
- **Delay d > 1 on a Dense path** -> Lava's `DelayDense` with delay d - 1 (a spike at t arrives at t + 1 + d - 1).

Loihi 2 executes every type of `CHIP_TYPES`: lava-dl's netx tutorials (PilotNet) run Dense, Conv, Sparse and
CUBA (LIF) blocks on Loihi 2 hardware; LIFReset is the LIF with a periodic reset that netx builds for a reset
interval; DelayDense and DelaySparse are Lava's synaptic-delay synapses, whose bit-accurate models follow
Loihi 2's 6-bit delays. The weights are Dense's: doubled mantissas with one less in the exponent, so that the
even mixed-sign weights Lava keeps are ours exactly (`chip_lava.DENSE_WEIGHT_FACTOR`).
"""
from __future__ import annotations

import warnings

import numpy as np
from lava.magma.core.process.ports.ports import OutPort
from scipy.sparse import SparseEfficiencyWarning, coo_matrix, identity

from export.chip import READOUT, RELAY_SUFFIX, UP_RELAY, ChipNetwork, ChipSynapse, pair, relay_plan

from deploy.chip_lava import DENSE_EXP_OFFSET, DENSE_WEIGHT_FACTOR, LavaGraphError, _conv
from deploy.layout import lava_shape

# Process types of the chip side of this profile (the host side: the feeds and sinks of host I/O)
CHIP_TYPES = frozenset({"LIF", "LIFReset", "Dense", "Sparse", "Conv", "DelayDense", "DelaySparse"})
RELAY_DU = RELAY_DV = 4095  # keep nothing from the step before
RELAY_VTH = 0  # one unit of input (64 in v) crosses it


def lava_index(shape: tuple[int, ...], c: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Flat index in Lava's (W, H, C) C-order of NIR position (c, y, x) in a population of NIR shape (C, H, W)."""
    channels, height, _ = shape
    return (x * height + y) * channels + c


def upsample_pieces(syn: ChipSynapse, source_shape: tuple[int, int, int],
                    target_shape: tuple[int, int, int]) -> list[coo_matrix]:
    """The u x u integer mantissa matrices [target neurons, source neurons] (Lava's flat layouts) of an
    up-sampling synapse, one per copy of the up-sampled grid (module docstring)."""
    if syn.groups != 1:
        raise LavaGraphError(f"synapse {syn.source} -> {syn.target}: up-sampling with groups={syn.groups}")
    u, (c_in, h_in, w_in) = syn.upsample, source_shape
    _, h_out, w_out = target_shape
    (s_y, s_x), (p_y, p_x), (d_y, d_x) = pair(syn.stride), pair(syn.padding), pair(syn.dilation)
    c_out, _, k_h, k_w = syn.weight.shape

    def taps(size_out: int, size_in: int, kernel: int, stride: int, pad: int, dil: int, copy: int):
        """(tap, output positions, input positions) along one axis where the tap reads copy `copy`."""
        out = np.arange(size_out)
        for k in range(kernel):
            row = out * stride - pad + k * dil  # the up-sampled input row this tap reads
            ok = (row >= 0) & (row < size_in * u) & (row % u == copy)
            if ok.any():
                yield k, out[ok], row[ok] // u

    pieces = []
    for a in range(u):
        for b in range(u):
            rows, cols, vals = [], [], []
            for k_y, y_out, y_in in taps(h_out, h_in, k_h, s_y, p_y, d_y, a):
                for k_x, x_out, x_in in taps(w_out, w_in, k_w, s_x, p_x, d_x, b):
                    co, ci, yo, xo = np.meshgrid(np.arange(c_out), np.arange(c_in), y_out, x_out, indexing="ij")
                    _, _, yi, xi = np.meshgrid(np.arange(c_out), np.arange(c_in), y_in, x_in, indexing="ij")
                    rows.append(lava_index(target_shape, co + syn.out_offset, yo, xo).ravel())
                    cols.append(lava_index(source_shape, ci, yi, xi).ravel())
                    vals.append(np.broadcast_to(syn.weight[:, :, k_y, k_x][:, :, None, None], co.shape).ravel())
            if not rows:
                continue
            shape = (int(np.prod(target_shape)), int(np.prod(source_shape)))
            piece = coo_matrix((np.concatenate(vals).astype(np.int32),
                                (np.concatenate(rows), np.concatenate(cols))), shape=shape)
            if piece.tocsr().nnz != piece.nnz:  # one tap per pair and copy: nothing summed
                raise LavaGraphError(f"synapse {syn.source} -> {syn.target}: two taps met in copy ({a}, {b})")
            pieces.append(piece)
    return pieces


MAX_SYNAPTIC_DELAY = 63  # DelaySparse's 6-bit delays (docs/lava-fixed-point.md section 3.3)


class Loihi2Wiring:
    """Wires a network's synapses with `CHIP_TYPES` only; the relays of `export.chip.relay_plan` are made
    first, once each."""

    def __init__(self, net: ChipNetwork, sources: dict[str, OutPort]):
        # Lava's DelaySparse model rebuilds its delay matrices at every step and scipy warns each time; the forked
        # processes inherit this filter
        warnings.filterwarnings("ignore", "Changing the sparsity structure", SparseEfficiencyWarning)
        self.net, self.sources, self.processes = net, sources, []
        self.relays: dict[tuple[str, int, int], OutPort] = {}  # (source, up-sampling factor, delay)
        for source, relays in relay_plan(net).items():
            before, late = sources[source], 0  # plain relays chain, each fed by the one before
            for factor, k in relays:
                if factor == 1:
                    n = int(np.prod(before.shape))
                    before = self._relay(before, identity(n, dtype=np.int32, format="csr"), k - late - 1,
                                         before.shape, f"{source}{RELAY_SUFFIX}{k}")
                    self.relays[source, 1, k], late = before, k
                else:
                    self.relays[source, factor, k] = self._upsampling_relay(source, factor, k)

    def _relay(self, before: OutPort, weights, wait: int, shape: tuple[int, ...], name: str) -> OutPort:
        """A relay population of `shape` fed from `before` through `weights` (0/1, [relay neurons, inputs]) with a
        synaptic delay of `wait` steps; returns its spikes, `wait` + 1 steps after its input's."""
        from lava.proc.lif.process import LIF
        from lava.proc.sparse.process import DelaySparse, Sparse

        if wait > MAX_SYNAPTIC_DELAY:
            raise LavaGraphError(f"{name}: a relay would need a synaptic delay of {wait} steps, beyond "
                                 f"{MAX_SYNAPTIC_DELAY}")
        if wait:
            # the delays as a matrix of the weights' sparsity: an int would make Lava build a dense n x n matrix of
            # it (2 GB at 16,384 neurons)
            delays = weights.astype(int)
            delays.data[:] = wait
            link = DelaySparse(weights=weights, delays=delays)
        else:
            link = Sparse(weights=weights)
        relay = LIF(shape=shape, du=RELAY_DU, dv=RELAY_DV, vth=RELAY_VTH, name=name)
        before.flatten().connect(link.s_in)
        link.a_out.reshape(shape).connect(relay.a_in)
        self.processes += [link, relay]
        return relay.s_out

    def _upsampling_relay(self, source: str, factor: int, steps: int) -> OutPort:
        """The spikes of `source` up-sampled by `factor`, `steps` >= 1 chip steps late."""
        shape = self.net.source_shape(source)
        up_shape = (shape[0], shape[1] * factor, shape[2] * factor)
        c, y, x = np.meshgrid(*map(np.arange, up_shape), indexing="ij")
        rows, cols = lava_index(up_shape, c, y, x).ravel(), lava_index(shape, c, y // factor, x // factor).ravel()
        ones = coo_matrix((np.ones(rows.size, dtype=np.int32), (rows, cols)),
                          shape=(rows.size, int(np.prod(shape)))).tocsr()
        return self._relay(self.sources[source], ones, steps - 1, lava_shape(up_shape),
                           f"{source}{UP_RELAY.format(factor=factor)}{steps}")

    def wire(self, syn: ChipSynapse) -> list[OutPort]:
        """The output ports of one chip synapse (several Sparse matrices for a delay-1 up-sampling), its delay
        included."""
        from lava.proc.dense.process import DelayDense, Dense
        from lava.proc.sparse.process import Sparse

        target_shape = self.net.readout.shape if syn.target == READOUT else self.net.source_shape(syn.target)
        if syn.dense:
            weight = np.zeros((target_shape[0], syn.weight.shape[1]), dtype=np.int32)
            weight[syn.out_offset:syn.out_offset + syn.weight.shape[0]] = DENSE_WEIGHT_FACTOR * syn.weight
            kwargs = dict(weights=weight, weight_exp=syn.weight_exp + DENSE_EXP_OFFSET)
            dense = DelayDense(delays=syn.delay - 1, **kwargs) if syn.delay > 1 else Dense(**kwargs)
            source = self.sources[syn.source]
            (source.transpose().flatten() if syn.flatten and len(source.shape) > 1 else source).connect(dense.s_in)
            self.processes.append(dense)
            return [dense.a_out]
        if syn.delay > 1 or syn.upsample == 1:  # a conv reading the source, a relay or an up-sampling relay
            source = (self.relays[syn.source, syn.upsample, syn.delay - 1] if syn.delay > 1 else
                      self.sources[syn.source])
            return [_conv(syn, source, target_shape, self.processes)]
        source, outs = self.sources[syn.source], []
        for piece in upsample_pieces(syn, self.net.source_shape(syn.source), target_shape):
            sparse = Sparse(weights=(DENSE_WEIGHT_FACTOR * piece).tocsr(), weight_exp=syn.weight_exp + DENSE_EXP_OFFSET)
            source.flatten().connect(sparse.s_in)
            self.processes.append(sparse)
            outs.append(sparse.a_out.reshape(lava_shape(target_shape)))
        if not outs:
            raise LavaGraphError(f"synapse {syn.source} -> {syn.target}: up-sampling reaches no target neuron")
        return outs


def wire_loihi2(net: ChipNetwork, sources: dict[str, OutPort], targets: dict) -> list:
    """Every chip synapse from its source's port to its target's a_in with `CHIP_TYPES` only; returns the
    processes made."""
    wiring = Loihi2Wiring(net, sources)
    for syn in net.synapses:
        for port in wiring.wire(syn):
            port.connect(targets[syn.target])
    return wiring.processes
