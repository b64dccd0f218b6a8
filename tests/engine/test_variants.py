"""Inference-time heads on a fixed checkpoint, each against its formula written out here
(METHODS.md §6 rows 13–18, §2.3), and the logit-scale bookkeeping of §5.7."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.network import build_network
from engine.variants import (
    DEFAULT_INFERENCE_HEAD, VARIANT_HEADS, evaluation_network, load_for_evaluation,
    logit_scale_warning, resolve_head_spec, training_logit_scale,
)
from presets.schema import DatasetConfig, HeadSpec, LossConfig, ModelConfig, RunConfig, TrainConfig

COUNTS = [40, 20, 10, 5, 2]
C = len(COUNTS)


def _cfg(head: str = "fc", head_opt: dict | None = None, loss: str = "ce", loss_opt: dict | None = None,
         **kw) -> RunConfig:
    return RunConfig(
        device="cpu", dataset=DatasetConfig(name="digits-lt", num_classes=C),
        model=ModelConfig(backbone="tiny_mlp", backbone_opt={"hidden": 6}, head=head, head_opt=head_opt or {}),
        train=TrainConfig(loss=LossConfig(loss, loss_opt or {})), **kw)


def _checkpoint(cfg: RunConfig, seed: int = 0) -> dict:
    """A trained-looking state dict: random weights, non-zero biases."""
    torch.manual_seed(seed)
    net = build_network(cfg.model, C, 1, 4, COUNTS)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for key in state:
        if key.endswith("bias"):
            state[key] = torch.randn_like(state[key])
    return state


def _features(state: dict, x: torch.Tensor) -> torch.Tensor:
    return F.relu(x.flatten(1) @ state["backbone.fc.weight"].t() + state["backbone.fc.bias"])


def _eval_logits(cfg: RunConfig, head: HeadSpec | None, state: dict, x: torch.Tensor) -> torch.Tensor:
    net = evaluation_network(cfg, head, COUNTS, 1, 4)
    load_for_evaluation(net, state)
    with torch.no_grad():
        return net.eval()(x)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _log_prior() -> torch.Tensor:
    n = torch.tensor(COUNTS, dtype=torch.float64)
    return (n / n.sum()).log()


def test_post_hoc_cdt_divides_fc_logits_by_counts_pow_tau(x):
    cfg = _cfg()
    state = _checkpoint(cfg)
    f = _features(state, x)
    fc = f @ state["classifier.fc.weight"].t() + state["classifier.fc.bias"]
    expected = fc / torch.tensor(COUNTS, dtype=torch.float32) ** 0.3
    got = _eval_logits(cfg, VARIANT_HEADS["post-cdt"], state, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_tau_norm_uses_unit_rows_and_drops_the_bias(x):
    cfg = _cfg()
    state = _checkpoint(cfg)
    w = state["classifier.fc.weight"]
    expected = _features(state, x) @ (w / w.norm(dim=1, keepdim=True)).t()
    got = _eval_logits(cfg, VARIANT_HEADS["post-norm"], state, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_post_hoc_logit_adjustment_subtracts_log_prior(x):
    cfg = _cfg()
    state = _checkpoint(cfg)
    fc = _features(state, x) @ state["classifier.fc.weight"].t() + state["classifier.fc.bias"]
    expected = fc - _log_prior().float()
    got = _eval_logits(cfg, VARIANT_HEADS["post-logit-adjust"], state, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_robal_boundary_adjustment_on_a_cos_plus_checkpoint(x):
    gamma, tau_p = 0.0625, 1.5
    cfg = _cfg("cos_plus", {"scale": 1.0, "gamma": gamma}, "multi_margin", {"m": 0.2, "s": 10.0},
               inference_head=HeadSpec("post_proc", {"classifier": "Cos", "posthoc": True, "tau_p": tau_p,
                                                     "scale": 10.0, "bias": False}))
    state = _checkpoint(cfg)
    variant, head = resolve_head_spec(cfg, None, None)
    assert variant == DEFAULT_INFERENCE_HEAD
    f = _features(state, x)
    w = state["classifier.weight"]
    cos_prime = (f / f.norm(dim=1, keepdim=True)) @ (w / (w.norm(dim=1, keepdim=True) + gamma)).t()
    expected = 10.0 * cos_prime - tau_p * _log_prior().float()  # the bias is never added
    got = _eval_logits(cfg, head, state, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Training saw s = 10 on a scale-1 cosine head; the ×10 inference head matches it (§5.7).
    net = evaluation_network(cfg, head, COUNTS, 1, 4)
    assert logit_scale_warning(net.logit_scale, training_logit_scale(cfg, COUNTS)) is None


def test_tde_debiasing_uses_the_trained_moving_average(x):
    scale, alpha, gamma = 16.0, 0.1, 0.03125
    cfg = _cfg("tde_sim", {"scale": scale, "alpha": alpha, "gamma": gamma, "mu": 0.9, "posthoc": False})
    state = _checkpoint(cfg)
    m = torch.randn(1, 6, generator=torch.Generator().manual_seed(5)) * 3
    state["classifier.moving_ed"] = m.clone()
    f = _features(state, x)
    w = state["classifier.weight"]
    w_prime = w / (w.norm(dim=1, keepdim=True) + gamma)
    cos_fm = (f @ m.t()) / (f.norm(dim=1, keepdim=True) * m.norm())
    expected = scale * ((f / f.norm(dim=1, keepdim=True) - alpha * cos_fm * m) @ w_prime.t()) + state["classifier.bias"]
    net = evaluation_network(cfg, VARIANT_HEADS["tde"], COUNTS, 1, 4)
    load_for_evaluation(net, state)
    with torch.no_grad():
        got = net.eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.classifier.moving_ed, m)  # the debiased path leaves m alone


def test_loading_refuses_a_classifier_the_head_cannot_use():
    cos_cfg = _cfg("cos", {"scale": 16.0})
    state = _checkpoint(cos_cfg)
    net = evaluation_network(cos_cfg, VARIANT_HEADS["post-logit-adjust"], COUNTS, 1, 4)
    with pytest.raises(ValueError, match="lacks"):
        load_for_evaluation(net, state)
    other = _cfg()
    wide = build_network(ModelConfig(backbone="tiny_mlp", backbone_opt={"hidden": 9}), C, 1, 4, COUNTS)
    with pytest.raises(ValueError, match="shapes"):
        load_for_evaluation(evaluation_network(other, None, COUNTS, 1, 4), wide.state_dict())


def test_missing_moving_average_is_a_warning():
    cfg = _cfg("tde_sim", {"scale": 16.0})
    state = _checkpoint(cfg)
    del state["classifier.moving_ed"]
    net = evaluation_network(cfg, VARIANT_HEADS["tde"], COUNTS, 1, 4)
    warnings = load_for_evaluation(net, state)
    assert any("moving_ed" in w for w in warnings)


def test_resolve_head_spec_precedence():
    robal = HeadSpec("post_proc", {"classifier": "Cos", "posthoc": True})
    cfg = _cfg(inference_head=robal)
    assert resolve_head_spec(cfg, None, None) == (DEFAULT_INFERENCE_HEAD, robal)
    label, head = resolve_head_spec(cfg, "post-cdt", None)
    assert (label, head.head, head.head_opt["tau"]) == ("post-cdt", "cdt", 0.3)
    label, head = resolve_head_spec(cfg, None, {"head": "cos", "head_opt": {"scale": 3}})
    assert (label, head) == ("custom", HeadSpec("cos", {"scale": 3}))
    assert resolve_head_spec(_cfg(), None, None) == (None, None)
    with pytest.raises(ValueError, match="unknown inference variant"):
        resolve_head_spec(cfg, "no-such-variant", None)


def test_training_logit_scale_of_the_study_methods():
    assert training_logit_scale(_cfg()) == 1.0
    assert training_logit_scale(_cfg("cos", {"scale": 16.0})) == 16.0
    assert training_logit_scale(_cfg("cos", {"scale": 1.0}, "uni_margin", {"m": 0.2, "s": 10.0})) == 10.0
    assert training_logit_scale(_cfg("cos_plus", {"scale": 1.0}, "multi_margin", {"m": 0.1, "s": 10.0})) == 10.0
    assert training_logit_scale(_cfg(loss="ldam", loss_opt={"max_m": 0.5, "s": 1.0})) == 1.0
    # CDT loss: logits divided by a_c = (n_max/n_c)^τ; nominal scale = geometric mean of 1/a_c.
    expected = math.exp(sum(0.3 * math.log(n / max(COUNTS)) for n in COUNTS) / C)
    got = training_logit_scale(_cfg(loss="cdt", loss_opt={"tau": 0.3}), COUNTS)
    assert got == pytest.approx(expected, rel=1e-6)


def test_logit_scale_warning_tolerance():
    assert logit_scale_warning(10.0, 10.0) is None
    assert logit_scale_warning(11.0, 10.0) is None
    message = logit_scale_warning(1.0, 10.0)
    assert message is not None and "x10.00" in message
    post_cdt = evaluation_network(_cfg(), VARIANT_HEADS["post-cdt"], COUNTS, 1, 4)
    assert logit_scale_warning(post_cdt.logit_scale, training_logit_scale(_cfg(), COUNTS)) is not None
