"""Run a compiled "sddpm-net-nir" graph (a NIR graph from another tool, with Lava's integers in its node
metadata, written by `export.nir_foreign`) on Lava's fixed-point CPU models, one sample at a time.

Mapping (../shared/research/lava.md sections 1-3 and 5):
- an IF/LIF/CubaLIF node -> `LIF(du, dv, vth, bias_mant, bias_exp)` from its metadata, or, where its bias
  is nonzero and switches on after the first step (`bias_start`), `WindowBiasLIF`: Lava's bit-accurate
  LIF whose bias is 0 before that step;
- Affine/Linear -> `Dense`. Lava clips mixed-sign weights to 8 bits and truncates them to even values
  (lava.md 2.1), so it gets `2 * mant` with `weight_exp = exp - 1`: the floor shift applies to the sum,
  which is even, so this is exact also for exp = 0;
- Conv2d -> `Conv` with the integer weights `mant << exp` (Lava's Conv ignores weight_exp, lava#803),
  turned from PyTorch's cross-correlation [C_out, C_in, kH, kW] into Lava's true convolution
  (C_out, kX, kY, C_in): both kernel axes flipped, then the axes reordered (lava.md 3);
- Input -> `RingBuffer` (it sends column t-1 at Lava step t); every neuron node's spikes -> a `FileSink`.

Layout. Lava's conv populations are (X, Y, C) = (W, H, C) where NIR's are (C, H, W). Every population
and input is kept in Lava as its NIR array with the axes reversed (1-D ones unchanged); a Flatten is then
the virtual port `.transpose().flatten()` (transpose reverses the axes back), NIR's C-order flattening.

Every refusal (`UnsupportedGraphError`, naming the node) comes from `deploy.net_plan.plan_net`, before any
Lava process exists; a run that fails is torn down without leaving OS processes behind (`run_to_end`).

Timing is `simulators.nir_net`'s: an Input's spikes of step t reach its neurons at t + 1 through
RingBuffer -> synapse, each synapse delays by one step, and recurrent edges need nothing special
(Lava's synapses send before they receive).

`deploy.net_plan` reads the integers from node metadata; neither module may import `simulators` or `sddpm`.
Lava's compiler executes every module of this package, outside the package, when it looks for FileSink's
process model: module level stays cheap (Lava only, no lava-dl), and without `from __future__ import
annotations`, whose string annotations dataclasses cannot resolve there.
"""
import os
import tempfile
from collections.abc import Mapping

import nir
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.run_configs import RunConfig
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.source import RingBuffer
from lava.proc.lif.models import PyLifModelBitAcc
from lava.proc.lif.process import LIF

from deploy.errors import DeployInputError
from deploy.layout import lava_conv_weight, lava_shape
from deploy.net_plan import NetPlan, Synapse, load_graph, plan_net
from deploy.processes import FileSink, run_to_end

# Dense keeps only even mixed-sign weights (lava.md 2.1): doubled mantissas, one less in the exponent.
DENSE_WEIGHT_FACTOR = 2
DENSE_EXP_OFFSET = -1


class WindowBiasLIF(LIF):
    """Lava's `LIF` whose bias is off before step `bias_start` (counted from 0)."""

    def __init__(self, *, bias_start: int, **lif):
        super().__init__(**lif)
        self.proc_params["bias_start"] = bias_start


