"""Backbones (METHODS.md §2.2), the Network wrapper and reference checkpoint loading (§4.5)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import BACKBONES, create_backbone
from engine.network import Network, build_network, load_reference_state_dict
from presets import schema

CIFAR10_LT_002 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]


def test_registry_matches_schema() -> None:
    assert sorted(BACKBONES.names()) == sorted(schema.BACKBONES)


def test_wrn_34_10_parameter_count_and_names() -> None:
    # Construction only, on the meta device: no memory, no forward.
    with torch.device("meta"):
        net = create_backbone("wrn", 3, 32)
    assert sum(p.numel() for p in net.parameters()) == 46_154_064
    assert net.out_dim == 640
    keys = set(net.state_dict())
    for key in (
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.bn1.running_var",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.bn2.bias",
        "block1.layer.0.conv2.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.0.convShortcut.weight",
        "block3.layer.4.conv2.weight",
        "bn1.weight",
        "bn1.running_mean",
    ):
        assert key in keys, key
    # Projections only in the first block of each group; 5 blocks per group for depth 34.
    assert sum("convShortcut" in k for k in keys) == 3
    assert "block1.layer.5.conv1.weight" not in keys
    assert tuple(net.state_dict()["block3.layer.0.convShortcut.weight"].shape) == (640, 320, 1, 1)


def _reference_wrn_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode pre-activation WRN written out with functional ops (independent of modules)."""
    sd = net.state_dict()

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"],
            training=False, eps=1e-5,
        )

    h = F.conv2d(x, sd["conv1.weight"], padding=1)
    for group, stride in ((1, 1), (2, 2), (3, 2)):
        i = 0
        while f"block{group}.layer.{i}.conv1.weight" in sd:
            p = f"block{group}.layer.{i}"
            s = stride if i == 0 else 1
            a = F.relu(bn(h, f"{p}.bn1"))
            r = F.relu(bn(F.conv2d(a, sd[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn2"))
            r = F.conv2d(r, sd[f"{p}.conv2.weight"], padding=1)
            short = F.conv2d(a, sd[f"{p}.convShortcut.weight"], stride=s) if f"{p}.convShortcut.weight" in sd else h
            h = short + r
            i += 1
    h = F.relu(bn(h, "bn1"))
    return h.mean(dim=(2, 3))


@pytest.mark.parametrize("size", [32, 8])
def test_tiny_wrn_forward_matches_functional_reference(size: int) -> None:
    torch.manual_seed(0)
    net = create_backbone("wrn", 3, size, depth=10, widen_factor=1)
    # Non-trivial BN statistics so the pre-activation order matters.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    net.eval()
    x = torch.rand(3, 3, size, size)
    out = net(x)
    assert out.shape == (3, 64) and net.out_dim == 64
    torch.testing.assert_close(out, _reference_wrn_forward(net, x), rtol=1e-4, atol=1e-5)


def test_wrn_init_and_gradients() -> None:
    torch.manual_seed(0)
    net = create_backbone("wrn", 3, 32, depth=10, widen_factor=4)
    conv = net.block1.layer[0].conv2
    expected_std = math.sqrt(2.0 / (3 * 3 * conv.out_channels))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)
    x = torch.rand(2, 3, 32, 32)
    net(x).sum().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_wrn_accepts_reference_droprate_spelling_and_rejects_unknown() -> None:
    net = create_backbone("wrn", 1, 8, depth=10, widen_factor=1, dropRate=0.3)
    assert net.block1.layer[0].drop_rate == 0.3
    with pytest.raises(ValueError, match="wrn"):
        create_backbone("wrn", 3, 32, depth=10, not_an_option=1)
    with pytest.raises(KeyError):
        create_backbone("resnet18", 3, 32)


@pytest.mark.parametrize("size", [8, 32])
def test_small_cnn_shapes_and_batchnorm_modes(size: int) -> None:
    torch.manual_seed(0)
    net = create_backbone("small_cnn", 1, size, width=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(4, 1, size, size)
    train_out = net(x)
    assert train_out.shape == (4, net.out_dim)
    net.eval()
    # Running stats after one momentum update differ from the batch stats used in train mode.
    assert not torch.allclose(net(x), train_out)
    train_out.sum().backward()


def test_tiny_mlp_is_relu_linear() -> None:
    torch.manual_seed(0)
    net = create_backbone("tiny_mlp", 1, 8, hidden=16)
    assert net.out_dim == 16
    x = torch.rand(5, 1, 8, 8)
    w, b = net.fc.weight, net.fc.bias
    torch.testing.assert_close(net(x), torch.clamp(x.reshape(5, 64) @ w.t() + b, min=0))


# ------------------------------------------------------------------- Network and loading


def _model_cfg(**kw: object) -> schema.ModelConfig:
    return schema.ModelConfig(**kw)  # type: ignore[arg-type]


def test_build_network_names_and_forward() -> None:
    torch.manual_seed(0)
    cfg = _model_cfg(backbone="tiny_mlp", backbone_opt={"hidden": 32}, head="cos_plus", head_opt={"scale": 1})
    net = build_network(cfg, 10, 1, 8, CIFAR10_LT_002)
    assert isinstance(net, Network)
    keys = set(net.state_dict())
    assert {"classifier.weight", "classifier.bias", "classifier.moving_ed", "backbone.fc.weight"} <= keys
    x = torch.rand(3, 1, 8, 8)
    logits = net(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(net.classifier(net.features(x)).detach(), logits.detach(), rtol=0, atol=0)
    assert net.logit_scale == 1.0


def test_build_network_focal_prior_bias() -> None:
    cfg = _model_cfg(backbone="tiny_mlp", head="fc")
    net = build_network(cfg, 10, 1, 8, CIFAR10_LT_002, focal_prior_bias=True)
    expected = [-0.5873, -1.2011, -1.7365, -2.2315, -2.7041, -3.1630, -3.6118, -4.0571, -4.4985, -4.9342]
    torch.testing.assert_close(net.classifier.fc.bias.detach(), torch.tensor(expected), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        build_network(_model_cfg(backbone="tiny_mlp", head="cos"), 10, 1, 8, CIFAR10_LT_002, focal_prior_bias=True)


def test_load_reference_state_dict_with_wrapper_prefixes() -> None:
    torch.manual_seed(0)
    cfg = _model_cfg(backbone="wrn", backbone_opt={"depth": 10, "widen_factor": 1}, head="fc")
    source = build_network(cfg, 10, 3, 32, CIFAR10_LT_002)
    target = build_network(cfg, 10, 3, 32, CIFAR10_LT_002)
    ref = {f"model.module.{k}": v.clone() for k, v in source.state_dict().items()}
    ref["model.module.backbone.sub_block1.layer.0.conv1.weight"] = torch.zeros(3)
    ref["model.module.classifier.extra"] = torch.zeros(2)
    ref["model.module.classifier.fc.bias"] = torch.zeros(11)  # wrong shape → not copied
    drop = "model.module.backbone.bn1.running_mean"
    del ref[drop]
    report = load_reference_state_dict(target, ref)
    assert report["unexpected"] == ["classifier.extra"]
    assert report["mismatched"] == ["classifier.fc.bias"]
    assert sorted(report["missing"]) == ["backbone.bn1.running_mean", "classifier.fc.bias"]
    assert report["loaded"] == len(source.state_dict()) - 2
    tsd, ssd = target.state_dict(), source.state_dict()
    torch.testing.assert_close(tsd["backbone.block2.layer.0.convShortcut.weight"], ssd["backbone.block2.layer.0.convShortcut.weight"])
    torch.testing.assert_close(tsd["classifier.fc.weight"], ssd["classifier.fc.weight"])
    assert not torch.equal(tsd["classifier.fc.bias"], ssd["classifier.fc.bias"])


def test_load_reference_state_dict_load_modules_filter() -> None:
    torch.manual_seed(0)
    cfg = _model_cfg(backbone="tiny_mlp", head="fc")
    source = build_network(cfg, 10, 1, 8, CIFAR10_LT_002)
    target = build_network(cfg, 10, 1, 8, CIFAR10_LT_002)
    ref = {f"module.{k}": v for k, v in source.state_dict().items()}
    report = load_reference_state_dict(target, ref, load_modules=("classifier",))
    assert report["loaded"] == 2
    assert torch.equal(target.classifier.fc.weight, source.classifier.fc.weight)
    assert not torch.equal(target.backbone.fc.weight, source.backbone.fc.weight)
