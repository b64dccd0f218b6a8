"""One run: live curves, per-class bars, progress, log, evaluations, checkpoints and lineage.

Two sources, both read on the UI thread: the catalog (epochs, checkpoints, evaluations; reloaded
when the feed reports this run changed) and the run's own files (``events.jsonl`` for the
latest ``progress``/``eval_progress``, ``engine.log`` for the log), tailed from their byte
offsets by a timer a few times a second. Cancel runs in a worker thread (it waits up to the
grace period for the engine) with its own catalog connection.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane

from advlt_tui.render import pct
from advlt_tui.screens.detail_text import eval_progress_text, eval_row, summary_text
from advlt_tui.widgets.class_bars import ClassBars
from advlt_tui.widgets.curves import Curves
from advlt_tui.widgets.feed import RunsUpdated
from advlt_tui.widgets.tail import EventTail, LogTail
from runs import ops
from runs.catalog import Catalog, CatalogError, RunNotFound

TAIL_S = 0.25
LOG_LINES = 2000
CANCELLABLE = ("queued", "running")
RESUMABLE = ("lost", "cancelled", "failed")


class RunDetailScreen(Screen):
    events: EventTail  # the run's events.jsonl and engine.log, opened on mount
    log_tail: LogTail

    BINDINGS = [
        Binding("escape", "back", "Back", id="detail.back"),
        Binding("e", "evaluate", "Evaluate", id="detail.evaluate"),
        Binding("x", "cancel_run", "Cancel run", id="detail.cancel"),
        Binding("r", "resume", "Resume", id="detail.resume"),
        Binding("t", "tag", "Tag", id="detail.tag"),
        Binding("n", "note", "Note", id="detail.note"),
        Binding("1", "tab('overview')", "Overview", id="detail.tab_overview", show=False),
        Binding("2", "tab('log')", "Log", id="detail.tab_log", show=False),
        Binding("3", "tab('evals')", "Evaluations", id="detail.tab_evals", show=False),
        Binding("4", "tab('lineage')", "Lineage", id="detail.tab_lineage", show=False),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.run: dict = {}
        self.epochs: list[dict] = []
        self.counts: Optional[dict] = None
        self.evals: list[dict] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="run-summary")
        with TabbedContent(id="detail-tabs"):
            with TabPane("1 Overview", id="overview"):
                with Horizontal(id="overview-row"):
                    yield Curves(id="curves")
                    with VerticalScroll(id="bars-pane"):
                        yield ClassBars(id="class-bars")
            with TabPane("2 Log", id="log"):
                yield Log(max_lines=LOG_LINES, id="run-log", auto_scroll=False)
            with TabPane("3 Evaluations", id="evals"):
                yield Static(id="eval-progress")
                yield DataTable(id="eval-table", cursor_type="row")
                with VerticalScroll(id="eval-bars-pane"):
                    yield ClassBars(id="eval-bars")
            with TabPane("4 Checkpoints & lineage", id="lineage"):
                yield DataTable(id="family-table", cursor_type="row")
                yield DataTable(id="ckpt-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        run_dir = Path(self.app.catalog.get_run(self.run_id)["run_dir"])
        self.events = EventTail(run_dir / "events.jsonl")
        self.log_tail = LogTail(run_dir / "engine.log")
        self.query_one("#eval-table", DataTable).add_columns(
            "eval", "checkpoint", "variant", "status", "clean%", "worst%", "attacks")
        self.query_one("#family-table", DataTable).add_columns("relation", "run", "preset",
                                                               "status", "robust%")
        self.query_one("#ckpt-table", DataTable).add_columns("epoch", "path", "sha256")
        self.app.runs_changed.subscribe(self, self._on_runs_changed)
        self.reload()
        self._poll_files()
        self.set_interval(TAIL_S, self._poll_files)

    # --- catalog data ----------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read this run's rows from the catalog (after the feed saw it change)."""
        cat = self.app.catalog
        try:
            self.run = cat.get_run(self.run_id)
        except RunNotFound:
            self.notify(f"run {self.run_id} is gone from the catalog", severity="error")
            self.app.pop_screen()
            return
        self.epochs = cat.run_epochs(self.run_id)
        self.counts = cat.run_counts(self.run_id)
        self.evals = cat.run_evaluations(self.run_id)
        self.sub_title = f"{self.run_id} · {self.run.get('preset')} · {self.run.get('dataset')}"
        self.query_one("#curves", Curves).set_epochs(self.epochs)
        self._show_class_bars()
        self._show_evals()
        self._show_lineage(cat)
        self._show_summary()

    def _on_runs_changed(self, message: RunsUpdated) -> None:
        if self.run_id in message.changed:
            self.reload()

    def _show_class_bars(self) -> None:
        bars = self.query_one("#class-bars", ClassBars)
        measured = [e for e in self.epochs if e.get("per_class_clean") is not None]
        if not self.counts or not measured:
            bars.border_title = "per-class accuracy, head → tail"
            return
        last = measured[-1]
        bars.border_title = f"per-class accuracy · epoch {last['epoch']} · head → tail"
        bars.set_values(self.counts["counts"], last["per_class_clean"],
                        last.get("per_class_robust") or [], self.counts.get("class_names"))

    def _show_evals(self) -> None:
        table = self.query_one("#eval-table", DataTable)
        keep = table.cursor_row
        table.clear()
        for ev in self.evals:
            table.add_row(*eval_row(ev, self.events.state.evals.get(ev["id"])), key=ev["id"])
        if self.evals:
            table.move_cursor(row=min(keep, len(self.evals) - 1), animate=False)
        self._show_eval_bars()

    def _show_eval_bars(self) -> None:
        bars = self.query_one("#eval-bars", ClassBars)
        table = self.query_one("#eval-table", DataTable)
        if not self.evals or not self.counts or table.row_count == 0:
            bars.border_title = "per-class recall of the selected evaluation"
            return
        ev = self.evals[min(table.cursor_row, len(self.evals) - 1)]
        results = ev.get("results") or {}
        attack = "worst" if "worst" in results else next(
            (k for k in reversed(list(results)) if k != "clean"), None)
        if "clean" not in results or attack is None:
            bars.border_title = f"evaluation {ev['id']}: no results yet ({ev.get('status')})"
            return
        bars.border_title = f"evaluation {ev['id']} · clean vs {attack} · head → tail"
        bars.set_values(self.counts["counts"], results["clean"].get("recall") or [],
                        results[attack].get("recall") or [], self.counts.get("class_names"),
                        labels=("clean", attack))

    def _show_lineage(self, cat: Catalog) -> None:
        family = self.query_one("#family-table", DataTable)
        family.clear()
        parent_id = self.run.get("parent_run")
        relatives = []
        if parent_id:
            try:
                relatives.append(("parent", cat.get_run(parent_id)))
            except CatalogError:
                family.add_row("parent", parent_id, "(not in catalog)", "", "", key=parent_id)
        relatives += [("child", c) for c in cat.children(self.run_id)]
        for relation, r in relatives:
            family.add_row(relation, r["id"], r.get("preset") or "", r.get("status") or "",
                           pct(r.get("robust_acc")), key=r["id"])
        ckpts = self.query_one("#ckpt-table", DataTable)
        ckpts.clear()
        for c in cat.run_checkpoints(self.run_id):
            ckpts.add_row(str(c["epoch"]), c["path"] or "", (c.get("sha256") or "")[:16])

    def _show_summary(self) -> None:
        text = summary_text(self.run, self.epochs, self.events.state, self.app.now(),
                            self.app.theme_color)
        self.query_one("#run-summary", Static).update(text)
        self.query_one("#eval-progress", Static).update(eval_progress_text(self.events.state))

    # --- files tailed live -----------------------------------------------------------------

    def _poll_files(self) -> None:
        events = self.events.poll()
        if events:
            self._show_summary()
            if any(e.get("eval_id") for e in events):
                self._show_evals()
        lines = self.log_tail.poll()
        if lines:
            log = self.query_one("#run-log", Log)
            # Follow the end only when the reader is already there (sticky scroll).
            log.write_lines(lines, scroll_end=log.is_vertical_scroll_end or log.line_count == 0)
        elif self.run.get("status") == "running":
            self._show_summary()  # the ETA counts down between events

    # --- events and actions ----------------------------------------------------------------

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "log":
            # Written while hidden (no size yet): start at the newest lines.
            self.query_one("#run-log", Log).scroll_end(animate=False)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "eval-table":
            self._show_eval_bars()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "family-table" and event.row_key.value in self.app.runs:
            self.app.push_screen(RunDetailScreen(event.row_key.value))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        self.query_one("#detail-tabs", TabbedContent).active = tab

    def action_evaluate(self) -> None:
        from advlt_tui.screens.evaluate import EvaluateModal

        def done(spec: Optional[dict]) -> None:
            if spec:
                self.app.catalog.ingest(self.run_id)
                self.reload()
                self.action_tab("evals")

        self.app.push_screen(EvaluateModal(self.run_id), done)

    def action_cancel_run(self) -> None:
        if self.run.get("status") not in CANCELLABLE:
            self.notify(f"run is {self.run.get('status')}; nothing to cancel", severity="warning")
            return
        from advlt_tui.screens.modals import ConfirmModal

        def confirmed(yes: Optional[bool]) -> None:
            if yes:
                self.notify(f"cancelling {self.run_id}…")
                self.run_worker(self._cancel_blocking, thread=True, group="ops",
                                name=f"cancel-{self.run_id}")

        self.app.push_screen(ConfirmModal(f"Cancel run {self.run_id}? "
                                          "(SIGTERM, then SIGKILL after 10 s)"), confirmed)

    def _cancel_blocking(self) -> None:
        """In a worker thread: the engine gets up to the grace period to stop."""
        app, home = self.app, self.app.home
        try:
            with Catalog(home) as cat:
                run = ops.cancel_run(cat, self.run_id)
        except Exception as exc:  # reported, never raised into the UI
            app.call_from_thread(app.notify, f"cancel failed: {exc}", severity="error")
            return
        app.call_from_thread(app.note_run, run)
        app.call_from_thread(app.notify, f"run {run['id']} is {run['status']}")

    def action_resume(self) -> None:
        if self.run.get("status") not in RESUMABLE:
            self.notify(f"run is {self.run.get('status')}; only lost, cancelled or failed runs "
                        "resume", severity="warning")
            return
        try:
            run = ops.resume_run(self.app.catalog, self.run_id)
        except (CatalogError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.note_run(run)
        self.notify(f"resuming {self.run_id} from its last checkpoint")
        self.reload()

    def action_tag(self) -> None:
        from advlt_tui.screens.modals import PromptModal

        def add(text: Optional[str]) -> None:
            tags = (text or "").replace(",", " ").split()
            if tags:
                self.app.catalog.add_tags(self.run_id, tags)
                self.app.note_run(self.app.catalog.get_run(self.run_id))
                self.reload()

        self.app.push_screen(PromptModal("Add tags (space or comma separated)", ""), add)

    def action_note(self) -> None:
        from advlt_tui.screens.modals import PromptModal

        def save(text: Optional[str]) -> None:
            if text is not None:
                self.app.catalog.set_note(self.run_id, text.strip() or None)
                self.app.note_run(self.app.catalog.get_run(self.run_id))
                self.reload()

        self.app.push_screen(PromptModal("Note", self.run.get("note") or ""), save)
