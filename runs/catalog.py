"""The run catalog: one SQLite file (``$ADVLT_HOME/catalog.db``) indexing the run directories.

The run directories are the source of truth; the catalog is an index that can always be rebuilt
from them (``reindex``). Several processes use it at once (the TUI, ``advlt`` commands, the GPU
queue), so it runs in WAL mode (readers never block the writer) with a generous busy timeout,
and every write takes the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
reads and then writes can fail at once with "database is locked" when another connection
committed in between, without waiting for the busy timeout.

A ``Catalog`` (its sqlite3 connection) belongs to the thread that opened it; open one per thread.
Never ``fork()`` a process holding an open Catalog and use SQLite in the child: the child
inherits SQLite's per-process lock bookkeeping and can wait on locks nobody holds (``subprocess``,
which execs, is fine; ``multiprocessing`` should use the spawn context).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import sqlite_utils

from runs import ingest as _ingest
from runs import migrations
from runs.paths import advlt_home, atomic_write_json, atomic_write_text, catalog_path, runs_dir

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
STATUSES = ("queued", "running", "finished", "failed", "cancelled", "lost")
ENDED_STATUSES = ("finished", "failed", "cancelled")
TABLES = ("runs", "epochs", "evaluations", "eval_results", "checkpoints", "run_counts")


class CatalogError(Exception):
    """A catalog request that cannot be satisfied (the message says why, in one line)."""


class RunNotFound(CatalogError, LookupError):
    pass


class AmbiguousRun(CatalogError, LookupError):
    def __init__(self, ref: str, candidates: list[dict]) -> None:
        self.ref = ref
        self.candidates = [c["id"] for c in candidates]
        listed = ", ".join(f"{c['id']} ({c['preset']}, {c['status']})" for c in candidates[:10])
        more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
        super().__init__(
            f"run prefix {ref!r} is ambiguous: it matches {len(candidates)} runs: {listed}{more};"
            " type more characters of the id"
        )


def _decode(row: dict, json_columns: Iterable[str]) -> dict:
    out = dict(row)
    for col in json_columns:
        if out.get(col) is not None:
            out[col] = json.loads(out[col])
    return out


class Catalog:
    """The catalog at ``home`` (default ``advlt_home()``); opening it applies migrations."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else advlt_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = catalog_path(self.home)
        self.runs_root = runs_dir(self.home)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        self.db = sqlite_utils.Database(conn, execute_plugins=False)
        self.conn = conn
        try:
            self.db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self.db.enable_wal()
            # In WAL mode NORMAL loses at most the last commits on power loss, never
            # consistency; lost commits are re-ingested from the run directories.
            self.db.execute("PRAGMA synchronous=NORMAL")
            if migrations.pending(self.db):
                with self._write():
                    migrations.migrate(self.db)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise CatalogError(
                f"the catalog {self.path} cannot be opened ({exc}); the run directories are "
                f"untouched: move the file away and run `advlt reindex` to rebuild it"
            ) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction holding the write lock from its first statement."""
        if self.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- lookup -------------------------------------------------------------------------------

    def _row(self, run_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        return rows[0] if rows else None

    def resolve(self, ref: str) -> str:
        """Full run id for an id or a unique prefix of one."""
        ref = (ref or "").strip()
        if not ref:
            raise RunNotFound("no run id given")
        if self._row(ref) is not None:
            return ref
        candidates = list(
            self.db.query(
                "SELECT id, preset, status FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id",
                [len(ref), ref],
            )
        )
        if not candidates:
            raise RunNotFound(
                f"no run matches {ref!r} in {self.path} (`advlt runs` lists runs;"
                " `advlt reindex` rebuilds the catalog from the run directories)"
            )
        if len(candidates) > 1:
            raise AmbiguousRun(ref, candidates)
        return candidates[0]["id"]

    def get_run(self, ref: str) -> dict:
        run_id = self.resolve(ref)
        row = self._row(run_id)
        if row is None:  # deleted by another process between the two queries
            raise RunNotFound(f"run {run_id} was just deleted")
        return _decode(row, ["tags"])

    def list_runs(
        self, status: str | Iterable[str] | None = None, preset: str | None = None
    ) -> list[dict]:
        """Runs, newest first; ``status`` may be one status or several."""
        where, params = [], []
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            if not wanted:
                return []
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params += wanted
        if preset is not None:
            where.append("preset = ?")
            params.append(preset)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        # A plain cursor, not sqlite-utils' generator: this is the hot path of `advlt runs`
        # and of every TUI refresh (10,000 runs in well under 0.1 s).
        cur = self.conn.execute(sql + " ORDER BY created DESC, id DESC", params)
        names = [d[0] for d in cur.description]
        rows = []
        for values in cur:
            row = dict(zip(names, values))
            tags = row.get("tags")
            row["tags"] = [] if tags in (None, "[]") else json.loads(tags)
            rows.append(row)
        return rows

    def children(self, ref: str) -> list[dict]:
        """Runs whose parent is ``ref`` (fine-tunes started from it), oldest first."""
        run_id = self.resolve(ref)
        rows = self.db.query("SELECT * FROM runs WHERE parent_run = ? ORDER BY created, id", [run_id])
        return [_decode(r, ["tags"]) for r in rows]

    def run_epochs(self, ref: str) -> list[dict]:
        rows = self.db.query(
            "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", [self.resolve(ref)]
        )
        return [_decode(r, ["per_class_clean", "per_class_robust"]) for r in rows]

    def run_checkpoints(self, ref: str) -> list[dict]:
        return list(
            self.db.query("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY epoch", [self.resolve(ref)])
        )

    def run_counts(self, ref: str) -> dict | None:
        """``{"counts": [...], "class_names": [...]}`` from the run's ``started`` event."""
        rows = list(
            self.db.query("SELECT counts, class_names FROM run_counts WHERE run_id = ?", [self.resolve(ref)])
        )
        return _decode(rows[0], ["counts", "class_names"]) if rows else None

    def run_evaluations(self, ref: str) -> list[dict]:
        """Evaluations of a run, oldest first, each with ``results``: attack → metrics."""
        run_id = self.resolve(ref)
        evals = [
            _decode(r, ["protocol", "warnings", "flags"])
            for r in self.db.query(
                "SELECT * FROM evaluations WHERE run_id = ? ORDER BY created, id", [run_id]
            )
        ]
        for ev in evals:
            ev["results"] = {
                r["attack"]: _decode(r, ["recall", "precision", "f1", "groups", "worst_class"])
                for r in self.db.query(
                    "SELECT * FROM eval_results WHERE eval_id = ? ORDER BY rowid", [ev["id"]]
                )
            }
        return evals

    def open_evaluations(self) -> list[dict]:
        """Evaluations still queued or running, with their run's directory."""
        return list(self.db.query(
            "SELECT e.id, e.run_id, e.status, r.run_dir FROM evaluations e JOIN runs r"
            " ON r.id = e.run_id WHERE e.status IN ('queued', 'running') ORDER BY e.created"
        ))

    def evaluation_status(self, eval_id: str) -> Optional[str]:
        row = self.conn.execute("SELECT status FROM evaluations WHERE id = ?", [eval_id]).fetchone()
        return row[0] if row else None

    def set_eval_status(self, eval_id: str, status: str, message: Optional[str] = None) -> None:
        with self._write():
            self.conn.execute("UPDATE evaluations SET status = ?, message = ? WHERE id = ?",
                              [status, message, eval_id])

    # --- writes -------------------------------------------------------------------------------

    def create_run(self, meta: dict, config_json: str | None = None) -> dict:
        """Record a new run (status ``queued``): its directory, ``meta.json`` (and
        ``config.json`` when given) and its row. ``meta`` needs ``id`` (see ``new_run_id``)."""
        if not meta.get("id"):
            raise CatalogError("create_run: meta has no 'id' (use runs.paths.new_run_id())")
        meta = {"tags": [], "note": None, "created": time.time(), **meta}
        run_dir = self.runs_root / meta["id"]
        if self._row(meta["id"]) is not None:
            raise CatalogError(f"run {meta['id']} already exists in the catalog")
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_json is not None:
            atomic_write_text(run_dir / "config.json", config_json)
        atomic_write_json(run_dir / _ingest.META_FILE, meta)
        with self._write():
            self.db["runs"].insert(_ingest.run_row_from_meta(meta, run_dir))
        return self.get_run(meta["id"])

    def ingest(self, ref: str) -> int:
        """Apply the run's new events; returns how many were applied (0 when up to date)."""
        run_id = self.resolve(ref)
        return self._ingest_id(run_id)

    def _ingest_id(self, run_id: str) -> int:
        row = self._row(run_id)
        if row is None or not _ingest.needs_write(self.conn, row):
            return 0
        with self._write():
            row = self._row(run_id)  # re-read under the lock: another process may have ingested
            if row is None:
                return 0
            return _ingest.ingest_run(self.conn, row)

    def ingest_all(self) -> int:
        """Ingest every run (one short transaction each); returns events applied in total.

        Fast path for big catalogs: an ended run is only looked at when its ``events.jsonl``
        grew (an evaluation of it reports there); runs not ended get the full check (pid file,
        evaluation requests).
        """
        rows = self.conn.execute(
            "SELECT id, run_dir, ingest_offset, status FROM runs ORDER BY id"
        ).fetchall()
        total = 0
        for run_id, run_dir, offset, status in rows:
            if status in ENDED_STATUSES:
                try:
                    size = os.stat(f"{run_dir}/{_ingest.EVENTS_FILE}").st_size
                except (OSError, TypeError):
                    continue
                if size <= (offset or 0):
                    continue
            total += self._ingest_id(run_id)
        return total

    def set_status(self, ref: str, status: str, message: str | None = None) -> None:
        if status not in STATUSES:
            raise CatalogError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
        run_id = self.resolve(ref)
        ended = time.time() if status in ENDED_STATUSES else None
        with self._write():
            self.conn.execute(
                "UPDATE runs SET status = ?, message = COALESCE(?, message),"
                " ended = COALESCE(ended, ?) WHERE id = ?",
                [status, message, ended, run_id],
            )

    def set_status_if_unchanged(self, ref: str, status: str, last_seq: Optional[int],
                                message: Optional[str] = None) -> bool:
        """``set_status`` unless events past ``last_seq`` were ingested since (they tell the
        newer truth); True when the status was set."""
        if status not in STATUSES:
            raise CatalogError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
        run_id = self.resolve(ref)
        ended = time.time() if status in ENDED_STATUSES else None
        with self._write():
            cur = self.conn.execute(
                "UPDATE runs SET status = ?, message = ?, ended = ? WHERE id = ?"
                " AND COALESCE(last_seq, -1) = COALESCE(?, -1)",
                [status, message, ended, run_id, last_seq],
            )
        return cur.rowcount > 0

    def set_process(
        self, ref: str, pid: int, pgid: int | None = None, proc_start: int | None = None,
        host: str | None = None,
    ) -> None:
        """What the launcher knows right after spawning the engine (also in ``engine.pid``)."""
        run_id = self.resolve(ref)
        with self._write():
            self.conn.execute(
                "UPDATE runs SET pid = ?, pgid = ?, proc_start = ?, host = ? WHERE id = ?",
                [pid, pgid, proc_start, host, run_id],
            )

    def add_tags(self, ref: str, tags: Iterable[str]) -> list[str]:
        run = self.get_run(ref)
        new = list(dict.fromkeys([*run["tags"], *tags]))
        self._update_meta(run, tags=new)
        return new

    def remove_tags(self, ref: str, tags: Iterable[str]) -> list[str]:
        run = self.get_run(ref)
        drop = set(tags)
        new = [t for t in run["tags"] if t not in drop]
        self._update_meta(run, tags=new)
        return new

    def set_note(self, ref: str, note: str | None) -> None:
        self._update_meta(self.get_run(ref), note=note)

    def _update_meta(self, run: dict, **fields: object) -> None:
        """Tags and notes live in meta.json (the source of truth, so reindex keeps them); the
        file is written first so a failure cannot leave the catalog ahead of it."""
        meta_path = Path(run["run_dir"]) / _ingest.META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            atomic_write_json(meta_path, {**meta, **fields})
        columns = {k: (json.dumps(v) if k == "tags" else v) for k, v in fields.items()}
        with self._write():
            self.conn.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in columns)} WHERE id = ?",
                [*columns.values(), run["id"]],
            )

    def delete_run(self, ref: str) -> dict:
        """Delete the run's rows (the caller removes its directory); returns the deleted row."""
        run = self.get_run(ref)
        run_id = run["id"]
        with self._write():
            self.conn.execute(
                "DELETE FROM eval_results WHERE eval_id IN (SELECT id FROM evaluations WHERE run_id = ?)",
                [run_id],
            )
            for table in ("evaluations", "epochs", "checkpoints", "run_counts"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            self.conn.execute("DELETE FROM runs WHERE id = ?", [run_id])
        return run

    def reindex(
        self, runs_root: Path | None = None, report: Callable[[str], None] | None = None
    ) -> int:
        """Drop every row and rebuild from the run directories under ``runs_root``.

        One transaction: other processes keep reading the old catalog until the new one is
        committed. A directory without a readable ``meta.json`` is reported (``report``, else
        the log) and skipped. Returns the number of runs indexed.
        """
        root = Path(runs_root) if runs_root is not None else self.runs_root
        say = report or log.warning
        # Dot folders are not runs (``.rm-<id>``: a deletion in progress).
        dirs = (sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
                if root.is_dir() else [])
        count = 0
        with self._write():
            for table in TABLES:
                self.conn.execute(f"DELETE FROM {table}")
            for run_dir in dirs:
                meta = self._read_meta(run_dir, say)
                if meta is None:
                    continue
                if self._row(meta["id"]) is not None:
                    say(f"{run_dir}: run id {meta['id']} is already indexed from another directory; skipped")
                    continue
                self.db["runs"].insert(_ingest.run_row_from_meta(meta, run_dir))
                row = self._row(meta["id"])
                assert row is not None
                _ingest.ingest_run(self.conn, row)
                count += 1
        return count

    @staticmethod
    def _read_meta(run_dir: Path, say: Callable[[str], None]) -> dict | None:
        meta_path = run_dir / _ingest.META_FILE
        if not meta_path.exists():
            say(f"{run_dir}: no {_ingest.META_FILE}, not a run directory; skipped")
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            say(f"{meta_path}: unreadable ({exc}); skipped")
            return None
        if not isinstance(meta, dict):
            say(f"{meta_path}: not a JSON object; skipped")
            return None
        if not meta.get("id"):
            say(f"{meta_path}: no id; using the directory name {run_dir.name!r}")
            meta = {**meta, "id": run_dir.name}
        elif meta["id"] != run_dir.name:
            # A renamed or copied directory: its events still carry the meta id, so keep it.
            say(f"{meta_path}: id {meta['id']!r} differs from the directory name {run_dir.name!r}")
        return meta
