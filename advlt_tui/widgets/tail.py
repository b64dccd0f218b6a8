"""Following one run's files (not a widget): the event stream and the engine log.

The catalog stores epochs, checkpoints and evaluations; what it does not keep — the latest
``progress`` event (batch, loss, images/s, ETA) and ``eval_progress`` — comes from tailing
``RUN_DIR/events.jsonl`` with ``runs.events.read_events`` from a byte offset. Opening a long
finished run must stay instant, so both readers start from the last ``TAIL_BYTES`` of a file
(a partial first line is skipped by the reader as a bad line, which is what it is).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from runs.events import read_events

TAIL_BYTES = 64 * 1024


def _start_offset(path: Path) -> int:
    try:
        return max(0, os.stat(path).st_size - TAIL_BYTES)
    except OSError:
        return 0


@dataclass
class EvalProgress:
    eval_id: str
    attack: Optional[str] = None
    done: int = 0
    total: int = 0
    eta_s: Optional[float] = None
    state: str = "running"  # running | finished | failed | cancelled
    message: Optional[str] = None


@dataclass
class TailState:
    """What the latest events say about the run right now."""

    progress: Optional[dict] = None  # the last `progress` event
    last_epoch: Optional[dict] = None  # the last `epoch` event seen by the tail
    last_time: Optional[float] = None  # time of the newest event (a heartbeat hint)
    ended: Optional[str] = None  # finished / failed / cancelled when seen
    evals: dict[str, EvalProgress] = field(default_factory=dict)


class EventTail:
    """Incremental reader of ``events.jsonl``; ``poll()`` folds new events into ``state``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = _start_offset(self.path)
        self.state = TailState()

    def poll(self) -> list[dict]:
        events, self.offset, _bad = read_events(self.path, self.offset)
        for event in events:
            self._fold(event)
        return events

    def _fold(self, e: dict) -> None:
        s = self.state
        kind = e["type"]
        s.last_time = e.get("time", s.last_time)
        eval_id = e.get("eval_id")
        if eval_id is not None:
            ev = s.evals.setdefault(eval_id, EvalProgress(eval_id))
            if kind == "eval_progress":
                ev.attack, ev.done, ev.total = e.get("attack"), e.get("done", 0), e.get("total", 0)
                ev.eta_s, ev.state = e.get("eta_s"), "running"
            elif kind == "eval":
                ev.state, ev.eta_s = "finished", 0.0
            elif kind in ("failed", "eval_failed"):
                ev.state, ev.message = "failed", e.get("message")
            elif kind in ("cancelled", "eval_cancelled"):
                ev.state = "cancelled"
            return
        if kind == "progress":
            s.progress = e
        elif kind == "epoch":
            s.last_epoch = e
        elif kind == "started":
            s.ended = None
        elif kind in ("finished", "failed", "cancelled"):
            s.ended = kind


class LogTail:
    """Incremental reader of a text log; returns complete new lines."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = _start_offset(self.path)
        self._partial = b""
        self._skip_first = self.offset > 0  # started mid-file: the first line is a fragment

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if self._skip_first and lines:
            lines, self._skip_first = lines[1:], False
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]
