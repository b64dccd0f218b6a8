"""Find the line of a dotted key in a TOML file, for error reports (best effort, stdlib only).

``tomllib`` keeps no positions, so this scans the text: table headers (``[a."b".c]``), key lines
(``k = …``, dotted keys too) and keys inside one-line inline tables (``opt = { s = 1.0 }``).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

_HEADER = re.compile(r"^\s*\[\[?\s*(?P<name>[^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_LINE = re.compile(r"^\s*(?P<key>(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)"
                       r"(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=")
_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_\-]+)")


def split_key(text: str) -> tuple[str, ...]:
    """``a."b.c".d`` → ("a", "b.c", "d")."""
    return tuple(next(g for g in m.groups() if g is not None) for m in _PART.finditer(text))


def split_path(path: str) -> tuple[str, ...]:
    """A problem's dotted path without list indices: ``train.milestones[1]`` → (train, milestones)."""
    return tuple(p for p in re.sub(r"\[\d+\]", "", path).split(".") if p)


def find_line(text: str, path: Sequence[str], prefix: Sequence[str] = ()) -> Optional[int]:
    """1-based line where the key at ``prefix + path`` is set, or the closest enclosing key/table
    that is set on one line (an inline table, an array), or None."""
    target = tuple(prefix) + tuple(path)
    table: tuple[str, ...] = ()
    best: Optional[tuple[int, int]] = None  # (matched depth, line)
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and not _KEY_LINE.match(line):
            table = split_key(header.group("name"))
            # a table that is (or holds) the target, or one of the target's own sub-tables
            depth = len(table) if target[:len(table)] == table else (
                len(target) if table[:len(target)] == target else 0)
            if depth and (best is None or depth > best[0]):
                best = (depth, number)
            continue
        key = _KEY_LINE.match(line)
        if not key:
            continue
        full = table + split_key(key.group("key"))
        if full == target:
            return number
        if target[:len(full)] == full:
            depth = len(full)
            rest = target[len(full):]
            # a key of an inline table on this line: the deepest key we can see counts
            if rest and re.search(rf"[{{,]\s*\"?{re.escape(rest[-1])}\"?\s*=", line):
                depth = len(target)
            if best is None or depth > best[0]:
                best = (depth, number)
    return best[1] if best else None
