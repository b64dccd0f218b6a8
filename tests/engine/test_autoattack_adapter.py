"""AutoAttack adapter (engine/autoattack_adapter.py, METHODS.md §5.3 / §10) on a tiny CPU model."""
from __future__ import annotations

import importlib.metadata
import sys

import pytest
import torch
from torch import nn

from engine import autoattack_adapter as aa_mod
from engine.attacks import pgd
from engine.autoattack_adapter import AA_LISTS, AutoAttackUnavailable, aa_version_string, run_autoattack
from toy import fit_linear

C = 4


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    means = 0.5 + 0.015 * (torch.randint(0, 2, (C, 1, 8, 8), generator=g).float() * 2 - 1)
    y = torch.arange(256) % C
    x = (means[y] + 0.02 * torch.randn(256, 1, 8, 8, generator=g)).clamp(0, 1)
    model = fit_linear(x, y, C)
    return model, x[:8], y[:8]


class Counting(nn.Module):
    """Wraps a model, counts forwards and can fail after a number of them (a crash mid-run)."""

    def __init__(self, model: nn.Module, fail_after: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated interruption")
        return self.model(x)


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("version,eps", [("reference", 0.031), ("standard", 0.031), ("reference", 0.01)])
def test_autoattack_within_eps_and_at_least_as_strong_as_pgd(trained, version, eps):
    model, x, y = trained
    x_adv = run_autoattack(model, x, y, eps, version=version, batch_size=4)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert 0.0 <= x_adv.min().item() and x_adv.max().item() <= 1.0
    robust = _acc(model, x_adv, y)
    pgd_acc = _acc(model, pgd(model, x, y, eps, eps / 4, 20, generator=torch.Generator().manual_seed(0)).x_adv, y)
    assert robust <= _acc(model, x, y)
    assert robust <= pgd_acc + 1 / len(y)
    # Points that are misclassified on clean inputs or survive come back untouched.
    with torch.no_grad():
        survived = model(x_adv).argmax(1) == y
        clean_wrong = model(x).argmax(1) != y
    untouched = survived | clean_wrong
    assert torch.equal(x_adv[untouched], x[untouched])
    assert all(p.grad is None for p in model.parameters())


def test_standard_list_is_a_superset_of_the_reference_list(trained):
    # With some points left robust by APGD, FAB-T and Square run too; they start from the same
    # seeded APGD results, so the standard suite can only break more points.
    model, x, y = trained
    ref = run_autoattack(model, x, y, 0.01, version="reference", batch_size=4)
    std = run_autoattack(model, x, y, 0.01, version="standard", batch_size=4)
    assert 0 < _acc(model, ref, y)
    assert _acc(model, std, y) <= _acc(model, ref, y)
    assert (std - x).abs().max().item() <= 0.01 + 1e-6


def test_attack_lists():
    assert AA_LISTS["reference"] == ["apgd-ce", "apgd-t"]
    assert AA_LISTS["standard"] == ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.mark.parametrize("num_classes,targets", [(10, 9), (100, 9), (4, 3)])
def test_custom_list_gets_the_standard_version_settings(num_classes, targets):
    pkg = pytest.importorskip("pyautoattack")
    model = nn.Linear(3, num_classes)
    standard = pkg.AutoAttack(model, eps=0.031, version="standard")
    custom = pkg.AutoAttack(model, attacks=AA_LISTS["reference"], eps=0.031, version="custom")
    aa_mod._standard_settings(custom, num_classes)
    for attack, field in [("apgd", "n_restarts"), ("apgd", "n_iter"), ("apgd_targeted", "n_restarts"),
                          ("apgd_targeted", "n_iter"), ("fab", "n_restarts"), ("square", "n_queries")]:
        assert getattr(getattr(custom, attack), field) == getattr(getattr(standard, attack), field)
    assert (custom.apgd.n_restarts, custom.apgd.n_iter) == (1, 100)
    assert custom.apgd_targeted.n_target_classes == targets
    assert custom.fab.n_target_classes == targets


def test_seeded_and_free_of_global_side_effects(trained):
    model, x, y = trained
    rng_before = torch.get_rng_state()

    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        a = run_autoattack(model, x, y, 0.01, seed=3, batch_size=4)
        assert sys.gettrace() is tracer  # AutoAttack's dynamic-defence check resets the tracer
    finally:
        sys.settrace(previous)
    b = run_autoattack(model, x, y, 0.01, seed=3, batch_size=4)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_state_path_second_call_returns_stored_result(trained, tmp_path):
    model, x, y = trained
    state = tmp_path / "aa_state.pt"
    first = run_autoattack(model, x, y, 0.01, batch_size=4, state_path=state)
    assert state.exists()
    counting = Counting(model)
    second = run_autoattack(counting, x, y, 0.01, batch_size=4, state_path=str(state))
    assert torch.equal(first, second)
    assert counting.calls <= 1  # only the probe for the number of classes: nothing re-attacked
    with pytest.raises(ValueError, match="different"):
        run_autoattack(model, x, y, 0.02, batch_size=4, state_path=state)


def test_interrupted_evaluation_resumes_to_the_same_result(trained, tmp_path):
    model, x, y = trained
    full_counter = Counting(model)
    expected = run_autoattack(full_counter, x, y, 0.01, batch_size=2)
    state = tmp_path / "aa_state.pt"
    crashing = Counting(model, fail_after=full_counter.calls // 2)
    with pytest.raises(RuntimeError, match="simulated"):
        run_autoattack(crashing, x, y, 0.01, batch_size=2, state_path=state, checkpoint_every_s=0)
    assert state.exists()
    resumed_counter = Counting(model)
    resumed = run_autoattack(resumed_counter, x, y, 0.01, batch_size=2, state_path=state)
    assert torch.equal(resumed, expected)
    assert resumed_counter.calls < full_counter.calls  # work done before the crash was kept


def test_bad_arguments(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="version"):
        run_autoattack(model, x, y, 0.01, version="plus")
    with pytest.raises(ValueError, match="4 classes"):
        run_autoattack(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval(), x, y % 3, 0.01)


def test_version_string():
    assert aa_version_string() == f"pyautoattack {importlib.metadata.version('pyautoattack')}"


def test_missing_package_raises_clear_error(trained, monkeypatch):
    model, x, y = trained
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` fail
    with pytest.raises(AutoAttackUnavailable, match="pip install pyautoattack"):
        aa_version_string()
    with pytest.raises(AutoAttackUnavailable):
        run_autoattack(model, x, y, 0.01)
