"""Option tables of the engine's components, known to the manager without importing torch.

Each entry maps an option name to its default (METHODS.md §2.3, §3, §4.2); the default's type is
the type a preset value must have. tests/test_registries_agree.py checks these names against the
engine's registries.
"""
from __future__ import annotations

from typing import Any

HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    # The FC bias is prior-initialised by the engine whenever the outer loss is the plain focal
    # loss (reference behaviour, §2.3), so there is no option for it.
    "fc": {},
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

# Allowed ranges of numeric options: (low, high, low inclusive, high inclusive); None = open.
# By option name for every component, then (kind, component, option) where the same name means
# different things (CB's β is a probability-like effective-number parameter, TRADES' a weight).
_POSITIVE = (0.0, None, False, False)
_NON_NEGATIVE = (0.0, None, True, False)
_UNIT = (0.0, 1.0, True, True)
RANGES_BY_NAME = {
    "scale": _POSITIVE, "s": _POSITIVE, "T": _POSITIVE, "avg_T": _POSITIVE,
    "tau": _NON_NEGATIVE, "tau_p": _NON_NEGATIVE, "tau_b": _NON_NEGATIVE,
    "tau_m": _NON_NEGATIVE, "gamma": _NON_NEGATIVE, "alpha": _NON_NEGATIVE, "eta": _NON_NEGATIVE,
    "m": _NON_NEGATIVE, "max_m": _NON_NEGATIVE, "g": _NON_NEGATIVE, "norm_eps": _NON_NEGATIVE,
    "beta_adv": _NON_NEGATIVE, "beta_nat": _NON_NEGATIVE, "beta_reg": _NON_NEGATIVE,
    "beta": _NON_NEGATIVE, "mu": _UNIT,
}
RANGES = {("loss", "cb", "beta"): (0.0, 1.0, True, False), ("loss", "cb", "alpha"): _POSITIVE}


def _range_problem(value: Any, rule: tuple) -> str | None:
    low, high, low_in, high_in = rule
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    too_low = low is not None and (value < low or (value == low and not low_in))
    too_high = high is not None and (value > high or (value == high and not high_in))
    if not (too_low or too_high):
        return None
    left = "[" if low_in else "("
    right = "]" if high_in else ")"
    return f"must be in {left}{low}, {'∞' if high is None else high}{right}, got {value!r}"


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
        else:
            rule = RANGES.get((kind, name, key), RANGES_BY_NAME.get(key))
            message = _range_problem(value, rule) if rule else None
            if message:
                out.append(Problem(f"{path}.{key}", message))


def check_mode_options(out: list, mode: str, options: dict) -> None:
    check_options(out, "train.mode_opt", "mode", mode, options, name_path="train.mode")


def effective_options(kind: str, name: str, options: dict | None) -> dict[str, Any]:
    """Every option of component ``name`` with its value in effect: the defaults updated with
    ``options`` (what the engine will run with, whether a value was written or defaulted)."""
    return {**TABLES[kind].get(name, {}), **(options or {})}


def normalise_options(kind: str, name: str, options: dict | None) -> dict[str, Any]:
    """``options`` with integers turned into floats where the option is a float (``scale = 16``
    and ``scale = 16.0`` are the same setting and must give the same config hash)."""
    known = TABLES[kind].get(name, {})
    out = {}
    for key, value in (options or {}).items():
        default = known.get(key)
        if (isinstance(default, float) and isinstance(value, int)
                and not isinstance(value, bool)):
            value = float(value)
        out[key] = value
    return out
