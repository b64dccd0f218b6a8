"""AutoAttack behind one small adapter (METHODS.md §5.3, §10); the only module that imports
``pyautoattack`` (Croce & Hein, ICML 2020; PyPI repackaging 0.2.x of fra31/auto-attack).

L∞ only, inputs in [0, 1], the model returns logits. Two attack lists:

* ``reference``: APGD-CE then APGD-T, as the RoBal reference ran it (FAB-T and Square dropped);
* ``standard``: the full standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square).

Both use the *standard-version* sub-attack settings (see :func:`_standard_settings`). Unlike the
reference, the seed is explicit (default 0) and the global torch RNG and any active trace function
are restored afterwards (AutoAttack reseeds the global RNG and its dynamic-defence check calls
``sys.settrace(None)``).

Resuming: pyautoattack 0.2.0's own ``state_path`` cannot resume. Its state file stores the attack
set through ``json.dump(default=str)``, so a reloaded state never equals the requested set and
``run_standard_evaluation`` raises ``ValueError``; the restored path would also hit an unbound
``y_adv``, and the state never holds the adversarial images found before the interruption. The
adapter therefore keeps its own state file (``state_path``; ``torch.save`` dict, loaded with
``weights_only=True``): clean/robust flags, the adversarial rows found so far, the current attack
and the points it still has to visit. It feeds AutoAttack one batch of still-robust points at a
time, exactly the batches AutoAttack forms itself, and since every APGD/FAB/Square call reseeds
with the fixed seed, an interrupted and resumed evaluation returns the same ``x_adv`` as an
uninterrupted one.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

AA_LISTS: dict[str, list[str]] = {
    "reference": ["apgd-ce", "apgd-t"],
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
}
STATE_FORMAT = "advlt-autoattack-state/1"
_DLR_ATTACKS = ("apgd-t", "apgd-dlr")  # the targeted DLR loss needs at least 4 classes


class AutoAttackUnavailable(RuntimeError):
    """The ``pyautoattack`` package is not installed."""


def _package() -> Any:
    try:
        import pyautoattack
    except ImportError as exc:
        raise AutoAttackUnavailable(
            "AutoAttack needs the 'pyautoattack' package (pip install pyautoattack)"
        ) from exc
    return pyautoattack


def aa_version_string() -> str:
    """Package name and version, e.g. ``"pyautoattack 0.2.0"`` (protocol fingerprint)."""
    pkg = _package()
    version = getattr(pkg, "__version__", None) or importlib.metadata.version("pyautoattack")
    return f"pyautoattack {version}"


def _standard_settings(aa: Any, num_classes: int) -> None:
    """Give an ``AutoAttack(version='custom')`` the standard-version Linf settings.

    pyautoattack's constructor builds every sub-attack with 5 restarts / 100 iterations and only
    ``_set_version('standard')`` (run for non-custom versions) lowers them; that method also
    overwrites ``attacks_to_run``, so for a custom list the same attributes are set here by hand,
    as in ``AutoAttack._set_version`` for Linf: APGD-CE 1 restart; APGD-T 9 target classes × 1
    restart; FAB-T 9 targets × 1 restart; Square 5 000 queries; APGD iterations stay at the
    constructor's 100. Target classes are capped at C − 1 so small label sets still work (the
    reference's CIFAR runs have C ≥ 10, where the cap changes nothing).
    """
    targets = min(9, num_classes - 1)
    aa.apgd.n_restarts = 1
    aa.apgd.n_iter = 100
    aa.apgd_targeted.n_restarts = 1
    aa.apgd_targeted.n_iter = 100
    aa.apgd_targeted.n_target_classes = targets
    aa.fab.n_restarts = 1
    aa.fab.n_target_classes = targets
    aa.square.n_queries = 5000


@dataclass
class _State:
    attack_index: int  # attacks before this one are finished
    robust: Tensor  # bool [N] on CPU: correct on clean and under every attack so far
    pending: Tensor | None  # int64 indices the current attack has still to visit (None: not started)
    broken: Tensor  # bool [N] on CPU: an attack found an adversarial image for this point
    x_adv: Tensor  # [N, ...] on x's device: x, with the adversarial images found so far


def _fingerprint(x: Tensor, y: Tensor, attacks: list[str], eps: float, seed: int | None) -> dict:
    # Cheap checksums that notice other images, another order or other labels.
    per_image = x.detach().flatten(1).sum(1, dtype=torch.float64).cpu()
    weights = torch.arange(1, len(per_image) + 1, dtype=torch.float64)
    return {
        "attacks": list(attacks),
        "eps": float(eps),
        "seed": seed,
        "shape": list(x.shape),
        "x_sum": float(per_image.sum()),
        "x_weighted": float((per_image * weights).sum()),
        "y_weighted": int((y.detach().cpu().long() * torch.arange(1, len(y) + 1)).sum()),
    }


def _same_fingerprint(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, float):
            if not math.isclose(value, b[key], rel_tol=1e-9, abs_tol=1e-9):
                return False
        elif value != b[key]:
            return False
    return True


def _load_state(path: Path, fingerprint: dict, x: Tensor) -> _State | None:
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an advlt AutoAttack state file")
    if not _same_fingerprint(saved["fingerprint"], fingerprint):
        raise ValueError(
            f"{path} belongs to a different AutoAttack evaluation (data, eps, seed or attacks differ)"
        )
    broken = torch.zeros(len(x), dtype=torch.bool)
    broken[saved["adv_index"]] = True
    x_adv = x.clone()
    x_adv[saved["adv_index"].to(x.device)] = saved["adv_rows"].to(device=x.device, dtype=x.dtype)
    return _State(saved["attack_index"], saved["robust"], saved["pending"], broken, x_adv)


def _save_state(path: Path, state: _State, fingerprint: dict) -> None:
    # Only the broken rows are stored: robust points keep their clean image.
    adv_index = torch.nonzero(state.broken).flatten()
    payload = {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "attack_index": state.attack_index,
        "robust": state.robust,
        "pending": state.pending,
        "adv_index": adv_index,
        "adv_rows": state.x_adv[adv_index.to(state.x_adv.device)].cpu(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _isolated(device: torch.device) -> Iterator[None]:
    """Restore the global torch RNG and the trace function that AutoAttack clobbers."""
    tracer = sys.gettrace()
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        sys.settrace(tracer)


def _resolve_device(module: nn.Module, x: Tensor, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return x.device


def _clean_flags(module: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Tensor:
    flags = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            flags[start:start + batch_size] = (module(xb).argmax(1) == yb).cpu()
    return flags


def run_autoattack(
    forward_module: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    version: str = "reference",
    seed: int | None = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    state_path: str | os.PathLike | None = None,
    checkpoint_every_s: float = 60.0,
) -> Tensor:
    """AutoAttack (L∞, inputs in [0, 1]) on ``(x, y)``; returns detached ``x_adv`` on ``x``'s device.

    ``forward_module`` maps images to logits and must already be in eval mode on ``device``
    (default: the device of its parameters, else of ``x``). Points misclassified on clean inputs
    or never broken come back unchanged, as in AutoAttack. ``seed=None`` reproduces the
    reference's time-based seed. ``state_path``: resumable evaluation state (see module doc),
    written at most every ``checkpoint_every_s`` seconds and after each attack; a call on a
    finished state returns the stored result without attacking again.
    """
    if version not in AA_LISTS:
        raise ValueError(f"unknown AutoAttack version {version!r}; allowed: {', '.join(AA_LISTS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    attacks = AA_LISTS[version]
    pkg = _package()
    x, y = x.detach(), y.detach()
    if len(x) == 0:
        return x.clone()
    device = _resolve_device(forward_module, x, device)
    with torch.no_grad():
        num_classes = int(forward_module(x[:1].to(device)).shape[1])
    if num_classes < 4 and any(a in _DLR_ATTACKS for a in attacks):
        raise ValueError(f"APGD-T (targeted DLR loss) needs at least 4 classes, the model has {num_classes}")

    path = Path(state_path) if state_path is not None else None
    fingerprint = _fingerprint(x, y, attacks, eps, seed)
    state = _load_state(path, fingerprint, x) if path is not None else None

    aa = pkg.AutoAttack(
        forward_module, attacks=list(attacks), device=device, eps=eps, norm="Linf", seed=seed,
        version="custom",
    )
    _standard_settings(aa, num_classes)

    last_save = time.monotonic()

    def checkpoint(force: bool) -> None:
        nonlocal last_save
        if path is not None and (force or time.monotonic() - last_save >= checkpoint_every_s):
            _save_state(path, state, fingerprint)
            last_save = time.monotonic()

    with _isolated(device):
        if state is None:
            clean = _clean_flags(forward_module, x, y, batch_size, device)
            state = _State(0, clean, None, torch.zeros(len(x), dtype=torch.bool), x.clone())
            checkpoint(force=True)
        while state.attack_index < len(attacks):
            aa.attacks_to_run = [attacks[state.attack_index]]
            if state.pending is None:
                state.pending = torch.nonzero(state.robust).flatten()
            while state.pending.numel():
                chunk = state.pending[:batch_size]
                idx = chunk.to(x.device)
                x_chunk, y_pred = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
                broken = y_pred.cpu() != y[idx].cpu()
                hit = chunk[broken]
                state.robust[hit] = False
                state.broken[hit] = True
                state.x_adv[hit.to(x.device)] = x_chunk[broken.to(x_chunk.device)].to(x.device, x.dtype)
                state.pending = state.pending[batch_size:]
                checkpoint(force=False)
            state.attack_index += 1
            state.pending = None
            checkpoint(force=True)

    return state.x_adv.detach()
