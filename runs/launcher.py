"""Create run directories and start the engine detached from the terminal.

The engine runs as ``python -m engine train RUN_DIR`` in its own session and process group
(``start_new_session``), with stdin closed and output going to ``RUN_DIR/engine.log``, so closing
the TUI, the terminal or the SSH connection never kills a run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from presets.schema import RunConfig
from runs import liveness
from runs.paths import atomic_write_json, new_run_id

if TYPE_CHECKING:
    from runs.catalog import Catalog


def create_run(catalog: "Catalog", cfg: RunConfig, *, name: Optional[str] = None,
               gpus: Optional[str] = None) -> dict:
    """Record a new run (status ``queued``): its directory with ``config.json`` and
    ``meta.json`` (both written atomically) and its catalog row."""
    meta = {"id": new_run_id(), "name": name or f"{cfg.preset}-{cfg.dataset.name}",
            "preset": cfg.preset, "dataset": cfg.dataset.name, "kind": cfg.kind,
            "created": time.time(), "parent_run": cfg.parent_run, "tags": [], "note": "",
            "gpus": gpus, "config_hash": cfg.fingerprint(), "epochs": cfg.train.epochs}
    return catalog.create_run(meta, cfg.to_json() + "\n")


def engine_command(run_dir: Path, command: str = "train", *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", command, str(run_dir), *extra]


def spawn(run_dir: Path, argv: list[str], *, cuda_devices: Optional[str] = None,
          log_name: str = "engine.log", pid_name: str = "engine.pid") -> dict:
    """Start ``argv`` detached; record pid, process start time and process group."""
    env = dict(os.environ)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The engine must import the project's packages from wherever the manager found them.
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    with open(run_dir / log_name, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=run_dir)
    info = {"pid": proc.pid, "pgid": proc.pid, "start_time": liveness.process_start_time(proc.pid),
            "host": socket.gethostname(),
            "argv": argv, "launched": time.time(), "cuda_visible_devices": cuda_devices}
    atomic_write_json(run_dir / pid_name, info)
    return info


def read_pid(run_dir: Path, pid_name: str = "engine.pid") -> Optional[dict]:
    try:
        return json.loads((run_dir / pid_name).read_text())
    except (OSError, ValueError):
        return None


def is_running(run_dir: Path, pid_name: str = "engine.pid") -> bool:
    info = read_pid(run_dir, pid_name)
    return bool(info) and liveness.is_alive(info["pid"], info.get("start_time"))


def terminate(run_dir: Path, grace_s: float = 10.0, pid_name: str = "engine.pid") -> bool:
    """SIGTERM the run's process group, then SIGKILL after ``grace_s``. True if it was alive."""
    info = read_pid(run_dir, pid_name)
    if not info or not liveness.is_alive(info["pid"], info.get("start_time")):
        return False
    pgid = info.get("pgid", info["pid"])
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if not liveness.is_alive(info["pid"], info.get("start_time")):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
