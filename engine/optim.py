"""Optimiser, per-parameter learning rates, freezing and the learning-rate schedule (METHODS.md §4.4).

SGD with momentum and L2 weight decay on every trainable parameter (BN and biases included), no
Nesterov. Two schedules:

* ``"reference_compounding"`` — the reference's defect (§9.1.1): each epoch ``e`` computes
  ``d(e) = 0.1^(#milestones ≤ e)`` (``(e+1)/W`` while ``e < W`` with warm-up ``W``) and multiplies
  the optimiser's *current* lr by ``d(e)``, so the decay compounds from the first milestone on.
* ``"step"`` — what the reference intended: ``lr = base · d(e)``.

Epochs are 1-based and absolute: a fine-tune from a parent checkpoint of epoch 80 starts at 81 and
(reference behaviour) restarts the compounding from the base lr at its first epoch.

Two ways of "freezing" parameters given lr 0 by ``lr_dict`` (§4.5, §9.1.3):

* ``"lr0"`` (reference): they stay in the optimiser with lr 0 — weights never move, but the
  backbone still runs in train mode, so BatchNorm running statistics keep updating.
* ``"frozen"``: they get ``requires_grad_(False)``, leave the optimiser, and BatchNorm modules
  whose parameters are all frozen are kept in eval mode by :func:`set_train_mode`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

# The schedule arithmetic lives in presets.schedule (no tensors) so the manager can preview the
# effective lr per epoch without importing torch; the optimiser uses the same function.
from presets.schedule import scheduled_lr
from presets.schema import LR_SCHEDULES, TrainConfig


# ---------------------------------------------------------------------------------------------
# Per-parameter learning rates and freezing.


def param_lr(name: str, train_cfg: TrainConfig) -> float:
    """Base lr of the parameter called ``name`` (full dotted name).

    With ``lr_dict`` the first key (dict order, ``"else"`` excluded) that is a substring of the
    name wins; otherwise ``lr_dict["else"]`` (falling back to ``train_cfg.lr``).
    """
    if not train_cfg.lr_dict:
        return float(train_cfg.lr)
    for key, lr in train_cfg.lr_dict.items():
        if key != "else" and key in name:
            return float(lr)
    return float(train_cfg.lr_dict.get("else", train_cfg.lr))


def _is_frozen(name: str, train_cfg: TrainConfig) -> bool:
    return train_cfg.freeze == "frozen" and param_lr(name, train_cfg) == 0.0


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters; every group carries its base lr in ``"base_lr"``.

    Without ``lr_dict``: one group. With ``lr_dict``: one group per parameter (as the reference).
    With ``freeze="frozen"``, lr-0 parameters are made non-trainable and left out.
    """
    if train_cfg.freeze not in ("lr0", "frozen"):
        raise ValueError(f"unknown freeze mode {train_cfg.freeze!r}; allowed: lr0, frozen")
    named = list(model.named_parameters())
    for name, p in named:
        if _is_frozen(name, train_cfg):
            p.requires_grad_(False)
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters (every lr is 0 and freeze='frozen'?)")
    if train_cfg.lr_dict:
        groups: list[dict[str, Any]] = [
            {"params": [p], "lr": param_lr(n, train_cfg), "base_lr": param_lr(n, train_cfg)}
            for n, p in trainable
        ]
    else:
        groups = [{"params": [p for _, p in trainable], "lr": train_cfg.lr, "base_lr": train_cfg.lr}]
    return torch.optim.SGD(
        groups,
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
        weight_decay=train_cfg.weight_decay,
        nesterov=False,
    )


def frozen_modules(model: nn.Module, train_cfg: TrainConfig) -> list[nn.Module]:
    """BatchNorm modules to keep in eval mode (``freeze="frozen"`` only; ``"lr0"`` → none).

    A BN module is frozen when all its parameters are; an affine-free BN (no parameters) counts as
    frozen when a weight under its name would be.
    """
    if train_cfg.freeze != "frozen":
        return []
    out: list[nn.Module] = []
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            continue
        names = [f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters()]
        if not names:
            names = [f"{mod_name}.weight" if mod_name else "weight"]
        if all(_is_frozen(n, train_cfg) for n in names):
            out.append(mod)
    return out


def set_train_mode(model: nn.Module, train_cfg: TrainConfig) -> None:
    """``model.train()``, then frozen BatchNorm back to eval (no running-stat updates)."""
    model.train()
    for mod in frozen_modules(model, train_cfg):
        mod.eval()


# ---------------------------------------------------------------------------------------------
# The epoch-wise scheduler.


class LRScheduler:
    """Sets every group's lr at the start of each epoch from its ``base_lr``.

    ``epoch`` is absolute and 1-based; ``start_epoch`` is the run's first epoch (a fine-tune from
    a parent's epoch 80 has ``start_epoch = 81`` and milestones in the same absolute numbering).
    Calling :meth:`step` once per epoch in order is the reference's "multiply the current lr by
    ``d(e)``"; it is computed from the base lr and ``start_epoch`` so that repeating an epoch is
    harmless and a resumed run (state loaded) continues an uninterrupted run bit for bit. The
    reference's own resume behaviour (compounding restarts at the resume epoch with a fresh
    optimiser) is a new scheduler with ``start_epoch = resume_epoch + 1``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, start_epoch: int = 1
    ) -> None:
        if train_cfg.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr schedule {train_cfg.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}"
            )
        self.optimizer = optimizer
        self.schedule = train_cfg.lr_schedule
        self.milestones = tuple(int(m) for m in train_cfg.milestones)
        self.warmup_epochs = int(train_cfg.warmup_epochs)
        self.start_epoch = int(start_epoch)
        self.last_epoch: Optional[int] = None
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    def lr_for(self, base_lr: float, epoch: int) -> float:
        return scheduled_lr(
            base_lr, epoch, self.schedule, self.milestones, self.warmup_epochs, self.start_epoch
        )

    def set_epoch(self, epoch: int) -> list[float]:
        """Apply the lr of ``epoch`` to every group; returns the group lrs."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_for(group["base_lr"], epoch)
        self.last_epoch = epoch
        return self.current_lrs()

    def step(self, epoch: int) -> float:
        """:meth:`set_epoch`, returning the largest group lr (the lr being trained with; with
        ``lr_dict`` the frozen groups sit at 0)."""
        return max(self.set_epoch(epoch))

    def current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "milestones": list(self.milestones),
            "warmup_epochs": self.warmup_epochs,
            "start_epoch": self.start_epoch,
            "last_epoch": self.last_epoch,
            "base_lrs": [g["base_lr"] for g in self.optimizer.param_groups],
            "lrs": self.current_lrs(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        groups = self.optimizer.param_groups
        if len(state["lrs"]) != len(groups):
            raise ValueError(
                f"scheduler state has {len(state['lrs'])} groups, optimiser has {len(groups)}"
            )
        self.schedule = state["schedule"]
        self.milestones = tuple(state["milestones"])
        self.warmup_epochs = int(state["warmup_epochs"])
        self.start_epoch = int(state["start_epoch"])
        self.last_epoch = state["last_epoch"]
        for group, base, lr in zip(groups, state["base_lrs"], state["lrs"]):
            group["base_lr"] = base
            group["lr"] = lr
