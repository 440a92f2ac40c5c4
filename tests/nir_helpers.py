"""NIR graphs the way other tools write them (snnTorch, Norse, Sinabs), shared by the simulator and Lava tests."""
import os
import tempfile

import nir
import numpy as np
import torch

from export.nir_chip import write_chip_nir
from simulators.network import ChipSimulator

DT = 1e-4  # seconds per step: the snnTorch / NIR-paper convention


def lif(n, tau=2e-3, threshold=1.0):
    # snnTorch's Leaky with beta = 1 - dt/tau exports tau and r = tau/dt, so that v = beta v + x
    return nir.LIF(tau=np.full(n, tau), r=np.full(n, tau / DT), v_leak=np.zeros(n), v_threshold=np.full(n, threshold))


def cuba(n, tau_syn=5e-4, tau_mem=2e-3, threshold=1.0):
    return nir.CubaLIF(tau_syn=np.full(n, tau_syn), tau_mem=np.full(n, tau_mem), r=np.full(n, tau_mem / DT),
                       v_leak=np.zeros(n), v_threshold=np.full(n, threshold), w_in=np.full(n, tau_syn / DT))


def integrate_and_fire(shape):
    return nir.IF(r=np.ones(shape), v_threshold=np.ones(shape), v_reset=np.zeros(shape))


def feed_forward_graph() -> nir.NIRGraph:
    """Input(12) -> Affine -> LIF(16) -> Linear -> CubaLIF(6) -> Output."""
    rng = np.random.default_rng(0)
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([12])),
        "fc1": nir.Affine(rng.normal(0.0, 0.35, (16, 12)), rng.normal(0.02, 0.01, 16)),
        "lif1": lif(16),
        "fc2": nir.Linear(rng.normal(0.1, 0.5, (6, 16))),
        "cuba": cuba(6),
        "output": nir.Output(np.array([6])),
    }, edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "cuba"), ("cuba", "output")])


def recurrent_graph() -> nir.NIRGraph:
    """snnTorch's RSynaptic: Input(8) -> Affine -> CubaLIF(10) <-> Affine (w_rec), CubaLIF -> Output."""
    rng = np.random.default_rng(1)
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([8])),
        "w_in": nir.Affine(rng.normal(0.4, 0.4, (10, 8)), np.zeros(10)),
        "lif": cuba(10),
        "w_rec": nir.Affine(rng.normal(0.0, 0.3, (10, 10)), np.zeros(10)),
        "output": nir.Output(np.array([10])),
    }, edges=[("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])


def conv_flatten_graph(conv: nir.Conv2d, fc_weight) -> nir.NIRGraph:
    """Sinabs-style Input -> Conv2d -> IF -> Flatten -> Affine -> IF(5) -> Output; fc_weight(n) gives the
    Affine's [5, n] weights for the n flattened conv outputs."""
    shape = tuple(int(v) for v in conv.output_type["output"])
    source = (int(conv.weight.shape[1]), *(int(v) for v in conv.input_shape))
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array(source)),
        "conv": conv,
        "if1": integrate_and_fire(shape),
        "flat": nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(fc_weight(int(np.prod(shape))), np.zeros(5)),
        "if2": integrate_and_fire(5),
        "output": nir.Output(np.array([5])),
    }, edges=[("input", "conv"), ("conv", "if1"), ("if1", "flat"), ("flat", "fc"), ("fc", "if2"), ("if2", "output")])


def simulate_network(net, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The simulator's spikes of a chip network with spike inputs, [T, B, *shape] per population, run from its
    file (the simulator reads nothing else)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "network.nir")
        write_chip_nir(path, net)
        return ChipSimulator.from_file(path).run_spikes(inputs)
