"""The event writer: one JSON object per line appended to ``RUN_DIR/events.jsonl``.

Every line carries ``v`` (protocol version), ``run``, ``seq``, ``time`` and ``type``. Each line
is written with a single ``os.write`` on an O_APPEND descriptor, so a killed engine leaves at
most one partial trailing line, which readers ignore; the line is the unit of atomicity.

Several processes may write one run's stream (training, and an evaluation of one of its
checkpoints): an exclusive ``flock`` around "find the last seq, append" keeps ``seq`` strictly
increasing across writers.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

EVENT_VERSION = 1


def _last_seq(path: Path) -> int:
    """The largest seq among the last complete lines of the file (-1 if none)."""
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
                lines = lines[1:]  # the first piece may be a partial line
            for raw in reversed(lines):
                try:
                    return int(json.loads(raw)["seq"])
                except (ValueError, KeyError, TypeError):
                    continue
            if start == 0:
                return -1
            window *= 4


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def describe(event: dict) -> str | None:
    """A one-line human summary of an event for ``engine.log`` (None: not worth a line)."""
    kind = event["type"]
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    if kind == "started":
        text = (f"started on {event.get('device')}: {event.get('train_images')} training images, "
                f"per-class counts {event.get('counts')}, epochs {event.get('start_epoch')}→"
                f"{event.get('epochs')}{' (resumed)' if event.get('resumed') else ''}")
    elif kind == "progress":
        text = (f"epoch {event['epoch']} batch {event['batch']}/{event['batches']} "
                f"loss {event['loss']:.4f} {event['images_per_s']:.0f} img/s "
                f"eta {event['eta_s']:.0f}s")
    elif kind == "epoch":
        text = (f"epoch {event['epoch']} done: lr {event['lr']:.3g} train loss "
                f"{event['train_loss']:.4f} clean {_pct(event.get('clean_acc'))} robust "
                f"{_pct(event.get('robust_acc'))} ({event.get('seconds', 0):.1f}s)")
    elif kind == "checkpoint":
        text = f"checkpoint {event['path']}"
    elif kind == "eval":
        accs = ", ".join(f"{name} {_pct(r.get('accuracy'))}"
                         for name, r in (event.get("results") or {}).items())
        text = f"evaluation {event.get('eval_id')}: {accs}"
    elif kind in ("finished", "cancelled", "eval_cancelled"):
        text = kind + "".join(f" {k}={v}" for k, v in event.items()
                              if k not in ("v", "run", "seq", "time", "type"))
    elif kind in ("failed", "eval_failed"):
        text = f"{kind}: {event.get('message')}\n{event.get('traceback', '')}"
    elif kind == "warning":
        text = f"warning: {event.get('message')}"
    else:
        return None
    return f"[{stamp}] {text}"


class EventWriter:
    def __init__(self, path: Path, run_id: str, mirror: bool = False) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.mirror = mirror
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = -1  # file size after our last write; another writer changes it

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def emit(self, type_: str, **data: Any) -> dict:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if size != self._size:  # first write, or someone else wrote since
                self.seq = _last_seq(self.path) + 1
                if size and not self._ends_with_newline():
                    # A killed writer left a partial line: end it so ours starts a fresh one
                    # (readers skip the broken line).
                    os.write(self._fd, b"\n")
            event = {"v": EVENT_VERSION, "run": self.run_id, "seq": self.seq,
                     "time": time.time(), "type": type_, **_clean(data)}
            line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
            os.write(self._fd, line)
            self._size = os.fstat(self._fd).st_size
            self.seq += 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        text = line.decode() if self.mirror else describe(event)
        if text:
            # stdout is RUN_DIR/engine.log for detached runs: the human-readable log.
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
        return event

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
