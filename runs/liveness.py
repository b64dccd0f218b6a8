"""Is a run's engine still alive? pid *and* process start time, never the pid alone.

Pids are recycled: after a reboot or a long time, a dead engine's pid may belong to some other
process. The kernel's start time of the process (``/proc/<pid>/stat`` field 22, in clock ticks
since boot) recorded at launch in ``engine.pid`` tells the two apart. A zombie (exited, not yet
reaped by its parent) counts as dead: it will never write another event.

Runs and evaluations submitted to Slurm (a ``slurm.json`` record, see ``runs.slurm``) have no
pid here: Slurm says whether they live, asked once for all of them (``reconcile_slurm``).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from runs import slurm

if TYPE_CHECKING:
    from runs.catalog import Catalog

_DEAD_STATES = ("Z", "X", "x")  # zombie, dead


def parse_stat(text: str) -> tuple[str, int]:
    """``/proc/<pid>/stat`` text → (state, starttime).

    Field 2 is the command name in parentheses and may itself contain spaces and ')' (a process
    can name itself anything), so split after the *last* ')': the rest are fields 3, 4, ...
    """
    rest = text[text.rindex(")") + 1 :].split()
    return rest[0], int(rest[22 - 3])


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def _has_proc() -> bool:
    return os.path.isdir("/proc/self")


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process
    (or no ``/proc`` on this system)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    stat = _stat(pid)
    return None if stat is None else stat[1]


def pid_exists(pid: int) -> bool:
    """Whether a live (non-zombie) process ``pid`` exists; works without ``/proc`` too. Only a
    ``False`` means something on its own: see ``is_alive``."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if _has_proc():
        stat = _stat(pid)
        return stat is not None and stat[0] not in _DEAD_STATES
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_alive(pid: int | None, start_time: int | None) -> bool:
    """True only if ``pid`` runs, is not a zombie, and started at ``start_time``."""
    if pid is None or start_time is None or not isinstance(pid, int) or pid <= 0:
        return False
    stat = _stat(pid)
    return stat is not None and stat[0] not in _DEAD_STATES and stat[1] == start_time


@dataclass(frozen=True)
class StatusChange:
    run_id: str
    old: str
    new: str
    reason: str


def engine_gone(run: dict) -> bool | None:
    """Whether the engine of a catalog row is provably gone; None when this host cannot tell
    (another host's pid, or no pid recorded yet)."""
    host = run.get("host")
    if host and host != socket.gethostname():
        return None
    pid = run.get("pid")
    if pid is None:
        return None
    if run.get("proc_start") is not None and _has_proc():
        return not is_alive(pid, run["proc_start"])
    # No start time recorded (or no /proc): a vanished pid proves death, a present one proves
    # nothing, so only the first case counts.
    return False if pid_exists(pid) else True


def reconcile(catalog: "Catalog") -> list[StatusChange]:
    """Mark runs whose engine (or GPU-queue waiter) is gone without a final event as ``lost``,
    and evaluations whose process is gone likewise.

    The engine writes its final event before it exits, so after seeing it gone we ingest once
    more: a run that finished between our last ingest and now becomes ``finished``, not lost.
    Queued runs count only once their waiter's pid is recorded (before that there is nothing to
    check).
    """
    changes = []
    on_slurm = []
    for run in catalog.list_runs(status=("running", "queued")):
        record = slurm.read_record(Path(run["run_dir"]))
        if record is not None:
            on_slurm.append((run, record))
            continue
        if not engine_gone(run):
            continue
        catalog.ingest(run["id"])
        fresh = catalog.get_run(run["id"])
        if fresh["pid"] != run["pid"] and not engine_gone(fresh):
            continue  # relaunched (resume) between our two reads
        now = fresh["status"]
        if now in ("running", "queued"):
            what = "engine" if now == "running" else "GPU-queue waiter"
            reason = f"{what} process {fresh['pid']} is gone without a finished/failed event"
            catalog.set_status(run["id"], "lost", reason)
            changes.append(StatusChange(run["id"], now, "lost", reason))
        elif now != run["status"]:
            changes.append(StatusChange(run["id"], run["status"], now, "final events ingested"))
    changes += reconcile_slurm(catalog, on_slurm)
    changes += reconcile_evals(catalog)
    return changes