@implements(proc=WindowBiasLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowBiasLIFModel(PyLifModelBitAcc):
    # registered for WindowBiasLIF alone; the parent stays LIF's model (Lava's @implements refuses a
    # subclass of a model registered for another process)
    implements_process = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.bias_start = proc_params["bias_start"]

    def scale_bias(self):
        super().scale_bias()  # run_spk calls it every step, before the voltage update
        if self.time_step <= self.bias_start:  # Lava counts steps from 1
            self.effective_bias = np.zeros_like(self.effective_bias)


def check_inputs(expected: Mapping[str, tuple[int, ...]], inputs: Mapping[str, np.ndarray]) -> int:
    """The number of steps of 0/1 spike trains [T, *shape], one per Input."""
    if set(inputs) != set(expected):
        raise DeployInputError(f"inputs must be given for {sorted(expected)}, got {sorted(inputs)}")
    steps = {len(x) for x in inputs.values()}
    if len(steps) != 1 or 0 in steps:
        raise DeployInputError(f"every input needs the same number T >= 1 of steps, got {sorted(steps)}")
    steps = steps.pop()
    for name, x in inputs.items():
        if np.shape(x) != (steps, *expected[name]):
            raise DeployInputError(f"input {name!r}: expected [T={steps}, {expected[name]}], got {list(np.shape(x))}")
        if not np.isin(x, (0, 1)).all():
            raise DeployInputError(f"input {name!r}: spikes must be 0 or 1")
    return steps


def to_lava(spikes: np.ndarray) -> np.ndarray:
    """[T, *NIR shape] -> a RingBuffer's int32 (*Lava shape, T): every axis reversed."""
    return np.ascontiguousarray(np.asarray(spikes).T, dtype=np.int32)


def from_lava(record: np.ndarray) -> np.ndarray:
    """A FileSink's [T, *Lava shape] -> bool [T, *NIR shape]."""
    return record.transpose(0, *range(record.ndim - 1, 0, -1)).astype(bool)


def _synapse_process(syn: Synapse, source_shape: tuple[int, ...]) -> AbstractProcess:
    if syn.conv is None:
        return Dense(weights=(DENSE_WEIGHT_FACTOR * syn.mant).astype(np.int32), weight_exp=syn.exp + DENSE_EXP_OFFSET)
    geo = syn.conv
    return Conv(weight=lava_conv_weight(syn.weight), input_shape=lava_shape(source_shape), stride=geo.stride[::-1],
                padding=geo.padding[::-1], dilation=geo.dilation[::-1], groups=geo.groups)


def _read_port(port: OutPort, flatten: bool) -> OutPort:
    # reversing the Lava axes gives NIR's (C, H, W), whose C-order flattening is NIR's Flatten
    return port.transpose().flatten() if flatten and len(port.shape) > 1 else port


def _build(plan: NetPlan, inputs: Mapping[str, np.ndarray], steps: int, sink_dir: str) \
        -> tuple[AbstractProcess, dict[str, str]]:
    """The Lava processes, connected; returns one of them (running it runs the whole connected graph) and each
    population's sink file."""
    ports = {name: RingBuffer(data=to_lava(inputs[name])).s_out for name in plan.inputs}
    lifs, paths = {}, {}
    for name, pop in plan.populations.items():
        params = dict(shape=lava_shape(pop.shape), du=pop.du, dv=pop.dv, vth=pop.vth, bias_mant=pop.bias_mant.T,
                      bias_exp=pop.bias_exp, name=name)
        windowed = pop.bias_start > 0 and pop.bias_mant.any()
        lifs[name] = WindowBiasLIF(bias_start=pop.bias_start, **params) if windowed else LIF(**params)
        paths[name] = os.path.join(sink_dir, f"{len(paths)}.npy")  # node names may hold any character
        sink = FileSink(lava_shape(pop.shape), steps, paths[name])
        lifs[name].s_out.connect(sink.a_in)
        ports[name] = lifs[name].s_out
    for syn in plan.synapses:
        proc = _synapse_process(syn, plan.source_shape(syn.source))
        _read_port(ports[syn.source], syn.flatten).connect(proc.s_in)
        proc.a_out.connect(lifs[syn.target].a_in)
    return next(iter(lifs.values())), paths


def run_net_on_lava(graph_or_path: nir.NIRGraph | str | os.PathLike, inputs: Mapping[str, np.ndarray],
                    run_cfg: RunConfig | None = None) -> dict[str, np.ndarray]:
    """Run a compiled sddpm-net-nir graph on Lava (default: Loihi2SimCfg, fixed_pt), one sample.

    inputs: Input name -> 0/1 spikes [T, *shape]. Returns every neuron node's spikes, bool [T, *shape].
    """
    plan = plan_net(load_graph(graph_or_path))
    steps = check_inputs(plan.inputs, inputs)
    with tempfile.TemporaryDirectory(prefix="net_lava_") as sink_dir:
        anchor, paths = _build(plan, inputs, steps, sink_dir)
        run_to_end(anchor, steps, run_cfg, plan.process_count)
        return {name: from_lava(np.load(path)) for name, path in paths.items()}
