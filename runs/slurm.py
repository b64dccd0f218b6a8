"""The Slurm backend: runs and evaluations as Slurm batch jobs (``sbatch``), watched with
``squeue``/``sacct`` and cancelled with ``scancel``. Slurm is the cluster engine; nothing here
schedules, places or tracks processes by itself.

The catalog and the run directories live on a filesystem shared by the submit host and the
compute nodes. A submission writes ``RUN_DIR/slurm.sh`` (the batch script: ``#SBATCH`` lines,
then ``exec python -m engine train RUN_DIR``), submits it with ``sbatch --parsable`` and records
``{"backend": "slurm", "job_id": ..., "host": ...}`` in ``RUN_DIR/slurm.json`` — the Slurm
counterpart of ``engine.pid``. An evaluation uses ``evals/<eval_id>.slurm.sh|.slurm.json`` and
logs to ``evals/<eval_id>.log``. The engine itself is unchanged: it writes its events as usual,
and ``scancel`` delivers the SIGTERM its handler turns into a ``cancelled`` event (the script
``exec``s the engine, so the engine *is* the batch step's process).

Liveness: ``squeue`` first (one call for all jobs), ``sacct`` for jobs squeue has forgotten.
Pending → queued, running → running; a job that ended without a final event in
``events.jsonl`` is ``lost`` (``cancelled`` when Slurm says CANCELLED).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from presets.validate import ConfigError, Problem
from runs.catalog import CatalogError
from runs.paths import atomic_write_json, atomic_write_text

BACKENDS = ("local", "slurm")
BACKEND_ENV = "ADVLT_BACKEND"
ARGS_ENV = "ADVLT_SLURM_ARGS"
RECORD_FILE = "slurm.json"
SCRIPT_FILE = "slurm.sh"
QUERY_TIMEOUT_S = 30.0
CANCEL_POLL_S = 0.2
GONE = "GONE"  # squeue no longer lists the job and sacct cannot say how it ended

# Job states (squeue %T / sacct State) → what they mean for a run. Anything not listed is
# treated as "still in Slurm's hands" (None): never declare a run lost on a state we do not know.
QUEUED_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                           "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                          "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
                          "SPECIAL_EXIT", GONE})


class SlurmError(CatalogError):
    """Slurm could not be used (tool missing, sbatch refused the job); the message says why."""


@dataclass(frozen=True)
class SlurmRequest:
    """A validated submission: GPUs to ask for (``--gres=gpu:N``; 0 = none) and the user's
    extra ``#SBATCH`` options."""

    gpus: int
    args: tuple[str, ...]
    sbatch: str

    def text(self) -> str:
        """How the run's ``gpus`` column shows it (never a local GPU index)."""
        return f"slurm:{self.gpus}" if self.gpus else "slurm:cpu"


def default_backend() -> str:
    return (os.environ.get(BACKEND_ENV) or "local").strip().lower() or "local"


def check_backend(backend: Optional[str]) -> str:
    """``backend`` (None: ``$ADVLT_BACKEND`` or local) checked; a bad value is a ConfigError."""
    name = default_backend() if backend is None else backend.strip().lower()
    if name not in BACKENDS:
        source = "--backend" if backend is not None else f"${BACKEND_ENV}"
        raise ConfigError([Problem("backend", f"{source} {name!r}: expected local or slurm")],
                          "invalid backend")
    return name


def gres_count(gpus: Optional[str]) -> int:
    """``--gpus`` for Slurm is a count: ``auto`` → 1, ``cpu`` → 0, ``2`` → 2 (which GPUs is
    Slurm's choice; it sets ``CUDA_VISIBLE_DEVICES`` in the job)."""
    text = (gpus or "auto").strip().lower()
    if text in ("auto", ""):
        return 1
    if text in ("cpu", "none"):
        return 0
    if text.isdigit():
        return int(text)
    raise ConfigError([Problem("gpus", f"--gpus {gpus!r}: with --backend slurm give a GPU count "
                               "(e.g. 2), auto (one GPU) or cpu")], "invalid --gpus")


