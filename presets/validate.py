"""Validation of plain config data against the typed schema.

Collects *every* problem with its dotted key path (and the file line when known) instead of
stopping at the first, so a user fixes a preset in one pass.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Optional

from presets import components, schema


@dataclass(frozen=True)
class Problem:
    path: str  # dotted key path, e.g. "train.attack.eps"
    message: str
    source: Optional[str] = None  # file the value came from
    line: Optional[int] = None

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = f" ({self.source}{':' + str(self.line) if self.line else ''})"
        return f"{self.path}: {self.message}{where}"


class ConfigError(ValueError):
    """One report listing every problem; the CLI prints it and exits 2."""

    def __init__(self, problems: list[Problem], headline: str = "invalid configuration"):
        self.problems = problems
        self.headline = headline
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.headline}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
               dict: "a table", tuple: "a list", list: "a list"}


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is tuple or tp is list:
        return isinstance(value, (list, tuple))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_dataclass(cls: type, data: Any, path: str, out: list[Problem]) -> None:
    """Type-check ``data`` against dataclass ``cls``; append problems to ``out``."""
    if not isinstance(data, dict):
        out.append(Problem(path or "<root>", f"expected a table, got {data!r}"))
        return
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        kpath = f"{path}.{key}" if path else key
        if key not in names:
            out.append(Problem(kpath, f"unknown key; allowed: {', '.join(sorted(names))}"))
            continue
        tp, optional = schema._strip_optional(hints[key])
        if value is None:
            if not optional:
                out.append(Problem(kpath, "must not be empty"))
            continue
        if dataclasses.is_dataclass(tp):
            check_dataclass(tp, value, kpath, out)
        elif not _type_ok(value, tp):
            out.append(Problem(kpath, f"expected {_TYPE_NAMES.get(tp, tp)}, got {value!r}"))


def _choice(out: list[Problem], path: str, value: Any, allowed: tuple, optional=False) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        out.append(Problem(path, f"unknown value {value!r}; allowed: {', '.join(allowed)}"))


def _positive(out: list[Problem], path: str, value: Any, strict=True) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (value <= 0) if strict else (value < 0):
            out.append(Problem(path, f"must be {'> 0' if strict else '>= 0'}, got {value!r}"))


def _below(out: list[Problem], path: str, value: Any, limit: float, inclusive=False) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > limit or (value == limit and not inclusive):
            bound = f"<= {limit}" if inclusive else f"< {limit}"
            out.append(Problem(path, f"must be {bound}, got {value!r}"))


def check_values(cfg: dict, out: list[Problem]) -> None:
    """Range and name checks on an already type-checked plain config."""
    ds, model, train, ev = cfg["dataset"], cfg["model"], cfg["train"], cfg["eval"]
    _choice(out, "kind", cfg["kind"], schema.KINDS)
    _choice(out, "dataset.name", ds["name"], schema.DATASETS)
    r = ds["imbalance_ratio"]
    if isinstance(r, (int, float)) and not 0 < r <= 1:
        out.append(Problem("dataset.imbalance_ratio", f"must be in (0, 1] (n_min/n_max), got {r!r}"))
    _positive(out, "dataset.num_classes", ds["num_classes"])
    _positive(out, "dataset.eval_subset", ds["eval_subset"])
    _positive(out, "dataset.num_workers", ds["num_workers"], strict=False)
    _choice(out, "model.backbone", model["backbone"], schema.BACKBONES)
    components.check_options(out, "model.head_opt", "head", model["head"], model["head_opt"],
                             name_path="model.head")
    head = cfg.get("inference_head")
    if head:
        components.check_options(out, "inference_head.head_opt", "head", head["head"],
                                 head["head_opt"], name_path="inference_head.head")
    components.check_mode_options(out, train["mode"], train["mode_opt"])
    for loss in ("loss", "adv_loss", "nat_loss"):
        spec = train[loss]
        components.check_options(out, f"train.{loss}.opt", "loss", spec["name"], spec["opt"],
                                 name_path=f"train.{loss}.name")
    for key in ("epochs", "batch_size", "eval_freq", "save_freq", "log_interval"):
        _positive(out, f"train.{key}", train[key])
    for key in ("lr", "momentum", "weight_decay", "warmup_epochs"):
        _positive(out, f"train.{key}", train[key], strict=False)
    _choice(out, "train.lr_schedule", train["lr_schedule"], schema.LR_SCHEDULES)
    _choice(out, "train.freeze", train["freeze"], schema.FREEZE_MODES)
    _choice(out, "train.sampler", train["sampler"], schema.SAMPLERS, optional=True)
    _choice(out, "train.robal_forwards", train["robal_forwards"], schema.ROBAL_FORWARDS)
    _choice(out, "train.amp", train["amp"], ("auto", "off"))
    if train["lr_dict"] is not None:
        if "else" not in train["lr_dict"]:
            out.append(Problem("train.lr_dict", "needs an 'else' entry (lr of unmatched params)"))
        for k, v in train["lr_dict"].items():
            if not k:
                out.append(Problem("train.lr_dict", "an empty key matches every parameter"))
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                out.append(Problem(f"train.lr_dict.{k}", f"must be a learning rate >= 0, got {v!r}"))
    for i, m in enumerate(train["milestones"]):
        if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
            out.append(Problem(f"train.milestones[{i}]", f"must be a positive epoch, got {m!r}"))
    if train["deffer"] is not None:
        for key in train["deffer"]:
            if key not in ("DRW", "DM"):
                out.append(Problem(f"train.deffer.{key}", "unknown deferred re-balancing; "
                                   "allowed: DRW, DM"))
    _below(out, "train.momentum", train["momentum"], 1.0)
    att = train["attack"]
    _below(out, "train.attack.eps", att["eps"], 1.0, inclusive=True)
    _below(out, "eval.eps", ev["eps"], 1.0, inclusive=True)
    _positive(out, "train.attack.eps", att["eps"])
    _positive(out, "train.attack.step_size", att["step_size"])
    _positive(out, "train.attack.num_steps", att["num_steps"], strict=False)
    _choice(out, "train.attack.rand_start", att["rand_start"], schema.RAND_STARTS)
    _positive(out, "eval.eps", ev["eps"])
    _positive(out, "eval.step_size", ev["step_size"])
    _positive(out, "eval.num_steps", ev["num_steps"])
    _positive(out, "eval.batch_size", ev["batch_size"])
    if ev["n_ex"] is not None:
        _positive(out, "eval.n_ex", ev["n_ex"])
    for i, a in enumerate(ev["attacks"]):
        _choice(out, f"eval.attacks[{i}]", a, schema.ATTACKS)
        if a in ev["attacks"][:i]:
            out.append(Problem(f"eval.attacks[{i}]", f"{a!r} is listed twice"))
    if not ev["attacks"]:
        out.append(Problem("eval.attacks", "needs at least one attack"))
    _positive(out, "seed", cfg["seed"], strict=False)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(cfg["device"])):
        out.append(Problem("device", f"unknown device {cfg['device']!r}; allowed: auto, cpu, "
                                     "cuda, cuda:N, mps"))
    if cfg["kind"] == "inference" and not cfg.get("inference_head"):
        out.append(Problem("inference_head", "an inference-time preset needs an "
                                             "[inference_head] table (head, head_opt)"))
    _choice(out, "eval.aa_version", ev["aa_version"], schema.AA_VERSIONS)
    if cfg["kind"] == "finetune" and not cfg.get("parent_checkpoint"):
        out.append(Problem("parent_run", "a fine-tune preset starts from a trained run: "
                                         "pass --from RUN"))


_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


def check_meta(meta: dict, out: list[Problem]) -> None:
    """Types of the ``[preset]`` table (what the preset is; the config lives elsewhere)."""
    name = meta.get("name")
    if name is not None and not (isinstance(name, str) and _NAME_RE.fullmatch(name)):
        out.append(Problem("preset.name", "must be lower-case letters, digits, '.', '_' or '-' "
                                          f"(a CLI argument), got {name!r}"))
    for key in ("title", "summary", "kind"):
        if key in meta and not isinstance(meta[key], str):
            out.append(Problem(f"preset.{key}", f"expected a string, got {meta[key]!r}"))
    row = meta.get("paper_row")
    if row is not None and (not isinstance(row, int) or isinstance(row, bool) or row < 1):
        out.append(Problem("preset.paper_row", f"must be a positive integer, got {row!r}"))
    for key in ("reference_config", "notes"):
        value = meta.get(key)
        if value is None or isinstance(value, str):
            continue
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            out.append(Problem(f"preset.{key}", f"expected a string or a list of strings, "
                                                f"got {value!r}"))
