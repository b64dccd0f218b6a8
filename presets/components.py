"""Option tables of the engine's components, known to the manager without importing torch.

Each entry maps an option name to its default (METHODS.md §2.3, §3, §4.2); the default's type is
the type a preset value must have. tests/test_registries_agree.py checks these names against the
engine's registries.
"""
from __future__ import annotations

from typing import Any

HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "fc": {"prior_bias_init": False},
    "cos": {"scale": 16.0, "bias": False, "norm_eps": 0.0},
    "dot": {},
    "post_norm": {"norm": False, "feature_norm": False, "lws": False, "tau": 0.0, "bias": False,
                  "avg_T": 1.0, "norm_eps": 0.0},
    "cdt": {"tau": 1.0, "posthoc": False, "bias": False},
    "tde_sim": {"scale": 16.0, "alpha": 3.0, "gamma": 0.0, "mu": 0.9, "posthoc": False,
                "bias": False, "moving_avg_init": "zeros", "norm_eps": 0.0},
    "cos_plus": {"scale": 16.0, "gamma": 0.03125, "eta": 1.0, "bias": False, "moving_avg": True,
                 "mu": 0.9, "moving_avg_init": "zeros", "norm_eps": 0.0, "posthoc": False},
    "post_proc": {"classifier": "FC", "tau_p": 1.0, "posthoc": False, "bias": False,
                  "scale": 10.0, "gamma": 0.03125, "norm_eps": 0.0},
}

LOSS_OPTIONS: dict[str, dict[str, Any]] = {
    "ce": {},
    "focal": {"gamma": 2.0, "use_sigmoid": True},
    "cb": {"beta": 0.9999, "loss_type": "focal", "gamma": 2.0, "alpha": 1.0, "use_sigmoid": True},
    "ldam": {"max_m": 0.5, "s": 10.0, "g": 0.25, "inv": False},
    "uni_margin": {"m": 0.5, "s": 10.0},
    "bce": {"T": 1.0},
    "cdt": {"tau": 1.0},
    "logit_adjust": {"tau": 1.0},
    "multi_margin": {"m": 0.0, "s": 1.0, "tau_b": 0.0, "tau_m": 0.0},
}

MODE_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "pgd_at": {},
    "trades": {"beta": 1.0},
    "inner_loss": {},
    "add_reg": {"beta_adv": 1.0, "beta_nat": 0.0, "beta_reg": 0.0, "reg": "none"},
    "avmix": {},
}

CHOICES = {
    ("head", "post_proc", "classifier"): ("FC", "Cos"),
    ("head", "tde_sim", "moving_avg_init"): ("zeros", "reference"),
    ("head", "cos_plus", "moving_avg_init"): ("zeros", "reference"),
    ("loss", "cb", "loss_type"): ("focal", "sigmoid", "softmax"),
    ("mode", "add_reg", "reg"): ("none", "trades", "mart", "alp", "alp_2", "norm"),
}

TABLES = {"head": HEAD_OPTIONS, "loss": LOSS_OPTIONS, "mode": MODE_OPTIONS}


def _type_matches(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def check_options(out: list, path: str, kind: str, name: str, options: dict,
                  name_path: str) -> None:
    from presets.validate import Problem

    table = TABLES[kind]
    if name not in table:
        out.append(Problem(name_path, f"unknown {kind} {name!r}; allowed: {', '.join(table)}"))
        return
    known = table[name]
    for key, value in (options or {}).items():
        if key not in known:
            allowed = ", ".join(known) or "(none)"
            out.append(Problem(f"{path}.{key}", f"unknown option of {kind} {name!r}; allowed: {allowed}"))
        elif not _type_matches(value, known[key]):
            out.append(Problem(f"{path}.{key}", f"expected {type(known[key]).__name__}, got {value!r}"))
        elif (kind, name, key) in CHOICES and value not in CHOICES[(kind, name, key)]:
            allowed = ", ".join(CHOICES[(kind, name, key)])
            out.append(Problem(f"{path}.{key}", f"unknown value {value!r}; allowed: {allowed}"))


def check_mode_options(out: list, mode: str, options: dict) -> None:
    if mode in MODE_OPTIONS:
        check_options(out, "train.mode_opt", "mode", mode, options, name_path="train.mode")
