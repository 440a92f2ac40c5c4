"""Lava processes that Lava does not ship, and the process-count limits of its CPU runtime.

- `FileSink`: records what arrives at its port every step and writes the whole record to one .npy file
  at its last step. Lava's own sinks are read with `Var.get()`, which sends every element as its own
  message (docs/lava-fixed-point.md section 7.2: 18.6 s for 688,128 values); one file read per run is the point.
- `SpikeUpsample`: nearest up-sampling of a population's spikes without delay, for the Conv of an
  up-sampling synapse (Lava's Conv has no up-sampling, its virtual ports cannot repeat values).
- `DelayLine`: delays an integer current by `delay` steps. Conv and Sparse synapses delay by exactly one
  step; a longer path (a skip connection meeting a deep one) needs more. On Loihi 2 that is a synaptic
  delay in hardware (Lava's DelayDense, dense only, up to 62 steps); on the CPU it is this ring buffer,
  which sends before it receives, like Lava's own synapses, so loops cannot deadlock.

- `WindowBiasLIF`: Lava's bit-accurate LIF whose bias is off before a given step (a population whose input
  arrives late, in a network run from its first step).
- `HostFeed`, `WindowSink`, `HostBiasLIF`: the host I/O of a graph that stays up for a whole sampling chain,
  one period of chip steps per denoising step. Lava's own `Injector`/`Extractor` carry float64 (their
  models declare `float`), and a LIF's `a_in << 6` refuses floats; these carry int32 through the same
  external pipes (a channel's dtype is its process model port's), one message per denoising step each way.

Every Lava process is its own OS process; the main process holds about 10 file descriptors for each
(docs/lava-fixed-point.md section 7.3), so a large graph outgrows the common soft limit of 1024. `raise_open_file_limit`
raises the soft limit up to the hard one, and refuses, before any process starts, a graph that needs more.
"""
import contextlib
import gc
import os
import resource
import time

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg, RunConfig
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifModelBitAcc, PyLifResetModelBitAcc
from lava.proc.lif.process import LIF, LIFReset

from deploy.errors import DeployError, DeployInputError

FDS_PER_PROCESS = 10  # measured, docs/lava-fixed-point.md section 7.3
# Shared-memory slots per Lava channel (Lava's default: 64). The processes advance in lockstep, one message
# per channel per step, so a few slots suffice; 64 slots of a 32x32x16 int32 port are 4 MiB per channel.
CHANNEL_SLOTS = 4
FDS_BASE = 256  # the main process's own files, libraries and pipes


# What a Lava graph adds to the memory in use once it forks, fitted to the mnist layout at ch 16, 32 and 64
# (benchmarks/bench_lava_memory.py: the process tree's peak Pss above the parent's RSS before the fork, 4313,
# 4479 and 6287 MB for 374 processes and 1.25 / 5.00 / 19.98 M stored 8-bit weights; the fit is within 3 % of
# each). Each forked process writes about LAVA_MB_PER_PROCESS of pages of its own (interpreter, Lava's
# runtime); what grows with the network is the synapses' weights, about LAVA_BYTES_PER_WEIGHT per stored
# weight (far more than the int32 kernel Lava's fixed-point Conv model holds; where the rest goes was not
# dissected). A fit to neurons instead, made from ch 16 and 32 alone, predicted 4.8 GB at ch 64.
LAVA_MB_PER_PROCESS = 10.9
LAVA_BYTES_PER_WEIGHT = 110


class LavaMemoryError(DeployError, MemoryError):
    """The graph would need more memory than this machine has available."""


def mem_available_mb() -> float:
    """The kernel's estimate of memory available without swapping (/proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise DeployError("/proc/meminfo has no MemAvailable line: cannot check a Lava graph's memory")


def lava_memory_mb(processes: int, weights: int) -> float:
    """What a Lava graph of `processes` processes and `weights` stored synaptic weights adds once forked, in MiB."""
    return processes * LAVA_MB_PER_PROCESS + weights * LAVA_BYTES_PER_WEIGHT / 2 ** 20


def check_memory(processes: int, weights: int) -> None:
    """Refuse, before any process exists, a graph that would exhaust the memory: on this machine (24 GB) Lava
    at ch 64 ran into the kernel's OOM killer with the old up-sampling mapping, which stops the run after
    minutes with nothing to say why."""
    needed, available = lava_memory_mb(processes, weights), mem_available_mb()
    if needed > available:
        raise LavaMemoryError(
            f"a Lava graph of {processes} processes and {weights / 1e6:.2f} M synaptic weights needs about "
            f"{needed / 1024:.1f} GB ({LAVA_MB_PER_PROCESS:g} MB per process, {LAVA_BYTES_PER_WEIGHT:g} bytes per "
            f"weight, measured), and {available / 1024:.1f} GB are available: run it on a machine with more memory, or "
            f"check the network with the bit-accurate simulator (`sddpm verify`), which Lava equals")


class TooManyProcessesError(DeployError, RuntimeError):
    """The graph needs more file descriptors than this machine's hard limit allows."""


