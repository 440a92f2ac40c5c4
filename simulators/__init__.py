"""The bit-accurate simulator of Lava's / Loihi 2's fixed-point dynamics for any chip network, reading the chip
file with its own reader (it shares no code with the compiler).

The public API (stable; every other name may change):

- `ChipSimulator.from_file(path)`: the network of a chip file; `.run(x_t, t)` one SDDPM forward pass (a
  `ChipRun`: spikes, output currents, eps), `.run_spikes(inputs)` a network with spike inputs

A network with spike inputs, simulated, equal to the quantized reference spike for spike:

Examples:
    >>> import tempfile, nir, numpy as np, torch
    >>> from export import compile_foreign, run_reference_spikes, write_chip_nir
    >>> from simulators import ChipSimulator
    >>> net = compile_foreign(nir.NIRGraph.from_list(
    ...     nir.Input(np.array([2])), nir.Affine(np.full((1, 2), 0.6), np.zeros(1)),
    ...     nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)), nir.Output(np.array([1]))))
    >>> path = tempfile.mkdtemp() + "/chip.nir"
    >>> write_chip_nir(path, net)
    >>> inputs = {"input": torch.ones(5, 1, 2, dtype=torch.long)}
    >>> spikes = ChipSimulator.from_file(path).run_spikes(inputs)
    >>> spikes["if"][:, 0, 0].tolist(), torch.equal(spikes["if"], run_reference_spikes(net, inputs)["if"])
    ([False, True, True, True, True], True)
"""
import importlib

_API = {"ChipSimulator": "simulators.network"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'simulators' has no attribute {name!r}")
