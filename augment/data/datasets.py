"""Image classification datasets as uint8 arrays: CIFAR-10, CIFAR-100, ImageFolder trees and CSV-labelled
folders, with a disk cache.

``load_dataset(name, root, split)`` returns ``(images uint8 (N, H, W, 3) RGB, labels int64 (N,),
class_names)``. Sources:

- ``cifar10`` / ``cifar100``: torchvision's "python version" files (``root/cifar-10-batches-py``,
  ``root/cifar-100-python``) through ``torchvision.datasets.CIFAR10/100``, or, auto-detected, an
  ImageFolder tree ``root/{train,test}/<class>/<image>`` (how the lossless CIFAR-100 copy is exported).
- ``imagefolder``: ``root/{train,test}/<class>/<image>``, decoded once with Pillow to RGB; class
  indices follow the sorted class folder names of ``train``.
- ``csv``: ``root`` holds the images, ``train_csv`` (relative to ``root`` or absolute) names the label file
  with an id column and a label column; an id is a file name with or without its extension. Labels are
  ints when every label is written as an int, else strings; classes are the sorted unique labels. There
  is only a train split.

Images are decoded by ``augment.data.images`` (any Pillow format and mode to 8-bit RGB). ``image_size``
(h, w) resizes every image once, while it is decoded (Pillow bicubic, antialiased); without it all images
of a split must share one size.

The decoded arrays are cached as ``.npz`` under ``<root>/.cifar_aug_cache/`` (or ``cache_dir``), keyed
by dataset, split and a fingerprint of the source files (names, sizes, mtimes) and of the size and resize
method, written atomically
(temporary file + ``os.replace``), so later loads skip decoding and torchvision's md5 checks.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augment.data.images import (
    IMAGE_EXTENSIONS,
    RESIZE_METHOD,
    class_list,
    find_images,
    label_indices,
    load_csv_labels,
    read_images,
    resize_images,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "IMAGE_EXTENSIONS",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CACHE_DIRNAME",
    "load_dataset",
    "dataset_classes",
    "dataset_stats",
    "channel_stats",
    "check_dataset_name",
]

DATASETS = ("cifar10", "cifar100", "imagefolder", "csv")
SPLITS = ("train", "test")
CACHE_DIRNAME = ".cifar_aug_cache"
_CACHE_VERSION = "3"  # 2: the metadata holds a CRC-32 of the images; 3: EXIF orientation, alpha composited

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)
# Per-channel train-set statistics in [0, 1] units (population std over all pixels).
CIFAR10_MEAN = (125.307 / 255, 122.950 / 255, 113.865 / 255)
CIFAR10_STD = (62.993 / 255, 62.089 / 255, 66.705 / 255)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_TORCHVISION_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a supported dataset, else raise a one-line ValueError."""
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return name


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _missing_root(name: str, root: Path) -> ValueError:
    if name == "imagefolder":
        expected = f"{root}/train/<class>/<image> and {root}/test/<class>/<image>"
        hint = "point data.root at a local copy"
    else:
        expected = f"{root}/{_TORCHVISION_FOLDER[name]} or an ImageFolder tree {root}/train/<class>/<image>"
        hint = "point data.root at a local copy, or set data.download=true to fetch it when online"
    return ValueError(f"data.root has no {name} data (expected {expected}): {hint}")


# ---------------------------------------------------------------------------------------------------------
# ImageFolder trees


