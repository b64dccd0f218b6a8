"""Long-tailed dataset construction (METHODS.md §1.2–1.3) and the CIFAR on-disk loading path."""
from __future__ import annotations

import hashlib
import pickle
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import datasets as ds
from engine.cifar import CIFAR10, CIFAR100, ChecksumMismatchWarning
from engine.datasets import DatasetNotFound, load_dataset, lt_counts, select_lt_indices, subset_fingerprint
from engine.fake_cifar import CIFAR10_NAMES, write_fake_cifar

# ---------------------------------------------------------------- §1.3 count vectors


def test_cifar10_lt_002_counts_match_table():
    counts = lt_counts(10, 0.02, 50000 / 10)
    assert counts == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert sum(counts) == 13996


def test_cifar100_lt_01_counts_match_table_and_group_totals():
    counts = lt_counts(100, 0.1, 50000 / 100)
    table = [
        [500, 488, 477, 466, 455, 445, 434, 424, 415, 405],
        [396, 387, 378, 369, 361, 352, 344, 336, 328, 321],
        [314, 306, 299, 292, 286, 279, 273, 266, 260, 254],
        [248, 243, 237, 232, 226, 221, 216, 211, 206, 201],
        [197, 192, 188, 183, 179, 175, 171, 167, 163, 159],
        [156, 152, 149, 145, 142, 139, 135, 132, 129, 126],
        [123, 121, 118, 115, 112, 110, 107, 105, 102, 100],
        [98, 95, 93, 91, 89, 87, 85, 83, 81, 79],
        [77, 75, 74, 72, 70, 69, 67, 66, 64, 63],
        [61, 60, 58, 57, 56, 54, 53, 52, 51, 50],
    ]
    assert counts == [n for row in table for n in row]
    groups = [sum(counts[10 * g : 10 * g + 10]) for g in range(10)]
    assert groups == [4509, 3572, 2829, 2241, 1774, 1405, 1113, 881, 697, 552]
    assert sum(counts) == 19573


def test_cifar10_other_ratios():
    c001 = lt_counts(10, 0.01, 5000.0)
    assert c001 == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(c001) == 12406
    c01 = lt_counts(10, 0.1, 5000.0)
    assert c01 == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500] and sum(c01) == 20431


def test_cifar100_001_total():
    counts = lt_counts(100, 0.01, 500.0)
    assert sum(counts) == 10847
    assert counts[0] == 500 and counts[-1] == 5


def test_ratio_one_is_balanced_and_bad_ratios_rejected():
    assert lt_counts(10, 1.0, 5000.0) == [5000] * 10
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="imbalance_ratio"):
            lt_counts(10, bad, 5000.0)


# ---------------------------------------------------------------- §1.2 selection semantics


def _reference_selection(labels: list[int], counts: list[int]) -> list[int]:
    """The reference's procedure on NumPy's *global* RNG, reseeded to 0 (§1.2 step 4)."""
    np.random.seed(0)
    targets = np.array(labels, dtype=np.int64)
    kept: list[int] = []
    for the_class, the_img_num in zip(np.unique(targets), counts):
        idx = np.where(targets == the_class)[0]
        np.random.shuffle(idx)
        kept.extend(int(i) for i in idx[:the_img_num])
    return kept


def test_selection_matches_global_rng_reference_and_leaves_global_state_alone():
    labels = np.random.RandomState(123).permutation(np.repeat(np.arange(10), 200)).tolist()
    counts = lt_counts(10, 0.02, 200.0)
    np.random.seed(999)
    before = np.random.get_state()[1].copy()
    ours = select_lt_indices(labels, counts, seed=0)
    assert np.array_equal(np.random.get_state()[1], before), "global NumPy RNG must not move"
    assert ours == _reference_selection(labels, counts)
    # class by class, each block of the right class and size
    kept_labels = [labels[i] for i in ours]
    assert kept_labels == [c for c, n in enumerate(counts) for _ in range(n)]
    assert len(set(ours)) == len(ours)


def test_class0_is_shuffled_too():
    """Class 0 keeps everything but its shuffle still consumes RNG state (order differs from file order)."""
    labels = np.repeat(np.arange(3), 50).tolist()
    kept = select_lt_indices(labels, [50, 20, 10])
    assert sorted(kept[:50]) == list(range(50)) and kept[:50] != list(range(50))
    skipped = np.random.RandomState(0)  # without shuffling class 0 first, class 1 would differ
    idx1 = np.arange(50, 100)
    skipped.shuffle(idx1)
    assert kept[50:70] != idx1[:20].tolist()


