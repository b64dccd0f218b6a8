"""In-memory batch loaders with batched, on-device augmentation (METHODS.md §1.4–1.5, §5.6).

Images stay in memory as uint8 tensors. A training batch is gathered on the CPU, moved to the
device, and only then augmented — all samples at once, with random draws from a
``torch.Generator`` on that device — and scaled to float32 in [0, 1]. No worker processes, no PIL,
no per-sample Python: fast on a GPU and deterministic for a seed.

Augmentations (named by ``DataBundle.augment``):

* ``crop_flip`` (CIFAR, §1.4): zero-pad 4 pixels per side, random 32×32 crop (offsets uniform in
  0…8 per axis, as torchvision's ``RandomCrop``), horizontal flip with probability 0.5;
* ``crop`` (digits): zero-pad 1, random 8×8 crop, no flip (digits are not mirror-symmetric);
* ``none``.

There is no mean/std normalisation anywhere: the networks and attacks work on [0, 1] pixels.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch

from engine.datasets import DataBundle
from engine.samplers import SAMPLERS

# name → (zero padding per side, horizontal flip)
AUGMENTATIONS: dict[str, tuple[int, bool]] = {"crop_flip": (4, True), "crop": (1, False), "none": (0, False)}

# Offset between the shuffling and augmentation seeds, so on the CPU the two generators do not
# produce the same stream.
_AUGMENT_SEED_OFFSET = 0x5EED_A06


def to_unit_float(images_uint8: torch.Tensor, pixel_max: float) -> torch.Tensor:
    """uint8 pixels → float32 in [0, 1]."""
    return images_uint8.to(torch.float32).div_(pixel_max)


def augment_batch(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random zero-padded crop (+ optional flip) of a (B, C, H, W) batch, on its own device.

    Draw order per batch: row offsets, column offsets, flip coins (fixed, for determinism).
    """
    pad, flip = AUGMENTATIONS[kind]
    if pad == 0 and not flip:
        return images
    b, c, h, w = images.shape
    device = images.device
    out = images
    if pad:
        # (F.pad is an order of magnitude slower than this on uint8 CPU tensors)
        padded = images.new_zeros(b, c, h + 2 * pad, w + 2 * pad)
        padded[:, :, pad : pad + h, pad : pad + w] = images
        top = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
        left = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
        rows = (top[:, None] + torch.arange(h, device=device)).view(b, 1, h, 1)
        cols = (left[:, None] + torch.arange(w, device=device)).view(b, 1, 1, w)
        out = padded.gather(2, rows.expand(b, c, h, w + 2 * pad)).gather(3, cols.expand(b, c, h, w))
    if flip:
        coin = torch.rand(b, generator=generator, device=device) < 0.5
        out = torch.where(coin.view(b, 1, 1, 1), out.flip(3), out)
    return out


