"""Dataset loading (ImageFolder, torchvision CIFAR files), the uint8 cache, errors and statistics."""

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.data import datasets
from augment.data.datasets import (
    CACHE_DIRNAME,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    channel_stats,
    dataset_classes,
    dataset_stats,
    load_dataset,
)


def _write_tree(
    root: Path, classes=("cat", "ant", "bee"), per_class=(3, 2, 4), size=(6, 5), splits=("train", "test"), seed=0
):
    """A tiny ImageFolder tree; returns {split: (images in load order, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    order = sorted(classes)
    for split in splits:
        imgs, labels = [], []
        for cls in order:
            n = per_class[classes.index(cls)]
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
                imgs.append(img)
                labels.append(order.index(cls))
        out[split] = (np.stack(imgs), np.array(labels))
    return out


# --------------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_loads_exact_pixels_labels_and_sorted_classes(tmp_path):
    truth = _write_tree(tmp_path)
    for split in ("train", "test"):
        images, labels, classes = load_dataset("imagefolder", tmp_path, split)
        assert classes == ["ant", "bee", "cat"]
        assert images.dtype == np.uint8 and images.shape == (9, 5, 6, 3)
        assert labels.dtype == np.int64
        assert np.array_equal(images, truth[split][0]) and np.array_equal(labels, truth[split][1])
    assert dataset_classes("imagefolder", tmp_path) == ["ant", "bee", "cat"]


def test_imagefolder_converts_gray_and_rgba_and_ignores_other_files(tmp_path):
    _write_tree(tmp_path, classes=("a",), per_class=(1,), splits=("train",))
    Image.fromarray(np.full((5, 6), 7, np.uint8), mode="L").save(tmp_path / "train/a/gray.png")
    rgba = np.full((5, 6, 4), 9, np.uint8)
    rgba[..., 3] = 255  # opaque; alpha 0 hides the colour (composited over black)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "train/a/rgba.png")
    (tmp_path / "train/a/notes.txt").write_text("not an image")
    (tmp_path / "train/a/.hidden.png").write_bytes(b"junk")
    (tmp_path / "train/.hiddenclass").mkdir()
    images, labels, classes = load_dataset("imagefolder", tmp_path, "train", cache_dir=False)
    assert images.shape == (3, 5, 6, 3) and classes == ["a"]
    assert (images[1] == 7).all() and (images[2, 1:] == 9).all() and (images[2, 0, 0] == 0).all()


def test_cache_written_atomically_and_reused(tmp_path, monkeypatch):
    truth = _write_tree(tmp_path)
    load_dataset("imagefolder", tmp_path, "train")
    cache = tmp_path / CACHE_DIRNAME
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and names[0].endswith(".images.npy") and names[1].endswith(".meta.npz")
    assert not any(n.startswith(".") for n in names)  # no temporary files left behind

    def no_decode(*a, **k):
        raise AssertionError("a cached split must not be decoded again")

    monkeypatch.setattr(datasets, "_decode_all", no_decode)
    images, labels, classes = load_dataset("imagefolder", tmp_path, "train")
    assert np.array_equal(images, truth["train"][0]) and classes == ["ant", "bee", "cat"]


def test_cache_invalidated_when_source_changes(tmp_path):
    _write_tree(tmp_path)
    first, _, _ = load_dataset("imagefolder", tmp_path, "train")
    extra = np.zeros((5, 6, 3), np.uint8)
    Image.fromarray(extra).save(tmp_path / "train/ant/zzz.png")
    images, labels, _ = load_dataset("imagefolder", tmp_path, "train")
    assert len(images) == len(first) + 1 and (images[2] == 0).all() and labels[2] == 0
    # the stale entry was removed: one images file and one meta file remain for the split
    assert len(list((tmp_path / CACHE_DIRNAME).glob("imagefolder-train-*"))) == 2


def test_cache_dir_options(tmp_path):
    _write_tree(tmp_path / "data")
    load_dataset("imagefolder", tmp_path / "data", "test", cache_dir=False)
    assert not (tmp_path / "data" / CACHE_DIRNAME).exists()
    load_dataset("imagefolder", tmp_path / "data", "test", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("imagefolder-test-*"))) == 2


def test_corrupt_cache_is_rebuilt(tmp_path):
    truth = _write_tree(tmp_path)
    load_dataset("imagefolder", tmp_path, "train")
    for p in (tmp_path / CACHE_DIRNAME).glob("*.images.npy"):
        p.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable dataset cache"):
        images, _, _ = load_dataset("imagefolder", tmp_path, "train")
    assert np.array_equal(images, truth["train"][0])


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip_meta_byte", "flip_image_byte"])
def test_damaged_cache_metadata_or_pixels_are_rebuilt_not_trusted(tmp_path, damage):
    truth = _write_tree(tmp_path)
    load_dataset("imagefolder", tmp_path, "train")
    (meta,) = (tmp_path / CACHE_DIRNAME).glob("*-train-*.meta.npz")
    (pixels,) = (tmp_path / CACHE_DIRNAME).glob("*-train-*.images.npy")
    target = pixels if damage == "flip_image_byte" else meta
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data[-len(data) // 3] ^= 0xFF  # inside the stored arrays, past the headers
    target.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="dataset cache .*decoding the data again"):
        images, labels, _ = load_dataset("imagefolder", tmp_path, "train")
    assert np.array_equal(images, truth["train"][0]) and np.array_equal(labels, truth["train"][1])
    again, _, _ = load_dataset("imagefolder", tmp_path, "train")  # rebuilt: read from the cache, no warning
    assert np.array_equal(again, truth["train"][0])


def test_mixed_image_sizes_name_the_file(tmp_path):
    _write_tree(tmp_path, splits=("train",))
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "train/bee/odd.png")
    with pytest.raises(ValueError, match=r"same size: .*odd\.png is 7x7"):
        load_dataset("imagefolder", tmp_path, "train", cache_dir=False)


def test_corrupt_image_names_the_file(tmp_path):
    _write_tree(tmp_path, splits=("train",))
    (tmp_path / "train/cat/broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png"):
        load_dataset("imagefolder", tmp_path, "train", cache_dir=False)


def test_empty_class_folder_and_no_images(tmp_path):
    _write_tree(tmp_path, splits=("train",))
    (tmp_path / "train/dog").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*dog has no images"):
        load_dataset("imagefolder", tmp_path, "train", cache_dir=False)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset("imagefolder", empty, "train")


def test_test_class_missing_from_train_and_missing_split(tmp_path):
    _write_tree(tmp_path, splits=("train",))
    with pytest.raises(ValueError, match="data.root has no test split"):
        load_dataset("imagefolder", tmp_path, "test")
    (tmp_path / "test/zebra").mkdir(parents=True)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "test/zebra/0.png")
    with pytest.raises(ValueError, match="not a class of the train split"):
        load_dataset("imagefolder", tmp_path, "test")


def test_missing_root_and_bad_names(tmp_path):
    with pytest.raises(ValueError, match="data.root has no imagefolder data.*point data.root at a local copy"):
        load_dataset("imagefolder", tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="data.root has no cifar10 data.*data.download=true"):
        load_dataset("cifar10", tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="data.dataset must be one of cifar10, cifar100, imagefolder, csv, got 'mnist'"):  # noqa: E501
        load_dataset("mnist", tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        load_dataset("cifar10", tmp_path, "val")


def test_cifar_names_accept_imagefolder_tree_with_right_class_count(tmp_path):
    classes = tuple(f"c{i:02d}" for i in range(10))
    _write_tree(tmp_path / "ok", classes=classes, per_class=(1,) * 10, size=(4, 4), splits=("train",))
    images, labels, names = load_dataset("cifar10", tmp_path / "ok", "train")
    assert images.shape == (10, 4, 4, 3) and list(labels) == list(range(10)) and names == list(classes)
    _write_tree(tmp_path / "bad", splits=("train",))
    with pytest.raises(ValueError, match="ImageFolder tree with 3 classes, but cifar100 has 100"):
        load_dataset("cifar100", tmp_path / "bad", "train")


# --------------------------------------------------------------------------------------------------
# torchvision "python version" files (fake, small; integrity checks patched out)


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    truth = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 2).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        truth["test" if name == "test_batch" else "train"].append(
            (data.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1), labels)
        )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    return tmp_path, {
        k: (np.concatenate([d for d, _ in v]), np.concatenate([lab for _, lab in v])) for k, v in truth.items()
    }


def test_torchvision_cifar10_files_load_and_cache(fake_cifar10, monkeypatch):
    root, truth = fake_cifar10
    for split, n in (("train", 10), ("test", 2)):
        images, labels, classes = load_dataset("cifar10", root, split)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
        assert np.array_equal(images, truth[split][0]) and np.array_equal(labels, truth[split][1])
        assert classes == list(CIFAR10_CLASSES)
    import torchvision

    def no_torchvision(*a, **k):
        raise AssertionError("a cached split must not go through torchvision again")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_torchvision)
    images, _, _ = load_dataset("cifar10", root, "train")
    assert np.array_equal(images, truth["train"][0])
    # pointing data.root at the batches folder itself works too
    images, _, _ = load_dataset("cifar10", root / "cifar-10-batches-py", "test")
    assert np.array_equal(images, truth["test"][0])


def test_torchvision_rejection_becomes_one_line_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(ValueError, match="does not hold a valid cifar10 copy"):
        load_dataset("cifar10", tmp_path, "train", cache_dir=False)


# --------------------------------------------------------------------------------------------------
# Statistics and class names


def test_channel_stats_exact():
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    x = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-12)


def test_dataset_stats_constants_and_imagefolder(tmp_path, monkeypatch):
    assert dataset_stats("cifar10") == (CIFAR10_MEAN, CIFAR10_STD)
    assert dataset_stats("cifar100") == (CIFAR100_MEAN, CIFAR100_STD)
    assert CIFAR10_MEAN[0] == pytest.approx(0.4914, abs=1e-4) and CIFAR10_STD[2] == pytest.approx(0.2616, abs=1e-4)
    truth = _write_tree(tmp_path)
    mean, std = dataset_stats("imagefolder", tmp_path)
    expected = channel_stats(truth["train"][0])
    np.testing.assert_allclose(mean, expected[0])
    np.testing.assert_allclose(std, expected[1])
    monkeypatch.setattr(datasets, "channel_stats", lambda images: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = dataset_stats("imagefolder", tmp_path)  # remembered in the cache metadata
    np.testing.assert_allclose(again[0], mean)


def test_dataset_classes_cheap_constants():
    assert dataset_classes("cifar10", "/nonexistent") == list(CIFAR10_CLASSES)
    assert len(dataset_classes("cifar100", "/nonexistent")) == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)  # torchvision's fine-label order is alphabetical


# --------------------------------------------------------------------------------------------------
# Real data (exported copies); skipped with a reason when the env vars are unset


def _real_root(var):
    root = os.environ.get(var)
    if not root:
        pytest.skip(f"{var} is not set: export the lossless CIFAR copy (see README) and point {var} at it")
    return root


def _timed_loads(name, root, cache):
    out = {}
    for split in ("train", "test"):
        t0 = time.perf_counter()
        first = load_dataset(name, root, split, cache_dir=cache)
        first_time = time.perf_counter() - t0
        cached_times = []
        for _ in range(3):  # best of 3: the machine may be shared
            t0 = time.perf_counter()
            second = load_dataset(name, root, split, cache_dir=cache)
            cached_times.append(time.perf_counter() - t0)
        assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
        out[split] = (second, first_time, min(cached_times))
    return out


@pytest.fixture(scope="module")
def real_cifar10(tmp_path_factory):
    return _timed_loads("cifar10", _real_root("CIFAR10_ROOT"), tmp_path_factory.mktemp("c10cache"))


@pytest.fixture(scope="module")
def real_cifar100(tmp_path_factory):
    return _timed_loads("cifar100", _real_root("CIFAR100_ROOT"), tmp_path_factory.mktemp("c100cache"))


def _check_real(loaded, num_classes, classes):
    for split, n in (("train", 50000), ("test", 10000)):
        (images, labels, names), _, _ = loaded[split]
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert names == list(classes)
        assert np.bincount(labels, minlength=num_classes).tolist() == [n // num_classes] * num_classes


@pytest.mark.realdata
def test_real_cifar10_counts_classes_and_stats(real_cifar10):
    _check_real(real_cifar10, 10, CIFAR10_CLASSES)
    mean, std = channel_stats(real_cifar10["train"][0][0])
    np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=1e-5)
    np.testing.assert_allclose(std, CIFAR10_STD, atol=1e-5)


@pytest.mark.realdata
def test_real_cifar100_imagefolder_counts_classes_and_stats(real_cifar100):
    _check_real(real_cifar100, 100, CIFAR100_CLASSES)
    mean, std = channel_stats(real_cifar100["train"][0][0])
    np.testing.assert_allclose(mean, CIFAR100_MEAN, atol=1e-4)
    np.testing.assert_allclose(std, CIFAR100_STD, atol=1e-4)


@pytest.mark.realdata
@pytest.mark.parametrize("which", ["real_cifar10", "real_cifar100"])
def test_real_cache_makes_second_load_fast(which, request):
    loaded = request.getfixturevalue(which)
    _, first, second = loaded["train"]
    print(f"{which} train: first load {first:.2f} s, cached load {second:.2f} s")
    assert second < first / 3  # absolute times depend on the machine; the cache skips decoding entirely


def test_download_without_network_is_one_line_error(tmp_path, monkeypatch):
    """A failed torchvision download (no network) names data.download and says how to use a local copy."""
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(
        ValueError, match=r"^data\.download could not fetch cifar10 .*data\.root at a local copy"
    ) as err:
        load_dataset("cifar10", tmp_path / "empty", "train", download=True)
    assert "\n" not in str(err.value)
