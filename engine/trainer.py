"""The training loop: ``python -m engine train RUN_DIR``.

Reads ``RUN_DIR/config.json``, trains with the configured mode (METHODS.md §4), streams events
(DESIGN.md: ``started``, ``progress``, ``epoch``, ``checkpoint``, ``warning``, then ``finished`` |
``failed`` | ``cancelled``), checkpoints atomically, and resumes from the newest loadable
checkpoint of the run directory (a corrupted one is skipped with a ``warning``).

Numbering: epochs are absolute — a fine-tune of an 80-epoch parent trains epochs 81, 82, ... and
names its checkpoints ``epoch81.pt``, ...; ``train.milestones``, ``eval_freq`` and ``save_freq``
count this run's own epochs from 1. A resumed run continues bit for bit (on the CPU): model,
optimiser momentum, scheduler, loader/sampler position, attack generator and global RNG states are
all in the checkpoint — unlike the reference, which restarts with a fresh optimiser (§4.5).

Device: CUDA when present, else CPU (``device = "auto"``); tensors follow the run's device. The
precision policy (bf16 autocast + channels_last for the backbone on CUDA) is in
:mod:`engine.train_support`. Started by ``torchrun`` (``WORLD_SIZE`` > 1) the run trains with
DistributedDataParallel, the global batch sharded over the ranks; only rank 0 writes events and
checkpoints and evaluates (:mod:`engine.distributed`).

Exit codes: 0 finished, 1 crashed (``failed`` event with message and traceback tail), 2 invalid
``config.json`` (``failed`` event naming every bad key), 143 SIGTERM / 130 SIGINT (``cancelled``).
"""
from __future__ import annotations

import os
import random
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch

from engine import checkpoint as ckpt
from engine import distributed as ddp
from engine.datasets import load_dataset
from engine.events import EventWriter
from engine.loaders import TrainLoader
from engine.losses import create_loss
from engine.modes import Losses, create_mode
from engine.network import build_network, load_reference_state_dict
from engine.optim import LRScheduler, build_optimizer, set_train_mode
from engine.train_support import (EpochEval, autocast_for, config_changes, configure_device,
                                  evaluate_subset, pick_device, prepare_model, read_config,
                                  uses_amp)
from presets.validate import ConfigError

__all__ = ["Cancelled", "Trainer", "autocast_for", "evaluate_subset", "pick_device",
           "read_config", "train_main", "EpochEval"]

EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143


class Cancelled(Exception):
    """Raised from the SIGTERM handler so the loop can write a final event."""


