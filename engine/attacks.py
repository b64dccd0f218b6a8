"""White-box L∞ attacks on images in [0, 1] (METHODS.md §4.2 training start, §5.3 evaluation).

Every attack here

* works in the L∞ threat model on inputs in ``[0, 1]`` (the model's normalisation, if any, lives
  inside ``forward``);
* takes ``forward``: a callable mapping images to **logits**. The caller puts the model in eval
  mode; attacks never touch the model, and take gradients only w.r.t. the input through
  ``torch.autograd.grad`` (parameter ``.grad`` fields stay as they were);
* draws randomness only from the explicit ``generator`` (``None`` = the global RNG of the input's
  device);
* returns detached tensors.

The PGD family follows the reference update: sign step, projection onto the eps-ball around the
clean image, clamp to [0, 1] after every step; the random start is *not* clamped before the first
step (reference behaviour, METHODS.md §9 defect 2), unless ``clamp_start=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

Forward = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

START_MODES = ("symmetric", "one_sided", "gaussian")
TRADES_START_STD = 0.001  # TRADES / reference gaussian start: x + 0.001·N(0, 1)
CW_MASK = 1000.0  # reference CW∞: the target logit is replaced by −1000 before the max


@dataclass(frozen=True)
class AttackResult:
    """Outcome of one attack on one batch."""

    x_adv: Tensor  # adversarial images, detached, same shape/device as the clean batch
    zero_grad_frac: float | None = None  # FGSM only: share of exactly-zero input-gradient entries
    step_logits: dict[int, Tensor] = field(default_factory=dict)  # PGD: logits of recorded iterates


def _noise(x: Tensor, generator: torch.Generator | None, kind: str) -> Tensor:
    """U[0,1) or N(0,1) noise shaped like ``x``, drawn from ``generator`` on its own device.

    A CPU generator cannot fill a CUDA tensor, so the noise is made where the generator lives and
    then moved; seeded runs are therefore reproducible for a given generator device.
    """
    device = generator.device if generator is not None else x.device
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def random_start(
    x: Tensor,
    eps: float,
    mode: str,
    generator: torch.Generator | None = None,
    clamp_start: bool = False,
) -> Tensor:
    """Starting point of an iterative L∞ attack on [0, 1] images.

    ``symmetric``: ``x + U[−eps, eps]`` (evaluation PGD/CW/MIM, METHODS.md §5.3).
    ``one_sided``: ``x + eps·U[0, 1)``, the reference's training start (non-negative noise only,
    METHODS.md §4.2 / §9 defect 2).
    ``gaussian``: ``x + 0.001·N(0, 1)`` (TRADES, Zhang et al. ICML 2019; independent of eps).
    The reference does not clamp the start to [0, 1]; ``clamp_start=True`` does.
    """
    x = x.detach()
    if mode == "symmetric":
        start = x + (2.0 * _noise(x, generator, "uniform") - 1.0) * eps
    elif mode == "one_sided":
        start = x + eps * _noise(x, generator, "uniform")
    elif mode == "gaussian":
        start = x + TRADES_START_STD * _noise(x, generator, "normal")
    else:
        raise ValueError(f"unknown random start mode {mode!r}; allowed: {', '.join(START_MODES)}")
    return start.clamp(0.0, 1.0) if clamp_start else start


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def _input_grad(forward: Forward, loss_fn: LossFn, x_adv: Tensor, y: Tensor) -> Tensor:
    """Gradient of ``loss_fn(forward(x_adv), y)`` w.r.t. ``x_adv`` only."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(forward(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def fgsm(forward: Forward, x: Tensor, y: Tensor, eps: float) -> AttackResult:
    """FGSM (Goodfellow et al., ICLR 2015), L∞, inputs in [0, 1], no random start.

    ``x_adv = clamp(x + eps·sign(∇_x CE), 0, 1)``. Also reports the share of input-gradient
    entries that are exactly zero (the reference's ``zero_grad`` gradient-masking indicator,
    METHODS.md §5.3): close to 1 means a saturated softmax hides the gradient.
    """
    x = x.detach()
    grad = _input_grad(forward, _ce, x, y)
    x_adv = (x + eps * grad.sign()).clamp(0.0, 1.0)
    zero_frac = float((grad == 0).float().mean().item()) if grad.numel() else 0.0
    return AttackResult(x_adv=x_adv.detach(), zero_grad_frac=zero_frac)


def _check_steps(record_steps: Iterable[int], num_steps: int) -> frozenset[int]:
    steps = frozenset(int(s) for s in record_steps)
    bad = sorted(s for s in steps if not 0 <= s <= num_steps)
    if bad:
        raise ValueError(f"record_steps {bad} outside 0..{num_steps}")
    return steps


