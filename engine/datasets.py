"""Long-tailed datasets: CIFAR-10-LT, CIFAR-100-LT (METHODS.md §1) and the offline digits-LT.

The long-tailed construction is the LDAM-DRW "exp" profile the reference uses (§1.2):
``n_c = int(img_max · r^(c/(C−1)))`` for classes ``c = 0 … C−1`` (class 0 the head), then, per class
in ascending order, the class's training indices in file order are shuffled with NumPy's legacy
``RandomState(0)`` and the first ``n_c`` kept; the kept images are concatenated class by class.
The test split is used unchanged (balanced).

``img_max`` is the per-class size of the training split, i.e. ``50000 / C`` = 5000.0 / 500.0 for
the real CIFAR sets (§1.2 step 1). Taking it from the data rather than hard-coding 50000 gives the
identical number on real CIFAR and keeps tiny CIFAR-format test sets long-tailed too.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from engine.cifar import ChecksumMismatchWarning, DatasetNotFound, load_cifar
from engine.registry import Registry

__all__ = [
    "DATASETS",
    "ChecksumMismatchWarning",
    "DataBundle",
    "DatasetNotFound",
    "default_data_root",
    "load_dataset",
    "lt_counts",
    "select_lt_indices",
    "subset_fingerprint",
]

# Seed of the LT selection: the reference reseeds NumPy to 0 in the dataset constructor whatever
# the run's seed (§1.2 step 4), so the subset is the same in every run.
LT_SEED = 0

DIGITS_TRAIN_FRACTION = (7, 10)  # first 70 % of each digit class (file order) → training pool

DATASETS: Registry = Registry("dataset")


def lt_counts(num_classes: int, imbalance_ratio: float, img_max: float) -> list[int]:
    """Per-class training counts of the "exp" long-tail profile (METHODS.md §1.2 step 2).

    ``imbalance_ratio`` is ``n_min / n_max`` in (0, 1]; 1.0 keeps every class at ``img_max``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
    if not 0.0 < imbalance_ratio <= 1.0:
        raise ValueError(
            f"imbalance_ratio must be n_min/n_max in (0, 1], got {imbalance_ratio} "
            "(use 1.0 for the balanced set; ρ = 50 is 0.02)"
        )
    if num_classes == 1:
        return [int(img_max)]
    return [int(img_max * (imbalance_ratio ** (c / (num_classes - 1.0)))) for c in range(num_classes)]


def select_lt_indices(labels: Sequence[int], counts: list[int], seed: int = LT_SEED) -> list[int]:
    """Which training images are kept (METHODS.md §1.2 steps 4–5).

    For class ``c`` ascending: the indices of class ``c`` in file order, shuffled in place by a
    private ``numpy.random.RandomState(seed)`` — the same draws as the reference's reseeded global
    RNG, without touching the global state — then the first ``counts[c]``. Every class is
    shuffled (class 0 too), so each shuffle consumes the RNG in class order.
    """
    labels_np = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    kept: list[int] = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels_np == c)[0]
        if len(idx) < n_c:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {n_c} requested")
        rng.shuffle(idx)
        kept.extend(int(i) for i in idx[:n_c])
    return kept


def subset_fingerprint(indices: Sequence[int]) -> str:
    """SHA-256 hex of the kept original indices, decimal, comma-joined, in kept order."""
    text = ",".join(str(int(i)) for i in indices)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass
class DataBundle:
    """A dataset in memory: uint8 images (N, C, H, W) and long labels, plus its LT bookkeeping."""

    name: str  # registered dataset name, e.g. "cifar10-lt"
    num_classes: int
    class_names: list[str]
    train_images: torch.Tensor  # uint8 (N, C, H, W), LT subset, class by class
    train_labels: torch.Tensor  # long (N,)
    test_images: torch.Tensor  # uint8, the unchanged (balanced) test split
    test_labels: torch.Tensor  # long
    counts: list[int]  # n_c per class (what class-aware losses and priors use)
    kept_indices: list[int]  # original training-split indices, in kept order
    fingerprint: str  # subset_fingerprint(kept_indices)
    input_shape: tuple[int, int, int]  # (C, H, W)
    augment: str  # "crop_flip" (CIFAR) or "crop" (digits); see engine.loaders
    pixel_max: float  # uint8 value that maps to 1.0 (255 CIFAR, 16 digits)
    imbalance_ratio: float = 1.0  # n_min / n_max the subset was built with
    source: str = field(default="")  # folder (or package) the raw data came from


