"""The event writer: one JSON object per line appended to ``RUN_DIR/events.jsonl``.

Every line carries ``v`` (protocol version), ``run``, ``seq``, ``time`` and ``type``. Each line
is written with a single ``os.write`` on an O_APPEND descriptor, so a killed engine leaves at
most one partial trailing line, which readers ignore; the line is the unit of atomicity.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

EVENT_VERSION = 1


def _last_seq(path: Path) -> int:
    """The seq of the last complete line (-1 if none); used to continue after a resume."""
    if not path.exists():
        return -1
    last = -1
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                last = max(last, int(json.loads(raw)["seq"]))
            except (ValueError, KeyError, TypeError):
                continue
    return last


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    def __init__(self, path: Path, run_id: str, mirror: bool = False) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.mirror = mirror
        self.seq = _last_seq(self.path) + 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A crash may have left a partial line: end it so the next event starts a fresh line
        # (readers skip the broken one).
        if self.path.stat().st_size and not self._ends_with_newline():
            os.write(self._fd, b"\n")

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def emit(self, type_: str, **data: Any) -> dict:
        event = {"v": EVENT_VERSION, "run": self.run_id, "seq": self.seq, "time": time.time(),
                 "type": type_, **_clean(data)}
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)
        self.seq += 1
        if self.mirror:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
        return event

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
