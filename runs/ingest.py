"""Turning a run directory (meta.json, events.jsonl, engine.pid, evals/*.json) into catalog rows.

Everything here runs inside the caller's write transaction on a plain ``sqlite3.Connection``,
and the new byte offset and ``last_seq`` are written in that same transaction: a crash either
applies a batch of events with its offset or neither, so nothing is ever applied twice. Events
with ``seq <= last_seq`` are skipped as a second guard (e.g. a file rewritten by hand).

Incremental ingest and ``reindex`` go through exactly this code, in the same order (meta row,
eval requests, events, pid file), which is what makes a rebuilt catalog identical to one that
was fed line by line.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

from runs.events import read_events

EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
PID_FILE = "engine.pid"
EVALS_FOLDER = "evals"


def dumps(obj: Any) -> str | None:
    """JSON column text; sorted keys so equal values give equal text (reindex == ingest)."""
    return None if obj is None else json.dumps(obj, sort_keys=True)


def run_row_from_meta(meta: dict, run_dir: Path) -> dict:
    """The ``runs`` row of a freshly created (queued) run."""
    gpus = meta.get("gpus")
    if gpus is not None and not isinstance(gpus, str):
        gpus = json.dumps(gpus)
    created = meta.get("created")
    return {
        "id": meta["id"],
        "name": meta.get("name"),
        "preset": meta.get("preset"),
        "dataset": meta.get("dataset"),
        "kind": meta.get("kind"),
        "status": "queued",
        "created": None if created is None else float(created),
        "epochs": meta.get("epochs"),
        "gpus": gpus,
        "parent_run": meta.get("parent_run"),
        "config_hash": meta.get("config_hash"),
        "tags": json.dumps(list(meta.get("tags") or [])),
        "note": meta.get("note"),
        "run_dir": str(run_dir),
        "ingest_offset": 0,
        "last_seq": -1,
        "bad_lines": 0,
    }


def read_pid_file(run_dir: Path) -> dict | None:
    """``engine.pid`` as ``{pid, pgid, proc_start, host}``, or None if absent or unreadable
    (the launcher writes it atomically, so unreadable means foreign or damaged)."""
    try:
        data = json.loads((run_dir / PID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    return {
        "pid": data["pid"],
        "pgid": data.get("pgid"),
        "proc_start": data.get("start_time"),
        "host": data.get("host"),
    }


def read_eval_specs(run_dir: Path) -> list[dict]:
    """Evaluation requests in ``evals/*.json`` (sorted by file name); unreadable ones skipped."""
    folder = run_dir / EVALS_FOLDER
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    specs = []
    for name in names:
        path = folder / name
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(spec, dict):
            continue
        spec = dict(spec)
        spec.setdefault("eval_id", spec.get("id") or name[: -len(".json")])
        if spec.get("created") is None:
            spec["created"] = path.stat().st_mtime
        specs.append(spec)
    return specs


def needs_write(conn: sqlite3.Connection, run: dict) -> bool:
    """Cheap check, outside any lock, whether ``ingest_run`` would change anything."""
    run_dir = Path(run["run_dir"])
    try:
        size = (run_dir / EVENTS_FILE).stat().st_size
    except OSError:
        size = 0
    if size > (run["ingest_offset"] or 0):
        _, new_offset, _ = read_events(run_dir / EVENTS_FILE, run["ingest_offset"] or 0)
        if new_offset != run["ingest_offset"]:
            return True
    pid = read_pid_file(run_dir)
    if pid is not None and any(run.get(k) != v for k, v in pid.items()):
        return True
    specs = read_eval_specs(run_dir)
    if specs:
        known = {r[0] for r in conn.execute("SELECT id FROM evaluations WHERE run_id = ?", [run["id"]])}
        return any(s["eval_id"] not in known for s in specs)
    return False


def ingest_run(conn: sqlite3.Connection, run: dict) -> int:
    """Apply what is new in ``run``'s directory; returns the number of events applied.

    ``run`` must be the row as read inside the current write transaction.
    """
    run_id = run["id"]
    run_dir = Path(run["run_dir"])
    for spec in read_eval_specs(run_dir):
        _register_eval_spec(conn, run_id, spec)
    events, new_offset, bad = read_events(run_dir / EVENTS_FILE, run["ingest_offset"] or 0)
    last_seq = run["last_seq"] if run["last_seq"] is not None else -1
    applied = 0
    epochs_changed = False
    last_time = None
    for event in events:
        if event["seq"] <= last_seq:
            continue
        if event.get("run", run_id) != run_id:
            bad += 1  # a line from another run's stream: never let it touch this run
            continue
        handler = HANDLERS.get(event["type"])
        if handler is not None:
            epochs_changed |= bool(handler(conn, run_id, event))
        last_seq = event["seq"]
        last_time = event.get("time", last_time)
        applied += 1
    if epochs_changed:
        conn.execute(
            "UPDATE runs SET (best_robust_acc, best_epoch) = (SELECT robust_acc, epoch FROM epochs"
            " WHERE run_id = :id AND robust_acc IS NOT NULL ORDER BY robust_acc DESC, epoch ASC"
            " LIMIT 1) WHERE id = :id",
            {"id": run_id},
        )
    pid = read_pid_file(run_dir)
    if pid is not None:
        conn.execute(
            "UPDATE runs SET pid = :pid, pgid = :pgid, proc_start = :proc_start, host = :host"
            " WHERE id = :id",
            {**pid, "id": run_id},
        )
    conn.execute(
        "UPDATE runs SET ingest_offset = ?, last_seq = ?, bad_lines = bad_lines + ?,"
        " last_event = COALESCE(?, last_event) WHERE id = ?",
        [new_offset, last_seq, bad, last_time, run_id],
    )
    return applied


def _register_eval_spec(conn: sqlite3.Connection, run_id: str, spec: dict) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO evaluations (id, run_id, checkpoint, variant, protocol,"
        " protocol_hash, status, created, warnings, flags) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?,"
        " '[]', '{}')",
        [
            spec["eval_id"],
            run_id,
            spec.get("checkpoint"),
            spec.get("variant"),
            dumps(spec.get("protocol")),
            spec.get("protocol_hash"),
            spec["created"],
        ],
    )


# --- one handler per event type; each returns True when it changed the epochs table --------


def _started(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    conn.execute(
        "UPDATE runs SET status = 'running', started = COALESCE(started, :time), ended = NULL,"
        " message = NULL, device = COALESCE(:device, device), epochs = COALESCE(:epochs, epochs),"
        " fingerprint = COALESCE(:fingerprint, fingerprint),"
        " config_hash = COALESCE(config_hash, :config_hash), pid = COALESCE(pid, :pid)"
        " WHERE id = :id",
        {
            "id": run_id,
            "time": e.get("time"),
            "device": e.get("device"),
            "epochs": e.get("epochs"),
            "fingerprint": e.get("fingerprint"),
            "config_hash": e.get("config_hash"),
            "pid": e.get("pid"),
        },
    )
    if e.get("counts") is not None:
        conn.execute(
            "INSERT OR REPLACE INTO run_counts (run_id, counts, class_names) VALUES (?, ?, ?)",
            [run_id, dumps(e["counts"]), dumps(e.get("class_names"))],
        )
    if e.get("resumed") and isinstance(e.get("start_epoch"), int):
        # Epochs after the checkpoint we resume from are trained again; rows from the lost
        # attempt must not linger (or count towards the best epoch) if this attempt stops early.
        cur = conn.execute(
            "DELETE FROM epochs WHERE run_id = ? AND epoch > ?", [run_id, e["start_epoch"]]
        )
        return cur.rowcount > 0
    return False


def _epoch(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    conn.execute(
        "INSERT OR REPLACE INTO epochs (run_id, epoch, lr, train_loss, clean_acc, robust_acc,"
        " per_class_clean, per_class_robust, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            e.get("epoch"),
            e.get("lr"),
            e.get("train_loss"),
            e.get("clean_acc"),
            e.get("robust_acc"),
            dumps(e.get("per_class_clean")),
            dumps(e.get("per_class_robust")),
            e.get("seconds"),
        ],
    )
    # Epochs without an evaluation carry null accuracies: keep the last measured ones.
    conn.execute(
        "UPDATE runs SET epoch = :epoch, clean_acc = COALESCE(:clean, clean_acc),"
        " robust_acc = COALESCE(:robust, robust_acc) WHERE id = :id",
        {"id": run_id, "epoch": e.get("epoch"), "clean": e.get("clean_acc"), "robust": e.get("robust_acc")},
    )
    return True


def _checkpoint(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    conn.execute(
        "INSERT OR REPLACE INTO checkpoints (run_id, epoch, path, sha256) VALUES (?, ?, ?, ?)",
        [run_id, e.get("epoch"), e.get("path"), e.get("sha256")],
    )
    return False


def _ensure_eval(conn: sqlite3.Connection, run_id: str, e: dict) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO evaluations (id, run_id, status, created, warnings, flags)"
        " VALUES (?, ?, 'queued', ?, '[]', '{}')",
        [e["eval_id"], run_id, e.get("time")],
    )


def _eval_progress(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    if e.get("eval_id") is None:
        return False
    _ensure_eval(conn, run_id, e)
    conn.execute(
        "UPDATE evaluations SET status = 'running' WHERE id = ? AND status = 'queued'", [e["eval_id"]]
    )
    return False


def _eval(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    eval_id = e.get("eval_id")
    if eval_id is None:
        return False
    _ensure_eval(conn, run_id, e)
    conn.execute(
        "UPDATE evaluations SET run_id = ?, checkpoint = ?, variant = ?, protocol = ?,"
        " protocol_hash = ?, status = 'finished', warnings = ?, flags = ?, message = NULL"
        " WHERE id = ?",
        [
            run_id,
            e.get("checkpoint"),
            e.get("variant"),
            dumps(e.get("protocol")),
            e.get("protocol_hash"),
            dumps(list(e.get("warnings") or [])),
            dumps(dict(e.get("flags") or {})),
            eval_id,
        ],
    )
    conn.execute("DELETE FROM eval_results WHERE eval_id = ?", [eval_id])
    for attack, r in (e.get("results") or {}).items():
        conn.execute(
            "INSERT INTO eval_results (eval_id, attack, accuracy, recall, precision, f1, groups,"
            " worst_class) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                eval_id,
                attack,
                r.get("accuracy"),
                dumps(r.get("recall")),
                dumps(r.get("precision")),
                dumps(r.get("f1")),
                dumps(r.get("groups")),
                dumps(r.get("worst_class")),
            ],
        )
    return False


def _queued(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    """The waiter took its place in the GPU queue (a launch or a resume): not ended any more."""
    conn.execute(
        "UPDATE runs SET status = 'queued', ended = NULL, message = :message,"
        " gpus = COALESCE(:gpus, gpus) WHERE id = :id",
        {"id": run_id, "gpus": e.get("gpus"), "message": "waiting for a GPU" if e.get("gpus")
         not in ("cpu",) else None},
    )
    return False


def _gpu_assigned(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
    gpus = e.get("gpus")
    conn.execute(
        "UPDATE runs SET gpus = ?, message = NULL WHERE id = ?",
        [json.dumps(gpus) if gpus else "cpu", run_id],
    )
    return False


def _eval_status(status: str) -> Callable[..., bool]:
    """Handler for an evaluation's lifecycle event (status only moves forward from queued)."""

    def handler(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
        if e.get("eval_id") is None:
            return False
        _ensure_eval(conn, run_id, e)
        if status == "running":
            conn.execute(
                "UPDATE evaluations SET status = 'running', message = NULL,"
                " checkpoint = COALESCE(?, checkpoint), variant = COALESCE(?, variant)"
                " WHERE id = ? AND status IN ('queued', 'lost')",
                [e.get("checkpoint"), e.get("variant"), e["eval_id"]],
            )
        else:  # queued again (a restart of the request)
            conn.execute(
                "UPDATE evaluations SET status = ?, message = NULL WHERE id = ?"
                " AND status NOT IN ('finished')",
                [status, e["eval_id"]],
            )
        return False

    return handler


def _ended(status: str, message: Callable[[dict], str | None]) -> Callable[..., bool]:
    """Handler for a terminal event: it ends the evaluation named by ``eval_id`` if there is
    one (an eval process must not mark a finished training run failed), else the run."""

    def handler(conn: sqlite3.Connection, run_id: str, e: dict) -> bool:
        if e.get("eval_id") is not None:
            _ensure_eval(conn, run_id, e)
            conn.execute(
                "UPDATE evaluations SET status = ?, message = ? WHERE id = ?",
                [status, message(e), e["eval_id"]],
            )
            return False
        conn.execute(
            "UPDATE runs SET status = :status, ended = :time, message = :message,"
            " epoch = COALESCE(:epoch, epoch), clean_acc = COALESCE(:clean, clean_acc),"
            " robust_acc = COALESCE(:robust, robust_acc) WHERE id = :id",
            {
                "id": run_id,
                "status": status,
                "time": e.get("time"),
                "message": message(e),
                "epoch": e.get("epoch"),
                "clean": e.get("clean_acc"),
                "robust": e.get("robust_acc"),
            },
        )
        return False

    return handler


def _eval_only(handler: Callable[..., bool]) -> Callable[..., bool]:
    """An ``eval_*`` event without ``eval_id`` is malformed: it must never end the run."""
    return lambda conn, run_id, e: handler(conn, run_id, e) if e.get("eval_id") is not None else False


def _cancel_message(e: dict) -> str:
    if e.get("message"):
        return str(e["message"])
    return f"cancelled by signal {e['signal']}" if e.get("signal") is not None else "cancelled"


HANDLERS: dict[str, Callable[[sqlite3.Connection, str, dict], bool]] = {
    "started": _started,
    "epoch": _epoch,
    "checkpoint": _checkpoint,
    "eval_progress": _eval_progress,
    "eval": _eval,
    "finished": _ended("finished", lambda e: None),
    "failed": _ended("failed", lambda e: e.get("message") or "failed"),
    "cancelled": _ended("cancelled", _cancel_message),
    "queued": _queued,
    "gpu_assigned": _gpu_assigned,
    "eval_queued": _eval_status("queued"),
    "eval_gpu_assigned": lambda conn, run_id, e: False,
    "eval_started": _eval_status("running"),
    "eval_failed": _eval_only(_ended("failed", lambda e: e.get("message") or "failed")),
    "eval_cancelled": _eval_only(_ended("cancelled", _cancel_message)),
    # progress and heartbeat only advance last_seq/last_event; the TUI tails them live.
}
