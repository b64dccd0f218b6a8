"""Rich renderings shared by the CLI (tables of runs, per-class accuracy head → tail)."""
from __future__ import annotations

import time
from typing import Optional

from rich.table import Table


def pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def age(ts: Optional[float]) -> str:
    if not ts:
        return "—"
    s = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


STATUS_STYLE = {"finished": "green", "running": "cyan", "queued": "yellow", "failed": "red",
                "cancelled": "magenta", "lost": "bold red"}


def runs_table(rows: list[dict]) -> Table:
    table = Table(title="runs", header_style="bold")
    for col in ("id", "status", "preset", "dataset", "epoch", "clean %", "robust %", "best rob %",
                "age", "tags"):
        table.add_column(col, justify="right" if "%" in col or col == "epoch" else "left")
    for r in rows:
        status = r.get("status") or "?"
        table.add_row(r["id"], f"[{STATUS_STYLE.get(status, '')}]{status}[/]", r.get("preset") or "",
                      r.get("dataset") or "", f"{r.get('epoch') or 0}/{r.get('epochs') or '?'}",
                      pct(r.get("clean_acc")), pct(r.get("robust_acc")),
                      pct(r.get("best_robust_acc")), age(r.get("created")),
                      ",".join(r.get("tags") or []))
    return table


def per_class_table(counts: list[int], clean: list[float], robust: list[float],
                    class_names: Optional[list[str]] = None, title: str = "per class") -> Table:
    """Classes ordered head → tail (by training count) with their counts: the study's picture."""
    table = Table(title=title, header_style="bold")
    for col in ("class", "train n", "clean %", "robust %", ""):
        table.add_column(col, justify="left" if col in ("class", "") else "right")
    order = sorted(range(len(counts)), key=lambda c: -counts[c])
    for c in order:
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        bar = "█" * int(round(20 * (robust[c] or 0)))
        table.add_row(f"{c} {name}", str(counts[c]), pct(clean[c]), pct(robust[c]),
                      f"[cyan]{bar}[/]")
    return table
