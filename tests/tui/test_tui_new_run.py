"""The new-run screen: inline validation (the CLI's), and launching through the real launcher
with the fake engine as the spawned process."""
from __future__ import annotations

import json
from pathlib import Path

from tui_support import SIZE, events_of, wait_until

from advlt_tui.app import create_app
from advlt_tui.screens.new_run import NewRunScreen, describe_problems, override_lines
from advlt_tui.screens.runs import RunsScreen
from presets.validate import Problem
from runs.catalog import Catalog


def test_override_lines_and_problem_lines():
    lines = override_lines("train.epochs=2\n\n# a comment\n  model.head = cos \n")
    assert lines == ["train.epochs=2", "model.head = cos"]
    out = describe_problems([Problem("model.head", "unknown value 'cos '"),
                             Problem("seed", "must be an integer")], lines)
    assert out[0].startswith("✘ line 2: model.head:")
    assert out[1] == "✘ seed: must be an integer"  # not from an override line


async def open_form(pilot) -> NewRunScreen:
    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, NewRunScreen), what="form")
    return pilot.app.screen


async def test_bad_override_shows_inline_error_and_blocks_launch(advlt_home, fake_launch):
    app = create_app(home=advlt_home, live=False)
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        assert form.preset.name == "pgd-at"
        await pilot.press("tab", "tab")  # presets → dataset → overrides
        assert form.query_one("#overrides").has_focus
        await pilot.press(*"train.epochs=0", "enter", *"train.bogus=1")
        problems = form.query_one("#problems")
        await wait_until(pilot, lambda: "bogus" in str(problems.render()), what="inline error")
        text = str(problems.render())
        assert "line 2: train.bogus" in text
        assert "line 1: train.epochs" in text
        assert problems.has_class("-invalid")
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.screen is form  # nothing launched
        assert fake_launch == []
        assert Catalog(advlt_home).list_runs() == []


async def test_valid_form_launches_and_run_appears_at_once(advlt_home, fake_launch):
    app = create_app(home=advlt_home, poll_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        await pilot.press("tab", "tab", *"train.epochs=2")
        await wait_until(pilot, lambda: "valid configuration" in str(form.query_one("#problems").render()),
                         what="valid form")
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), what="runs screen")
        screen = app.screen
        assert screen.table.row_count == 1  # shown at once, before the feed's next tick
        run_id = screen.cursor_id()
        assert str(screen.table.get_cell(run_id, "status")).split()[-1] in ("queued", "running")
        assert str(screen.table.get_cell(run_id, "preset")) == "pgd-at"
        await wait_until(pilot, lambda: "finished" in str(screen.table.get_cell(run_id, "status")),
                         timeout=20, what="the fake engine to finish")
        assert str(screen.table.get_cell(run_id, "epoch")) == "2/2"
    run_dir = fake_launch[0]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"] == "pgd-at" and config["train"]["epochs"] == 2
    assert [e["type"] for e in events_of(run_dir)][-1] == "finished"
    assert Path(run_dir).name == run_id


async def test_fine_tune_needs_a_parent_run_and_launches_from_it(catalog, advlt_home,
                                                                 fake_launch):
    from tui_support import seed_run

    parent = seed_run(catalog, "pgd-at", 0, upto=15)
    app = create_app(home=advlt_home, live=False)
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        names = [p.name for p in form.presets]
        await pilot.press(*["down"] * (names.index("rs-fine") - names.index("pgd-at")))
        assert form.preset.name == "rs-fine"
        problems = form.query_one("#problems")
        await wait_until(pilot, lambda: "choose the parent run below" in str(problems.render()),
                         what="the missing-parent problem")
        select = form.query_one("#parent")
        assert not select.disabled
        select.focus()
        await pilot.press("enter", "down", "enter")  # open, first run, pick
        await wait_until(pilot, lambda: select.value == parent["id"], what="parent picked")
        await wait_until(pilot, lambda: "valid configuration" in str(problems.render()),
                         what="valid form")
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), what="runs screen")
    child = next(r for r in Catalog(advlt_home).list_runs() if r["id"] != parent["id"])
    assert child["preset"] == "rs-fine" and child["parent_run"] == parent["id"]
    config = json.loads((Path(child["run_dir"]) / "config.json").read_text())
    assert config["parent_checkpoint"].endswith("checkpoints/epoch15.pt")
