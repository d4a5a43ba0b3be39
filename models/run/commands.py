"""`train.py predict` and `train.py export`: plain argparse commands beside the LightningCLI fit command.

    python train.py predict --members RUN [RUN ...] --images DIR [--ids sample_submission.csv]
        --output submission.csv [--tta none|flip] [--format label|probs] [--batch-size N] [--device auto|cpu|cuda]
    python train.py export --member RUN --format onnx|torchscript --output FILE [--opset N] [--images DIR]

Every argument is checked before any work starts; a user error is one ``error: ...`` line and exit code
2, Ctrl-C exit code 130, a failed export check exit code 1. An existing output is never replaced without
``--overwrite``; outputs are written to a temporary file and moved into place, so an interrupted command
leaves no half-written file.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from augment.checks import CheckError
from models.run.predict import TTA_VIEWS, Member

__all__ = ["COMMANDS", "main", "predict_command", "export_command", "submission_table", "write_csv"]

COMMANDS = ("predict", "export")
FORMATS = ("label", "probs")
EXPORT_FORMATS = ("onnx", "torchscript")
CHECK_IMAGES = 16  # images of the export check


class CommandError(ValueError):
    """A bad command-line argument, printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors raise (one line from main) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{self.prog}: {message} (see {self.prog} --help)")


