"""``python -m engine evaluate RUN_DIR SPEC.json``: evaluate one checkpoint of a run
(METHODS.md §5, §10; inference-time heads §6 rows 13–20).

The request (``RUN_DIR/evals/<eval_id>.json``, written by the manager)::

    {"eval_id": "...", "checkpoint": "last" | "checkpoints/epochN.pt" | N,
     "attacks": ["fgsm", "pgd", "cw", "mim", "aa"], "variant": "post-cdt" | null,
     "variant_head": {"head": ..., "head_opt": {...}} | null, "protocol": {EvalConfig overrides}}

Results (``eval`` event): ``clean``, ``fgsm``, ``pgd5``/``pgd10``/``pgd20``, ``cw``, ``mim``,
``aa`` and ``worst`` (pointwise worst case over the clean pass and every attack run), each with
accuracy, per-class recall/precision/F1, group means and the worst class. Differences from the
reference, on purpose: a fixed seed (explicit generators, AutoAttack seeded), an optional seeded
class-balanced subset (``n_ex``), and a clean error always counts as a robust error.

Events (``RUN_DIR/events.jsonl``, shared with a training process through the flock-safe
``EventWriter``): ``eval_started``, throttled ``eval_progress``, ``eval``; ``eval_failed`` (exit 1)
or ``eval_cancelled`` (SIGTERM, exit 143). AutoAttack keeps a resume state in
``evals/<eval_id>.aa_state`` while it runs, so a killed evaluation restarted with the same
request goes on where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch

from engine import checkpoint as ckpt
from engine.autoattack_adapter import AA_LISTS, AutoAttackUnavailable, aa_version_string
from engine.datasets import DataBundle, load_dataset
from engine.eval_report import (
    Progress, attack_metrics, class_groups, indices_digest, masking_flags, protocol_hash,
    robust_predictions, worst_case_predictions,
)
from engine.eval_suite import SuiteParams, clean_predictions, pgd_keys, run_aa_attack, run_gradient_attack
from engine.events import EventWriter
from engine.loaders import balanced_subset, to_unit_float
from engine.variants import (
    eval_head_options, evaluation_network, load_for_evaluation, logit_scale_warning,
    resolve_head_spec, training_logit_scale,
)
from presets.schema import ATTACKS, AA_VERSIONS, EvalConfig, RunConfig

EVALS_FOLDER = "evals"
CANCEL_EXIT_CODE = 143


class EvalCancelled(Exception):
    """Raised from the SIGTERM handler so the evaluation can write its final event."""


def read_run_config(run_dir: Path) -> RunConfig:
    return RunConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on ``device`` with frozen parameters (evaluation never trains, so autograd need
    not track weights); channels-last memory on CUDA, where convolutions run faster in it."""
    model.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def resolve_protocol(cfg: RunConfig, spec: Mapping[str, Any]) -> tuple[EvalConfig, list[str]]:
    """The run's ``EvalConfig`` with the request's overrides, and the attacks in canonical order."""
    overrides = dict(spec.get("protocol") or {})
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown protocol keys {unknown}; allowed: {', '.join(sorted(known))}")
    if isinstance(overrides.get("attacks"), list):
        overrides["attacks"] = tuple(overrides["attacks"])
    ev = dataclasses.replace(cfg.eval, **overrides)
    requested = spec.get("attacks") or list(ev.attacks)
    if requested == "all" or requested == ["all"]:
        requested = list(ATTACKS)
    if isinstance(requested, str):
        requested = [a.strip() for a in requested.split(",") if a.strip()]
    bad = [a for a in requested if a not in ATTACKS]
    if bad:
        raise ValueError(f"unknown attacks {bad}; allowed: {', '.join(ATTACKS)}")
    for key in ("eps", "step_size"):
        if not float(getattr(ev, key)) > 0:
            raise ValueError(f"protocol {key} must be positive, got {getattr(ev, key)}")
    for key in ("num_steps", "batch_size"):
        if int(getattr(ev, key)) < 1:
            raise ValueError(f"protocol {key} must be at least 1, got {getattr(ev, key)}")
    if ev.n_ex is not None and int(ev.n_ex) < 1:
        raise ValueError(f"protocol n_ex must be at least 1 or null, got {ev.n_ex}")
    if ev.aa_version not in AA_VERSIONS:
        raise ValueError(f"unknown aa_version {ev.aa_version!r}; allowed: {', '.join(AA_VERSIONS)}")
    return ev, [a for a in ATTACKS if a in requested]


