"""One run, many processes: ``torchrun`` + DistributedDataParallel (DESIGN.md "Scale").

The reference wrapped its model in ``nn.DataParallel`` over every visible GPU and raised "not
implemented" for distributed launch (METHODS.md §4.1, §9.2 item 16). Here ``python -m engine
train RUN_DIR`` started by ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK`` in the
environment) trains one run on ``WORLD_SIZE`` processes:

* process group: NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on the CPU;
* data: every rank draws the *same* global batch order (same seeded shuffle / class-aware sampler
  / augmentation generators) and keeps its slice of each global batch — global batch
  ``train.batch_size``, ``batch_size / world_size`` per rank — so the global batch, the steps per
  epoch and the learning rate equal a single-process run's;
* model: DDP averages gradients over ranks. For per-sample-mean losses this is the gradient of the
  global batch; losses that do not decompose over equal shards (weighted means such as DRW's
  class-weighted CE, batch-level norms such as the ALP regularisers) differ slightly;
* BatchNorm: per-rank batch statistics by default, like the reference's DataParallel (§9.1 item
  13: BN sees ``batch_size / n_gpus`` images); ``train.sync_bn = true`` converts to SyncBatchNorm
  (CUDA only). DDP broadcasts rank 0's buffers at each train forward;
* attack randomness: rank ``r`` draws its random starts from its own generator (seed offset by
  ``r``), so shards do not share noise; rank 0 keeps the single-process seed;
* rank 0 alone writes events and checkpoints and runs the per-epoch evaluation; the other ranks
  wait at a barrier, and report only their own failures (a ``failed`` event tagged ``rank``).
"""
from __future__ import annotations

import ctypes
import datetime
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from engine.events import EventWriter

# A peer waits at a barrier while rank 0 evaluates and checkpoints: allow long evaluations.
TIMEOUT_ENV = "ADVLT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0
# Rank r's attack generator seed: run seed + r × this (rank 0 = the single-process seed).
RANK_SEED_STRIDE = 1_000_003


class DistributedConfigError(ValueError):
    """A run config that cannot be trained on this torchrun launch (message says why)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the launch (the defaults: a plain single process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> DistContext:
    """The launch as torchrun describes it in the environment (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    return DistContext(rank=int(os.environ["RANK"]),
                       local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
                       world_size=world)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """``batch_size / world_size``; raises :class:`DistributedConfigError` unless it divides."""
    if world_size < 1:
        raise DistributedConfigError(f"world size must be ≥ 1, got {world_size}")
    if batch_size % world_size:
        raise DistributedConfigError(
            f"train.batch_size {batch_size} is not divisible by the {world_size} processes of "
            f"this torchrun launch: the global batch is split evenly over the processes; use a "
            f"batch size that is a multiple of {world_size} (--set train.batch_size=...) or "
            f"another number of processes")
    return batch_size // world_size


def shard_slice(batch_len: int, ctx: DistContext) -> slice:
    """The rows of a global batch of ``batch_len`` that rank ``ctx.rank`` trains on."""
    per = per_rank_batch(batch_len, ctx.world_size)
    return slice(ctx.rank * per, (ctx.rank + 1) * per)


def _parent_death_signal() -> None:
    """Ask Linux to SIGTERM this worker when torchrun dies (e.g. SIGKILLed after the cancel
    grace period): its workers run in their own sessions and would otherwise be orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def init(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on the CPU); returns this rank's device."""
    if not ctx.enabled:
        return device
    _parent_death_signal()
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, **kwargs)
    return device


def backend_name() -> Optional[str]:
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device,
               sync_bn: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel (``model`` itself for a single process).

    ``sync_bn`` first converts BatchNorm layers to SyncBatchNorm *in place* (same parameters and
    buffers, same state-dict names), which only CUDA implements.
    """
    if not ctx.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise DistributedConfigError(
                "train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation); "
                "set train.sync_bn=false to keep per-rank BatchNorm")
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # only when the root itself is a BatchNorm layer
            raise DistributedConfigError("train.sync_bn: the model's root is a BatchNorm layer")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids and ids[0])


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of a tensor over ranks (itself for a single process); a collective."""
    if not ctx.enabled:
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def attack_seed(seed: int, ctx: DistContext) -> int:
    return seed + RANK_SEED_STRIDE * ctx.rank


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class PeerEvents:
    """The event stream as a rank other than 0 sees it: it writes only its own ``failed``
    event (tagged with its rank), so a run has one stream whatever its world size."""

    def __init__(self, path: Path, run_id: str, rank: int) -> None:
        self.path, self.run_id, self.rank = Path(path), run_id, rank

    def emit(self, type_: str, **data: Any) -> Optional[dict]:
        if type_ != "failed":
            return None
        writer = EventWriter(self.path, self.run_id)
        try:
            return writer.emit(type_, rank=self.rank, **data)
        finally:
            writer.close()

    def close(self) -> None:
        pass


def last_event_is_peer_failure(path: Path) -> bool:
    """True when the stream's last complete line is a peer rank's ``failed`` event: torchrun
    then SIGTERMs rank 0, which must not bury that failure under a ``cancelled``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - (1 << 16)))
            lines = fh.read().split(b"\n")
    except OSError:
        return False
    for raw in reversed(lines):
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        return event.get("type") == "failed" and event.get("rank") not in (None, 0)
    return False
