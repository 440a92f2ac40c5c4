"""Regenerate official_spk_unet_keys.json from the official SDDPM code.

Usage: python tests/golden/make_official_keys.py PATH/TO/SDDPM/model/SpikingUNet.py
(the file from github.com/AndyCao1125/SDDPM; needs spikingjelly). It records the state_dict keys and
shapes of the official `Spk_UNet` for the configurations below, so the tests can check ours against
them without the official code.
"""
import importlib.util
import json
import os
import sys

CONFIGS = {
    "cifar10": dict(T=1000, ch=128, ch_mult=[1, 2, 2, 4], attn=[], num_res_blocks=2, dropout=0.1, timestep=4, img_ch=3),
    "mnist-small": dict(T=1000, ch=16, ch_mult=[1, 2, 2], attn=[], num_res_blocks=1, dropout=0.1, timestep=4, img_ch=1),
}


def main(path: str) -> None:
    spec = importlib.util.spec_from_file_location("official_spk_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {name: [[k, list(v.shape)] for k, v in module.Spk_UNet(**kw).state_dict().items()]
           for name, kw in CONFIGS.items()}
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_spk_unet_keys.json")
    with open(target, "w") as f:
        json.dump({"source": "AndyCao1125/SDDPM model/SpikingUNet.py", "configs": CONFIGS, "keys": out}, f, indent=0)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1])