def _predict_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py predict", description="Average trained members' softmax over images into a CSV.")
    p.add_argument("--members", nargs="+", required=True, metavar="M",
                   help="run folders (their selected checkpoint), study folders (every run below) or .ckpt files")
    p.add_argument("--images", required=True, help="folder of the images to predict")
    p.add_argument("--ids", default=None, help="CSV of ids to predict (e.g. sample_submission.csv): its row order "
                   "and columns are kept; default: every image of --images, sorted by file name")
    p.add_argument("--id-column", default="id", help="id column of --ids and of the output (default: id)")
    p.add_argument("--label-column", default="label", help="column the predicted class goes to (default: label)")
    p.add_argument("--output", required=True, help="CSV to write")
    p.add_argument("--tta", default="none", choices=list(TTA_VIEWS), help="test-time views (default: none)")
    p.add_argument("--format", default="label", choices=FORMATS,
                   help="label: the class name; probs: one probability column per class (default: label)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--chunk-size", type=int, default=8192,
                   help="images decoded into memory at a time (default: 8192); only the probabilities of all stay")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py export", description="Export a member's evaluated network, normalization inside.")
    p.add_argument("--member", required=True, help="a run folder (its selected checkpoint) or a .ckpt file")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--output", required=True, help="model file to write (plus FILE.json with classes and input)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    p.add_argument("--images", default=None,
                   help="folder whose first images (sorted) check the export; default: seeded random images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


# ----------------------------------------------------------------------------------------------------------
# Checks


def _check_output(path: str, overwrite: bool, field: str = "--output") -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise CheckError(field, "a file path, not a folder", path)
    if not out.parent.is_dir():
        raise CheckError(field, "a path in an existing folder", path)
    if out.exists() and not overwrite:
        raise CheckError(field, "a file that does not exist yet (add --overwrite to replace it)", path)
    return out


def _check_folder(path: str | None, field: str) -> Path | None:
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckError(field, "an existing folder of images", path)
    return folder


# ----------------------------------------------------------------------------------------------------------
# Predict


def submission_table(
    ids: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[Any],
    fmt: str,
    table: Sequence[dict[str, Any]] | None = None,
    id_column: str = "id",
    label_column: str = "label",
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the output CSV.

    label: the table's columns (or ``id_column``) with ``label_column`` set to the top class name (added when
    missing); probs: the table's columns but ``label_column``, with one column per class name (filled where
    the table has it, added otherwise), probabilities with 6 significant digits.
    """
    names = [str(c) for c in class_names]
    if table is not None:
        header = list(table[0].keys()) if table else [id_column]
        rows = [[str(row.get(c, "")) for c in header] for row in table]
    else:
        header, rows = [id_column], [[str(i)] for i in ids]
    if fmt == "label":
        if label_column not in header:
            header.append(label_column)
            rows = [r + [""] for r in rows]
        col = header.index(label_column)
        top = probs.argmax(1)
        for r, k in zip(rows, top):
            r[col] = names[k]
        return header, rows
    keep = [i for i, c in enumerate(header) if c != label_column or c in names]
    header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    for name in names:
        if name not in header:
            header.append(name)
            rows = [r + [""] for r in rows]
    cols = [header.index(name) for name in names]
    text = np.vectorize(lambda p: format(float(p), ".6g"), otypes=[object])(probs)
    for r, values in zip(rows, text):
        for c, v in zip(cols, values):
            r[c] = v
    return header, rows


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Write a CSV atomically (temporary file beside it, then moved into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Progress:
    """tqdm over images x members (shown on a terminal only)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", desc="predict", file=sys.stderr, disable=None, leave=False)

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def predict_command(argv: Sequence[str]) -> int:
    """`train.py predict ...`: see the module docstring."""
    from models.run.predict import load_members, resolve_device

    args = _predict_parser().parse_args(list(argv))
    output = _check_output(args.output, args.overwrite)
    images_dir = _check_folder(args.images, "--images")
    if args.ids is not None and not Path(args.ids).expanduser().is_file():
        raise CheckError("--ids", "an existing CSV file", args.ids)
    for flag, value in (("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value < 1:
            raise CheckError(flag, "an int >= 1", value)
    device = resolve_device(args.device)
    start = time.perf_counter()
    members = load_members(args.members)
    ids, files, table = _unlabelled(images_dir, args.ids, args.id_column)
    probs = _predict_in_chunks(members, files, args, device)
    header, rows = submission_table(ids, probs, members[0].class_names, args.format, table,
                                    args.id_column, args.label_column)
    write_csv(output, header, rows)
    seconds = time.perf_counter() - start
    views = TTA_VIEWS[args.tta]
    print(f"predicted {len(ids)} images x {len(members)} member{'s' * (len(members) != 1)} x {views} "
          f"view{'s' * (views != 1)} ({args.tta}) on {device.type} in {seconds:.1f} s -> {output} ({args.format})")
    return 0


def _predict_in_chunks(members: Sequence[Member], files: Sequence[Path], args: Any, device: Any) -> np.ndarray:
    """Decode ``--chunk-size`` images at a time (resized to the members' size) and predict them."""
    from augment.data.images import read_images
    from models.run.predict import predict_probs

    probs = np.empty((len(files), len(members[0].class_names)), dtype=np.float32)
    progress = _Progress(len(files) * len(members))
    try:
        for lo in range(0, len(files), args.chunk_size):
            images = read_images(files[lo:lo + args.chunk_size], members[0].image_size)
            probs[lo:lo + len(images)] = predict_probs(members, images, args.tta, args.batch_size, device, progress)
    finally:
        progress.close()
    return probs


def _unlabelled(images_dir: Path, ids: str | None, id_column: str) -> tuple[list[str], list[Path], Any]:
    from augment.data.images import unlabelled_files

    try:
        found = unlabelled_files(images_dir, ids_csv=ids, id_column=id_column)
    except CheckError as err:
        raise (err.with_field("--id-column") if err.field == "id_column" else err) from None
    if len(found[0]) == 0:
        field = "--images" if ids is None else "--ids"
        raise CheckError(field, "a source of at least one image", str(ids or images_dir))
    return found


# ----------------------------------------------------------------------------------------------------------
# Export


def _check_images(member: Member, folder: Path | None) -> tuple[np.ndarray, str]:
    """uint8 (N, H, W, 3) images for the export check and how they were chosen."""
    h, w = member.image_size
    if folder is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (CHECK_IMAGES, h, w, 3), dtype=np.uint8), f"{CHECK_IMAGES} random images"
    from augment.data.images import image_files, read_images

    files = image_files(folder)[:CHECK_IMAGES]
    if not files:
        raise CheckError("--images", "a folder holding images", str(folder))
    return read_images(files, (h, w)), f"{len(files)} images of {folder}"


def export_command(argv: Sequence[str]) -> int:
    """`train.py export ...`: see the module docstring and `models.run.export`."""
    from models.run.export import DEFAULT_OPSET, ExportCheckError, _need_onnx, export_member
    from models.run.predict import load_member, resolve_members

    args = _export_parser().parse_args(list(argv))
    output = _check_output(args.output, args.overwrite)
    folder = _check_folder(args.images, "--images")
    if args.format == "onnx":
        _need_onnx()
        opset = DEFAULT_OPSET if args.opset is None else args.opset
        if not 9 <= opset <= 25:
            raise CheckError("--opset", "an int in [9, 25] (default 18)", args.opset)
    elif args.opset is not None:
        raise CheckError("--opset", "left out with --format torchscript (it has no opset)", args.opset)
    else:
        opset = DEFAULT_OPSET
    paths = resolve_members([args.member], field="--member")
    if len(paths) != 1:
        raise CheckError("--member", f"one run folder or checkpoint (this folder holds {len(paths)} runs)",
                         args.member)
    member = load_member(paths[0])
    images, how = _check_images(member, folder)
    try:
        result = export_member(member, args.format, output, images, opset)
    except ExportCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    opset_text = f", opset {result.opset}" if result.opset is not None else ""
    print(f"exported {paths[0]} ({'EMA weights' if member.ema else 'weights'}) as {args.format} "
          f"({result.exporter}{opset_text}) -> {output}; input uint8 (batch, 3, {member.image_size[0]}, "
          f"{member.image_size[1]}) RGB, classes in {output.name}.json")
    print(f"check on {how}: max abs logit diff {result.max_abs_diff:.2e} (bound {result.bound:.2e})")
    return 0


# ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    """Run ``argv`` = [command, args...]: exit code 0, 1 (export check failed), 2 (user error), 130 (Ctrl-C)."""
    from models.run.cli import USER_ERRORS, _one_line

    command, rest = argv[0], list(argv[1:])
    try:
        if command == "predict":
            return predict_command(rest)
        if command == "export":
            return export_command(rest)
        raise CommandError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except USER_ERRORS as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C): {command} stopped, nothing written", file=sys.stderr)
        return 130
