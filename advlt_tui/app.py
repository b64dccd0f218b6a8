"""The Textual app (``advlt-tui``, bare ``advlt``): launch, watch, browse, compare, re-evaluate.

One ``App`` that owns the catalog connection of the UI thread and the store of run rows; the
screens own their bindings (``advlt_tui/screens``). A worker thread (``CatalogFeed``) ingests
new events with its own connection and sends only the changed rows, a few times a second; the
app merges them into ``runs`` and publishes them on the ``runs_changed`` signal, which every
screen that shows runs subscribes to. Closing the app never touches a run: runs are detached
processes (``runs.launcher``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from textual.app import App
from textual.binding import Binding
from textual.color import Color, ColorParseError
from textual.signal import Signal
from textual.worker import get_current_worker

from advlt_tui.widgets.feed import CatalogFeed, RunsUpdated
from runs.catalog import Catalog

CSS_FILES = ["app.tcss", "runs.tcss", "new_run.tcss", "detail.tcss", "compare.tcss",
             "modals.tcss"]


class AdvltApp(App):
    TITLE = "advlt"
    SUB_TITLE = "adversarial robustness under long-tailed data"
    CSS_PATH = CSS_FILES
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark,f1", "help", "Help", id="app.help"),
        Binding("f2", "toggle_theme", "Theme", id="app.theme"),
    ]

    def __init__(self, catalog: Optional[Catalog] = None, *, home: Optional[Path] = None,
                 clock: Callable[[], float] = time.time, poll_s: float = 0.5,
                 live: bool = True) -> None:
        super().__init__()
        self.catalog: Catalog = catalog  # type: ignore[assignment]  # opened in on_mount
        self._owns_catalog = catalog is None
        self.home = Path(home) if home is not None else (catalog.home if catalog else None)
        self.clock = clock
        self.poll_s = poll_s
        self.live = live
        self.runs: dict[str, dict] = {}
        self.runs_changed: Signal[RunsUpdated] = Signal(self, "runs-changed")
        self._feed: Optional[CatalogFeed] = None
        self._colors: dict[tuple[str, str], str] = {}
        self._colors_theme: Optional[str] = None
        self._variables: dict[str, str] = {}

    def on_mount(self) -> None:
        if self.catalog is None:
            # Opened here, on the UI thread, which is the thread that will use it.
            self.catalog = Catalog(self.home)
        self.home = self.catalog.home
        self.runs = {r["id"]: r for r in self.catalog.list_runs()}
        from advlt_tui.screens.runs import RunsScreen

        self.push_screen(RunsScreen())
        if self.live:
            self._feed = CatalogFeed(self.home, self.runs, interval_s=self.poll_s)
            self.run_worker(self._follow_catalog, thread=True, exclusive=True, group="feed",
                            name="catalog-feed")

    def _follow_catalog(self) -> None:
        worker = get_current_worker()
        assert self._feed is not None
        self._feed.run(self.post_message, lambda: worker.is_cancelled)

    def on_unmount(self) -> None:
        # Only our own threads and connection end here: runs are detached processes.
        if self._feed is not None:
            self._feed.stop()
        if self._owns_catalog and self.catalog is not None:
            self.catalog.close()

    def on_runs_updated(self, message: RunsUpdated) -> None:
        for run_id in message.removed:
            self.runs.pop(run_id, None)
        self.runs.update(message.changed)
        self.runs_changed.publish(message)

    def note_run(self, row: dict) -> None:
        """A run this app just created or changed: show it now, before the feed's next tick."""
        # The feed may send the same row again on its next tick: harmless, since table cells
        # only change where their text differs.
        self.runs[row["id"]] = row
        self.runs_changed.publish(RunsUpdated({row["id"]: row}))

    def now(self) -> float:
        return self.clock()

    def action_help(self) -> None:
        from advlt_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def theme_color(self, variable: str) -> str:
        """A theme variable's colour (``text-success``, ``text-error`` ...) as ``#rrggbb`` for
        Rich renderables; translucent ones are blended onto the background ("" if unknown).

        Cached per theme; computed from the theme itself, not from ``theme_variables``, which
        lags behind a theme change until the app's CSS is refreshed."""
        key = (self.theme, variable)
        if key not in self._colors:
            if self._colors_theme != self.theme:
                self._variables, self._colors_theme = self.get_css_variables(), self.theme
            try:
                color = Color.parse(self._variables[variable])
                if color.a < 1:
                    background = Color.parse(self._variables["background"])
                    color = background.blend(color.with_alpha(1), color.a)
                self._colors[key] = color.hex6
            except (KeyError, ColorParseError):
                self._colors[key] = ""
        return self._colors[key]


def create_app(catalog: Optional[Catalog] = None, *, home: Optional[Path] = None,
               clock: Callable[[], float] = time.time, poll_s: float = 0.5,
               live: bool = True) -> AdvltApp:
    """The app factory used by the CLI, the tests and the benchmark.

    ``catalog`` must belong to the thread that runs the app (else pass ``home``); ``clock``
    freezes ages for snapshots; ``live=False`` turns the catalog feed off.
    """
    return AdvltApp(catalog, home=home, clock=clock, poll_s=poll_s, live=live)


def run_app() -> None:
    create_app().run()


def main() -> None:
    run_app()
