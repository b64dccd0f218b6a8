"""Training modes: one step's inner maximisation and outer objective (METHODS.md §4.2, §4.3).

Every adversarial mode generates its examples with the model in **eval mode** (BatchNorm running
statistics, heads' eval behaviour) and gradients only w.r.t. the input, then computes the loss
forwards with each module back in the train/eval state the caller had set (normally train mode;
:func:`engine.optim.set_train_mode` keeps truly frozen BatchNorm in eval). L∞ threat model,
inputs in [0, 1], sign-gradient steps (see ``engine.attacks``).

Modes (registered names are the preset values):

* ``plain`` — ``loss(f(x), y)``.
* ``pgd_at`` — Madry et al. 2018: PGD on plain CE, outer loss on ``x_adv`` only, optional
  deferred re-weighting / margins (§4.3).
* ``trades`` — Zhang et al. 2019: KL attack from a Gaussian start, ``CE + β·KL/B``.
* ``inner_loss`` — PGD ascending ``adv_loss``, outer loss on ``x_adv``.
* ``add_reg`` — RoBal (Wu et al. 2021): ``β_adv·loss(f(x_adv)) + β_nat·nat_loss(f(x)) + β_reg·R``.
* ``avmix`` — adversarial vertex mixup (Lee et al. 2020) with soft labels.

Steps never call ``.item()`` or branch on tensor values, so a GPU loop stays asynchronous.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine import attacks
from engine.losses import dm_margins, drw_weights, subtract_target_margin
from engine.registry import Registry
from presets.schema import ROBAL_FORWARDS, AttackConfig

TRAIN_MODES: Registry = Registry("train mode")


@dataclass
class Losses:
    """The three loss modules a network owns (METHODS.md §2.4)."""

    outer: nn.Module  # the training loss on the examples the mode trains on
    adv: nn.Module  # the loss the inner maximisation ascends (inner_loss, add_reg)
    nat: nn.Module  # the natural-example loss (add_reg)


@dataclass
class StepOutput:
    loss: Tensor  # scalar, to backward
    logits_adv: Optional[Tensor]  # detached logits of the adversarial (or mixed) batch
    logits_nat: Optional[Tensor]  # detached logits of the clean batch, when it was forwarded


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for adversarial generation.

    Parameters stop requiring grad so an attack can never accumulate into ``param.grad`` and
    backward skips weight gradients (input gradients are unchanged). Each module's ``training``
    flag and each parameter's ``requires_grad`` are restored afterwards.
    """
    training = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in params:
            p.requires_grad_(flag)


