"""The compiler to Loihi 2 fixed point: the one chip network (`export.chip`) and its file, the SDDPM compiler and
the NIR importer (its two front ends), the quantized reference, ONNX and NIR export, energy and resources.

The public API (stable; every other name may change):

- `calibration_batches(images, schedule)` and `compile_model(model, batches)`: an SDDPM as a `ChipNetwork`
- `compile_foreign(graph, Discretization(...))`: a NIR graph of snnTorch, Norse, Sinabs, nirtorch as one
- `read_foreign(path)`: a NIR file of another tool, every structural problem named by node
- `write_chip_nir(path, net)` / `read_chip_nir(path)`: the chip network's file (atomic; design rules checked)
- `run_reference(net, x, t)` / `run_reference_spikes(net, inputs)`: the quantized reference's integers
- `count_forward(net, spikes)`: spikes and synaptic operations per population of one forward pass

An SDDPM compiled from the shipped checkpoint (run from the repository's root):

Examples:
    >>> import tempfile
    >>> from sddpm import NoiseSchedule, load_model
    >>> from sddpm.data import load_images
    >>> from export import calibration_batches, compile_model, write_chip_nir
    >>> loaded = load_model("checkpoints/mnist-sddpm.pt")
    >>> schedule = NoiseSchedule.linear(loaded.diffusion_config)
    >>> net = compile_model(loaded.model, calibration_batches(load_images("mnist")[:64], schedule, 1, 4))
    >>> net.snn_steps, net.populations[0].host_input
    (4, True)
    >>> write_chip_nir(tempfile.mkdtemp() + "/network.nir", net)

    A NIR graph of another tool, and the reference's spikes (an input spike pair every step: 2 x 0.6 > 1, so the
    neuron fires from step 1, one synapse after the input):

    >>> import nir, numpy as np, torch
    >>> from export import compile_foreign, run_reference_spikes
    >>> graph = nir.NIRGraph.from_list(nir.Input(np.array([2])), nir.Affine(np.full((1, 2), 0.6), np.zeros(1)),
    ...                                nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)),
    ...                                nir.Output(np.array([1])))
    >>> imported = compile_foreign(graph)
    >>> run_reference_spikes(imported, {"input": torch.ones(5, 1, 2, dtype=torch.long)})["if"][:, 0, 0].tolist()
    [False, True, True, True, True]
"""
import importlib

# name -> the module that defines it; loaded on first use, so that importing `export.chip` (as the Lava backend
# does) loads no training code
_API = {"calibration_batches": "export.compiler", "compile_model": "export.compiler",
        "compile_foreign": "export.nir_foreign", "Discretization": "export.nir_foreign",
        "read_foreign": "export.nir_foreign_read", "write_chip_nir": "export.nir_chip",
        "read_chip_nir": "export.nir_chip", "ChipNetwork": "export.chip", "run_reference": "export.reference",
        "run_reference_spikes": "export.reference", "count_forward": "export.energy"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
