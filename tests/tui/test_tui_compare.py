"""The compare screen: built on runs/compare.py's contract (compare_rows, render_compare,
config_diff), export to a file + clipboard, mismatch banner, and graceful degradation."""
from __future__ import annotations

import importlib.util
import types

import pytest
from tui_support import FROZEN_NOW, SIZE, wait_until

from advlt_tui.app import create_app
from advlt_tui.screens import compare as compare_screen
from advlt_tui.screens.compare import CompareScreen, ExportModal
from advlt_tui.screens.compare_data import config_differences, short_id


def stub_module(mismatch):
    """A stand-in with runs/compare.py's signatures, recording what the screen asks for."""
    calls = []

    def compare_rows(cat, refs):
        calls.append(("rows", list(refs)))
        return {"columns": ["run", "robust"],
                "rows": [{"run": r, "robust": cat.get_run(r)["robust_acc"]} for r in refs],
                "mismatch": mismatch}

    def render_compare(data, fmt):
        calls.append(("render", fmt))
        return f"{fmt}:" + ",".join(row["run"] for row in data["rows"])

    def config_diff(cat, a, b):
        calls.append(("diff", a, b))
        return [("model.head", "fc", b[-4:])]

    return types.SimpleNamespace(compare_rows=compare_rows, render_compare=render_compare,
                                 config_diff=config_diff, calls=calls)


async def open_compare(pilot) -> CompareScreen:
    await pilot.press("space", "space", "space", "c")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen), what="compare")
    return pilot.app.screen


async def test_export_writes_a_file_and_copies_the_text(seeded, advlt_home, tmp_path,
                                                        monkeypatch):
    module = stub_module(mismatch=[])
    monkeypatch.setattr(compare_screen, "compare_module", lambda: module)
    monkeypatch.chdir(tmp_path)
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot)
        ids = [r["id"] for r in seeded]
        assert ("rows", ids) in module.calls
        assert not screen.query_one("#mismatch").has_class("-mismatch")
        diff = screen.query_one("#diff-table")
        assert diff.row_count == 1 and str(diff.get_row_at(0)[2]) == ids[1][-4:]
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportModal), what="formats")
        await pilot.press("down", "enter")  # csv
        await wait_until(pilot, lambda: app.screen is screen, what="export done")
        written = list(tmp_path.glob("advlt-compare-*.csv"))
        assert len(written) == 1
        assert written[0].read_text() == "csv:" + ",".join(ids) + "\n"
        assert app.clipboard == "csv:" + ",".join(ids)


async def test_protocol_mismatch_is_flagged(seeded, advlt_home, monkeypatch):
    module = stub_module(mismatch=["231114-221320-a0b0: n_ex 100 vs all"])
    monkeypatch.setattr(compare_screen, "compare_module", lambda: module)
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot)
        banner = screen.query_one("#mismatch")
        assert banner.has_class("-mismatch")
        assert "n_ex 100 vs all" in str(banner.render())


async def test_without_compare_module_the_screen_degrades(seeded, advlt_home, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(compare_screen, "compare_module", lambda: None)
    monkeypatch.chdir(tmp_path)
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot)
        assert screen.query_one("#compare-table").row_count == 3
        assert "not available" in str(screen.query_one("#compare-title").render())
        assert screen.query_one("#diff-table").row_count > 0  # from the config files
        await pilot.press("x")
        await pilot.pause()
        assert app.screen is screen and list(tmp_path.iterdir()) == []


def test_config_differences_without_module_lists_only_differing_keys(seeded, catalog):
    ids = [seeded[0]["id"], seeded[2]["id"]]  # pgd-at vs ldam
    diff = dict(config_differences(catalog, ids, None))
    assert diff["preset"] == ["pgd-at", "ldam"]
    assert "train.batch_size" not in diff  # the same in both
    assert all(values[0] != values[1] for values in diff.values())


def test_short_ids_are_unique_suffixes():
    refs = ["231114-221320-a0b0", "231114-221321-a0b0", "231114-221322-ffff"]
    assert short_id(refs[2], refs) == "ffff"
    assert short_id(refs[0], refs) == "0-a0b0"


@pytest.mark.skipif(importlib.util.find_spec("runs.compare") is None,
                    reason="runs/compare.py not written yet")
async def test_with_the_real_compare_module(seeded, advlt_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, live=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot)
        assert screen.module is not None and screen.data is not None
        assert screen.query_one("#compare-table").row_count >= 3
        for fmt in ("table", "csv", "json", "markdown", "latex", "robustbench"):
            path = screen.export(fmt, tmp_path)
            assert path is not None and path.read_text().strip()
