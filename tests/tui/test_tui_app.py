"""Whole-app qualities: help lists every binding, tags and notes, lineage, 80×24, themes,
and staying responsive while eight runs stream (updates batched per feed tick)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import fake_engine as fe
from tui_support import FROZEN_NOW, SIZE, open_detail, seed_run, wait_until

from advlt_tui.app import AdvltApp, create_app
from advlt_tui.screens.compare import CompareScreen
from advlt_tui.screens.evaluate import EvaluateModal
from advlt_tui.screens.help import HelpScreen, binding_sections
from advlt_tui.screens.new_run import NewRunScreen
from advlt_tui.screens.run_detail import RunDetailScreen
from advlt_tui.screens.runs import RunsScreen
from runs.catalog import Catalog


async def test_help_lists_every_binding_with_an_id(seeded, advlt_home):
    sections = binding_sections()
    ids = [b.id for _title, bindings in sections for b in bindings]
    assert all(ids) and len(ids) == len(set(ids))  # every binding has a unique id
    assert all(b.description for _t, bindings in sections for b in bindings)
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        table = app.screen.query_one("#help-table")
        listed = {str(table.get_row_at(i)[3]) for i in range(table.row_count)}
        assert set(ids) <= listed
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_tag_and_note_from_the_detail_screen(seeded, advlt_home):
    run_id = seeded[2]["id"]
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, run_id)
        await pilot.press("t", *"keep, best", "enter")
        await wait_until(pilot, lambda: app.screen is detail, what="tag dialog closed")
        await pilot.press("n", *"lr too high", "enter")
        await wait_until(pilot, lambda: app.screen is detail, what="note dialog closed")
        assert "note: lr too high" in str(detail.query_one("#run-summary").render())
        await pilot.press("escape")
        assert "keep,best" in str(app.screen.table.get_cell(run_id, "tags"))
    run = Catalog(advlt_home).get_run(run_id)
    assert run["tags"] == ["keep", "best"] and run["note"] == "lr too high"


async def test_lineage_links_parent_and_fine_tune(catalog, advlt_home):
    parent = seed_run(catalog, "pgd-at", 0, upto=15)
    child = fe.create_run(catalog, "rs-fine", run_id="231114-230000-c0c0", created=fe.T0,
                          parent_run=parent["id"])
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, parent["id"])
        await pilot.press("4")
        family = detail.query_one("#family-table")
        assert [str(c) for c in family.get_row_at(0)[:3]] == ["child", child["id"], "rs-fine"]
        assert detail.query_one("#ckpt-table").row_count == 3  # epochs 5, 10, 15
        family.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is not detail, what="child detail")
        assert isinstance(app.screen, RunDetailScreen) and app.screen.run_id == child["id"]
        await pilot.press("4")
        family = app.screen.query_one("#family-table")
        assert [str(c) for c in family.get_row_at(0)[:2]] == ["parent", parent["id"]]


async def test_every_screen_fits_80x24_by_keyboard_alone(seeded, advlt_home):
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        def visible(selector: str) -> bool:
            region = app.screen.query_one(selector).region
            return region.height > 0 and region.bottom <= 24 and region.x < 80

        assert visible("#runs-table") and visible("#filter")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunDetailScreen), what="detail")
        assert visible("#run-summary") and visible("#class-bars") and visible("#curves")
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EvaluateModal), what="dialog")
        assert visible("#attacks")
        await pilot.press("escape", "escape", "n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewRunScreen), what="form")
        assert visible("#presets") and visible("#overrides")
        await pilot.press("escape", "space", "space", "c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        assert visible("#compare-table") and visible("#perclass-table")


async def test_theme_toggle_recolours_status_cells(seeded, advlt_home):
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.table
        dark = str(table.get_cell(seeded[0]["id"], "status").text.style)
        assert dark == app.theme_color("text-success")
        await pilot.press("f2")
        await pilot.pause()
        assert not app.current_theme.dark
        light = str(app.screen.table.get_cell(seeded[0]["id"], "status").text.style)
        assert light == app.theme_color("text-success") and light != dark


async def test_eight_streaming_runs_are_batched_per_tick(catalog, advlt_home):
    runs = [seed_run(catalog, "pgd-at", i, upto=0, epochs=40, finish=False) for i in range(8)]
    poll_s = 0.25
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, poll_s=poll_s)
    assert isinstance(app, AdvltApp)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        updates: list[int] = []
        app.runs_changed.subscribe(screen, lambda m: updates.append(len(m.changed)))
        stop = threading.Event()

        def stream(run: dict) -> None:
            log = fe.EventLog(Path(run["run_dir"]), clock=time.time)
            epoch = 0
            while not stop.is_set() and epoch < 40:
                epoch += 1
                fe.train_events(log, 40, epoch, start=epoch - 1, finish=False, save_every=100)
                time.sleep(0.01)

        threads = [threading.Thread(target=stream, args=(r,), daemon=True) for r in runs]
        start = time.monotonic()
        for t in threads:
            t.start()
        await pilot.pause(1.5)
        # The UI answers keys while the runs stream.
        before = screen.table.cursor_row
        t_key = time.monotonic()
        await pilot.press("down")
        assert screen.table.cursor_row == before + 1 and time.monotonic() - t_key < 0.5
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        await wait_until(pilot, lambda: all(
            app.runs[r["id"]]["last_seq"] == fe.EventLog(Path(r["run_dir"])).seq - 1 for r in runs),
            what="the feed to catch up")
    events = sum(fe.EventLog(Path(r["run_dir"])).seq for r in runs)
    assert events > 8 * 40  # hundreds of event lines …
    assert len(updates) <= (elapsed + 2.0) / poll_s + 2  # … but one message per feed tick
    assert max(updates) > 1  # several runs' changes travel together
