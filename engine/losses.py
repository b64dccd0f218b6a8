"""Training losses and the class-count helpers they share (METHODS.md §3, §4.3).

Every loss is ``forward(logits, target, weight=None) -> scalar``; ``weight`` is an optional
per-class vector (the DRW option). Constants derived from the class counts (log π, margins,
temperatures) are non-persistent buffers so ``.to(device)`` moves them; logits are never edited
in place and margin masks are boolean (the reference's in-place edits and uint8 masks are
portability defects, §9 items 18–19).
"""
from __future__ import annotations

import bisect
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.registry import Registry

LOSSES: Registry = Registry("loss")
CB_LOSS_TYPES = ("focal", "sigmoid", "softmax")


def create_loss(name: str, class_counts: Sequence[int], **opt: Any) -> nn.Module:
    """Build the loss registered as ``name``; unknown options are a clear error."""
    factory = LOSSES.get(name)
    try:
        return factory(list(class_counts), **opt)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: bad option ({exc})") from None


# ---------------------------------------------------------------- class-count helpers


def _counts(counts: Sequence[int]) -> torch.Tensor:
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    if c.ndim != 1 or c.numel() == 0 or bool((c <= 0).any()):
        raise ValueError(f"class counts must be a non-empty list of positive numbers, got {list(counts)}")
    return c


def log_prior(counts: Sequence[int]) -> torch.Tensor:
    """``log π_c`` with ``π_c = n_c / Σ n_k`` (float32)."""
    c = _counts(counts)
    return (c / c.sum()).log().float()


def ldam_margins(counts: Sequence[int], max_m: float, g: float = 0.25) -> torch.Tensor:
    """LDAM (Cao et al. 2019): ``m_c = max_m · n_c^{−g} / max_k n_k^{−g}``; the tail gets ``max_m``."""
    m = _counts(counts).pow(-g)
    return (m * (max_m / m.max())).float()


def cb_weights(counts: Sequence[int], beta: float) -> torch.Tensor:
    """Effective-number weights (Cui et al. 2019) ``(1−β)/(1−β^{n_c})``, renormalised to sum C."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"effective-number beta must be in [0, 1), got {beta}")
    c = _counts(counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), c))
    return (w / w.sum() * c.numel()).float()


def cdt_temperatures(counts: Sequence[int], tau: float) -> torch.Tensor:
    """CDT train-time temperatures ``a_c = (n_max/n_c)^τ`` (Ye et al. 2020)."""
    c = _counts(counts)
    return (c.max() / c).pow(tau).float()


def robal_margins(counts: Sequence[int], m: float, tau_m: float, s: float) -> torch.Tensor:
    """RoBal's class-aware margins ``m_c = m + τ_m·log(n_c/n_min)/s`` (head classes larger)."""
    c = _counts(counts)
    return (m + tau_m * (c / c.min()).log() / s).float()


def _stage(epoch: int, epoch_divides: Sequence[int], values: Sequence[float]) -> float:
    """The value paired with the last boundary ``≤ epoch`` (the first one before any boundary)."""
    if len(epoch_divides) != len(values):
        raise ValueError(f"{len(epoch_divides)} epoch boundaries but {len(values)} values")
    idx = bisect.bisect_right(list(epoch_divides), epoch) - 1
    return float(values[max(idx, 0)])


def drw_weights(
    counts: Sequence[int], epoch: int,
    epoch_divides: Sequence[int] = (0, 40), betas: Sequence[float] = (0.0, 0.9999),
) -> torch.Tensor:
    """Deferred re-weighting (§4.3): CB weights with the β of the current stage (β=0 ⇒ ones)."""
    return cb_weights(counts, _stage(epoch, epoch_divides, betas))


def dm_margins(
    counts: Sequence[int], epoch: int,
    epoch_divides: Sequence[int] = (0, 40), maxs: Sequence[float] = (0.0, 0.5),
) -> torch.Tensor:
    """Deferred margins (§4.3): LDAM margins with the ``max_m`` of the current stage."""
    return ldam_margins(counts, _stage(epoch, epoch_divides, maxs))


