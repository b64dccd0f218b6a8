"""GPUs of this box and the OS-level locks that share them out (the GPU queue, no daemon).

Each GPU ``N`` has a lock file ``$ADVLT_HOME/gpus/gpu<N>.lock``. A run holds an exclusive
``flock`` on the GPUs it uses (a shared one with ``--share``); the lock belongs to the open file
description, which the waiter hands to the engine across ``exec``, so the kernel frees the GPU
the moment the engine dies — crashed, ``kill -9``-ed or finished — with nothing to clean up.

GPUs are found without torch (the manager must start fast): ``ADVLT_FAKE_GPUS=N`` (tests), else
``nvidia-smi -L``, else ``/proc/driver/nvidia/gpus``. Stdlib only.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

FAKE_ENV = "ADVLT_FAKE_GPUS"
LOCK_FOLDER = "gpus"


class GpuSpecError(ValueError):
    """A ``--gpus`` value that cannot be satisfied on this machine (message says why)."""


@dataclass(frozen=True)
class GpuRequest:
    """What ``--gpus`` asked for: ``auto`` (the first free GPU, or the CPU when there is none),
    ``cpu``, or explicit indices (all of them at once)."""

    mode: str  # "auto" | "cpu" | "list"
    indices: tuple[int, ...] = ()
    share: bool = False  # several runs may use the same GPU(s)

    def text(self) -> str:
        return self.mode if self.mode != "list" else ",".join(map(str, self.indices))


def discover_gpus() -> list[int]:
    """Indices of this machine's NVIDIA GPUs (empty on a CPU-only machine)."""
    fake = os.environ.get(FAKE_ENV)
    if fake is not None and fake.strip() != "":
        try:
            return list(range(max(0, int(fake))))
        except ValueError:
            raise GpuSpecError(f"{FAKE_ENV}={fake!r} must be a whole number") from None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            found = [int(m.group(1)) for m in re.finditer(r"^GPU (\d+):", out.stdout, re.M)]
            if found:
                return sorted(found)
    try:
        return list(range(len(os.listdir("/proc/driver/nvidia/gpus"))))
    except OSError:
        return []


def parse_gpu_spec(spec: Optional[str], share: bool = False,
                   available: Optional[list[int]] = None) -> GpuRequest:
    """``auto`` (default), ``cpu``, ``0`` or ``0,1`` → a request, checked against the GPUs of
    this machine (``available``; discovered when None). Raises ``GpuSpecError``."""
    text = (spec or "auto").strip().lower()
    if text in ("auto", ""):
        return GpuRequest("auto", share=share)
    if text in ("cpu", "none"):
        return GpuRequest("cpu")
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise GpuSpecError(f"--gpus {spec!r}: expected auto, cpu, or GPU indices such as 0 or "
                           "0,1")
    indices = tuple(dict.fromkeys(int(p) for p in parts))
    gpus = discover_gpus() if available is None else available
    missing = [i for i in indices if i not in gpus]
    if missing:
        have = ", ".join(map(str, gpus)) if gpus else "none"
        raise GpuSpecError(f"--gpus {spec!r}: no GPU {', '.join(map(str, missing))} on this "
                           f"machine (GPUs found: {have}); use --gpus auto or --gpus cpu")
    return GpuRequest("list", indices, share)


def lock_dir(home: Path) -> Path:
    return Path(home) / LOCK_FOLDER


def lock_path(home: Path, index: int) -> Path:
    return lock_dir(home) / f"gpu{index}.lock"


def _try_lock(home: Path, index: int, share: bool) -> Optional[int]:
    """An open, inheritable descriptor holding GPU ``index``'s lock, or None if it is taken."""
    folder = lock_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(home, index), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if share else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.set_inheritable(fd, True)  # the engine keeps it across exec: the lock dies with it
    return fd


def try_acquire(home: Path, request: GpuRequest,
                available: Optional[list[int]] = None) -> Optional[dict[int, int]]:
    """One non-blocking attempt: ``{gpu index: lock fd}`` when the request can be served now
    (empty for the CPU), else None with nothing held. ``auto`` takes the first free GPU; a list
    takes all of its GPUs or none (holding some while waiting for others could deadlock)."""
    if request.mode == "cpu":
        return {}
    gpus = discover_gpus() if available is None else available
    if request.mode == "auto":
        if not gpus:
            return {}  # a CPU-only machine runs on the CPU at once
        for index in gpus:
            fd = _try_lock(home, index, request.share)
            if fd is not None:
                return {index: fd}
        return None
    held: dict[int, int] = {}
    for index in request.indices:
        fd = _try_lock(home, index, request.share)
        if fd is None:
            release(held)
            return None
        held[index] = fd
    return held


def release(held: dict[int, int]) -> None:
    for fd in held.values():
        try:
            os.close(fd)
        except OSError:
            pass


def gpu_busy(home: Path, index: int) -> bool:
    """Whether some process holds GPU ``index``, shared or not (a non-blocking probe; a waiter
    that tries the GPU at that very instant just tries again on its next poll)."""
    path = lock_path(home, index)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def cuda_visible_devices(held: dict[int, int]) -> str:
    """What the engine sees: the held GPUs, or none at all for a CPU run (an empty value hides
    every GPU, so a ``cpu`` run cannot wander onto one)."""
    return ",".join(str(i) for i in sorted(held))
