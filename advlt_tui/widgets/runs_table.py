"""A DataTable that keeps its own column widths, so 1,000 rows appear in a blink.

``DataTable`` measures every new cell through Rich (a ``ConsoleOptions`` per cell); for 12
columns × 1,000 runs that was a third of a second of startup. Here cells are ``Cell`` objects,
which Rich renders but DataTable cannot measure (no ``__rich_measure__``), and columns have
fixed widths that this table widens itself from the plain text's cell length — exact for the
single-line text of the runs list.
"""
from __future__ import annotations

from typing import Iterable

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey


class Cell:
    """One line of styled text; ``str()`` is its plain text (for sorting and tests)."""

    __slots__ = ("text",)

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_console__(self, console, options):
        yield self.text

    def __str__(self) -> str:
        return self.text.plain

    def __repr__(self) -> str:
        return f"Cell({self.text.plain!r})"


class RunsTable(DataTable):
    """``add_cells``/``set_cell`` instead of ``add_row``/``update_cell``: they keep widths."""

    def setup(self, columns: Iterable[tuple[str, str]]) -> None:
        for key, label in columns:
            self.add_column(label, key=key, width=cell_len(label))

    def _widen(self, key: str, width: int) -> bool:
        column = self.columns[ColumnKey(key)]
        if width > column.width:
            column.width = width
            return True
        return False

    def add_many(self, rows: Iterable[tuple[str, dict[str, Text]]]) -> None:
        """Add rows (key, cells by column key) in order, widening each column once."""
        rows = list(rows)
        keys = [str(k.value) for k in self.columns]
        for key in keys:
            self._widen(key, max((cell_len(cells[key].plain) for _k, cells in rows), default=0))
        for row_key, cells in rows:
            self.add_row(*(Cell(cells[k]) for k in keys), key=row_key)

    def add_cells(self, cells: dict[str, Text], key: str) -> RowKey:
        for column_key, text in cells.items():
            self._widen(column_key, cell_len(text.plain))
        return self.add_row(*(Cell(cells[str(k.value)]) for k in self.columns), key=key)

    def set_cell(self, row_key: str, column_key: str, text: Text) -> None:
        widened = self._widen(column_key, cell_len(text.plain))
        # update_width makes the table recompute its virtual size when a column grew.
        self.update_cell(row_key, column_key, Cell(text), update_width=widened)
