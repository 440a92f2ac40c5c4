import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sddpm.batches import ImageBatches
from sddpm.data import DATASETS, DataError, check_images, dataset_shape, load_images, to_model_range, to_uint8


def test_digits_load_as_uint8_at_32px():
    train, test = load_images("digits", "train"), load_images("digits", "test")
    # sklearn's 1797 digits: the first 1500 train, the other 297 test; 0..16 scaled to 0..255.
    assert train.shape == (1500, 1, 32, 32) and test.shape == (297, 1, 32, 32)
    assert train.dtype == torch.uint8
    assert int(train.min()) == 0 and int(train.max()) == 255


def test_mnist_has_the_official_split_at_32px():
    train, test = load_images("mnist", "train"), load_images("mnist", "test")
    assert train.shape == (60000, 1, 32, 32) and test.shape == (10000, 1, 32, 32)
    assert train.dtype == torch.uint8


def test_unknown_dataset_and_split_are_named():
    with pytest.raises(DataError, match="unknown dataset 'cifar100'.*cifar10"):
        load_images("cifar100")
    with pytest.raises(DataError, match="split must be 'train' or 'test', got 'valid'"):
        load_images("digits", "valid")


def test_dataset_shapes():
    assert dataset_shape("cifar10") == (3, 32) and dataset_shape("celeba") == (3, 64)
    assert set(DATASETS) >= {"mnist", "fashion-mnist", "digits", "cifar10", "celeba"}


def test_model_range_round_trips_every_pixel_value():
    pixels = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(pixels)
    assert float(x[0]) == -1.0 and float(x[255]) == 1.0  # 0/127.5 - 1 and 255/127.5 - 1
    assert torch.equal(to_uint8(x), pixels)


# --- CIFAR-10 --------------------------------------------------------------------------------------

def _cifar_batch(first_value: int, n: int = 2) -> dict:
    """n images; image i has red = first_value + i, green = red + 100, blue = red + 200 (plane order)."""
    red = np.arange(first_value, first_value + n, dtype=np.uint8)[:, None]
    data = np.concatenate([np.repeat(red + c * 100, 1024, axis=1) for c in range(3)], axis=1).astype(np.uint8)
    return {b"batch_label": b"fake", b"labels": list(range(n)), b"data": data,
            b"filenames": [b"x.png"] * n}


def _write_cifar(root, protocol: int = 2) -> None:
    # Protocol 2 with byte keys is what the real (Python 2) files hold.
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(_cifar_batch(10 * i), f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_loads_pickle_batches_in_order(tmp_path, protocol):
    _write_cifar(tmp_path, protocol)
    train, test = load_images("cifar10", "train", str(tmp_path)), load_images("cifar10", "test", str(tmp_path))
    assert train.shape == (10, 3, 32, 32) and test.shape == (2, 3, 32, 32) and train.dtype == torch.uint8
    # Batch k (0-based) starts at red 10k: train images are 0,1,10,11,...,40,41; test 50,51.
    assert train[:, 0, 0, 0].tolist() == [0, 1, 10, 11, 20, 21, 30, 31, 40, 41]
    assert test[1, :, 5, 7].tolist() == [51, 151, 251]  # the R, G, B planes of image 1 of test_batch


def test_cifar10_missing_root_or_file(tmp_path):
    with pytest.raises(DataError, match="cifar10 needs a data root"):
        load_images("cifar10")
    with pytest.raises(DataError, match="is not a folder"):
        load_images("cifar10", root=str(tmp_path / "nowhere"))
    _write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_images("cifar10", "train", str(tmp_path))
    assert len(load_images("cifar10", "test", str(tmp_path))) == 2  # the test split does not need it


def test_cifar10_corrupt_batches_are_named(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch: corrupt or truncated"):
        load_images("cifar10", "test", str(tmp_path))

    bad = _cifar_batch(0)
    bad[b"data"] = bad[b"data"][:, :1000]
    path.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"uint8 array \[N, 3072\], got \(dtype\('uint8'\), \(2, 1000\)\)"):
        load_images("cifar10", "test", str(tmp_path))

    path.write_bytes(pickle.dumps({"data": 1}))
    with pytest.raises(DataError, match="dict with keys b'data' and b'labels'"):
        load_images("cifar10", "test", str(tmp_path))


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, ("should-not-exist",))


def test_cifar10_refuses_pickles_that_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _RunsCode(), b"labels": []}))
    with pytest.raises(DataError, match="refused global posix.mkdir"):
        load_images("cifar10", "test", str(tmp_path))
    assert not (tmp_path / "should-not-exist").exists()


# --- CelebA ----------------------------------------------------------------------------------------

