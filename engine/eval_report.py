"""What an evaluation reports besides raw accuracies: the protocol fingerprint, per-attack
metrics with long-tail groups, gradient-masking flags, and throttled progress events
(METHODS.md §5.2–§5.4, §5.7).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from engine.metrics import decile_groups, default_groups, group_means, per_class_metrics, worst_class

# Protocol keys that identify *what* was evaluated rather than *how*: left out of
# ``protocol_hash`` so evaluations of different runs, checkpoints and heads under the same
# attack protocol line up in comparisons. Batch size and device only change floating-point
# details, not what is measured.
IDENTITY_KEYS = ("checkpoint", "checkpoint_sha256", "variant", "head", "head_opt", "batch_size",
                 "device", "torch")

# PGD-20 or MIM robust accuracy this far (absolute, in [0, 1]) above CW∞ or AutoAttack marks
# likely gradient masking: CE-based attacks are fooled by saturated softmaxes while the margin
# losses of CW and APGD-T are not (METHODS.md §5.7).
MASKING_GAP = 0.05

PROGRESS_INTERVAL_S = 0.5  # at most two eval_progress events per second and attack


def protocol_hash(protocol: Mapping[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of the protocol, without
    :data:`IDENTITY_KEYS`."""
    measured = {k: v for k, v in protocol.items() if k not in IDENTITY_KEYS}
    blob = json.dumps(measured, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def indices_digest(indices: Tensor) -> str:
    """Short sha256 of the evaluated test indices (ascending, decimal, comma-joined)."""
    text = ",".join(str(int(i)) for i in indices.tolist())
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def class_groups(counts: Sequence[int]) -> dict[str, list[int]]:
    """Head/medium/tail by training counts and, with ≥ 100 classes, the ten decile groups."""
    groups = default_groups(counts) if len(counts) >= 3 else {}
    if len(counts) >= 100:
        groups.update(decile_groups(len(counts)))
    return groups


def attack_metrics(pred: Tensor, target: Tensor, num_classes: int,
                   groups: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """``accuracy``, per-class ``recall``/``precision``/``f1``, group means of recall, worst class."""
    m = per_class_metrics(pred, target, num_classes)
    index, value = worst_class(m["recall"])
    return {
        "accuracy": m["accuracy"],
        "recall": m["recall"],
        "precision": m["precision"],
        "f1": m["f1"],
        "groups": group_means(m["recall"], groups) if groups else {},
        "worst_class": {"class": index, "recall": value},
    }


def robust_predictions(adv_pred: Tensor, clean_pred: Tensor, target: Tensor) -> Tensor:
    """Predictions that count a clean error as a robust error.

    A random start can occasionally move a misclassified image back to its label; the sample is
    still not robust (METHODS.md §5.2: clean errors are errors), so its clean prediction stands.
    """
    return torch.where(clean_pred == target, adv_pred, clean_pred)


def worst_case_predictions(preds: Mapping[str, Tensor], target: Tensor) -> Tensor:
    """Pointwise worst case: the label where every attack (and the clean pass) is correct,
    otherwise the wrong prediction of the first attack, in ``preds`` order, that fooled it."""
    out = target.clone()
    undecided = torch.ones_like(target, dtype=torch.bool)
    for pred in preds.values():
        wrong = undecided & (pred != target)
        out[wrong] = pred[wrong]
        undecided &= ~wrong
    return out


def masking_flags(accuracy: Mapping[str, float], zero_grad_frac: float | None,
                  ce_attack: str, gap: float = MASKING_GAP) -> tuple[dict[str, Any], list[str]]:
    """Gradient-masking indicators and warnings.

    ``gradient_masking`` is True when ``ce_attack`` (PGD-k) or MIM robust accuracy exceeds CW∞ or
    AutoAttack by more than ``gap``; ``masking_gap`` is the largest such difference (None when no
    pair was run). ``zero_grad_frac`` is FGSM's share of exactly-zero input-gradient entries.
    """
    ce_based = {k: accuracy[k] for k in (ce_attack, "mim") if k in accuracy}
    margin_based = {k: accuracy[k] for k in ("cw", "aa") if k in accuracy}
    flags: dict[str, Any] = {"gradient_masking": False, "masking_gap": None,
                             "zero_grad_frac": zero_grad_frac}
    warnings: list[str] = []
    if ce_based and margin_based:
        hi = max(ce_based, key=ce_based.get)
        lo = min(margin_based, key=margin_based.get)
        diff = ce_based[hi] - margin_based[lo]
        flags["masking_gap"] = diff
        if diff > gap:
            flags["gradient_masking"] = True
            warnings.append(
                f"possible gradient masking: {hi} robust accuracy {ce_based[hi]:.3f} exceeds {lo} "
                f"{margin_based[lo]:.3f} by {diff:.3f} (> {gap:.2f}); report {lo}, not {hi}"
            )
    if zero_grad_frac is not None and zero_grad_frac > 0.5:
        warnings.append(f"FGSM found {zero_grad_frac:.0%} exactly-zero input gradients (saturated softmax)")
    return flags, warnings


class Progress:
    """Throttled ``eval_progress`` events: the first and last of each attack always, in between
    at most one every ``interval_s`` seconds."""

    def __init__(self, writer: Any, eval_id: str, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.writer, self.eval_id, self.interval_s = writer, eval_id, interval_s
        self._attack: str | None = None
        self._start = self._last = 0.0

    def update(self, attack: str, done: int, total: int) -> None:
        now = time.monotonic()
        if attack != self._attack:
            self._attack, self._start, self._last = attack, now, float("-inf")
        if self.writer is None:
            return
        final = done >= total
        if not (final or done == 0) and now - self._last < self.interval_s:
            return
        elapsed = now - self._start
        eta = elapsed / done * (total - done) if done > 0 else None
        self.writer.emit("eval_progress", eval_id=self.eval_id, attack=attack, done=int(done),
                         total=int(total), eta_s=eta)
        self._last = now
