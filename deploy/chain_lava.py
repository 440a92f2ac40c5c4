"""A compiled SDDPM chip network as one Lava process graph that stays up for a whole sampling chain.

`chip_lava.ChipGraph` builds, compiles and forks a graph for every denoising step. `ChainGraph` does that
once, then runs one period of P = `steps_per_denoising_step` chip steps per denoising step: denoising step
k is Lava's time steps kP + 1 .. kP + P (chip steps 0 .. P - 1 of period k). Between periods the host
(PyTorch, the sampler) computes the next x_t.

- Populations are the `LIFReset`s of `chip_lava`, with reset interval P: u and v are zeroed at chip step
  `depth` of every period, the first step of the population's window [depth, depth + T). Populations with
  a time-embedding bias are `HostBiasLIF`s, which take this period's bias row at that same reset; in the loihi2
  profile (`deploy.loihi2_profile`) they are plain `LIFReset`s whose bias the host writes before each period.
- Nothing left over from period k reaches a window of period k + 1: a spike of population s at chip step
  tau <= P - 1 reaches a target of depth d_t at tau + (d_t - d_s); if that falls in period k + 1 it is
  chip step tau + d_t - d_s - P <= d_t - d_s - 1 < d_t there, before the target's reset. The bias stays on
  outside windows for the same reason as in `chip_lava` (what it causes reaches no window).
- Host inputs, once per denoising step, exactly in int32: a `HostFeed` sends the host's input current of
  x_t straight into the first population's a_in (no delay) during chip steps [0, T), and a second one
  sends the bias rows of every time-dependent population (concatenated) during the whole period.
- Outputs, once per denoising step: a `WindowSink` per population records its spikes in its window, one
  on the readout's synapses records the output currents in [readout depth, P); each sends its record to
  the host at the window's end. No `Var.get()` (element by element) anywhere.

The graph stops when the `with` block ends, cleanly or on any error, leaving no OS process.
"""
import time
import numpy as np
import torch

from export.chip import READOUT, ChipNetwork, check_ranges
from export.host import host_input_current
from chiprun import ChipRun

from deploy.chip_lava import check_profile, lava_bias, lava_run, process_types, run_config, to_lava, wire
from deploy.errors import DeployInputError
from deploy.layout import lava_shape
from deploy.processes import (CHANNEL_SLOTS, HostBiasLIF, HostFeed, WindowSink, abort_graph, check_memory,
                              frozen_heap, raise_open_file_limit)


class GraphStateError(DeployInputError):
    """A chain graph used outside its `with` block, or after a failed step."""


