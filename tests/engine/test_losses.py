"""Losses and class-count helpers: METHODS.md §3 test vectors and formulas written out here."""
from __future__ import annotations

import math

import pytest
import torch

from engine.losses import (
    LOSSES,
    cb_weights,
    cdt_temperatures,
    create_loss,
    dm_margins,
    drw_weights,
    ldam_margins,
    log_prior,
    robal_margins,
    subtract_target_margin,
)
from presets import schema

COUNTS = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]  # CIFAR-10-LT 0.02
C, B = 10, 12


def _vec(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _close4(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual.float(), _vec(expected), atol=1.5e-4, rtol=0)


# ------------------------------------------------------------------ §3 test vectors


def test_log_prior_vector() -> None:
    _close4(log_prior(COUNTS), [-1.0293, -1.4641, -1.8987, -2.3335, -2.7689, -3.2044, -3.6384, -4.0743, -4.5096, -4.9414])


def test_ldam_margins_vector() -> None:
    _close4(ldam_margins(COUNTS, 0.5), [0.1880, 0.2096, 0.2337, 0.2605, 0.2905, 0.3239, 0.3610, 0.4026, 0.4488, 0.5000])


def test_cb_weights_vector() -> None:
    w = cb_weights(COUNTS, 0.9999)
    _close4(w, [0.0890, 0.1267, 0.1853, 0.2761, 0.4168, 0.6344, 0.9695, 1.4894, 2.2923, 3.5206])
    assert w.sum().item() == pytest.approx(10.0, abs=1e-5)
    assert torch.equal(cb_weights(COUNTS, 0.0), torch.ones(C))
    with pytest.raises(ValueError):
        cb_weights(COUNTS, 1.0)


def test_cdt_temperature_vector() -> None:
    _close4(cdt_temperatures(COUNTS, 0.3), [1.0000, 1.1393, 1.2980, 1.4788, 1.6852, 1.9204, 2.1874, 2.4930, 2.8408, 3.2336])


def test_robal_r_margin_vector() -> None:
    _close4(robal_margins(COUNTS, 0.1, 0.3, 10), [0.2174, 0.2043, 0.1913, 0.1782, 0.1652, 0.1521, 0.1391, 0.1260, 0.1130, 0.1000])


def test_cifar100_lt_log_prior_range() -> None:
    counts = [int(500 * 0.1 ** (c / 99)) for c in range(100)]
    assert sum(counts) == 19573 and counts[0] == 500 and counts[-1] == 50
    lp = log_prior(counts)
    assert lp[0].item() == pytest.approx(-3.6673, abs=1e-4)
    assert lp[-1].item() == pytest.approx(-5.9699, abs=1e-4)
    assert lp.argmax().item() == 0 and lp.argmin().item() == 99


def test_drw_and_dm_schedules() -> None:
    for epoch in (1, 39):
        assert torch.equal(drw_weights(COUNTS, epoch), torch.ones(C))
        assert torch.equal(dm_margins(COUNTS, epoch), torch.zeros(C))
    for epoch in (40, 80):
        torch.testing.assert_close(drw_weights(COUNTS, epoch), cb_weights(COUNTS, 0.9999))
        _close4(dm_margins(COUNTS, epoch), [0.1880, 0.2096, 0.2337, 0.2605, 0.2905, 0.3239, 0.3610, 0.4026, 0.4488, 0.5])
    torch.testing.assert_close(
        drw_weights(COUNTS, 12, epoch_divides=(0, 10, 20), betas=(0.0, 0.99, 0.9999)), cb_weights(COUNTS, 0.99)
    )
    assert dm_margins(COUNTS, 25, epoch_divides=(0, 10, 20), maxs=(0.0, 0.2, 0.3)).max().item() == pytest.approx(0.3)


# ------------------------------------------------------------------ losses vs formulas


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, generator=g) * 2
    y = torch.randint(0, C, (B,), generator=g)
    y[:C] = torch.arange(C)  # every class appears
    return z, y


def _onehot(y: torch.Tensor) -> torch.Tensor:
    return torch.eye(C)[y]


