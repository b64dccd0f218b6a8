"""Running the evaluation attacks over a test set (METHODS.md §5.2–§5.3).

L∞, inputs in [0, 1], untargeted, white-box on the same forward used for prediction (the
evaluated head, post-hoc adjustments included). Each attack draws its random starts from its
own ``torch.Generator`` seeded from the protocol seed and the attack's name, so results do not
depend on which other attacks run or in which order. Every adversarial batch is checked to lie
in the eps-ball and in [0, 1] before it is counted.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine import attacks
from engine.autoattack_adapter import AA_LISTS, run_autoattack

PGD_RECORD_STEPS = (5, 10)  # the reference's PGD block also reports PGD-5 and PGD-10
BOUND_TOLERANCE = 1e-6  # float slack for the eps-ball / [0, 1] check
AA_STATE_EVERY_S = 10.0  # how stale the AutoAttack state may be when the process is killed
# Upper bounds of model forwards per attacked image (standard-version settings, 100 APGD
# iterations, 9 targets, 5 000 Square queries): AutoAttack's progress is reported in these units.
_AA_FORWARDS = {"apgd-ce": 100, "apgd-t": 100, "fab-t": 100, "square": 5000}
_AA_TARGETED = ("apgd-t", "fab-t")

ProgressFn = Callable[[str, int, int], None]


class AdversarialBoundError(AssertionError):
    """An attack returned an image outside the eps-ball or outside [0, 1]."""


def check_adversarial(x_adv: Tensor, x: Tensor, eps: float, name: str) -> None:
    """Raise :class:`AdversarialBoundError` unless ``|x_adv − x|∞ ≤ eps`` and ``x_adv ∈ [0, 1]``."""
    if x_adv.shape != x.shape:
        raise AdversarialBoundError(f"{name}: adversarial batch has shape {tuple(x_adv.shape)}, not {tuple(x.shape)}")
    if not bool(torch.isfinite(x_adv).all()):
        raise AdversarialBoundError(f"{name}: adversarial images contain NaN/Inf")
    dist = float((x_adv - x).abs().max()) if x.numel() else 0.0
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if dist > eps + BOUND_TOLERANCE or lo < -BOUND_TOLERANCE or hi > 1 + BOUND_TOLERANCE:
        raise AdversarialBoundError(
            f"{name}: adversarial images leave the threat model (L∞ distance {dist:.6g} > eps {eps:.6g} "
            f"or range [{lo:.6g}, {hi:.6g}] outside [0, 1])"
        )


def attack_seed(seed: int, attack: str) -> int:
    """A per-attack seed: independent streams for PGD, CW and MIM from one protocol seed."""
    return (int(seed) * 1_000_003 + zlib.crc32(attack.encode())) % (2**63)


def pgd_keys(num_steps: int) -> list[str]:
    """Result keys of the PGD block: ``pgd5``, ``pgd10`` (when shorter than the run) and ``pgd{k}``."""
    return [f"pgd{s}" for s in PGD_RECORD_STEPS if s < num_steps] + [f"pgd{num_steps}"]


@dataclass
class SuiteParams:
    eps: float
    step_size: float
    num_steps: int
    cw_kappa: float
    mim_decay: float
    batch_size: int
    seed: int
    aa_version: str


def _batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Iterator[tuple[slice, Tensor, Tensor]]:
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        yield sl, x[sl].to(device, non_blocking=True), y[sl].to(device, non_blocking=True)


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def clean_predictions(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device,
                      progress: ProgressFn) -> Tensor:
    out = torch.empty(len(x), dtype=torch.long)
    progress("clean", 0, len(x))
    for sl, xb, _ in _batches(x, y, batch_size, device):
        out[sl] = _predict(model, xb).cpu()
        progress("clean", sl.stop if sl.stop < len(x) else len(x), len(x))
    return out


class _IterateRecorder:
    """Cross-entropy for :func:`engine.attacks.pgd` that also keeps the predictions on chosen
    iterates. The gradient forward of step ``s + 1`` sees iterate ``s``, so PGD-5 and PGD-10 come
    from forwards PGD-20 runs anyway instead of two extra ones (``record_steps``)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)
        self.calls = 0
        self.preds: dict[int, Tensor] = {}

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.calls in self.steps:
            self.preds[self.calls] = logits.detach().argmax(1)
        self.calls += 1
        return F.cross_entropy(logits, y)