class ChainGraph:
    """`with ChainGraph(net) as graph: graph.step(x_t, t)` for every denoising step of a chain."""

    def __init__(self, net: ChipNetwork, run_cfg=None, profile: str = "cpu"):
        from lava.proc.lif.process import LIFReset

        check_ranges(net)  # every integer inside its hardware range, before any process exists
        started = time.perf_counter()
        self.net, self.run_cfg = net, run_cfg if run_cfg is not None else run_config("sim")
        self.profile = check_profile(profile)
        self.period, steps = net.steps_per_denoising_step, net.snn_steps
        self.timed = [p for p in net.populations if p.bias_mant.shape[0] > 1]  # time-embedding bias rows
        offsets = np.cumsum([0] + [p.shape[0] for p in self.timed])
        self.row_offset = {p.name: int(o) for p, o in zip(self.timed, offsets)}
        first = net.populations[0]
        self.current = HostFeed(shape=lava_shape(first.shape), period=self.period, on_steps=steps)
        # cpu: the bias rows travel as messages into HostBiasLIFs; loihi2: the host writes them into the LIFs'
        # bias between denoising steps (`step`), as it would configure a chip between runs
        self.rows = HostFeed(shape=(int(offsets[-1]),), period=self.period, on_steps=self.period) \
            if self.timed and self.profile == "cpu" else None
        self.lif, self.sinks = {}, {}
        for p in net.populations:
            bias = lava_bias(p)
            # reset when time_step % P == (depth + 1) % P: chip step `depth` of every period (Lava counts from 1)
            lif = dict(shape=lava_shape(p.shape), du=p.du, dv=p.dv, vth=p.vth, bias_mant=bias,
                       bias_exp=p.bias_exp, reset_interval=self.period, reset_offset=p.depth + 1)
            if p.name in self.row_offset and self.rows is not None:
                self.lif[p.name] = HostBiasLIF(rows=self.rows.s_out.shape[0], row_offset=self.row_offset[p.name],
                                               **lif)
                self.rows.s_out.connect(self.lif[p.name].rows_in)
            else:
                self.lif[p.name] = LIFReset(**lif)
            self.sinks[p.name] = WindowSink(shape=lava_shape(p.shape), period=self.period, start=p.depth,
                                            length=steps)
            self.lif[p.name].s_out.connect(self.sinks[p.name].a_in)
        self.current.s_out.connect(self.lif[first.name].a_in)
        self.sinks[READOUT] = WindowSink(shape=lava_shape(net.readout.shape), period=self.period,
                                         start=net.readout.depth, length=steps)
        self.processes = [self.current, *([self.rows] if self.rows else []), *self.lif.values(),
                          *self.sinks.values(), 
                          *wire(net, {name: lif.s_out for name, lif in self.lif.items()},
                                {READOUT: self.sinks[READOUT].a_in} | {n: lif.a_in for n, lif in self.lif.items()},
                                self.profile)]
        self.graph_seconds = time.perf_counter() - started
        self.start_seconds = 0.0  # Lava's compile and fork, in __enter__
        self.note: str | None = None  # the open-file limit's, once started
        self._state = "built"  # -> ("deferred" ->) "running" -> "stopped", or "failed" after an error inside a step

    @property
    def build_seconds(self) -> float:
        """Everything paid once per chain: the process objects, Lava's compile and the fork of every process."""
        return self.graph_seconds + self.start_seconds

    def __enter__(self) -> "ChainGraph":
        check_memory(len(self.processes), self.net.weight_count)
        self.note = raise_open_file_limit(len(self.processes))
        if self.rows is None and self.timed:
            # loihi2 profile: the host writes the bias rows with Var.set, which needs a started runtime; the first
            # step's rows go in as the initial values instead, so the runtime starts at the first step
            self._state = "deferred"
            return self
        self._start()
        return self

    def _start(self) -> None:
        started = time.perf_counter()
        self._state = "failed"  # until the runtime is up: a failure half-way still tears it down
        try:
            with frozen_heap():  # the fork of every process happens here
                self.current.create_runtime(run_cfg=self.run_cfg,
                                            compile_config={"pypy_channel_size": CHANNEL_SLOTS})
        except BaseException:
            self.close()
            raise
        self._state = "running"
        self.start_seconds = time.perf_counter() - started

    def __exit__(self, *exc) -> None:
        self.close()

    def step(self, x: torch.Tensor, t: int) -> ChipRun:
        """One denoising step of one image x_t [1, C, H, W] at diffusion step t, on the running graph."""
        from lava.magma.core.run_conditions import RunSteps

        if self._state not in ("running", "deferred"):
            raise GraphStateError(f"the chain graph is {self._state}: steps run inside its `with` block")
        if x.dim() != 4 or x.shape[0] != 1:
            raise DeployInputError(f"Lava runs one image at a time: x must be [1, C, H, W], got {list(x.shape)}")
        if not 0 <= t < self.net.diffusion_steps:
            raise DeployInputError(f"t must lie in [0, {self.net.diffusion_steps}), got {t}")
        if self._state == "deferred":
            for p in self.timed:
                self.lif[p.name].bias_mant.init = lava_bias(p, t)
            self._start()
        elif self.rows is None:
            for p in self.timed:  # Var.set: one message per neuron, the price of writing a bias from the host
                self.lif[p.name].bias_mant.set(lava_bias(p, t))
        net, started = self.net, time.perf_counter()
        self._state = "failed"  # until the records of this period are back
        self.current.send(to_lava(host_input_current(net, x)[0].numpy()).astype(np.int32))
        if self.rows is not None:
            self.rows.send(np.concatenate([p.bias_mant[t] for p in self.timed]).astype(np.int32))
        self.current.run(condition=RunSteps(num_steps=self.period))
        records = {name: np.transpose(sink.receive(), (0, 3, 2, 1)) for name, sink in self.sinks.items()}
        self._state = "running"
        # the host's sends, Lava's period and the records read back
        return lava_run(net, records, t, {"run": time.perf_counter() - started},
                        {"processes": len(self.processes), "profile": self.profile, **process_types(self.processes)})

    def denoiser(self):
        """eps = f(x_t, t) for the samplers of `sddpm.samplers`; a batch runs image after image."""
        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.step(x[i:i + 1], int(t[i])).eps for i in range(x.shape[0])]).to(x.dtype)
        return eps

    def close(self) -> None:
        """Stop the graph: Lava's own stop after good steps, an abort after a failure (or before any run)."""
        runtime = self.current.runtime
        if runtime is not None and self._state != "stopped":
            if self._state == "running" and runtime._is_started:
                self.current.stop()
            else:
                abort_graph(runtime)
        for proc in (self.current, self.rows, *self.sinks.values()):
            if proc is not None:
                proc.close_pipe()
        self._state = "stopped"
