"""The learning-rate schedules of METHODS.md §4.4 as plain arithmetic (stdlib only).

``reference_compounding`` reproduces the reference's defect (each epoch multiplies the *current*
lr by ``d(e) = 0.1^(#milestones ≤ e)``, or ``(e+1)/W`` during warm-up), ``step`` is the intended
schedule (``lr = base·d(e)``). The engine's optimiser and the manager's preview use these same
functions, so what the UI shows is what the run trains with.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from presets.schema import LR_SCHEDULES



def decay_factor(epoch: int, milestones: Sequence[int], warmup_epochs: int = 0) -> float:
    """The reference's per-epoch factor ``d(e)``.

    ``(e+1)/W`` while ``e < W`` (the reference uses the 1-based epoch as given, so warm-up starts
    at ``2/W``), otherwise ``0.1^(number of milestones ≤ e)``.
    """
    if warmup_epochs and epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return 0.1 ** sum(1 for m in milestones if m <= epoch)


def lr_factor(
    epoch: int,
    schedule: str,
    milestones: Sequence[int],
    warmup_epochs: int = 0,
    start_epoch: int = 1,
) -> float:
    """The lr of ``epoch`` divided by the base lr.

    ``"step"``: ``d(epoch)``. ``"reference_compounding"``: ``d(start)·d(start+1)·…·d(epoch)``,
    multiplied in epoch order exactly as repeated ``lr ← lr·d`` would be, where ``start_epoch`` is
    the first epoch of the (uninterrupted) run.
    """
    return scheduled_lr(1.0, epoch, schedule, milestones, warmup_epochs, start_epoch)


def _check_epoch(epoch: int, start_epoch: int) -> None:
    if epoch < start_epoch:
        raise ValueError(f"epoch {epoch} precedes the schedule's first epoch {start_epoch}")


def compounded_lr(
    base_lr: float, epoch: int, milestones: Sequence[int], warmup_epochs: int, start_epoch: int
) -> float:
    """``base_lr`` after the reference's in-place ``lr ← lr·d(k)`` for ``k = start … epoch``.

    The multiplications happen on the lr itself, in order, so the floats equal the reference's.
    """
    lr = base_lr
    for k in range(start_epoch, epoch + 1):
        lr = lr * decay_factor(k, milestones, warmup_epochs)
    return lr


def scheduled_lr(
    base_lr: float,
    epoch: int,
    schedule: str,
    milestones: Sequence[int],
    warmup_epochs: int = 0,
    start_epoch: int = 1,
) -> float:
    """The lr a group with base lr ``base_lr`` has during ``epoch``."""
    if schedule == "step":
        return base_lr * decay_factor(epoch, milestones, warmup_epochs)
    if schedule == "reference_compounding":
        _check_epoch(epoch, start_epoch)
        # Multiply the lr itself (not base·factor) so the floats match the reference's.
        return compounded_lr(base_lr, epoch, milestones, warmup_epochs, start_epoch)
    raise ValueError(f"unknown lr schedule {schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")


def effective_lrs(
    epochs: int | Iterable[int],
    base_lr: float,
    schedule: str,
    milestones: Sequence[int],
    warmup_epochs: int = 0,
    start_epoch: int = 1,
) -> list[float]:
    """Preview: the lr of each epoch (``epochs`` = last epoch, or an iterable of epochs).

    With an int, the epochs are ``start_epoch … epochs`` (absolute numbering).
    """
    seq = range(start_epoch, epochs + 1) if isinstance(epochs, int) else epochs
    return [scheduled_lr(base_lr, e, schedule, milestones, warmup_epochs, start_epoch) for e in seq]


def describe_schedule(lrs: Sequence[float], start_epoch: int = 1, frozen_below: float = 1e-6) -> str:
    """A compact text of an lr sequence: runs of equal lr as ``a–b: lr``, and the tail where the
    lr has fallen below ``frozen_below`` (the compounding defect) as ``a–b: <1e-06 (frozen)``."""
    parts: list[str] = []
    i = 0
    while i < len(lrs):
        j = i
        if lrs[i] < frozen_below:
            while j + 1 < len(lrs) and lrs[j + 1] < frozen_below:
                j += 1
            value = f"<{frozen_below:g} (frozen)"
        else:
            while j + 1 < len(lrs) and lrs[j + 1] == lrs[i]:
                j += 1
            value = f"{lrs[i]:.3g}"
        a, b = start_epoch + i, start_epoch + j
        parts.append(f"{a}: {value}" if a == b else f"{a}–{b}: {value}")
        i = j + 1
    return ", ".join(parts)
