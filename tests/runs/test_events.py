"""Reading events.jsonl: complete lines only, byte offsets, corrupt lines skipped, follow mode."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from runs.events import EVENT_VERSION, read_events, tail_events


def line(seq: int, type_: str = "progress", **data: object) -> bytes:
    event = {"v": EVENT_VERSION, "run": "r1", "seq": seq, "time": 1000.0 + seq, "type": type_, **data}
    return (json.dumps(event) + "\n").encode()


def test_reads_complete_lines_and_returns_offset_after_them(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = line(0, "started") + line(1)
    path.write_bytes(first)
    events, offset, bad = read_events(path)
    assert [e["seq"] for e in events] == [0, 1]
    assert offset == len(first) and bad == 0
    with open(path, "ab") as f:
        f.write(line(2, "epoch", epoch=1))
    events, offset2, bad = read_events(path, offset)
    assert [(e["seq"], e["type"], e["epoch"]) for e in events] == [(2, "epoch", 1)]
    assert offset2 == path.stat().st_size
    assert read_events(path, offset2) == ([], offset2, 0)


def test_trailing_partial_line_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    whole = line(0) + line(1)
    partial = line(2)
    path.write_bytes(whole + partial[:10])
    events, offset, bad = read_events(path)
    assert [e["seq"] for e in events] == [0, 1]
    assert offset == len(whole) and bad == 0
    with open(path, "ab") as f:
        f.write(partial[10:])
    events, offset, bad = read_events(path, offset)
    assert [e["seq"] for e in events] == [2] and bad == 0
    assert offset == len(whole) + len(partial)


def test_file_without_any_newline_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0)[:-1])
    assert read_events(path) == ([], 0, 0)


def test_corrupt_complete_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    garbage = [
        b"{not json\n",
        b"[1, 2, 3]\n",  # JSON but not an object
        b'{"v": 1, "run": "r1", "type": "epoch"}\n',  # no seq
        b'{"v": 1, "run": "r1", "seq": 3}\n',  # no type
        b'{"v": 1, "run": "r1", "seq": true, "type": "x"}\n',  # bool is not a seq
        b"\xff\xfe bad utf-8\n",
    ]
    path.write_bytes(line(0) + b"".join(garbage) + b"\n   \n" + line(1, "someday_type", x=1))
    events, offset, bad = read_events(path)
    assert [e["seq"] for e in events] == [0, 1]
    assert events[1]["type"] == "someday_type" and events[1]["x"] == 1  # unknown types kept
    assert bad == len(garbage)  # blank lines are not corrupt
    assert offset == path.stat().st_size


def test_missing_file_and_offset_past_end(tmp_path: Path) -> None:
    assert read_events(tmp_path / "nope.jsonl", 17) == ([], 17, 0)
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0))
    assert read_events(path, 10_000) == ([], 10_000, 0)


def test_tail_follows_appends_until_the_run_ends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"  # does not exist yet: a queued run

    def engine() -> None:
        time.sleep(0.05)
        with open(path, "ab") as f:
            for seq, chunk in enumerate(
                [line(0, "started"), line(1, "eval_progress", eval_id="e"),
                 line(2, "failed", eval_id="e", message="eval broke"), line(3, "progress"),
                 line(4, "finished"), line(5, "heartbeat")]
            ):
                f.write(chunk[:7])
                f.flush()
                time.sleep(0.01)
                f.write(chunk[7:])
                f.flush()

    writer = threading.Thread(target=engine)
    writer.start()
    got = list(tail_events(path, poll_s=0.005, timeout_s=5))
    writer.join()
    # An evaluation's failure does not end the run's stream; the run's `finished` does.
    assert [e["type"] for e in got] == ["started", "eval_progress", "failed", "progress", "finished"]


def test_tail_stop_callable_drains_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0) + line(1))
    calls = []

    def stop() -> bool:
        calls.append(1)
        if len(calls) == 1:
            with open(path, "ab") as f:  # lands between the read and the stop check
                f.write(line(2))
        return True

    got = list(tail_events(path, poll_s=0.001, stop=stop))
    assert [e["seq"] for e in got] == [0, 1, 2]


def test_tail_times_out_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0) + b"oops\n")
    bad: list[int] = []
    start = time.monotonic()
    got = list(tail_events(path, poll_s=0.01, timeout_s=0.1, on_bad_lines=bad.append))
    assert [e["seq"] for e in got] == [0]
    assert bad == [1]
    assert time.monotonic() - start < 2
