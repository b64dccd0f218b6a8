"""Classifier heads: features ``(B, in_dim)`` → logits ``(B, C)`` (METHODS.md §2.3).

Parameter names are the reference's state-dict keys (``fc.weight``, ``weight``, ``bias``,
``cla_scale``, ``moving_ed``) so that ``classifier.*`` keys of its checkpoints load. Parameters
the reference freezes keep ``requires_grad = False`` but stay parameters (they are loaded).

Every head has ``logit_scale``: the nominal multiplier of its logits, used by the evaluation to
warn when CE-based attacks see logits at a different scale than training did (§5.7).

Cosine normalisation follows the reference (no epsilon, ``norm_eps = 0``); a positive
``norm_eps`` clamps the norms instead, avoiding NaN on an all-zero feature (§9 item 29).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.losses import cdt_temperatures, log_prior
from engine.registry import Registry

HEADS: Registry = Registry("head")
MOVING_AVG_INITS = ("zeros", "reference")


def create_head(name: str, in_dim: int, num_classes: int, class_counts: Sequence[int], **opt: Any) -> nn.Module:
    """Build the head registered as ``name``; unknown options are a clear error."""
    if len(class_counts) != num_classes:
        raise ValueError(f"head {name!r}: {len(class_counts)} class counts for {num_classes} classes")
    factory = HEADS.get(name)
    try:
        return factory(in_dim, num_classes, list(class_counts), **opt)
    except TypeError as exc:
        raise ValueError(f"head {name!r}: bad option ({exc})") from None


def _norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-wise L2 norm (keepdim); clamped only when ``eps > 0``."""
    n = x.norm(p=2, dim=1, keepdim=True)
    return n if eps == 0 else n.clamp_min(eps)


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / _norm(x, eps)


def _uniform_weight(num_classes: int, in_dim: int) -> nn.Parameter:
    """Weights ~ U(±1/√in_dim), the reference's cosine-head init (= nn.Linear's range)."""
    bound = 1.0 / math.sqrt(in_dim)
    return nn.Parameter(torch.empty(num_classes, in_dim).uniform_(-bound, bound))


class _PriorMixin:
    """Registers log π as a non-persistent buffer (derived from counts, moves with ``.to``)."""

    def _register_prior(self, class_counts: Sequence[int]) -> None:
        self.register_buffer("log_prior", log_prior(class_counts), persistent=False)  # type: ignore[attr-defined]


class _MovingAverageMixin:
    """The reference's ``moving_ed``: ``m ← μ·m + mean_batch(f̂)`` — no ``(1−μ)`` factor.

    It is a frozen parameter (so it is in the state dict under the reference's name). The
    reference never initialises it (undefined memory); that cannot be reproduced, so both
    ``moving_avg_init`` values start at zeros and the choice is only recorded.
    """

    def _init_moving(self, in_dim: int, mu: float, moving_avg_init: str) -> None:
        if moving_avg_init not in MOVING_AVG_INITS:
            raise ValueError(f"moving_avg_init must be one of {MOVING_AVG_INITS}, got {moving_avg_init!r}")
        self.mu = float(mu)
        self.moving_avg_init = moving_avg_init
        self.moving_ed = nn.Parameter(torch.zeros(1, in_dim), requires_grad=False)

    @torch.no_grad()
    def _update_moving(self, unit_features: torch.Tensor) -> None:
        mean = unit_features.detach().mean(dim=0, keepdim=True).to(self.moving_ed.dtype)
        self.moving_ed.mul_(self.mu).add_(mean)


@HEADS.register("fc")
class FCHead(nn.Module):
    """``z = W f + b`` (nn.Linear default init)."""

    def __init__(self, in_dim: int, num_classes: int, class_counts: Sequence[int]) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        self.logit_scale = 1.0

    @torch.no_grad()
    def init_prior_bias(self, class_counts: Sequence[int]) -> None:
        """``b_c = −log((1−π_c)/π_c)``: the reference's bias init when the outer loss is focal."""
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        prior = counts / counts.sum()
        self.fc.bias.copy_(-torch.log((1 - prior) / prior))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


@HEADS.register("cos")
class CosHead(nn.Module):
    """``z_c = scale·⟨f̂, ŵ_c⟩ + b_c``; the bias starts at 0 and is frozen unless ``bias``."""

    def __init__(
        self, in_dim: int, num_classes: int, class_counts: Sequence[int],
        scale: float = 16.0, bias: bool = False, norm_eps: float = 0.0,
    ) -> None:
        super().__init__()
        self.weight = _uniform_weight(num_classes, in_dim)
        self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=bool(bias))
        self.scale = float(scale)
        self.norm_eps = float(norm_eps)
        self.logit_scale = self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = _unit(features, self.norm_eps) @ _unit(self.weight, self.norm_eps).t()
        return self.scale * cos + self.bias


