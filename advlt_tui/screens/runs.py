"""The runs screen: every run of the catalog, live, with sort, filter and multi-select.

Live updates touch only what changed: the catalog feed sends changed rows; a row's cells are
compared with what the table shows and only differing cells are updated (``update_cell``);
rows are added or removed one by one and the table is re-sorted in place. The table is rebuilt
only when the user changes the filter, the sort or the theme.
"""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from advlt_tui.widgets.feed import RunsUpdated
from advlt_tui.widgets.format import RUN_COLUMNS, SORTS, STATUS_STYLE, matches, run_cells
from advlt_tui.widgets.runs_table import RunsTable

AGE_REFRESH_S = 5.0


class RunsScreen(Screen):
    BINDINGS = [
        Binding("o", "open", "Open", id="runs.open"),
        Binding("n", "new_run", "New run", id="runs.new"),
        Binding("space", "toggle_select", "Select", id="runs.select"),
        Binding("c", "compare", "Compare", id="runs.compare"),
        Binding("e", "evaluate", "Evaluate", id="runs.evaluate"),
        Binding("s", "cycle_sort", "Sort", id="runs.sort"),
        Binding("S", "reverse_sort", "Reverse sort", id="runs.reverse", show=False),
        Binding("slash", "focus_filter", "Filter", id="runs.filter"),
        Binding("escape", "clear", "Clear filter/selection", id="runs.clear", show=False),
        Binding("down", "focus_table", "To table", id="runs.to_table", show=False),
    ]

    filter_text: reactive[str] = reactive("", init=False)
    sort_index: reactive[int] = reactive(0, init=False)
    sort_reverse: reactive[bool] = reactive(True, init=False)

    def __init__(self) -> None:
        super().__init__()
        self.selected: set[str] = set()
        self._cells: dict[str, dict[str, str]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter runs: id, preset, dataset, status, tag…  (/ to focus, "
                                "Esc to clear)", id="filter")
        yield RunsTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="runs-info")
        yield Footer()

    def on_mount(self) -> None:
        self.table.setup(RUN_COLUMNS)
        self._rebuild()
        self.table.focus()
        self.app.runs_changed.subscribe(self, self._on_runs_changed)
        self.watch(self.app, "theme", lambda _theme: self._rebuild(), init=False)
        self.set_interval(AGE_REFRESH_S, self._refresh_ages)

    @property
    def table(self) -> RunsTable:
        return self.query_one("#runs-table", RunsTable)

    # --- what is shown ---------------------------------------------------------------------

    def _visible_ids(self) -> list[str]:
        runs = self.app.runs
        key = SORTS[self.sort_index][1]
        ids = [rid for rid, row in runs.items() if matches(row, self.filter_text)]
        return sorted(ids, key=lambda rid: key(runs[rid]), reverse=self.sort_reverse)

    def _styled(self, column: str, text: str, row: dict) -> Text:
        if column == "status":
            variable, glyph = STATUS_STYLE.get(text, ("text", "·"))
            return Text(f"{glyph} {text}", style=self.app.theme_color(variable))
        if column == "sel":
            return Text(text, style=f"bold {self.app.theme_color('text-accent')}")
        if column == "best":
            best, last = row.get("best_robust_acc"), row.get("robust_acc")
            if best is not None and last is not None and best - last > 0.01:
                return Text(text, style=self.app.theme_color("text-warning"))
        return Text(text)

    def _cells_for(self, row: dict) -> dict[str, str]:
        return run_cells(row, self.app.now(), row["id"] in self.selected)

    def _row_cells(self, row: dict) -> dict[str, Text]:
        cells = self._cells_for(row)
        self._cells[row["id"]] = cells
        return {k: self._styled(k, cells[k], row) for k, _ in RUN_COLUMNS}

    def _add(self, row: dict) -> None:
        self.table.add_cells(self._row_cells(row), key=row["id"])

    def _rebuild(self) -> None:
        table = self.table
        keep = self.cursor_id()
        table.clear()
        self._cells = {}
        runs = self.app.runs
        table.add_many((rid, self._row_cells(runs[rid])) for rid in self._visible_ids())
        self._restore_cursor(keep)
        self._update_info()

    def _restore_cursor(self, run_id: Optional[str]) -> None:
        table = self.table
        if run_id is not None and run_id in table.rows:
            table.move_cursor(row=table.get_row_index(run_id), animate=False)

    def _sort_table(self) -> None:
        runs, key = self.app.runs, SORTS[self.sort_index][1]
        keep = self.cursor_id()
        self.table.sort("id", key=lambda cell: key(runs[str(cell)]), reverse=self.sort_reverse)
        self._restore_cursor(keep)

    def _update_row(self, row: dict) -> bool:
        """Update only the cells of a shown row whose text changed; True if any did (re-sort)."""
        rid = row["id"]
        old, new = self._cells[rid], self._cells_for(row)
        changed = [k for k, _ in RUN_COLUMNS if old.get(k) != new[k]]
        for k in changed:
            self.table.set_cell(rid, k, self._styled(k, new[k], row))
        self._cells[rid] = new
        return bool(changed)

    def _on_runs_changed(self, message: RunsUpdated) -> None:
        resort = False
        for rid in message.removed:
            if rid in self._cells:
                self.table.remove_row(rid)
                del self._cells[rid]
        for rid, row in message.changed.items():
            shown, wanted = rid in self._cells, matches(row, self.filter_text)
            if shown and not wanted:
                self.table.remove_row(rid)
                del self._cells[rid]
            elif shown:
                resort |= self._update_row(row)
            elif wanted:
                self._add(row)
                resort = True
        if resort:
            self._sort_table()
        self._update_info()

    def _refresh_ages(self) -> None:
        for rid in list(self._cells):
            row = self.app.runs.get(rid)
            if row is not None:
                self._update_row(row)

    def _update_info(self) -> None:
        runs = self.app.runs
        running = sum(1 for r in runs.values() if r.get("status") == "running")
        label = SORTS[self.sort_index][0]
        arrow = "↓" if self.sort_reverse else "↑"
        text = (f"{len(self._cells)}/{len(runs)} runs · {running} running · "
                f"{len(self.selected)} selected · sort: {label} {arrow}")
        if not runs:
            text += " · no runs yet: press n to launch one"
        self.query_one("#runs-info", Static).update(Text(text))

    def cursor_id(self) -> Optional[str]:
        table = self.table
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    # --- reactive attributes ---------------------------------------------------------------

    def watch_filter_text(self, _value: str) -> None:
        self._rebuild()

    def watch_sort_index(self, _value: int) -> None:
        self._sort_table()
        self._update_info()

    def watch_sort_reverse(self, _value: bool) -> None:
        self._sort_table()
        self._update_info()

    # --- events and actions ----------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.open_run(event.row_key.value)

    def open_run(self, run_id: Optional[str]) -> None:
        if run_id is None:
            return
        from advlt_tui.screens.run_detail import RunDetailScreen

        self.app.push_screen(RunDetailScreen(run_id))

    def action_open(self) -> None:
        self.open_run(self.cursor_id())

    def action_new_run(self) -> None:
        from advlt_tui.screens.new_run import NewRunScreen

        self.app.push_screen(NewRunScreen(), self._launched)

    def _launched(self, run: Optional[dict]) -> None:
        if run:
            self.app.note_run(run)
            self._restore_cursor(run["id"])

    def action_toggle_select(self) -> None:
        rid = self.cursor_id()
        if rid is None:
            return
        self.selected ^= {rid}
        self._update_row(self.app.runs[rid])
        self.table.action_cursor_down()
        self._update_info()

    def selected_in_order(self) -> list[str]:
        order = [str(self.table.get_row_at(i)[1]) for i in range(self.table.row_count)]
        shown = [rid for rid in order if rid in self.selected]
        return shown + sorted(self.selected - set(shown))

    def action_compare(self) -> None:
        refs = self.selected_in_order()
        if len(refs) < 2:
            self.notify("select at least two runs with space, then press c", severity="warning")
            return
        from advlt_tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(refs))

    def action_evaluate(self) -> None:
        rid = self.cursor_id()
        if rid is None:
            return
        from advlt_tui.screens.evaluate import EvaluateModal

        self.app.push_screen(EvaluateModal(rid))

    def action_cycle_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.table.focus()

    def action_clear(self) -> None:
        filt = self.query_one("#filter", Input)
        if filt.has_focus or filt.value:
            filt.value = ""
            self.table.focus()
        elif self.selected:
            self.selected.clear()
            self._rebuild()
