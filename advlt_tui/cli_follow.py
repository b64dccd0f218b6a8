"""Foreground mode of ``advlt run``/``resume``/``eval``: follow a detached process with a rich
progress bar (on stderr, so ``--json`` output stays clean). Ctrl-C cancels what is followed.

The process itself is never our child in any way that matters: it runs in its own session, so
killing this command (or losing the terminal) leaves it running; only an explicit Ctrl-C here
cancels it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from runs import evals as run_evals
from runs import launcher, ops
from runs.catalog import Catalog
from runs.events import read_events

POLL_S = 0.25
EVAL_DONE = {"eval": "finished", "eval_failed": "failed", "eval_cancelled": "cancelled"}


def fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _cancel_run(catalog: Catalog, run_id: str) -> str:
    try:
        return ops.cancel_run(catalog, run_id)["status"]
    except Exception:  # already ended between the key press and the cancel
        return catalog.get_run(run_id)["status"]


def follow_run(catalog: Catalog, run_id: str, console: Console, quiet: bool = False) -> str:
    """Ingest the run's events until it ends; returns the final status."""
    run_dir = Path(catalog.get_run(run_id)["run_dir"])
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} ep"), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        task = progress.add_task(run_id, total=None, info="starting…")
        try:
            while True:
                catalog.ingest(run_id)
                run = catalog.get_run(run_id)
                if run["epochs"]:
                    progress.update(task, total=run["epochs"])
                if run["status"] == "queued":
                    info = run.get("message") or "queued"
                else:
                    info = f"clean {fmt(run['clean_acc'])} robust {fmt(run['robust_acc'])}"
                progress.update(task, completed=run["epoch"] or 0, info=info)
                if run["status"] in ops.ENDED:
                    return run["status"]
                if not launcher.is_running(run_dir):
                    time.sleep(0.3)  # let the last events land, then decide
                    catalog.ingest(run_id)
                    run = catalog.get_run(run_id)
                    if run["status"] not in ops.ENDED:
                        catalog.set_status(run_id, "lost", "engine exited without a final event; "
                                           f"see {run_dir / launcher.LOG_FILE}")
                    return catalog.get_run(run_id)["status"]
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            progress.update(task, info="cancelling…")
            return _cancel_run(catalog, run_id)


def follow_eval(catalog: Catalog, run_id: str, eval_id: str, offset: int, console: Console,
                quiet: bool = False) -> str:
    """Follow evaluation ``eval_id`` through the run's events from byte ``offset`` on; one
    progress bar per attack. Returns finished, failed, cancelled or lost."""
    run_dir = Path(catalog.get_run(run_id)["run_dir"])
    events_path = run_dir / "events.jsonl"
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
               TimeRemainingColumn()]
    status: Optional[str] = None
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        tasks: dict[str, int] = {}
        waiting = progress.add_task(f"{eval_id}: queued", total=None, unit="")
        try:
            while status is None:
                events, offset, _ = read_events(events_path, offset)
                for e in events:
                    if e.get("eval_id") != eval_id:
                        continue
                    if e["type"] in ("eval_started", "eval_gpu_assigned"):
                        progress.update(waiting, description=f"{eval_id}: loading")
                    elif e["type"] == "eval_progress" and e.get("attack"):
                        attack = str(e["attack"])
                        if attack not in tasks:
                            progress.update(waiting, visible=False)
                            # AutoAttack reports images passed through the model (its own
                            # restarts and queries included), not test images.
                            unit = "model passes" if attack == "aa" else "images"
                            tasks[attack] = progress.add_task(attack, total=e.get("total"),
                                                              unit=unit)
                        progress.update(tasks[attack], completed=e.get("done") or 0,
                                        total=e.get("total"))
                    elif e["type"] in EVAL_DONE:
                        status = EVAL_DONE[e["type"]]
                if status is None and not run_evals.eval_process_alive(run_dir, eval_id):
                    time.sleep(0.3)
                    events, offset, _ = read_events(events_path, offset)
                    done = [EVAL_DONE[e["type"]] for e in events
                            if e.get("eval_id") == eval_id and e["type"] in EVAL_DONE]
                    status = done[-1] if done else "lost"
                if status is None:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            run_evals.terminate_eval(run_dir, eval_id)
            status = "cancelled"
    catalog.ingest(run_id)
    if status == "lost" or (status == "cancelled"
                            and catalog.evaluation_status(eval_id) in ("queued", "running")):
        catalog.set_eval_status(eval_id, status, "the evaluation process exited without a result"
                                if status == "lost" else "cancelled from the terminal")
    return status
