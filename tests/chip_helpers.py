"""A TINY spiking U-Net that fires at useful rates, and calibration data for it: the compiler and
chip-simulator tests share them."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from export.chip import ChipNetwork
from export.nir_chip import write_chip_nir
from export.compiler import calibration_batches, compile_model
from helpers import TINY
from sddpm.config import DiffusionConfig
from sddpm.data import load_images
from sddpm.schedule import NoiseSchedule
from sddpm.unet import SpikingUNet

# Fresh xavier weights with unit BN leave the first levels firing at 1-6 %; three times the 3x3 weights
# gives 10-40 % in every population, so spikes, wraps and thresholds are all exercised.
CONV_GAIN = 3.0


def firing_tiny_model(seed: int = 0, neuron: str = "if", snn_steps: int | None = None) -> SpikingUNet:
    """TINY (identity and 1x1 shortcuts, one down- and one up-sampling) with random BN statistics and
    affine parameters, so that folding BN changes every weight and bias, and a tail that is not ~0; with
    `neuron` "lif", LIF neurons of tau 2; `snn_steps` another T."""
    torch.manual_seed(seed)
    model = SpikingUNet(dataclasses.replace(TINY, neuron=neuron, snn_steps=snn_steps or TINY.snn_steps))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
            elif isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                # a LIF takes x / tau: tau times the gain gives it the IF's drive
                m.weight.mul_(CONV_GAIN * (model.cfg.tau if neuron == "lif" else 1.0))
        # The official init scales the tail conv by 1e-5: eps would be ~0 and compare trivially.
        nn.init.normal_(model.tail_conv.weight, std=0.1, generator=gen)
    return model.eval()


def digits_batches(batches: int = 1, batch_size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noisy scikit-learn digits (x_t, t) with t spread over the 1000 diffusion steps."""
    return calibration_batches(load_images("digits"), NoiseSchedule.linear(DiffusionConfig()), batches, batch_size,
                               seed)


def compiled_tiny(directory, neuron: str = "if",
                  snn_steps: int | None = None) -> tuple[ChipNetwork, str, tuple[torch.Tensor, torch.Tensor]]:
    """The firing TINY model compiled on one batch of noisy digits and written to DIRECTORY/network.nir;
    returns (network, its file, a second batch (x_t, t) of 3 images with a different t each)."""
    batches = digits_batches(batches=2, batch_size=3)
    net = compile_model(firing_tiny_model(neuron=neuron, snn_steps=snn_steps), batches[:1])
    path = str(directory / "network.nir")
    write_chip_nir(path, net)
    return net, path, batches[1]
