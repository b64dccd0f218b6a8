"""What a user can do to runs — the one library both the CLI and the TUI call.

Each function validates first and raises ``ConfigError`` / ``CatalogError`` with a clear message
before anything is written. Every state change is also written into the run directory (an event
in ``events.jsonl``, ``meta.json``), the source of truth, so ``reindex`` tells the same story.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Optional

from presets import loader
from presets.schema import RunConfig
from presets.validate import ConfigError, Problem
from runs import gpus as gpu_locks
from runs import launcher
from runs.catalog import Catalog, CatalogError
from runs.evals import new_eval_id, request_eval  # noqa: F401  (part of this module's API)
from runs.event_log import append_event
from runs.ingest import META_FILE
from runs.paths import advlt_home, atomic_write_json

ENDED = ("finished", "failed", "cancelled", "lost")
RESUMABLE = ("lost", "cancelled", "failed")


def user_preset_dir() -> Path:
    """Users add their own presets here (same validation as the built-in ones)."""
    return advlt_home() / "presets"


def parent_of(catalog: Catalog, ref: str) -> dict:
    """The parent run and its newest checkpoint, for fine-tune presets (``--from RUN``)."""
    run = catalog.get_run(ref)
    ckpts = catalog.run_checkpoints(run["id"])
    if not ckpts:
        raise CatalogError(f"--from {ref}: run {run['id']} has no checkpoint yet "
                           f"(status {run['status']})")
    return {"run": run["id"], "checkpoint": str(Path(run["run_dir"]) / ckpts[-1]["path"])}


def check_gpus(gpus: Optional[str], share: bool = False) -> gpu_locks.GpuRequest:
    """``--gpus`` checked against this machine; a bad value is a ``ConfigError`` (exit 2)."""
    try:
        return gpu_locks.parse_gpu_spec(gpus, share)
    except gpu_locks.GpuSpecError as exc:
        raise ConfigError([Problem("gpus", str(exc))], "invalid --gpus") from None


def resolve_run_config(preset_name: str, dataset: str, *, epochs: Optional[int] = None,
                       data_root: Optional[Path] = None, sets: Iterable[str] = (),
                       parent: Optional[dict] = None, seed: Optional[int] = None) -> RunConfig:
    overrides, problems = loader.parse_overrides(sets)
    extra: dict = {}
    if epochs is not None:
        extra.setdefault("train", {})["epochs"] = epochs
    if data_root is not None:
        extra.setdefault("dataset", {})["data_root"] = str(Path(data_root).expanduser().resolve())
    if seed is not None:
        extra["seed"] = seed
    if parent is not None:
        extra["parent_run"] = parent["run"]
        extra["parent_checkpoint"] = parent["checkpoint"]
    preset = loader.get_preset(preset_name, user_preset_dir())
    if problems:
        raise ConfigError(problems)
    return loader.resolve(preset, dataset, overrides, extra)


def start_run(catalog: Catalog, preset: str, dataset: str = "digits-lt", *,
              epochs: Optional[int] = None, data_root: Optional[Path] = None,
              sets: Iterable[str] = (), parent_ref: Optional[str] = None,
              gpus: Optional[str] = None, name: Optional[str] = None,
              seed: Optional[int] = None, share: bool = False) -> dict:
    """Resolve, record (status ``queued``) and launch a training run detached; it waits in
    the GPU queue (``gpus``: auto, cpu, 0, 0,1) until its GPUs are free."""
    request = check_gpus(gpus, share)
    parent = parent_of(catalog, parent_ref) if parent_ref else None
    cfg = resolve_run_config(preset, dataset, epochs=epochs, data_root=data_root, sets=sets,
                             parent=parent, seed=seed)
    run = launcher.create_run(catalog, cfg, name=name, gpus=request.text())
    if share:
        _update_meta_file(Path(run["run_dir"]), gpu_share=True)
    launch_training(catalog, run, gpus=request.text(), share=share)
    return catalog.get_run(run["id"])


def _read_meta(run_dir: Path) -> dict:
    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _update_meta_file(run_dir: Path, **fields: object) -> None:
    meta = _read_meta(run_dir)
    if meta:
        atomic_write_json(run_dir / META_FILE, {**meta, **fields})


def launch_training(catalog: Catalog, run: dict, gpus: Optional[str] = None,
                    share: Optional[bool] = None) -> dict:
    """Start (or restart) the run's engine behind the GPU queue; returns the pid record."""
    run_dir = Path(run["run_dir"])
    meta = _read_meta(run_dir)
    gpus = gpus or run.get("gpus") or meta.get("gpus") or "auto"
    share = bool(meta.get("gpu_share")) if share is None else share
    info = launcher.launch(run_dir, launcher.engine_command(run_dir), gpus, share=share)
    catalog.set_process(run["id"], info["pid"], info["pgid"], info["start_time"], info["host"])
    return info


