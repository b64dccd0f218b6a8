"""Catalog schema: append-only numbered migrations (sqlite-utils 4's ``Migrations``).

Never edit or reorder a migration that has shipped: add a new one. Each runs in a transaction
together with its record in ``_sqlite_migrations``, so a crash leaves it pending, not half done.
JSON columns hold ``json.dumps(..., sort_keys=True)`` text.
"""
from __future__ import annotations

import sqlite_utils
from sqlite_utils import Migrations

MIGRATIONS = Migrations("advlt")


@MIGRATIONS(name="m001_initial")
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "name": str,
            "preset": str,
            "dataset": str,
            "kind": str,
            "status": str,  # queued | running | finished | failed | cancelled | lost
            "created": float,  # unix time, from meta.json
            "started": float,  # time of the first `started` event
            "ended": float,  # time of the terminal event
            "pid": int,  # the launched engine process (engine.pid, else the `started` event)
            "pgid": int,  # its process group: cancel signals the whole group
            "proc_start": int,  # /proc/<pid>/stat starttime: liveness is pid + start time
            "epoch": int,  # last completed epoch
            "epochs": int,  # total epochs (from `started`)
            "clean_acc": float,  # latest measured
            "robust_acc": float,
            "best_robust_acc": float,
            "best_epoch": int,
            "device": str,
            "gpus": str,
            "parent_run": str,
            "config_hash": str,
            "fingerprint": str,  # sha256 of the training subset
            "tags": str,  # json list
            "note": str,
            "run_dir": str,
            "ingest_offset": int,  # bytes of events.jsonl already applied
            "last_seq": int,  # seq of the last applied event (-1: none)
            "message": str,  # failure message / why the run is lost
        },
        pk="id",
    )
    db["epochs"].create(
        {
            "run_id": str,
            "epoch": int,
            "lr": float,
            "train_loss": float,
            "clean_acc": float,
            "robust_acc": float,
            "per_class_clean": str,
            "per_class_robust": str,
            "seconds": float,
        },
        pk=("run_id", "epoch"),
    )
    db["evaluations"].create(
        {
            "id": str,
            "run_id": str,
            "checkpoint": str,  # relative to the run dir
            "variant": str,  # inference-time preset, or NULL for the run's own head
            "protocol": str,  # json: norm, eps, steps, ... (only equal protocols compare)
            "protocol_hash": str,
            "status": str,  # queued | running | finished | failed | cancelled
            "created": float,
            "warnings": str,
            "flags": str,
        },
        pk="id",
    )
    db["eval_results"].create(
        {
            "eval_id": str,
            "attack": str,
            "accuracy": float,
            "recall": str,
            "precision": str,
            "f1": str,
            "groups": str,
            "worst_class": str,
        },
        pk=("eval_id", "attack"),
    )
    db["checkpoints"].create(
        {"run_id": str, "epoch": int, "path": str, "sha256": str},
        pk=("run_id", "epoch"),
    )
    db["run_counts"].create({"run_id": str, "counts": str, "class_names": str}, pk="run_id")


@MIGRATIONS(name="m002_host_hints_indexes")
def m002_host_hints_indexes(db: sqlite_utils.Database) -> None:
    runs = db["runs"]
    # With a shared filesystem (Slurm), a pid only means something on the host that owns it.
    runs.add_column("host", str)
    # Time of the newest event: a stale one is a display hint, never proof of death.
    runs.add_column("last_event", float)
    # Corrupt complete lines skipped in events.jsonl (a warning, not an error).
    runs.add_column("bad_lines", int, not_null_default=0)
    db["evaluations"].add_column("message", str)
    runs.create_index(["status"], if_not_exists=True)
    runs.create_index(["parent_run"], if_not_exists=True)
    db["evaluations"].create_index(["run_id"], if_not_exists=True)


@MIGRATIONS(name="m003_listing_indexes")
def m003_listing_indexes(db: sqlite_utils.Database) -> None:
    # `advlt runs` lists newest first, optionally by preset: no sort of the whole table.
    db["runs"].create_index(["created", "id"], if_not_exists=True)
    db["runs"].create_index(["preset"], if_not_exists=True)
    db["evaluations"].create_index(["status"], if_not_exists=True)


def migrate(db: sqlite_utils.Database, stop_before: str | None = None) -> None:
    """Apply pending migrations (all, or those before ``stop_before``: tests build old schemas).

    The caller holds the write lock (``BEGIN IMMEDIATE``), so two processes opening a fresh
    catalog at once do not both run migration 1; each migration then nests as a savepoint.
    """
    MIGRATIONS.apply(db, stop_before=stop_before)


def pending(db: sqlite_utils.Database) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(db)]
