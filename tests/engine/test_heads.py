"""Classifier heads against formulas written out here (METHODS.md §2.3)."""
from __future__ import annotations

import math

import pytest
import torch

from engine.heads import HEADS, create_head
from presets import schema

COUNTS = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]  # CIFAR-10-LT 0.02
C, D, B = 10, 32, 6  # heads must work for in_dim != 640


def _prior() -> torch.Tensor:
    n = torch.tensor(COUNTS, dtype=torch.float64)
    return (n / n.sum()).float()


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(dim=1, keepdim=True))


def _feats(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g)


def _head(name: str, **opt: object) -> torch.nn.Module:
    torch.manual_seed(1)
    return create_head(name, D, C, COUNTS, **opt)


def test_registry_matches_schema() -> None:
    assert sorted(HEADS.names()) == sorted(schema.HEADS)


@pytest.mark.parametrize("name", schema.HEADS)
def test_every_head_shapes_gradients_and_scale(name: str) -> None:
    head = _head(name)
    f = _feats().requires_grad_(True)
    z = head(f)
    assert z.shape == (B, C) and torch.isfinite(z).all()
    z.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert isinstance(head.logit_scale, float)
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    assert any(p.grad is not None for _, p in head.named_parameters() if p.requires_grad), trainable


def test_unknown_option_and_count_mismatch_are_errors() -> None:
    with pytest.raises(ValueError, match="fc"):
        create_head("fc", D, C, COUNTS, scale=3)
    with pytest.raises(ValueError):
        create_head("fc", D, C, COUNTS[:5])
    with pytest.raises(KeyError):
        create_head("centroids", D, C, COUNTS)


def test_fc_formula_and_focal_prior_bias() -> None:
    head = _head("fc")
    f = _feats()
    torch.testing.assert_close(head(f), f @ head.fc.weight.t() + head.fc.bias)
    head.init_prior_bias(COUNTS)
    expected = [-0.5873, -1.2011, -1.7365, -2.2315, -2.7041, -3.1630, -3.6118, -4.0571, -4.4985, -4.9342]
    torch.testing.assert_close(head.fc.bias.detach(), torch.tensor(expected), atol=1e-4, rtol=0)
    assert set(head.state_dict()) == {"fc.weight", "fc.bias"} and head.logit_scale == 1.0


def test_cos_formula_bias_frozen_at_zero() -> None:
    head = _head("cos", scale=16)
    f = _feats()
    w = head.weight
    assert torch.all(w.abs() <= 1 / math.sqrt(D))
    expected = 16 * (_unit_rows(f) @ _unit_rows(w).t())
    torch.testing.assert_close(head(f), expected)
    assert not head.bias.requires_grad and torch.all(head.bias == 0)
    assert set(head.state_dict()) == {"weight", "bias"} and head.logit_scale == 16.0
    assert _head("cos", bias=True).bias.requires_grad


def test_dot_bias_frozen_at_random_init() -> None:
    head = _head("dot")
    assert not head.fc.bias.requires_grad and head.fc.bias.abs().sum() > 0
    f = _feats()
    torch.testing.assert_close(head(f), f @ head.fc.weight.t() + head.fc.bias)


@pytest.mark.parametrize(
    "opt",
    [
        {},
        {"norm": True, "tau": 1.0},
        {"norm": True, "tau": 0.5, "feature_norm": True, "bias": True, "avg_T": 2.0},
        {"lws": True, "bias": False},
    ],
)
def test_post_norm_formula(opt: dict) -> None:
    head = _head("post_norm", **opt)
    with torch.no_grad():
        head.cla_scale.uniform_(0.5, 2.0)
    f = _feats()
    w = head.fc.weight.detach()
    if opt.get("norm"):
        w = w / torch.sqrt((w * w).sum(dim=1, keepdim=True)) ** opt["tau"]
    ff = _unit_rows(f) if opt.get("feature_norm") else f
    T = opt.get("avg_T", 1.0)
    expected = (ff @ w.t()) / T * head.cla_scale.detach()
    if opt.get("bias"):
        expected = expected + head.fc.bias.detach() / T
    torch.testing.assert_close(head(f).detach(), expected)
    assert head.cla_scale.requires_grad == bool(opt.get("lws", False))
    assert head.fc.bias.requires_grad == bool(opt.get("bias", False))
    assert set(head.state_dict()) == {"fc.weight", "fc.bias", "cla_scale"}
    assert head.logit_scale == pytest.approx(1.0 / T)


