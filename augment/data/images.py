"""Image files to uint8 RGB arrays: decoding, resizing, id lookup, CSV label files and unlabelled folders.

Decoding (`read_images`): any image Pillow reads (PNG, JPEG, WebP, BMP, TIFF, GIF, ...), EXIF orientation
applied, then to 8-bit RGB: grayscale is repeated over three channels, palette images are expanded,
16-bit and 32-bit integer images are scaled to 8 bits (``round(v / 257)``, values above 65535 saturate;
never clipped at 255), float images in [0, 1] are scaled by 255, and images with transparency (RGBA, LA,
PA, palette with a transparent colour) are composited over black (``rgb * alpha / 255``), so what is
hidden behind alpha 0 never reaches the network.

Resizing: when ``image_size`` (height, width) differs from an image's size, Pillow
``Image.resize((w, h), BICUBIC, reducing_gap=None)``: bicubic, antialiased (Pillow widens the filter
support by the downscale factor), computed exactly (no reducing shortcut); the aspect ratio is not kept.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.checks import CheckError

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESIZE_METHOD",
    "UnlabelledImages",
    "image_files",
    "decode_rgb",
    "read_images",
    "resize_images",
    "find_image",
    "find_images",
    "read_csv",
    "load_csv_labels",
    "class_list",
    "label_indices",
    "load_unlabelled",
    "unlabelled_files",
    "checkpoint_data_info",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
RESIZE_METHOD = "pillow-bicubic-antialias"  # part of every cache key of resized data
_INT = re.compile(r"-?[0-9]+")


@dataclass
class UnlabelledImages:
    """Images to predict: ids (file stems or the CSV's ids), uint8 (N, H, W, 3), the CSV rows in file order."""

    ids: list[str]
    images: np.ndarray
    table: list[dict[str, str]] | None = None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (by extension, hidden files skipped), sorted by file name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist")
    return sorted((Path(e.path) for e in os.scandir(folder) if e.is_file() and _is_image(e.name)), key=lambda p: p.name)


# ---------------------------------------------------------------------------------------------------------
# Decoding


def _to_rgb_array(im: Any) -> np.ndarray:
    """A loaded PIL image as uint8 (H, W, 3) RGB (see the module docstring for each mode)."""
    mode = im.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(im)
        if mode == "F":
            scale = 255.0 if float(np.nanmax(a, initial=0.0)) <= 1.0 else 1.0
            a = np.nan_to_num(a.astype(np.float64) * scale)
        elif a.dtype.itemsize > 1:
            a = a.astype(np.float64) / 257.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        a = np.asarray(im).astype(np.uint16)
        rgb = (a[:, :, :3] * a[:, :, 3:] + 127) // 255
        return rgb.astype(np.uint8)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def decode_rgb(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB, resized to ``image_size`` (h, w) when given and different."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb_array(im)
    except FileNotFoundError:
        raise ValueError(f"image file {path} does not exist") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot decode image {path}: {first}") from None
    if image_size is not None and rgb.shape[:2] != tuple(image_size):
        h, w = image_size
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None))
    return rgb


def read_images(
    paths: Sequence[str | os.PathLike], image_size: tuple[int, int] | None = None, workers: int | None = None
) -> np.ndarray:
    """Decode ``paths`` into one uint8 (N, H, W, 3) RGB array, resized to ``image_size`` (h, w) when given.

    With ``image_size`` None every image must have the first one's size, else a one-line ValueError asking
    for ``data.image_size``. A missing or unreadable file is a one-line ValueError naming it. Files are
    decoded on a thread pool (Pillow releases the GIL while decoding).
    """
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    if not paths:
        return np.empty((0, *(size or (0, 0)), 3), dtype=np.uint8)
    first = decode_rgb(paths[0], size)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    out[0] = first

    def decode_chunk(start: int, stop: int) -> None:
        for i in range(start, stop):
            img = decode_rgb(paths[i], size)
            if img.shape != first.shape:
                raise ValueError(
                    f"all images must have the same size: {paths[i]} is {img.shape[1]}x{img.shape[0]}, "
                    f"{paths[0]} is {first.shape[1]}x{first.shape[0]} (width x height); set data.image_size "
                    "to resize them"
                )
            out[i] = img

    workers = workers or min(8, os.cpu_count() or 1)
    bounds = np.linspace(1, len(paths), num=min(len(paths), 4 * workers) + 1, dtype=int)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(decode_chunk, a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]:
            fut.result()
    return out


