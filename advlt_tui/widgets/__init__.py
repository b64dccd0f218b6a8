"""Widgets of the TUI (per-class bars, curves) and the pieces screens share (cell formatting,
the catalog feed, the event tail)."""