class TrainLoader:
    """Training batches ``(x, y)``: x float32 (B, C, H, W) in [0, 1] on ``device``, y long.

    ``sampler=None`` shuffles (a fresh ``randperm`` per epoch from a seeded CPU generator);
    otherwise a registered sampler (``"class_aware"``) provides the epoch's indices. The
    class-aware sampler is seeded with ``sampler_seed`` (default 0: the reference's streams are
    governed by seed 0 whatever the run seed, METHODS.md §1.7). ``drop_last`` defaults to True as
    in the reference (§1.5).

    ``state_dict()`` may be taken at any point, mid-epoch included; after ``load_state_dict`` the
    loader yields exactly the batches the original would have yielded next.

    ``shard=(rank, world)`` (torchrun/DDP, :mod:`engine.distributed`): every rank draws the same
    global batches (``batch_size`` each, same length per epoch) and yields rows
    ``rank·B/world … (rank+1)·B/world`` of each, after augmenting the whole global batch.
    """

    def __init__(
        self,
        bundle: DataBundle,
        batch_size: int,
        sampler: str | None,
        seed: int,
        device: torch.device | str,
        drop_last: bool = True,
        sampler_seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        rank, world = shard
        if world > 1 and (batch_size % world or not drop_last or not 0 <= rank < world):
            raise ValueError(f"sharding needs drop_last and a batch size divisible by the world "
                             f"size: batch_size {batch_size}, shard {rank} of {world}")
        self.shard = (rank, world)
        self.images = bundle.train_images.contiguous()
        self.labels = bundle.train_labels.to(torch.long)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.augment = bundle.augment
        self.pixel_max = bundle.pixel_max
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augment!r}; allowed: {sorted(AUGMENTATIONS)}")
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.augment_gen = torch.Generator(device=self.device).manual_seed(seed + _AUGMENT_SEED_OFFSET)
        self.sampler = (
            SAMPLERS.create(sampler, self.labels.tolist(), bundle.num_classes, seed=sampler_seed)
            if sampler
            else None
        )
        # While an epoch is in flight: the shuffle/sampler state it started from and how many
        # batches were handed out, so a mid-epoch state_dict can replay the same order.
        self._epoch_start: tuple[torch.Tensor, dict[str, Any] | None] | None = None
        self._yielded = 0
        self._skip = 0

    @property
    def num_samples(self) -> int:
        """Indices drawn per epoch (dataset size, or the sampler's epoch length)."""
        return len(self.sampler) if self.sampler is not None else len(self.labels)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _epoch_order(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.tensor(list(self.sampler), dtype=torch.long)
        return torch.randperm(len(self.labels), generator=self.shuffle_gen)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._epoch_start = (
            self.shuffle_gen.get_state(),
            self.sampler.state_dict() if self.sampler is not None else None,
        )
        order = self._epoch_order()
        start, self._skip = self._skip, 0
        self._yielded = start
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx].to(self.device, non_blocking=True)
            y = self.labels[idx].to(self.device, non_blocking=True)
            x = to_unit_float(augment_batch(x, self.augment, self.augment_gen), self.pixel_max)
            if self.shard[1] > 1:
                # Augmented as a whole first, so every rank's generators advance alike.
                part = len(idx) // self.shard[1]
                rows = slice(self.shard[0] * part, (self.shard[0] + 1) * part)
                x, y = x[rows], y[rows]
            self._yielded = b + 1
            yield x, y
        self._epoch_start = None

    def state_dict(self) -> dict[str, Any]:
        """Generator and sampler states (plus the position inside an unfinished epoch)."""
        mid_epoch = self._epoch_start is not None and self._yielded < len(self)
        if mid_epoch:
            shuffle_state, sampler_state = self._epoch_start  # type: ignore[misc]
            skip = self._yielded
        else:
            shuffle_state = self.shuffle_gen.get_state()
            sampler_state = self.sampler.state_dict() if self.sampler is not None else None
            skip = self._skip
        return {
            "version": 1,
            "shuffle_gen": shuffle_state.clone(),
            "augment_gen": self.augment_gen.get_state().clone(),
            "sampler": sampler_state,
            "skip_batches": skip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["sampler"] is None) != (self.sampler is None):
            raise ValueError("loader state and this loader disagree on whether a sampler is used")
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.augment_gen.set_state(state["augment_gen"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        self._skip = int(state["skip_batches"])
        self._epoch_start = None
        self._yielded = 0


def eval_batches(
    images_uint8: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    batch_size: int,
    device: torch.device | str,
    pixel_max: float,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Unshuffled, unaugmented batches over all images (no drop_last: every image is used)."""
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    if len(labels_t) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(labels_t)} labels")
    device = torch.device(device)
    for start in range(0, len(labels_t), batch_size):
        x = images_uint8[start : start + batch_size].to(device, non_blocking=True)
        y = labels_t[start : start + batch_size].to(device, non_blocking=True)
        yield to_unit_float(x, pixel_max), y


def balanced_subset(labels: torch.Tensor | Sequence[int], n_ex: int, num_classes: int, seed: int) -> torch.Tensor:
    """A fixed, seeded, class-balanced subset of ``labels`` (indices, ascending).

    Class ``c`` gets ``n_ex // C`` images, plus one for the lowest ``n_ex % C`` classes, drawn in a
    seeded random order (one ``randperm`` per class, in class order, from a CPU generator seeded
    with ``seed``). A class with too few images gives all it has and the shortfall goes, one at a
    time, to the lowest classes that still have images; ``n_ex ≥ len(labels)`` keeps everything.
    """
    labels_t = torch.as_tensor(labels, dtype=torch.long).cpu()
    if n_ex < 1:
        raise ValueError(f"n_ex must be ≥ 1, got {n_ex}")
    if n_ex >= len(labels_t):
        return torch.arange(len(labels_t))
    gen = torch.Generator().manual_seed(seed)
    pools = []
    for c in range(num_classes):
        idx = torch.nonzero(labels_t == c).flatten()
        pools.append(idx[torch.randperm(len(idx), generator=gen)])
    if sum(len(p) for p in pools) < n_ex:
        raise ValueError(f"labels hold fewer than {n_ex} images of classes 0…{num_classes - 1}")
    quota = [min(n_ex // num_classes + (c < n_ex % num_classes), len(pools[c])) for c in range(num_classes)]
    shortfall = n_ex - sum(quota)
    while shortfall > 0:
        for c in range(num_classes):
            if shortfall and quota[c] < len(pools[c]):
                quota[c] += 1
                shortfall -= 1
    chosen = torch.cat([pools[c][: quota[c]] for c in range(num_classes)])
    return torch.sort(chosen).values