def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _framed(width: int, height: int) -> np.ndarray:
    """Red image whose central 148x148 box, placed as torchvision's CenterCrop places it, is blue.

    For 200x180: left = round((200 - 148) / 2) = 26, top = round((180 - 148) / 2) = 16.
    """
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 255
    left, top = int(round((width - 148) / 2)), int(round((height - 148) / 2))
    image[top:top + 148, left:left + 148] = (0, 0, 255)
    return image


def test_celeba_center_crops_148_and_resizes_to_64(tmp_path):
    rng = np.random.default_rng(0)
    # Nine training images of odd sizes (one JPEG, in nested folders), and the framed one sorts last,
    # so with 10 files it alone is the test split (the last 10 // 10 = 1).
    sizes = [(178, 218), (149, 151), (300, 160), (151, 149), (160, 300), (178, 218), (200, 200), (148, 148)]
    for i, (w, h) in enumerate(sizes):
        _save(tmp_path / "a" / f"{i:06d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    _save(tmp_path / "a" / "b" / "000100.jpg", rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))
    _save(tmp_path / "z" / "000200.png", _framed(200, 180))
    (tmp_path / "a" / "notes.txt").write_text("not an image")

    train, test = load_images("celeba", "train", str(tmp_path)), load_images("celeba", "test", str(tmp_path))
    assert train.shape == (9, 3, 64, 64) and test.shape == (1, 3, 64, 64) and train.dtype == torch.uint8
    # The crop holds only the blue box, and resizing a constant image keeps it constant: no red survives.
    assert test[0, 0].max() == 0 and test[0, 1].max() == 0 and test[0, 2].min() == 255


def test_celeba_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="celeba needs a data root"):
        load_images("celeba")
    with pytest.raises(DataError, match="has 0 images: too few for a train split"):
        load_images("celeba", "train", str(tmp_path))
    for i in range(9):
        _save(tmp_path / f"{i}.png", np.zeros((160, 160, 3), np.uint8))
    with pytest.raises(DataError, match="has 9 images: too few for a test split"):
        load_images("celeba", "test", str(tmp_path))  # 9 // 10 = 0 test images
    _save(tmp_path / "8.png", np.zeros((100, 160, 3), np.uint8))
    with pytest.raises(DataError, match=r"8.png: image is 160x100, smaller than the 148x148 center crop"):
        load_images("celeba", "train", str(tmp_path))
    (tmp_path / "8.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="8.png: unreadable image"):
        load_images("celeba", "train", str(tmp_path))


# --- check_images ----------------------------------------------------------------------------------

def test_check_images_accepts_model_range():
    check_images(torch.zeros(2, 3, 32, 32).uniform_(-1, 1), 3, 32)


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 1, 32, 32), r"shape \[N, 3, 32, 32\], got \[2, 1, 32, 32\]"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "must be float"),
    (torch.full((2, 3, 32, 32), float("nan")), "NaN or Inf"),
    (torch.full((2, 3, 32, 32), 1.5), r"must lie in \[-1, 1\]"),
])
def test_check_images_errors(images, message):
    with pytest.raises(DataError, match=message):
        check_images(images, 3, 32)


# --- ImageBatches (sddpm/batches.py) ---------------------------------------------------------------

def _indexed_images(n: int) -> torch.Tensor:
    """Image i is constant i, so a batch value maps back to its index: i = round((x + 1) * 127.5)."""
    return torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()


def _indices(batch: torch.Tensor) -> list[int]:
    return ((batch[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


def _take(batches: ImageBatches, k: int) -> list[list[int]]:
    it = iter(batches)
    return [_indices(next(it)) for _ in range(k)]


def test_image_batches_are_seeded_and_cover_each_epoch():
    images = _indexed_images(10)
    first = _take(ImageBatches(images, 4, seed=1), 4)
    assert first == _take(ImageBatches(images, 4, seed=1), 4)
    assert first != _take(ImageBatches(images, 4, seed=2), 4)
    # 10 images in batches of 4: 2 batches per epoch, the last 2 images of each permutation dropped.
    for epoch in (first[:2], first[2:]):
        assert len(set(epoch[0] + epoch[1])) == 8


def test_image_batches_resume_at_the_same_batch():
    images = _indexed_images(10)
    batches = ImageBatches(images, 4, seed=3, hflip=True)
    it = iter(batches)
    for _ in range(3):  # into the second epoch
        next(it)
    state = batches.state_dict()
    expected = next(it)
    resumed = ImageBatches(images, 4, seed=3, hflip=True)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed)), expected)


def test_image_batches_shard_each_global_batch_over_ranks():
    images = _indexed_images(12)
    whole = _take(ImageBatches(images, 4, seed=0), 3)
    ranks = [_take(ImageBatches(images, 4, seed=0, rank=r, world_size=2), 3) for r in range(2)]
    for step in range(3):
        assert not set(ranks[0][step]) & set(ranks[1][step])
        assert ranks[0][step] + ranks[1][step] == whole[step]
