"""Attacks (engine/attacks.py) against METHODS.md §4.2 / §5.3 on a tiny CPU model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.attacks import (
    AttackResult,
    cw_linf,
    cw_margin_loss,
    fgsm,
    mim,
    pgd,
    random_start,
    trades_kl_attack,
)
from toy import fit_linear

EPS, STEP = 0.031, 0.0078
C, N = 4, 256


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of 1×8×8 images whose means differ by less than the eps-ball can bridge."""
    g = torch.Generator().manual_seed(0)
    means = 0.5 + 0.015 * (torch.randint(0, 2, (C, 1, 8, 8), generator=g).float() * 2 - 1)
    y = torch.arange(N) % C
    x = (means[y] + 0.02 * torch.randn(N, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained():
    """An undefended linear classifier trained in the test to (near) perfect clean accuracy."""
    x, y = _blobs()
    model = fit_linear(x, y, C)
    return model, x, y


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ATTACKS = {
    "fgsm": lambda f, x, y, g: fgsm(f, x, y, EPS),
    "pgd20": lambda f, x, y, g: pgd(f, x, y, EPS, STEP, 20, generator=g),
    "pgd_train": lambda f, x, y, g: pgd(f, x, y, EPS, STEP, 5, rand_start="one_sided", generator=g),
    "pgd_gauss": lambda f, x, y, g: pgd(f, x, y, EPS, STEP, 5, rand_start="gaussian", generator=g),
    "cw": lambda f, x, y, g: cw_linf(f, x, y, EPS, STEP, 20, generator=g),
    "mim": lambda f, x, y, g: mim(f, x, y, EPS, STEP, 20, generator=g),
    "trades": lambda f, x, y, g: trades_kl_attack(f, x, EPS, STEP, 5, generator=g),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_stays_in_threat_model_and_leaves_model_alone(trained, name):
    model, x, y = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ATTACKS[name](model, x, y, _gen())
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == x.shape and not res.x_adv.requires_grad
    assert (res.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert res.x_adv.min().item() >= 0.0 and res.x_adv.max().item() <= 1.0
    assert _acc(model, res.x_adv, y) <= _acc(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_undefended_model_is_broken(trained):
    model, x, y = trained
    clean = _acc(model, x, y)
    pgd_acc = _acc(model, pgd(model, x, y, EPS, STEP, 20, generator=_gen()).x_adv, y)
    cw_acc = _acc(model, cw_linf(model, x, y, EPS, STEP, 20, generator=_gen()).x_adv, y)
    mim_acc = _acc(model, mim(model, x, y, EPS, STEP, 20, generator=_gen()).x_adv, y)
    assert clean >= 0.9
    assert pgd_acc <= 0.05
    assert cw_acc <= pgd_acc + 0.1 and mim_acc <= pgd_acc + 0.1


@pytest.mark.parametrize("name", ["pgd20", "pgd_train", "pgd_gauss", "cw", "mim", "trades"])
def test_fixed_generator_seed_reproduces(trained, name):
    model, x, y = trained
    a = ATTACKS[name](model, x, y, _gen(7)).x_adv
    b = ATTACKS[name](model, x, y, _gen(7)).x_adv
    c = ATTACKS[name](model, x, y, _gen(8)).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_start_modes():
    x = torch.full((2000, 3), 0.99)
    sym = random_start(x, EPS, "symmetric", _gen())
    one = random_start(x, EPS, "one_sided", _gen())
    gau = random_start(x, EPS, "gaussian", _gen())
    d_sym, d_one = sym - x, one - x
    assert d_sym.abs().max() <= EPS + 1e-6 and d_sym.min() < -0.9 * EPS and d_sym.max() > 0.9 * EPS
    assert (one >= x).all() and d_one.max() <= EPS + 1e-6 and d_one.max() > 0.9 * EPS
    assert abs((gau - x).std().item() - 0.001) < 1e-4
    # The reference does not clamp the start: 0.99 + noise goes above 1 ...
    assert sym.max() > 1.0 and one.max() > 1.0
    # ... unless asked to.
    assert random_start(x, EPS, "one_sided", _gen(), clamp_start=True).max() <= 1.0
    with pytest.raises(ValueError):
        random_start(x, EPS, "uniform", _gen())


def test_fgsm_matches_closed_form_for_linear_model(trained):
    model, x, y = trained
    linear = model[1]
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
        grad = ((p - F.one_hot(y, C).float()) @ linear.weight).view_as(x)  # ∇_x CE up to 1/B
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    res = fgsm(model, x, y, EPS)
    assert torch.allclose(res.x_adv, expected)
    assert res.zero_grad_frac is not None and res.zero_grad_frac < 0.05


def test_fgsm_zero_gradient_share_flags_saturated_softmax(trained):
    model, x, y = trained
    saturated = fgsm(lambda v: 1000.0 * model(v), x, y, EPS)
    assert saturated.zero_grad_frac > 0.9
    # Where the gradient is exactly zero FGSM cannot move the image.
    moved = (saturated.x_adv != x).flatten(1).any(1).float().mean().item()
    assert moved < 0.1


def test_pgd_records_intermediate_logits(trained):
    model, x, y = trained
    res = pgd(model, x, y, EPS, STEP, 20, record_steps=(5, 10), generator=_gen(3))
    assert set(res.step_logits) == {5, 10}
    five = pgd(model, x, y, EPS, STEP, 5, generator=_gen(3)).x_adv
    with torch.no_grad():
        assert torch.allclose(res.step_logits[5], model(five))
    assert res.step_logits[10].shape == (N, C) and not res.step_logits[10].requires_grad
    with pytest.raises(ValueError):
        pgd(model, x, y, EPS, STEP, 5, record_steps=(10,))


def test_pgd_single_step_without_start_is_fgsm(trained):
    model, x, y = trained
    one = pgd(model, x, y, EPS, EPS, 1, rand_start=None)
    assert torch.equal(one.x_adv, fgsm(model, x, y, EPS).x_adv)


def test_attacks_work_inside_no_grad(trained):
    model, x, y = trained
    with torch.no_grad():
        res = pgd(model, x, y, EPS, STEP, 3, generator=_gen())
    assert not torch.equal(res.x_adv, x)


def test_pgd_accepts_custom_loss(trained):
    model, x, y = trained
    # Descending CE (ascending its negative) must keep every correctly classified point correct.
    res = pgd(model, x, y, EPS, STEP, 5, loss_fn=lambda z, t: -F.cross_entropy(z, t), generator=_gen())
    assert _acc(model, res.x_adv, y) >= _acc(model, x, y)


def test_cw_margin_loss_formula():
    g = _gen(5)
    z = torch.randn(6, 5, generator=g) * 30
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = 0.0
    for i in range(6):
        other = max(z[i, c].item() for c in range(5) if c != y[i])
        expected += max(z[i, y[i]].item() - other + 50.0, 0.0)
    assert cw_margin_loss(z, y).item() == pytest.approx(-expected / 6, rel=1e-6)


def test_cw_invariant_to_global_logit_rescale(trained):
    model, x, y = trained
    a = cw_linf(model, x, y, EPS, STEP, 20, generator=_gen(11)).x_adv
    b = cw_linf(lambda v: 10.0 * model(v), x, y, EPS, STEP, 20, generator=_gen(11)).x_adv
    with torch.no_grad():
        z = 10.0 * model(torch.cat([x, a]))
    # The hinge is active at 10× scale at the clean point and at the end of the path ...
    yy = torch.cat([y, y])
    correct = z.gather(1, yy[:, None]).squeeze(1)
    wrong = z.masked_fill(F.one_hot(yy, C).bool(), -float("inf")).amax(1)
    assert (correct - wrong + 50.0 > 0).all()
    # ... so the sign steps, and therefore the adversarial images, coincide.
    assert torch.equal(a, b)


def test_mim_without_momentum_is_pgd(trained):
    model, x, y = trained
    a = mim(model, x, y, EPS, STEP, 10, decay=0.0, generator=_gen(4)).x_adv
    b = pgd(model, x, y, EPS, STEP, 10, rand_start="symmetric", generator=_gen(4)).x_adv
    assert torch.equal(a, b)


def test_mim_survives_zero_gradients(trained):
    model, x, y = trained
    res = mim(lambda v: 1000.0 * model(v), x, y, EPS, STEP, 5, generator=_gen())
    assert torch.isfinite(res.x_adv).all()


def test_trades_attack_increases_kl(trained):
    model, x, _ = trained

    def kl(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            p = F.softmax(model(x), 1)
            return F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="sum").item()

    start = trades_kl_attack(model, x, EPS, STEP, 0, generator=_gen(2)).x_adv
    assert abs((start - x).std().item() - 0.001) < 2e-4  # gaussian TRADES start
    adv = trades_kl_attack(model, x, EPS, STEP, 5, generator=_gen(2)).x_adv
    assert kl(adv) > 10 * kl(start)


def test_tiny_conv_model_batch_of_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.rand(1, 3, 8, 8)
    y = torch.tensor([2])
    for res in (pgd(model, x, y, EPS, STEP, 3, generator=_gen()), mim(model, x, y, EPS, STEP, 3),
                cw_linf(model, x, y, EPS, STEP, 3), fgsm(model, x, y, EPS)):
        assert (res.x_adv - x).abs().max() <= EPS + 1e-6
        assert 0.0 <= res.x_adv.min() and res.x_adv.max() <= 1.0
    assert all(p.grad is None for p in model.parameters())
