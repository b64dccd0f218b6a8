"""Create run directories and start the engine detached from the terminal, through the GPU queue.

A launch starts ``python -m runs.gpu_wait RUN_DIR --gpus SPEC -- python -m engine ...`` in its own
session and process group (``start_new_session``), stdin closed, output appended to
``RUN_DIR/engine.log``: closing the TUI, the terminal or the SSH connection never kills a run.
The waiter becomes the engine by ``exec`` (same pid, same start time), so the pid file written
here stays right from queued to finished.

A run or evaluation submitted to Slurm (``runs.slurm``) has a ``slurm.json`` record instead of
the pid file; ``is_running`` and ``terminate`` then ask Slurm (``squeue``/``sacct``, ``scancel``).
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
from runs import liveness, slurm
from runs.paths import atomic_write_json, new_run_id

if TYPE_CHECKING:
    from runs.catalog import Catalog

PID_FILE = "engine.pid"
LOG_FILE = "engine.log"
GRACE_S = 10.0


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
    return [sys.executable, "-m", "engine", command, str(Path(run_dir).absolute()), *extra]


def engine_train_command(run_dir: Path, nproc: Optional[int] = None) -> list[str]:
    """``python -m engine train RUN_DIR``; with ``nproc`` > 1 the same under ``torchrun``
    (one process per GPU, DistributedDataParallel: ``engine.distributed``). torchrun keeps the
    waiter's pid across ``exec`` and forwards SIGTERM to its workers, so liveness and cancel
    work unchanged."""
    if not isinstance(nproc, int) or nproc <= 1:
        return engine_command(run_dir)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m", "engine", "train", str(Path(run_dir).absolute())]


def queued_command(run_dir: Path, engine_argv: list[str], gpus: Optional[str] = None, *,
                   share: bool = False, eval_id: Optional[str] = None,
                   home: Optional[Path] = None) -> list[str]:
    """The waiter's command line: wait for the GPUs of ``gpus``, then become ``engine_argv``."""
    argv = [sys.executable, "-m", "runs.gpu_wait", str(Path(run_dir).absolute()),
            "--gpus", gpus or "auto"]
    if share:
        argv.append("--share")
    if eval_id is not None:
        argv += ["--eval-id", eval_id]
    if home is not None:
        argv += ["--home", str(Path(home).absolute())]
    return [*argv, "--", *engine_argv]


def _project_env(cuda_devices: Optional[str]) -> dict:
    env = dict(os.environ)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The engine must import the project's packages from wherever the manager found them.
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    return env


def spawn(run_dir: Path, argv: list[str], *, cuda_devices: Optional[str] = None,
          log_name: str = LOG_FILE, pid_name: str = PID_FILE) -> dict:
    """Start ``argv`` detached; record pid, process start time and process group in
    ``RUN_DIR/<pid_name>`` (atomically) and return that record."""
    run_dir = Path(run_dir).absolute()
    (run_dir / log_name).parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir / log_name, "ab") as log:
        log.write(f"\n--- launch {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_project_env(cuda_devices), cwd=run_dir)
    info = {"pid": proc.pid, "pgid": proc.pid, "start_time": liveness.process_start_time(proc.pid),
            "host": socket.gethostname(), "argv": argv, "launched": time.time(),
            "cuda_visible_devices": cuda_devices}
    atomic_write_json(run_dir / pid_name, info)
    slurm.forget(run_dir, pid_name)  # launched here now: a former Slurm job no longer speaks for it
    # Nobody waits for this child: the Popen object is dropped without reaping it. A manager
    # that lives on (the TUI) reaps it via subprocess's own bookkeeping on later Popen calls;
    # liveness treats the zombie meanwhile as dead, which it is.
    return info


def launch(run_dir: Path, engine_argv: list[str], gpus: Optional[str] = None, *,
           share: bool = False, eval_id: Optional[str] = None,
           log_name: str = LOG_FILE, pid_name: str = PID_FILE) -> dict:
    """Start ``engine_argv`` detached behind the GPU queue (see ``runs.gpu_wait``)."""
    run_dir = Path(run_dir).absolute()
    argv = queued_command(run_dir, engine_argv, gpus, share=share, eval_id=eval_id,
                          home=run_dir.parent.parent)
    return spawn(run_dir, argv, log_name=log_name, pid_name=pid_name)


def read_pid(run_dir: Path, pid_name: str = PID_FILE) -> Optional[dict]:
    try:
        info = json.loads((Path(run_dir) / pid_name).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def is_running(run_dir: Path, pid_name: str = PID_FILE) -> bool:
    record = slurm.read_record(run_dir, pid_name)
    if record is not None:
        return slurm.is_active(record)
    info = read_pid(run_dir, pid_name)
    return bool(info) and liveness.is_alive(info["pid"], info.get("start_time"))


def terminate(run_dir: Path, grace_s: float = GRACE_S, pid_name: str = PID_FILE) -> bool:
    """SIGTERM the run's process group, then SIGKILL after ``grace_s`` (a Slurm job:
    ``scancel``, then wait up to ``grace_s`` for it to end). True if it was alive."""
    record = slurm.read_record(run_dir, pid_name)
    if record is not None:
        return slurm.cancel(record, grace_s)
    info = read_pid(run_dir, pid_name)
    if not info or not liveness.is_alive(info["pid"], info.get("start_time")):
        return False
    pgid = info.get("pgid") or info["pid"]
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not liveness.is_alive(info["pid"], info.get("start_time")):
            break
        time.sleep(0.05)
    # SIGKILL whatever is left of the group (the engine, or children it left behind).
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True
