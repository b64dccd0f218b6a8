"""Data of the compare screen, from the catalog (and ``runs/compare.py`` when present)."""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Optional

from advlt_tui.render import pct
from advlt_tui.widgets.format import best_last, epoch_text, head_to_tail
from runs.catalog import Catalog

BASIC_COLUMNS = ["run", "preset", "dataset", "status", "epoch", "clean %", "robust %",
                 "best/last rob %"]


def short_id(ref: str, refs: list[str]) -> str:
    """The shortest suffix (at least 4 characters) that tells ``ref`` apart from ``refs``."""
    for n in range(4, len(ref)):
        if sum(1 for r in refs if r.endswith(ref[-n:])) == 1:
            return ref[-n:]
    return ref


def basic_compare(cat: Catalog, refs: list[str]) -> dict:
    """The table without ``runs/compare.py``: the catalog's training-time numbers only."""
    rows = []
    for ref in refs:
        r = cat.get_run(ref)
        rows.append([r["id"], r.get("preset") or "", r.get("dataset") or "", r.get("status") or "",
                     epoch_text(r), pct(r.get("clean_acc")), pct(r.get("robust_acc")),
                     best_last(r)])
    return {"columns": BASIC_COLUMNS, "rows": rows, "mismatch": []}


def table_rows(rows: Iterable[Any], columns: list[str]) -> list[list[Any]]:
    """Rows as lists in column order, whether they come as lists or as dicts."""
    out = []
    for row in rows:
        if isinstance(row, dict):
            out.append([row.get(c) for c in columns])
        else:
            out.append(list(row))
    return out


def mismatch_lines(mismatch: Any) -> list[str]:
    """Whatever form the mismatch flag takes (bool, list, dict), as readable lines."""
    if not mismatch:
        return []
    if mismatch is True:
        return ["not every row was measured under the same protocol"]
    if isinstance(mismatch, dict):
        return [f"{k}: {v}" for k, v in mismatch.items()]
    if isinstance(mismatch, (list, tuple, set)):
        return [str(m) for m in mismatch]
    return [str(mismatch)]


def row_flagged(raw: Any, flagged: list[str]) -> bool:
    """A row marked by ``compare_rows`` (its own ``mismatch`` flag), or named in the lines."""
    if isinstance(raw, dict) and "mismatch" in raw:
        return bool(raw["mismatch"])
    first = str(raw[0]) if isinstance(raw, (list, tuple)) and raw else ""
    return bool(first) and any(first in line for line in flagged)


def per_class_robust(cat: Catalog, refs: list[str]) -> tuple[list[str], list[list[str]]]:
    """Per-class robust accuracy of each run's last evaluated epoch, classes head → tail
    (by the first run's training counts), with that run's counts."""
    per_run: list[list[Optional[float]]] = []
    counts: list[int] = []
    names: list[str] = []
    for i, ref in enumerate(refs):
        epochs = [e for e in cat.run_epochs(ref) if e.get("per_class_robust") is not None]
        per_run.append(list(epochs[-1]["per_class_robust"]) if epochs else [])
        info = cat.run_counts(ref) or {}
        if i == 0 or not counts:
            counts = list(info.get("counts") or [])
            names = list(info.get("class_names") or [])
    n = max([len(counts)] + [len(v) for v in per_run])
    counts += [0] * (n - len(counts))
    headers = ["class", "n"] + [short_id(ref, refs) for ref in refs]
    rows = []
    for c in head_to_tail(counts):
        name = names[c] if c < len(names) else str(c)
        rows.append([name, str(counts[c])] + [pct(v[c]) if c < len(v) else "—" for v in per_run])
    return headers, rows


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _config(cat: Catalog, ref: str) -> dict[str, Any]:
    try:
        text = (Path(cat.get_run(ref)["run_dir"]) / "config.json").read_text(encoding="utf-8")
        return _flatten(json.loads(text))
    except (OSError, ValueError):
        return {}


def config_differences(cat: Catalog, refs: list[str],
                       module: Optional[ModuleType] = None) -> list[tuple[str, list[Any]]]:
    """Keys whose values differ between the runs, each with one value per run.

    With ``runs/compare.py`` the pairwise ``config_diff(first, other)`` of the CLI's ``advlt
    diff`` decides what differs; otherwise the flattened ``config.json`` files are compared.
    """
    if module is not None and hasattr(module, "config_diff"):
        first_values: dict[str, Any] = {}
        per_other: list[dict[str, Any]] = []
        for other in refs[1:]:
            diff = {key: (a, b) for key, a, b in module.config_diff(cat, refs[0], other)}
            first_values.update({k: a for k, (a, _b) in diff.items()})
            per_other.append({k: b for k, (_a, b) in diff.items()})
        keys = sorted(first_values)
        return [(k, [first_values[k]] + [o.get(k, first_values[k]) for o in per_other])
                for k in keys]
    configs = [_config(cat, ref) for ref in refs]
    keys = sorted(set().union(*configs)) if configs else []
    out = []
    for key in keys:
        values = [c.get(key) for c in configs]
        if any(v != values[0] for v in values[1:]):
            out.append((key, values))
    return out
