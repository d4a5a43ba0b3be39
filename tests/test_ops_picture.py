"""bench/ops_picture.py: every op row is made and drawn (synthetic images; the real-data picture is in docs/img)."""

import numpy as np
import torch

from bench import ops_picture


def test_op_rows_and_picture_layout():
    names = [f"class{i}" for i in range(10)]
    y = torch.arange(4)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = ops_picture.op_rows(x, y, num_classes=10, seed=0)
    assert [title.split("\n")[0] for title, _, _ in rows] == [
        "input", "reflect-pad 4, crop,", "Cutout", "Mixup", "CutMix", "Mixup / CutMix switch", "input noise"]
    assert torch.equal(rows[0][1], x)
    for title, images, targets in rows:
        assert images.shape == x.shape and 0 <= images.min() and images.max() <= 1, title
        if targets.is_floating_point():
            torch.testing.assert_close(targets.sum(1), torch.ones(4, dtype=targets.dtype))
    fig = ops_picture.picture(rows, y, names)
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    tile = 32 * ops_picture.SCALE
    assert (width, height) == (ops_picture.ROW_LABEL_PX + 4 * (tile + ops_picture.GAP),
                               7 * (tile + ops_picture.LABEL_PX) + ops_picture.GAP)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 7 * (4 + 1)  # a label per tile and a title per row
    mixed = [t for t in texts if "\n" in t and t.split("\n")[0].startswith("class")]
    assert mixed and all(len(t.split("\n")) == 2 for t in mixed)  # "own weight" over "partner weight"
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    first = ops_picture.ROW_LABEL_PX
    np.testing.assert_allclose(mosaic[ops_picture.GAP:ops_picture.GAP + tile, first:first + tile],
                               np.kron(x[0].permute(1, 2, 0).numpy(), np.ones((3, 3, 1))), atol=1e-6)
