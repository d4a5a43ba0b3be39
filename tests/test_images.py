"""augment.data.images: decoding every Pillow mode to RGB, resizing, ids -> files, CSV labels, unlabelled folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augment.checks import CheckError
from augment.data.images import (
    checkpoint_data_info,
    class_list,
    find_image,
    label_indices,
    load_csv_labels,
    load_unlabelled,
    read_images,
)


def test_grayscale_palette_rgba_and_16bit_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 5), 77, np.uint8), mode="L").save(tmp_path / "gray.png")
    pal = Image.new("P", (5, 4), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.save(tmp_path / "pal.png")
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # hidden pixel: composited over black
    rgba[1, 1, 3] = 51  # 200 * 51 / 255 = 40
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    deep = np.full((4, 5), 65535, np.uint16)
    deep[0, 0] = 257 * 3
    Image.fromarray(deep).save(tmp_path / "deep.png")
    x = read_images([tmp_path / n for n in ("gray.png", "pal.png", "rgba.png", "deep.png")], None)
    assert x.shape == (4, 4, 5, 3) and x.dtype == np.uint8
    assert (x[0] == 77).all() and (x[1] == [10, 20, 30]).all()
    assert (x[2, 0, 0] == 0).all() and (x[2, 1, 1] == 40).all() and (x[2, 2, 2] == 200).all()
    assert (x[3, 0, 0] == 3).all() and (x[3, 1, 1] == 255).all()  # scaled by 1/257, not clipped at 255


def test_jpeg_and_webp_read_and_resize_to_image_size(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg")
    Image.fromarray(img).save(tmp_path / "b.webp", lossless=True)
    x = read_images([tmp_path / "a.jpg", tmp_path / "b.webp"], (16, 24))
    assert x.shape == (2, 16, 24, 3)
    want = np.asarray(Image.fromarray(img).resize((24, 16), Image.Resampling.BICUBIC, reducing_gap=None))
    assert np.array_equal(x[1], want)


def test_mixed_sizes_need_image_size(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png is 8x9.*set data.image_size"):
        read_images([tmp_path / "a.png", tmp_path / "b.png"], None)
    assert read_images([tmp_path / "a.png", tmp_path / "b.png"], (8, 8)).shape == (2, 8, 8, 3)


def test_corrupt_and_missing_files_are_one_line_naming_them(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    good = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    good.save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:40])
    for name in ("bad.png", "cut.png", "gone.png"):
        with pytest.raises(ValueError, match=name) as err:
            read_images([tmp_path / name], None)
        assert "\n" not in str(err.value)


def test_find_image_with_and_without_extension(tmp_path):
    for name in ("a.png", "b.JPG", "c.jpg", "c.png"):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / name, format="PNG")
    assert find_image(tmp_path, "a") == tmp_path / "a.png"
    assert find_image(tmp_path, "a.png") == tmp_path / "a.png"
    assert find_image(tmp_path, "b") == tmp_path / "b.JPG"
    assert find_image(tmp_path, "c.jpg") == tmp_path / "c.jpg"
    with pytest.raises(ValueError, match="'c' matches several files"):
        find_image(tmp_path, "c")
    with pytest.raises(ValueError, match=rf"image id 'zz' has no image file in {tmp_path}"):
        find_image(tmp_path, "zz")


def test_csv_labels_strings_ints_and_missing_columns(tmp_path):
    (tmp_path / "s.csv").write_text("image,label\nx,dog\ny,ant\nz,dog\n")
    (tmp_path / "i.csv").write_text("\ufeffid,label\nx,10\ny,2\nz,10\n")
    (tmp_path / "z.csv").write_text("id,label\nx,007\ny,2\n")
    with pytest.raises(CheckError, match=r"id_column must be a column of .*s\.csv \(columns found: image, label\)"):
        load_csv_labels(tmp_path / "s.csv")
    ids, labels = load_csv_labels(tmp_path / "s.csv", id_column="image")
    assert ids == ["x", "y", "z"] and labels == ["dog", "ant", "dog"] and class_list(labels) == ["ant", "dog"]
    ids, labels = load_csv_labels(tmp_path / "i.csv")
    assert labels == [10, 2, 10] and class_list(labels) == [2, 10]  # numeric order, not "10" < "2"
    assert label_indices(labels, [2, 10]).tolist() == [1, 0, 1]
    assert load_csv_labels(tmp_path / "z.csv")[1] == ["007", "2"]  # not all written as ints: strings
    with pytest.raises(CheckError, match="label_column"):
        load_csv_labels(tmp_path / "i.csv", label_column="class")


def test_load_unlabelled_folder_and_csv_order(tmp_path):
    for i, name in enumerate(("b.png", "a.png", "c.webp")):
        Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(tmp_path / name, lossless=True)
    data = load_unlabelled(tmp_path)
    assert data.ids == ["a", "b", "c"] and data.table is None and data.images[:, 0, 0, 0].tolist() == [1, 0, 2]
    (tmp_path / "sub.csv").write_text("id,extra\nc,z\na.png,y\n")
    data = load_unlabelled(tmp_path, tmp_path / "sub.csv", image_size=(4, 4))
    assert data.ids == ["c", "a.png"] and data.images.shape == (2, 4, 4, 3)
    assert data.table == [{"id": "c", "extra": "z"}, {"id": "a.png", "extra": "y"}]
    with pytest.raises(CheckError, match=r"columns found: id, extra"):
        load_unlabelled(tmp_path, tmp_path / "sub.csv", id_column="image")


def test_checkpoint_data_info_reads_the_datamodule_state():
    ckpt = {"CIFARDataModule": {"class_names": [2, 10], "image_size": [48, 64], "mean": [0.5] * 3, "std": [0.25] * 3}}
    assert checkpoint_data_info(ckpt) == ([2, 10], (48, 64), (0.5,) * 3, (0.25,) * 3)
    assert checkpoint_data_info({}) == (None, None, None, None)
