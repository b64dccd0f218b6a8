"""Adversarial-training step throughput: advlt's training step vs a reference-style loop.

One process, one model, one batch: both sides start from the same weights and take ``--steps``
optimiser steps each (5-step PGD inner maximisation + outer loss + backward + SGD), timed one
step at a time and alternately so that load from other processes hits both alike. Printed:
images/s of each and the median per-step speed ratio advlt / reference.

* advlt: ``engine.modes.create_mode(...).step`` + ``backward`` + ``SGD.step``, exactly as
  ``engine.trainer`` runs it (bf16 autocast + channels_last on CUDA via
  ``engine.train_support``; float32 on the CPU).
* reference: written here from METHODS.md §4.2 in the style of the reference/TRADES code: the
  attack switches ``model.eval()``, puts ``requires_grad`` on the input, calls
  ``loss.backward()`` (which also fills every parameter's ``.grad``), steps with
  ``x_adv.grad.sign()``, projects with ``torch.min/max`` and clamps; then ``model.train()``. For
  RoBal (``add_reg`` + ``trades``): four train-mode forwards — ``x_adv`` for the margin loss,
  ``x`` for the zero-weighted CE, then ``x`` and ``x_adv`` again for
  ``F.kl_div(log(softmax + 1e-12), softmax, reduction='sum') / B``. Always float32 (the
  reference has no mixed precision).

Cases: ``pgd_at`` (FC head, CE); RoBal (CosPlus head at scale 1, MultiMargin s 10, m 0.1,
τ_b 1.2, β_reg 6) with ``robal_forwards = "reference"`` (four forwards; its first-step loss is
checked to equal the reference loop's on the same batch and seed) and ``"efficient"`` (two).
Targets on the CPU: ≥ 1.0× for pgd_at, ≥ 1.3× for RoBal efficient.

    .venv/bin/python benchmarks/bench_train.py [--model small_cnn|wrn-16-4|wrn-34-10]
        [--batch 64] [--steps 12] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from engine.datasets import lt_counts  # noqa: E402
from engine.losses import create_loss  # noqa: E402
from engine.modes import Losses, create_mode  # noqa: E402
from engine.network import build_network  # noqa: E402
from engine.train_support import autocast_for, pick_device, prepare_model, uses_amp  # noqa: E402
from presets.schema import AttackConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402

BACKBONES = {
    "small_cnn": ("small_cnn", {"width": 32}),
    "wrn-16-4": ("wrn", {"depth": 16, "widen_factor": 4}),
    "wrn-34-10": ("wrn", {"depth": 34, "widen_factor": 10}),
}
ATTACK = AttackConfig(eps=0.031, step_size=0.0078, num_steps=5, rand_start="one_sided")
COUNTS = lt_counts(10, 0.02, 5000.0)  # CIFAR-10-LT, ρ = 50 (METHODS.md §1.3)
MARGIN = {"m": 0.1, "s": 10.0, "tau_b": 1.2, "tau_m": 0.0}
ROBAL_OPT = {"beta_adv": 1.0, "beta_nat": 0.0, "beta_reg": 6.0, "reg": "trades"}
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-4
SEED = 0


@dataclass(frozen=True)
class Case:
    name: str
    head: str
    head_opt: dict
    mode: str
    robal_forwards: str = "reference"
    target: float = 1.0  # CPU target ratio advlt / reference (0: none)


CASES = (
    Case("pgd_at", "fc", {}, "pgd_at", target=1.0),
    Case("robal reference (4 fwd)", "cos_plus", {"scale": 1.0}, "add_reg", "reference", 0.0),
    Case("robal efficient (2 fwd)", "cos_plus", {"scale": 1.0}, "add_reg", "efficient", 1.3),
)


# --- the reference-style loop (METHODS.md §4.2), independent of engine.modes/attacks ---------


def reference_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """5 CE steps from the one-sided start ``x + eps·U[0,1)`` (not clamped), eval mode."""
    eps, step = ATTACK.eps, ATTACK.step_size
    model.eval()
    noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    x_adv = x.detach() + eps * noise
    for _ in range(ATTACK.num_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        x_adv = x_adv.detach() + step * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv.detach()


def margin_loss(logits: torch.Tensor, y: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """RoBal's MultiMargin ``CE(s·(z − m·1_y) + τ_b·log π, y)`` (uniform margin, τ_m = 0)."""
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    z = MARGIN["s"] * (logits - MARGIN["m"] * onehot)
    return F.cross_entropy(z + MARGIN["tau_b"] * log_prior, y)


def reference_loss(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator, log_prior: torch.Tensor) -> torch.Tensor:
    x_adv = reference_pgd(model, x, y, generator)
    if case.mode == "pgd_at":
        return F.cross_entropy(model(x_adv), y)
    loss_adv = margin_loss(model(x_adv), y, log_prior)
    loss_nat = F.cross_entropy(model(x), y)
    p_nat = F.softmax(model(x), dim=1)
    log_p_adv = torch.log(F.softmax(model(x_adv), dim=1) + 1e-12)
    loss_robust = F.kl_div(log_p_adv, p_nat, reduction="sum") / x.shape[0]
    return ROBAL_OPT["beta_adv"] * loss_adv + ROBAL_OPT["beta_nat"] * loss_nat \
        + ROBAL_OPT["beta_reg"] * loss_robust


