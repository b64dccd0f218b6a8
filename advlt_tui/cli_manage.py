"""``advlt logs | resume | cancel | rm | tag | note | reindex``: managing existing runs."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from advlt_tui.cli import (
    BackendOpt, DetachOpt, GpusOpt, JsonOpt, RunArg, ShareOpt, SlurmArgOpt, app, err, fail,
    finish_launch, open_catalog, out, print_json, resolve_run, user_errors, warn,
)
from runs import launcher, ops
from runs.evals import EVALS_FOLDER
from runs.liveness import reconcile

LOG_POLL_S = 0.3


def _copy_new(path: Path, offset: int) -> int:
    """Write what ``path`` gained since ``offset`` to stdout; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    if data:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


@app.command("logs")
def logs_cmd(
    run: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run's "
                                         "process ends")] = False,
    eval_id: Annotated[Optional[str], typer.Option("--eval", help="an evaluation's log instead "
                                                   "of the training log")] = None,
) -> None:
    """Print the run's engine.log (or an evaluation's log); --follow tails it to the end."""
    catalog = open_catalog()
    row = catalog.get_run(resolve_run(catalog, run))
    run_dir = Path(row["run_dir"])
    if not run_dir.is_dir():
        fail(f"run {row['id']}: its directory {run_dir} is missing (deleted or moved)", 1)
    if eval_id is not None:
        matches = sorted(p.stem for p in (run_dir / EVALS_FOLDER).glob(f"{eval_id}*.log"))
        if len(matches) != 1:
            fail(f"run {row['id']}: {'no' if not matches else 'more than one'} evaluation log "
                 f"matches {eval_id!r}" + (f" ({', '.join(matches)})" if matches else ""))
        log_path = run_dir / EVALS_FOLDER / f"{matches[0]}.log"
        pid_dir, pid_name = run_dir / EVALS_FOLDER, f"{matches[0]}.pid"
    else:
        log_path, pid_dir, pid_name = run_dir / launcher.LOG_FILE, run_dir, launcher.PID_FILE
    if not log_path.exists() and not follow:
        warn(f"no log yet ({log_path}); the run is {row['status']}")
        return
    offset = _copy_new(log_path, 0)
    if not follow:
        return
    try:
        while launcher.is_running(pid_dir, pid_name):
            time.sleep(LOG_POLL_S)
            offset = _copy_new(log_path, offset)
        _copy_new(log_path, offset)
    except KeyboardInterrupt:  # stops following only; the run goes on
        return


@app.command("resume")
def resume_cmd(run: RunArg, gpus: GpusOpt = None, share: ShareOpt = False,
               detach: DetachOpt = False, as_json: JsonOpt = False,
               backend: BackendOpt = None, slurm_arg: SlurmArgOpt = None) -> None:
    """Continue a lost, cancelled or failed run from its last checkpoint, under the same id."""
    catalog = open_catalog()
    run_id = resolve_run(catalog, run)
    with user_errors():
        row = ops.resume_run(catalog, run_id, gpus=gpus, share=share or None, backend=backend,
                             slurm_args=slurm_arg or [])
    finish_launch(catalog, row, detach, as_json, verb="resumed")


@app.command("cancel")
def cancel_cmd(
    run: RunArg,
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Stop a queued or running run: SIGTERM to its process group, SIGKILL after a grace period."""
    catalog = open_catalog()
    run_id = resolve_run(catalog, run)
    with user_errors():
        row = ops.cancel_run(catalog, run_id, grace_s=grace)
    if as_json:
        print_json({"id": row["id"], "status": row["status"], "message": row.get("message")})
    else:
        out.print(f"run [bold]{row['id']}[/] is {row['status']}", highlight=False)


@app.command("rm")
def rm_cmd(
    runs: Annotated[list[str], typer.Argument(help="run ids or unique prefixes")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete runs: their catalog rows and run directories (refuses while a run is running)."""
    catalog = open_catalog()
    ids = list(dict.fromkeys(resolve_run(catalog, r) for r in runs))
    rows = [catalog.get_run(i) for i in ids]
    for row in rows:  # refuse before deleting anything
        alive = ops.live_processes(row)
        if alive:
            fail(f"run {row['id']} is running ({', '.join(alive)}); `advlt cancel {row['id']}` "
                 "first")
    if not yes:
        listed = ", ".join(f"{r['id']} ({r['preset']}, {r['status']})" for r in rows)
        if not typer.confirm(f"delete {listed} and {'its' if len(rows) == 1 else 'their'} run "
                             "directory for good?", default=False, err=True):
            err.print("nothing deleted")
            raise typer.Exit(1)
    with user_errors():
        for row in rows:
            ops.delete_run(catalog, row["id"])
    if as_json:
        print_json({"deleted": ids})
    else:
        out.print(f"deleted {', '.join(ids)}", highlight=False)


@app.command("tag")
def tag_cmd(
    run: RunArg,
    tags: Annotated[list[str], typer.Argument(help="tags to add (or remove with --remove)")],
    remove: Annotated[bool, typer.Option("--remove", "-r", help="remove these tags")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add tags to a run (kept in its meta.json, so reindex keeps them)."""
    catalog = open_catalog()
    run_id = resolve_run(catalog, run)
    clean = [t.strip() for tag in tags for t in tag.split(",") if t.strip()]
    if not clean:
        fail("no tag given")
    with user_errors():
        now = (catalog.remove_tags if remove else catalog.add_tags)(run_id, clean)
    if as_json:
        print_json({"id": run_id, "tags": now})
    else:
        out.print(f"{run_id}: tags {', '.join(now) or '(none)'}", highlight=False)


@app.command("note")
def note_cmd(
    run: RunArg,
    text: Annotated[str, typer.Argument(help="the note (an empty string clears it)")],
    as_json: JsonOpt = False,
) -> None:
    """Attach a free-text note to a run (kept in its meta.json)."""
    catalog = open_catalog()
    run_id = resolve_run(catalog, run)
    with user_errors():
        catalog.set_note(run_id, text or None)
    if as_json:
        print_json({"id": run_id, "note": text or None})
    else:
        out.print(f"{run_id}: note {'set' if text else 'cleared'}", highlight=False)


@app.command("reindex")
def reindex_cmd(as_json: JsonOpt = False) -> None:
    """Rebuild the whole catalog from the run directories (the source of truth)."""
    catalog = open_catalog()
    messages: list[str] = []
    with user_errors():
        count = catalog.reindex(report=messages.append)
    changes = reconcile(catalog)
    if as_json:
        print_json({"runs": count, "messages": messages,
                    "status_changes": [c.__dict__ for c in changes]})
        return
    for message in messages:
        warn(message)
    out.print(f"indexed {count} run(s) from {catalog.runs_root}", highlight=False)
    for change in changes:
        out.print(f"{change.run_id}: {change.old} → {change.new} ({change.reason})",
                  highlight=False, markup=False)
