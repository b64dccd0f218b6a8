"""Plain-text formatting of catalog rows for the TUI's tables (no widgets here).

Colours are never hard-coded: a status maps to a *theme variable* name (``success``, ``error``
...) and the caller resolves it with the app's current theme, so dark and light themes both read.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from advlt_tui.render import pct

# status → theme variable (the text-* variants stay readable on both backgrounds); the glyph keeps the status readable without colour.
STATUS_STYLE = {
    "queued": ("text-warning", "◌"),
    "running": ("text-primary", "▶"),
    "finished": ("text-success", "✔"),
    "failed": ("text-error", "✘"),
    "cancelled": ("text-secondary", "■"),
    "lost": ("text-error", "?"),
}

RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sel", " "),
    ("id", "id"),
    ("status", "status"),
    ("preset", "preset"),
    ("dataset", "dataset"),
    ("epoch", "epoch"),
    ("clean", "clean%"),
    ("robust", "rob%"),
    ("best", "best/last"),
    ("gpu", "gpu"),
    ("age", "age"),
    ("tags", "tags"),
)


def age_at(ts: Optional[float], now: float) -> str:
    """Compact age of ``ts`` seen at ``now`` (``45s``, ``12m``, ``3h``, ``2d``)."""
    if not ts:
        return "—"
    s = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def duration(seconds: Optional[float]) -> str:
    """``1h02m``, ``3m05s``, ``42s`` (ETA display)."""
    if seconds is None or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def epoch_text(row: dict) -> str:
    return f"{row.get('epoch') or 0}/{row.get('epochs') or '?'}"


def best_last(row: dict) -> str:
    """Best robust accuracy over epochs vs the last measured one: a gap is robust overfitting."""
    best, last = row.get("best_robust_acc"), row.get("robust_acc")
    if best is None and last is None:
        return "—"
    return f"{pct(best)}/{pct(last)}"


def gpu_text(row: dict) -> str:
    gpus = row.get("gpus")
    if gpus and gpus != "auto":
        return str(gpus)
    return row.get("device") or (gpus or "—")


def run_cells(row: dict, now: float, selected: bool) -> dict[str, str]:
    """The text of every runs-table column for ``row`` (status colour is applied by the caller)."""
    return {
        "sel": "●" if selected else " ",
        "id": row["id"],
        "status": row.get("status") or "?",
        "preset": row.get("preset") or "",
        "dataset": row.get("dataset") or "",
        "epoch": epoch_text(row),
        "clean": pct(row.get("clean_acc")),
        "robust": pct(row.get("robust_acc")),
        "best": best_last(row),
        "gpu": gpu_text(row),
        "age": age_at(row.get("created"), now),
        "tags": ",".join(row.get("tags") or []),
    }


def haystack(row: dict) -> str:
    """Everything the filter box matches against, lower-cased."""
    parts = [row.get(k) or "" for k in ("id", "name", "status", "preset", "dataset", "note",
                                         "kind", "device", "gpus", "parent_run")]
    parts += list(row.get("tags") or [])
    return " ".join(str(p) for p in parts).lower()


def matches(row: dict, query: str) -> bool:
    """Every whitespace-separated term of ``query`` must occur somewhere in the row."""
    text = haystack(row)
    return all(term in text for term in query.lower().split())


def _num(value: Optional[float]) -> float:
    return float("-inf") if value is None else float(value)


# (label, key function) in the order the sort key cycles through them.
SORTS: tuple[tuple[str, Callable[[dict], object]], ...] = (
    ("created", lambda r: (_num(r.get("created")), r["id"])),
    ("status", lambda r: (r.get("status") or "", r["id"])),
    ("preset", lambda r: (r.get("preset") or "", r["id"])),
    ("dataset", lambda r: (r.get("dataset") or "", r["id"])),
    ("progress", lambda r: ((r.get("epoch") or 0) / max(r.get("epochs") or 1, 1), r["id"])),
    ("clean", lambda r: (_num(r.get("clean_acc")), r["id"])),
    ("robust", lambda r: (_num(r.get("robust_acc")), r["id"])),
    ("best robust", lambda r: (_num(r.get("best_robust_acc")), r["id"])),
)
SORT_COLUMN = {"created": "age", "status": "status", "preset": "preset", "dataset": "dataset",
               "progress": "epoch", "clean": "clean", "robust": "robust", "best robust": "best"}


def head_to_tail(counts: Iterable[int]) -> list[int]:
    """Class indices ordered by training count, largest first (ties: lower index first)."""
    counts = list(counts)
    return sorted(range(len(counts)), key=lambda c: (-counts[c], c))


def preset_key_values(preset) -> list[tuple[str, str]]:
    """The values that tell presets apart (head, loss, training mode, ...), for the picker."""
    body = preset.body
    model, train = body.get("model", {}), body.get("train", {})
    out: list[tuple[str, str]] = []

    def add(label: str, value: object) -> None:
        if value not in (None, {}, ""):
            out.append((label, str(value)))

    add("head", model.get("head"))
    add("head options", model.get("head_opt"))
    add("mode", train.get("mode"))
    add("mode options", train.get("mode_opt"))
    add("loss", (train.get("loss") or {}).get("name"))
    add("loss options", (train.get("loss") or {}).get("opt"))
    add("epochs", train.get("epochs"))
    add("sampler", train.get("sampler"))
    add("lr_dict", train.get("lr_dict"))
    add("deffer", train.get("deffer"))
    inference = body.get("inference_head") or {}
    add("inference head", inference.get("head"))
    if preset.meta.get("paper_row") is not None:
        add("paper row", preset.meta.get("paper_row"))
    return out
