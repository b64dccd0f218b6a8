"""What a user can do to runs — the one library both the CLI and the TUI call.

Each function validates first and raises ``ConfigError`` / ``CatalogError`` with a clear message
before anything is written.
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Iterable, Optional

from presets import loader
from presets.schema import ATTACKS, HeadSpec, RunConfig
from presets.validate import ConfigError, Problem
from runs import launcher
from runs.catalog import Catalog, CatalogError
from runs.paths import advlt_home, atomic_write_json

ENDED = ("finished", "failed", "cancelled", "lost")


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
              seed: Optional[int] = None) -> dict:
    """Resolve, record (status ``queued``) and launch a training run detached."""
    parent = parent_of(catalog, parent_ref) if parent_ref else None
    cfg = resolve_run_config(preset, dataset, epochs=epochs, data_root=data_root, sets=sets,
                             parent=parent, seed=seed)
    run = launcher.create_run(catalog, cfg, name=name, gpus=gpus)
    launch_training(catalog, run)
    return catalog.get_run(run["id"])


def launch_training(catalog: Catalog, run: dict) -> None:
    run_dir = Path(run["run_dir"])
    gpus = run.get("gpus")
    info = launcher.spawn(run_dir, launcher.engine_command(run_dir),
                          cuda_devices=None if gpus in (None, "auto") else gpus)
    catalog.set_process(run["id"], info["pid"], info["pgid"], info["start_time"])


def cancel_run(catalog: Catalog, ref: str, grace_s: float = 10.0) -> dict:
    """SIGTERM the run's process group, SIGKILL after ``grace_s``; the run ends ``cancelled``."""
    run = catalog.get_run(ref)
    run_dir = Path(run["run_dir"])
    was_alive = launcher.terminate(run_dir, grace_s=grace_s)
    catalog.ingest(run["id"])
    run = catalog.get_run(run["id"])
    if run["status"] not in ("finished", "failed", "cancelled"):
        catalog.set_status(run["id"], "cancelled",
                           "cancelled" if was_alive else "cancelled (no process was running)")
    return catalog.get_run(run["id"])


def resume_run(catalog: Catalog, ref: str) -> dict:
    """Continue a lost/cancelled/failed run from its last checkpoint under the same id."""
    run = catalog.get_run(ref)
    if run["status"] in ("running", "queued") and launcher.is_running(Path(run["run_dir"])):
        raise CatalogError(f"run {run['id']} is still running; nothing to resume")
    if run["status"] == "finished":
        raise CatalogError(f"run {run['id']} already finished")
    catalog.set_status(run["id"], "queued", "resuming")
    launch_training(catalog, run)
    return catalog.get_run(run["id"])


def new_eval_id() -> str:
    return time.strftime("e%y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def request_eval(catalog: Catalog, ref: str, *, checkpoint: str = "last",
                 attacks: Iterable[str] = ATTACKS, variant: Optional[str] = None,
                 n_ex: Optional[int] = None, protocol: Optional[dict] = None) -> dict:
    """Write ``RUN_DIR/evals/<id>.json`` and start ``python -m engine evaluate`` detached."""
    run = catalog.get_run(ref)
    attacks = list(attacks)
    problems = [Problem("attacks", f"unknown attack {a!r}; allowed: {', '.join(ATTACKS)}")
                for a in attacks if a not in ATTACKS]
    if n_ex is not None and n_ex <= 0:
        problems.append(Problem("n_ex", f"must be > 0, got {n_ex}"))
    head = None
    if variant is not None:
        preset = loader.get_preset(variant, user_preset_dir())
        body_head = preset.body.get("inference_head")
        if not body_head:
            problems.append(Problem("variant", f"preset {variant!r} has no inference-time head; "
                                    "use an inference preset (kind inference) or a RoBal preset"))
        else:
            head = HeadSpec(**body_head).__dict__
    if problems:
        raise ConfigError(problems, "invalid evaluation request")
    if not catalog.run_checkpoints(run["id"]):
        raise CatalogError(f"run {run['id']} has no checkpoint to evaluate yet")
    eval_id = new_eval_id()
    spec = {"eval_id": eval_id, "checkpoint": checkpoint, "attacks": attacks,
            "variant": variant, "variant_head": head,
            "protocol": {**(protocol or {}), **({"n_ex": n_ex} if n_ex else {})},
            "created": time.time()}
    run_dir = Path(run["run_dir"])
    spec_path = run_dir / "evals" / f"{eval_id}.json"
    atomic_write_json(spec_path, spec)
    launcher.spawn(run_dir, launcher.engine_command(run_dir, "evaluate", str(spec_path)),
                   log_name=f"evals/{eval_id}.log", pid_name=f"evals/{eval_id}.pid")
    return spec