def _is_imagefolder(root: Path) -> bool:
    return (root / "train").is_dir() or (root / "test").is_dir()


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _folder_classes(root: Path) -> list[str]:
    """Class names (sorted folder names) of ``root/train``, or of ``root/test`` when there is no train split."""
    split_dir = root / "train" if (root / "train").is_dir() else root / "test"
    classes = _class_dirs(split_dir)
    if not classes:
        raise ValueError(f"data.root has no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    return classes


def _scan_folder(root: Path, split: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray, list[tuple]]:
    """Image paths, their labels, and (relative path, size, mtime) rows for the fingerprint."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise ValueError(f"data.root has no {split} split: expected a folder {split_dir}/<class>/<image>")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    rows: list[tuple] = []
    for cls in _class_dirs(split_dir):
        if cls not in index:
            raise ValueError(
                f"class folder {split_dir / cls} is not a class of the train split ({len(classes)} classes)"
            )
        entries = sorted(
            (e for e in os.scandir(split_dir / cls) if e.is_file() and not e.name.startswith(".")),
            key=lambda e: e.name,
        )
        images = [e for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
        if not images:
            raise ValueError(f"class folder {split_dir / cls} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for e in images:
            st = e.stat()
            paths.append(e.path)
            rows.append((cls, e.name, st.st_size, st.st_mtime_ns))
        labels.extend([index[cls]] * len(images))
    if not paths:
        raise ValueError(f"data.root has no images in {split_dir} (expected {split_dir}/<class>/<image>)")
    return paths, np.asarray(labels, dtype=np.int64), rows


def _decode_all(paths: Sequence[str], image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode every image to one uint8 (N, H, W, 3) array (see ``augment.data.images.read_images``)."""
    return read_images(paths, image_size)


# ---------------------------------------------------------------------------------------------------------
# torchvision CIFAR files


def _torchvision_files(root: Path, name: str) -> list[Path]:
    folder = root / _TORCHVISION_FOLDER[name]
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _load_torchvision(name: str, root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        raise ValueError(
            f"data.root {root} does not hold a valid {name} copy ({err}); for cifar100 export the lossless copy "
            "as an ImageFolder tree, or set data.download=true to fetch it when online"
        ) from None
    except OSError as err:  # urllib.error.URLError and socket errors are OSErrors: no network, proxy, DNS
        raise ValueError(
            f"data.download could not fetch {name} into {root} ({getattr(err, 'reason', err)}); with no network, "
            "point data.root at a local copy and set data.download=false"
        ) from None
    images = np.ascontiguousarray(ds.data, dtype=np.uint8)
    return images, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


# ---------------------------------------------------------------------------------------------------------
# Cache


def _fingerprint(parts: Sequence[object]) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_rows(files: Sequence[Path]) -> list[tuple]:
    return [(f.name, st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),)]


def _cache_paths(cache_dir: Path, name: str, split: str, fingerprint: str) -> tuple[Path, Path]:
    """(images .npy, metadata .npz): plain .npy loads at disk speed (an .npz member is CRC-checked on read)."""
    stem = f"{name}-{split}-{fingerprint}"
    return cache_dir / f"{stem}.images.npy", cache_dir / f"{stem}.meta.npz"


def _read_cache(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray, list[str], dict] | None:
    images_path, meta_path = paths
    if not (images_path.is_file() and meta_path.is_file()):
        return None
    try:
        images = np.load(images_path, allow_pickle=False)
        with np.load(meta_path, allow_pickle=False) as z:
            extra = {k: tuple(float(v) for v in z[k]) for k in ("mean", "std") if k in z}
            labels, classes = z["labels"], [str(c) for c in z["class_names"]]
            crc = int(z["images_crc32"])
    # Truncated, emptied, bit-flipped or foreign files: rebuild (the .npz members are CRC-checked on read).
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        warnings.warn(f"ignoring unreadable dataset cache {images_path}: {err}; decoding the data again", stacklevel=3)
        return None
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels) or _crc32(images) != crc:
        warnings.warn(f"ignoring inconsistent dataset cache {images_path}; decoding the data again", stacklevel=3)
        return None
    return images, labels, classes, extra


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a unique temporary file next to ``path``, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _crc32(images: np.ndarray) -> int:
    """Checksum of the cached pixels (a plain .npy is not checked on read; a flipped byte must not pass)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(images)).cast("B"))


def _write_meta(path: Path, labels: np.ndarray, class_names: Sequence[str], extra: dict, crc: int) -> None:
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in extra.items()}
    names = np.asarray(class_names, dtype=str)
    _atomic_write(path, lambda f: np.savez(f, labels=labels, class_names=names, images_crc32=np.int64(crc), **arrays))


def _write_cache(
    paths: tuple[Path, Path], images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], extra: dict
) -> None:
    """Images first, metadata last (its presence marks a complete entry); then drop stale versions."""
    images_path, meta_path = paths
    try:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(images_path, lambda f: np.save(f, images, allow_pickle=False))
        _write_meta(meta_path, labels, class_names, extra, _crc32(images))
    except OSError as err:
        warnings.warn(f"could not write dataset cache {images_path} ({err}); the next load decodes again", stacklevel=3)
        return
    stem = images_path.name[: -len(".images.npy")]
    prefix = stem.rsplit("-", 1)[0] + "-"
    for old in images_path.parent.glob(f"{prefix}*"):
        if not old.name.startswith(stem) and len(old.name.split(".")[0]) == len(stem):
            old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# Public API


def _csv_path(root: Path, train_csv: str | os.PathLike | None) -> Path:
    """The label file: ``train_csv`` with ``~`` expanded, relative to ``root`` unless absolute."""
    if train_csv is None:
        raise ValueError("data.train_csv must name the label file (relative to data.root or absolute) for csv data")
    path = Path(train_csv).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise ValueError(f"data.train_csv {path} does not exist")
    return path


def _csv_labels(root: Path, source: dict[str, Any]) -> tuple[Path, list[str], list[Any]]:
    """(label file, ids, labels) of a csv dataset; a missing column names data.id_column / data.label_column."""
    from augment.checks import field_prefix

    path = _csv_path(root, source.get("train_csv"))
    with field_prefix("data"):
        ids, labels = load_csv_labels(path, source.get("id_column", "id"), source.get("label_column", "label"))
    return path, ids, labels


def _size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (int(image_size[0]), int(image_size[1]))


def dataset_classes(name: str, root: str | os.PathLike, **source: Any) -> list[Any]:
    """Class names in label order, cheaply: constants for CIFAR, sorted train class folders for imagefolder,
    the sorted unique labels of ``train_csv`` for csv (``source``: train_csv, id_column, label_column)."""
    check_dataset_name(name)
    root = Path(root).expanduser()
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    if name == "cifar100":
        return list(CIFAR100_CLASSES)
    if name == "csv":
        return class_list(_csv_labels(root, source)[2])
    if not _is_imagefolder(root):
        raise _missing_root(name, root)
    return _folder_classes(root)


def _resolve_cache(root: Path, cache_dir: str | os.PathLike | None | bool) -> Path | None:
    if cache_dir is False:
        return None
    return root / CACHE_DIRNAME if cache_dir in (None, True) else Path(cache_dir).expanduser()


def _load_csv(
    root: Path, split: str, size: tuple[int, int] | None, cache: Path | None, source: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, list[Any], dict, tuple[Path, Path] | None]:
    if split != "train":
        raise ValueError(f"data.dataset=csv has only a train split (the labelled images), not {split!r}")
    if not root.is_dir():
        raise ValueError(f"data.root {root} is not a folder (it must hold the images named in data.train_csv)")
    csv_path, ids, labels = _csv_labels(root, source)
    classes = class_list(labels)
    files = find_images(root, ids)
    st = csv_path.stat()
    rows = [(str(f.relative_to(root)) if f.is_relative_to(root) else str(f), *_stat(f)) for f in files]
    parts = ["csv", str(root.resolve()), str(csv_path.resolve()), st.st_size, st.st_mtime_ns,
             source.get("id_column", "id"), source.get("label_column", "label"), rows]
    paths = _cache_paths(cache, _cache_name("csv", size), split, _fingerprint(_sized(parts, size))) if cache else None
    cached = _read_cache(paths) if paths else None
    if cached is not None:
        return cached[0], cached[1], classes, cached[3], paths
    images = _decode_all([str(f) for f in files], size)
    targets = label_indices(labels, classes)
    if paths:
        _write_cache(paths, images, targets, [str(c) for c in classes], {})
    return images, targets, classes, {}, paths


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _sized(parts: list, size: tuple[int, int] | None) -> list:
    """Fingerprint parts with the target size and resize method (unchanged when images keep their size)."""
    return parts if size is None else [*parts, ("image_size", size, RESIZE_METHOD)]


def _cache_name(name: str, size: tuple[int, int] | None) -> str:
    return name if size is None else f"{name}-{size[0]}x{size[1]}"


def _load(
    name: str,
    root: str | os.PathLike,
    split: str,
    download: bool,
    cache_dir: str | os.PathLike | None | bool,
    image_size: Any = None,
    source: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Any], dict, tuple[Path, Path] | None]:
    """Load a split through the cache: (images, labels, class_names, cached extras, cache paths or None)."""
    check_dataset_name(name)
    _check_split(split)
    size = _size(image_size)
    root = Path(root).expanduser()
    if name == "csv":
        return _load_csv(root, split, size, _resolve_cache(root, cache_dir), source or {})
    if name != "imagefolder" and root.name == _TORCHVISION_FOLDER[name]:
        root = root.parent  # pointed at the batches folder itself
    folder = _is_imagefolder(root)
    if name == "imagefolder" and not folder:
        raise _missing_root(name, root)
    tv_files = [] if folder else _torchvision_files(root, name)
    if not folder and not tv_files and not download:
        raise _missing_root(name, root)
    cache = _resolve_cache(root, cache_dir)

    def cache_paths(parts: list) -> tuple[Path, Path] | None:
        return _cache_paths(cache, _cache_name(name, size), split, _fingerprint(_sized(parts, size))) if cache else None

    if folder:
        classes = _folder_classes(root)
        if name in _NUM_CLASSES and len(classes) != _NUM_CLASSES[name]:
            raise ValueError(
                f"data.root {root} is an ImageFolder tree with {len(classes)} classes, but {name} has "
                f"{_NUM_CLASSES[name]}: use data.dataset=imagefolder for other datasets"
            )
        file_paths, labels, rows = _scan_folder(root, split, classes)
        paths = cache_paths(["imagefolder", str(root.resolve()), split, classes, rows])
        cached = _read_cache(paths) if paths else None
        if cached is not None:
            return (*cached, paths)
        images = _decode_all(file_paths, size)
    else:
        paths = cache_paths(["torchvision", str(root.resolve()), split, _file_rows(tv_files)]) if tv_files else None
        cached = _read_cache(paths) if paths else None
        if cached is not None:
            return (*cached, paths)
        images, labels, classes = _load_torchvision(name, root, split, download)
        if size is not None:
            images = resize_images(images, size)
        if cache and not tv_files:  # just downloaded: fingerprint the fresh files
            paths = cache_paths(["torchvision", str(root.resolve()), split, _file_rows(_torchvision_files(root, name))])
    if paths:
        _write_cache(paths, images, labels, classes, {})
    return images, labels, list(classes), {}, paths


def load_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    download: bool = False,
    cache_dir: str | os.PathLike | None | bool = None,
    image_size: int | Sequence[int] | None = None,
    **source: Any,
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Load one split as (images uint8 (N, H, W, 3) RGB, labels int64 (N,), class_names).

    ``name``: cifar10 | cifar100 | imagefolder | csv; ``split``: train | test (csv: train only).
    ``cache_dir``: None = ``<root>/.cifar_aug_cache``, False = no cache, else a folder. ``image_size``: int
    or (h, w) to resize every image once (None: the images' own size, which they must share). ``source``
    (csv): ``train_csv``, ``id_column`` (default ``id``), ``label_column`` (default ``label``).
    """
    images, labels, classes, _, _ = _load(name, root, split, download, cache_dir, image_size, source)
    return images, labels, classes


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images (N, H, W, C), in [0, 1] units (exact, via histograms)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    import torch  # torch.bincount on a contiguous channel is several times faster than numpy on a strided one

    values = np.arange(256, dtype=np.float64) / 255.0
    flat = torch.from_numpy(np.ascontiguousarray(images)).view(-1, images.shape[-1])
    means, stds = [], []
    for c in range(flat.shape[1]):  # per channel: a histogram of 256 bins gives exact moments
        hist = torch.bincount(flat[:, c].contiguous(), minlength=256).double().numpy()
        n = hist.sum()
        mean = float(hist @ values / n)
        var = float(hist @ (values - mean) ** 2 / n)
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def dataset_stats(
    name: str,
    root: str | os.PathLike = "data",
    download: bool = False,
    cache_dir: str | os.PathLike | None | bool = None,
    image_size: int | Sequence[int] | None = None,
    **source: Any,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization (mean, std) in [0, 1] units: CIFAR constants, or computed from the train split of an
    imagefolder or csv dataset (at ``image_size``; ``source`` as in `load_dataset`)."""
    check_dataset_name(name)
    if name == "cifar10":
        return CIFAR10_MEAN, CIFAR10_STD
    if name == "cifar100":
        return CIFAR100_MEAN, CIFAR100_STD
    images, labels, classes, extra, paths = _load(name, root, "train", download, cache_dir, image_size, source)
    if "mean" in extra and "std" in extra:
        return extra["mean"], extra["std"]
    mean, std = channel_stats(images)
    if paths:  # remember them next to the cached arrays
        try:
            _write_meta(paths[1], labels, classes, {"mean": mean, "std": std}, _crc32(images))
        except OSError:
            pass
    return mean, std