# --- setup -------------------------------------------------------------------------------


def run_config(case: Case, backbone: str, backbone_opt: dict, amp: str) -> RunConfig:
    return RunConfig(
        model=ModelConfig(backbone=backbone, backbone_opt=backbone_opt, head=case.head,
                          head_opt=case.head_opt),
        train=TrainConfig(mode=case.mode, mode_opt=ROBAL_OPT if case.mode == "add_reg" else {},
                          robal_forwards=case.robal_forwards, attack=ATTACK, amp=amp))


def optimizer_for(model: nn.Module) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


class Side:
    """One contender: its own copy of the model, optimiser and attack generator."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.optimizer = optimizer_for(model)
        self.generator = torch.Generator(device=device).manual_seed(SEED)
        self.loss = float("nan")


def engine_side(case: Case, base: nn.Module, cfg: RunConfig, device: torch.device) -> tuple:
    side = Side(prepare_model(copy.deepcopy(base), cfg, device), device)
    m = MARGIN if case.mode == "add_reg" else {}
    losses = Losses(outer=create_loss("multi_margin" if m else "ce", COUNTS, **m).to(device),
                    adv=create_loss("ce", COUNTS).to(device),
                    nat=create_loss("ce", COUNTS).to(device))
    mode = create_mode(case.mode, model=side.model, losses=losses, attack=ATTACK,
                       mode_opt=dict(cfg.train.mode_opt), class_counts=COUNTS,
                       robal_forwards=case.robal_forwards, generator=side.generator)
    amp = uses_amp(cfg, device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(cfg, device):  # exactly the trainer's loop body
            out = mode.step(x, y, 1)
        side.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        side.optimizer.step()
        side.loss = out.loss.detach()

    side.model.train()
    return side, step


def reference_side(case: Case, base: nn.Module, device: torch.device) -> tuple:
    side = Side(copy.deepcopy(base).to(device), device)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    log_prior = (counts / counts.sum()).log().float().to(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = reference_loss(case, side.model, x, y, side.generator, log_prior)
        side.optimizer.zero_grad()  # also clears what the attack's backward put there
        loss.backward()
        side.optimizer.step()
        side.loss = loss.detach()

    side.model.train()
    return side, step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step(x, y)
    sync(device)
    return time.perf_counter() - start


def race(a: Callable, b: Callable, x: torch.Tensor, y: torch.Tensor, steps: int,
         device: torch.device) -> tuple[float, float, float]:
    """Images/s of ``a`` and ``b`` and the median per-pair speed ratio a/b, timing the two one
    step at a time, alternately and in alternating order, so that load from other processes
    on a shared machine falls on both alike."""
    time_a, time_b, ratios = 0.0, 0.0, []
    for i in range(steps):
        if i % 2 == 0:
            ta, tb = timed(a, x, y, device), timed(b, x, y, device)
        else:
            tb, ta = timed(b, x, y, device), timed(a, x, y, device)
        time_a, time_b = time_a + ta, time_b + tb
        ratios.append(tb / ta)
    n = steps * x.shape[0]
    return n / time_a, n / time_b, statistics.median(ratios)


def first_step_losses(case: Case, base: nn.Module, spec: tuple, x: torch.Tensor,
                      y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Loss of one step of each side from the same weights, batch and seed, in float32."""
    cfg = run_config(case, *spec, amp="off")
    eng, eng_step = engine_side(case, base, cfg, device)
    ref, ref_step = reference_side(case, base, device)
    eng_step(x, y)
    ref_step(x, y)
    return float(eng.loss), float(ref.loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BACKBONES), default="small_cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    spec = BACKBONES[args.model]
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, model {args.model}, "
          f"batch {args.batch}, {args.steps} steps each, torch {torch.__version__}")
    failed = []
    for case in CASES:
        torch.manual_seed(SEED)
        base = build_network(ModelConfig(backbone=spec[0], backbone_opt=spec[1], head=case.head,
                                         head_opt=case.head_opt), 10, 3, 32, COUNTS)
        if case.robal_forwards == "reference" and case.mode == "add_reg":
            eng_loss, ref_loss = first_step_losses(case, base, spec, x, y, device)
            same = eng_loss == ref_loss
            print(f"  {case.name}: first-step loss advlt {eng_loss!r} reference {ref_loss!r} "
                  f"({'identical' if same else f'|Δ| = {abs(eng_loss - ref_loss):.3g}'})")
            if not same:
                failed.append(f"{case.name}: losses differ")
        cfg = run_config(case, *spec, amp="auto")
        eng, eng_step = engine_side(case, base, cfg, device)
        ref, ref_step = reference_side(case, base, device)
        eng_step(x, y)  # warm-up (allocator, cuDNN, lazy init) outside the timings
        ref_step(x, y)
        e, r, ratio = race(eng_step, ref_step, x, y, args.steps, device)
        note = ""
        if device.type == "cpu" and case.target:
            ok = ratio >= case.target
            note = f"  target ≥ {case.target:.1f}×: {'ok' if ok else 'MISSED'}"
            if not ok:
                failed.append(f"{case.name}: {ratio:.2f}× < {case.target}×")
        print(f"  {case.name:<26} advlt {e:9.1f} img/s   reference {r:9.1f} img/s   "
              f"ratio {ratio:5.2f}×{note}")
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
