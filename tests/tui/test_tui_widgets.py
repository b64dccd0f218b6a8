"""Pieces of the TUI without an app: bars, ordering, formatting, the tails and the feed."""
from __future__ import annotations

import json
from pathlib import Path

import fake_engine as fe
from tui_support import seed_run

from advlt_tui.screens.detail_text import run_fraction
from advlt_tui.widgets.class_bars import bar
from advlt_tui.widgets.feed import CatalogFeed
from advlt_tui.widgets.format import age_at, best_last, duration, head_to_tail, matches
from advlt_tui.widgets.tail import EventTail, LogTail


def test_bar_fills_eighths_of_cells():
    assert bar(0.0, 4) == "    "
    assert bar(1.0, 4) == "████"
    assert bar(0.5, 4) == "██  "
    assert bar(1 / 16, 2) == "▏ "  # 1/16 of 2 cells = 1/8 of a cell
    assert bar(None, 3) == "   "
    assert bar(1.7, 2) == "██"  # clamped


def test_head_to_tail_orders_by_count_then_index():
    assert head_to_tail([5, 50, 5, 20]) == [1, 3, 0, 2]


def test_formatting_helpers():
    assert age_at(1000.0, 1000.0 + 3 * 86400 + 5) == "3d"
    assert age_at(1000.0, 1045.0) == "45s"
    assert age_at(None, 5.0) == "—"
    assert duration(3725) == "1h02m" and duration(65) == "1m05s" and duration(None) == "—"
    assert best_last({"best_robust_acc": 0.5, "robust_acc": 0.45}) == "50.0/45.0"
    row = {"id": "x1", "preset": "ldam", "dataset": "cifar10-lt", "tags": ["paper"]}
    assert matches(row, "LDAM paper") and not matches(row, "ldam cifar100")


def test_run_fraction_counts_batches_of_the_current_epoch():
    run = {"epoch": 2, "epochs": 4}
    assert run_fraction(run, None) == 0.5
    assert run_fraction(run, {"epoch": 3, "batch": 5, "batches": 10}) == 0.625
    assert run_fraction(run, {"epoch": 2, "batch": 5, "batches": 10}) == 0.5  # stale event


def test_log_tail_returns_complete_lines_only(tmp_path):
    path = tmp_path / "engine.log"
    tail = LogTail(path)
    assert tail.poll() == []  # no file yet
    path.write_bytes(b"one\ntw")
    assert tail.poll() == ["one"]
    with open(path, "ab") as f:
        f.write(b"o\nthree\n")
    assert tail.poll() == ["two", "three"]


def test_log_tail_of_a_long_file_starts_near_its_end(tmp_path):
    path = tmp_path / "engine.log"
    path.write_text("".join(f"line {i:06d}\n" for i in range(20000)))  # ~240 KB
    lines = LogTail(path).poll()
    assert lines[-1] == "line 019999"
    assert 1000 < len(lines) < 20000 and all(line.startswith("line ") for line in lines)


def test_event_tail_folds_progress_and_eval_progress(tmp_path):
    log = fe.EventLog(tmp_path, clock=fe.fixed_clock())
    tail = EventTail(tmp_path / "events.jsonl")
    fe.train_events(log, 3, 1, finish=False)
    tail.poll()
    assert tail.state.progress["batch"] == 15 and tail.state.last_epoch["epoch"] == 1
    log.emit("eval_progress", eval_id="e1", attack="pgd", done=10, total=40, eta_s=3.0)
    tail.poll()
    ev = tail.state.evals["e1"]
    assert (ev.attack, ev.done, ev.total, ev.state) == ("pgd", 10, 40, "running")
    log.emit("eval_failed", eval_id="e1", message="boom")
    log.emit("finished", epoch=3)
    tail.poll()
    assert tail.state.evals["e1"].state == "failed" and tail.state.ended == "finished"


def test_feed_sends_only_rows_that_changed(catalog, advlt_home):
    runs = [seed_run(catalog, "pgd-at", i, upto=1, epochs=3, finish=False) for i in range(3)]
    feed = CatalogFeed(advlt_home, {r["id"]: r for r in catalog.list_runs()})
    assert feed.tick(catalog) == ({}, frozenset())
    log = fe.EventLog(Path(runs[1]["run_dir"]), clock=fe.fixed_clock(fe.T0 + 99))
    fe.train_events(log, 3, 2, start=1, finish=False)
    changed, removed = feed.tick(catalog)
    assert list(changed) == [runs[1]["id"]] and removed == frozenset()
    assert changed[runs[1]["id"]]["epoch"] == 2
    catalog.delete_run(runs[2]["id"])
    assert feed.tick(catalog) == ({}, frozenset({runs[2]["id"]}))


def test_fake_engine_events_parse_like_the_engine_writes_them(tmp_path):
    log = fe.EventLog(tmp_path, clock=fe.fixed_clock())
    fe.train_events(log, 2, 2)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "started" and events[-1]["type"] == "finished"
    assert all({"v", "run", "seq", "time", "type"} <= set(e) for e in events)


def test_no_screen_imports_torch(project_env):
    """The TUI starts fast over SSH: none of its modules may pull in torch."""
    import subprocess
    import sys

    modules = ["advlt_tui.app", "advlt_tui.screens.runs", "advlt_tui.screens.new_run",
               "advlt_tui.screens.run_detail", "advlt_tui.screens.evaluate",
               "advlt_tui.screens.compare", "advlt_tui.screens.help"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=project_env, check=True)
    assert out.stdout.strip() == "[]"