@HEADS.register("dot")
class DotHead(nn.Module):
    """``z = W f + b₀`` with the bias frozen at its random nn.Linear init (reference defect, §9)."""

    def __init__(self, in_dim: int, num_classes: int, class_counts: Sequence[int]) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        self.fc.bias.requires_grad_(False)
        self.logit_scale = 1.0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


@HEADS.register("post_norm")
class PostNormHead(nn.Module):
    """τ-norm / LWS (Kang et al. 2020): ``z_c = (f'·w'_c)/T × s_c (+ b_c/T if bias)``.

    ``w'_c = w_c/‖w_c‖^τ`` when ``norm`` (norm of a detached copy), ``f' = f̂`` when
    ``feature_norm``; ``s = cla_scale`` (init 1) is trainable only with ``lws``. With
    ``bias = False`` the FC bias is dropped (the reference's behaviour for LWS/τ-norm).
    """

    def __init__(
        self, in_dim: int, num_classes: int, class_counts: Sequence[int],
        norm: bool = False, feature_norm: bool = False, lws: bool = False, tau: float = 0.0,
        bias: bool = False, avg_T: float = 1.0, norm_eps: float = 0.0,  # noqa: N803
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        self.fc.bias.requires_grad_(bool(bias))
        self.cla_scale = nn.Parameter(torch.ones(num_classes), requires_grad=bool(lws))
        self.norm, self.feature_norm, self.use_bias = bool(norm), bool(feature_norm), bool(bias)
        self.tau, self.avg_T, self.norm_eps = float(tau), float(avg_T), float(norm_eps)
        self.logit_scale = 1.0 / self.avg_T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.fc.weight
        if self.norm:
            weight = weight / _norm(weight.detach(), self.norm_eps).pow(self.tau)
        f = _unit(features, self.norm_eps) if self.feature_norm else features
        logits = (f @ weight.t()) / self.avg_T * self.cla_scale
        if self.use_bias:
            logits = logits + self.fc.bias / self.avg_T
        return logits


@HEADS.register("cdt")
class CDTHead(nn.Module):
    """Class-dependent temperatures (Ye et al. 2020) on an FC head.

    ``posthoc``: ``z_c = (Wf+b)_c / n_c^τ`` always. Otherwise ``z_c = (Wf+b)_c / (n_max/n_c)^τ``
    in train mode only and plain ``Wf+b`` in eval mode (so also during training-time attacks,
    which run in eval mode). ``bias = False`` freezes the FC bias (it is still added).
    """

    def __init__(
        self, in_dim: int, num_classes: int, class_counts: Sequence[int],
        tau: float = 1.0, posthoc: bool = False, bias: bool = False,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        self.fc.bias.requires_grad_(bool(bias))
        self.tau, self.posthoc = float(tau), bool(posthoc)
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("posthoc_divisors", counts.pow(self.tau).float(), persistent=False)
        self.register_buffer("train_temperatures", cdt_temperatures(class_counts, self.tau), persistent=False)
        # Post-hoc division is class-dependent; its nominal scale is the geometric mean 1/n_c^τ.
        self.logit_scale = (
            float(torch.exp(-self.tau * counts.log().mean())) if self.posthoc else 1.0
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.fc(features)
        if self.posthoc:
            return logits / self.posthoc_divisors
        if self.training:
            return logits / self.train_temperatures
        return logits


@HEADS.register("tde_sim")
class TDESimHead(_MovingAverageMixin, nn.Module):
    """Simplified TDE (Tang et al. 2020), single head, ``w'_c = w_c/(‖w_c‖ + γ)``.

    Normal path: ``z_c = scale·⟨f̂, w'_c⟩ + b_c`` and ``m ← μ·m + mean(f̂)``; it runs in train
    mode and also in eval mode when ``posthoc`` is False (so every eval forward mutates ``m``,
    as in the reference). Debiased path (``posthoc`` and eval mode):
    ``z_c = scale·⟨f̂ − α·cos(f, m)·m, w'_c⟩ + b_c`` with the un-normalised ``m``.
    """

    def __init__(
        self, in_dim: int, num_classes: int, class_counts: Sequence[int],
        scale: float = 16.0, alpha: float = 3.0, gamma: float = 0.0, mu: float = 0.9,
        posthoc: bool = False, bias: bool = False, moving_avg_init: str = "zeros", norm_eps: float = 0.0,
    ) -> None:
        super().__init__()
        self.weight = _uniform_weight(num_classes, in_dim)
        self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=bool(bias))
        self._init_moving(in_dim, mu, moving_avg_init)
        self.scale, self.alpha, self.gamma = float(scale), float(alpha), float(gamma)
        self.posthoc, self.norm_eps = bool(posthoc), float(norm_eps)
        self.logit_scale = self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        w = self.weight / (_norm(self.weight, self.norm_eps) + self.gamma)
        f_unit = _unit(features, self.norm_eps)
        if self.posthoc and not self.training:
            m = self.moving_ed
            # torch's per-sample cosine similarity (its tiny eps keeps m = 0 finite).
            cos = F.cosine_similarity(features, m, dim=1).unsqueeze(1)
            return self.scale * ((f_unit - self.alpha * cos * m) @ w.t()) + self.bias
        logits = self.scale * (f_unit @ w.t()) + self.bias
        self._update_moving(f_unit)
        return logits


@HEADS.register("cos_plus")
class CosPlusHead(_MovingAverageMixin, nn.Module):
    """RoBal's scale-invariant classifier: ``z_c = scale·⟨f/‖f‖^η, w_c/(‖w_c‖^η + γ)⟩ + b_c``.

    In train mode (with ``moving_avg``) it also accumulates ``m ← μ·m + mean(f̂)``, which is
    never used for prediction. Extra option keys (e.g. ``posthoc`` in the RoBal-R config) are
    ignored, as in the reference; they are kept in ``ignored_options``.
    """

    def __init__(
        self, in_dim: int, num_classes: int, class_counts: Sequence[int],
        scale: float = 16.0, gamma: float = 0.03125, eta: float = 1.0, bias: bool = False,
        moving_avg: bool = True, mu: float = 0.9, moving_avg_init: str = "zeros",
        norm_eps: float = 0.0, **ignored: Any,
    ) -> None:
        super().__init__()
        self.weight = _uniform_weight(num_classes, in_dim)
        self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=bool(bias))
        self._init_moving(in_dim, mu, moving_avg_init)
        self.scale, self.gamma, self.eta = float(scale), float(gamma), float(eta)
        self.moving_avg, self.norm_eps = bool(moving_avg), float(norm_eps)
        self.ignored_options = dict(ignored)
        self.logit_scale = self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f_norm = _norm(features, self.norm_eps)
        f = features / f_norm.pow(self.eta)
        w = self.weight / (_norm(self.weight, self.norm_eps).pow(self.eta) + self.gamma)
        logits = self.scale * (f @ w.t()) + self.bias
        if self.training and self.moving_avg:
            self._update_moving(features / f_norm)
        return logits


@HEADS.register("post_proc")
class PostProcHead(_PriorMixin, nn.Module):
    """Logit adjustment / RoBal boundary adjustment at inference (Menon et al. 2021; §2.3).

    ``classifier='FC'``: ``z = W f + b`` (parameters ``fc.*``). ``classifier='Cos'``:
    ``z_c = scale·⟨f̂, w_c/(‖w_c‖+γ)⟩`` — its ``bias`` parameter exists but is never added.
    ``posthoc``: ``z_c ← z_c − τ_p·log π_c`` in train and eval mode alike.
    """

    def __init__(
        self, in_dim: int, num_classes: int, class_counts: Sequence[int],
        classifier: str = "FC", tau_p: float = 1.0, posthoc: bool = False, bias: bool = False,
        scale: float = 10.0, gamma: float = 0.03125, norm_eps: float = 0.0,
    ) -> None:
        super().__init__()
        if classifier not in ("FC", "Cos"):
            raise ValueError(f"post_proc classifier must be 'FC' or 'Cos', got {classifier!r}")
        self.classifier = classifier
        if classifier == "FC":
            self.fc = nn.Linear(in_dim, num_classes)
            self.fc.bias.requires_grad_(bool(bias))
            self.logit_scale = 1.0
        else:
            self.weight = _uniform_weight(num_classes, in_dim)
            self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=bool(bias))
            self.logit_scale = float(scale)
        self.tau_p, self.posthoc = float(tau_p), bool(posthoc)
        self.scale, self.gamma, self.norm_eps = float(scale), float(gamma), float(norm_eps)
        self._register_prior(class_counts)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.classifier == "FC":
            logits = self.fc(features)
        else:
            w = self.weight / (_norm(self.weight, self.norm_eps) + self.gamma)
            logits = self.scale * (_unit(features, self.norm_eps) @ w.t())
        if self.posthoc:
            logits = logits - self.tau_p * self.log_prior
        return logits