def sbatch_options(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """``$ADVLT_SLURM_ARGS`` (shell-split) then ``--slurm-arg`` values, each one sbatch option
    such as ``--partition=gpu`` or ``--time=04:00:00``."""
    env = os.environ.get(ARGS_ENV, "")
    try:
        args = [*shlex.split(env), *extra]
    except ValueError as exc:
        raise ConfigError([Problem("slurm_args", f"${ARGS_ENV}: {exc}")], "invalid sbatch options")
    bad = [a for a in args if not a.startswith("-") or "\n" in a or "\r" in a]
    if bad:
        raise ConfigError([Problem("slurm_args", f"{a!r} is not one sbatch option (expected e.g. "
                                   "--partition=gpu)") for a in bad], "invalid sbatch options")
    return tuple(args)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SlurmError(f"{name} not found; is Slurm installed? use --backend local")
    return path


def prepare(gpus: Optional[str], extra: Sequence[str] = ()) -> SlurmRequest:
    """Validate a Slurm submission before anything is written (ConfigError / SlurmError)."""
    return SlurmRequest(gres_count(gpus), sbatch_options(extra), _tool("sbatch"))


def record_path(folder: Path, pid_name: str = "engine.pid") -> Path:
    """Where a Slurm job is recorded, next to where a local process would be: ``engine.pid`` →
    ``slurm.json``, ``evals/<id>.pid`` → ``evals/<id>.slurm.json``."""
    if Path(pid_name).name == "engine.pid":
        return Path(folder) / Path(pid_name).parent / RECORD_FILE
    return Path(folder) / Path(pid_name).with_suffix(".slurm.json")


def script_path(folder: Path, pid_name: str = "engine.pid") -> Path:
    record = record_path(folder, pid_name)
    return record.with_name(SCRIPT_FILE if record.name == RECORD_FILE
                            else record.name[: -len(".json")] + ".sh")


def read_record(folder: Path, pid_name: str = "engine.pid") -> Optional[dict]:
    try:
        data = json.loads(record_path(folder, pid_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("job_id") else None


def forget(folder: Path, pid_name: str = "engine.pid") -> None:
    """Drop the Slurm record (a local launch of the same run or evaluation replaces it)."""
    record_path(folder, pid_name).unlink(missing_ok=True)


def _directive_value(value: object) -> str:
    # sbatch splits #SBATCH lines on blanks unless quoted (a home folder with a space in it).
    text = str(value)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def batch_script(engine_argv: Sequence[str], *, job_name: str, log_path: Path,
                 workdir: Path, request: SlurmRequest) -> str:
    """The ``sbatch`` script. User options come last so they override ours (sbatch keeps the
    last value of a repeated option), e.g. ``--gres=gpu:a100:2``."""
    project_root = Path(__file__).resolve().parent.parent
    lines = ["#!/bin/bash", f"#SBATCH --job-name={_directive_value(job_name)}",
             f"#SBATCH --output={_directive_value(log_path)}",
             "#SBATCH --open-mode=append"]
    if request.gpus:
        lines.append(f"#SBATCH --gres=gpu:{request.gpus}")
    lines += [f"#SBATCH {arg}" for arg in request.args]
    lines += [f"# written by advlt {time.strftime('%Y-%m-%d %H:%M:%S')}; submitted with "
              "sbatch --parsable",
              f"echo \"--- slurm job $SLURM_JOB_ID on $(hostname): {job_name}\"",
              f"export PYTHONPATH={shlex.quote(str(project_root))}${{PYTHONPATH:+:$PYTHONPATH}}",
              "export PYTHONUNBUFFERED=1"]
    if not request.gpus:  # a CPU job must not inherit the submitting shell's GPU list
        lines.append("export CUDA_VISIBLE_DEVICES=")
    lines += [f"cd {shlex.quote(str(workdir))}",
              # exec: the engine becomes the batch step, so scancel's SIGTERM reaches it.
              "exec " + " ".join(shlex.quote(a) for a in engine_argv), ""]
    return "\n".join(lines)


def submit(run_dir: Path, engine_argv: Sequence[str], request: SlurmRequest, *, job_name: str,
           log_name: str = "engine.log", pid_name: str = "engine.pid") -> dict:
    """Write the batch script, ``sbatch --parsable`` it and record the job (atomically) in
    ``slurm.json`` (or ``evals/<id>.slurm.json``); returns that record. Any ``engine.pid`` of a
    former local launch is removed: from now on Slurm tells whether the run lives."""
    run_dir = Path(run_dir).absolute()
    script = script_path(run_dir, pid_name)
    log_path = run_dir / log_name
    atomic_write_text(script, batch_script(engine_argv, job_name=job_name, log_path=log_path,
                                           workdir=run_dir, request=request))
    try:
        proc = subprocess.run([request.sbatch, "--parsable", str(script)], capture_output=True,
                              text=True, timeout=QUERY_TIMEOUT_S, cwd=run_dir,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        script.unlink(missing_ok=True)
        raise SlurmError(f"sbatch could not run: {exc}") from None
    first = (proc.stdout.strip().splitlines() or [""])[0].strip()
    job_id, _, cluster = first.partition(";")
    if proc.returncode != 0 or not job_id:
        script.unlink(missing_ok=True)  # no job: leave nothing behind
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SlurmError(f"sbatch refused the job (exit {proc.returncode}): {detail}")
    record = {"backend": "slurm", "job_id": job_id, "cluster": cluster or None,
              "host": socket.gethostname(), "submitted": time.time(), "job_name": job_name,
              "script": str(script), "log": str(log_path), "gpus": request.gpus,
              "sbatch_args": list(request.args)}
    atomic_write_json(record_path(run_dir, pid_name), record)
    (run_dir / pid_name).unlink(missing_ok=True)
    return record


def _run_query(argv: list[str]) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None


def _sacct_states(job_ids: list[str]) -> dict[str, str]:
    sacct = shutil.which("sacct")
    out = sacct and _run_query([sacct, "-n", "-P", "-X", "-j", ",".join(job_ids),
                                "-o", "JobIDRaw,State"])
    if not out or out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in job_ids and state.split():
            states[job] = state.split()[0]  # "CANCELLED by 1000" → CANCELLED
    return states


def job_states(job_ids: Iterable[str]) -> Optional[dict[str, str]]:
    """Job id → Slurm state for every id: one ``squeue`` call, then one ``sacct`` call for the
    jobs squeue no longer lists (``GONE`` when sacct cannot say either: squeue only forgets
    ended jobs). None when squeue cannot be asked (not installed, controller unreachable)."""
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return {}
    squeue = shutil.which("squeue")
    out = squeue and _run_query([squeue, "-h", "-j", ",".join(ids), "-o", "%i %T"])
    if not out:
        return None
    if out.returncode != 0:
        # Older Slurm answers a list of only forgotten ids with an error instead of nothing.
        if "invalid job id" not in out.stderr.lower():
            return None
        out = subprocess.CompletedProcess(out.args, 0, "", "")
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ids:
            states[parts[0]] = parts[1]
    missing = [j for j in ids if j not in states]
    if missing:
        states.update(_sacct_states(missing))
    return {j: states.get(j, GONE) for j in ids}


def phase(state: Optional[str]) -> Optional[str]:
    """``queued``, ``running`` or ``ended`` for a Slurm state; None when unknown."""
    if state is None:
        return None
    base = state.split()[0].rstrip("+").upper()
    if base in QUEUED_STATES:
        return "queued"
    if base in RUNNING_STATES:
        return "running"
    return "ended" if base in ENDED_STATES else None


def is_active(record: dict) -> bool:
    """Whether the recorded job may still run. When Slurm cannot be asked the answer is yes:
    a run on the cluster must never be deleted or resumed twice on a guess."""
    states = job_states([record["job_id"]])
    return states is None or phase(states.get(str(record["job_id"]))) != "ended"


def cancel(record: dict, grace_s: float) -> bool:
    """``scancel`` the job (Slurm sends SIGTERM, then SIGKILL after its KillWait), then wait up
    to ``grace_s`` for it to end. True if it was still queued or running."""
    if not is_active(record):
        return False
    out = _run_query([_tool("scancel"), str(record["job_id"])])
    if out is None or out.returncode != 0:
        detail = "" if out is None else (out.stderr.strip() or out.stdout.strip())
        raise SlurmError(f"scancel {record['job_id']} failed: {detail or 'could not run'}")
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and is_active(record):
        time.sleep(CANCEL_POLL_S)
    return True