def _uniform(n: int, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """``U[0,1)`` of shape (n,), drawn from ``generator`` on its own device, then moved."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


class TrainMode:
    """Base: holds the model, losses and attack settings; subclasses implement :meth:`step`."""

    defaults: dict[str, Any] = {}  # the mode's options and their defaults
    aliases: dict[str, str] = {}  # reference spellings of option names
    supports_deffer = False  # deferred re-weighting / margins (pgd_at only)

    def __init__(
        self,
        *,
        model: nn.Module,
        losses: Losses,
        attack: AttackConfig,
        mode_opt: Optional[dict] = None,
        class_counts: list[int],
        deffer: Optional[dict] = None,
        robal_forwards: str = "reference",
        generator: Optional[torch.Generator] = None,
        attack_model: Optional[nn.Module] = None,
    ) -> None:
        if robal_forwards not in ROBAL_FORWARDS:
            raise ValueError(f"robal_forwards must be one of {ROBAL_FORWARDS}, got {robal_forwards!r}")
        self.model = model
        # Under DDP ``model`` is the wrapper (loss forwards: gradients all-reduced) and
        # ``attack_model`` the module inside it: the inner maximisation must not go through DDP
        # (no buffer broadcasts, no reducer bookkeeping for forwards that never backward).
        self.attack_model = attack_model if attack_model is not None else model
        self.losses = losses
        self.attack = attack
        self.class_counts = list(class_counts)
        self.robal_forwards = robal_forwards
        self.generator = generator
        self.opt = self._parse_opt(dict(mode_opt or {}))
        if deffer and not self.supports_deffer:
            raise ValueError("deffer (DRW/DM, METHODS.md §4.3) applies to train mode pgd_at only")
        self.deffer = deffer

    def _parse_opt(self, mode_opt: dict) -> dict[str, Any]:
        opt = dict(self.defaults)
        unknown = []
        for key, value in mode_opt.items():
            name = self.aliases.get(key, key)
            if name in opt:
                opt[name] = value
            else:
                unknown.append(key)
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"unknown option(s) {unknown} for train mode; allowed: {allowed}")
        return opt

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        raise NotImplementedError

    def _pgd(self, x: Tensor, y: Tensor, loss_fn: Optional[Callable] = None) -> Tensor:
        """PGD from the configured start (reference: one-sided ``x + eps·U[0,1)``)."""
        with attack_mode(self.attack_model):
            result = attacks.pgd(
                self.attack_model,
                x,
                y,
                eps=self.attack.eps,
                step_size=self.attack.step_size,
                num_steps=self.attack.num_steps,
                rand_start=self.attack.rand_start,
                loss_fn=loss_fn,
                generator=self.generator,
            )
        return _x_adv(result)


def _x_adv(result: Any) -> Tensor:
    """The detached adversarial batch of an ``AttackResult`` (or of a bare tensor)."""
    return getattr(result, "x_adv", result).detach()


def create_mode(name: str, **kwargs: Any) -> TrainMode:
    """Build the registered train mode ``name`` (keyword arguments as :class:`TrainMode`)."""
    return TRAIN_MODES.create(name, **kwargs)


@TRAIN_MODES.register("plain")
class PlainMode(TrainMode):
    """Standard training: ``loss(f(x), y)``."""

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        logits = self.model(x)
        return StepOutput(self.losses.outer(logits, y), None, logits.detach())


class Deferred:
    """Deferred re-weighting (DRW) / deferred margins (DM), METHODS.md §4.3, for ``pgd_at``.

    ``deffer`` is ``{"DRW": {...}}`` and/or ``{"DM": {...}}``; options (in the sub-dict or at the
    top level, reference spellings accepted): ``epoch_divides``/``epoch_devides`` (default
    (0, 40)), ``betas``/``DRW_betas`` (default (0, 0.9999)), ``maxs``/``DM_maxs`` (default
    (0, 0.5)). Values depend only on the epoch and are cached per (epoch, device).
    """

    option_keys = ("epoch_divides", "epoch_devides", "betas", "DRW_betas", "maxs", "DM_maxs")

    def __init__(self, deffer: dict, class_counts: list[int]) -> None:
        subs = [v for k, v in deffer.items() if k in ("DRW", "DM") and isinstance(v, dict)]
        keys = [k for d in (deffer, *subs) for k in d if k not in ("DRW", "DM")]
        unknown = sorted({k for k in keys if k not in self.option_keys})
        if unknown:
            raise ValueError(f"unknown deffer option(s) {unknown}; allowed: DRW, DM, "
                             + ", ".join(self.option_keys))
        flat = {k: v for k, v in deffer.items() if k not in ("DRW", "DM")}
        self.counts = list(class_counts)
        self.drw = self._sub(deffer, "DRW", flat)
        self.dm = self._sub(deffer, "DM", flat)
        if self.drw is None and self.dm is None:
            raise ValueError("deffer enables neither DRW nor DM")
        self._cache: dict[tuple, Tensor] = {}

    @staticmethod
    def _sub(deffer: dict, key: str, flat: dict) -> Optional[dict]:
        if deffer.get(key) in (None, False):  # an empty dict enables it with the defaults
            return None
        sub = deffer[key] if isinstance(deffer[key], dict) else {}
        opt = {**flat, **sub}
        return {
            "epoch_divides": tuple(opt.get("epoch_divides", opt.get("epoch_devides", (0, 40)))),
            "betas": tuple(opt.get("betas", opt.get("DRW_betas", (0, 0.9999)))),
            "maxs": tuple(opt.get("maxs", opt.get("DM_maxs", (0, 0.5)))),
        }

    def _cached(self, kind: str, epoch: int, device: torch.device, fn: Callable[[], Any]) -> Tensor:
        key = (kind, epoch, str(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(fn(), dtype=torch.float32).to(device)
        return self._cache[key]

    def weights(self, epoch: int, device: torch.device) -> Optional[Tensor]:
        if self.drw is None:
            return None
        o = self.drw
        return self._cached(
            "drw", epoch, device, lambda: drw_weights(self.counts, epoch, o["epoch_divides"], o["betas"])
        )

    def apply_margins(self, logits: Tensor, y: Tensor, epoch: int) -> Tensor:
        """Subtract the class margin ``m_y`` from each target logit (no scale factor), out of place."""
        if self.dm is None:
            return logits
        o = self.dm
        margins = self._cached(
            "dm", epoch, logits.device, lambda: dm_margins(self.counts, epoch, o["epoch_divides"], o["maxs"])
        )
        return subtract_target_margin(logits, y, margins)


@TRAIN_MODES.register("pgd_at")
class PGDATMode(TrainMode):
    """Madry PGD-AT: PGD on **plain CE** regardless of the loss config; outer loss on ``x_adv``."""

    supports_deffer = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferred = Deferred(self.deffer, self.class_counts) if self.deffer else None

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        x_adv = self._pgd(x, y)
        logits = self.model(x_adv)
        weight = None
        target_logits = logits
        if self.deferred is not None:
            weight = self.deferred.weights(epoch, logits.device)
            target_logits = self.deferred.apply_margins(logits, y, epoch)
        loss = self.losses.outer(target_logits, y, weight)
        return StepOutput(loss, logits.detach(), None)


def kl_sum(logits_nat: Tensor, logits_adv: Tensor) -> Tensor:
    """``Σ_i Σ_c p_nat·(log p_nat − log p_adv)`` (TRADES' ``KLDivLoss(size_average=False)``)."""
    return F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="sum"
    )


@TRAIN_MODES.register("trades")
class TradesMode(TrainMode):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + β·(1/B)·KL_sum(p(x) ‖ p(x_adv))``, plain CE.

    The attack ascends the same KL from ``x + 0.001·N(0, 1)`` (``engine.attacks.trades_kl_attack``).
    """

    defaults = {"beta": 1.0}

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        with attack_mode(self.attack_model):
            result = attacks.trades_kl_attack(
                self.attack_model,
                x,
                eps=self.attack.eps,
                step_size=self.attack.step_size,
                num_steps=self.attack.num_steps,
                generator=self.generator,
            )
        x_adv = _x_adv(result)
        logits_nat = self.model(x)
        logits_adv = self.model(x_adv)
        robust = kl_sum(logits_nat, logits_adv) / x.shape[0]
        loss = F.cross_entropy(logits_nat, y) + float(self.opt["beta"]) * robust
        return StepOutput(loss, logits_adv.detach(), logits_nat.detach())


@TRAIN_MODES.register("inner_loss")
class InnerLossMode(TrainMode):
    """PGD ascending ``adv_loss``; outer ``loss(f(x_adv), y)``."""

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        x_adv = self._pgd(x, y, loss_fn=self.losses.adv)
        logits = self.model(x_adv)
        return StepOutput(self.losses.outer(logits, y), logits.detach(), None)


# --- RoBal regularisers R(z_nat, z_adv, y); B = batch size; gradients flow through both. -------


def reg_trades(z_nat: Tensor, z_adv: Tensor, y: Tensor) -> Tensor:
    """``(1/B)·Σ_i Σ_c p_nat·(log p_nat − log(p_adv + 1e−12))`` (the reference's TRADES term).

    Computed as the reference computes it, ``KLDivLoss(size_average=False)(log(p_adv + 1e−12),
    p_nat) / B``, i.e. ``Σ xlogy(p_nat, p_nat) − p_nat·log(p_adv + 1e−12)``: the same floats,
    which matters because near the start of training the KL is a tiny difference of large
    terms (a ``log_softmax`` form differs from it by ~0.2 %). One deliberate difference: where
    ``p_nat`` underflows to 0 the reference's gradient is NaN; here it stays finite.
    """
    p_nat = F.softmax(z_nat, dim=1)
    log_p_adv = torch.log(F.softmax(z_adv, dim=1) + 1e-12)
    safe = p_nat.clamp_min(torch.finfo(p_nat.dtype).tiny)  # forward unchanged for p_nat > 0
    return (torch.xlogy(p_nat, safe) - p_nat * log_p_adv).sum() / z_nat.shape[0]


def reg_mart(z_nat: Tensor, z_adv: Tensor, y: Tensor) -> Tensor:
    """MART's robust term (Wang et al. 2020): ``(1/B)·Σ_i KL(p_nat,i ‖ p_adv,i)·(1 − p_nat,i[y_i])``.

    The reference's version returns a non-scalar (§9.1.9); this is the intended, standard
    formula (``log(p_adv + 1e−12)`` as in MART's code), which yields a scalar.
    """
    p_nat = F.softmax(z_nat, dim=1)
    log_p_adv = torch.log(F.softmax(z_adv, dim=1) + 1e-12)
    kl = (p_nat * (F.log_softmax(z_nat, dim=1) - log_p_adv)).sum(dim=1)
    true_prob = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    return (kl * (1.0 - true_prob)).sum() / z_nat.shape[0]


def reg_alp(z_nat: Tensor, z_adv: Tensor, y: Tensor) -> Tensor:
    """Adversarial logit pairing on probabilities: ``(1/B)·‖P_adv − P_nat‖_F`` over the batch."""
    diff = F.softmax(z_adv, dim=1) - F.softmax(z_nat, dim=1)
    return torch.linalg.vector_norm(diff) / z_nat.shape[0]


def reg_alp_2(z_nat: Tensor, z_adv: Tensor, y: Tensor) -> Tensor:
    """Adversarial logit pairing on logits: ``(1/B)·‖Z_adv − Z_nat‖_F``."""
    return torch.linalg.vector_norm(z_adv - z_nat) / z_nat.shape[0]


def reg_norm(z_nat: Tensor, z_adv: Tensor, y: Tensor) -> Tensor:
    """Logit norm penalty: ``(1/B)·‖Z_nat‖_F``."""
    return torch.linalg.vector_norm(z_nat) / z_nat.shape[0]


REGULARISERS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "trades": reg_trades,
    "mart": reg_mart,
    "alp": reg_alp,
    "alp_2": reg_alp_2,
    "norm": reg_norm,
}


@TRAIN_MODES.register("add_reg")
class AddRegMode(TrainMode):
    """RoBal's objective: ``β_adv·loss(f(x_adv)) + β_nat·nat_loss(f(x)) + β_reg·R``.

    The attack ascends ``adv_loss``. ``robal_forwards``:

    * ``"reference"`` — the reference's four train-mode forwards, in order ``x_adv`` (outer loss),
      ``x`` (nat loss, computed even when ``β_nat = 0``), then ``x`` and ``x_adv`` again for ``R``
      (only when ``reg != "none"``). BatchNorm running statistics (and CosPlus' moving average)
      get four momentum updates per batch, alternating clean/adversarial (§9.1.8).
    * ``"efficient"`` — two forwards (``x_adv``, then ``x``) reused for all three terms. Not a
      concatenated batch: that would change BN batch statistics. A train-mode forward normalises
      with the batch's own statistics, so repeating a forward with unchanged weights gives the
      same logits (no dropout in these models): the loss and its gradient equal the
      reference's up to float rounding. What differs is state: BN running statistics get two
      updates (adv, nat) instead of four (adv, nat, nat, adv), and CosPlus/TDESim moving averages
      two instead of four, which changes later eval-mode behaviour (training attacks,
      evaluation) slightly.
    """

    defaults = {"beta_adv": 1.0, "beta_nat": 0.0, "beta_reg": 0.0, "reg": "none"}
    aliases = {"reg_opt": "reg"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        reg = str(self.opt["reg"] or "none").lower()
        if reg != "none" and reg not in REGULARISERS:
            allowed = ", ".join(["none", *REGULARISERS])
            raise ValueError(f"unknown add_reg regulariser {self.opt['reg']!r}; allowed: {allowed}")
        self.reg = reg

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        x_adv = self._pgd(x, y, loss_fn=self.losses.adv)
        logits_adv = self.model(x_adv)
        logits_nat = self.model(x)
        loss = float(self.opt["beta_adv"]) * self.losses.outer(logits_adv, y)
        loss = loss + float(self.opt["beta_nat"]) * self.losses.nat(logits_nat, y)
        if self.reg != "none":
            if self.robal_forwards == "reference":
                z_nat = self.model(x)
                z_adv = self.model(x_adv)
            else:
                z_nat, z_adv = logits_nat, logits_adv
            loss = loss + float(self.opt["beta_reg"]) * REGULARISERS[self.reg](z_nat, z_adv, y)
        return StepOutput(loss, logits_adv.detach(), logits_nat.detach())


@TRAIN_MODES.register("avmix")
class AVmixMode(TrainMode):
    """Adversarial vertex mixup (Lee et al., CVPR 2020), reference constants (not configurable).

    ``x_v = x + γ·(x_adv − x)`` (γ = 2, not projected); per-sample ``α ~ U[0,1)``; input
    ``clamp(α·x + (1−α)·x_v, 0, 1)``; soft-label CE with target probability
    ``α·λ₁ + (1−α)·λ₂`` (λ₁ = 1, λ₂ = 0.1) and ``(α(1−λ₁) + (1−α)(1−λ₂))/(C−1)`` elsewhere.
    """

    gamma = 2.0
    lambda1 = 1.0
    lambda2 = 0.1

    def step(self, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        x_adv = self._pgd(x, y)
        x_vertex = x + self.gamma * (x_adv - x)
        alpha = _uniform(x.shape[0], x, self.generator)
        a = alpha.view(-1, *([1] * (x.dim() - 1)))
        x_mix = torch.clamp(a * x + (1 - a) * x_vertex, 0.0, 1.0)
        logits = self.model(x_mix)
        num_classes = logits.shape[1]
        # Soft targets and log-probabilities in float32 even under bf16 autocast.
        alpha = alpha.float().unsqueeze(1)
        on = alpha * self.lambda1 + (1 - alpha) * self.lambda2
        off = (alpha * (1 - self.lambda1) + (1 - alpha) * (1 - self.lambda2)) / (num_classes - 1)
        onehot = F.one_hot(y, num_classes).float()
        target = onehot * on + (1 - onehot) * off
        loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        return StepOutput(loss, logits.detach(), None)
