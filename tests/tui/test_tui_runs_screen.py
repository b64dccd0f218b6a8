"""The runs screen against the fake engine: statuses, live updates, filter, sort, select."""
from __future__ import annotations

import time
from pathlib import Path

import fake_engine as fe
from tui_support import FROZEN_NOW, SIZE, wait_until

from advlt_tui.app import create_app
from advlt_tui.screens.compare import CompareScreen
from advlt_tui.screens.runs import RunsScreen


def cell(screen: RunsScreen, run_id: str, column: str) -> str:
    return str(screen.table.get_cell(run_id, column))


def shown_ids(screen: RunsScreen) -> list[str]:
    table = screen.table
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


async def test_runs_list_shows_statuses_and_updates_live(seeded, advlt_home):
    running = seeded[1]
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, poll_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        assert screen.table.row_count == 3
        assert "finished" in cell(screen, seeded[0]["id"], "status")
        assert "running" in cell(screen, running["id"], "status")
        assert cell(screen, running["id"], "epoch") == "5/15"
        assert cell(screen, seeded[0]["id"], "age") == "3h"  # created T0 - 1h, now T0 + 2h

        # Live rows are updated in place: count every full rebuild while events stream in.
        rebuilds = []
        real_clear = screen.table.clear
        screen.table.clear = lambda *a, **k: (rebuilds.append(1), real_clear(*a, **k))[1]
        log = fe.EventLog(Path(running["run_dir"]), clock=fe.fixed_clock(fe.T0 + 500))
        fe.replay_in_thread(lambda: fe.train_events(
            log, 15, 15, start=5, sleep=time.sleep, epoch_s=0.03))
        await wait_until(pilot, lambda: "finished" in cell(screen, running["id"], "status"),
                         what="the running run to show finished")
        assert cell(screen, running["id"], "epoch") == "15/15"
        assert cell(screen, running["id"], "robust") == f"{100 * fe.epoch_event(15, 15)['robust_acc']:.1f}"
        assert rebuilds == []
        assert screen.table.row_count == 3


async def test_filter_narrows_rows_and_escape_clears(seeded, advlt_home):
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("slash", *"ldam")
        await pilot.pause()
        assert shown_ids(screen) == [seeded[2]["id"]]
        await pilot.press("escape")
        await pilot.pause()
        assert screen.table.row_count == 3
        await pilot.press("slash", *"baseline")  # tags match too
        await pilot.pause()
        assert shown_ids(screen) == [seeded[0]["id"]]
        await pilot.press("enter")  # back to the table, filter kept
        assert screen.table.has_focus and screen.table.row_count == 1


async def test_sort_cycles_and_reverses(seeded, advlt_home):
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        ids = [r["id"] for r in seeded]
        assert shown_ids(screen) == ids  # newest first: seeded[0] was created last
        await pilot.press("s")  # status, descending: running before finished
        await pilot.pause()
        assert shown_ids(screen)[0] == ids[1]
        await pilot.press("s", "s", "s")  # preset, dataset, then progress (descending)
        await pilot.press("S")  # ascending: the unfinished run first
        await pilot.pause()
        assert shown_ids(screen)[0] == ids[1]
        assert "progress ↑" in str(screen.query_one("#runs-info").render())


async def test_multi_select_marks_rows_and_compare_opens(seeded, advlt_home):
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("c")  # nothing selected: a warning, no screen
        assert app.screen is screen
        await pilot.press("space", "down", "space")  # select rows 1 and 3
        await pilot.pause()
        assert screen.selected == {seeded[0]["id"], seeded[2]["id"]}
        assert cell(screen, seeded[0]["id"], "sel") == "●"
        assert cell(screen, seeded[1]["id"], "sel") == " "
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        compare = app.screen
        assert compare.refs == [seeded[0]["id"], seeded[2]["id"]]
        # a row per run (training-time numbers), plus one per finished evaluation (run 0 has one)
        assert compare.query_one("#compare-table").row_count in (2, 3)
        per_class = compare.query_one("#perclass-table")
        assert per_class.row_count == len(fe.COUNTS)
        # head → tail: the first row is the class with the most training images
        assert str(per_class.get_row_at(0)[1]) == str(max(fe.COUNTS))
        assert str(per_class.get_row_at(per_class.row_count - 1)[1]) == str(min(fe.COUNTS))
        await pilot.press("escape")
        assert app.screen is screen