def pgd(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float,
    num_steps: int,
    rand_start: str | None = "symmetric",
    loss_fn: LossFn | None = None,
    record_steps: Iterable[int] = (),
    generator: torch.Generator | None = None,
    clamp_start: bool = False,
) -> AttackResult:
    """Projected gradient descent (Madry et al., ICLR 2018), L∞, inputs in [0, 1].

    ``num_steps`` sign-gradient ascent steps of ``loss_fn(forward(x_adv), y)`` (default:
    mean cross-entropy on the logits), each followed by projection onto ``{|x_adv − x|∞ ≤ eps}``
    and a clamp to [0, 1]. ``rand_start`` picks the start (see :func:`random_start`; ``None``
    starts at ``x``). Evaluation PGD-20 uses the symmetric start; the training inner maximisation
    (5 steps, one-sided start, CE) calls this same function. ``record_steps`` (e.g. ``(5, 10)``)
    stores the logits of those iterates with one extra no-grad forward each (reference PGD-5 /
    PGD-10 keys, METHODS.md §5.3); step 0 is the start point. ``loss_fn`` receives ``y`` as given,
    so ``y`` may also be a soft target (see :func:`trades_kl_attack`).
    """
    loss_fn = _ce if loss_fn is None else loss_fn
    record = _check_steps(record_steps, num_steps)
    x = x.detach()
    # Projecting onto the eps-ball and then clamping to [0, 1] equals one clamp onto the
    # intersection of both boxes (x lies in [0, 1]), so the loop needs a single clamp per step.
    lower = (x - eps).clamp(min=0.0)
    upper = (x + eps).clamp(max=1.0)
    if rand_start is None:
        x_adv = x.clone()
    else:
        x_adv = random_start(x, eps, rand_start, generator, clamp_start=clamp_start)
    step_logits: dict[int, Tensor] = {}
    if 0 in record:
        with torch.no_grad():
            step_logits[0] = forward(x_adv).detach()
    for step in range(1, num_steps + 1):
        grad = _input_grad(forward, loss_fn, x_adv, y)
        x_adv = torch.clamp(x_adv.detach() + step_size * grad.sign(), lower, upper)
        if step in record:
            with torch.no_grad():
                step_logits[step] = forward(x_adv).detach()
    return AttackResult(x_adv=x_adv.detach(), step_logits=step_logits)


def cw_margin_loss(logits: Tensor, y: Tensor, kappa: float = 50.0) -> Tensor:
    """CW∞ objective of the reference: ``−(1/B)·Σ_i max(z_y − max_{c≠y} z_c + κ, 0)``.

    The max over non-targets uses the reference's masking trick (target entry replaced by −1000),
    which equals the exact max whenever some non-target logit exceeds −1000.
    """
    onehot = F.one_hot(y, num_classes=logits.shape[1]).bool()
    correct = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    wrong = logits.masked_fill(onehot, -CW_MASK).amax(dim=1)
    return -torch.clamp(correct - wrong + kappa, min=0.0).mean()


def cw_linf(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float,
    num_steps: int,
    kappa: float = 50.0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """CW∞ as used in adversarial-training papers: PGD on the CW margin (Carlini & Wagner,
    S&P 2017), L∞, inputs in [0, 1], symmetric random start (METHODS.md §5.3).

    Sign-ascent on :func:`cw_margin_loss` with κ = 50 regardless of logit scale. While the hinge
    is active, the update is invariant to a global positive rescaling of the logits (§5.7).
    """
    return pgd(
        forward, x, y, eps, step_size, num_steps, rand_start="symmetric",
        loss_fn=lambda logits, target: cw_margin_loss(logits, target, kappa), generator=generator,
    )


def mim(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float,
    num_steps: int,
    decay: float = 1.0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Momentum iterative method (Dong et al., CVPR 2018), L∞, inputs in [0, 1], CE loss,
    symmetric random start (METHODS.md §5.3).

    ``g_t = μ·g_{t−1} + ∇ / mean(|∇|)`` with the mean taken per sample over all non-batch
    dimensions, ``x ← x + α·sign(g_t)``, project, clamp. A sample whose gradient is exactly zero
    keeps its momentum (the reference would divide by zero and produce NaN images).
    """
    x = x.detach()
    lower = (x - eps).clamp(min=0.0)
    upper = (x + eps).clamp(max=1.0)
    x_adv = random_start(x, eps, "symmetric", generator)
    momentum = torch.zeros_like(x)
    reduce_dims = tuple(range(1, x.dim()))
    tiny = torch.finfo(x.dtype).tiny
    for _ in range(num_steps):
        grad = _input_grad(forward, _ce, x_adv, y)
        scale = grad.abs().mean(dim=reduce_dims, keepdim=True).clamp(min=tiny)
        momentum = decay * momentum + grad / scale
        x_adv = torch.clamp(x_adv.detach() + step_size * momentum.sign(), lower, upper)
    return AttackResult(x_adv=x_adv.detach())


def _kl_sum(logits_adv: Tensor, p_nat: Tensor) -> Tensor:
    """``KL_sum(p_nat ‖ softmax(logits_adv))`` (TRADES' ``KLDivLoss(size_average=False)``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_nat, reduction="sum")


def trades_kl_attack(
    forward: Forward,
    x: Tensor,
    eps: float,
    step_size: float,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """TRADES inner maximisation (Zhang et al., ICML 2019), L∞, inputs in [0, 1].

    Start ``x + 0.001·N(0, 1)`` (not clamped), then ``num_steps`` sign-ascent steps on
    ``KL_sum(softmax(forward(x)) ‖ softmax(forward(x_adv)))``, project, clamp. No labels are
    used; the clean distribution is computed once (eval-mode forwards are deterministic).
    """
    x = x.detach()
    with torch.no_grad():
        p_nat = F.softmax(forward(x), dim=1).detach()
    return pgd(
        forward, x, p_nat, eps, step_size, num_steps, rand_start="gaussian",
        loss_fn=_kl_sum, generator=generator,
    )
