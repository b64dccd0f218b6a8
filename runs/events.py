"""Reading the engine's event stream, ``RUN_DIR/events.jsonl``.

One JSON object per line; the line is the unit of atomicity. Every line carries ``v`` (protocol
version), ``run``, ``seq`` (0, 1, 2, ... within the file), ``time`` and ``type``. The engine may
be in the middle of writing the last line, so a reader only consumes lines that end in a
newline and remembers the byte offset after the last one; a corrupt complete line is skipped
and counted, never fatal.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator

EVENT_VERSION = 1

# Event types that end a training run (``failed``/``cancelled`` also end an evaluation when the
# line carries an ``eval_id``).
TERMINAL_TYPES = frozenset({"finished", "failed", "cancelled"})


def parse_event(line: bytes) -> dict | None:
    """One complete line → event dict, or None when it is not a valid event.

    Valid means: UTF-8 JSON object with an integer ``seq`` and a string ``type``. Unknown types
    and extra fields are kept: a newer engine may add them.
    """
    try:
        event = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(event, dict):
        return None
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(event.get("type"), str):
        return None
    return event


def read_events(path: Path | str, offset: int = 0) -> tuple[list[dict], int, int]:
    """Complete lines of ``path`` from byte ``offset`` on.

    Returns ``(events, new_offset, bad_lines)``: ``new_offset`` is just past the last newline
    read (a trailing partial line is left for the next call); ``bad_lines`` counts complete lines
    that are not valid events (skipped). Blank lines are neither. A missing file, or one shorter
    than ``offset``, yields nothing and leaves the offset where it was.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset, 0
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset, 0
    events: list[dict] = []
    bad = 0
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        event = parse_event(line)
        if event is None:
            bad += 1
        else:
            events.append(event)
    return events, offset + end + 1, bad


def tail_events(
    path: Path | str,
    offset: int = 0,
    *,
    poll_s: float = 0.25,
    stop: Callable[[], bool] | None = None,
    stop_on_terminal: bool = True,
    timeout_s: float | None = None,
    on_bad_lines: Callable[[int], None] | None = None,
) -> Iterator[dict]:
    """Follow ``path`` like ``tail -f``: yield each event as its line completes.

    Ends after a terminal event of the run (when ``stop_on_terminal``; terminal events of an
    evaluation, which carry ``eval_id``, do not end it), when ``stop()`` returns true (checked
    between polls, e.g. "the engine process is gone"), or after ``timeout_s`` without a new event.
    The file may not exist yet (a queued run): it is waited for.
    """
    last_new = time.monotonic()
    while True:
        events, offset, bad = read_events(path, offset)
        if bad and on_bad_lines is not None:
            on_bad_lines(bad)
        for event in events:
            yield event
            if stop_on_terminal and event["type"] in TERMINAL_TYPES and "eval_id" not in event:
                return
        now = time.monotonic()
        if events:
            last_new = now
        elif timeout_s is not None and now - last_new >= timeout_s:
            return
        if stop is not None and stop():
            # One last read: the final lines may have landed between the read and the check.
            events, offset, bad = read_events(path, offset)
            if bad and on_bad_lines is not None:
                on_bad_lines(bad)
            yield from events
            return
        time.sleep(poll_s)
