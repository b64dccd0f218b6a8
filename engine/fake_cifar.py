"""Tiny datasets in the exact CIFAR "python version" on-disk layout.

Used by the tests (so the real loading path is exercised) and by users who want an offline
smoke-test set: ``python -c "from engine.fake_cifar import write_fake_cifar; ..."``.

The official files are Python 2 pickles (protocol 2) whose dictionary keys and strings are
Python 2 ``str``: ``pickle.load(f, encoding="bytes")`` yields ``bytes`` keys (``b'data'``) and
``encoding="latin1"`` yields ``str`` keys (what torchvision uses). Plain Python 3 pickling of
``bytes`` cannot express that, so the writer emits the Python 2 string opcodes itself; the files
then read back exactly like the real ones under either encoding.
"""
from __future__ import annotations

import io
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np

from engine.cifar import CIFAR10, CIFAR100, LAYOUTS

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class _Py2Str(bytes):
    """Marks bytes to be pickled as a Python 2 ``str`` (SHORT_BINSTRING / BINSTRING)."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler exposes its dispatch table
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: _Py2Str) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _dump(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _s(text: str) -> _Py2Str:
    return _Py2Str(text.encode("latin1"))


def _batch(label_key: str, images: np.ndarray, labels: np.ndarray, title: str, extra: dict) -> dict:
    batch = {
        _s("batch_label"): _s(title),
        _s(label_key): [int(v) for v in labels],
        _s("data"): np.ascontiguousarray(images.reshape(len(images), 3072), dtype=np.uint8),
        _s("filenames"): [_s(f"fake_{i:06d}.png") for i in range(len(images))],
    }
    batch.update(extra)
    return batch


def _split(rng: np.random.Generator, num_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images, ``per_class`` of each class, labels in a shuffled (file) order."""
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    return images, labels


def write_fake_cifar(
    root: Path,
    num_classes: int,
    per_class_train: int,
    per_class_test: int,
    seed: int = 0,
    as_archive: bool = False,
) -> Path:
    """Write a tiny CIFAR-10 (``num_classes=10``) or CIFAR-100 (100) set under ``root``.

    Returns the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or, with
    ``as_archive``, the ``.tar.gz`` holding it (and no extracted folder). The MD5 of such an
    archive is of course not the official one.
    """
    if num_classes not in LAYOUTS:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    layout = LAYOUTS[num_classes]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / layout.folder
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    train_x, train_y = _split(rng, num_classes, per_class_train)
    test_x, test_y = _split(rng, num_classes, per_class_test)

    if layout is CIFAR10:
        parts = np.array_split(np.arange(len(train_y)), len(layout.train_files))
        for i, (name, part) in enumerate(zip(layout.train_files, parts), start=1):
            _dump(_batch("labels", train_x[part], train_y[part], f"training batch {i} of 5", {}), folder / name)
        _dump(_batch("labels", test_x, test_y, "testing batch 1 of 1", {}), folder / layout.test_file)
        meta = {
            _s("label_names"): [_s(n) for n in CIFAR10_NAMES],
            _s("num_cases_per_batch"): int(len(parts[0])),
            _s("num_vis"): 3072,
        }
    else:
        assert layout is CIFAR100
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            coarse = {_s("coarse_labels"): [int(v) // 5 for v in y]}  # fake super-classes
            _dump(_batch("fine_labels", x, y, name, coarse), folder / name)
        meta = {
            _s("fine_label_names"): [_s(f"class_{c:02d}") for c in range(100)],
            _s("coarse_label_names"): [_s(f"superclass_{c:02d}") for c in range(20)],
        }
    _dump(meta, folder / layout.meta_file)

    if not as_archive:
        return folder
    archive = root / layout.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=layout.folder)
    shutil.rmtree(folder)
    return archive
