"""Per-epoch curves of one run: clean accuracy, robust accuracy and training loss.

Textual's ``Sparkline`` draws each series; a label above it gives the latest and best value.
Epochs without an evaluation carry no accuracy (``eval_freq``): they are left out of the
accuracy curves, not drawn as zero.
"""
from __future__ import annotations

from typing import Optional, Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

from advlt_tui.render import pct

SERIES = (("clean", "clean_acc", "clean acc"), ("robust", "robust_acc", "robust acc"),
          ("loss", "train_loss", "train loss"))


def series_label(title: str, key: str, epochs: Sequence[dict]) -> str:
    points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
    if not points:
        return f"{title}: —"
    last_epoch, last = points[-1]
    if key == "train_loss":
        return f"{title}: {last:.4f} (epoch {last_epoch})"
    best_epoch, best = max(points, key=lambda p: (p[1], -p[0]))
    return f"{title}: {pct(last)}% (epoch {last_epoch}) · best {pct(best)}% @ {best_epoch}"


class Curves(Vertical):
    """Three labelled sparklines, fed with the catalog's epoch rows."""

    def compose(self) -> ComposeResult:
        for name, _key, title in SERIES:
            yield Label(f"{title}: —", id=f"label-{name}", classes="curve-label")
            yield Sparkline([], id=f"curve-{name}", classes="curve")

    def set_epochs(self, epochs: Sequence[dict]) -> None:
        for name, key, title in SERIES:
            values: list[Optional[float]] = [e[key] for e in epochs if e.get(key) is not None]
            self.query_one(f"#label-{name}", Label).update(series_label(title, key, epochs))
            self.query_one(f"#curve-{name}", Sparkline).data = [float(v) for v in values]