def live_processes(run: dict) -> list[str]:
    """Which processes of the run still run: ``engine`` and ``eval <id>`` entries."""
    run_dir = Path(run["run_dir"])
    alive = ["engine"] if launcher.is_running(run_dir) else []
    evals = run_dir / "evals"
    if evals.is_dir():
        for pid_file in sorted(evals.glob("*.pid")):
            if launcher.is_running(evals, pid_file.name):
                alive.append(f"eval {pid_file.stem}")
    return alive


def cancel_run(catalog: Catalog, ref: str, grace_s: float = launcher.GRACE_S) -> dict:
    """SIGTERM the run's process group, SIGKILL after ``grace_s``; the run ends ``cancelled``.

    A queued run's waiter leaves the queue (``cancelled`` event). A run with no process left
    (lost) gets a ``cancelled`` event written by us, so the run directory says so too. A run
    that already ended is an error.
    """
    run = catalog.get_run(ref)
    catalog.ingest(run["id"])
    run = catalog.get_run(run["id"])
    run_dir = Path(run["run_dir"])
    alive = launcher.is_running(run_dir)
    if not alive and run["status"] in ("finished", "failed", "cancelled"):
        raise CatalogError(f"run {run['id']} already ended ({run['status']}); nothing to cancel")
    if alive:
        launcher.terminate(run_dir, grace_s=grace_s)
    catalog.ingest(run["id"])
    if catalog.get_run(run["id"])["status"] not in ("finished", "failed", "cancelled"):
        message = "cancelled" if alive else "cancelled (no process was running)"
        if run_dir.is_dir():
            append_event(run_dir, "cancelled", run_id=run["id"], message=message,
                         signal="SIGKILL" if alive else None)
            catalog.ingest(run["id"])
        if catalog.get_run(run["id"])["status"] != "cancelled":
            catalog.set_status(run["id"], "cancelled", message)
    return catalog.get_run(run["id"])


def resume_run(catalog: Catalog, ref: str, gpus: Optional[str] = None,
               share: Optional[bool] = None) -> dict:
    """Continue a lost/cancelled/failed run from its last checkpoint under the same id (the
    engine resumes from the newest loadable checkpoint in the run directory)."""
    request = check_gpus(gpus, bool(share)) if gpus is not None else None
    run = catalog.get_run(ref)
    catalog.ingest(run["id"])
    run = catalog.get_run(run["id"])
    run_dir = Path(run["run_dir"])
    if launcher.is_running(run_dir):
        raise CatalogError(f"run {run['id']} is still {run['status']}; nothing to resume")
    if run["status"] == "finished":
        raise CatalogError(f"run {run['id']} already finished")
    if not (run_dir / "config.json").is_file():
        raise CatalogError(f"run {run['id']}: {run_dir / 'config.json'} is missing; the run "
                           "directory was deleted or moved, so it cannot resume")
    before = run["last_seq"]
    launch_training(catalog, run, gpus=request.text() if request else None, share=share)
    # Only if nothing newer was ingested meanwhile: the waiter's own `queued` event (or even the
    # engine's `started`) may already have landed and must not be overwritten.
    catalog.set_status_if_unchanged(run["id"], "queued", before, "resuming from the last checkpoint")
    return catalog.get_run(run["id"])


def delete_run(catalog: Catalog, ref: str) -> dict:
    """Remove a run's catalog rows and its directory; refuses while any of its processes run.

    The directory is first renamed to ``.rm-<id>`` (which ``reindex`` skips), so a failure
    half-way can never bring the run back half-deleted.
    """
    run = catalog.get_run(ref)
    alive = live_processes(run)
    if alive:
        raise CatalogError(f"run {run['id']} is running ({', '.join(alive)}); "
                           f"`advlt cancel {run['id']}` first")
    run_dir = Path(run["run_dir"])
    trash = run_dir.with_name(f".rm-{run_dir.name}")
    if run_dir.is_dir():
        run_dir.rename(trash)
    catalog.delete_run(run["id"])
    shutil.rmtree(trash, ignore_errors=True)
    return run