def test_post_norm_weight_norm_is_detached() -> None:
    head = _head("post_norm", norm=True, tau=1.0)
    f = _feats()
    head(f).sum().backward()
    # With the norm treated as a constant, d/dW of Σ_b f_b·w_c/‖w_c‖ is Σ_b f_b / ‖w_c‖.
    norms = head.fc.weight.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(head.fc.weight.grad, f.sum(0, keepdim=True).expand(C, D) / norms)


def test_cdt_train_eval_and_posthoc() -> None:
    head = _head("cdt", tau=0.3)
    f = _feats()
    plain = f @ head.fc.weight.t() + head.fc.bias
    a = (max(COUNTS) / torch.tensor(COUNTS, dtype=torch.float64)) ** 0.3
    head.train()
    torch.testing.assert_close(head(f), plain / a.float())
    head.eval()
    torch.testing.assert_close(head(f), plain)
    assert not head.fc.bias.requires_grad
    post = _head("cdt", tau=0.3, posthoc=True)
    divisors = [12.8733, 11.2991, 9.9178, 8.7051, 7.6392, 6.7035, 5.8851, 5.1638, 4.5316, 3.9811]
    torch.testing.assert_close(post.posthoc_divisors, torch.tensor(divisors), atol=1e-4, rtol=0)
    plain_post = f @ post.fc.weight.t() + post.fc.bias
    for mode in (True, False):
        post.train(mode)
        torch.testing.assert_close(post(f), plain_post / torch.tensor(COUNTS, dtype=torch.float64).pow(0.3).float())
    assert "posthoc_divisors" not in post.state_dict()
    assert post.logit_scale < 1.0 and head.logit_scale == 1.0


def _tde_normal(head: torch.nn.Module, f: torch.Tensor, gamma: float, scale: float) -> torch.Tensor:
    w = head.weight.detach()
    w = w / (torch.sqrt((w * w).sum(1, keepdim=True)) + gamma)
    return scale * _unit_rows(f) @ w.t() + head.bias.detach()


def test_tde_sim_normal_path_updates_without_one_minus_mu() -> None:
    head = _head("tde_sim", scale=16, alpha=0.1, gamma=0.03125, mu=0.9, posthoc=False)
    assert not head.moving_ed.requires_grad and head.moving_ed.shape == (1, D)
    assert torch.all(head.moving_ed == 0)
    assert {"weight", "bias", "moving_ed"} == set(head.state_dict())
    f1, f2 = _feats(1), _feats(2)
    head.train()
    torch.testing.assert_close(head(f1).detach(), _tde_normal(head, f1, 0.03125, 16))
    m1 = _unit_rows(f1).mean(0, keepdim=True)
    torch.testing.assert_close(head.moving_ed.detach(), m1)
    # posthoc False: eval-mode forwards use the normal path and ALSO update m.
    head.eval()
    torch.testing.assert_close(head(f2).detach(), _tde_normal(head, f2, 0.03125, 16))
    torch.testing.assert_close(head.moving_ed.detach(), 0.9 * m1 + _unit_rows(f2).mean(0, keepdim=True))


def test_tde_sim_debiased_path_in_eval_only() -> None:
    alpha, gamma, scale = 0.5, 0.03125, 16.0
    head = _head("tde_sim", scale=scale, alpha=alpha, gamma=gamma, posthoc=True)
    f1, f2 = _feats(1), _feats(2)
    head.train()  # posthoc but train mode: normal path, updates m
    torch.testing.assert_close(head(f1).detach(), _tde_normal(head, f1, gamma, scale))
    m = head.moving_ed.detach().clone()
    torch.testing.assert_close(m, _unit_rows(f1).mean(0, keepdim=True))
    head.eval()
    z = head(f2).detach()
    cos = (f2 @ m.t()) / (f2.norm(dim=1, keepdim=True) * m.norm())
    w = head.weight.detach()
    w = w / (torch.sqrt((w * w).sum(1, keepdim=True)) + gamma)
    expected = scale * ((_unit_rows(f2) - alpha * cos * m) @ w.t()) + head.bias.detach()
    torch.testing.assert_close(z, expected)
    assert torch.equal(head.moving_ed.detach(), m)  # debiased path never updates m