def resize_images(images: np.ndarray, image_size: tuple[int, int], workers: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) images resized to ``image_size`` (h, w) by the module's method (a copy; as is if equal)."""
    from PIL import Image

    h, w = int(image_size[0]), int(image_size[1])
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((len(images), h, w, images.shape[3]), dtype=np.uint8)

    def resize_chunk(start: int, stop: int) -> None:
        for i in range(start, stop):
            out[i] = np.asarray(Image.fromarray(images[i]).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None))

    workers = workers or min(8, os.cpu_count() or 1)
    bounds = np.linspace(0, len(images), num=min(len(images), 4 * workers) + 1, dtype=int)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(resize_chunk, a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]:
            fut.result()
    return out


# ---------------------------------------------------------------------------------------------------------
# Ids -> files


def _folder_index(root: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """(file name -> path, stem -> image paths) of the files directly in ``root``."""
    names: dict[str, Path] = {}
    stems: dict[str, list[Path]] = {}
    for e in os.scandir(root):
        if e.is_file() and not e.name.startswith("."):
            p = Path(e.path)
            names[e.name] = p
            if _is_image(e.name):
                stems.setdefault(p.stem, []).append(p)
    return names, stems


def find_images(root: str | os.PathLike, image_ids: Sequence[Any]) -> list[Path]:
    """The file of each id in ``root``: the id as a file name, or the id plus an image extension.

    An id matching no file, or several files (``a.png`` and ``a.jpg``), is a one-line ValueError naming the
    id and the folder. Ids with a path separator are looked up relative to ``root``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist")
    names, stems = _folder_index(root)
    found: list[Path] = []
    for raw in image_ids:
        image_id = str(raw).strip()
        if "/" in image_id or os.sep in image_id:
            found.append(_find_nested(root, image_id))
        elif image_id in names and (_is_image(image_id) or image_id not in stems):
            found.append(names[image_id])
        elif len(stems.get(image_id, ())) == 1:
            found.append(stems[image_id][0])
        elif image_id in stems:
            files = ", ".join(sorted(p.name for p in stems[image_id]))
            raise ValueError(f"image id {image_id!r} matches several files in {root} ({files})")
        else:
            raise ValueError(f"image id {image_id!r} has no image file in {root} (tried {image_id}{{,"
                             f"{','.join(IMAGE_EXTENSIONS)}}})")
    return found


def _find_nested(root: Path, image_id: str) -> Path:
    path = root / image_id
    if path.is_file():
        return path
    hits = [q for ext in IMAGE_EXTENSIONS for q in (path.with_name(path.name + ext),) if q.is_file()]
    if len(hits) != 1:
        what = "has no image file" if not hits else "matches several files"
        raise ValueError(f"image id {image_id!r} {what} in {root}")
    return hits[0]


def find_image(root: str | os.PathLike, image_id: Any) -> Path:
    """The file of one id in ``root`` (see `find_images`)."""
    return find_images(root, [image_id])[0]


# ---------------------------------------------------------------------------------------------------------
# CSV files


def read_csv(path: str | os.PathLike, required: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The rows of a CSV file (header line first; a UTF-8 BOM is skipped) as dicts in file order.

    required: (field, column) pairs; a missing column is a CheckError naming the field and the columns found.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"CSV file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read CSV file {path}: {err}") from None
    for field, column in required:
        if column not in columns:
            found = ", ".join(columns) if columns else "none"
            raise CheckError(field, f"a column of {path} (columns found: {found})", column)
    return rows


def _parse_labels(values: list[str], path: Path, column: str) -> list[str] | list[int]:
    """Labels as ints when every one is written as an int (``str(int(v)) == v``), else strings; empty: error."""
    for i, v in enumerate(values):
        if v == "":
            raise ValueError(f"{path} row {i + 2} has an empty {column!r} label")
    if all(_INT.fullmatch(v) and str(int(v)) == v for v in values):  # "007" stays a string, so does "1.0"
        return [int(v) for v in values]
    return values


def load_csv_labels(
    csv_path: str | os.PathLike, id_column: str = "id", label_column: str = "label"
) -> tuple[list[str], list[str] | list[int]]:
    """(ids, labels) of a label file in row order; labels are ints when every label is an integer, else strings.

    A missing column is a CheckError on ``id_column`` / ``label_column`` listing the columns found.
    """
    rows = read_csv(csv_path, [("id_column", id_column), ("label_column", label_column)])
    if not rows:
        raise ValueError(f"CSV file {Path(csv_path).expanduser()} has no rows")
    ids = [str(r[id_column] or "").strip() for r in rows]
    labels = _parse_labels([str(r[label_column] or "").strip() for r in rows], Path(csv_path), label_column)
    return ids, labels


def class_list(labels: Sequence[Any]) -> list[Any]:
    """The sorted unique labels: ints numerically, strings lexicographically."""
    return sorted(set(labels))


def label_indices(labels: Sequence[Any], classes: Sequence[Any]) -> np.ndarray:
    """int64 (N,) index of each label in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))