def default_data_root() -> Path:
    """Where CIFAR archives are looked for when no ``data_root`` is given.

    ``$ADVLT_DATA_ROOT`` if set, else ``$ADVLT_HOME/data``, else ``~/.advlt/data``.
    """
    if os.environ.get("ADVLT_DATA_ROOT"):
        return Path(os.environ["ADVLT_DATA_ROOT"]).expanduser()
    home = os.environ.get("ADVLT_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".advlt") / "data"


def _bundle(
    name: str,
    class_names: list[str],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    img_max: float,
    imbalance_ratio: float,
    augment: str,
    pixel_max: float,
    source: str,
    index_map: np.ndarray | None = None,
) -> DataBundle:
    """LT-select ``train_*`` and pack everything; ``index_map`` maps pool positions to original ids."""
    num_classes = len(class_names)
    counts = lt_counts(num_classes, imbalance_ratio, img_max)
    kept = select_lt_indices(train_labels, counts, LT_SEED)
    kept_np = np.asarray(kept, dtype=np.int64)
    original = [int(i) for i in (index_map[kept_np] if index_map is not None else kept_np)]
    return DataBundle(
        name=name,
        num_classes=num_classes,
        class_names=list(class_names),
        train_images=torch.from_numpy(np.ascontiguousarray(train_images[kept_np])),
        train_labels=torch.from_numpy(train_labels[kept_np].astype(np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(test_labels.astype(np.int64)),
        counts=counts,
        kept_indices=original,
        fingerprint=subset_fingerprint(original),
        input_shape=tuple(int(s) for s in train_images.shape[1:]),  # type: ignore[arg-type]
        augment=augment,
        pixel_max=float(pixel_max),
        imbalance_ratio=float(imbalance_ratio),
        source=source,
    )


def _class_sizes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes)


def _load_cifar_lt(name: str, num_classes: int, imbalance_ratio: float, data_root: str | None, download: bool) -> DataBundle:
    root = Path(data_root).expanduser() if data_root else default_data_root()
    arrays = load_cifar(root, num_classes, name, download)
    # 50000 / C on the real data (5000 or 500 per class); see the module docstring.
    img_max = float(_class_sizes(arrays.train_labels, num_classes).min())
    return _bundle(
        name, arrays.class_names, arrays.train_images, arrays.train_labels, arrays.test_images,
        arrays.test_labels, img_max, imbalance_ratio, "crop_flip", 255.0, str(arrays.source),
    )


@DATASETS.register("cifar10-lt")
def load_cifar10_lt(imbalance_ratio: float, data_root: str | None, download: bool) -> DataBundle:
    return _load_cifar_lt("cifar10-lt", 10, imbalance_ratio, data_root, download)


@DATASETS.register("cifar100-lt")
def load_cifar100_lt(imbalance_ratio: float, data_root: str | None, download: bool) -> DataBundle:
    return _load_cifar_lt("cifar100-lt", 100, imbalance_ratio, data_root, download)


def digits_split(labels: np.ndarray, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Original indices of the training pool and the test set of digits-LT.

    Per class, the first 70 % (floor, in file order) go to the training pool and the rest to the
    test set; both index arrays are returned in ascending (file) order.
    """
    num, den = DIGITS_TRAIN_FRACTION
    pool, test = [], []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        cut = len(idx) * num // den
        pool.append(idx[:cut])
        test.append(idx[cut:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


@DATASETS.register("digits-lt")
def load_digits_lt(imbalance_ratio: float, data_root: str | None = None, download: bool = False) -> DataBundle:
    """Long-tailed scikit-learn digits (1 797 8×8 images, values 0…16): no download, CPU-sized.

    ``img_max`` is the smallest class of the training pool, so every count is attainable; the
    selection uses the same formula and seed semantics as CIFAR-LT. ``kept_indices`` are indices
    into ``sklearn.datasets.load_digits()``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.uint8)[:, None, :, :]  # values 0…16 are integers
    labels = np.asarray(digits.target, dtype=np.int64)
    pool, test = digits_split(labels)
    img_max = float(_class_sizes(labels[pool], 10).min())
    return _bundle(
        "digits-lt", [str(d) for d in range(10)], images[pool], labels[pool], images[test],
        labels[test], img_max, imbalance_ratio, "crop", 16.0, "sklearn.datasets.load_digits",
        index_map=pool,
    )


def load_dataset(name: str, imbalance_ratio: float, data_root: str | None = None, download: bool = True) -> DataBundle:
    """Build a registered dataset: ``cifar10-lt``, ``cifar100-lt`` or ``digits-lt``.

    Raises :class:`DatasetNotFound` (a FileNotFoundError) when CIFAR files are missing and cannot
    be downloaded, with one message naming the archive to fetch and the directory to put it in.
    """
    return DATASETS.get(name)(imbalance_ratio, data_root, download)
