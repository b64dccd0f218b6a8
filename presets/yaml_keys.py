"""The reference repository's config keys (METHODS.md §6–§7) and how each maps onto a preset.

Used by :mod:`presets.yaml_import`. Names on the left are the reference's spellings.
"""
from __future__ import annotations

from typing import Any, Optional

from presets import components

DATASET_PROFILES = {"CIFAR10": "cifar10-lt", "CIFAR100": "cifar100-lt"}

# train_mode strings (the dict form {add_reg: {...}} is handled separately)
TRAIN_MODES = {"plain": "plain", "pgd_at": "pgd_at", "trades": "trades",
               "inner_loss": "inner_loss", "AVmix": "avmix"}
REG_OPTS = {None: "none", "none": "none", "trades": "trades", "mart": "mart", "ALP": "alp",
            "ALP_2": "alp_2", "norm": "norm"}

# Losses(opt) dispatches on the FIRST of these keys present in the dict (§3).
LOSS_ORDER = [("focal", "focal"), ("CB", "cb"), ("LDAM", "ldam"), ("UniMargin", "uni_margin"),
              ("BCE", "bce"), ("CDT", "cdt"), ("LogitAdjust", "logit_adjust"),
              ("MultiMargin", "multi_margin")]

# Head matching order (§2.3): substring, except Cos (exact).
HEAD_ORDER = [("FC", "fc", False), ("Cos", "cos", True), ("Dot", "dot", False),
              ("PostNorm", "post_norm", False), ("CDT", "cdt", False),
              ("TDESim", "tde_sim", False), ("CosPlus", "cos_plus", False),
              ("PostProc", "post_proc", False)]
# Heads whose parameters are the FC's (classifier.fc.*): they can read a baseline checkpoint.
FC_COMPATIBLE_HEADS = {"fc", "dot", "post_norm", "cdt", "post_proc"}

SAMPLERS = {"ClassAware": "class_aware"}  # substring match, as the reference

BACKBONE_OPTS = {"depth": "depth", "widen_factor": "widen_factor", "dropRate": "drop_rate"}
BACKBONE_OPT_DEFAULTS = {"use_relu": True, "denoise": (), "activation_name": "relu",
                         "norm_type": "BN", "norm_power": 0.2, "use_pool": True}

# Reference key → (section, key) of the preset, for plain values.
SIMPLE_KEYS = {
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "momentum": ("train", "momentum"), "weight_decay": ("train", "weight_decay"),
    "save_freq": ("train", "save_freq"), "eval_freq": ("train", "eval_freq"),
    "train_epsilon": ("train.attack", "eps"), "train_step_size": ("train.attack", "step_size"),
    "train_num_steps": ("train.attack", "num_steps"),
    "test_epsilon": ("eval", "eps"), "test_step_size": ("eval", "step_size"),
    "test_num_steps": ("eval", "num_steps"), "test_batch_size": ("eval", "batch_size"),
}
EVAL_KEYS = {"test_epsilon", "test_step_size", "test_num_steps", "test_batch_size"}
INT_KEYS = {"batch_size", "save_freq", "eval_freq", "train_num_steps", "test_num_steps",
            "test_batch_size", "epochs", "resume_epoch", "warmup_epochs", "num_classes"}

# Read by this converter elsewhere (kind, schedule, components, dataset).
STRUCTURAL_KEYS = {"dataset", "num_classes", "imbalance_ratio", "train_mode", "beta", "loss_opt",
                   "adv_loss_opt", "nat_loss_opt", "classifier", "classifier_opt", "backbone",
                   "backbone_opt", "sampler", "epochs", "resume_epoch", "load_model",
                   "lr_decline", "warmup_epochs", "lr_dict", "deffer_opt", "other_params"}

# Bookkeeping of the reference's own runs: dropped with a note.
DROPPED_KEYS = {
    "model_dir": "run directory: advlt makes one per run",
    "model_path": "checkpoint evaluated by test.py: choose it with `advlt eval RUN --checkpoint N`",
    "remark": "free text of the reference's logs (use `advlt note RUN TEXT`)",
    "log_level": "logging verbosity",
    "log_interval": "log lines every N batches (advlt's train.log_interval paces progress events)",
}

# Keys that are read but change nothing reported, at their usual values.
NEUTRAL_KEYS = {"random": True, "white_box_attack": True, "cpu_data": False, "feature_ext": False,
                "centroids": False, "targeted": False, "target_opt": None, "existing_ratio": 1,
                "load_modules": ()}

# METHODS.md §7.2, last row: never read by the reference.
DEAD_KEYS = {"load_from", "source_model_path", "target_model_path", "freeze_set", "begin_save",
             "eval_rob", "denoise", "step_bar", "method", "alpha", "margin_opt", "activation",
             "free_bn"}

REQUIRED_KEYS = ["epochs", "dataset", "train_mode"]


def match_head(name: str) -> Optional[str]:
    for ref, ours, exact in HEAD_ORDER:
        if (name == ref) if exact else (ref in name):
            return ours
    return None


def match_sampler(name: str) -> Optional[str]:
    for ref, ours in SAMPLERS.items():
        if ref in name:
            return ours
    return None


def coerce_number(value: Any, want_int: bool) -> Any:
    """YAML 1.1 reads ``2e-4`` (no dot) as a string; the reference's loader then fails on it
    too, but the intent is clear, so numeric strings become numbers."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if want_int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not want_int and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def options(kind: str, name: str, opts: Any) -> dict:
    """A reference option dict (``null`` → {}) with ints turned into floats where ours are."""
    return components.normalise_options(kind, name, dict(opts or {}))
