"""The Lava processes deploy/ adds: a file sink read once per run, a delay line, the open-file limit."""
import resource

import numpy as np
import pytest

pytestmark = pytest.mark.lava


def test_a_delay_line_delays_by_its_length_and_the_file_sink_records_every_step(tmp_path):
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer

    from deploy.processes import DelayLine, FileSink, read_record

    # RingBuffer sends column t-1 at Lava step t; a direct connection adds no delay and the line adds 3,
    # so the sink's row t-1 (step t) holds column t-4, zeros for the first three steps.
    data = np.arange(1, 13, dtype=np.int32).reshape(2, 6) * np.array([[1], [-100]], dtype=np.int32)
    source, line = RingBuffer(data=data), DelayLine(shape=(2,), delay=3)
    direct, delayed = FileSink((2,), 6, str(tmp_path / "direct.npy")), FileSink((2,), 6, str(tmp_path / "late.npy"))
    source.s_out.connect(line.a_in)
    source.s_out.connect(direct.a_in)
    line.a_out.connect(delayed.a_in)
    try:
        source.run(condition=RunSteps(num_steps=6), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    finally:
        source.stop()
    assert np.array_equal(read_record(direct), data.T)
    assert np.array_equal(np.load(tmp_path / "late.npy"), np.concatenate([np.zeros((3, 2), np.int32), data.T[:3]]))


def test_the_open_file_limit_is_raised_or_the_graph_refused(monkeypatch):
    from deploy import processes

    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert processes.raise_open_file_limit(50) is None  # 256 + 10 * 50 = 756 fit under 1024
    assert "from 1024 to 1256" in processes.raise_open_file_limit(100) and calls == [(1256, 4096)]
    with pytest.raises(processes.TooManyProcessesError, match="500 processes needs about 5256 open files"):
        processes.raise_open_file_limit(500)


def test_the_lava_memory_model_reproduces_the_graphs_it_was_fitted_to():
    from deploy import processes

    # benchmarks/bench_lava_memory.py, mnist layout, 374 processes: the tree's peak Pss above the parent's RSS
    # before the fork was 4313 MB at ch 16 (1,248,768 stored weights), 4479 MB at ch 32 (4,995,072) and
    # 6287 MB at ch 64 (19,980,288: 8134 MB peak Pss less the parent's 1847 MB)
    assert processes.lava_memory_mb(374, 1_248_768) == pytest.approx(4313, rel=0.03)
    assert processes.lava_memory_mb(374, 4_995_072) == pytest.approx(4479, rel=0.03)
    assert processes.lava_memory_mb(374, 19_980_288) == pytest.approx(6287, rel=0.03)


def test_a_failing_run_names_the_silent_sink_and_leaves_no_lava_process(tmp_path):
    import multiprocessing
    import time

    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer

    from deploy.processes import FileSink, SinkError, read_record

    source = RingBuffer(data=np.ones((2, 3), dtype=np.int32))
    sink = FileSink((2,), 3, str(tmp_path / "missing-folder" / "record.npy"))  # np.save cannot write there
    source.s_out.connect(sink.a_in)
    try:
        source.run(condition=RunSteps(num_steps=3), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    finally:
        source.stop()
    with pytest.raises(SinkError, match="wrote no record to .*missing-folder"):
        read_record(sink)
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
