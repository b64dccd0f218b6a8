"""Presets and dataset profiles: TOML files → a validated, frozen RunConfig.

Resolution order (later wins): schema defaults → dataset profile → preset → the preset's
``[datasets."<name>"]`` section → extra values from the manager (``--epochs``, ``--from``) →
overrides (``--set a.b=value``). Tables merge key by key, except that naming a *different*
component (``model.backbone``, ``model.head``, ``inference_head.head``, ``train.mode``,
``train.<loss>.name``) starts its option table afresh: options of one head mean nothing to
another.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from presets import components, schema
from presets.toml_lines import find_line, split_path
from presets.validate import ConfigError, Problem, check_dataclass, check_meta, check_values

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BUILTIN_DIR = Path(__file__).parent / "builtin"
PROFILE_DIR = Path(__file__).parent / "profiles"
PRESET_META_KEYS = {"name", "title", "kind", "summary", "paper_row", "reference_config", "notes"}
PRESET_SECTIONS = {"preset", "datasets"}
# Set by the manager or by [preset], never by a preset's config sections.
RESERVED_KEYS = {"kind": "set it in [preset]", "preset": "set it in [preset] as name",
                 "version": "written by advlt", "parent_run": "pass --from RUN",
                 "parent_checkpoint": "pass --from RUN"}
# (table path, component-name key, option key, components table)
COMPONENT_SLOTS = [(("model",), "backbone", "backbone_opt", None),
                   (("model",), "head", "head_opt", "head"),
                   (("inference_head",), "head", "head_opt", "head"),
                   (("train",), "mode", "mode_opt", "mode"),
                   (("train", "loss"), "name", "opt", "loss"),
                   (("train", "adv_loss"), "name", "opt", "loss"),
                   (("train", "nat_loss"), "name", "opt", "loss")]


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
                "summary": self.summary, "paper_row": self.meta.get("paper_row"),
                "builtin": self.builtin, "path": str(self.path)}


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError([Problem("<file>", f"not valid TOML: {exc}", str(path), line)],
                          f"cannot read {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("<file>", str(exc), str(path))], f"cannot read {path}") from None


def parse_preset(path: Path, builtin: bool = False) -> Preset:
    """Read one preset file and check its structure: the ``[preset]`` table, and every config
    section (top level and each ``[datasets."<name>"]``) against the schema, so a typo in a
    section for another dataset is caught too. Raises ConfigError listing every problem."""
    path = Path(path)
    data = _read_toml(path)
    problems: list[Problem] = []
    meta = data.get("preset")
    if not isinstance(meta, dict):
        problems.append(Problem("preset", "missing [preset] table (name, title, kind, summary)"))
        meta = {}
    for key in meta:
        if key not in PRESET_META_KEYS:
            problems.append(Problem(f"preset.{key}", "unknown key; allowed: "
                                    + ", ".join(sorted(PRESET_META_KEYS))))
    check_meta(meta, problems)
    name = meta.get("name", path.stem)
    kind = meta.get("kind", "train")
    if kind not in schema.KINDS:
        problems.append(Problem("preset.kind", f"unknown value {kind!r}; allowed: "
                                + ", ".join(schema.KINDS)))
    body = {k: v for k, v in data.items() if k not in PRESET_SECTIONS}
    _check_section(body, "", problems)
    per_dataset = data.get("datasets", {})
    if not isinstance(per_dataset, dict):
        problems.append(Problem("datasets", "expected tables [datasets.\"<dataset>\".…]"))
        per_dataset = {}
    for ds, section in per_dataset.items():
        if ds not in schema.DATASETS:
            problems.append(Problem(f"datasets.{ds}", "unknown dataset; allowed: "
                                    + ", ".join(schema.DATASETS)))
        elif not isinstance(section, dict):
            problems.append(Problem(f"datasets.{ds}", "expected a table of config sections"))
        else:
            _check_section(section, f"datasets.{ds}", problems)
    if problems:
        raise ConfigError(_with_lines(problems, path), f"invalid preset {path}")
    return Preset(name=name, title=meta.get("title", name), kind=kind,
                  summary=meta.get("summary", ""), path=path, body=body,
                  per_dataset=per_dataset, meta=meta, builtin=builtin)


def _check_section(section: dict, prefix: str, out: list[Problem]) -> None:
    found: list[Problem] = []
    for key, why in RESERVED_KEYS.items():
        if key in section:
            found.append(Problem(key, f"not a preset setting ({why})"))
    check_dataclass(schema.RunConfig, {k: v for k, v in section.items()
                                       if k not in RESERVED_KEYS}, "", found)
    out += [Problem(f"{prefix}.{p.path}" if prefix else p.path, p.message) for p in found]


def preset_dirs(user_dir: Optional[Path] = None) -> list[tuple[Path, bool]]:
    dirs = [(BUILTIN_DIR, True)]
    if user_dir is not None and user_dir.is_dir():
        dirs.append((user_dir, False))
    return dirs


def list_presets(user_dir: Optional[Path] = None,
                 broken: Optional[list[ConfigError]] = None) -> list[Preset]:
    """Built-in presets, then the user's (a user file with a built-in name replaces it).

    A broken *user* file raises ConfigError, unless ``broken`` is given: then its error is
    appended there and the file is skipped, so one bad file does not hide every preset.
    """
    found: dict[str, Preset] = {}
    for folder, builtin in preset_dirs(user_dir):
        for path in sorted(folder.glob("*.toml")):
            try:
                preset = parse_preset(path, builtin=builtin)
            except ConfigError as exc:
                if builtin or broken is None:
                    raise
                broken.append(exc)
                continue
            found[preset.name] = preset
    # the study's order (paper row), presets without a row first; then the user's
    return sorted(found.values(), key=lambda p: (not p.builtin, p.meta.get("paper_row") or 0,
                                                 p.name))


def get_preset(name: str, user_dir: Optional[Path] = None) -> Preset:
    broken: list[ConfigError] = []
    presets = list_presets(user_dir, broken)
    for preset in presets:
        if preset.name == name:
            return preset
    for exc in broken:  # the wanted preset may be the broken file
        if any(Path(p.source or "").stem == name for p in exc.problems):
            raise exc
    names = ", ".join(p.name for p in presets)
    raise ConfigError([Problem("preset", f"unknown preset {name!r}; allowed: {names}")],
                      "unknown preset")


def load_profile(dataset: str) -> dict:
    if dataset not in schema.DATASETS:
        raise ConfigError([Problem("dataset", f"unknown dataset {dataset!r}; allowed: "
                                   + ", ".join(schema.DATASETS))], "unknown dataset")
    return _read_toml(PROFILE_DIR / f"{dataset}.toml")


def deep_merge(base: dict, over: dict, where: tuple = ()) -> dict:
    """Recursively merge ``over`` into a copy of ``base``. Option tables (``*_opt``, ``opt``,
    ``lr_dict``, ``deffer``) merge key by key too, so a per-dataset section can change one
    option of a head — unless ``over`` names another component in the same table (see the
    module docstring), which drops the old options first."""
    out = copy.deepcopy(base)
    for table, name_key, opt_key, _ in COMPONENT_SLOTS:
        if (table == where and name_key in over and isinstance(out, dict)
                and out.get(name_key) != over[name_key]):
            out[opt_key] = {}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, where + (key,))
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
                                    "with a dotted key such as train.epochs=3", "--set"))
            continue
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(Problem(key, "conflicts with another override", "--set"))
                break
        else:
            node[parts[-1]] = parse_value(raw.strip())
    return tree, problems


def resolve(preset: Preset, dataset: str, overrides: Optional[dict] = None,
            extra: Optional[dict] = None) -> schema.RunConfig:
    """Merge everything for ``dataset`` and validate; raise ConfigError listing every problem
    (each with the file and line that set the offending value, where known)."""
    problems: list[Problem] = []
    profile = load_profile(dataset)
    merged = schema.RunConfig().to_dict()
    ds_prefix = ("datasets", dataset)
    layers = [(profile, PROFILE_DIR / f"{dataset}.toml", ()), (preset.body, preset.path, ()),
              (preset.per_dataset.get(dataset, {}), preset.path, ds_prefix),
              (extra or {}, None, ()), (overrides or {}, "--set", ())]
    for layer, source, prefix in layers:
        layer_problems: list[Problem] = []
        check_dataclass(schema.RunConfig, layer, "", layer_problems)
        if layer_problems:
            problems += _with_lines(layer_problems, source, prefix)
            layer = _without(layer, [p.path for p in layer_problems])
        merged = deep_merge(merged, layer)
    merged["preset"] = preset.name
    merged["kind"] = preset.kind
    value_problems: list[Problem] = []
    check_values(merged, value_problems)
    problems += [_locate(p, layers) for p in value_problems]
    if problems:
        raise ConfigError(problems)
    return schema.RunConfig.from_dict(normalise(merged))


def normalise(cfg: dict) -> dict:
    """Integers become floats where the schema or a component option wants a float, so that
    ``lr = 1`` and ``lr = 1.0`` resolve to the same config (and the same hash)."""
    out = _floats(schema.RunConfig, copy.deepcopy(cfg))
    for table, name_key, opt_key, kind in COMPONENT_SLOTS:
        node = out
        for part in table:
            node = node.get(part) if isinstance(node, dict) else None
        if kind and isinstance(node, dict) and isinstance(node.get(opt_key), dict):
            node[opt_key] = components.normalise_options(kind, node.get(name_key), node[opt_key])
    lr_dict = out["train"].get("lr_dict")
    if lr_dict:
        out["train"]["lr_dict"] = {k: float(v) for k, v in lr_dict.items()}
    return out


def _floats(cls: type, data: dict) -> dict:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = data.get(f.name)
        tp, _ = schema._strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            data[f.name] = _floats(tp, value)
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            data[f.name] = float(value)
    return data


def _without(layer: dict, paths: list[str]) -> dict:
    """A copy of ``layer`` without the keys at ``paths`` (so one bad value still lets every
    other value be checked in the same pass)."""
    out = copy.deepcopy(layer)
    for path in paths:
        node = out
        parts = split_path(path)
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts:
            node.pop(parts[-1], None)
    return out


def _has(layer: dict, parts: tuple) -> bool:
    node: Any = layer
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _locate(problem: Problem, layers: list) -> Problem:
    """Attach the source (and line) of the last layer that set the problem's key."""
    parts = split_path(problem.path)
    for depth in range(len(parts), 0, -1):  # the most specific key first, then the newest layer
        for layer, source, prefix in reversed(layers):
            if _has(layer, parts[:depth]):
                return _with_lines([problem], source, prefix)[0]
    return problem


def _with_lines(problems: list[Problem], source: Any, prefix: tuple = ()) -> list[Problem]:
    """Attach the file (``source``: a path, "--set" or None) and each problem's line in it."""
    if not isinstance(source, Path) or not source.is_file():
        return [Problem(p.path, p.message, p.source or source, p.line) for p in problems]
    text = source.read_text()
    return [Problem(p.path, p.message, str(source),
                    p.line or find_line(text, split_path(p.path), prefix)) for p in problems]
