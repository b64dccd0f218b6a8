"""The training loop: ``python -m engine train RUN_DIR``.

Reads ``RUN_DIR/config.json``, trains with the configured mode (METHODS.md §4), streams events,
checkpoints atomically, and resumes from the newest loadable checkpoint of the run directory.
Epochs are numbered absolutely: a fine-tune of an 80-epoch parent trains epochs 81, 82, ...;
schedule milestones count this run's own epochs from 1.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
import torch

from engine import checkpoint as ckpt
from engine.attacks import pgd
from engine.datasets import DataBundle, load_dataset
from engine.events import EventWriter
from engine.loaders import TrainLoader, eval_batches
from engine.losses import create_loss
from engine.metrics import per_class_metrics
from engine.modes import Losses, create_mode
from engine.network import build_network, load_reference_state_dict
from engine.optim import LRScheduler, build_optimizer, set_train_mode
from presets.schema import RunConfig


class Cancelled(Exception):
    """Raised from the SIGTERM handler so the loop can write a final event."""


SMALL_BACKBONES = ("small_cnn", "tiny_mlp")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_cpu_threads(device: torch.device, backbone: str) -> None:
    """Small models on the CPU run fastest on one thread: intra-op threads only add
    synchronisation, and on a busy machine spinning OpenMP threads can cost 10-30×.
    ``ADVLT_CPU_THREADS`` overrides."""
    if device.type != "cpu":
        return
    env = os.environ.get("ADVLT_CPU_THREADS")
    if env:
        torch.set_num_threads(max(1, int(env)))
    elif backbone in SMALL_BACKBONES:
        torch.set_num_threads(1)


def read_config(run_dir: Path) -> RunConfig:
    return RunConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))


def autocast_for(cfg: RunConfig, device: torch.device):
    """bf16 autocast on CUDA when the run allows it (amp = "auto"); full precision on CPU."""
    if cfg.train.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class EpochEval:
    clean_acc: float
    robust_acc: float
    per_class_clean: list
    per_class_robust: list


def evaluate_subset(model, bundle: DataBundle, cfg: RunConfig, device, epoch: int) -> EpochEval:
    """Clean and PGD accuracy on the first ``dataset.eval_subset`` test images (reference §5.6:
    train.py evaluates robustness on the first 21 test batches)."""
    n = min(cfg.dataset.eval_subset, len(bundle.test_labels))
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + epoch)
    model.eval()
    clean_pred, adv_pred, labels = [], [], []
    batches = eval_batches(bundle.test_images[:n], bundle.test_labels[:n], cfg.eval.batch_size,
                           device, bundle.pixel_max)
    for x, y in batches:
        with torch.no_grad():
            clean_pred.append(model(x).argmax(1))
        result = pgd(model, x, y, cfg.eval.eps, cfg.eval.step_size, cfg.eval.num_steps,
                     rand_start="symmetric", generator=generator)
        with torch.no_grad():
            adv_pred.append(model(result.x_adv).argmax(1))
        labels.append(y)
    target = torch.cat(labels)
    clean = per_class_metrics(torch.cat(clean_pred), target, bundle.num_classes)
    robust = per_class_metrics(torch.cat(adv_pred), target, bundle.num_classes)
    return EpochEval(clean["accuracy"], robust["accuracy"], clean["recall"], robust["recall"])


class Trainer:
    def __init__(self, run_dir: Path, mirror: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = read_config(self.run_dir)
        self.run_id = self.run_dir.name
        self.events = EventWriter(self.run_dir / "events.jsonl", self.run_id, mirror=mirror)

    def setup(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg.device)
        configure_cpu_threads(self.device, cfg.model.backbone)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        ds = cfg.dataset
        self.bundle = load_dataset(ds.name, ds.imbalance_ratio, ds.data_root,
                                   ds.download)
        counts = self.bundle.counts
        channels, size = self.bundle.input_shape[0], self.bundle.input_shape[-1]
        self.model = build_network(cfg.model, self.bundle.num_classes, channels, size, counts)
        if cfg.train.loss.name == "focal" and cfg.model.head == "fc":
            # Reference §2.3: the plain focal loss comes with a prior-initialised FC bias.
            self.model.classifier.init_prior_bias(counts)
        self.model.to(self.device)
        if self.device.type == "cuda" and cfg.train.amp == "auto":
            self.model.to(memory_format=torch.channels_last)
        t = cfg.train
        self.losses = Losses(
            outer=create_loss(t.loss.name, counts, **t.loss.opt).to(self.device),
            adv=create_loss(t.adv_loss.name, counts, **t.adv_loss.opt).to(self.device),
            nat=create_loss(t.nat_loss.name, counts, **t.nat_loss.opt).to(self.device))
        self.base_epoch = 0
        if cfg.parent_checkpoint:
            parent = ckpt.load_checkpoint(Path(cfg.parent_checkpoint), self.device)
            load_reference_state_dict(self.model, parent["model"])
            self.base_epoch = int(parent.get("epoch") or 0)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = LRScheduler(self.optimizer, t)
        self.loader = TrainLoader(self.bundle, t.batch_size, t.sampler, cfg.seed, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.mode = create_mode(t.mode, model=self.model, losses=self.losses, attack=t.attack,
                                mode_opt=t.mode_opt, class_counts=counts, deffer=t.deffer,
                                robal_forwards=t.robal_forwards, generator=self.generator)
        self.start_epoch = self.base_epoch  # last completed epoch
        self.resumed = False
        state, skipped = ckpt.latest_loadable(self.run_dir, self.device)
        for message in skipped:
            self.events.emit("warning", message=f"skipped unreadable checkpoint: {message}")
        if state is not None and state.get("format") == ckpt.FORMAT:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        self.generator.set_state(state["generator"].cpu())
        ckpt.set_rng_state(state["rng"])
        self.base_epoch = int(state["base_epoch"])
        self.start_epoch = int(state["epoch"])
        self.resumed = True

    def _save(self, epoch: int) -> None:
        path = ckpt.checkpoint_path(self.run_dir, epoch)
        payload = {"epoch": epoch, "base_epoch": self.base_epoch, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "loader": self.loader.state_dict(),
                   "generator": self.generator.get_state(), "rng": ckpt.rng_state(),
                   "config": self.cfg.to_dict()}
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
            train_images=len(self.bundle.train_labels), torch=torch.__version__)
        batches = len(self.loader)
        total_batches = batches * (last_epoch - self.start_epoch)
        done_batches = 0
        t0 = time.time()
        for epoch in range(self.start_epoch + 1, last_epoch + 1):
            rel = epoch - self.base_epoch
            lr = self.scheduler.step(rel)
            epoch_start = time.time()
            set_train_mode(self.model, t)
            loss_sum = torch.zeros((), device=self.device)
            seen = 0
            window_start, window_images = time.time(), 0
            for i, (x, y) in enumerate(self.loader):
                if self.device.type == "cuda" and t.amp == "auto":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_for(cfg, self.device):
                    out = self.mode.step(x, y, epoch)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                self.optimizer.step()
                loss_sum += out.loss.detach()
                seen += 1
                window_images += len(y)
                done_batches += 1
                if (i + 1) % t.log_interval == 0 or i + 1 == batches:
                    now = time.time()
                    rate = window_images / max(now - window_start, 1e-9)
                    per_batch = (now - t0) / done_batches
                    self.events.emit("progress", epoch=epoch, batch=i + 1, batches=batches,
                                     loss=float(out.loss.detach()), images_per_s=rate,
                                     eta_s=per_batch * (total_batches - done_batches))
                    window_start, window_images = now, 0
            data = {"epoch": epoch, "lr": lr, "train_loss": float(loss_sum) / max(seen, 1),
                    "clean_acc": None, "robust_acc": None, "per_class_clean": None,
                    "per_class_robust": None}
            if rel % t.eval_freq == 0 or epoch == last_epoch:
                ev = evaluate_subset(self.model, self.bundle, cfg, self.device, epoch)
                data.update(clean_acc=ev.clean_acc, robust_acc=ev.robust_acc,
                            per_class_clean=ev.per_class_clean,
                            per_class_robust=ev.per_class_robust)
            data["seconds"] = time.time() - epoch_start
            self.events.emit("epoch", **data)
            if rel % t.save_freq == 0 or epoch == last_epoch:
                self._save(epoch)
        self.final_epoch = last_epoch
        self.final = data


def _install_sigterm() -> None:
    def handler(signum, frame):
        raise Cancelled(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


def train_main(run_dir: Path, mirror: bool = False) -> int:
    """Entry point of ``python -m engine train``; returns the process exit code."""
    _install_sigterm()
    trainer = Trainer(run_dir, mirror=mirror)
    try:
        trainer.setup()
        trainer.run()
        trainer.events.emit("finished", epoch=trainer.final_epoch,
                            clean_acc=trainer.final["clean_acc"],
                            robust_acc=trainer.final["robust_acc"])
        return 0
    except (Cancelled, KeyboardInterrupt) as exc:
        trainer.events.emit("cancelled", signal=str(exc) or "SIGINT")
        return 143
    except Exception as exc:  # every failure becomes a `failed` event, then a non-zero exit
        tail = traceback.format_exc().splitlines()[-25:]
        trainer.events.emit("failed", message=f"{type(exc).__name__}: {exc}",
                            traceback="\n".join(tail))
        return 1
    finally:
        trainer.events.close()
