import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import assert_close
from sddpm import fid
from sddpm.data import load_images
from tolerances import INCEPTION_FEATURE_ATOL

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def test_identical_statistics_are_at_distance_zero():
    a = np.random.default_rng(0).normal(size=(4, 4))
    sigma = a @ a.T + np.eye(4)  # symmetric positive definite
    mu = np.arange(4.0)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_covariances_match_the_closed_form():
    # ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) = (3^2 + 4^2) + (1 + 4 - 2*2) + (4 + 9 - 2*6) = 25 + 1 + 1
    d = fid.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([3.0, 4.0]), np.diag([4.0, 9.0]))
    assert d == pytest.approx(27.0, rel=1e-12)


def test_singular_covariances_still_give_the_closed_form():
    # (0 + 0 - 2*0) + (4 + 9 - 2*6) = 1; the zero variance makes the product singular, and the
    # eps = 1e-6 fallback moves the result by about 1e-6 at most.
    d = fid.frechet_distance(np.zeros(2), np.diag([0.0, 4.0]), np.zeros(2), np.diag([0.0, 9.0]))
    assert d == pytest.approx(1.0, abs=1e-5)


def test_feature_stats_use_the_unbiased_covariance():
    # Rows (0, 0) and (2, 2): mean (1, 1); deviations +-1 in both columns, so every covariance entry
    # is (1 + 1) / (2 - 1) = 2.
    mu, sigma = fid.feature_stats(np.array([[0.0, 0.0], [2.0, 2.0]]))
    assert mu.tolist() == [1.0, 1.0] and sigma.tolist() == [[2.0, 2.0], [2.0, 2.0]]


@pytest.mark.parametrize("args, message", [
    ((np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)), "different dimensions: 2 and 3"),
    ((np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), r"mu \[D\] and sigma \[D, D\], got \[2\] and \[3, 3\]"),
    ((np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2)), "NaN or Inf"),
])
def test_frechet_distance_rejects_bad_statistics(args, message):
    with pytest.raises(fid.FidError, match=message):
        fid.frechet_distance(*args)


def test_feature_stats_need_two_finite_rows():
    with pytest.raises(fid.FidError, match=r"N >= 2, got shape \[1, 3\]"):
        fid.feature_stats(np.zeros((1, 3)))
    with pytest.raises(fid.FidError, match="NaN or Inf"):
        fid.feature_stats(np.array([[0.0], [np.inf]]))


def test_inception_gives_2048_pool3_features_for_gray_and_color():
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = fid.inception_features(torch.cat([gray.expand(-1, 3, -1, -1), gray.repeat(1, 3, 1, 1)]),
                                      batch_size=2, progress=False, device="cpu")
    assert features.shape == (4, 2048) and features.dtype == np.float64 and np.isfinite(features).all()
    assert (features >= 0).all()  # pool3 averages ReLU outputs
    # A gray image is embedded as its 3-channel repeat.
    assert np.allclose(fid.inception_features(gray, progress=False, device="cpu"), features[:2], atol=1e-5)


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 3, 8, 8), "uint8 images in"),
    (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), r"C = 1 or 3, got shape \[2, 2, 8, 8\]"),
    (torch.zeros(8, 8, dtype=torch.uint8), r"got shape \[8, 8\]"),
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "at least one image"),
])
def test_inception_features_reject_bad_images(images, message):
    with pytest.raises(fid.FidError, match=message):
        fid.inception_features(images, progress=False)


@pytest.fixture
def counted_features(monkeypatch):
    """Replaces the Inception network by 4 pixels from the middle of the image, counting the calls."""
    calls = []

    def features(images_u8, batch_size=50, progress=True):
        calls.append(len(images_u8))
        return images_u8[:, 0, 16, 12:16].double().numpy()

    monkeypatch.setattr(fid, "inception_features", features)
    return calls


