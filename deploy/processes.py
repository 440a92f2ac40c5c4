"""Lava processes that Lava does not ship, and the process-count limits of its CPU runtime.

- `FileSink`: records what arrives at its port every step and writes the whole record to one .npy file
  at its last step. Lava's own sinks are read with `Var.get()`, which sends every element as its own
  message (research/lava.md section 8: 18.6 s for 688,128 values); one file read per run is the point.
- `DelayLine`: delays an integer current by `delay` steps. Conv and Sparse synapses delay by exactly one
  step; a longer path (a skip connection meeting a deep one) needs more. On Loihi 2 that is a synaptic
  delay in hardware (Lava's DelayDense, dense only, up to 62 steps); on the CPU it is this ring buffer,
  which sends before it receives, like Lava's own synapses, so loops cannot deadlock.

Every Lava process is its own OS process; the main process holds about 10 file descriptors for each
(lava.md section 8), so a large graph outgrows the common soft limit of 1024. `raise_open_file_limit`
raises the soft limit up to the hard one, and refuses, before any process starts, a graph that needs more.
"""
import contextlib
import os
import resource

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

from deploy.errors import DeployError, DeployInputError

FDS_PER_PROCESS = 10  # measured, research/lava.md section 8
# Shared-memory slots per Lava channel (Lava's default: 64). The processes advance in lockstep, one message
# per channel per step, so a few slots suffice; 64 slots of a 32x32x16 int32 port are 4 MiB per channel.
CHANNEL_SLOTS = 4
FDS_BASE = 256  # the main process's own files, libraries and pipes


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


def _abort(runtime) -> None:
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


def run_to_end(anchor: AbstractProcess, steps: int, run_cfg: RunConfig | None, process_count: int) -> str | None:
    """Run the graph holding `anchor` for `steps` steps and stop it, also when the run fails; returns the note
    of `raise_open_file_limit`."""
    note = raise_open_file_limit(process_count)
    finished = False
    try:
        anchor.run(condition=RunSteps(num_steps=steps), run_cfg=run_cfg or Loihi2SimCfg(select_tag="fixed_pt"),
                   compile_config={"pypy_channel_size": CHANNEL_SLOTS})
        finished = True
    finally:
        if finished:
            anchor.stop()
        elif anchor.runtime is not None:  # None: it failed before Lava started anything
            _abort(anchor.runtime)
    return note
