"""The chip network on Lava: one denoising step bit-exact with the simulator, an up-sampling synapse as a
Conv of up-sampled spikes, `sddpm deploy`, and refusals before any Lava process starts."""
import dataclasses
import multiprocessing
import resource
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chip_helpers import compiled_tiny
from deploy import processes
from deploy.chain_lava import ChainGraph
from deploy.chip_lava import ChipGraph, run_denoising_step
from deploy.errors import DeployError
from deploy.processes import TooManyProcessesError
from export.chip import ChipFormatError
from export.host import host_input_current
from simulators.network import ChipSimulator
from toolchain.verify import compare_runs

pytestmark = pytest.mark.lava


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    return compiled_tiny(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def lif_chip(tmp_path_factory):
    return compiled_tiny(tmp_path_factory.mktemp("deploy-lif"), neuron="lif")


@pytest.mark.parametrize("network, profile", [("chip", "cpu"), ("lif_chip", "cpu"), ("chip", "loihi2"),
                                              ("lif_chip", "loihi2")])
def test_one_denoising_step_on_lava_is_identical_to_the_simulator(network, profile, request):
    # IF and LIF (dv = 2048: Lava's own leak) populations alike, in both profiles
    net, path, (x, t) = request.getfixturevalue(network)
    run = run_denoising_step(net, x[:1], int(t[0]), profile=profile)
    sim = ChipSimulator.from_file(path).run(x[:1], t[:1], "delayed")
    for name, s in sim.spikes.items():
        rate = float(s.float().mean())
        assert 0.02 < rate < 0.8, f"{name} fires at {rate:.3f}: vacuous comparison"
    mismatch = compare_runs(sim, run, t=int(t[0]))
    assert mismatch is None, f"first difference: {mismatch}"
    assert torch.equal(run.eps, sim.eps)
    assert multiprocessing.active_children() == []


def test_an_up_sampling_synapse_on_lava_is_the_conv_of_the_up_sampled_spikes_one_step_later(chip, tmp_path):
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer

    from deploy.chip_lava import _conv
    from deploy.processes import FileSink, SpikeUpsample, read_record

    net, _, _ = chip
    syn = next(s for s in net.synapses if s.upsample != 1)
    source, target = net.population(syn.source).shape, net.population(syn.target).shape
    frames = (torch.rand(3, *source, generator=torch.Generator().manual_seed(0)) < 0.4).double()  # [3, C, H, W]
    up = frames.repeat_interleave(syn.upsample, 2).repeat_interleave(syn.upsample, 3)
    expected = torch.zeros(3, *target, dtype=torch.float64)
    expected[:, syn.out_offset:syn.out_offset + syn.weight.shape[0]] = F.conv2d(
        up, torch.from_numpy(syn.integer_weight()).double(), stride=syn.stride, padding=syn.padding)
    # RingBuffer sends frame k at Lava step k + 1, the up-sampling passes it on in that step and the Conv
    # delivers it one step later: the sink's row k + 1 holds frame k, row 0 nothing yet.
    feed = RingBuffer(data=np.ascontiguousarray(frames.permute(3, 2, 1, 0).numpy().astype(np.int32)))
    relay, processes = SpikeUpsample(shape=feed.s_out.shape, factor=syn.upsample), []
    sink = FileSink((target[2], target[1], target[0]), 4, str(tmp_path / "out.npy"))
    feed.s_out.connect(relay.s_in)
    _conv(syn, relay.s_out, target, processes).connect(sink.a_in)
    try:
        feed.run(condition=RunSteps(num_steps=4), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    finally:
        feed.stop()
    got = np.transpose(read_record(sink), (0, 3, 2, 1))  # Lava's (W, H, C) back to (C, H, W)
    assert not got[0].any()
    assert np.array_equal(got[1:], expected.numpy())


def test_the_loihi2_profiles_up_sampling_is_one_sparse_matrix_per_copy_summing_to_the_up_sampled_conv(chip):
    from deploy.loihi2_profile import lava_index, upsample_pieces

    net, _, _ = chip
    syn = next(s for s in net.synapses if s.upsample != 1)
    source, target = net.population(syn.source).shape, net.population(syn.target).shape
    pieces = upsample_pieces(syn, source, target)
    assert len(pieces) == syn.upsample ** 2 and all(np.abs(p.data).max() <= 127 for p in pieces)  # 8-bit entries
    spikes = (torch.rand(*source, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    up = spikes.repeat_interleave(syn.upsample, 1).repeat_interleave(syn.upsample, 2)
    expected = torch.zeros(target, dtype=torch.float64)
    expected[syn.out_offset:syn.out_offset + syn.weight.shape[0]] = F.conv2d(
        up[None], torch.from_numpy(syn.weight.astype(np.float64)), stride=syn.stride, padding=syn.padding)[0]
    # in Lava's flat (W, H, C) order: the sum of the pieces times the flat spikes
    c, y, x = np.meshgrid(*map(np.arange, source), indexing="ij")
    flat = np.zeros(int(np.prod(source)))
    flat[lava_index(source, c, y, x).ravel()] = spikes.numpy().ravel()
    got = sum(p.tocsr() @ flat for p in pieces)
    c, y, x = np.meshgrid(*map(np.arange, target), indexing="ij")
    assert np.array_equal(got[lava_index(target, c, y, x)], expected.numpy())


def test_what_lava_cannot_run_is_refused_before_any_process_starts(chip, monkeypatch):
    net, _, (x, t) = chip
    syn = net.synapses[0]
    too_wide = dataclasses.replace(net, synapses=(dataclasses.replace(syn, weight=syn.weight.astype(np.int16) * 0 + 200),
                                                  *net.synapses[1:]))
    with pytest.raises(ChipFormatError, match=f"synapse {syn.source} -> {syn.target}: weight-range: weight mantissa outside"):
        run_denoising_step(too_wide, x[:1], int(t[0]))
    with pytest.raises(DeployError, match=r"one image at a time: x must be \[1, C, H, W\], got \[3, "):
        run_denoising_step(net, x, int(t[0]))
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 512))
    with pytest.raises(TooManyProcessesError, match=r"a Lava graph of \d+ processes needs about \d+ open files"):
        run_denoising_step(net, x[:1], int(t[0]))
    monkeypatch.setattr(processes, "mem_available_mb", lambda: 100.0)
    with tempfile.TemporaryDirectory() as sinks:
        count = len(ChipGraph(net, host_input_current(net, x[:1])[0].numpy().astype(np.int32), int(t[0]),
                              sinks).processes)
    weights = net.weight_count

    def refusal(processes_: int) -> str:
        return (rf"a Lava graph of {processes_} processes and {weights / 1e6:.2f} M synaptic weights needs about "
                rf"{processes.lava_memory_mb(processes_, weights) / 1024:.1f} GB .*, and 0.1 GB are available")

    with pytest.raises(processes.LavaMemoryError, match=refusal(count)):
        run_denoising_step(net, x[:1], int(t[0]))
    chain = ChainGraph(net)  # built, not started; its host feed of the time-embedding rows is one process more
    assert len(chain.processes) == count + 1
    with pytest.raises(processes.LavaMemoryError, match=refusal(count + 1)):
        with chain:
            pass
    assert multiprocessing.active_children() == []
