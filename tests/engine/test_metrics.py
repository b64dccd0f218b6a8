"""Metrics (engine/metrics.py) against scikit-learn and METHODS.md §1.3 / §5.4 vectors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from engine.metrics import (
    decile_groups,
    default_groups,
    group_means,
    per_class_metrics,
    pointwise_worst,
    worst_class,
)

# METHODS.md §1.3 training counts.
CIFAR10_LT_002 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
CIFAR10_LT_001 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR100_LT_01 = [
    500, 488, 477, 466, 455, 445, 434, 424, 415, 405, 396, 387, 378, 369, 361, 352, 344, 336, 328,
    321, 314, 306, 299, 292, 286, 279, 273, 266, 260, 254, 248, 243, 237, 232, 226, 221, 216, 211,
    206, 201, 197, 192, 188, 183, 179, 175, 171, 167, 163, 159, 156, 152, 149, 145, 142, 139, 135,
    132, 129, 126, 123, 121, 118, 115, 112, 110, 107, 105, 102, 100, 98, 95, 93, 91, 89, 87, 85, 83,
    81, 79, 77, 75, 74, 72, 70, 69, 67, 66, 64, 63, 61, 60, 58, 57, 56, 54, 53, 52, 51, 50,
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    target = rng.integers(0, num_classes - 1, size=300)  # class 6 never occurs as a target
    pred = np.where(rng.random(300) < 0.6, target, rng.integers(0, num_classes, size=300))
    pred[pred == 5] = 4  # class 5 is never predicted: precision zero division
    ours = per_class_metrics(torch.as_tensor(pred), torch.as_tensor(target), num_classes)
    p, r, f, s = precision_recall_fscore_support(
        target, pred, labels=list(range(num_classes)), average=None, zero_division=0
    )
    np.testing.assert_allclose(ours["precision"], p, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], r, atol=1e-12)
    np.testing.assert_allclose(ours["f1"], f, atol=1e-12)
    assert ours["support"] == s.tolist()
    assert ours["accuracy"] == pytest.approx(float((pred == target).mean()))
    assert all(isinstance(v, float) for v in ours["recall"] + ours["precision"] + ours["f1"])


def test_per_class_metrics_rejects_bad_input():
    with pytest.raises(ValueError):
        per_class_metrics([0, 1], [0], 2)
    with pytest.raises(ValueError):
        per_class_metrics([0, 3], [0, 1], 3)


def test_group_means_and_sums():
    values = [1.0, 0.5, 0.0, 0.25]
    groups = {"a": [0, 1], "b": [2, 3]}
    assert group_means(values, groups) == {"a": 0.75, "b": 0.125}
    assert group_means(values, groups, as_sum=True) == {"a": 1.5, "b": 0.25}
    with pytest.raises(ValueError):
        group_means(values, {"empty": []})


def test_default_groups_thresholds_when_all_groups_filled():
    counts = [500, 150, 101, 100, 60, 20, 19, 5]
    assert default_groups(counts) == {"head": [0, 1, 2], "medium": [3, 4, 5], "tail": [6, 7]}
    assert default_groups(counts, many=50, few=10) == {
        "head": [0, 1, 2, 3, 4], "medium": [5, 6], "tail": [7]
    }


def test_default_groups_fall_back_to_thirds():
    # CIFAR-10-LT ρ=50: no class has fewer than 20 images -> thirds of the head→tail order.
    assert default_groups(CIFAR10_LT_002) == {"head": [0, 1, 2, 3], "medium": [4, 5, 6], "tail": [7, 8, 9]}
    # CIFAR-10-LT ρ=100 likewise (smallest class 50).
    assert default_groups(CIFAR10_LT_001)["tail"] == [7, 8, 9]
    # CIFAR-100-LT ρ=10 (smallest class 50): 34 / 33 / 33 classes.
    groups = default_groups(CIFAR100_LT_01)
    assert [len(groups[g]) for g in ("head", "medium", "tail")] == [34, 33, 33]
    assert groups["head"] == list(range(34)) and groups["tail"] == list(range(67, 100))
    # The fallback sorts by count, not by index.
    shuffled = [10, 500, 40, 300, 5, 200]
    assert default_groups(shuffled, many=1000) == {"head": [1, 3], "medium": [2, 5], "tail": [0, 4]}


def test_decile_groups_reproduce_reference_group_totals():
    groups = decile_groups(100)
    assert list(groups) == [f"{10 * k}-{10 * k + 9}" for k in range(10)]
    assert all(len(v) == 10 for v in groups.values())
    # METHODS.md §1.3: group totals of CIFAR-100-LT ρ=10 counts.
    sums = group_means(CIFAR100_LT_01, groups, as_sum=True)
    assert list(sums.values()) == [4509, 3572, 2829, 2241, 1774, 1405, 1113, 881, 697, 552]
    means = group_means(CIFAR100_LT_01, groups)
    assert means["0-9"] == pytest.approx(450.9)
    with pytest.raises(ValueError):
        decile_groups(5)


def test_worst_class():
    assert worst_class([0.9, 0.1, 0.5, 0.1]) == (1, 0.1)


def test_pointwise_worst():
    correct = {
        "pgd": torch.tensor([True, True, False, True]),
        "cw": torch.tensor([True, False, True, True]),
        "aa": torch.tensor([True, True, True, False]),
    }
    assert pointwise_worst(correct).tolist() == [True, False, False, False]
    assert pointwise_worst({"pgd": correct["pgd"]}).tolist() == correct["pgd"].tolist()
    with pytest.raises(ValueError):
        pointwise_worst({})
    with pytest.raises(ValueError):
        pointwise_worst({"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)})
