"""Evaluation requests: ``advlt eval`` / the TUI's evaluate form → ``python -m engine evaluate``.

A request is ``RUN_DIR/evals/<eval_id>.json`` (format: ``engine/evaluate.py``); the catalog
registers it as a ``queued`` evaluation when it ingests the run. The engine process is started
detached behind the GPU queue, with its own log and pid file (``evals/<eval_id>.log|.pid``), and
reports through the run's ``events.jsonl`` (``eval_started``, ``eval_progress``, ``eval``,
``eval_failed``, ``eval_cancelled``, all carrying ``eval_id``). With the Slurm backend the
engine runs as a Slurm job instead (``evals/<eval_id>.slurm.sh|.slurm.json``, see ``runs.slurm``).
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Union

from presets import loader
from presets.schema import ATTACKS, HeadSpec
from presets.validate import ConfigError, Problem
from runs import gpus as gpu_locks
from runs import launcher, slurm
from runs.catalog import CatalogError
from runs.event_log import append_event
from runs.paths import advlt_home, atomic_write_json

if TYPE_CHECKING:
    from runs.catalog import Catalog

EVALS_FOLDER = "evals"
EVAL_TERMINAL = ("eval", "eval_failed", "eval_cancelled")


def new_eval_id() -> str:
    return time.strftime("e%y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def parse_attacks(attacks: Union[str, Iterable[str]]) -> list[str]:
    """``"fgsm,pgd"``, ``"all"`` or a list → attack names in the canonical order (unknown names
    are kept, for the caller to report)."""
    if isinstance(attacks, str):
        attacks = [a.strip().lower() for a in attacks.split(",") if a.strip()]
    attacks = list(attacks)
    if "all" in attacks:
        return list(ATTACKS)
    known = [a for a in ATTACKS if a in attacks]
    return known + [a for a in dict.fromkeys(attacks) if a not in ATTACKS]


def _checkpoint_problem(catalog: "Catalog", run: dict, checkpoint: Union[str, int]) -> Optional[str]:
    if checkpoint in (None, "last"):
        return None
    text = str(checkpoint)
    if not text.isdigit():
        path = Path(text) if Path(text).is_absolute() else Path(run["run_dir"]) / text
        if text.endswith(".pt") and path.is_file():
            return None
        return f"expected an epoch number, 'last' or a checkpoint file, got {text!r}"
    epochs = {c["epoch"] for c in catalog.run_checkpoints(run["id"])}
    path = Path(run["run_dir"]) / "checkpoints" / f"epoch{int(text)}.pt"
    if int(text) not in epochs and not path.is_file():
        have = ", ".join(str(e) for e in sorted(epochs)) or "none"
        return f"run {run['id']} has no checkpoint of epoch {text} (checkpoints: {have})"
    return None


def request_eval(catalog: "Catalog", ref: str, *, checkpoint: Union[str, int] = "last",
                 attacks: Union[str, Iterable[str]] = ATTACKS, variant: Optional[str] = None,
                 n_ex: Optional[int] = None, protocol: Optional[dict] = None,
                 gpus: Optional[str] = None, share: bool = False, backend: Optional[str] = None,
                 slurm_args: Sequence[str] = ()) -> dict:
    """Write ``RUN_DIR/evals/<id>.json`` and start ``python -m engine evaluate`` detached
    (behind the GPU queue, or as a Slurm job with ``backend="slurm"``: ``gpus`` is then a
    count); returns the request, with ``eval_id``. Validates everything first."""
    on_slurm = slurm.check_backend(backend) == "slurm"
    run = catalog.get_run(ref)
    attack_list = parse_attacks(attacks)
    problems = [Problem("attacks", f"unknown attack {a!r}; allowed: {', '.join(ATTACKS)}, all")
                for a in attack_list if a not in ATTACKS]
    if not attack_list:
        problems.append(Problem("attacks", "choose at least one attack"))
    if n_ex is not None and n_ex <= 0:
        problems.append(Problem("n_ex", f"must be > 0, got {n_ex}"))
    bad_ckpt = _checkpoint_problem(catalog, run, checkpoint)
    if bad_ckpt:
        problems.append(Problem("checkpoint", bad_ckpt))
    if on_slurm:
        if share:
            problems.append(Problem("share", "--share is for the local GPU queue"))
        for check in (lambda: slurm.gres_count(gpus), lambda: slurm.sbatch_options(slurm_args)):
            try:
                check()
            except ConfigError as exc:
                problems += exc.problems
    else:
        if slurm_args:
            problems.append(Problem("slurm_args", "--slurm-arg needs --backend slurm"))
        try:
            request = gpu_locks.parse_gpu_spec(gpus or "auto", share)
        except gpu_locks.GpuSpecError as exc:
            problems.append(Problem("gpus", str(exc)))
    head = None
    if variant is not None:
        preset = loader.get_preset(variant, advlt_home() / "presets")
        body_head = preset.body.get("inference_head")
        if not body_head:
            problems.append(Problem("variant", f"preset {variant!r} has no inference-time head; "
                                    "use an inference preset (kind inference) or a RoBal preset"))
        else:
            head = HeadSpec(**body_head).__dict__
    if problems:
        raise ConfigError(problems, "invalid evaluation request")
    # sbatch must exist before anything is written.
    slurm_request = slurm.prepare(gpus, slurm_args) if on_slurm else None
    run_dir = Path(run["run_dir"])
    if not (run_dir / "config.json").is_file():
        raise CatalogError(f"run {run['id']}: {run_dir / 'config.json'} is missing (run directory "
                           "deleted or moved?)")
    if not catalog.run_checkpoints(run["id"]) and not any((run_dir / "checkpoints").glob("epoch*.pt")):
        raise CatalogError(f"run {run['id']} has no checkpoint to evaluate yet")
    eval_id = new_eval_id()
    spec = {"eval_id": eval_id,
            "checkpoint": (int(checkpoint) if str(checkpoint).isdigit()
                           else checkpoint if checkpoint not in (None, "last") else "last"),
            "attacks": attack_list, "variant": variant, "variant_head": head,
            "protocol": {**(protocol or {}), **({"n_ex": n_ex} if n_ex else {})},
            "created": time.time()}
    spec_path = run_dir / EVALS_FOLDER / f"{eval_id}.json"
    atomic_write_json(spec_path, spec)
    catalog.ingest(run["id"])  # registers the request (status queued) before anything runs
    if slurm_request is not None:
        return {**spec, "pid": None, "spec_path": str(spec_path),
                **_submit_eval(catalog, run, spec_path, eval_id, slurm_request)}
    info = launcher.launch(run_dir, launcher.engine_command(run_dir, "evaluate", str(spec_path)),
                           request.text(), share=share, eval_id=eval_id,
                           log_name=f"{EVALS_FOLDER}/{eval_id}.log",
                           pid_name=f"{EVALS_FOLDER}/{eval_id}.pid")
    return {**spec, "pid": info["pid"], "spec_path": str(spec_path)}


def _submit_eval(catalog: "Catalog", run: dict, spec_path: Path, eval_id: str,
                 request: slurm.SlurmRequest) -> dict:
    run_dir = Path(run["run_dir"])
    try:
        record = slurm.submit(run_dir, launcher.engine_command(run_dir, "evaluate", str(spec_path)),
                              request, job_name=f"advlt-{eval_id}",
                              log_name=f"{EVALS_FOLDER}/{eval_id}.log",
                              pid_name=f"{EVALS_FOLDER}/{eval_id}.pid")
    except slurm.SlurmError as exc:
        # The request is already registered: end it, so it does not wait forever as queued.
        append_event(run_dir, "eval_failed", run_id=run["id"], eval_id=eval_id, message=str(exc))
        catalog.ingest(run["id"])
        raise
    return {"job_id": record["job_id"]}


def eval_process_alive(run_dir: Path, eval_id: str) -> bool:
    return launcher.is_running(Path(run_dir) / EVALS_FOLDER, f"{eval_id}.pid")


def terminate_eval(run_dir: Path, eval_id: str, grace_s: float = launcher.GRACE_S) -> bool:
    return launcher.terminate(Path(run_dir) / EVALS_FOLDER, grace_s, f"{eval_id}.pid")
