"""Running chip networks on Lava (its CPU fixed-point models, `Loihi2SimCfg`), and lava-dl's netx export.

The public API (stable; every other name may change):

- `run_denoising_step(net, x_t, t)`: one SDDPM forward pass on Lava, a `ChipRun` as the simulator's
- `run_spikes_on_lava(net_or_path, inputs)`: a network with spike inputs on Lava, one sample

A network with spike inputs on Lava (seconds: Lava starts a process per node), as the simulator runs it:

Examples:
    >>> import nir, numpy as np
    >>> from export import compile_foreign
    >>> from deploy import run_spikes_on_lava
    >>> net = compile_foreign(nir.NIRGraph.from_list(
    ...     nir.Input(np.array([2])), nir.Affine(np.full((1, 2), 0.6), np.zeros(1)),
    ...     nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)), nir.Output(np.array([1]))))
    >>> run_spikes_on_lava(net, {"input": np.ones((5, 2), dtype=np.int64)})["if"][:, 0].tolist()
    [False, True, True, True, True]
"""
import importlib

_API = {"run_denoising_step": "deploy.chip_lava", "run_spikes_on_lava": "deploy.chip_lava"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
