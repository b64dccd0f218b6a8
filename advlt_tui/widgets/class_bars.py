"""Per-class bars, clean vs robust accuracy, head → tail with each class's training count.

This is the picture the study is about (RoBal, CVPR 2021, Fig. 1): under long-tailed data,
adversarial training's robust accuracy collapses on the tail classes far more than clean
accuracy does. Classes are ordered by their training count, largest first.
Colours come from component classes styled in the .tcss with theme variables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from advlt_tui.render import pct
from advlt_tui.widgets.format import head_to_tail

EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: Optional[float], width: int) -> str:
    """A left-aligned bar of ``width`` cells filled to ``fraction`` in eighths of a cell."""
    if fraction is None or width <= 0:
        return " " * max(width, 0)
    eighths = int(round(max(0.0, min(1.0, fraction)) * width * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + (EIGHTHS[part] if part else "")
    return text.ljust(width)


@dataclass(frozen=True)
class BarsData:
    counts: tuple[int, ...]
    clean: tuple[Optional[float], ...]
    robust: tuple[Optional[float], ...]
    class_names: tuple[str, ...] = ()
    labels: tuple[str, str] = ("clean", "robust")


class ClassBars(Widget):
    """Two bars per class (``labels``, default clean and robust), rows ordered head → tail."""

    COMPONENT_CLASSES = {"classbars--clean", "classbars--robust", "classbars--header",
                         "classbars--muted"}

    data: reactive[Optional[BarsData]] = reactive(None, layout=True)

    def set_values(self, counts: Sequence[int], clean: Sequence[Optional[float]],
                   robust: Sequence[Optional[float]], class_names: Sequence[str] | None = None,
                   labels: tuple[str, str] = ("clean", "robust")) -> None:
        n = len(counts)
        clean = list(clean or [])[:n] + [None] * max(0, n - len(clean or []))
        robust = list(robust or [])[:n] + [None] * max(0, n - len(robust or []))
        self.data = BarsData(tuple(counts), tuple(clean), tuple(robust),
                             tuple(class_names or ()), labels)

    def render(self) -> Text:
        data = self.data
        muted = self.get_component_rich_style("classbars--muted")
        if data is None or not data.counts:
            return Text("no per-class accuracy yet (it comes with the first evaluated epoch)",
                        style=muted)
        names = [data.class_names[c] if c < len(data.class_names) else str(c)
                 for c in range(len(data.counts))]
        nw = min(10, max(5, *(len(n) for n in names)))
        cw = max(1, *(len(str(c)) for c in data.counts), len("n"))
        fixed = nw + 1 + cw + 1 + 8 + 6  # "name n " + " 100.0  " + " 100.0"
        bar_w = max(3, (self.size.width - fixed) // 2) if self.size.width else 10
        clean_style = self.get_component_rich_style("classbars--clean")
        robust_style = self.get_component_rich_style("classbars--robust")
        out = Text(no_wrap=True, overflow="crop")
        header = (f"{'class':>{nw}} {'n':>{cw}} " + data.labels[0].ljust(bar_w + 8)
                  + data.labels[1])
        out.append(header + "\n", style=self.get_component_rich_style("classbars--header"))
        order = head_to_tail(data.counts)
        for i, c in enumerate(order):
            out.append(f"{names[c][:nw]:>{nw}} ")
            out.append(f"{data.counts[c]:>{cw}} ", style=muted)
            out.append(bar(data.clean[c], bar_w), style=clean_style)
            out.append(f" {pct(data.clean[c]):>5}  ")
            out.append(bar(data.robust[c], bar_w), style=robust_style)
            out.append(f" {pct(data.robust[c]):>5}")
            if i < len(order) - 1:
                out.append("\n")
        return out

    def get_content_height(self, container, viewport, width: int) -> int:
        data = self.data
        return 1 if data is None or not data.counts else len(data.counts) + 1