def test_subset_fingerprint_format():
    assert subset_fingerprint([3, 1, 20]) == hashlib.sha256(b"3,1,20").hexdigest()
    assert subset_fingerprint(np.array([7])) == hashlib.sha256(b"7").hexdigest()
    assert subset_fingerprint([]) == hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------- CIFAR on-disk loading


def _raw_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR pickles the way torchvision does (latin1 → str keys)."""
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        xs.append(entry["data"].reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key]))
    return np.concatenate(xs), np.concatenate(ys)


def test_load_fake_cifar10_folder(fake_cifar10):
    fake_cifar10_root, per_train, per_test = fake_cifar10
    b = load_dataset("cifar10-lt", 0.1, str(fake_cifar10_root), download=False)
    folder = fake_cifar10_root / CIFAR10.folder
    raw_x, raw_y = _raw_split(folder, list(CIFAR10.train_files), "labels")
    test_x, test_y = _raw_split(folder, [CIFAR10.test_file], "labels")

    assert b.name == "cifar10-lt" and b.num_classes == 10
    assert b.class_names == list(CIFAR10_NAMES)
    assert b.counts == lt_counts(10, 0.1, float(per_train))
    assert b.kept_indices == select_lt_indices(raw_y.tolist(), b.counts)
    assert b.fingerprint == subset_fingerprint(b.kept_indices)
    assert b.train_images.dtype == torch.uint8 and b.train_labels.dtype == torch.long
    assert tuple(b.train_images.shape) == (sum(b.counts), 3, 32, 32)
    assert np.array_equal(b.train_images.numpy(), raw_x[b.kept_indices])
    assert np.array_equal(b.train_labels.numpy(), raw_y[b.kept_indices])
    assert np.array_equal(b.test_images.numpy(), test_x) and np.array_equal(b.test_labels.numpy(), test_y)
    assert torch.bincount(b.test_labels).tolist() == [per_test] * 10
    assert b.input_shape == (3, 32, 32) and b.augment == "crop_flip" and b.pixel_max == 255


def test_load_fake_cifar100_folder(fake_cifar100):
    fake_cifar100_root, per_train, per_test = fake_cifar100
    b = load_dataset("cifar100-lt", 0.5, str(fake_cifar100_root), download=False)
    folder = fake_cifar100_root / CIFAR100.folder
    raw_x, raw_y = _raw_split(folder, ["train"], "fine_labels")
    with open(folder / "meta", "rb") as f:
        names = pickle.load(f, encoding="latin1")["fine_label_names"]
    assert b.num_classes == 100 and b.class_names == names
    assert b.counts == lt_counts(100, 0.5, float(per_train))
    assert np.array_equal(b.train_images.numpy(), raw_x[b.kept_indices])
    assert np.array_equal(b.train_labels.numpy(), raw_y[b.kept_indices])
    assert len(b.test_labels) == 100 * per_test


def test_fake_files_read_like_python2_pickles(fake_cifar10):
    path = fake_cifar10.root / CIFAR10.folder / "data_batch_1"
    with open(path, "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    with open(path, "rb") as f:
        as_latin1 = pickle.load(f, encoding="latin1")
    assert b"data" in as_bytes and b"labels" in as_bytes
    assert "data" in as_latin1 and "labels" in as_latin1
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape[1] == 3072


def test_archive_is_extracted_and_checksum_mismatch_only_warns(tmp_path):
    archive = write_fake_cifar(tmp_path, 10, 8, 2, as_archive=True)
    assert archive.name == "cifar-10-python.tar.gz" and not (tmp_path / CIFAR10.folder).exists()
    with pytest.warns(ChecksumMismatchWarning, match="MD5"):
        b = load_dataset("cifar10-lt", 0.5, str(tmp_path), download=False)
    assert len(b.train_labels) == sum(lt_counts(10, 0.5, 8.0))
    assert (tmp_path / CIFAR10.folder / "data_batch_5").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second load reads the folder: no checksum, no warning
        again = load_dataset("cifar10-lt", 0.5, str(tmp_path), download=False)
    assert again.fingerprint == b.fingerprint


def test_archive_completes_a_partial_folder(tmp_path):
    write_fake_cifar(tmp_path, 100, 3, 1, as_archive=True)
    (tmp_path / CIFAR100.folder).mkdir()
    (tmp_path / CIFAR100.folder / "train").write_bytes(b"truncated")
    with pytest.warns(ChecksumMismatchWarning):
        b = load_dataset("cifar100-lt", 1.0, str(tmp_path), download=False)
    assert b.counts == [3] * 100


@pytest.mark.parametrize("name,archive", [("cifar10-lt", CIFAR10), ("cifar100-lt", CIFAR100)])
def test_missing_data_error_names_file_and_directory(tmp_path, name, archive):
    with pytest.raises(DatasetNotFound) as info:
        load_dataset(name, 0.1, str(tmp_path), download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert archive.url in message and archive.archive in message
    assert str(tmp_path.resolve()) in message and name in message
    assert "\n" not in message


def test_failed_download_is_reported_in_the_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tvd, "CIFAR10", Offline)
    with pytest.raises(DatasetNotFound, match="automatic download failed: URLError") as info:
        load_dataset("cifar10-lt", 0.1, str(tmp_path), download=True)
    assert CIFAR10.url in str(info.value)


def test_successful_download_path_is_used(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeDownload:  # stands in for torchvision: writes the standard layout under root
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_fake_cifar(Path(root), 100, 4, 1)

    monkeypatch.setattr(tvd, "CIFAR100", FakeDownload)
    b = load_dataset("cifar100-lt", 0.5, str(tmp_path / "new"), download=True)
    assert calls == [(str((tmp_path / "new").resolve()), True)]
    assert b.counts == lt_counts(100, 0.5, 4.0)


def test_official_md5s_match_torchvision():
    import torchvision.datasets as tvd

    assert CIFAR10.md5 == tvd.CIFAR10.tgz_md5 and CIFAR100.md5 == tvd.CIFAR100.tgz_md5
    assert CIFAR10.url == tvd.CIFAR10.url and CIFAR100.url == tvd.CIFAR100.url


# ---------------------------------------------------------------- digits-LT


def test_digits_lt_counts_split_and_images(digits_bundle):
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target
    pool, test = [], []
    for c in range(10):  # independent: first floor(70 %) of each class in file order
        idx = [i for i, y in enumerate(labels) if y == c]
        cut = (len(idx) * 7) // 10
        pool += idx[:cut]
        test += idx[cut:]
    img_max = min(sum(1 for i in pool if labels[i] == c) for c in range(10))

    b = digits_bundle
    assert b.counts == [int(img_max * 0.1 ** (c / 9)) for c in range(10)]
    assert b.counts[0] == img_max and b.counts[-1] == int(img_max * 0.1)
    assert all(x > y for x, y in zip(b.counts, b.counts[1:])), "exponential profile decreases"
    assert set(b.kept_indices) <= set(pool) and not set(b.kept_indices) & set(test)
    assert np.array_equal(b.train_images[:, 0].numpy(), digits.images[b.kept_indices].astype(np.uint8))
    assert b.train_labels.tolist() == [int(labels[i]) for i in b.kept_indices]
    assert b.test_labels.tolist() == [int(labels[i]) for i in sorted(test)]
    assert b.input_shape == (1, 8, 8) and b.augment == "crop" and b.pixel_max == 16
    assert int(b.train_images.max()) <= 16 and b.fingerprint == subset_fingerprint(b.kept_indices)


def test_digits_lt_is_deterministic(digits_bundle):
    again = load_dataset("digits-lt", 0.1, None, False)
    assert again.kept_indices == digits_bundle.kept_indices
    assert again.fingerprint == digits_bundle.fingerprint
    balanced = load_dataset("digits-lt", 1.0, None, False)
    assert len(set(balanced.counts)) == 1


def test_registered_dataset_names_match_schema():
    from presets.schema import DATASETS

    assert ds.DATASETS.names() == sorted(DATASETS)
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("mnist-lt", 0.1, None, False)


def test_default_data_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVLT_DATA_ROOT", raising=False)
    monkeypatch.setenv("ADVLT_HOME", str(tmp_path / "home"))
    assert ds.default_data_root() == tmp_path / "home" / "data"
    monkeypatch.setenv("ADVLT_DATA_ROOT", str(tmp_path / "cifar"))
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "cifar")):
        load_dataset("cifar10-lt", 0.02, None, download=False)


def test_corrupt_archive_is_one_clear_error(tmp_path):
    (tmp_path / CIFAR10.archive).write_bytes(b"not a gzip file")
    with pytest.warns(ChecksumMismatchWarning), pytest.raises(DatasetNotFound, match="could not be extracted") as info:
        load_dataset("cifar10-lt", 0.02, str(tmp_path), download=False)
    assert CIFAR10.url in str(info.value)
