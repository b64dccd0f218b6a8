"""The compare screen: the selected runs side by side.

The compare table, its protocol-mismatch flags and the export formats come from
``runs/compare.py`` (the library behind ``advlt compare``/``advlt diff``), imported when the
screen opens. Without that module the screen still shows a basic table and the config
differences computed here, and says that export is unavailable.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Label, OptionList, Static

from advlt_tui.render import pct
from advlt_tui.screens.compare_data import (
    basic_compare,
    config_differences,
    mismatch_lines,
    per_class_robust,
    row_flagged,
    short_id,
    table_rows,
)

FORMATS = ("table", "csv", "json", "markdown", "latex", "robustbench")
EXTENSIONS = {"table": "txt", "csv": "csv", "json": "json", "markdown": "md", "latex": "tex",
              "robustbench": "json"}


def compare_module() -> Optional[ModuleType]:
    try:
        from runs import compare
    except ImportError:
        return None
    return compare


class ExportModal(ModalScreen[Optional[str]]):
    BINDINGS = [Binding("escape", "close", "Close", id="export.close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="export-dialog"):
            yield Label("Export the comparison as…", classes="dialog-title")
            yield OptionList(*FORMATS, id="formats")
            yield Label("Enter writes a file in the current directory and copies the text",
                        classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#formats", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(FORMATS[event.option_index])

    def action_close(self) -> None:
        self.dismiss(None)


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back", id="compare.back"),
        Binding("x", "export", "Export", id="compare.export"),
        Binding("y", "copy", "Copy table", id="compare.copy"),
        Binding("tab", "app.focus_next", "Next table", id="compare.next", show=False),
    ]

    def __init__(self, refs: list[str]) -> None:
        super().__init__()
        self.refs = list(refs)
        self.module = compare_module()
        self.data: Optional[dict] = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="compare-title")
        yield Static(id="mismatch")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="compare-lower"):
            with Vertical(id="perclass-pane"):
                yield Label("per-class robust %, head → tail", classes="pane-title")
                yield DataTable(id="perclass-table", cursor_type="row")
            with Vertical(id="diff-pane"):
                yield Label("config differences", classes="pane-title")
                yield DataTable(id="diff-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        cat = self.app.catalog
        self.sub_title = "compare " + " · ".join(self.refs)
        if self.module is not None:
            try:
                self.data = self.module.compare_rows(cat, self.refs)
            except Exception as exc:  # shown, not raised: the other panes still work
                self.notify(f"compare failed: {exc}", severity="error")
        data = self.data if self.data is not None else basic_compare(cat, self.refs)
        title = f"{len(self.refs)} runs"
        if self.module is None:
            title += " · runs/compare.py is not available: basic table, no export"
        self.query_one("#compare-title", Static).update(Text(title))
        self._show_table(data)
        self._show_per_class(cat)
        self._show_diff(cat)
        self.query_one("#compare-table", DataTable).focus()

    def _show_table(self, data: dict) -> None:
        table = self.query_one("#compare-table", DataTable)
        columns = [str(c) for c in data.get("columns") or []]
        table.add_columns(*columns)
        rows = data.get("rows") or []
        flagged = mismatch_lines(data.get("mismatch"))
        banner = self.query_one("#mismatch", Static)
        banner.set_class(bool(flagged), "-mismatch")
        if flagged:
            text = "⚠ protocol mismatch: " + "; ".join(flagged)
            if any(isinstance(r, dict) and "mismatch" in r for r in rows):
                text += " (rows in red are not comparable with the others)"
        else:
            text = "✔ every row measured under the same protocol"
        banner.update(Text(text))
        error = self.app.theme_color("text-error")
        for raw, row in zip(rows, table_rows(rows, columns)):
            bad = row_flagged(raw, flagged)
            table.add_row(*(Text(_cell(c, v, self.refs), style=error if bad else "")
                            for c, v in zip(columns, row)))

    def _show_per_class(self, cat) -> None:
        table = self.query_one("#perclass-table", DataTable)
        headers, rows = per_class_robust(cat, self.refs)
        table.add_columns(*headers)
        for row in rows:
            table.add_row(*row)

    def _show_diff(self, cat) -> None:
        table = self.query_one("#diff-table", DataTable)
        diff = config_differences(cat, self.refs, self.module)
        table.add_columns("key", *(short_id(ref, self.refs) for ref in self.refs))
        if not diff:
            table.add_row("(no differences)", *("" for _ in self.refs))
        for key, values in diff:
            table.add_row(key, *("—" if v is None else str(v) for v in values))

    # --- export ----------------------------------------------------------------------------

    def render_text(self, fmt: str) -> Optional[str]:
        if self.module is None or self.data is None:
            self.notify("export needs runs/compare.py (advlt compare); it is not available",
                        severity="error")
            return None
        return self.module.render_compare(self.data, fmt)

    def action_export(self) -> None:
        def chosen(fmt: Optional[str]) -> None:
            if fmt:
                self.export(fmt)

        if self.render_text("table") is not None:
            self.app.push_screen(ExportModal(), chosen)

    def export(self, fmt: str, folder: Optional[Path] = None) -> Optional[Path]:
        text = self.render_text(fmt)
        if text is None:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = (folder or Path.cwd()) / f"advlt-compare-{stamp}.{EXTENSIONS[fmt]}"
        try:
            path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except OSError as exc:
            self.notify(f"could not write {path}: {exc}", severity="error")
            return None
        self.app.copy_to_clipboard(text)
        self.notify(f"wrote {path.name} ({fmt}) in {path.parent} and copied it to the clipboard")
        return path

    def action_copy(self) -> None:
        text = self.render_text("table")
        if text is not None:
            self.app.copy_to_clipboard(text)
            self.notify("comparison table copied to the clipboard")

    def action_back(self) -> None:
        self.app.pop_screen()


def _cell(column: str, value: Any, refs: list[str]) -> str:
    """Accuracies (fractions) as percentages, ids and hashes shortened, flags as ⚠."""
    if value is None:
        return "—" if column != "eval_id" else "training"
    if isinstance(value, bool):
        return "⚠" if value and column == "mismatch" else ("" if column == "mismatch" else str(value))
    if isinstance(value, float):
        return pct(value) if 0.0 <= value <= 1.0 else f"{value:.4g}"
    if column == "id":
        return short_id(str(value), refs)
    if column == "protocol_hash":
        return str(value)[:8]
    if column == "checkpoint":
        return str(value).rsplit("/", 1)[-1]
    return str(value)
