"""The run-detail screen: per-class bars and live epochs, cancel (SIGTERM to the engine's
process group), and the evaluate dialog (an eval request on disk, its result in the screen)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import fake_engine as fe
from tui_support import FROZEN_NOW, SIZE, events_of, open_detail, seed_run, wait_until

from advlt_tui.app import create_app
from advlt_tui.screens.evaluate import EvaluateModal
from advlt_tui.screens.modals import ConfirmModal
from advlt_tui.screens.run_detail import RunDetailScreen
from advlt_tui.widgets.class_bars import ClassBars
from runs import launcher, ops
from runs.catalog import Catalog


def summary(screen: RunDetailScreen) -> str:
    return str(screen.query_one("#run-summary").render())


async def test_detail_shows_class_bars_head_to_tail_and_live_epoch(catalog, advlt_home):
    run = seed_run(catalog, "pgd-at", 0, upto=2, epochs=4, finish=False)
    app = create_app(home=advlt_home, clock=lambda: FROZEN_NOW, poll_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, run["id"])
        bars = detail.query_one("#class-bars", ClassBars)
        assert bars.data.counts == tuple(fe.COUNTS)
        assert bars.data.robust == tuple(fe.per_class(2, 4, robust=True))
        rows = str(bars.render()).splitlines()[1:]
        assert [int(r.split()[1]) for r in rows] == sorted(fe.COUNTS, reverse=True)
        assert "epoch 2" in bars.border_title
        assert "epoch 2/4" in summary(detail)
        assert "img/s" in summary(detail) and "ETA" in summary(detail)

        log = fe.EventLog(Path(run["run_dir"]), clock=fe.fixed_clock(FROZEN_NOW))
        fe.train_events(log, 4, 3, start=2, finish=False)
        await wait_until(pilot, lambda: "epoch 3" in bars.border_title, what="epoch 3 bars")
        assert "epoch 3/4" in summary(detail)
        assert bars.data.robust == tuple(fe.per_class(3, 4, robust=True))
        curve = detail.query_one("#curve-robust")
        assert list(curve.data) == [fe.epoch_event(e, 4)["robust_acc"] for e in (1, 2, 3)]


async def test_cancel_from_detail_terminates_the_engine(catalog, advlt_home, fake_launch,
                                                        monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "30")  # it would run for minutes
    run = ops.start_run(catalog, "pgd-at", "digits-lt", epochs=3)
    run_dir = Path(run["run_dir"])
    deadline = time.monotonic() + 10
    while not any(e["type"] == "started" for e in events_of(run_dir)):
        assert time.monotonic() < deadline, "fake engine did not start"
        time.sleep(0.05)
    app = create_app(home=advlt_home, poll_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, run["id"])
        await wait_until(pilot, lambda: detail.run.get("status") == "running", what="running")
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        await pilot.press("y")
        await wait_until(pilot, lambda: detail.run.get("status") == "cancelled", timeout=15,
                         what="the run to be cancelled")
        assert "cancelled" in summary(detail)
    assert not launcher.is_running(run_dir)
    last = events_of(run_dir)[-1]
    assert last["type"] == "cancelled" and last["signal"] == "SIGTERM"
    assert Catalog(advlt_home).get_run(run["id"])["status"] == "cancelled"


async def test_evaluate_dialog_writes_the_request_and_shows_the_result(catalog, advlt_home,
                                                                       fake_launch):
    run = seed_run(catalog, "pgd-at", 0, upto=10, epochs=10)
    app = create_app(home=advlt_home, poll_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, run["id"])
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EvaluateModal), what="dialog")
        # attacks list has focus: fgsm, pgd, cw, mim, aa; untick cw and aa
        await pilot.press("down", "down", "space", "down", "down", "space")
        await pilot.press("tab", "tab", "tab", *"100")  # → checkpoint → variant → n-ex
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: app.screen is detail, what="the dialog to close")
        specs = list((Path(run["run_dir"]) / "evals").glob("*.json"))
        assert len(specs) == 1
        spec = json.loads(specs[0].read_text())
        assert spec["attacks"] == ["fgsm", "pgd", "mim"]
        assert spec["protocol"] == {"n_ex": 100}
        assert spec["variant"] is None and spec["checkpoint"] == "last"
        table = detail.query_one("#eval-table")
        assert table.row_count == 1  # registered (queued) at once
        await wait_until(pilot, lambda: detail.evals and detail.evals[0]["status"] == "finished",
                         timeout=15, what="the evaluation result")
        row = [str(c) for c in table.get_row_at(0)]
        assert row[3] == "finished"
        assert row[5] == f"{100 * fe.mean([round(v * 0.5, 4) for v in fe.per_class(10, 10, False)]):.1f}"
        bars = detail.query_one("#eval-bars", ClassBars)
        assert bars.data.labels == ("clean", "worst")
