"""Inference-time heads: evaluating a trained checkpoint through a different classifier head
(METHODS.md §6 rows 13–18, §2.3), and the logit-scale bookkeeping of §5.7.

The reference's ``test.py`` builds the network from an *evaluation* config that may name another
head than training (post-hoc CDT, τ-norm, post-hoc logit adjustment, TDE debiasing, RoBal's
boundary adjustment) and loads the trained weights non-strictly. Here the head is a
``HeadSpec``; :func:`evaluation_network` builds the network with it and
:func:`load_for_evaluation` loads a checkpoint, refusing loads that would leave the backbone or
the classifier's weights at their random initialisation.

Built-in variants (the inference-time presets, used when a request names one without a head):

* ``post-cdt``: ``cdt`` with ``posthoc``, τ = 0.3 → ``z_c = (W f + b)_c / n_c^0.3`` (row 13);
* ``post-norm``: ``post_norm`` with ``norm``, τ = 1, no bias → ``z_c = f·w_c/‖w_c‖`` (row 14);
* ``post-logit-adjust``: ``post_proc`` FC with ``posthoc``, τ_p = 1 → ``z = W f + b − log π`` (row 15);
* ``tde``: the trained ``tde_sim`` head with ``posthoc`` → debiased logits using the trained
  ``moving_ed`` (row 16).

RoBal's boundary adjustment (``post_proc`` Cos, scale 10, ``z = 10·cos' − τ_p·log π``, rows 17–20)
depends on the dataset (τ_p, γ), so it comes with the run as ``RunConfig.inference_head``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from engine.heads import create_head
from engine.losses import create_loss
from engine.network import Network, build_network, load_reference_state_dict
from presets.schema import HeadSpec, ModelConfig, RunConfig

DEFAULT_INFERENCE_HEAD = "default-inference-head"  # variant label of RunConfig.inference_head

VARIANT_HEADS: dict[str, HeadSpec] = {
    "post-cdt": HeadSpec("cdt", {"posthoc": True, "tau": 0.3, "bias": False}),
    "post-norm": HeadSpec("post_norm", {"norm": True, "tau": 1.0, "bias": False, "avg_T": 1.0}),
    "post-logit-adjust": HeadSpec("post_proc", {"classifier": "FC", "posthoc": True, "tau_p": 1.0,
                                                "bias": False}),
    "tde": HeadSpec("tde_sim", {"posthoc": True}),
}

# Options a cosine-type evaluation head takes over from a different cosine-type training head
# when the request leaves them out: RoBal's PostProc-Cos must use the γ the CosPlus head was
# trained with (METHODS.md §2.3: "scale and γ must match training").
_INHERITED_ACROSS_HEADS = ("gamma", "norm_eps")
_COSINE_HEADS = ("cos", "cos_plus", "tde_sim", "post_proc")

# Classifier parameters a checkpoint may lack without making the evaluation meaningless:
# ``cla_scale`` starts at 1 (τ-norm on a plain FC checkpoint), a frozen cosine bias at 0.
_OPTIONAL_SUFFIXES = ("cla_scale", "bias", "moving_ed", "num_batches_tracked")

# Evaluation and training logit scales further apart than this factor trigger the §5.7 warning.
LOGIT_SCALE_TOLERANCE = 1.25


def resolve_head_spec(
    cfg: RunConfig, variant: str | None, variant_head: Mapping[str, Any] | None
) -> tuple[str | None, HeadSpec | None]:
    """The variant label and head an evaluation request asks for.

    ``variant_head`` wins (labelled ``variant`` or ``"custom"``); a ``variant`` alone must be a
    built-in (:data:`VARIANT_HEADS`); with neither, a run's ``inference_head`` (RoBal) is the
    default, labelled ``"default-inference-head"``; otherwise the trained head (``None``).
    """
    if variant_head is not None:
        if not isinstance(variant_head, Mapping) or "head" not in variant_head:
            raise ValueError(f"variant_head must be {{'head': ..., 'head_opt': {{...}}}}, got {variant_head!r}")
        unknown = set(variant_head) - {"head", "head_opt"}
        if unknown:
            raise ValueError(f"variant_head has unknown keys {sorted(unknown)}")
        spec = HeadSpec(str(variant_head["head"]), dict(variant_head.get("head_opt") or {}))
        return (variant or "custom"), spec
    if variant is not None:
        if variant not in VARIANT_HEADS:
            raise ValueError(
                f"unknown inference variant {variant!r} without a variant_head; built-in: {', '.join(VARIANT_HEADS)}"
            )
        return variant, VARIANT_HEADS[variant]
    if cfg.inference_head is not None:
        head = cfg.inference_head
        if isinstance(head, Mapping):  # a config read without from_plain
            head = HeadSpec(head["head"], dict(head.get("head_opt") or {}))
        return DEFAULT_INFERENCE_HEAD, head
    return None, None


def eval_head_options(trained: ModelConfig, head_spec: HeadSpec | None) -> tuple[str, dict]:
    """Head name and options used at evaluation.

    The same head as training keeps every trained option and the spec overrides some (e.g. TDE
    switches ``posthoc`` on while scale/α/γ/μ stay as trained). Another cosine-type head takes
    over the trained γ (and ``norm_eps``) unless the spec sets them.
    """
    if head_spec is None:
        return trained.head, dict(trained.head_opt)
    opt = dict(head_spec.head_opt)
    if head_spec.head == trained.head:
        return head_spec.head, {**dict(trained.head_opt), **opt}
    if head_spec.head in _COSINE_HEADS and trained.head in _COSINE_HEADS:
        for key in _INHERITED_ACROSS_HEADS:
            if key in trained.head_opt and key not in opt:
                opt[key] = trained.head_opt[key]
    return head_spec.head, opt


def evaluation_network(
    cfg: RunConfig,
    head_spec: HeadSpec | None,
    counts: Sequence[int],
    in_channels: int,
    input_size: int,
) -> Network:
    """The trained backbone with the evaluation head (``None``: the trained head), untrained
    weights; load them with :func:`load_for_evaluation`."""
    head, head_opt = eval_head_options(cfg.model, head_spec)
    model_cfg = ModelConfig(backbone=cfg.model.backbone, backbone_opt=dict(cfg.model.backbone_opt),
                            head=head, head_opt=head_opt)
    return build_network(model_cfg, len(counts), in_channels, input_size, counts)


def load_for_evaluation(network: Network, state_dict: Mapping[str, Any]) -> list[str]:
    """Non-strict load (reference layout accepted); returns warnings, raises on useless loads.

    Raises ``ValueError`` when a backbone tensor or a non-optional classifier tensor (a weight)
    is missing or has another shape: the evaluation would measure a random network. A missing
    ``cla_scale`` (stays 1), cosine bias (stays 0) or ``moving_ed`` (stays 0: TDE debiasing
    becomes a no-op) is a warning.
    """
    report = load_reference_state_dict(network, state_dict)
    if report["mismatched"]:
        raise ValueError(f"checkpoint tensors have other shapes than the network: {report['mismatched'][:5]}")
    fatal = [k for k in report["missing"] if not k.endswith(_OPTIONAL_SUFFIXES)]
    if fatal:
        raise ValueError(
            f"checkpoint lacks {len(fatal)} tensors the evaluation network needs (e.g. {fatal[:3]}): "
            "it was trained with another backbone or a classifier whose weights this head cannot use"
        )
    warnings = []
    soft = [k for k in report["missing"] if k.endswith(("moving_ed", "bias"))]
    if soft:
        warnings.append(f"checkpoint has no {', '.join(soft)}; initial values (zeros) are used")
    return warnings


def _geometric_mean_inverse(temperatures: torch.Tensor) -> float:
    return float(torch.exp(-temperatures.double().log().mean()))


def training_logit_scale(cfg: RunConfig, counts: Sequence[int] | None = None) -> float:
    """Effective scale of the logits the training loss saw (METHODS.md §5.7).

    The trained head's nominal ``logit_scale`` (cosine heads: ``scale``) times the outer loss's
    multiplier ``s`` (``uni_margin``, ``ldam``, ``multi_margin``), times the geometric mean of
    ``1/a_c`` for class-dependent train-time temperatures (CDT loss, non-post-hoc CDT head).
    Without ``counts`` uniform counts are assumed, so class-dependent factors are 1.
    """
    num_classes = cfg.dataset.num_classes if counts is None else len(counts)
    counts = [1] * num_classes if counts is None else list(counts)
    head = create_head(cfg.model.head, 4, num_classes, counts, **dict(cfg.model.head_opt))
    scale = float(getattr(head, "logit_scale", 1.0))
    if getattr(head, "posthoc", True) is False and hasattr(head, "train_temperatures"):
        scale *= _geometric_mean_inverse(head.train_temperatures)
    loss = create_loss(cfg.train.loss.name, counts, **dict(cfg.train.loss.opt))
    scale *= float(getattr(loss, "s", 1.0))
    if hasattr(loss, "temperatures"):
        scale *= _geometric_mean_inverse(loss.temperatures)
    return scale


def logit_scale_warning(eval_scale: float, train_scale: float,
                        tolerance: float = LOGIT_SCALE_TOLERANCE) -> str | None:
    """A warning when the evaluation head's logit scale differs from training's (§5.7)."""
    if eval_scale <= 0 or train_scale <= 0 or not (math.isfinite(eval_scale) and math.isfinite(train_scale)):
        return f"logit scale cannot be compared (evaluation {eval_scale:.3g}, training {train_scale:.3g})"
    ratio = max(eval_scale, train_scale) / min(eval_scale, train_scale)
    if ratio <= tolerance:
        return None
    return (
        f"logit scale at evaluation ({eval_scale:.3g}) differs from training ({train_scale:.3g}) by "
        f"x{ratio:.2f}: CE-based attacks (FGSM/PGD/MIM) may overstate robustness; trust CW and "
        "AutoAttack (METHODS.md 5.7)"
    )