def test_reference_stats_are_computed_once_then_read_from_cache(tmp_path, counted_features):
    mu, sigma = fid.reference_stats("digits", count=20, cache_dir=str(tmp_path), progress=False)
    assert counted_features == [20]
    assert [p.name for p in tmp_path.iterdir()] == ["digits_train_n20_32px_v1.npz"]  # no temp file left
    again = fid.reference_stats("digits", count=20, cache_dir=str(tmp_path), progress=False)
    assert counted_features == [20]
    assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    (tmp_path / "digits_train_n20_32px_v1.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(fid.FidError, match="digits_train_n20_32px_v1.npz: unreadable FID statistics"):
        fid.reference_stats("digits", count=20, cache_dir=str(tmp_path), progress=False)


def test_fid_of_the_reference_subset_itself_is_zero(tmp_path, counted_features):
    # The reference is the first 20 of a permutation seeded with SUBSET_SEED: the same 20 images
    # give the same statistics.
    chosen = np.random.default_rng(fid.SUBSET_SEED).permutation(1500)[:20]
    images = load_images("digits")[torch.from_numpy(chosen)]
    # Covariance traces are about 2e4 here, so float64 rounding leaves about 1e-7.
    assert fid.fid_against_dataset(images, "digits", 20, str(tmp_path), progress=False) == pytest.approx(0, abs=1e-5)
    assert fid.real_vs_real_fid("digits", 20, str(tmp_path), progress=False) > 0
    assert counted_features == [20, 20, 20]  # samples, train reference, test reference; train was cached
    assert len(list(tmp_path.iterdir())) == 2


def test_fid_inputs_are_checked_before_any_work(tmp_path, counted_features):
    with pytest.raises(fid.FidError, match=r"digits images are \[N, 1, 32, 32\], got \[2, 3, 32, 32\]"):
        fid.fid_against_dataset(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "digits", 20, str(tmp_path))
    with pytest.raises(fid.FidError, match="count must be between 2 and the 297 images of digits test, got 300"):
        fid.reference_stats("digits", "test", count=300, cache_dir=str(tmp_path))
    assert counted_features == []


def _sharded_worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    seen = []

    def fake_network(x):  # every feature is the mean of the preprocessed image
        seen.append(len(x))
        return x.mean(dim=(1, 2, 3))[:, None].expand(-1, 2048)

    fid._inception = lambda device: fake_network
    images = torch.arange(0, 250, 50, dtype=torch.uint8)[:, None, None, None].expand(5, 1, 4, 4)
    np.save(f"{folder}/rank{rank}.npy", fid.inception_features(images, batch_size=2, progress=False, device="cpu"))
    np.save(f"{folder}/seen{rank}.npy", np.array(seen))
    dist.destroy_process_group()


def test_inception_features_shard_over_ranks_and_gather(tmp_path):
    mp.spawn(_sharded_worker, args=(2, str(tmp_path)), nprocs=2)
    # Image i is constant 50 i, so its feature is (50 i - 128) / 128 for every one of the 2048 dims.
    expected = ((np.arange(0, 250, 50) - 128) / 128)[:, None].repeat(2048, axis=1)
    for rank in range(2):
        assert np.allclose(np.load(tmp_path / f"rank{rank}.npy"), expected)
    # 5 images over 2 ranks: ceil(5 / 2) = 3 for rank 0 (batches of 2 and 1), the other 2 for rank 1.
    assert np.load(tmp_path / "seen0.npy").tolist() == [2, 1] and np.load(tmp_path / "seen1.npy").tolist() == [2]


def test_low_rank_fid_equals_the_sqrtm_fid():
    # 60 samples in 80 dimensions: sigma1 has rank 59, the case the bootstrap meets (500 samples, 2048 dims).
    rng = np.random.default_rng(0)
    gen = rng.normal(size=(60, 80)) * 1.5 + 0.3
    ref = rng.normal(size=(400, 80))
    mu2, sigma2 = fid.feature_stats(ref)
    exact = fid.frechet_distance(*fid.feature_stats(gen), mu2, sigma2)
    # rel 1e-7, not 1e-9: sqrtm's own rounding on an 80 x 80 product is about 1e-8 relative.
    assert fid.fid_low_rank(gen, mu2, sigma2) == pytest.approx(exact, rel=1e-7)


def test_bootstrap_spread_shrinks_with_the_sample_count():
    # Resampling n points moves a mean by about sigma / sqrt(n): 4x the samples, about half the spread.
    rng = np.random.default_rng(1)
    mu2, sigma2 = fid.feature_stats(rng.normal(size=(2000, 16)))
    small = fid.bootstrap_fids(rng.normal(size=(50, 16)) + 0.5, mu2, sigma2, rounds=200, seed=0)
    large = fid.bootstrap_fids(rng.normal(size=(200, 16)) + 0.5, mu2, sigma2, rounds=200, seed=0)
    ratio = small.std() / large.std()
    assert 1.4 < ratio < 2.9, ratio
    with pytest.raises(fid.FidError, match="at least 2 rounds"):
        fid.bootstrap_fids(rng.normal(size=(50, 16)), mu2, sigma2, rounds=1)


def test_fid_report_carries_the_bootstrap(tmp_path, counted_features):
    images = load_images("digits")[:30]
    report = fid.fid_report(images, "digits", 20, str(tmp_path), progress=False, bootstrap=5)
    assert set(report) == {"fid", "fid_bootstrap_std", "fid_bootstrap_p2_5", "fid_bootstrap_p97_5",
                           "fid_bootstrap_rounds"}
    assert report["fid_bootstrap_std"] > 0 and report["fid_bootstrap_p2_5"] <= report["fid_bootstrap_p97_5"]


def test_inception_preprocessing_matches_its_golden_features():
    # tests/golden/make_inception_features.py wrote these through the same preprocessing; a change to the
    # resize, the grey-to-RGB expansion, the scaling or the weights moves them far past the tolerance.
    sys.path.insert(0, str(GOLDEN_DIR))
    from make_inception_features import TARGET, golden_images

    with np.load(TARGET) as golden:
        for name, images in golden_images().items():
            assert_close(torch.from_numpy(fid.inception_features(images, progress=False)),
                         torch.from_numpy(golden[name]), atol=INCEPTION_FEATURE_ATOL, what=f"{name} features")
