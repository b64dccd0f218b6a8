"""Liveness: pid + start time (not pid alone), zombies are dead, reconcile marks lost runs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from runs.catalog import Catalog
from runs.events import EVENT_VERSION
from runs.liveness import engine_gone, is_alive, parse_stat, pid_exists, process_start_time, reconcile

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


@pytest.fixture
def cat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("ADVLT_HOME", str(tmp_path / "home"))
    c = Catalog()
    yield c
    c.close()


def state_of(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def test_parse_stat_survives_parentheses_and_spaces_in_the_name() -> None:
    fields_after_name = ["S"] + [str(i) for i in range(4, 22)] + ["777123", "9", "10"]
    text = "4321 (evil) name ) (x) " + " ".join(fields_after_name) + "\n"
    assert parse_stat(text) == ("S", 777123)


def test_start_time_of_a_child_is_not_before_our_own() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        mine, theirs = process_start_time(os.getpid()), process_start_time(child.pid)
        assert mine is not None and theirs is not None and theirs >= mine
    finally:
        child.kill()
        child.wait()


def test_real_child_alive_then_zombie_then_gone() -> None:
    child = subprocess.Popen(["sleep", "30"])
    start = process_start_time(child.pid)
    assert start is not None
    assert is_alive(child.pid, start)
    assert pid_exists(child.pid)
    assert not is_alive(child.pid, start + 1)  # same pid, another process: a recycled pid
    assert not is_alive(child.pid, None)  # pid alone is never enough
    child.kill()
    deadline = time.monotonic() + 5
    while state_of(child.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state_of(child.pid) == "Z"  # not reaped yet: still in /proc, but dead
    assert not is_alive(child.pid, start)
    assert not pid_exists(child.pid)
    child.wait()
    assert not is_alive(child.pid, start)
    assert process_start_time(child.pid) is None


def test_bad_pids() -> None:
    assert process_start_time(0) is None and process_start_time(-5) is None
    assert not is_alive(0, 1) and not is_alive(None, 1) and not pid_exists(-1)


def running_run(cat: Catalog, run_id: str, pid: int, start: int | None, host: str | None = None) -> Path:
    row = cat.create_run({"id": run_id, "preset": "pgd-at"})
    run_dir = Path(row["run_dir"])
    pid_info = {"pid": pid, "start_time": start, "pgid": pid}
    if host is not None:
        pid_info["host"] = host
    (run_dir / "engine.pid").write_text(json.dumps(pid_info))
    write_event(run_dir, run_id, 0, "started", pid=pid, epochs=2, resumed=False)
    cat.ingest(run_id)
    assert cat.get_run(run_id)["status"] == "running"
    return run_dir


def write_event(run_dir: Path, run_id: str, seq: int, type_: str, **data: object) -> None:
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"v": EVENT_VERSION, "run": run_id, "seq": seq, "time": float(seq),
                            "type": type_, **data}) + "\n")


def test_reconcile_marks_only_dead_running_runs_lost(cat: Catalog) -> None:
    live = subprocess.Popen(["sleep", "30"])
    dies = subprocess.Popen(["sleep", "30"])
    finishes = subprocess.Popen(["sleep", "30"])
    try:
        running_run(cat, "r-live", live.pid, process_start_time(live.pid))
        running_run(cat, "r-dies", dies.pid, process_start_time(dies.pid))
        done_dir = running_run(cat, "r-finishes", finishes.pid, process_start_time(finishes.pid))
        # Our own pid with a wrong start time: the pid was recycled by an unrelated process.
        running_run(cat, "r-recycled", os.getpid(), process_start_time(os.getpid()) - 1)
        running_run(cat, "r-elsewhere", 999_999_999, 1, host=socket.gethostname() + "-other")
        cat.create_run({"id": "r-queued", "preset": "pgd-at"})
        assert [(c.run_id, c.new) for c in reconcile(cat)] == [("r-recycled", "lost")]
        dies.kill()
        dies.wait()
        write_event(done_dir, "r-finishes", 1, "finished", epoch=2, clean_acc=0.5, robust_acc=0.2)
        finishes.kill()  # the engine exited after its final event, before we ingested it
        finishes.wait()
        reconcile(cat)
        status = {r["id"]: r["status"] for r in cat.list_runs()}
        assert status == {"r-live": "running", "r-dies": "lost", "r-finishes": "finished",
                          "r-recycled": "lost", "r-elsewhere": "running", "r-queued": "queued"}
        assert "gone" in cat.get_run("r-dies")["message"]
        assert reconcile(cat) == []  # nothing left to change
    finally:
        for p in (live, dies, finishes):
            p.kill()
            p.wait()


def test_reconcile_reports_each_change(cat: Catalog) -> None:
    child = subprocess.Popen(["sleep", "30"])
    running_run(cat, "r1", child.pid, process_start_time(child.pid))
    assert reconcile(cat) == []
    child.kill()
    child.wait()
    [change] = reconcile(cat)
    assert (change.run_id, change.old, change.new) == ("r1", "running", "lost")


def test_engine_gone_without_start_time_trusts_only_a_missing_pid() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert engine_gone({"pid": child.pid, "proc_start": None}) is False
        assert engine_gone({"pid": None}) is None
    finally:
        child.kill()
        child.wait()
    assert engine_gone({"pid": child.pid, "proc_start": None}) is True
