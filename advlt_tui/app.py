"""The Textual app (``advlt-tui``, bare ``advlt``): the runs of the catalog, refreshed live."""
from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header

from advlt_tui.render import age, pct
from runs.catalog import Catalog

COLUMNS = ("id", "status", "preset", "dataset", "epoch", "clean %", "robust %", "age")


class AdvltApp(App):
    TITLE = "advlt"
    SUB_TITLE = "adversarial robustness under long-tailed data"
    BINDINGS = [Binding("q", "quit", "Quit", id="quit"),
                Binding("r", "refresh", "Refresh", id="refresh")]

    def __init__(self, catalog: Catalog | None = None) -> None:
        super().__init__()
        self.catalog = catalog

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        if self.catalog is None:
            self.catalog = Catalog()
        table = self.query_one("#runs", DataTable)
        table.add_columns(*COLUMNS)
        self.action_refresh()
        self.set_interval(1.0, self.action_refresh)

    def action_refresh(self) -> None:
        self.catalog.ingest_all()
        table = self.query_one("#runs", DataTable)
        table.clear()
        for r in self.catalog.list_runs():
            table.add_row(r["id"], r["status"], r["preset"] or "", r["dataset"] or "",
                          f"{r['epoch'] or 0}/{r['epochs'] or '?'}", pct(r["clean_acc"]),
                          pct(r["robust_acc"]), age(r["created"]), key=r["id"])


def run_app() -> None:
    AdvltApp().run()


def main() -> None:
    run_app()
