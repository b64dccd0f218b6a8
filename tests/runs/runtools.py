"""Helpers for the lifecycle, GPU-queue and reliability tests: a fake engine, polling, tiny runs."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from runs.catalog import Catalog
from runs.events import read_events

# The smallest real training run (a few seconds on a CPU core, most of it importing torch).
TINY = ["--epochs", "3", "--set", "model.backbone_opt={width = 8}", "--set",
        "dataset.eval_subset=60", "--set", "eval.num_steps=2", "--set", "train.save_freq=1"]
TINY_SETS = [TINY[i + 1] for i in range(2, len(TINY), 2)]

# A stand-in engine (stdlib): records what it was given, reports `started`, then waits for a
# `stop` file. With `spawn_stubborn_child` it also leaves a child that ignores SIGTERM, and with
# `ignore_term` it ignores SIGTERM itself (so only SIGKILL ends it); `quiet` writes no events
# (an evaluation's process must not look like the run's engine).
FAKE_ENGINE = r"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
from runs.event_log import append_event
run_dir = Path(sys.argv[1]); opts = sys.argv[2:]
if "ignore_term" in opts:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = None
if "spawn_stubborn_child" in opts:
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
(run_dir / "fake.json").write_text(json.dumps({
    "pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "child": child.pid if child else None}))
if "quiet" not in opts:
    append_event(run_dir, "started", pid=os.getpid(), device="cpu", epochs=1)
while not (run_dir / "stop").exists():
    time.sleep(0.05)
if "quiet" not in opts:
    append_event(run_dir, "finished", epoch=1)
"""


def fake_engine_argv(run_dir: Path, *opts: str) -> list[str]:
    return [sys.executable, "-c", FAKE_ENGINE, str(run_dir), *opts]


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, poll: float = 0.05,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def new_fake_run(cat: Catalog, run_id: str) -> Path:
    row = cat.create_run({"id": run_id, "name": run_id, "preset": "pgd-at",
                          "dataset": "digits-lt", "kind": "train"})
    return Path(row["run_dir"])


def fake_info(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "fake.json").read_text())
    except (OSError, ValueError):
        return None


def event_types(run_dir: Path) -> list[str]:
    return [e["type"] for e in read_events(run_dir / "events.jsonl")[0]]


def assert_stream_intact(run_dir: Path) -> list[dict]:
    """Every complete line parses and ``seq`` runs 0, 1, 2, ... without gaps or repeats."""
    events, _, bad = read_events(run_dir / "events.jsonl")
    assert bad == 0, f"{bad} corrupt line(s) in {run_dir}/events.jsonl"
    assert [e["seq"] for e in events] == list(range(len(events)))
    return events


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def kill_leftovers(home: Path) -> None:
    """Teardown: SIGKILL every process group a test launched and left alive (a failed test must
    not leave stand-in engines waiting forever)."""
    from runs import liveness

    for pid_file in [*home.glob("runs/*/engine.pid"), *home.glob("runs/*/evals/*.pid")]:
        try:
            info = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if liveness.is_alive(info.get("pid"), info.get("start_time")):
            kill_group(info.get("pgid") or info["pid"], 9)
