"""What a user can do to runs — the one library both the CLI and the TUI call.

Each function validates first and raises ``ConfigError`` / ``CatalogError`` with a clear message
before anything is written. Every state change is also written into the run directory (an event
in ``events.jsonl``, ``meta.json``), the source of truth, so ``reindex`` tells the same story.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Optional, Sequence

from presets import loader
from presets.schema import RunConfig
from presets.validate import ConfigError, Problem
from runs import gpus as gpu_locks
from runs import launcher, slurm
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


def check_nproc(request: gpu_locks.GpuRequest, nproc: Optional[int], ddp: bool,
                batch_size: int) -> Optional[int]:
    """Processes of a one-run-many-GPUs launch (torchrun + DDP), or None for one process.

    ``--ddp`` takes one process per GPU of an explicit ``--gpus 0,1``; ``--nproc N`` sets the
    count (with ``--gpus cpu`` too: gloo on the CPU, for tests). Each process trains
    ``batch_size / N`` images of every global batch, so N must divide the batch size.
    """
    if not ddp and nproc is None:
        return None
    if request.mode == "auto":
        raise ConfigError([Problem("gpus", "--ddp/--nproc needs explicit GPUs (--gpus 0,1) or "
                                   "--gpus cpu")], "invalid --ddp")
    if nproc is None:
        nproc = len(request.indices)
        if not nproc:
            raise ConfigError([Problem("nproc", "--ddp --gpus cpu needs --nproc N")],
                              "invalid --ddp")
    if nproc < 1:
        raise ConfigError([Problem("nproc", f"must be ≥ 1, got {nproc}")], "invalid --nproc")
    if request.mode == "list" and nproc != len(request.indices):
        raise ConfigError([Problem("nproc", f"--nproc {nproc} but --gpus {request.text()} names "
                                   f"{len(request.indices)} GPU(s): one process per GPU")],
                          "invalid --nproc")
    if batch_size % nproc:
        raise ConfigError([Problem("train.batch_size", f"{batch_size} is not divisible by "
                                   f"{nproc} processes (each trains batch_size / {nproc})")],
                          "invalid --nproc")
    return nproc


def _slurm_request(gpus: Optional[str], share: bool,
                   slurm_args: Sequence[str]) -> slurm.SlurmRequest:
    """``--gpus`` as a Slurm GPU count plus sbatch options, checked; sbatch must exist."""
    if share:
        raise ConfigError([Problem("share", "--share is for the local GPU queue; with --backend "
                                   "slurm ask Slurm (e.g. --slurm-arg=--oversubscribe)")])
    return slurm.prepare(gpus, slurm_args)


def _local_only(slurm_args: Sequence[str]) -> None:
    if slurm_args:
        raise ConfigError([Problem("slurm_args", "--slurm-arg needs --backend slurm")])


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
              seed: Optional[int] = None, share: bool = False, ddp: bool = False,
              nproc: Optional[int] = None, backend: Optional[str] = None,
              slurm_args: Sequence[str] = ()) -> dict:
    """Resolve, record (status ``queued``) and launch a training run detached; it waits in
    the GPU queue (``gpus``: auto, cpu, 0, 0,1) until its GPUs are free. ``ddp``/``nproc``:
    one run on several processes (see :func:`check_nproc`). ``backend="slurm"`` (default
    ``$ADVLT_BACKEND`` or local) submits it with ``sbatch`` instead (``gpus``: a count, auto = 1,
    cpu; ``slurm_args``: extra sbatch options)."""
    slurm_request: Optional[slurm.SlurmRequest] = None
    if slurm.check_backend(backend) == "slurm":
        slurm_request = _slurm_request(gpus, share, slurm_args)
        # What check_nproc needs to know: the GPUs Slurm will hand the job, as indices 0..N-1.
        request = (gpu_locks.GpuRequest("list", tuple(range(slurm_request.gpus)))
                   if slurm_request.gpus else gpu_locks.GpuRequest("cpu"))
    else:
        _local_only(slurm_args)
        request = check_gpus(gpus, share)
    gpus_text = slurm_request.text() if slurm_request else request.text()
    parent = parent_of(catalog, parent_ref) if parent_ref else None
    cfg = resolve_run_config(preset, dataset, epochs=epochs, data_root=data_root, sets=sets,
                             parent=parent, seed=seed)
    nproc = check_nproc(request, nproc, ddp, cfg.train.batch_size)
    run = launcher.create_run(catalog, cfg, name=name, gpus=gpus_text)
    if share:
        _update_meta_file(Path(run["run_dir"]), gpu_share=True)
    if nproc is not None:
        _update_meta_file(Path(run["run_dir"]), nproc=nproc)
    try:
        launch_training(catalog, run, gpus=gpus_text, share=share, slurm_request=slurm_request)
    except slurm.SlurmError:
        delete_run(catalog, run["id"])  # sbatch refused it: the run never existed
        raise
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
                    share: Optional[bool] = None,
                    slurm_request: Optional[slurm.SlurmRequest] = None) -> dict:
    """Start (or restart) the run's engine behind the GPU queue and return the pid record, or
    submit it to Slurm when ``slurm_request`` is given and return the job record."""
    run_dir = Path(run["run_dir"])
    meta = _read_meta(run_dir)
    if slurm_request is not None:
        record = slurm.submit(run_dir, launcher.engine_train_command(run_dir, meta.get("nproc")),
                              slurm_request, job_name=f"advlt-{run['id']}")
        catalog.set_process(run["id"], None, None, None, None)  # Slurm, not a pid, says now
        # After sbatch, not before: a refused job must leave no trace. The engine needs
        # seconds to start, and reconcile sets the status from squeue should it win the race.
        append_event(run_dir, "queued", run_id=run["id"], backend="slurm",
                     job_id=record["job_id"], gpus=slurm_request.text())
        return record
    gpus = gpus or run.get("gpus") or meta.get("gpus") or "auto"
    if str(gpus).startswith("slurm:"):  # a GPU count of a former Slurm job, not indices here
        gpus = "auto"
    share = bool(meta.get("gpu_share")) if share is None else share
    argv = launcher.engine_train_command(run_dir, meta.get("nproc"))  # a resume keeps its nproc
    info = launcher.launch(run_dir, argv, gpus, share=share)
    catalog.set_process(run["id"], info["pid"], info["pgid"], info["start_time"], info["host"])
    return info


def live_processes(run: dict) -> list[str]:
    """Which processes of the run still run: ``engine`` and ``eval <id>`` entries."""
    run_dir = Path(run["run_dir"])
    alive = ["engine"] if launcher.is_running(run_dir) else []
    evals = run_dir / "evals"
    if evals.is_dir():
        ids = {p.stem for p in evals.glob("*.pid")}
        ids |= {p.name[: -len(".slurm.json")] for p in evals.glob("*.slurm.json")}
        for eval_id in sorted(ids):
            if launcher.is_running(evals, f"{eval_id}.pid"):
                alive.append(f"eval {eval_id}")
    return alive


def cancel_run(catalog: Catalog, ref: str, grace_s: float = launcher.GRACE_S, *,
               backend: Optional[str] = None) -> dict:
    """SIGTERM the run's process group, SIGKILL after ``grace_s``; the run ends ``cancelled``.

    A queued run's waiter leaves the queue (``cancelled`` event). A run with no process left
    (lost) gets a ``cancelled`` event written by us, so the run directory says so too. A run
    that already ended is an error. A Slurm job is ``scancel``-ed (the engine's SIGTERM handler
    writes ``cancelled``; for a job still pending we write it). ``backend`` is only checked: how
    the run was launched (its ``slurm.json``) decides how it is stopped.
    """
    slurm.check_backend(backend)
    run = catalog.get_run(ref)
    catalog.ingest(run["id"])
    run = catalog.get_run(run["id"])
    run_dir = Path(run["run_dir"])
    alive = launcher.is_running(run_dir)
    if not alive and run["status"] in ("finished", "failed", "cancelled"):
        raise CatalogError(f"run {run['id']} already ended ({run['status']}); nothing to cancel")
    job = slurm.read_record(run_dir)
    if alive:
        launcher.terminate(run_dir, grace_s=grace_s)
    catalog.ingest(run["id"])
    if catalog.get_run(run["id"])["status"] not in ("finished", "failed", "cancelled"):
        message = "cancelled" if alive else "cancelled (no process was running)"
        if alive and job is not None:
            message = f"cancelled (scancel {job['job_id']})"
        if run_dir.is_dir():
            append_event(run_dir, "cancelled", run_id=run["id"], message=message,
                         signal="SIGKILL" if alive and job is None else None)
            catalog.ingest(run["id"])
        if catalog.get_run(run["id"])["status"] != "cancelled":
            catalog.set_status(run["id"], "cancelled", message)
    return catalog.get_run(run["id"])


def resume_run(catalog: Catalog, ref: str, gpus: Optional[str] = None,
               share: Optional[bool] = None, *, backend: Optional[str] = None,
               slurm_args: Sequence[str] = ()) -> dict:
    """Continue a lost/cancelled/failed run from its last checkpoint under the same id (the
    engine resumes from the newest loadable checkpoint in the run directory), here behind the
    GPU queue or as a new Slurm job (``backend="slurm"``; GPU count: ``gpus``, else the
    former job's)."""
    request, slurm_request = None, None
    if slurm.check_backend(backend) == "slurm":
        if gpus is None:
            former = slurm.read_record(Path(catalog.get_run(ref)["run_dir"]))
            gpus = str(former.get("gpus") or "cpu") if former else None
        slurm_request = _slurm_request(gpus, bool(share), slurm_args)
    else:
        _local_only(slurm_args)
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
    launch_training(catalog, run, gpus=request.text() if request else None, share=share,
                    slurm_request=slurm_request)
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
