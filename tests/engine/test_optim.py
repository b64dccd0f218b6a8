"""Optimiser, lr_dict groups, freezing and the lr schedules (METHODS.md §4.4, §4.5, §9.1)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from engine.modes import Losses, create_mode
from engine.losses import create_loss
from engine.network import build_network
from engine.optim import LRScheduler, build_optimizer, frozen_modules, set_train_mode
from presets.schedule import decay_factor, describe_schedule, effective_lrs, lr_factor
from presets.schema import AttackConfig, ModelConfig, TrainConfig

# METHODS.md §4.4 table: epoch → lr under the reference's compounding schedule.
BASELINE = {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1, 5: 0.1, 59: 0.1, 60: 0.01, 61: 1e-3, 62: 1e-4,
            74: 1e-16, 75: 1e-18, 80: 1e-28}
FOCAL = {1: 0.04, 2: 0.024, 3: 0.0192, 4: 0.0192, 5: 0.0192, 59: 0.0192, 60: 0.00192,
         61: 1.92e-4, 62: 1.92e-5, 74: 1.92e-17, 75: 1.92e-19, 80: 1.92e-29}
RS_WHOLE = {1: 0.1, 14: 0.1, 15: 0.01, 16: 1e-3, 19: 1e-6, 20: 1e-8, 25: 1e-18}

TABLE = [
    pytest.param((60, 75), 0, 80, BASELINE, id="baseline"),
    pytest.param((60, 75), 5, 80, FOCAL, id="focal-warmup5"),
    pytest.param((15, 20), 0, 25, RS_WHOLE, id="rs-whole"),
]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def _net(backbone: str = "small_cnn") -> nn.Module:
    opt = {"width": 4} if backbone == "small_cnn" else {"hidden": 8}
    torch.manual_seed(0)
    return build_network(ModelConfig(backbone=backbone, backbone_opt=opt, head="fc"), 3, 1, 8,
                         [8, 4, 2])


@pytest.mark.parametrize("milestones,warmup,epochs,expected", TABLE)
def test_compounding_schedule_reproduces_reference_table(milestones, warmup, epochs, expected):
    preview = effective_lrs(epochs, 0.1, "reference_compounding", milestones, warmup)
    assert len(preview) == epochs
    for epoch, lr in expected.items():
        assert preview[epoch - 1] == pytest.approx(lr, rel=1e-9), epoch


@pytest.mark.parametrize("milestones,warmup,epochs,expected", TABLE)
def test_scheduler_applies_table_to_every_group(milestones, warmup, epochs, expected):
    model = _net("tiny_mlp")
    cfg = _cfg(lr_schedule="reference_compounding", milestones=milestones, warmup_epochs=warmup,
               lr_dict={"classifier": 0.1, "else": 0.05})
    opt = build_optimizer(model, cfg)
    sched = LRScheduler(opt, cfg)
    # The reference multiplies the optimiser's current lr by d(e) each epoch: simulate literally.
    literal = [g["lr"] for g in opt.param_groups]
    for epoch in range(1, epochs + 1):
        d = 0.1 ** sum(m <= epoch for m in milestones)
        if epoch < warmup:
            d = (epoch + 1) / warmup
        literal = [lr * d for lr in literal]
        top = sched.step(epoch)
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == literal  # bit-identical to in-place multiplication
        if epoch in expected:
            assert top == pytest.approx(expected[epoch], rel=1e-9)
            assert min(lrs) == pytest.approx(expected[epoch] / 2, rel=1e-9)


def test_finetune_compounding_restarts_at_first_epoch():
    # lws (§4.5): resume_epoch 80, milestones (83, 86): 0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-6.
    lrs = effective_lrs(86, 0.1, "reference_compounding", (83, 86), 0, start_epoch=81)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-6], rel=1e-9)
    with pytest.raises(ValueError):
        lr_factor(80, "reference_compounding", (83, 86), 0, start_epoch=81)


def test_step_schedule_with_warmup():
    milestones, warmup = (60, 75), 5
    lrs = effective_lrs(80, 0.1, "step", milestones, warmup)
    for epoch, lr in zip(range(1, 81), lrs):
        if epoch < warmup:
            want = 0.1 * (epoch + 1) / warmup
        elif epoch < 60:
            want = 0.1
        elif epoch < 75:
            want = 0.01
        else:
            want = 0.001
        assert lr == pytest.approx(want, rel=1e-12), epoch
    assert lrs[0] == pytest.approx(0.04) and lrs[3] == pytest.approx(0.1)
    assert decay_factor(75, milestones) == pytest.approx(0.01)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError):
        lr_factor(1, "cosine", (60,), 0)
    opt = build_optimizer(_net("tiny_mlp"), _cfg())
    with pytest.raises(ValueError):
        LRScheduler(opt, _cfg(lr_schedule="cosine"))


def test_scheduler_state_resume_continues_uninterrupted_run():
    cfg = _cfg(lr_schedule="reference_compounding", milestones=(3, 6), warmup_epochs=2)
    model = _net("tiny_mlp")
    straight = LRScheduler(build_optimizer(model, cfg), cfg)
    full = [straight.set_epoch(e) for e in range(1, 11)]

    first = LRScheduler(build_optimizer(model, cfg), cfg)
    for e in range(1, 5):
        first.set_epoch(e)
    state = first.state_dict()
    resumed_opt = build_optimizer(model, cfg)
    resumed = LRScheduler(resumed_opt, cfg, start_epoch=99)  # overwritten by the state
    resumed.load_state_dict(state)
    assert [g["lr"] for g in resumed_opt.param_groups] == full[3]
    assert [resumed.set_epoch(e) for e in range(5, 11)] == full[4:]

    # The reference's resume (fresh optimiser, compounding from the base lr) differs.
    fresh = LRScheduler(build_optimizer(model, cfg), cfg, start_epoch=5)
    assert fresh.set_epoch(5) != full[4]


def test_optimizer_hyperparameters_and_single_group():
    model = _net("tiny_mlp")
    cfg = _cfg(lr=0.1, momentum=0.9, weight_decay=2e-4)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert (g["lr"], g["base_lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (
        0.1, 0.1, 0.9, 2e-4, False)
    assert {id(p) for p in g["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("first,second", [("fc", "classifier"), ("classifier", "fc")])
def test_lr_dict_one_group_per_parameter_first_match_wins(first, second):
    model = _net("small_cnn")
    lrs = {"fc": 0.5, "classifier": 0.1}
    cfg = _cfg(lr_dict={first: lrs[first], second: lrs[second], "features.1.": 0.2, "else": 0.0})
    opt = build_optimizer(model, cfg)
    named = list(model.named_parameters())
    assert len(opt.param_groups) == len(named)
    for (name, p), group in zip(named, opt.param_groups):
        assert group["params"] == [p]
        if name.startswith("classifier.fc."):  # contains both keys: dict order decides
            want = lrs[first]
        elif name.startswith("backbone.features.1."):
            want = 0.2
        else:
            want = 0.0
        assert group["lr"] == group["base_lr"] == want, name
        assert group["momentum"] == 0.9 and group["weight_decay"] == 2e-4


def _train_steps(freeze: str):
    model = _net("small_cnn")
    cfg = _cfg(lr_dict={"classifier": 0.1, "else": 0.0}, freeze=freeze, mode="pgd_at")
    opt = build_optimizer(model, cfg)
    ce = create_loss("ce", [8, 4, 2])
    mode = create_mode("pgd_at", model=model, losses=Losses(ce, ce, ce), attack=AttackConfig(),
                       mode_opt={}, class_counts=[8, 4, 2], deffer=None,
                       robal_forwards="reference",
                       generator=torch.Generator().manual_seed(0))
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    set_train_mode(model, cfg)
    for _ in range(3):
        x = torch.rand(12, 1, 8, 8, generator=g)
        y = torch.randint(0, 3, (12,), generator=g)
        out = mode.step(x, y, 1)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return model, opt, cfg, backbone_before, head_before


def test_frozen_mode_keeps_backbone_weights_and_bn_statistics():
    model, opt, cfg, before, head_before = _train_steps("frozen")
    after = model.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # weights AND running stats / num_batches_tracked
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.classifier.parameters()}
    assert not torch.equal(model.classifier.state_dict()["fc.weight"], head_before["fc.weight"])
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and frozen_modules(model, cfg) == bns
    assert all(not m.training for m in bns)  # the step restored the eval state set_train_mode chose
    assert model.training and model.classifier.training


def test_lr0_mode_keeps_weights_but_moves_bn_statistics():
    model, opt, cfg, before, head_before = _train_steps("lr0")
    after = model.backbone.state_dict()
    stats = [k for k in before if "running" in k or "num_batches" in k]
    params = [k for k, _ in model.backbone.named_parameters()]
    assert stats and params
    for k in params:
        assert torch.equal(after[k], before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in stats if "running_mean" in k)
    assert all(int(after[k]) == 3 for k in stats if "num_batches" in k)
    assert frozen_modules(model, cfg) == []
    assert len(opt.param_groups) == len(list(model.parameters()))


def test_set_train_mode_only_freezes_fully_frozen_bn():
    model = _net("small_cnn")
    cfg = _cfg(lr_dict={"features.1": 0.0, "else": 0.1}, freeze="frozen")
    model.eval()
    set_train_mode(model, cfg)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [not m.training for _, m in bns] == [n.endswith("features.1") for n, _ in bns]
    assert model.training
    assert frozen_modules(model, dataclasses.replace(cfg, freeze="lr0")) == []


def test_schedule_description_shows_the_compounding_freeze():
    lrs = effective_lrs(80, 0.1, "reference_compounding", (60, 75))
    assert describe_schedule(lrs) == ("1–59: 0.1, 60: 0.01, 61: 0.001, 62: 0.0001, 63: 1e-05, "
                                      "64: 1e-06, 65–80: <1e-06 (frozen)")
    assert describe_schedule(effective_lrs(80, 0.1, "step", (60, 75))) == (
        "1–59: 0.1, 60–74: 0.01, 75–80: 0.001")