class Trainer:
    """One run directory's training. ``setup()`` builds everything and restores the newest
    checkpoint; ``run()`` trains the remaining epochs; ``train_main`` adds the terminal event."""

    def __init__(self, run_dir: Path, mirror: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.dist = ddp.env_context()
        self.events: EventWriter | ddp.PeerEvents = (
            EventWriter(self.run_dir / "events.jsonl", self.run_id, mirror=mirror)
            if self.dist.is_main else
            ddp.PeerEvents(self.run_dir / "events.jsonl", self.run_id, self.dist.rank))
        self.final_epoch: Optional[int] = None
        self.final: dict[str, Any] = {}

    def warn(self, message: str, **data: Any) -> None:
        self.events.emit("warning", message=message, **data)

    def setup(self) -> None:
        self.cfg = cfg = read_config(self.run_dir)
        t, ds = cfg.train, cfg.dataset
        if self.dist.enabled:  # before anything heavy: a clear error on every rank
            ddp.per_rank_batch(t.batch_size, self.dist.world_size)
        self.device = ddp.init(self.dist, pick_device(cfg.device))
        configure_device(self.device, cfg.model.backbone)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.bundle = load_dataset(ds.name, ds.imbalance_ratio, ds.data_root, ds.download)
        counts = self.bundle.counts
        channels, size = self.bundle.input_shape[0], self.bundle.input_shape[-1]
        # Reference §2.3: the plain focal loss comes with a prior-initialised FC bias.
        prior_bias = t.loss.name == "focal" and cfg.model.head == "fc"
        self.model = build_network(cfg.model, self.bundle.num_classes, channels, size, counts,
                                   focal_prior_bias=prior_bias)
        prepare_model(self.model, cfg, self.device)
        self.losses = Losses(
            outer=create_loss(t.loss.name, counts, **t.loss.opt).to(self.device),
            adv=create_loss(t.adv_loss.name, counts, **t.adv_loss.opt).to(self.device),
            nat=create_loss(t.nat_loss.name, counts, **t.nat_loss.opt).to(self.device))
        # Checkpoints load on the CPU: RNG and generator states must be CPU tensors, and
        # load_state_dict copies weights and optimiser state onto the model's device.
        state, skipped = ckpt.latest_loadable(self.run_dir, "cpu")
        for message in skipped:
            self.warn(f"skipped unreadable checkpoint: {message}")
        if state is not None and state.get("format") != ckpt.FORMAT:
            self.warn("ignored a checkpoint in the reference layout inside the run directory; "
                      "pass it as the parent checkpoint to start from it")
            state = None
        self.base_epoch = 0  # epochs before this run (the parent's)
        self.parent: Optional[dict] = None
        if cfg.parent_checkpoint and state is None:  # a resume has the weights already
            self._load_parent(Path(cfg.parent_checkpoint))
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = LRScheduler(self.optimizer, t)
        # The loss forwards go through DDP; self.model stays the bare module (attacks,
        # evaluation, state dicts).
        self.train_model = ddp.wrap_model(self.model, self.dist, self.device, t.sync_bn)
        self.loader = TrainLoader(self.bundle, t.batch_size, t.sampler, cfg.seed, self.device,
                                  shard=(self.dist.rank, self.dist.world_size))
        self.generator = torch.Generator(device=self.device).manual_seed(
            ddp.attack_seed(cfg.seed, self.dist))
        self.mode = create_mode(t.mode, model=self.train_model, losses=self.losses,
                                attack=t.attack, mode_opt=t.mode_opt, class_counts=counts,
                                deffer=t.deffer, robal_forwards=t.robal_forwards,
                                generator=self.generator, attack_model=self.model)
        self.start_epoch = self.base_epoch  # the last completed epoch
        self.resumed = state is not None
        if state is not None:
            self._restore(state)

    def _load_parent(self, path: Path) -> None:
        """Non-strict load of a parent checkpoint (ours or the reference's layout, §4.5)."""
        parent = ckpt.load_checkpoint(path, "cpu")
        report = load_reference_state_dict(self.model, parent["model"])
        self.base_epoch = int(parent.get("epoch") or 0)
        self.parent = {"path": str(path), "format": parent["format"], "epoch": self.base_epoch,
                       "loaded": report["loaded"]}
        odd = {k: report[k] for k in ("missing", "unexpected", "mismatched") if report[k]}
        if odd:  # the reference only warns too (e.g. an FC parent has no LWS cla_scale)
            self.warn("parent checkpoint did not match the model exactly", **odd)

    def _restore(self, state: dict) -> None:
        changed = [k for k in config_changes(state.get("config") or {}, self.cfg.to_dict())
                   if k != "train.epochs"]
        if changed:
            self.warn("resuming with a config that differs from the checkpoint's", keys=changed)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        self.generator.set_state(state["generator"])
        if not self.dist.is_main:  # the checkpoint holds rank 0's stream; keep the ranks apart
            self.generator.manual_seed(ddp.attack_seed(self.cfg.seed + int(state["epoch"]),
                                                       self.dist))
        ckpt.set_rng_state(state["rng"])
        self.base_epoch = int(state["base_epoch"])
        self.start_epoch = int(state["epoch"])
        self.final = dict(state.get("metrics") or {})

    def _save(self, epoch: int, metrics: dict) -> None:
        path = ckpt.checkpoint_path(self.run_dir, epoch)
        payload = {"epoch": epoch, "base_epoch": self.base_epoch, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "loader": self.loader.state_dict(),
                   "generator": self.generator.get_state(), "rng": ckpt.rng_state(),
                   "config": self.cfg.to_dict(), "metrics": metrics}
        digest = ckpt.save_checkpoint(path, payload)
        self.events.emit("checkpoint", epoch=epoch, path=str(path.relative_to(self.run_dir)),
                         sha256=digest)

    def run(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        last_epoch = self.base_epoch + t.epochs
        self.events.emit(
            "started", device=str(self.device), counts=self.bundle.counts,
            class_names=self.bundle.class_names, fingerprint=self.bundle.fingerprint,
            config_hash=cfg.fingerprint(), pid=os.getpid(), epochs=last_epoch,
            start_epoch=self.start_epoch, base_epoch=self.base_epoch, resumed=self.resumed,
            parent=self.parent, train_images=len(self.bundle.train_labels),
            batches_per_epoch=len(self.loader),
            precision="bf16-autocast" if uses_amp(cfg, self.device) else "float32",
            torch=torch.__version__, world_size=self.dist.world_size,
            distributed=None if not self.dist.enabled else {
                "backend": ddp.backend_name(), "sync_bn": t.sync_bn,
                "per_rank_batch": t.batch_size // self.dist.world_size})
        # For the ETA: when this process started training, batches done, batches to do.
        self._t0, self._done = time.time(), 0
        self._total = len(self.loader) * max(0, last_epoch - self.start_epoch)
        for epoch in range(self.start_epoch + 1, last_epoch + 1):
            rel = epoch - self.base_epoch
            epoch_start = time.time()
            data = {"epoch": epoch, "lr": self.scheduler.step(rel),
                    "train_loss": self._train_epoch(epoch), "clean_acc": None,
                    "robust_acc": None, "per_class_clean": None, "per_class_robust": None}
            if (rel % t.eval_freq == 0 or epoch == last_epoch) and self.dist.is_main:
                ev = evaluate_subset(self.model, self.bundle, cfg, self.device, epoch)
                data.update(clean_acc=ev.clean_acc, robust_acc=ev.robust_acc,
                            per_class_clean=ev.per_class_clean,
                            per_class_robust=ev.per_class_robust)
            self.events.emit("epoch", **data, seconds=time.time() - epoch_start)
            self.final = data
            if (rel % t.save_freq == 0 or epoch == last_epoch) and self.dist.is_main:
                self._save(epoch, data)
            ddp.barrier(self.dist)  # peers wait while rank 0 evaluates and checkpoints
        self.final_epoch = max(last_epoch, self.start_epoch)

    def _train_epoch(self, epoch: int) -> float:
        """One pass over the loader: mode step, backward, SGD step; returns the mean loss."""
        t = self.cfg.train
        amp = uses_amp(self.cfg, self.device)
        set_train_mode(self.model, t)
        batches = len(self.loader)
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        window_start, window_images = time.time(), 0
        for i, (x, y) in enumerate(self.loader):
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(self.cfg, self.device):
                out = self.mode.step(x, y, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            loss_sum += out.loss.detach()
            seen += 1
            self._done += 1
            window_images += len(y) * self.dist.world_size
            if (i + 1) % t.log_interval == 0 or i + 1 == batches:
                loss = float(ddp.mean_over_ranks(out.loss.detach(), self.dist))
                now = time.time()  # float() above is the only host sync of the loop
                self.events.emit("progress", epoch=epoch, batch=i + 1, batches=batches,
                                 loss=loss,
                                 images_per_s=window_images / max(now - window_start, 1e-9),
                                 eta_s=(now - self._t0) / self._done * (self._total - self._done))
                window_start, window_images = now, 0
        return float(ddp.mean_over_ranks(loss_sum, self.dist)) / max(seen, 1)


def _install_signal_handlers() -> None:
    def handler(signum: int, frame: Any) -> None:
        # One cancellation: a second SIGTERM during the final event must not interrupt it (the
        # launcher's SIGKILL after its grace period still ends a stuck process).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Cancelled(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


def train_main(run_dir: Path, mirror: bool = False) -> int:
    """Entry point of ``python -m engine train``; returns the process exit code."""
    previous = signal.getsignal(signal.SIGTERM)
    _install_signal_handlers()
    trainer = Trainer(run_dir, mirror=mirror)
    main = trainer.dist.is_main
    try:
        trainer.setup()
        trainer.run()
        trainer.events.emit("finished", epoch=trainer.final_epoch,
                            clean_acc=trainer.final.get("clean_acc"),
                            robust_acc=trainer.final.get("robust_acc"))
        ddp.cleanup()
        return 0
    except Cancelled as exc:
        # torchrun SIGTERMs rank 0 after a peer failed: that failure stays the last word.
        if not ddp.last_event_is_peer_failure(trainer.run_dir / "events.jsonl"):
            trainer.events.emit("cancelled", signal=str(exc))
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        trainer.events.emit("cancelled", signal="SIGINT")
        return EXIT_SIGINT
    except ConfigError as exc:
        if main:  # every rank reads the same file: one report
            trainer.events.emit("failed", message=f"invalid config.json: {exc}", traceback="")
        return EXIT_BAD_CONFIG
    except ddp.DistributedConfigError as exc:
        if main:
            trainer.events.emit("failed", message=str(exc), traceback="")
        return EXIT_BAD_CONFIG
    except Exception as exc:  # every failure becomes a `failed` event, then a non-zero exit
        tail = traceback.format_exc().splitlines()[-25:]
        trainer.events.emit("failed", message=f"{type(exc).__name__}: {exc}",
                            traceback="\n".join(tail))
        return EXIT_FAILED
    finally:
        trainer.events.close()
        signal.signal(signal.SIGTERM, previous)
