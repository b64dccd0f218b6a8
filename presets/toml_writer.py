"""A tiny TOML emitter for presets (stdlib only; ``tomllib`` reads but cannot write).

Covers what a preset holds: strings, booleans, integers, floats, lists, and tables — option
tables (``head_opt``, ``opt``, ``mode_opt``, ``lr_dict``, ``backbone_opt``, ``deffer``) as
one-line inline tables, everything else as ``[section]`` headers. ``None`` means "not set" (TOML
has no null) and is left out. Output round-trips through ``tomllib`` (tested).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

INLINE_TABLES = {"head_opt", "opt", "mode_opt", "lr_dict", "backbone_opt", "deffer"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def value(v: Any) -> str:
    """One TOML value (inline)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # always has a '.' or an exponent, so it reads back as a float
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        items = [f"{key(k)} = {value(x)}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _comment(text: Optional[str]) -> str:
    return f"  # {text}" if text else ""


def dumps(doc: Mapping[str, Any], header: Sequence[str] = (),
          comments: Optional[Mapping[str, str]] = None) -> str:
    """``doc`` as TOML text. ``header``: comment lines at the top; ``comments``: dotted key path
    (``train.epochs``, ``datasets.cifar10-lt.dataset``) → a comment on that key's line."""
    comments = dict(comments or {})
    lines = [f"# {h}" if h else "#" for h in header]
    _table(doc, (), lines, comments)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(name: str, v: Any) -> bool:
    return isinstance(v, Mapping) and name not in INLINE_TABLES


def _table(doc: Mapping[str, Any], path: tuple, lines: list[str], comments: dict) -> None:
    scalars = [(k, v) for k, v in doc.items() if v is not None and not _is_table(k, v)]
    tables = [(k, v) for k, v in doc.items() if _is_table(k, v)]
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(key(p) for p in path) + "]"
                     + _comment(comments.get(".".join(path))))
    for k, v in scalars:
        lines.append(f"{key(k)} = {value(v)}" + _comment(comments.get(".".join(path + (k,)))))
    for k, v in tables:
        _table(v, path + (k,), lines, comments)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename, so a
    reader never sees half a file and a failure leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
