"""Run lifecycle with a stand-in engine: cancel (process group, SIGTERM then SIGKILL), queued
runs leaving the queue, lost runs, and everything written to the run directory too."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from runtools import (
    assert_stream_intact, event_types, fake_engine_argv, fake_info, kill_group, kill_leftovers,
    new_fake_run, pid_alive, wait_for,
)

from runs import launcher, liveness, ops
from runs.catalog import Catalog, CatalogError


@pytest.fixture
def cat(advlt_home: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("ADVLT_FAKE_GPUS", "1")
    monkeypatch.setenv("ADVLT_GPU_POLL_S", "0.05")
    c = Catalog()
    yield c
    c.close()
    kill_leftovers(advlt_home)


def start(cat: Catalog, run_id: str, *opts: str, gpus: str = "auto") -> Path:
    run_dir = new_fake_run(cat, run_id)
    info = launcher.launch(run_dir, fake_engine_argv(run_dir, *opts), gpus)
    cat.set_process(run_id, info["pid"], info["pgid"], info["start_time"], info["host"])
    return run_dir


def test_cancel_stops_the_whole_process_group(cat: Catalog) -> None:
    run_dir = start(cat, "stubborn", "ignore_term", "spawn_stubborn_child")
    info = wait_for(lambda: fake_info(run_dir), what="the engine to start")
    assert pid_alive(info["child"])
    t0 = time.monotonic()
    row = ops.cancel_run(cat, "stub", grace_s=0.5)  # a prefix works too
    # SIGTERM is ignored by both, so only the SIGKILL after the grace period ends them.
    assert time.monotonic() - t0 >= 0.5
    assert row["status"] == "cancelled"
    wait_for(lambda: not pid_alive(info["pid"]) and not pid_alive(info["child"]),
             what="engine and child gone")
    # The run directory says so too (an event the manager wrote, as the engine could not).
    assert event_types(run_dir)[-1] == "cancelled"
    assert_stream_intact(run_dir)
    with pytest.raises(CatalogError, match="already ended"):
        ops.cancel_run(cat, "stubborn")


def test_cancel_a_queued_run_leaves_the_queue(cat: Catalog) -> None:
    holder = start(cat, "holder")
    wait_for(lambda: fake_info(holder), what="the GPU holder")
    waiting = start(cat, "waiting")
    wait_for(lambda: event_types(waiting) == ["queued"], what="queued event")
    cat.ingest_all()
    assert cat.get_run("waiting")["status"] == "queued"
    row = ops.cancel_run(cat, "waiting", grace_s=5)
    assert row["status"] == "cancelled"
    assert event_types(waiting) == ["queued", "cancelled"]  # written by the waiter itself
    assert fake_info(waiting) is None
    assert cat.get_run("holder")["status"] == "running"  # the other run is untouched
    (holder / "stop").touch()


def test_dead_waiter_and_dead_engine_become_lost_then_cancel_records_it(cat: Catalog) -> None:
    holder = start(cat, "holder")
    info = wait_for(lambda: fake_info(holder), what="the GPU holder")
    waiting = start(cat, "waiting")
    wait_for(lambda: event_types(waiting) == ["queued"], what="queued event")
    cat.ingest_all()
    waiter_pid = cat.get_run("waiting")["pid"]
    kill_group(waiter_pid, signal.SIGKILL)
    kill_group(info["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(waiter_pid) and not pid_alive(info["pid"]), what="deaths")
    changes = {c.run_id: (c.old, c.new) for c in liveness.reconcile(cat)}
    assert changes == {"holder": ("running", "lost"), "waiting": ("queued", "lost")}
    row = ops.cancel_run(cat, "waiting")
    assert row["status"] == "cancelled" and "no process" in row["message"]
    assert event_types(waiting)[-1] == "cancelled"
    # reindex rebuilds the same statuses from the run directories alone.
    cat.reindex()
    liveness.reconcile(cat)
    assert cat.get_run("waiting")["status"] == "cancelled"
    assert cat.get_run("holder")["status"] == "lost"


def test_delete_refuses_a_running_run_then_removes_everything(cat: Catalog) -> None:
    run_dir = start(cat, "doomed")
    wait_for(lambda: fake_info(run_dir), what="engine start")
    with pytest.raises(CatalogError, match="cancel"):
        ops.delete_run(cat, "doomed")
    assert run_dir.is_dir()
    (run_dir / "stop").touch()
    wait_for(lambda: not launcher.is_running(run_dir), what="engine end")
    ops.delete_run(cat, "doomed")
    assert not run_dir.exists() and not list(run_dir.parent.iterdir())
    assert cat.list_runs() == []
    assert cat.reindex() == 0


def test_an_evaluation_whose_process_died_becomes_lost(cat: Catalog) -> None:
    run_dir = new_fake_run(cat, "r")
    (run_dir / "evals").mkdir()
    (run_dir / "evals" / "e1.json").write_text('{"eval_id": "e1", "checkpoint": "last"}')
    info = launcher.launch(run_dir, fake_engine_argv(run_dir, "quiet"), "cpu", eval_id="e1",
                           log_name="evals/e1.log", pid_name="evals/e1.pid")
    wait_for(lambda: fake_info(run_dir), what="the evaluation process")
    cat.ingest("r")
    assert cat.evaluation_status("e1") == "queued"  # request registered, waiter's eval_queued
    assert liveness.reconcile(cat) == []  # alive: nothing changes
    kill_group(info["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(info["pid"]), what="death")
    changes = liveness.reconcile(cat)
    assert [(c.run_id, c.new) for c in changes] == [("e1", "lost")]
    assert cat.evaluation_status("e1") == "lost"
    # The waiter wrote eval_* events, never run-level ones: the run itself is untouched.
    assert event_types(run_dir) == ["eval_queued", "eval_gpu_assigned"]
    assert cat.get_run("r")["status"] == "queued"