def resolve_checkpoint(run_dir: Path, which: Any) -> Path:
    """``"last"`` (newest ``checkpoints/epochN.pt``), an epoch number, or a path in the run."""
    run_dir = Path(run_dir)
    if which is None or which == "last":
        found = ckpt.list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"{run_dir} has no checkpoints/epoch*.pt to evaluate")
        return found[-1][1]
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        path = ckpt.checkpoint_path(run_dir, int(which))
    else:
        path = Path(which) if Path(which).is_absolute() else run_dir / which
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {which!r} not found ({path})")
    return path


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def _load_bundle(cfg: RunConfig) -> DataBundle:
    ds = cfg.dataset
    return load_dataset(ds.name, ds.imbalance_ratio, ds.data_root, ds.download)


def _aa_state(run_dir: Path, eval_id: str, identity: dict) -> tuple[Path, Path, str | None]:
    """AutoAttack's resume file ``evals/<eval_id>.aa_state`` and its sidecar ``.aa_meta``.

    The adapter's state recognises other images, eps, seed or attacks, but not another model; the
    sidecar records the checkpoint's sha256 and the head, so a state left by an attempt on another
    checkpoint (a request for "last" while training went on) is discarded, not resumed.
    """
    folder = Path(run_dir) / EVALS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    state, meta = folder / f"{eval_id}.aa_state", folder / f"{eval_id}.aa_meta"
    blob = json.dumps(identity, sort_keys=True, default=str)
    note = None
    if state.exists() and (not meta.exists() or meta.read_text(encoding="utf-8") != blob):
        state.unlink()
        note = "discarded an AutoAttack resume state that belonged to another checkpoint or head"
    tmp = meta.with_name(f".{meta.name}.tmp-{os.getpid()}")
    tmp.write_text(blob, encoding="utf-8")
    os.replace(tmp, meta)
    return state, meta, note


def _select_images(bundle: DataBundle, n_ex: int | None, seed: int) -> tuple[torch.Tensor, ...]:
    """Indices, [0, 1] images and labels of the evaluated test images (all, or a balanced subset)."""
    labels = bundle.test_labels.long()
    indices = (balanced_subset(labels, int(n_ex), bundle.num_classes, seed) if n_ex
               else torch.arange(len(labels)))
    return indices, to_unit_float(bundle.test_images[indices], bundle.pixel_max), labels[indices]


def _autoattack_info(ev: EvalConfig, num_classes: int) -> tuple[dict | None, str | None]:
    """Package/version/attack list for the protocol, or why AutoAttack cannot run here."""
    if num_classes < 4:
        return None, f"AutoAttack skipped: APGD-T needs at least 4 classes, the run has {num_classes}"
    try:
        package = aa_version_string()
    except AutoAttackUnavailable as exc:
        return None, f"AutoAttack skipped: {exc}"
    return {"package": package, "version": ev.aa_version, "attacks": list(AA_LISTS[ev.aa_version])}, None


