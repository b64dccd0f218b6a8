"""The help screen: every binding of every screen, from the screens' own ``BINDINGS``."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


def binding_sections() -> list[tuple[str, list[Binding]]]:
    from advlt_tui.app import AdvltApp
    from advlt_tui.screens.compare import CompareScreen, ExportModal
    from advlt_tui.screens.evaluate import EvaluateModal
    from advlt_tui.screens.modals import ConfirmModal, PromptModal
    from advlt_tui.screens.new_run import NewRunScreen
    from advlt_tui.screens.run_detail import RunDetailScreen
    from advlt_tui.screens.runs import RunsScreen

    sections = [
        ("Everywhere", AdvltApp.BINDINGS), ("Runs", RunsScreen.BINDINGS),
        ("New run", NewRunScreen.BINDINGS), ("Run detail", RunDetailScreen.BINDINGS),
        ("Evaluate dialog", EvaluateModal.BINDINGS), ("Compare", CompareScreen.BINDINGS),
        ("Export dialog", ExportModal.BINDINGS), ("Confirm dialog", ConfirmModal.BINDINGS),
        ("Prompt dialog", PromptModal.BINDINGS),
    ]
    return [(title, [b for b in bindings if isinstance(b, Binding)]) for title, bindings in sections]


EXTRA = [
    ("Runs", "enter", "open the run under the cursor"),
    ("Runs", "↑ ↓ PgUp PgDn", "move the cursor"),
    ("Forms", "tab / shift+tab", "next / previous field"),
    ("Run detail", "1 2 3 4", "overview, log, evaluations, checkpoints & lineage tabs"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="help-dialog"):
            yield Label("Keys (the footer shows those of the current screen)",
                        classes="dialog-title")
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#help-table", DataTable)
        table.add_columns("where", "key", "does", "id")
        for title, bindings in binding_sections():
            for b in bindings:
                keys = " / ".join(self.app.get_key_display(Binding(k, b.action))
                                  for k in b.key.split(","))
                table.add_row(title, keys, b.description or b.action, b.id or "")
        for title, keys, text in EXTRA:
            table.add_row(title, keys, text, "")
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
