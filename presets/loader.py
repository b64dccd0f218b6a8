"""Presets and dataset profiles: TOML files → a validated, frozen RunConfig.

Resolution order (later wins): schema defaults → dataset profile → preset → the preset's
``[datasets."<name>"]`` section → overrides (``--set a.b=value``, ``--epochs`` ...).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from presets import schema
from presets.validate import ConfigError, Problem, check_dataclass, check_values

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BUILTIN_DIR = Path(__file__).parent / "builtin"
PROFILE_DIR = Path(__file__).parent / "profiles"
PRESET_META_KEYS = {"name", "title", "kind", "summary", "paper_row", "reference_config", "notes"}
PRESET_SECTIONS = {"preset", "datasets"}


@dataclass
class Preset:
    name: str
    title: str
    kind: str
    summary: str
    path: Path
    body: dict  # config sections (model, train, eval, inference_head, ...)
    per_dataset: dict = field(default_factory=dict)  # dataset name → config sections
    meta: dict = field(default_factory=dict)
    builtin: bool = True

    def as_listing(self) -> dict:
        return {"name": self.name, "kind": self.kind, "title": self.title,
                "summary": self.summary, "builtin": self.builtin, "path": str(self.path)}


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("<file>", f"not valid TOML: {exc}", str(path))],
                          f"cannot read {path}") from None
    except OSError as exc:
        raise ConfigError([Problem("<file>", str(exc), str(path))], f"cannot read {path}") from None


def parse_preset(path: Path, builtin: bool = False) -> Preset:
    """Read one preset file; structural problems are reported with their key paths."""
    data = _read_toml(path)
    problems: list[Problem] = []
    meta = data.get("preset")
    if not isinstance(meta, dict):
        problems.append(Problem("preset", "missing [preset] table (name, title, kind, summary)",
                                str(path)))
        meta = {}
    for key in meta:
        if key not in PRESET_META_KEYS:
            problems.append(Problem(f"preset.{key}", "unknown key; allowed: "
                                    + ", ".join(sorted(PRESET_META_KEYS)), str(path)))
    name = meta.get("name", path.stem)
    kind = meta.get("kind", "train")
    if kind not in schema.KINDS:
        problems.append(Problem("preset.kind", f"unknown value {kind!r}; allowed: "
                                + ", ".join(schema.KINDS), str(path)))
    per_dataset = data.get("datasets", {})
    for ds in per_dataset:
        if ds not in schema.DATASETS:
            problems.append(Problem(f"datasets.{ds}", "unknown dataset; allowed: "
                                    + ", ".join(schema.DATASETS), str(path)))
    body = {k: v for k, v in data.items() if k not in PRESET_SECTIONS}
    if problems:
        raise ConfigError(_with_lines(problems, path), f"invalid preset {path}")
    return Preset(name=name, title=meta.get("title", name), kind=kind,
                  summary=meta.get("summary", ""), path=path, body=body,
                  per_dataset=per_dataset, meta=meta, builtin=builtin)


def preset_dirs(user_dir: Optional[Path] = None) -> list[tuple[Path, bool]]:
    dirs = [(BUILTIN_DIR, True)]
    if user_dir is not None and user_dir.is_dir():
        dirs.append((user_dir, False))
    return dirs


def list_presets(user_dir: Optional[Path] = None) -> list[Preset]:
    """Built-in presets, then the user's (a user file with a built-in name replaces it)."""
    found: dict[str, Preset] = {}
    for folder, builtin in preset_dirs(user_dir):
        for path in sorted(folder.glob("*.toml")):
            preset = parse_preset(path, builtin=builtin)
            found[preset.name] = preset
    return list(found.values())


def get_preset(name: str, user_dir: Optional[Path] = None) -> Preset:
    for preset in list_presets(user_dir):
        if preset.name == name:
            return preset
    names = ", ".join(p.name for p in list_presets(user_dir))
    raise ConfigError([Problem("preset", f"unknown preset {name!r}; allowed: {names}")],
                      "unknown preset")


def load_profile(dataset: str) -> dict:
    if dataset not in schema.DATASETS:
        raise ConfigError([Problem("dataset", f"unknown dataset {dataset!r}; allowed: "
                                   + ", ".join(schema.DATASETS))], "unknown dataset")
    return _read_toml(PROFILE_DIR / f"{dataset}.toml")


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base``. Option tables (``*_opt``, ``opt``,
    ``lr_dict``, ``deffer``) are merged key by key too, so a per-dataset section can change one
    option of a head."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``0.1``, ``true``, ``[1, 2]``, ``{a = 1}``) or,
    failing that, a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: Iterable[str]) -> tuple[dict, list[Problem]]:
    tree: dict = {}
    problems: list[Problem] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key):
            problems.append(Problem(key or item, f"bad override {item!r}; expected KEY=VALUE "
                                    "with a dotted key such as train.epochs=3"))
            continue
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(Problem(key, "conflicts with another override"))
                break
        else:
            node[parts[-1]] = parse_value(raw.strip())
    return tree, problems


def resolve(preset: Preset, dataset: str, overrides: Optional[dict] = None,
            extra: Optional[dict] = None) -> schema.RunConfig:
    """Merge everything for ``dataset`` and validate; raise ConfigError listing every problem."""
    problems: list[Problem] = []
    profile = load_profile(dataset)
    merged = schema.RunConfig().to_dict()
    layers = [(profile, str(PROFILE_DIR / f"{dataset}.toml")), (preset.body, str(preset.path)),
              (preset.per_dataset.get(dataset, {}), str(preset.path)),
              (extra or {}, None), (overrides or {}, "--set")]
    for layer, source in layers:
        layer_problems: list[Problem] = []
        check_dataclass(schema.RunConfig, layer, "", layer_problems)
        if layer_problems:
            path = Path(source) if source and source != "--set" else None
            problems += _with_lines(layer_problems, path, source)
            layer = _without(layer, [p.path for p in layer_problems])
        merged = deep_merge(merged, layer)
    merged["preset"] = preset.name
    merged["kind"] = preset.kind
    check_values(merged, problems)
    if problems:
        raise ConfigError(problems)
    return schema.RunConfig.from_dict(merged)


def _without(layer: dict, paths: list[str]) -> dict:
    """A copy of ``layer`` without the keys at ``paths`` (so one bad value still lets every
    other value be checked in the same pass)."""
    out = copy.deepcopy(layer)
    for path in paths:
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def _with_lines(problems: list[Problem], path: Optional[Path], source: Optional[str] = None
                ) -> list[Problem]:
    """Attach the line of each problem's last key in ``path`` (best effort, after its table)."""
    if path is None or not path.is_file():
        return [Problem(p.path, p.message, source or p.source, p.line) for p in problems]
    lines = path.read_text().splitlines()
    out = []
    for p in problems:
        parts = re.sub(r"\[\d+\]$", "", p.path).split(".")
        line = _find_line(lines, parts)
        out.append(Problem(p.path, p.message, str(path), line))
    return out


def _find_line(lines: list[str], parts: list[str]) -> Optional[int]:
    start = 0
    for depth in range(len(parts) - 1, 0, -1):
        header = ".".join(parts[:depth])
        for i, text in enumerate(lines):
            stripped = text.strip().replace('"', "")
            if stripped in (f"[{header}]", f"[datasets.{header}]") or stripped.endswith(f".{header}]"):
                start = i
                break
        else:
            continue
        break
    key = parts[-1]
    for i in range(start, len(lines)):
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", lines[i]) or lines[i].strip() == f"[{'.'.join(parts)}]":
            return i + 1
    return None