def evaluate_checkpoint(
    run_dir: Path, spec: Mapping[str, Any], writer: EventWriter | None = None,
    bundle: DataBundle | None = None,
) -> dict:
    """Evaluate the checkpoint a request names; returns the ``eval`` event payload.

    With a ``writer``, emits ``eval_started``, throttled ``eval_progress`` and ``eval``; without
    one it only computes. ``bundle`` skips loading the dataset (it must be the run's dataset).
    Errors propagate (``evaluate_main`` turns them into ``eval_failed``).
    """
    run_dir = Path(run_dir)
    eval_id = str(spec.get("eval_id") or "eval")
    cfg = read_run_config(run_dir)
    ev, attack_list = resolve_protocol(cfg, spec)
    variant, head_spec = resolve_head_spec(cfg, spec.get("variant"), spec.get("variant_head"))
    ckpt_path = resolve_checkpoint(run_dir, spec.get("checkpoint", "last"))
    checkpoint_rel = _relative(ckpt_path, run_dir)
    if writer is not None:
        writer.emit("eval_started", eval_id=eval_id, checkpoint=checkpoint_rel, variant=variant)
    progress = Progress(writer, eval_id)

    device = pick_device(cfg.device)
    bundle = bundle if bundle is not None else _load_bundle(cfg)
    counts, num_classes = bundle.counts, bundle.num_classes
    checkpoint_sha = ckpt.sha256_file(ckpt_path)
    model = evaluation_network(cfg, head_spec, counts, bundle.input_shape[0], bundle.input_shape[-1])
    warnings = load_for_evaluation(model, ckpt.load_checkpoint(ckpt_path, "cpu")["model"])
    prepare_model(model, device)
    head_name, head_opt = eval_head_options(cfg.model, head_spec)
    if head_name == "tde_sim" and not head_opt.get("posthoc", False):
        warnings.append("tde_sim without posthoc updates moving_ed on every forward: results depend "
                        "on evaluation order (METHODS.md 9.1 item 7)")
    scale_warning = logit_scale_warning(model.logit_scale, training_logit_scale(cfg, counts))
    if scale_warning:
        warnings.append(scale_warning)
    indices, x, y = _select_images(bundle, ev.n_ex, ev.seed)
    aa_info = None
    if "aa" in attack_list:
        aa_info, skipped = _autoattack_info(ev, num_classes)
        if skipped:
            warnings.append(skipped)
            attack_list = [a for a in attack_list if a != "aa"]

    params = SuiteParams(float(ev.eps), float(ev.step_size), int(ev.num_steps), float(ev.cw_kappa),
                         float(ev.mim_decay), int(ev.batch_size), int(ev.seed), ev.aa_version)
    clean = clean_predictions(model, x, y, params.batch_size, device, progress.update)
    preds: dict[str, torch.Tensor] = {"clean": clean}
    zero_grad_frac = None
    aa_files: tuple[Path, ...] = ()
    for name in attack_list:
        if name == "aa":
            state, meta, note = _aa_state(run_dir, eval_id, {"checkpoint_sha256": checkpoint_sha,
                                                             "head": head_name, "head_opt": head_opt})
            aa_files = (state, meta)
            warnings += [note] if note else []
            raw = {"aa": run_aa_attack(model, x, y, params, device, progress.update, state,
                                       int((clean == y).sum()))}
        else:
            raw, frac = run_gradient_attack(name, model, x, y, params, device, progress.update)
            zero_grad_frac = frac if name == "fgsm" else zero_grad_frac
        for key, pred in raw.items():
            preds[key] = robust_predictions(pred, clean, y)
    preds["worst"] = worst_case_predictions(preds, y)

    groups = class_groups(counts)
    results = {key: attack_metrics(pred, y, num_classes, groups) for key, pred in preds.items()}
    accuracy = {key: r["accuracy"] for key, r in results.items()}
    flags, flag_warnings = masking_flags(accuracy, zero_grad_frac, pgd_keys(params.num_steps)[-1])
    warnings += flag_warnings

    protocol = {
        "norm": "Linf", "eps": params.eps, "step_size": params.step_size, "num_steps": params.num_steps,
        "restarts": 1, "rand_start": "symmetric", "cw_kappa": params.cw_kappa,
        "mim_decay": params.mim_decay, "attacks": attack_list, "autoattack": aa_info,
        "dataset": cfg.dataset.name, "imbalance_ratio": cfg.dataset.imbalance_ratio,
        "n_images": len(y), "n_ex": ev.n_ex, "subset_sha256": indices_digest(indices),
        "seed": params.seed, "robust_counts_clean_errors": True,
        "variant": variant, "head": head_name, "head_opt": head_opt,
        "checkpoint": checkpoint_rel, "checkpoint_sha256": checkpoint_sha,
        "batch_size": params.batch_size, "device": device.type, "torch": torch.__version__,
    }
    payload = {
        "eval_id": eval_id, "checkpoint": checkpoint_rel, "variant": variant, "protocol": protocol,
        "protocol_hash": protocol_hash(protocol), "results": results, "warnings": warnings,
        "flags": flags,
    }
    if writer is not None:
        writer.emit("eval", **payload)
    for path in aa_files:  # finished: nothing left to resume
        path.unlink(missing_ok=True)
    return payload


def _read_spec(spec_path: Path) -> dict:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path}: an evaluation request must be a JSON object")
    spec.setdefault("eval_id", Path(spec_path).stem)
    return spec


def evaluate_main(run_dir: Path, spec_path: Path, mirror: bool = False) -> int:
    """Entry point of ``python -m engine evaluate``: 0 done, 1 failed, 143 cancelled (SIGTERM)."""
    run_dir = Path(run_dir)
    writer = EventWriter(run_dir / "events.jsonl", run_dir.name, mirror=mirror)
    eval_id = Path(spec_path).stem

    def on_sigterm(signum: int, frame: Any) -> None:
        raise EvalCancelled(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        spec = _read_spec(spec_path)
        eval_id = str(spec["eval_id"])
        evaluate_checkpoint(run_dir, spec, writer)
        return 0
    except (EvalCancelled, KeyboardInterrupt) as exc:
        writer.emit("eval_cancelled", eval_id=eval_id, signal=str(exc) or "SIGINT", pid=os.getpid())
        return CANCEL_EXIT_CODE
    except Exception as exc:  # every failure becomes an eval_failed event and a non-zero exit
        tail = traceback.format_exc().splitlines()[-25:]
        writer.emit("eval_failed", eval_id=eval_id, message=f"{type(exc).__name__}: {exc}",
                    traceback="\n".join(tail))
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        writer.close()
