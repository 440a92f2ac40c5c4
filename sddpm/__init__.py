"""Spiking denoising diffusion models (SDDPM): the spiking U-Net, its ANN twin, the noise schedule, the samplers,
training and FID.

The public API (stable; every other name may change):

- `load_model(path)`: a checkpoint, ours or the official SDDPM code's, as a `LoadedModel` (model and configs)
- `model_denoiser(model)`: an eval-mode copy of the model, eps = f(x_t, t)
- `generate_images(denoiser, image_shape, diffusion_config, count, sampler)`: images, uint8 [N, C, H, W]
- `SamplerConfig`: a sampler and its settings (our DDPM and DDIM with eta, the official code's samplers);
  `sddpm.generate.DEFAULT_SAMPLER` is `sddpm sample`'s default, chosen by the sampler sweep of docs/quality.md
- `NoiseSchedule`: the forward process, `NoiseSchedule.linear(diffusion_config)`

Run from the repository's root (the shipped checkpoint's path):

Examples:
    >>> from sddpm import SamplerConfig, generate_images, load_model, model_denoiser
    >>> loaded = load_model("checkpoints/mnist-sddpm.pt")
    >>> loaded.model_config.snn_steps, loaded.model_config.neuron
    (4, 'if')
    >>> images = generate_images(model_denoiser(loaded.model), (1, 32, 32), loaded.diffusion_config, count=2,
    ...                          sampler=SamplerConfig("ddim", steps=2, eta=1.0), progress=False)
    >>> images.shape, images.dtype
    (torch.Size([2, 1, 32, 32]), torch.uint8)
    >>> from sddpm.generate import DEFAULT_SAMPLER
    >>> DEFAULT_SAMPLER.label
    'DDIM 50, eta 1'
"""
import importlib

# name -> the module that defines it; loaded on first use, so that `import sddpm.config` stays light
_API = {"load_model": "sddpm.checkpoint", "LoadedModel": "sddpm.checkpoint", "model_denoiser": "sddpm.generate",
        "generate_images": "sddpm.generate", "SamplerConfig": "sddpm.generate", "NoiseSchedule": "sddpm.schedule"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sddpm' has no attribute {name!r}")
