"""Regenerate inception_features.npz: pool3 features of GOLDEN_IMAGES through sddpm.fid's preprocessing.

Usage: python tests/golden/make_inception_features.py

The test (tests/test_fid.py) recomputes them, so any change to what an FID sees (the grey-to-RGB
expansion, the bilinear resize to 299, the [-1, 1] scaling, the weights) fails it; rerun this script
only for a change that is meant to move every FID.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from sddpm import fid  # noqa: E402
from sddpm.data import load_images  # noqa: E402

TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_features.npz")


def golden_images() -> dict[str, np.ndarray]:
    """Two 32x32 grey digits (scikit-learn's, as the tests use) and a 40x40 RGB gradient (another size,
    three channels): both paths of the preprocessing."""
    ramp = np.linspace(0, 255, 40)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2,
                    np.full((40, 40), 64.0)]).round().astype(np.uint8)[None]
    return {"grey": load_images("digits", "test")[:2].numpy(), "rgb": rgb}


def main() -> None:
    images = golden_images()
    features = {name: fid.inception_features(x, progress=False).astype(np.float32) for name, x in images.items()}
    np.savez_compressed(TARGET, **features)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
