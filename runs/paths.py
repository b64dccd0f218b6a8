"""Where advlt keeps its catalog and run directories, and how files there are written.

``ADVLT_HOME`` (default ``~/.advlt``) holds ``catalog.db`` and ``runs/<run_id>/``. Tests point
``ADVLT_HOME`` at a temporary directory so they never touch a real home.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from presets.toml_writer import write_atomic

CATALOG_FILE = "catalog.db"
RUNS_FOLDER = "runs"


def advlt_home() -> Path:
    """``$ADVLT_HOME`` if set (and non-empty), else ``~/.advlt``."""
    env = os.environ.get("ADVLT_HOME")
    # Absolute: run directories are handed to detached processes that run elsewhere (cwd).
    return (Path(env).expanduser() if env else Path.home() / ".advlt").absolute()


def runs_dir(home: Path | None = None) -> Path:
    return (home or advlt_home()) / RUNS_FOLDER


def catalog_path(home: Path | None = None) -> Path:
    return (home or advlt_home()) / CATALOG_FILE


def run_dir(run_id: str, home: Path | None = None) -> Path:
    return runs_dir(home) / run_id


def new_run_id(now: float | None = None) -> str:
    """``YYMMDD-HHMMSS-xxxx``: UTC so ids sort by creation time across DST changes and time
    zones (runs may be created on several Slurm nodes), plus 4 random hex digits so two runs
    created in the same second do not collide."""
    stamp = time.strftime("%y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` so readers see either the old file or the whole new one, never a part.

    Temp file in the same directory, fsync, rename (presets' ``write_atomic``), then an fsync of
    the directory so the rename itself survives a crash: meta.json is the source of truth.
    """
    path = Path(path)
    write_atomic(path, text)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
