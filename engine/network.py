"""The model: ``backbone → features → classifier head`` (METHODS.md §2.1), and loading of the
reference's checkpoint layout (§4.5).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from engine.backbones import create_backbone
from engine.heads import create_head

# Wrapper prefixes the reference's checkpoints carry (``model.module.`` from its model wrapper
# and nn.DataParallel); stripped in any order and repetition.
_WRAPPER_PREFIXES = ("model.", "module.")
# A TRADES-WRN block the reference's checkpoints may contain but its forward never uses.
_SKIPPED_KEY_PART = "sub_block1"


class Network(nn.Module):
    """``logits = classifier(backbone(x))``; state-dict keys ``backbone.*`` and ``classifier.*``."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    @property
    def logit_scale(self) -> float:
        return float(getattr(self.classifier, "logit_scale", 1.0))


def build_network(
    model_cfg: Any,
    num_classes: int,
    in_channels: int,
    input_size: int,
    class_counts: Sequence[int],
    *,
    focal_prior_bias: bool = False,
) -> Network:
    """Build from a ``presets.schema.ModelConfig`` (backbone/backbone_opt/head/head_opt).

    ``focal_prior_bias``: initialise the FC bias to ``−log((1−π)/π)``, which the reference does
    when the outer loss is the plain focal loss (only heads with ``init_prior_bias`` support it).
    """
    backbone = create_backbone(model_cfg.backbone, in_channels, input_size, **dict(model_cfg.backbone_opt))
    head = create_head(model_cfg.head, backbone.out_dim, num_classes, class_counts, **dict(model_cfg.head_opt))
    if focal_prior_bias:
        if not hasattr(head, "init_prior_bias"):
            raise ValueError(f"head {model_cfg.head!r} has no bias to initialise from the class prior")
        head.init_prior_bias(class_counts)
    return Network(backbone, head)


def strip_wrapper_prefixes(key: str) -> str:
    """``model.module.backbone.conv1.weight`` → ``backbone.conv1.weight``."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_reference_state_dict(
    network: nn.Module, state_dict: Mapping[str, Any], load_modules: Iterable[str] = ()
) -> dict:
    """Non-strict load of a (reference-layout) state dict into ``network``.

    Strips wrapper prefixes, skips ``sub_block1`` keys, keeps only keys containing one of
    ``load_modules`` when that is non-empty, and copies every tensor whose name exists with the
    same shape. Returns ``{"missing", "unexpected", "mismatched", "loaded"}`` so the caller can
    warn, as the reference does, instead of failing.
    """
    modules = tuple(load_modules)
    own = network.state_dict()
    loaded: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    with torch.no_grad():
        for raw_key, value in state_dict.items():
            key = strip_wrapper_prefixes(raw_key)
            if _SKIPPED_KEY_PART in key or not torch.is_tensor(value):
                continue
            if modules and not any(m in key for m in modules):
                continue
            if key not in own:
                unexpected.append(key)
                continue
            if own[key].shape != value.shape:
                mismatched.append(key)
                continue
            own[key].copy_(value)
            loaded.add(key)
    missing = [k for k in own if k not in loaded]
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched, "loaded": len(loaded)}