def _ce_rows(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CE: log Σ exp z − z_y."""
    return torch.log(torch.exp(z).sum(1)) - z[torch.arange(len(y)), y]


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def _loss(name: str, **opt: object) -> torch.nn.Module:
    return create_loss(name, COUNTS, **opt)


def test_registry_matches_schema_and_bad_options() -> None:
    assert sorted(LOSSES.names()) == sorted(schema.LOSSES)
    with pytest.raises(ValueError, match="ldam"):
        _loss("ldam", max_margin=0.5)
    with pytest.raises(ValueError):
        _loss("cb", loss_type="hinge")
    with pytest.raises(KeyError):
        _loss("eql")


def test_ce_plain_and_weighted_mean() -> None:
    z, y = _data()
    torch.testing.assert_close(_loss("ce")(z, y), _ce_rows(z, y).mean())
    w = torch.rand(C) + 0.1
    torch.testing.assert_close(_loss("ce")(z, y, w), (w[y] * _ce_rows(z, y)).sum() / w[y].sum())


def _sigmoid_focal_ref(z: torch.Tensor, y: torch.Tensor, gamma: float, elem_w: torch.Tensor | None = None) -> torch.Tensor:
    t = _onehot(y)
    p_t = _sigmoid(z * (2 * t - 1))
    loss = -((1 - p_t) ** gamma) * torch.log(p_t)
    if elem_w is not None:
        loss = loss * elem_w
    return loss.sum() / t.sum()


def test_focal_sigmoid() -> None:
    z, y = _data()
    torch.testing.assert_close(_loss("focal", gamma=2.0)(z, y), _sigmoid_focal_ref(z, y, 2.0))
    w = torch.rand(C) + 0.1
    torch.testing.assert_close(
        _loss("focal", gamma=2.0)(z, y, w), _sigmoid_focal_ref(z, y, 2.0, w[y].unsqueeze(1).expand(B, C))
    )
    # γ = 0 is plain BCE against the one-hot, summed over classes.
    t = _onehot(y)
    bce = -(t * torch.log(_sigmoid(z)) + (1 - t) * torch.log(1 - _sigmoid(z))).sum() / B
    torch.testing.assert_close(_loss("focal", gamma=0.0)(z, y), bce)


def test_focal_softmax() -> None:
    z, y = _data()
    ce = _ce_rows(z, y)
    p = torch.exp(-ce)
    torch.testing.assert_close(_loss("focal", gamma=2.0, use_sigmoid=False)(z, y), 0.5 * ((1 - p) ** 2 * ce).mean())


def test_cb_variants() -> None:
    z, y = _data()
    n = torch.tensor(COUNTS, dtype=torch.float64)
    w = (1 - 0.999) / (1 - 0.999**n)
    w = (w / w.sum() * C).float()
    elem = w[y].unsqueeze(1).expand(B, C)
    t = _onehot(y)
    focal = _loss("cb", beta=0.999, loss_type="focal", gamma=2.0, alpha=0.5)(z, y)
    torch.testing.assert_close(focal, 0.5 * _sigmoid_focal_ref(z, y, 2.0, elem))
    s = _sigmoid(z)
    sig_ref = (-(t * torch.log(s) + (1 - t) * torch.log(1 - s)) * elem).mean()
    torch.testing.assert_close(_loss("cb", beta=0.999, loss_type="sigmoid")(z, y), sig_ref)
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    soft_ref = (-(t * torch.log(p) + (1 - t) * torch.log(1 - p)) * elem).mean()
    torch.testing.assert_close(_loss("cb", beta=0.999, loss_type="softmax")(z, y), soft_ref)


def test_ldam_normal_inv_and_weights() -> None:
    z, y = _data()
    n = torch.tensor(COUNTS, dtype=torch.float64)
    m = (n ** -0.25 / (n ** -0.25).max() * 0.5).float()
    t = _onehot(y)
    zm = z - t * m[y].unsqueeze(1)
    torch.testing.assert_close(_loss("ldam", max_m=0.5, s=1)(z, y), _ce_rows(zm, y).mean())
    torch.testing.assert_close(_loss("ldam", max_m=0.5, s=10)(z, y), _ce_rows(10 * zm, y).mean())
    zi = z + (1 - t) * m[y].unsqueeze(1)
    torch.testing.assert_close(_loss("ldam", max_m=0.5, s=10, inv=True)(z, y), _ce_rows(10 * zi, y).mean())
    w_opt, w_drw = torch.rand(C) + 0.1, torch.rand(C) + 0.1
    w = w_opt * w_drw
    expected = (w[y] * _ce_rows(10 * zm, y)).sum() / w[y].sum()
    torch.testing.assert_close(_loss("ldam", weight=w_opt.tolist())(z, y, w_drw), expected)


def test_uni_margin() -> None:
    z, y = _data()
    zm = z - 0.2 * _onehot(y)
    torch.testing.assert_close(_loss("uni_margin", m=0.2, s=10)(z, y), _ce_rows(10 * zm, y).mean())


def test_bce_temperature() -> None:
    z, y = _data()
    t, T = _onehot(y), 2.0
    s = _sigmoid(z / T)
    expected = T * (-(t * torch.log(s) + (1 - t) * torch.log(1 - s))).mean()
    torch.testing.assert_close(_loss("bce", T=T)(z, y), expected)


def test_cdt_loss_and_weights_ignored() -> None:
    z, y = _data()
    a = ((max(COUNTS) / torch.tensor(COUNTS, dtype=torch.float64)) ** 0.3).float()
    loss = _loss("cdt", tau=0.3)
    torch.testing.assert_close(loss(z, y), _ce_rows(z / a, y).mean())
    torch.testing.assert_close(loss(z, y, torch.rand(C)), loss(z, y))


def test_logit_adjust_loss() -> None:
    z, y = _data()
    n = torch.tensor(COUNTS, dtype=torch.float64)
    lp = torch.log(n / n.sum()).float()
    torch.testing.assert_close(_loss("logit_adjust", tau=1.0)(z, y), _ce_rows(z + lp, y).mean())


@pytest.mark.parametrize(
    "opt",
    [
        {"m": 0.1, "s": 10, "tau_b": 1.2, "tau_m": 0.0},  # RoBal-N CIFAR-10
        {"m": 0.1, "s": 10, "tau_b": 1.5, "tau_m": 0.3},  # RoBal-R CIFAR-10
        {"m": 0.3, "s": 10, "tau_b": 0.0, "tau_m": 0.0},  # RoBal-R CIFAR-100 style
        {},  # defaults: plain CE on unscaled logits
    ],
)
def test_multi_margin_equivalent_form(opt: dict) -> None:
    """§3's "equivalently" form: target ``s·z_y − s·m − τ_m·log(n_y/n_min) + τ_b·log π_y``."""
    z, y = _data()
    m, s = opt.get("m", 0.0), opt.get("s", 1.0)
    tau_b, tau_m = opt.get("tau_b", 0.0), opt.get("tau_m", 0.0)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    lp = torch.log(n / n.sum()).float()
    cls_m = torch.log(n / n.min()).float()
    t = _onehot(y)
    adjusted = s * z - t * (s * m + tau_m * cls_m[y].unsqueeze(1)) + tau_b * lp
    torch.testing.assert_close(_loss("multi_margin", **opt)(z, y), _ce_rows(adjusted, y).mean())


@pytest.mark.parametrize("name", schema.LOSSES)
def test_every_loss_gradients_no_inplace_and_float64(name: str) -> None:
    z, y = _data(3)
    z = z.requires_grad_(True)
    before = z.detach().clone()
    loss = _loss(name)
    value = loss(z, y, torch.rand(C) + 0.1)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.equal(z.detach(), before)  # logits are never edited in place
    z64 = before.double().requires_grad_(True)
    assert loss(z64, y).dtype == torch.float64
    # Mixed-precision logits are upcast, so class constants keep their float32 digits.
    z16 = before.bfloat16()
    torch.testing.assert_close(loss(z16, y), loss(z16.float(), y))
    assert loss(z16, y).dtype == torch.float32


def test_subtract_target_margin_helper() -> None:
    z, y = _data()
    m = torch.rand(C)
    out = subtract_target_margin(z, y, m)
    torch.testing.assert_close(out, z - _onehot(y) * m[y].unsqueeze(1))
    assert not math.isclose(out.sum().item(), z.sum().item())