def run_gradient_attack(
    name: str, model: nn.Module, x: Tensor, y: Tensor, p: SuiteParams, device: torch.device,
    progress: ProgressFn,
) -> tuple[dict[str, Tensor], float | None]:
    """FGSM, the PGD block, CW∞ or MIM over all images, batch by batch.

    Returns ``{result key: adversarial predictions}`` (CPU, long) and, for FGSM, the share of
    exactly-zero input-gradient entries over all images.
    """
    keys = pgd_keys(p.num_steps) if name == "pgd" else [name]
    preds = {k: torch.empty(len(x), dtype=torch.long) for k in keys}
    gen = torch.Generator(device=device).manual_seed(attack_seed(p.seed, name))
    zero_entries, entries = 0.0, 0
    progress(name, 0, len(x))
    for sl, xb, yb in _batches(x, y, p.batch_size, device):
        if name == "fgsm":
            res = attacks.fgsm(model, xb, yb, p.eps)
            zero_entries += float(res.zero_grad_frac) * xb.numel()
            entries += xb.numel()
        elif name == "pgd":
            recorder = _IterateRecorder([s for s in PGD_RECORD_STEPS if s < p.num_steps])
            res = attacks.pgd(model, xb, yb, p.eps, p.step_size, p.num_steps, rand_start="symmetric",
                              loss_fn=recorder, generator=gen)
            for step, pred in recorder.preds.items():
                preds[f"pgd{step}"][sl] = pred.cpu()
        elif name == "cw":
            res = attacks.cw_linf(model, xb, yb, p.eps, p.step_size, p.num_steps, kappa=p.cw_kappa,
                                  generator=gen)
        elif name == "mim":
            res = attacks.mim(model, xb, yb, p.eps, p.step_size, p.num_steps, decay=p.mim_decay,
                              generator=gen)
        else:
            raise ValueError(f"unknown gradient attack {name!r}")
        check_adversarial(res.x_adv, xb, p.eps, name)
        preds[keys[-1]][sl] = _predict(model, res.x_adv).cpu()
        progress(name, min(sl.stop, len(x)), len(x))
    return preds, (zero_entries / entries if entries else None)


class _CountingForward(nn.Module):
    """Passes images to the model and reports the images forwarded as AutoAttack's progress."""

    def __init__(self, model: nn.Module, report: Callable[[int], None]) -> None:
        super().__init__()
        self.model = model
        self.report = report
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        self.report(self.images)
        return self.model(x)


def aa_forward_budget(version: str, num_classes: int, attacked: int) -> int:
    """Upper bound of image forwards AutoAttack spends on ``attacked`` images."""
    targets = max(1, min(9, num_classes - 1))
    per_image = sum(_AA_FORWARDS[a] * (targets if a in _AA_TARGETED else 1) for a in AA_LISTS[version])
    return max(1, attacked * per_image)


def run_aa_attack(
    model: nn.Module, x: Tensor, y: Tensor, p: SuiteParams, device: torch.device,
    progress: ProgressFn, state_path: Path | None, clean_correct: int,
) -> Tensor:
    """AutoAttack predictions on all images, resumable through ``state_path``.

    Progress counts image forwards against :func:`aa_forward_budget` for the ``clean_correct``
    points AutoAttack attacks (an upper bound: points broken early cost less), so ``done`` stays
    below ``total`` until the attack ends.
    """
    num_classes = int(_predict_logits_width(model, x[:1].to(device)))
    total = aa_forward_budget(p.aa_version, num_classes, clean_correct)

    def report(images: int) -> None:
        progress("aa", min(images, total - 1), total)

    progress("aa", 0, total)
    counted = _CountingForward(model, report).eval()
    x_adv = run_autoattack(counted, x, y, p.eps, version=p.aa_version, seed=p.seed,
                           batch_size=p.batch_size, device=device, state_path=state_path,
                           checkpoint_every_s=AA_STATE_EVERY_S)
    check_adversarial(x_adv, x, p.eps, "aa")
    preds = torch.empty(len(x), dtype=torch.long)
    for sl, xb, _ in _batches(x_adv, y, p.batch_size, device):
        preds[sl] = _predict(model, xb).cpu()
    progress("aa", total, total)
    return preds


def _predict_logits_width(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return model(x).shape[1]
