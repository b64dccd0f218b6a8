"""Rich renderings shared by the CLI (tables of runs, per-class accuracy head → tail)."""
from __future__ import annotations

import re
import time
from typing import Optional

from rich import box
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


def runs_table(rows: list[dict], width: int = 120) -> Table:
    """The run listing for a terminal ``width`` columns wide. Ids never wrap or shrink (people
    copy them from here); on a narrow terminal the age column is left out, and tags are shown
    only when some run has them."""
    table = Table(title="runs", header_style="bold underline", box=None, pad_edge=False)
    columns = [("id", 18), ("status", 9), ("preset", 7), ("dataset", 9), ("epoch", 5),
               ("clean", 5), ("robust", 6), ("best", 5)]
    if width >= 90:
        columns.append(("age", 3))
    with_tags = any(r.get("tags") for r in rows)
    if with_tags:
        columns.append(("tags", 4))
    for col, least in columns:
        table.add_column(col, justify="right" if col in ("epoch", "clean", "robust", "best") else "left",
                         no_wrap=col != "tags", min_width=least)
    for r in rows:
        status = r.get("status") or "?"
        cells = [r["id"], f"[{STATUS_STYLE.get(status, '')}]{status}[/]", r.get("preset") or "",
                 r.get("dataset") or "", f"{r.get('epoch') or 0}/{r.get('epochs') or '?'}",
                 pct(r.get("clean_acc")), pct(r.get("robust_acc")), pct(r.get("best_robust_acc"))]
        if width >= 90:
            cells.append(age(r.get("created")))
        if with_tags:
            cells.append(",".join(r.get("tags") or []))
        table.add_row(*cells)
    table.caption = "accuracy in %: clean, robust (training-time PGD check), best robust"
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


def epochs_table(epochs: list[dict], title: str = "epochs") -> Table:
    """Per-epoch metrics (accuracies on the per-epoch eval subset)."""
    table = Table(title=title, header_style="bold")
    for col in ("epoch", "lr", "train loss", "clean %", "robust %", "seconds"):
        table.add_column(col, justify="right")
    for e in epochs:
        table.add_row(str(e.get("epoch")), "—" if e.get("lr") is None else f"{e['lr']:.4g}",
                      "—" if e.get("train_loss") is None else f"{e['train_loss']:.4f}",
                      pct(e.get("clean_acc")), pct(e.get("robust_acc")),
                      "—" if e.get("seconds") is None else f"{e['seconds']:.1f}")
    return table


def _pgd_result(results: dict) -> Optional[dict]:
    keys = sorted((k for k in results if k.startswith("pgd") and k[3:].isdigit()),
                  key=lambda k: int(k[3:]))
    return results[keys[-1]] if keys else None


def _checkpoint_label(path: Optional[str]) -> str:
    match = re.search(r"epoch(\d+)\.pt$", path or "")
    return f"ep{match.group(1)}" if match else (path or "")


STATUS_MARK = {"finished": "✔", "running": "▶", "queued": "·", "failed": "✘", "cancelled": "⊘",
               "lost": "?"}


def evaluations_table(evaluations: list[dict], title: str = "evaluations",
                      width: int = 120) -> Table:
    """One line per evaluation: its status and headline accuracies in % (PGD = the longest
    PGD). Ids never wrap; below 110 columns the status is a mark and the protocol hash goes."""
    wide = width >= 110
    table = Table(title=title, header_style="bold underline", box=None, pad_edge=False,
                  caption="ckpt = checkpoint epoch; head = inference head"
                          + ("; proto = protocol hash" if wide else "; ✔ finished ✘ failed"))
    cols = ["eval", "status" if wide else "", "ckpt", "head", "clean", "FGSM", "PGD", "MIM",
            "CW", "AA", "worst"] + (["proto"] if wide else [])
    numeric = ("clean", "FGSM", "PGD", "MIM", "CW", "AA", "worst")
    for col in cols:
        table.add_column(col, justify="right" if col in numeric else "left",
                         no_wrap=col != "head", overflow="fold" if col == "head" else "ellipsis",
                         min_width=19 if col == "eval" else None)
    for ev in evaluations:
        res = ev.get("results") or {}
        acc = {k: (r or {}).get("accuracy") for k, r in res.items()}
        status = ev.get("status") or "?"
        shown = status if wide else STATUS_MARK.get(status, "?")
        row = [ev["id"], f"[{STATUS_STYLE.get(status, '')}]{shown}[/]",
               _checkpoint_label(ev.get("checkpoint")), ev.get("variant") or "",
               pct(acc.get("clean")), pct(acc.get("fgsm")),
               pct((_pgd_result(res) or {}).get("accuracy")), pct(acc.get("mim")),
               pct(acc.get("cw")), pct(acc.get("aa")), pct(acc.get("worst"))]
        if wide:
            row.append((ev.get("protocol_hash") or "")[:8])
        table.add_row(*row)
    return table


def eval_result_table(ev: dict, title: Optional[str] = None) -> Table:
    """One evaluation, one line per attack: accuracy, head/medium/tail means, worst class."""
    caption = []
    if ev.get("variant"):
        caption.append(f"inference head: {ev['variant']}")
    caption += [f"[yellow]warning:[/] {w}" for w in ev.get("warnings") or []]
    if (ev.get("flags") or {}).get("gradient_masking"):
        caption.append("[bold red]gradient masking suspected:[/] PGD/MIM beat CW/AA by "
                       f"{100 * ev['flags'].get('masking_gap', 0):.1f} points")
    table = Table(title=title or f"evaluation {ev.get('id')}", header_style="bold",
                  caption="\n".join(caption) or None, caption_justify="left")
    for col in ("attack", "acc %", "head %", "medium %", "tail %", "worst class", "worst %"):
        table.add_column(col, justify="left" if col in ("attack", "worst class") else "right")
    for attack, r in (ev.get("results") or {}).items():
        groups = r.get("groups") or {}
        worst = r.get("worst_class") or {}
        table.add_row(attack, pct(r.get("accuracy")), pct(groups.get("head")),
                      pct(groups.get("medium")), pct(groups.get("tail")),
                      "—" if worst.get("class") is None else str(worst["class"]),
                      pct(worst.get("recall")))
    return table


def diff_table(diff: list[tuple[str, object, object]], a: str, b: str) -> Table:
    table = Table(title=f"config differences: {a} vs {b}", header_style="bold")
    for col in ("key", a, b):
        table.add_column(col)
    for key, va, vb in diff:
        table.add_row(key, "—" if va is None else repr(va), "—" if vb is None else repr(vb))
    return table
