"""Text renderings of ``compare_rows`` data: table, csv, json, markdown, latex, robustbench.

Accuracies are fractions in the data; the human formats (table, markdown, latex) show
percentages with one decimal, the machine formats (csv, json) keep the fractions. Rows measured
under another protocol than the reference one are marked ``*`` with a note, never dropped.
"""
from __future__ import annotations

import csv
import io
import json
from fractions import Fraction
from typing import Any, Callable, Optional

FORMATS = ("table", "csv", "json", "markdown", "latex", "robustbench")
PERCENT_COLUMNS = ("clean", "fgsm", "pgd20", "mim", "cw", "aa", "head", "medium", "tail",
                   "worst_class")
HEADERS = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "mim": "MIM", "cw": "CW",
           "aa": "AA", "head": "head", "medium": "medium", "tail": "tail",
           "worst_class": "worst cls", "protocol_hash": "protocol", "eval_id": "eval",
           "mismatch": "!"}
MISMATCH_NOTE = ("* measured under a different protocol than the other rows of its kind "
                 "(training-time rows and evaluations are compared separately): do not compare")


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}"


def _cell(row: dict, col: str) -> str:
    value = row.get(col)
    if col in PERCENT_COLUMNS:
        return _pct(value)
    if col == "mismatch":
        return "*" if value else ""
    if col == "protocol_hash":
        return (value or "")[:8]
    if col == "eval_id" and value is None and row.get("kind") == "training":
        return "(training)"
    return "" if value is None else str(value)


def _display(data: dict) -> tuple[list[str], list[list[str]]]:
    columns = list(data.get("columns") or [])
    return ([HEADERS.get(c, c) for c in columns],
            [[_cell(r, c) for c in columns] for r in data.get("rows") or []])


def _footer(data: dict) -> list[str]:
    return [MISMATCH_NOTE] if data.get("mismatch") else []


def render_table(data: dict) -> str:
    header, body = _display(data)
    if not body:
        return "no runs or evaluations to compare\n"
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    numeric = {i for i, c in enumerate(data["columns"]) if c in PERCENT_COLUMNS}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    out.append("accuracies in %")
    return "\n".join(out + _footer(data)) + "\n"


def render_csv(data: dict) -> str:
    buf = io.StringIO()
    columns = list(data.get("columns") or [])
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in data.get("rows") or []:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buf.getvalue()


def render_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(data: dict) -> str:
    header, body = _display(data)
    numeric = [c in PERCENT_COLUMNS for c in data.get("columns") or []]
    out = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in body]
    footer = _footer(data)
    return "\n".join(out + ([""] + footer if footer else [])) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def render_latex(data: dict) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); percentages, 1 decimal."""
    header, body = _display(data)
    spec = "".join("r" if c in PERCENT_COLUMNS else "l" for c in data.get("columns") or [])
    out = [f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in body]
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [f"% {line}" for line in _footer(data)]
    return "\n".join(out) + "\n"


def eps_text(eps: Optional[float]) -> Optional[str]:
    """RobustBench writes eps as a fraction of 255 (``"8/255"``) when it is one."""
    if eps is None:
        return None
    frac = Fraction(float(eps) * 255).limit_denominator(1)
    if abs(float(frac) - float(eps) * 255) < 0.05:
        return f"{int(frac)}/255"
    return f"{float(eps):g}"


_RB_DATASETS = {"cifar10-lt": "cifar10", "cifar100-lt": "cifar100"}


def _rb_pct(value: Any) -> Optional[str]:
    return None if value is None else f"{100 * float(value):.2f}"


def robustbench_entry(row: dict) -> dict:
    """One evaluation in RobustBench's model-info JSON layout (what we know; the rest empty).

    ``reported``/``autoattack_acc`` are the AutoAttack accuracy when AutoAttack ran, else the
    strongest measured robust accuracy (the pointwise worst case), and the footnote says so.
    """
    aa = row.get("aa")
    fallback = row.get("aa") if aa is not None else _worst_robust(row)
    notes = [f"advlt run {row.get('id')}, evaluation {row.get('eval_id') or '(training-time)'}",
             f"long-tailed dataset {row.get('dataset')}"]
    if aa is None:
        notes.append("AutoAttack not run: autoattack_acc is the worst case over the attacks run")
    if row.get("mismatch"):
        notes.append("protocol differs from the other rows")
    return {
        "link": "", "name": row.get("name") or f"{row.get('preset')} ({row.get('id')})",
        "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": _RB_DATASETS.get(row.get("dataset") or "", row.get("dataset")),
        "venue": "", "architecture": row.get("architecture") or "",
        "eps": eps_text(row.get("eps")), "clean_acc": _rb_pct(row.get("clean")),
        "reported": _rb_pct(fallback), "autoattack_acc": _rb_pct(fallback),
        "unreliable": bool(row.get("flags") and any((row.get("flags") or {}).values())),
        "footnote": "; ".join(notes),
        "advlt": {"run": row.get("id"), "eval_id": row.get("eval_id"),
                  "variant": row.get("variant"), "checkpoint": row.get("checkpoint"),
                  "protocol_hash": row.get("protocol_hash"),
                  "head": row.get("head"), "medium": row.get("medium"), "tail": row.get("tail"),
                  "worst_class": row.get("worst_class")},
    }


def _worst_robust(row: dict) -> Optional[float]:
    if row.get("worst") is not None:
        return row["worst"]
    values = [row.get(k) for k in ("fgsm", "pgd20", "mim", "cw") if row.get(k) is not None]
    return min(values) if values else None


def render_robustbench(data: dict) -> str:
    """A JSON list, one RobustBench entry per evaluation (training-time rows are left out:
    they are not a test-set evaluation)."""
    rows = [r for r in data.get("rows") or [] if r.get("kind") != "training"]
    return json.dumps([robustbench_entry(r) for r in rows], indent=2) + "\n"


RENDERERS: dict[str, Callable[[dict], str]] = {
    "table": render_table, "csv": render_csv, "json": render_json,
    "markdown": render_markdown, "latex": render_latex, "robustbench": render_robustbench,
}


def render_compare(data: dict, fmt: str = "table") -> str:
    """``data`` from ``compare_rows`` as text in one of :data:`FORMATS`."""
    try:
        renderer = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}") from None
    return renderer(data)
