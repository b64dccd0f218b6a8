"""Checkpoints: everything needed to resume, written atomically, loaded with weights_only=True.

Layout (a plain dict of tensors and primitives, so ``weights_only=True`` can load it):
``format``, ``epoch``, ``model`` (state dict), ``optimizer``, ``scheduler``, ``loader``, ``rng``
(torch CPU/CUDA and Python ``random`` states), ``config`` (the resolved run config).
The reference's layout — a bare state dict with ``model.module.`` prefixes — also loads.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import torch

FORMAT = "advlt-checkpoint-1"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _python_state(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict) -> str:
    """Write ``payload`` to ``path`` via a temp file + fsync + rename; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, **payload}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return sha256_file(path)


class CheckpointError(RuntimeError):
    pass


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint (ours or the reference's bare state dict) safely."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated / corrupted / not a torch file
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot load checkpoint {path}: not a state dict")
    if data.get("format") == FORMAT:
        return data
    if "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    return {"format": "reference", "model": data, "epoch": _epoch_from_name(path)}


def _epoch_from_name(path: Path) -> Optional[int]:
    match = re.search(r"epoch(\d+)\.pt$", str(path))
    return int(match.group(1)) if match else None


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch{epoch}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("epoch*.pt"):
        epoch = _epoch_from_name(path)
        if epoch is not None:
            found.append((epoch, path))
    return sorted(found)


def latest_loadable(run_dir: Path, map_location: Any = "cpu") -> tuple[Optional[dict], list[str]]:
    """The newest checkpoint that loads; corrupted ones are skipped and reported."""
    skipped = []
    for epoch, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location), skipped
        except CheckpointError as exc:
            skipped.append(str(exc))
    return None, skipped
