"""One Lava graph for a whole sampling chain (deploy.chain_lava): a short DDIM chain bit-identical to the
simulator's, step by step and in its final image, and a graph that stops, also on an error, leaving no
process behind."""
import multiprocessing
import time

import pytest
import torch

from chip_helpers import compiled_tiny
from deploy.chain_lava import ChainGraph, GraphStateError
from deploy.processes import HostPipeError, WindowSink
from sddpm.config import DiffusionConfig
from sddpm.samplers import ddim_sample
from sddpm.schedule import NoiseSchedule
from simulators.network import ChipSimulator
from toolchain.verify import compare_runs

pytestmark = pytest.mark.lava

CHAIN_STEPS = 3  # DDIM steps t = 999, 500, 0 of 1000: three different time-embedding bias rows
PROCESS_EXIT_SECONDS = 10  # forked Lava processes are reaped asynchronously after the runtime stops


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    net, path, _ = compiled_tiny(tmp_path_factory.mktemp("chain"))
    return net, path


@pytest.fixture(scope="module")
def lif_chip(tmp_path_factory):
    net, path, _ = compiled_tiny(tmp_path_factory.mktemp("chain-lif"), neuron="lif")
    return net, path


def no_process_left() -> bool:
    deadline = time.monotonic() + PROCESS_EXIT_SECONDS
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return multiprocessing.active_children() == []


# The tiny network was calibrated on noisy digits; pure noise drives some host currents to the host's
# saturation (export.chip.host_saturation), the same integers on both sides. IF and LIF populations alike.
@pytest.mark.parametrize("network", ["chip", "lif_chip"])
def test_a_ddim_chain_on_one_lava_graph_is_the_simulators_chain_bit_for_bit(network, request):
    net, path = request.getfixturevalue(network)
    sim = ChipSimulator.from_file(path)
    schedule = NoiseSchedule.linear(DiffusionConfig())
    x_T = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    order = [p.name for p in net.populations]
    checked, fired = [], {name: 0 for name in order}

    with ChainGraph(net) as graph:
        def lava_checked(x, t):
            step = graph.step(x, int(t[0]))
            out = sim.run(x, t, "delayed")
            mismatch = compare_runs(out, step, t=int(t[0]))
            assert mismatch is None, f"first difference: {mismatch}"
            assert torch.equal(step.eps, out.eps)
            for name, s in step.spikes.items():
                fired[name] += int(s.sum())
            checked.append(int(t[0]))
            return step.eps

        lava_image = ddim_sample(lava_checked, x_T, schedule, steps=CHAIN_STEPS)
    assert checked == [999, 500, 0]
    assert all(n > 0 for n in fired.values()), f"silent populations: {[k for k, n in fired.items() if n == 0]}"
    assert torch.equal(lava_image, ddim_sample(sim.denoiser("delayed"), x_T, schedule, steps=CHAIN_STEPS))
    assert no_process_left()


def test_a_step_that_fails_stops_the_graph_and_leaves_no_process(chip, monkeypatch):
    net, _ = chip
    x = torch.zeros(1, 1, 32, 32)

    def lost(self):
        raise HostPipeError(f"window sink {self.name} sent no record in its period")

    monkeypatch.setattr(WindowSink, "receive", lost)  # the period ran; its records never reach the host
    graph = ChainGraph(net)
    with pytest.raises(HostPipeError, match="sent no record"):
        with graph:
            graph.step(x, 500)
    assert no_process_left()
    with pytest.raises(GraphStateError, match="the chain graph is stopped"):
        graph.step(x, 500)