# ---------------------------------------------------------------------------------------------------------
# Unlabelled images and checkpoints


def load_unlabelled(
    root: str | os.PathLike,
    ids_csv: str | os.PathLike | None = None,
    id_column: str = "id",
    image_size: tuple[int, int] | None = None,
) -> UnlabelledImages:
    """Images to predict: every image file of ``root`` (sorted names; ids = file stems), or the ids of
    ``ids_csv`` in its row order (their files in ``root``; ``table`` keeps the CSV's rows and columns)."""
    ids, files, rows = unlabelled_files(root, ids_csv, id_column)
    return UnlabelledImages(ids, read_images(files, image_size), rows)


def unlabelled_files(
    root: str | os.PathLike, ids_csv: str | os.PathLike | None = None, id_column: str = "id"
) -> tuple[list[str], list[Path], list[dict[str, str]] | None]:
    """(ids, their files, the CSV rows or None) of :func:`load_unlabelled`, nothing decoded; a missing file
    is a one-line error here."""
    if ids_csv is None:
        files = image_files(root)
        return [p.stem for p in files], files, None
    rows = read_csv(ids_csv, [("id_column", id_column)])
    ids = [str(r[id_column] or "").strip() for r in rows]
    return ids, find_images(root, ids), rows


def checkpoint_data_info(
    checkpoint: dict[str, Any],
) -> tuple[list[Any] | None, tuple[int, int] | None, tuple[float, ...] | None, tuple[float, ...] | None]:
    """(class_names, image_size (h, w), mean, std) recorded in a checkpoint dict (None where absent).

    The DataModule's state (``checkpoint["CIFARDataModule"]``) holds them for every run of this project;
    ``class_names`` and ``image_size`` are also the classifier's hyperparameters.
    """
    places = [v for k, v in checkpoint.items() if str(k).endswith("DataModule") and isinstance(v, dict)]
    places.append(checkpoint.get("hyper_parameters") or {})

    def get(key: str) -> Any:
        return next((p[key] for p in places if p.get(key) is not None), None)

    names, size, mean, std = get("class_names"), get("image_size"), get("mean"), get("std")
    if isinstance(size, int):
        size = (size, size)
    return (
        None if names is None else list(names),
        None if size is None else (int(size[0]), int(size[1])),
        None if mean is None else tuple(float(v) for v in mean),
        None if std is None else tuple(float(v) for v in std),
    )
