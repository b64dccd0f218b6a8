"""Fixtures for the engine's data tests: tiny CIFAR-format folders and a small bundle factory."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from engine.datasets import DataBundle, load_dataset, subset_fingerprint
from engine.fake_cifar import write_fake_cifar

@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors on 2 shared cores: intra-op threads only add contention (AutoAttack's
    thousands of tiny calls suffer most). tests/conftest.py also sets OMP_NUM_THREADS=1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeCifar(NamedTuple):
    root: Path  # the data root holding the extracted folder
    per_class_train: int
    per_class_test: int


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory: pytest.TempPathFactory) -> FakeCifar:
    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar(root, 10, 30, 5, seed=1)
    return FakeCifar(root, 30, 5)


@pytest.fixture(scope="session")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> FakeCifar:
    root = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar(root, 100, 6, 2, seed=2)
    return FakeCifar(root, 6, 2)


@pytest.fixture(scope="session")
def digits_bundle() -> DataBundle:
    return load_dataset("digits-lt", 0.1, None, False)


def make_bundle(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    augment: str = "crop_flip",
    pixel_max: float = 255.0,
) -> DataBundle:
    """A DataBundle around given uint8 images (test set = training set)."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    kept = list(range(len(labels)))
    return DataBundle(
        name="synthetic",
        num_classes=num_classes,
        class_names=[str(c) for c in range(num_classes)],
        train_images=images,
        train_labels=labels,
        test_images=images,
        test_labels=labels,
        counts=counts,
        kept_indices=kept,
        fingerprint=subset_fingerprint(kept),
        input_shape=tuple(images.shape[1:]),
        augment=augment,
        pixel_max=pixel_max,
    )


@pytest.fixture
def bundle_factory():
    return make_bundle