def test_moving_avg_init_option() -> None:
    assert _head("tde_sim", moving_avg_init="reference").moving_avg_init == "reference"
    assert _head("cos_plus").moving_avg_init == "zeros"
    with pytest.raises(ValueError, match="moving_avg_init"):
        _head("tde_sim", moving_avg_init="garbage")


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_cos_plus_formula_and_train_only_update(eta: float) -> None:
    gamma, scale = 0.03125, 1.0
    # Extra keys (the RoBal-R config passes posthoc) are ignored.
    head = _head("cos_plus", scale=scale, gamma=gamma, eta=eta, mu=0.9, posthoc=False)
    assert head.ignored_options == {"posthoc": False}
    f1, f2 = _feats(1), _feats(2)
    w = head.weight.detach()
    wn = torch.sqrt((w * w).sum(1, keepdim=True))
    fn = torch.sqrt((f1 * f1).sum(1, keepdim=True))
    expected = scale * (f1 / fn**eta) @ (w / (wn**eta + gamma)).t()
    head.train()
    torch.testing.assert_close(head(f1).detach(), expected)
    m1 = _unit_rows(f1).mean(0, keepdim=True)
    torch.testing.assert_close(head.moving_ed.detach(), m1)
    head(f2)
    torch.testing.assert_close(head.moving_ed.detach(), 0.9 * m1 + _unit_rows(f2).mean(0, keepdim=True))
    before = head.moving_ed.detach().clone()
    head.eval()
    torch.testing.assert_close(head(f1).detach(), expected)
    assert torch.equal(head.moving_ed.detach(), before)
    assert head.logit_scale == scale and not head.bias.requires_grad


def test_cos_plus_without_moving_avg() -> None:
    head = _head("cos_plus", moving_avg=False)
    head.train()
    head(_feats())
    assert torch.all(head.moving_ed == 0)
    assert head.logit_scale == 16.0


def test_post_proc_fc_posthoc_both_modes() -> None:
    head = _head("post_proc", classifier="FC", tau_p=1.0, posthoc=True)
    f = _feats()
    plain = f @ head.fc.weight.t() + head.fc.bias
    for mode in (True, False):
        head.train(mode)
        torch.testing.assert_close(head(f), plain - torch.log(_prior()))
    assert set(head.state_dict()) == {"fc.weight", "fc.bias"}  # log π is not persisted
    off = _head("post_proc", classifier="FC", posthoc=False)
    torch.testing.assert_close(off(f), f @ off.fc.weight.t() + off.fc.bias)


def test_post_proc_cos_never_adds_bias() -> None:
    tau_p, scale, gamma = 1.7, 10.0, 0.0625
    head = _head("post_proc", classifier="Cos", tau_p=tau_p, posthoc=True, scale=scale, gamma=gamma)
    with torch.no_grad():
        head.bias.fill_(5.0)  # a loaded bias must not change the logits
    f = _feats()
    w = head.weight.detach()
    w = w / (torch.sqrt((w * w).sum(1, keepdim=True)) + gamma)
    expected = scale * _unit_rows(f) @ w.t() - tau_p * torch.log(_prior())
    torch.testing.assert_close(head(f).detach(), expected)
    assert set(head.state_dict()) == {"weight", "bias"} and head.logit_scale == scale
    with pytest.raises(ValueError):
        _head("post_proc", classifier="Linear")


@pytest.mark.parametrize("name", ["cos", "tde_sim", "cos_plus"])
def test_norm_eps_reference_nan_vs_clamped(name: str) -> None:
    f = torch.zeros(2, D)
    ref = _head(name)
    ref.eval()
    assert torch.isnan(ref(f)).any()  # the reference has no epsilon
    safe = _head(name, norm_eps=1e-12)
    safe.eval()
    assert torch.isfinite(safe(f)).all()


def test_buffers_follow_to() -> None:
    head = _head("post_proc", classifier="FC", posthoc=True).to(torch.float64)
    assert head.log_prior.dtype == torch.float64
    f = _feats().double()
    torch.testing.assert_close(head(f), f @ head.fc.weight.t() + head.fc.bias - torch.log(_prior().double()))
    cdt = _head("cdt", posthoc=True).to(torch.float64)
    assert cdt.posthoc_divisors.dtype == torch.float64
