"""Batch loaders: a device-resident batch iterator (GPU path) and an array Dataset (CPU worker path).

``DeviceBatchLoader`` keeps the whole uint8 split on the device and builds each batch there: slice
of a seeded per-epoch permutation -> gather -> per-sample crop/flip (train) -> float + normalize.
No host<->device synchronization per step: the epoch's permutation and random draws are made once
per epoch on the CPU (deterministic on every device) and moved over in one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from augment._batch import as_nchw as _as_nchw
from augment.checks import check_int
from augment.crop import check_crop_args, shift_crop, to_normalized_float

__all__ = ["DeviceBatchLoader", "ArrayDataset", "shard_indices"]


def _seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (well mixed, so nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s part of ``order``: padded by wrap-around to a multiple of ``world_size`` (like
    ``DistributedSampler``), then every ``world_size``-th element, so all ranks get equal lengths."""
    n = order.numel()
    per_rank = -(-n // world_size)
    total = per_rank * world_size
    if total > n:
        order = torch.cat([order, order.repeat(-(-(total - n) // n))[: total - n]])
    return order[rank:total:world_size]


class DeviceBatchLoader:
    """Iterate (x float (B, C, H, W) normalized, y int64 (B,)) batches of a device-resident uint8 split.

    ``images``: uint8 (N, H, W, C) or (N, C, H, W) (``layout``: auto | nhwc | nchw) already on the
    target device; ``labels``: (N,).
    ``indices``: optional int64 (M,) subset (repeats allowed, e.g. a bootstrap) to iterate instead of
    all N. Each epoch uses the permutation seeded by (seed, epoch), shared by all ranks and sharded
    between them; crop/flip draws are seeded by (seed, epoch, rank). The epoch advances after every
    full pass or is set with ``set_epoch`` (Lightning calls it through ``.sampler``).
    ``resume_offset``: called as each pass starts, returns how many batches of this epoch were already
    trained (non-zero only right after a mid-epoch checkpoint was restored); the pass then starts at that
    batch with the epoch's same order and draws, so a mid-epoch resume sees what an uninterrupted run sees.
    ``policy``: an optional per-sample policy (``augment.policies``, e.g. ``TrivialAugmentWide``) run on the
    uint8 training batch after crop/flip and before normalization; its draws for batch k of an epoch come
    from a CPU generator seeded by (seed, epoch, rank, k), so they too replay after a resume.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        padding: int = 4,
        flip: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        indices: torch.Tensor | None = None,
        mode: str = "reflect",
        layout: str = "auto",
        resume_offset: Callable[[], int] | None = None,
        policy: Any | None = None,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C) or (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        check_int("batch_size", batch_size, low=1)
        check_int("padding", padding, low=0)
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(
                f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, world_size={world_size}"
            )
        # Store channels first so each batch gather reads contiguous planes (the fastest crop layout).
        self.images = _as_nchw(images, layout).contiguous()
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        self.device = images.device
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.int64).cpu()
        if self.indices is not None and self.indices.numel() and (
            int(self.indices.min()) < 0 or int(self.indices.max()) >= images.shape[0]
        ):
            raise ValueError(f"indices must lie in [0, {images.shape[0]})")
        self.batch_size = batch_size
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be > 0 for every channel, got {std_t.tolist()}")
        self.mean, self.std = mean_t.to(self.device), std_t.to(self.device)
        self.train = train
        self.padding = padding
        self.flip = flip
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.dtype = dtype
        self.mode = mode
        self.epoch = 0
        self.resume_offset = resume_offset
        self.policy = policy
        self._iter_epoch = -1  # the epoch of the pass in progress (saved in checkpoints)
        if train:  # eval batches are never cropped
            check_crop_args(padding, mode, self.images.shape[2], self.images.shape[3])

    @property
    def num_samples(self) -> int:
        """Samples one epoch iterates over (all ranks together, before padding)."""
        return self.images.shape[0] if self.indices is None else self.indices.numel()

    @property
    def samples_per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # Lightning's loops call ``loader.sampler.set_epoch(epoch)`` (and read ``batch_sampler``): the
    # loader is its own sampler, so resumed runs continue with the right epoch's order.
    batch_sampler = None

    @property
    def sampler(self) -> DeviceBatchLoader:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """Saved by Lightning with each checkpoint; its presence tells Lightning the loader resumes mid-epoch."""
        return {"epoch": self._iter_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the order and draws follow from (seed, epoch), the skip from ``resume_offset``."""

    def _batches_to_skip(self) -> int:
        if self.resume_offset is None:
            return 0
        done = int(self.resume_offset())
        return done if 0 < done < len(self) else 0

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample order for ``epoch`` (CPU int64, padded like DistributedSampler)."""
        epoch = self.epoch if epoch is None else epoch
        base = torch.arange(self.num_samples) if self.indices is None else self.indices
        if self.train:
            base = base[torch.randperm(base.numel(), generator=_seeded_generator(self.seed, epoch))]
        return shard_indices(base, self.rank, self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # a plain loop over epochs still sees a new order each time
        self._iter_epoch = epoch
        skip = self._batches_to_skip()  # > 0 only for the first pass after a mid-epoch resume
        order = self.epoch_indices(epoch)
        n = order.numel()
        augment = self.train and (self.padding > 0 or self.flip)
        if augment:
            g = _seeded_generator(self.seed, epoch, self.rank, 1)
            span = 2 * self.padding + 1
            draws = torch.stack(
                [
                    torch.randint(0, span, (n,), generator=g),
                    torch.randint(0, span, (n,), generator=g),
                    (torch.rand(n, generator=g) < 0.5).long() if self.flip else torch.zeros(n, dtype=torch.long),
                ]
            ).to(self.device, non_blocking=True)
        order = order.to(self.device, non_blocking=True)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(skip * self.batch_size, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]  # uint8 (B, C, H, W)
            if augment:
                top, left, flip = draws[:, start : start + self.batch_size]
                x = shift_crop(x, top, left, flip.bool() if self.flip else None, self.padding, self.mode)
            if self.train and self.policy is not None:  # per sample, on the uint8 batch, draws made on the CPU
                g = _seeded_generator(self.seed, epoch, self.rank, 2, start // self.batch_size)
                x = self.policy.apply(x, self.policy.sample(x.shape[0], x.shape[2], x.shape[3], generator=g))
            yield (
                to_normalized_float(x, self.mean, self.std, self.channels_last, self.dtype, layout="nchw"),
                self.labels[idx],
            )


class ArrayDataset(torch.utils.data.Dataset):
    """Map-style dataset over uint8 images (N, H, W, C) and labels (N,) for DataLoader workers.

    ``transform``: an albumentations-style callable, ``transform(image=hwc_uint8)["image"]`` -> tensor;
    None returns the uint8 image as a (C, H, W) tensor. ``indices``: optional subset (repeats allowed).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[..., dict[str, Any]] | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(i if self.indices is None else self.indices[i])
        image = np.asarray(self.images[j])
        if self.transform is None:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        else:
            x = self.transform(image=image)["image"]
        return x, int(self.labels[j])