def subtract_target_margin(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """``z'_y = z_y − m_y``, other logits unchanged (out of place, boolean mask)."""
    mask = F.one_hot(target, logits.shape[1]).bool()
    return torch.where(mask, logits - margins.to(logits)[target].unsqueeze(1), logits)


def _sample_weights(weight: Optional[torch.Tensor], target: torch.Tensor, logits: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-class ``(C,)`` weights → ``w_y`` broadcast over the C outputs; ``(B, C)`` kept as is."""
    if weight is None:
        return None
    weight = weight.to(logits)
    if weight.ndim == 1:
        return weight[target].unsqueeze(1).expand_as(logits)
    return weight


def sigmoid_focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, element_weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) over all C outputs, summed, divided by the batch size.

    ``p_t = σ(z_c·(2·1_y[c]−1))``, ``ℓ = −(1−p_t)^γ·log p_t``; computed with log-sigmoid so
    large logits stay finite.
    """
    sign = 2.0 * F.one_hot(target, logits.shape[1]).to(logits) - 1.0
    signed = logits * sign
    loss = -torch.sigmoid(-signed).pow(gamma) * F.logsigmoid(signed)
    if element_weight is not None:
        loss = loss * element_weight
    return loss.sum() / logits.shape[0]


# ---------------------------------------------------------------- losses


class _Loss(nn.Module):
    """``forward(logits, target, weight=None) -> scalar``; half-precision logits are upcast.

    Under mixed precision the logits may arrive in bf16/fp16; the class constants (log π,
    margins of a few hundredths) would lose digits if cast down, so the loss runs in float32.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return self.compute(logits, target, weight)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


@LOSSES.register("ce")
class CrossEntropy(_Loss):
    """Softmax CE, batch mean; with per-class ``weight`` the weighted mean ``Σ w_y ℓ / Σ w_y``."""

    def __init__(self, class_counts: Sequence[int]) -> None:
        super().__init__()

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=None if weight is None else weight.to(logits))


@LOSSES.register("focal")
class FocalLoss(_Loss):
    """Focal loss. Sigmoid (default): :func:`sigmoid_focal` (weights: ``w_y`` per sample).

    Softmax variant: ``0.5 · mean((1−p_i)^γ · CE_i)`` with ``p_i = exp(−CE_i)``.
    """

    def __init__(self, class_counts: Sequence[int], gamma: float = 2.0, use_sigmoid: bool = True) -> None:
        super().__init__()
        self.gamma, self.use_sigmoid = float(gamma), bool(use_sigmoid)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        if self.use_sigmoid:
            return sigmoid_focal(logits, target, self.gamma, _sample_weights(weight, target, logits))
        ce = F.cross_entropy(logits, target, reduction="none")
        if weight is not None:
            ce = ce * weight.to(logits)[target]
        p = torch.exp(-ce)
        return 0.5 * ((1.0 - p).pow(self.gamma) * ce).mean()


@LOSSES.register("cb")
class ClassBalancedLoss(_Loss):
    """Class-balanced loss (Cui et al. 2019): each sample weighted by ``w_y`` over its C outputs.

    ``focal``: sigmoid focal with those element weights; ``sigmoid``: BCE-with-logits vs one-hot
    (mean over B·C); ``softmax``: BCE on softmax probabilities vs one-hot (mean over B·C); × α.
    A DRW ``weight`` passed to ``forward`` is ignored: CB already re-weights.
    """

    def __init__(
        self, class_counts: Sequence[int], beta: float = 0.9999, loss_type: str = "focal",
        gamma: float = 2.0, alpha: float = 1.0, use_sigmoid: bool = True,
    ) -> None:
        super().__init__()
        if loss_type not in CB_LOSS_TYPES:
            raise ValueError(f"cb loss_type must be one of {CB_LOSS_TYPES}, got {loss_type!r}")
        self.loss_type, self.gamma, self.alpha = loss_type, float(gamma), float(alpha)
        self.register_buffer("class_weights", cb_weights(class_counts, beta), persistent=False)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        w = _sample_weights(self.class_weights, target, logits)
        onehot = F.one_hot(target, logits.shape[1]).to(logits)
        if self.loss_type == "focal":
            loss = sigmoid_focal(logits, target, self.gamma, w)
        elif self.loss_type == "sigmoid":
            loss = F.binary_cross_entropy_with_logits(logits, onehot, weight=w)
        else:
            loss = F.binary_cross_entropy(logits.softmax(dim=1), onehot, weight=w)
        return self.alpha * loss


@LOSSES.register("ldam")
class LDAMLoss(_Loss):
    """LDAM (Cao et al. 2019): ``CE(s·z', y)`` with ``z'_y = z_y − m_y``.

    ``inv``: the target's margin ``m_y`` is added to the non-target logits instead [inference:
    the spec only says "adds the margin to the non-target logits"]. The option ``weight`` and a
    DRW ``weight`` multiply when both are given.
    """

    def __init__(
        self, class_counts: Sequence[int], max_m: float = 0.5, s: float = 10.0, g: float = 0.25,
        inv: bool = False, weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.s, self.inv = float(s), bool(inv)
        self.register_buffer("margins", ldam_margins(class_counts, max_m, g), persistent=False)
        self.register_buffer(
            "class_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32), persistent=False
        )

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        if self.inv:
            mask = F.one_hot(target, logits.shape[1]).bool()
            adjusted = torch.where(mask, logits, logits + self.margins.to(logits)[target].unsqueeze(1))
        else:
            adjusted = subtract_target_margin(logits, target, self.margins)
        w = self.class_weight
        if weight is not None:
            w = weight.to(logits) if w is None else w.to(logits) * weight.to(logits)
        return F.cross_entropy(self.s * adjusted, target, weight=None if w is None else w.to(logits))


@LOSSES.register("uni_margin")
class UniMarginLoss(_Loss):
    """CosFace / HE: ``CE(s·(z − m·1_y), y)`` (optionally class-weighted)."""

    def __init__(
        self, class_counts: Sequence[int], m: float = 0.5, s: float = 10.0, weight: Optional[Sequence[float]] = None
    ) -> None:
        super().__init__()
        self.m, self.s = float(m), float(s)
        self.register_buffer(
            "class_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32), persistent=False
        )

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        margins = torch.full((logits.shape[1],), self.m, dtype=logits.dtype, device=logits.device)
        w = self.class_weight
        if weight is not None:
            w = weight.to(logits) if w is None else w.to(logits) * weight.to(logits)
        adjusted = subtract_target_margin(logits, target, margins)
        return F.cross_entropy(self.s * adjusted, target, weight=None if w is None else w.to(logits))


@LOSSES.register("bce")
class TemperedBCELoss(_Loss):
    """``T · BCEwithLogits(z/T, onehot)``, mean over B·C (per-sample ``w_y`` when weighted)."""

    def __init__(self, class_counts: Sequence[int], T: float = 1.0) -> None:  # noqa: N803
        super().__init__()
        self.T = float(T)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        onehot = F.one_hot(target, logits.shape[1]).to(logits)
        w = _sample_weights(weight, target, logits)
        return self.T * F.binary_cross_entropy_with_logits(logits / self.T, onehot, weight=w)


@LOSSES.register("cdt")
class CDTLoss(_Loss):
    """Class-dependent temperature CE: ``CE(z / a, y)``, ``a_c = (n_max/n_c)^τ``; weights ignored."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("temperatures", cdt_temperatures(class_counts, tau), persistent=False)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits / self.temperatures.to(logits), target)


@LOSSES.register("logit_adjust")
class LogitAdjustLoss(_Loss):
    """Logit-adjusted CE (Menon et al. 2021): ``CE(z + τ·log π, y)``; weights ignored."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("log_prior", log_prior(class_counts), persistent=False)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits), target)


@LOSSES.register("multi_margin")
class MultiMarginLoss(_Loss):
    """RoBal's margin engineering: ``CE(s·(z − m_y·1_y) + τ_b·log π, y)``; weights ignored.

    ``m_c = m + τ_m·log(n_c/n_min)/s`` (applied only if ``m > 0`` or ``τ_m > 0``); the bias term
    only when ``τ_b > 0``.
    """

    def __init__(
        self, class_counts: Sequence[int], m: float = 0.0, s: float = 1.0, tau_b: float = 0.0, tau_m: float = 0.0
    ) -> None:
        super().__init__()
        self.s, self.tau_b = float(s), float(tau_b)
        self.use_margin = m > 0 or tau_m > 0
        self.register_buffer("margins", robal_margins(class_counts, m, tau_m, s), persistent=False)
        self.register_buffer("log_prior", log_prior(class_counts), persistent=False)

    def compute(self, logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        z = subtract_target_margin(logits, target, self.margins) if self.use_margin else logits
        z = self.s * z
        if self.tau_b > 0:
            z = z + self.tau_b * self.log_prior.to(logits)
        return F.cross_entropy(z, target)