def raise_open_file_limit(processes: int) -> str | None:
    """Make room for `processes` Lava processes; returns a note when the soft limit was raised."""
    needed = FDS_BASE + FDS_PER_PROCESS * processes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return None
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise TooManyProcessesError(f"a Lava graph of {processes} processes needs about {needed} open files; the "
                                    f"hard limit is {hard} (raise it with `ulimit -Hn` as root, or split the graph)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return f"raised the open-file limit from {soft} to {needed} for {processes} Lava processes"


class FileSink(AbstractProcess):
    """Records its int32 input for `steps` steps into `path` (.npy, [steps, *shape])."""

    def __init__(self, shape: tuple[int, ...], steps: int, path: str):
        super().__init__(shape=shape, steps=steps, path=path)
        self.a_in = InPort(shape=shape)


@implements(proc=FileSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSinkModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.steps = proc_params["steps"]
        self.path = proc_params["path"]
        self.record = np.zeros((self.steps, *proc_params["shape"]), dtype=np.int32)

    def run_spk(self):
        self.record[self.time_step - 1] = self.a_in.recv()
        if self.time_step == self.steps:
            tmp = f"{self.path}.{os.getpid()}.tmp.npy"  # renamed once complete: the reader never sees half a file
            # An exception in a process model hangs Lava's runtime (lava#178, #236): the sink stays silent and
            # `read_record` reports the missing file once the runtime has stopped.
            with contextlib.suppress(OSError):
                np.save(tmp, self.record)
                os.replace(tmp, self.path)


class SinkError(DeployError, RuntimeError):
    """A FileSink wrote no record (its file could not be written)."""


def read_record(sink: FileSink) -> np.ndarray:
    """What a FileSink recorded, [steps, *shape], after the run has stopped."""
    path = sink.proc_params["path"]
    if not os.path.exists(path):
        raise SinkError(f"Lava sink {sink.name} wrote no record to {path} (not writable?)")
    return np.load(path)


class DelayLine(AbstractProcess):
    """a_out[t] = a_in[t - delay] (zero before): an integer current delayed by `delay` >= 1 steps."""

    def __init__(self, shape: tuple[int, ...], delay: int):
        if delay < 1:
            raise DeployInputError(f"a delay line delays by at least one step, got {delay}")
        super().__init__(shape=shape, delay=delay)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayLineModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.ring = np.zeros((proc_params["delay"], *proc_params["shape"]), dtype=np.int32)
        self.head = 0

    def run_spk(self):
        self.a_out.send(self.ring[self.head])  # what arrived `delay` steps ago
        self.ring[self.head] = self.a_in.recv()
        self.head = (self.head + 1) % len(self.ring)


class SpikeUpsample(AbstractProcess):
    """s_out[t] = s_in[t] repeated `factor` times along x and y (nearest up-sampling), in the same step.

    It adds no delay: like a neuron, it receives and then sends within one step, so a Conv reading it
    delivers one step after the population spiked, as a Conv reading the population does. One per up-sampled
    source, shared by every synapse that reads it; the Conv behind it holds the kernel once, where one Sparse
    matrix per tap class held an entry per (target neuron, tap), which outgrew memory at ch 64
    (benchmarks/bench_lava_memory.py). On Loihi 2 this fan-out is axon routing, not a process."""

    def __init__(self, shape: tuple[int, int, int], factor: int):
        if factor < 2:
            raise DeployInputError(f"a spike up-sampling repeats each spike at least twice per axis, got {factor}")
        super().__init__(shape=shape, factor=factor)
        self.s_in = InPort(shape=shape)
        self.s_out = OutPort(shape=(shape[0] * factor, shape[1] * factor, shape[2]))


@implements(proc=SpikeUpsample, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeUpsampleModel(PyLoihiProcessModel):
    # the types of the bit-accurate LIF's s_out and of Conv's fixed-point s_in
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.factor = proc_params["factor"]

    def run_spk(self):
        spikes = self.s_in.recv()  # (W, H, C)
        self.s_out.send(np.repeat(np.repeat(spikes, self.factor, axis=0), self.factor, axis=1))


def abort_graph(runtime) -> None:
    # After a model raised, Lava's runtime has joined every OS process, but stop() still waits for the
    # runtime service's TERMINATED answer, which never comes (lava-nc 0.10.0: it blocks forever). Lava has no
    # abort, so: end what is still running (a failure outside the models), mark the runtime not started,
    # and let stop() shut down the shared memory and the watchdogs; join() ends the runtime's port threads.
    for actor in runtime._messaging_infrastructure.actors:
        if not actor._is_done:
            actor.terminate()
    runtime._is_started = False
    runtime.stop()
    runtime.join()


@contextlib.contextmanager
def frozen_heap():
    """Keep the forked Lava processes from copying the parent's heap.

    Every Lava process is a fork of this one and shares its pages until a page is written. CPython's cyclic
    garbage collector writes into the header of every object it visits, so the first full collection in a
    child copies every page that holds one of the parent's objects (torch, Lava, the graph). gc.freeze()
    moves the objects that exist now into a generation the collector never visits. Measured at ch 16
    (benchmarks/bench_lava_memory.py, 407 processes): the children's private memory 6.46 -> 6.14 GB; the rest
    is what each child writes itself (reference counts, its process model's state, Lava's buffers)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_to_end(anchor: AbstractProcess, steps: int, run_cfg: RunConfig | None, process_count: int,
               before_stop=None) -> str | None:
    """Run the graph holding `anchor` for `steps` steps and stop it, also when the run fails; `before_stop()` reads
    what only a running graph gives (a Monitor's data). Returns the note of `raise_open_file_limit`."""
    note = raise_open_file_limit(process_count)
    finished = False
    try:
        with frozen_heap():
            anchor.run(condition=RunSteps(num_steps=steps), run_cfg=run_cfg or Loihi2SimCfg(select_tag="fixed_pt"),
                       compile_config={"pypy_channel_size": CHANNEL_SLOTS})
        finished = True
        if before_stop is not None:
            before_stop()
    finally:
        if finished:
            anchor.stop()
        elif anchor.runtime is not None:  # None: it failed before Lava started anything
            abort_graph(anchor.runtime)
    return note


# Messages waiting in a host pipe: the host sends one per denoising step and the graph consumes it in the
# next period (or the graph sends one per period and the host reads it after the run), so one slot is
# always free for the next; each slot is shared memory the size of the message.
HOST_PIPE_SLOTS = 2
# After a blocking run returns, a record already sent still needs the host port's listener thread to
# register it (microseconds); a record missing for this long was never sent.
RECORD_WAIT_SECONDS = 10.0
RECORD_POLL_SECONDS = 0.001


class HostPipeError(DeployError, RuntimeError):
    """The host and a running graph disagree about a message (its shape, or a record never sent)."""


def _period_step(time_step: int, period: int) -> int:
    """Chip step within the period of one denoising step: Lava counts time steps from 1."""
    return (time_step - 1) % period


class HostFeed(AbstractProcess):
    """Sends what the host gave it for this period, int32 `shape`, during the first `on_steps` chip steps
    of each period of `period` steps, and zeros in the rest. The host sends one array per period with
    `send`, before the run of that period (the feed blocks on it at the period's first step)."""

    def __init__(self, shape: tuple[int, ...], period: int, on_steps: int):
        if not 1 <= on_steps <= period:
            raise DeployInputError(f"a host feed is on for 1 to {period} steps of its period, got {on_steps}")
        super().__init__(shape=shape, period=period, on_steps=on_steps)
        self.host_in = InPort(shape=shape)
        self.host_in.flag_external_pipe(buffer_size=HOST_PIPE_SLOTS)
        self.s_out = OutPort(shape=shape)

    def send(self, data: np.ndarray) -> None:
        """Queue the input of the next period (the graph's runtime must exist)."""
        shape = self.proc_params["shape"]
        if data.shape != tuple(shape) or data.dtype != np.int32:
            raise HostPipeError(f"host feed {self.name}: expected int32 {tuple(shape)}, got {data.dtype} "
                                f"{data.shape}")
        self.host_in.external_pipe_csp_send_port.send(data)

    def close_pipe(self) -> None:
        """End the host side's port thread (after the runtime stopped)."""
        port = getattr(self.host_in, "external_pipe_csp_send_port", None)
        if port is not None:
            port.join()


@implements(proc=HostFeed, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostFeedModel(PyLoihiProcessModel):
    host_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.period, self.on_steps = proc_params["period"], proc_params["on_steps"]
        self.data = np.zeros(proc_params["shape"], dtype=np.int32)
        self.zeros = np.zeros_like(self.data)

    def run_spk(self):
        step = _period_step(self.time_step, self.period)
        if step == 0:
            self.data = self.host_in.recv()
        self.s_out.send(self.data if step < self.on_steps else self.zeros)


class WindowSink(AbstractProcess):
    """Records its int32 input during chip steps [start, start + length) of every period of `period` steps
    and sends the record [length, *shape] to the host at the window's last step; the host takes it with
    `receive` after the run of that period."""

    def __init__(self, shape: tuple[int, ...], period: int, start: int, length: int):
        if not (0 <= start and 1 <= length and start + length <= period):
            raise DeployInputError(f"a window [{start}, {start + length}) must lie inside the period [0, {period})")
        super().__init__(shape=shape, period=period, start=start, length=length)
        self.a_in = InPort(shape=shape)
        self.record_out = OutPort(shape=(length, *shape))
        self.record_out.flag_external_pipe(buffer_size=HOST_PIPE_SLOTS)

    def receive(self) -> np.ndarray:
        """The record of the period just run, int32 [length, *shape]."""
        port = self.record_out.external_pipe_csp_recv_port
        deadline = time.monotonic() + RECORD_WAIT_SECONDS
        while not port.probe():
            if time.monotonic() > deadline:
                raise HostPipeError(f"window sink {self.name} sent no record in its period")
            time.sleep(RECORD_POLL_SECONDS)
        return port.recv()

    def close_pipe(self) -> None:
        port = getattr(self.record_out, "external_pipe_csp_recv_port", None)
        if port is not None:
            port.join()


@implements(proc=WindowSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowSinkModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    record_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        # not `self.start`: that is the process model's main loop
        self.period, self.window_start = proc_params["period"], proc_params["start"]
        self.record = np.zeros((proc_params["length"], *proc_params["shape"]), dtype=np.int32)

    def run_spk(self):
        data = self.a_in.recv()
        k = _period_step(self.time_step, self.period) - self.window_start
        if 0 <= k < len(self.record):
            self.record[k] = data
            if k == len(self.record) - 1:
                self.record_out.send(self.record)


class HostBiasLIF(LIFReset):
    """`LIFReset` whose per-channel bias mantissas the host replaces once per period: at every state reset
    it takes its channels [row_offset, row_offset + C) of the rows arriving at `rows_in` (a `HostFeed`'s,
    no delay) as `bias_mant`, broadcast over (W, H). Everything else is Lava's own bit-accurate model."""

    def __init__(self, *, rows: int, row_offset: int, **lif):
        super().__init__(**lif)
        channels = self.proc_params["shape"][-1]
        if not 0 <= row_offset <= rows - channels:
            raise DeployInputError(f"channels [{row_offset}, {row_offset + channels}) outside the {rows} bias rows")
        self.proc_params["row_offset"] = row_offset
        self.rows_in = InPort(shape=(rows,))


@implements(proc=HostBiasLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostBiasLIFModel(PyLifResetModelBitAcc):
    # Lava's @implements refuses a subclass of a model registered for another process; this one is
    # registered for HostBiasLIF alone (the parent keeps LIFReset), so it starts from no process.
    implements_process = None
    rows_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        offset = proc_params["row_offset"]
        self.channels = slice(offset, offset + proc_params["shape"][-1])

    def run_spk(self):
        rows = self.rows_in.recv()
        if self.time_step % self.reset_interval == self.reset_offset:  # the reset step of LIFReset.run_spk
            self.bias_mant[:] = rows[self.channels]  # (C,) over Lava's (W, H, C); int16 holds the 13-bit range
        super().run_spk()


class WindowBiasLIF(LIF):
    """Lava's `LIF` whose bias is off before chip step `bias_start` (counted from 0)."""

    def __init__(self, *, bias_start: int, **lif):
        super().__init__(**lif)
        self.proc_params["bias_start"] = bias_start


@implements(proc=WindowBiasLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowBiasLIFModel(PyLifModelBitAcc):
    # registered for WindowBiasLIF alone, as PyHostBiasLIFModel is
    implements_process = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.bias_start = proc_params["bias_start"]

    def scale_bias(self):
        super().scale_bias()  # run_spk calls it every step, before the voltage update
        if self.time_step <= self.bias_start:  # Lava counts steps from 1
            self.effective_bias = np.zeros_like(self.effective_bias)
