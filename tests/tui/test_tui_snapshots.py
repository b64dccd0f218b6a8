"""Snapshots of the key screens at 100×30: fixed runs, fixed event times, frozen clock (ages),
no live feed. Regenerate with ``pytest tests/tui/test_tui_snapshots.py --snapshot-update``."""
from __future__ import annotations

from tui_support import FROZEN_NOW, SIZE

from advlt_tui.app import create_app
from advlt_tui.screens import compare as compare_screen


def frozen_app(home):
    return create_app(home=home, clock=lambda: FROZEN_NOW, live=False)


def test_runs_screen(seeded, advlt_home, snap_compare):
    assert snap_compare(frozen_app(advlt_home), terminal_size=SIZE)


def test_run_detail_screen(seeded, advlt_home, snap_compare):
    assert snap_compare(frozen_app(advlt_home), press=["down", "enter"], terminal_size=SIZE)


def test_run_detail_evaluations_tab(seeded, advlt_home, snap_compare):
    assert snap_compare(frozen_app(advlt_home), press=["enter", "3"], terminal_size=SIZE)


def test_compare_screen(seeded, advlt_home, snap_compare):
    assert compare_screen.compare_module() is not None, "runs/compare.py is part of the product"
    assert snap_compare(frozen_app(advlt_home), press=["space", "space", "space", "c"],
                        terminal_size=SIZE)
