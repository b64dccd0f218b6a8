"""Appending an event to a run's ``events.jsonl`` from the manager side (stdlib only).

The waiter (``queued``, ``gpu_assigned``) and the manager (``cancelled`` for a run with no
process left) write into the same stream as the engine, so the run directory alone tells the
whole story and ``reindex`` rebuilds it. Same protocol as the engine's ``EventWriter``: an
exclusive ``flock`` around "find the last seq, end a partial line, append one line with a single
``write``", so ``seq`` stays strictly increasing across writers.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from runs.events import EVENT_VERSION, parse_event

EVENTS_FILE = "events.jsonl"


def last_seq(path: Path) -> int:
    """The seq of the last valid complete line (-1 if none); reads backwards from the end."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return -1
    window = 1 << 16
    with open(path, "rb") as fh:
        while True:
            start = max(0, size - window)
            fh.seek(start)
            lines = fh.read(size - start).split(b"\n")
            if start > 0:
                lines = lines[1:]
            for raw in reversed(lines):
                event = parse_event(raw) if raw.strip() else None
                if event is not None:
                    return int(event["seq"])
            if start == 0:
                return -1
            window *= 4


def append_event(run_dir: Path, type_: str, run_id: str | None = None, **data: Any) -> dict:
    """Append one event to ``run_dir/events.jsonl``; returns it."""
    path = Path(run_dir) / EVENTS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    os.write(fd, b"\n")  # a killed writer's partial line stays a separate bad line
        event = {"v": EVENT_VERSION, "run": run_id or Path(run_dir).name,
                 "seq": last_seq(path) + 1, "time": time.time(), "type": type_, **data}
        os.write(fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())
        return event
    finally:
        os.close(fd)  # closing releases the flock
