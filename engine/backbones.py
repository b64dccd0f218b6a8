"""Feature extractors: image batch ``(B, C, H, W)`` in [0, 1] → features ``(B, out_dim)``.

``wrn`` is the reference's only backbone (METHODS.md §2.2): the TRADES-style pre-activation
WideResNet (Zagoruyko & Komodakis 2016, as used by Zhang et al. 2019 and Wu et al. 2021), with
the reference's state-dict names so its checkpoints load. ``small_cnn`` and ``tiny_mlp`` are
small registered models for the digits demo and the tests (timm's ``test_*`` habit).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.registry import Registry

BACKBONES: Registry = Registry("backbone")


def create_backbone(name: str, in_channels: int, input_size: int, **opt: Any) -> nn.Module:
    """Build the backbone registered as ``name``; unknown options are a clear error."""
    factory = BACKBONES.get(name)
    try:
        return factory(in_channels=in_channels, input_size=input_size, **opt)
    except TypeError as exc:
        raise ValueError(f"backbone {name!r}: bad option ({exc})") from None


class BasicBlock(nn.Module):
    """Pre-activation block: ``a = ReLU(BN(x))``; ``out = shortcut + conv(ReLU(BN(conv(a))))``.

    When widths differ the 1×1 projection is applied to the *pre-activated* input ``a`` (TRADES).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # The attribute name is the reference's state-dict key; only projection blocks have it.
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        h = self.relu2(self.bn2(self.conv1(a)))
        if self.drop_rate > 0:
            h = nn.functional.dropout(h, p=self.drop_rate, training=self.training)
        h = self.conv2(h)
        shortcut = x if self.convShortcut is None else self.convShortcut(a)
        return shortcut + h


class NetworkBlock(nn.Module):
    """A group of ``n`` basic blocks; the first one carries the stride and the width change."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k feature extractor: stem, three groups (16k, 32k, 64k), BN-ReLU, global pool.

    The reference pools with a fixed 8×8 average; global adaptive pooling is the same on 32×32
    inputs and also works for the 8×8 digits.
    """

    def __init__(self, in_channels: int = 3, depth: int = 34, widen_factor: int = 10, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[3]
        self._init_weights()

    def _init_weights(self) -> None:
        # He-normal with fan-out (std = sqrt(2 / (k·k·out_channels))), BN scale 1 / shift 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block3(self.block2(self.block1(self.conv1(x))))
        h = self.relu(self.bn1(h))
        return self.pool(h).flatten(1)


@BACKBONES.register("wrn")
def _wrn(
    in_channels: int,
    input_size: int,
    depth: int = 34,
    widen_factor: int = 10,
    drop_rate: float = 0.0,
    dropRate: float | None = None,  # noqa: N803 - the reference YAML's spelling
) -> WideResNet:
    del input_size  # global pooling makes the network size-agnostic
    rate = drop_rate if dropRate is None else dropRate
    return WideResNet(in_channels, depth=depth, widen_factor=widen_factor, drop_rate=rate)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (width, 2·width, 2·width; strides 1, 2, 2) + global pool.

    Fast enough for 8×8 digits on a laptop CPU, and it has BatchNorm so train/eval-mode
    semantics (running statistics during attacks) are exercised as in the WRN.
    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for i, stride in enumerate((1, 2, 2)):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=False),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@BACKBONES.register("small_cnn")
def _small_cnn(in_channels: int, input_size: int, width: int = 32) -> SmallCNN:
    del input_size
    return SmallCNN(in_channels, width=width)


class TinyMLP(nn.Module):
    """Flatten → Linear(in_channels·size², hidden) → ReLU: the fastest model for tests."""

    def __init__(self, in_channels: int, input_size: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * input_size * input_size, hidden)
        self.relu = nn.ReLU(inplace=False)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(x.flatten(1)))


@BACKBONES.register("tiny_mlp")
def _tiny_mlp(in_channels: int, input_size: int, hidden: int = 64) -> TinyMLP:
    return TinyMLP(in_channels, input_size, hidden=hidden)
