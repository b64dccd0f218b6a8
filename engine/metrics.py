"""Classification metrics for long-tailed robustness reports (METHODS.md §5.4).

Per-class recall (= per-class accuracy), precision and F1 without averaging, as the reference
computed them with scikit-learn (zero division → 0), here in plain numpy so the engine does not
depend on scikit-learn. Group summaries: head/medium/tail by training counts (a common LT
convention, *not* from the reference) and CIFAR-100 decile groups (the reference's 10 consecutive
class groups; the reference reported their sums, METHODS.md §9 defect 26 — means by default here).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

GROUP_NAMES = ("head", "medium", "tail")


def _as_int_array(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_metrics(pred: Any, target: Any, num_classes: int) -> dict[str, Any]:
    """Accuracy and per-class recall/precision/F1/support of predicted labels.

    ``pred``/``target``: 1-D integer labels (tensor, array or list) in ``0..num_classes−1``.
    Returns ``accuracy`` (float), ``recall``/``precision``/``f1`` (lists of ``num_classes``
    floats; zero division → 0.0, like scikit-learn's ``zero_division=0``) and ``support``
    (list of ints, true samples per class). F1 is ``2·TP / (2·TP + FP + FN)``.
    """
    p, t = _as_int_array(pred), _as_int_array(target)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} labels, target has {t.size}")
    for name, arr in (("pred", p), ("target", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}")
    hit = p == t
    tp = np.bincount(t[hit], minlength=num_classes).astype(np.float64)
    support = np.bincount(t, minlength=num_classes)
    predicted = np.bincount(p, minlength=num_classes)
    fp = predicted - tp
    fn = support - tp
    return {
        "accuracy": float(hit.mean()) if hit.size else 0.0,
        "recall": _safe_div(tp, support).tolist(),
        "precision": _safe_div(tp, predicted).tolist(),
        "f1": _safe_div(2.0 * tp, 2.0 * tp + fp + fn).tolist(),
        "support": support.astype(int).tolist(),
    }


def group_means(
    per_class: Sequence[float], groups: Mapping[str, Sequence[int]], as_sum: bool = False
) -> dict[str, float]:
    """Mean (or, with ``as_sum=True``, the reference's sum) of per-class values in each group."""
    values = np.asarray(per_class, dtype=np.float64)
    out: dict[str, float] = {}
    for name, idx in groups.items():
        if len(idx) == 0:
            raise ValueError(f"group {name!r} is empty")
        picked = values[np.asarray(idx, dtype=np.int64)]
        out[name] = float(picked.sum() if as_sum else picked.mean())
    return out


def default_groups(counts: Sequence[int], many: int = 100, few: int = 20) -> dict[str, list[int]]:
    """Head/medium/tail classes from training counts: Many > ``many``, Medium ``few``..``many``,
    Few < ``few`` (Liu et al. CVPR 2019 convention, not from the reference).

    If that leaves a group empty (e.g. CIFAR-10-LT ρ = 50 has no class under 20 images), the
    classes sorted head→tail by count (ties by index) are split into thirds instead, the first
    third taking the remainder. Class indices in each group are ascending.
    """
    n = np.asarray(counts, dtype=np.int64)
    if n.size < 3:
        raise ValueError(f"need at least 3 classes for head/medium/tail groups, got {n.size}")
    if few > many:
        raise ValueError(f"few ({few}) must not exceed many ({many})")
    masks = (n > many, (n >= few) & (n <= many), n < few)
    if all(m.any() for m in masks):
        return {g: np.flatnonzero(m).tolist() for g, m in zip(GROUP_NAMES, masks)}
    order = np.argsort(-n, kind="stable")
    thirds = np.array_split(order, 3)
    return {g: sorted(int(i) for i in part) for g, part in zip(GROUP_NAMES, thirds)}


def decile_groups(num_classes: int) -> dict[str, list[int]]:
    """Ten groups of consecutive classes (``0-9``, ``10-19``, … for CIFAR-100), head to tail.

    The reference reports these for runs with ≥ 100 classes as sums of per-class values
    (``group_means(..., as_sum=True)``); the mean is the default here.
    """
    if num_classes < 10:
        raise ValueError(f"decile groups need at least 10 classes, got {num_classes}")
    parts = np.array_split(np.arange(num_classes), 10)
    return {f"{int(p[0])}-{int(p[-1])}": p.tolist() for p in parts}


def worst_class(recall: Sequence[float]) -> tuple[int, float]:
    """Index and value of the lowest per-class value (first one on ties)."""
    values = np.asarray(recall, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no classes")
    i = int(np.argmin(values))
    return i, float(values[i])


def pointwise_worst(correct_by_attack: Mapping[str, Tensor]) -> Tensor:
    """Per-sample worst case over attacks: robust only if correct under every attack."""
    if not correct_by_attack:
        raise ValueError("no attacks given")
    items = list(correct_by_attack.items())
    shape = items[0][1].shape
    out = torch.ones(shape, dtype=torch.bool, device=items[0][1].device)
    for name, correct in items:
        if correct.shape != shape:
            raise ValueError(f"attack {name!r} has shape {tuple(correct.shape)}, expected {tuple(shape)}")
        out &= correct.to(device=out.device, dtype=torch.bool)
    return out
