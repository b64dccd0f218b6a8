"""Reading CIFAR-10 / CIFAR-100 from the standard "python version" on-disk layout.

The files are the pickles of https://www.cs.toronto.edu/~kriz/cifar.html (the layout torchvision
downloads): ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta`` and
``cifar-100-python/train``, ``test``, ``meta``. They are read directly with :mod:`pickle` (no PIL
images, no per-sample objects), which takes well under a second for the whole set.

Where the data comes from, in order (METHODS.md §1.1; DESIGN.md "offline default"):

1. the extracted folder under ``root``;
2. the ``.tar.gz`` archive under ``root``, extracted on first use (an MD5 mismatch is only a
   warning, so re-packed archives work);
3. torchvision's own download (``torchvision.datasets.CIFAR10/100(root, download=True)``) when
   ``download`` is true and the network allows it;
4. otherwise :class:`DatasetNotFound`, one message naming the file and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetNotFound(FileNotFoundError):
    """The dataset's files are neither on disk nor downloadable."""


class ChecksumMismatchWarning(UserWarning):
    """An archive's MD5 differs from the official one (it is used anyway)."""


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant lives on disk and how its pickles are keyed."""

    title: str  # human name used in messages
    num_classes: int
    folder: str  # extracted directory name
    archive: str  # archive file name
    url: str
    md5: str  # of the official archive (same values torchvision checks)
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str  # per-sample label key in the batch pickles
    names_key: str  # class-name key in the meta pickle

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarLayout(
    title="CIFAR-10",
    num_classes=10,
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)

CIFAR100 = CifarLayout(
    title="CIFAR-100",
    num_classes=100,
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)

LAYOUTS = {10: CIFAR10, 100: CIFAR100}


@dataclass
class CifarArrays:
    """One CIFAR variant in memory: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: Path  # the folder the arrays were read from


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_pickle(path: Path) -> dict[str, object]:
    # The official files are Python 2 pickles: with encoding="bytes" their keys arrive as bytes;
    # keys are normalised to str so files written either way read the same.
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    return {_text(k): v for k, v in raw.items()}


def _read_batches(folder: Path, names: tuple[str, ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        entry = _read_pickle(folder / name)
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _complete(folder: Path, layout: CifarLayout) -> bool:
    return all((folder / name).is_file() for name in layout.files)


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def extract_archive(archive: Path, layout: CifarLayout) -> Path:
    """Extract ``archive`` next to itself; return the extracted folder.

    Extraction goes to a temporary directory first and files are then moved in, so a run that is
    interrupted (or two runs starting at once) never leaves a half-written file under the final
    name.
    """
    got = md5sum(archive)
    if got != layout.md5:
        warnings.warn(
            f"{archive}: MD5 {got} differs from the official {layout.md5}; using it anyway "
            "(a re-packed archive is fine as long as it holds the standard files)",
            ChecksumMismatchWarning,
            stacklevel=3,
        )
    root = archive.parent
    target = root / layout.folder
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetNotFound(
                f"{archive} could not be extracted ({type(exc).__name__}: {exc}); download "
                f"{layout.url} again and put it in {root}"
            ) from exc
        unpacked = Path(tmp) / layout.folder
        if not _complete(unpacked, layout):
            missing = [n for n in layout.files if not (unpacked / n).is_file()]
            raise DatasetNotFound(
                f"{archive} does not hold the {layout.title} files {missing} under {layout.folder}/; "
                f"download {layout.url} and put it in {root}"
            )
        target.mkdir(exist_ok=True)
        for name in layout.files:
            os.replace(unpacked / name, target / name)
    return target


def _try_torchvision_download(root: Path, layout: CifarLayout) -> str | None:
    """Run torchvision's real download path; return why it failed, or None on success."""
    try:
        import torchvision.datasets as tvd

        cls = tvd.CIFAR10 if layout.num_classes == 10 else tvd.CIFAR100
        root.mkdir(parents=True, exist_ok=True)
        cls(root=str(root), train=True, download=True)
    except Exception as exc:  # network, DNS, proxy, checksum: any failure ends in one message
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def not_found_message(layout: CifarLayout, dataset: str, root: Path, reason: str | None) -> str:
    message = (
        f"{dataset}: {layout.title} is not in {root}. Download {layout.url} and put "
        f"{layout.archive} (or its extracted folder {layout.folder}/) in {root}, "
        "or pass --data-root DIR pointing at the directory that holds it"
    )
    if reason:
        message += f" (automatic download failed: {reason})"
    return message


def locate(root: Path, layout: CifarLayout, dataset: str, download: bool) -> Path:
    """Return the extracted folder, extracting or downloading as needed (see module doc)."""
    root = Path(root).expanduser().resolve()
    folder = root / layout.folder
    if _complete(folder, layout):
        return folder
    archive = root / layout.archive
    if archive.is_file():
        return extract_archive(archive, layout)
    reason = None
    if download:
        reason = _try_torchvision_download(root, layout)
        if _complete(folder, layout):
            return folder
        if reason is None:
            reason = f"torchvision finished but {folder} is incomplete"
    raise DatasetNotFound(not_found_message(layout, dataset, root, reason))


def load_cifar(root: Path, num_classes: int, dataset: str, download: bool) -> CifarArrays:
    """Read CIFAR-10/100 (full train and test splits) from ``root``."""
    layout = LAYOUTS[num_classes]
    folder = locate(root, layout, dataset, download)
    train_images, train_labels = _read_batches(folder, layout.train_files, layout.label_key)
    test_images, test_labels = _read_batches(folder, (layout.test_file,), layout.label_key)
    names = [_text(n) for n in _read_pickle(folder / layout.meta_file)[layout.names_key]]
    return CifarArrays(train_images, train_labels, test_images, test_labels, names, folder)