def reconcile_slurm(catalog: "Catalog", runs: list[tuple[dict, dict]]) -> list[StatusChange]:
    """Queued/running runs (``(row, slurm record)`` pairs) and open evaluations that are Slurm
    jobs, checked with one ``squeue`` call (and one ``sacct`` call for jobs it forgot).

    PENDING → queued, RUNNING → running (squeue knows before the engine's first event, and a
    requeued job goes back to queued). A job that ended without a final event is ``lost``, or
    ``cancelled`` when Slurm says CANCELLED (a scancel from outside advlt). Nothing changes
    when Slurm cannot be asked.
    """
    evals = []
    for ev in catalog.open_evaluations():
        record = slurm.read_record(Path(ev["run_dir"]) / "evals", f"{ev['id']}.pid")
        if record is not None:
            evals.append((ev, record))
    if not runs and not evals:
        return []
    states = slurm.job_states([r["job_id"] for _, r in [*runs, *evals]])
    if states is None:
        return []
    changes = [_slurm_run_change(catalog, run, record, states.get(str(record["job_id"])))
               for run, record in runs]
    for ev, record in evals:
        state = states.get(str(record["job_id"]))
        if slurm.phase(state) != "ended":
            continue
        catalog.ingest(ev["run_id"])
        status = catalog.evaluation_status(ev["id"])
        if status in ("queued", "running"):
            new = "cancelled" if state.startswith("CANCELLED") else "lost"
            reason = (f"Slurm job {record['job_id']} ended {state} without a result; see "
                      f"{record.get('log')}")
            catalog.set_eval_status(ev["id"], new, reason)
            changes.append(StatusChange(ev["id"], status, new, reason))
    return [c for c in changes if c is not None]


def _slurm_run_change(catalog: "Catalog", run: dict, record: dict,
                      state: Optional[str]) -> Optional[StatusChange]:
    job = f"Slurm job {record['job_id']}"
    phase = slurm.phase(state)
    if phase is None:
        return None
    if phase != "ended":
        message = f"{job} {state.lower()}"
        if run["status"] == phase and (phase == "running" or run.get("message") == message):
            return None
        if catalog.set_status_if_unchanged(run["id"], phase, run["last_seq"], message):
            return StatusChange(run["id"], run["status"], phase, f"{job} is {state}")
        return None
    catalog.ingest(run["id"])
    fresh = catalog.get_run(run["id"])
    current = slurm.read_record(Path(run["run_dir"]))
    if current is None or current["job_id"] != record["job_id"]:
        return None  # resubmitted (resume) between our two reads
    if fresh["status"] not in ("running", "queued"):
        return (StatusChange(run["id"], run["status"], fresh["status"], "final events ingested")
                if fresh["status"] != run["status"] else None)
    new = "cancelled" if state.startswith("CANCELLED") else "lost"
    reason = (f"{job} ended {state} without a finished/failed event; see "
              f"{record.get('log') or Path(run['run_dir']) / 'engine.log'}")
    catalog.set_status(run["id"], new, reason)
    return StatusChange(run["id"], fresh["status"], new, reason)


def reconcile_evals(catalog: "Catalog") -> list[StatusChange]:
    """Queued/running evaluations whose process (``evals/<id>.pid``) is gone become ``lost``."""
    changes = []
    for ev in catalog.open_evaluations():
        pid_path = Path(ev["run_dir"]) / "evals" / f"{ev['id']}.pid"
        info = _read_json(pid_path)
        if info is None or not isinstance(info.get("pid"), int):
            continue
        if info.get("host") and info["host"] != socket.gethostname():
            continue
        if is_alive(info["pid"], info.get("start_time")):
            continue
        catalog.ingest(ev["run_id"])
        status = catalog.evaluation_status(ev["id"])
        if status in ("queued", "running"):
            reason = f"evaluation process {info['pid']} is gone without a result"
            catalog.set_eval_status(ev["id"], "lost", reason)
            changes.append(StatusChange(ev["id"], status, "lost", reason))
    return changes


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
