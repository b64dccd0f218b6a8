"""A fake engine for the TUI tests: realistic event streams, no torch.

As a library it creates runs in a catalog (``Catalog.create_run`` with a real resolved
``RunConfig``) and appends the events the real engine writes (``started``, ``progress``,
``epoch``, ``checkpoint``, ``eval_progress``, ``eval``, ``finished``) to their
``events.jsonl``, at once or from a background thread over time.

As a script it stands in for ``python -m engine``::

    python tests/tui/fake_engine.py train RUN_DIR
    python tests/tui/fake_engine.py evaluate RUN_DIR SPEC.json

``train`` emits one epoch every ``FAKE_EPOCH_S`` seconds (default 0.2) and, like the engine,
turns SIGTERM into a ``cancelled`` event and exit code 143.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script by the launcher
    sys.path.insert(0, str(ROOT))

COUNTS = [121, 93, 72, 56, 43, 33, 26, 20, 15, 12]  # digits-lt's long tail (ratio 0.1)
CLASS_NAMES = [str(c) for c in range(10)]
T0 = 1_700_000_000.0  # fixed event times for deterministic screens


def resolve_config(preset: str = "pgd-at", dataset: str = "digits-lt", sets: Iterable[str] = (),
                   extra: Optional[dict] = None):
    from presets import loader

    overrides, problems = loader.parse_overrides(sets)
    assert not problems, problems
    return loader.resolve(loader.get_preset(preset), dataset, overrides, extra)


def create_run(catalog, preset: str = "pgd-at", dataset: str = "digits-lt", *,
               run_id: Optional[str] = None, created: Optional[float] = None,
               sets: Iterable[str] = (), parent_run: Optional[str] = None,
               tags: Iterable[str] = (), gpus: Optional[str] = None) -> dict:
    """A queued run with a real resolved config (as ``runs.launcher.create_run`` records)."""
    from runs.paths import new_run_id

    extra = None
    if parent_run is not None:  # fine-tunes start from the parent's last checkpoint
        parent_dir = Path(catalog.get_run(parent_run)["run_dir"])
        last = sorted(parent_dir.glob("checkpoints/epoch*.pt"), key=lambda p: int(p.stem[5:]))
        extra = {"parent_run": parent_run,
                 "parent_checkpoint": str(last[-1] if last else parent_dir / "none.pt")}
    cfg = resolve_config(preset, dataset, sets, extra)
    meta = {"id": run_id or new_run_id(), "name": f"{preset}-{dataset}", "preset": preset,
            "dataset": dataset, "kind": cfg.kind, "created": created or time.time(),
            "parent_run": parent_run, "tags": list(tags), "note": "", "gpus": gpus,
            "config_hash": cfg.fingerprint(), "epochs": cfg.train.epochs}
    return catalog.create_run(meta, cfg.to_json() + "\n")


# --- deterministic metrics: accuracy falls from head to tail, robust below clean -------------

def per_class(epoch: int, epochs: int, robust: bool) -> list[float]:
    progress = epoch / max(epochs, 1)
    out = []
    for c, n in enumerate(COUNTS):
        share = n / COUNTS[0]
        acc = (0.35 + 0.6 * progress) * (0.3 + 0.7 * share)
        out.append(round(acc * (0.6 if robust else 1.0), 4))
    return out


def mean(values: list[float]) -> float:
    weights = [1] * len(values)  # the digits test split is roughly balanced
    return round(sum(v * w for v, w in zip(values, weights)) / sum(weights), 4)


def epoch_event(epoch: int, epochs: int) -> dict:
    clean, robust = per_class(epoch, epochs, False), per_class(epoch, epochs, True)
    return {"epoch": epoch, "lr": 0.05 if epoch < 10 else 0.005,
            "train_loss": round(2.3 / (1 + 0.5 * epoch), 4), "clean_acc": mean(clean),
            "robust_acc": mean(robust), "per_class_clean": clean, "per_class_robust": robust,
            "seconds": 1.5}


def eval_results(attacks: Iterable[str]) -> dict:
    clean = per_class(10, 10, False)
    results = {"clean": _metrics(clean)}
    for i, attack in enumerate(attacks):
        results[attack] = _metrics([round(v * (0.7 - 0.05 * i), 4) for v in clean])
    results["worst"] = _metrics([round(v * 0.5, 4) for v in clean])
    return results


def _metrics(recall: list[float]) -> dict:
    worst = min(range(len(recall)), key=lambda c: recall[c])
    return {"accuracy": mean(recall), "recall": recall, "precision": recall, "f1": recall,
            "groups": {}, "worst_class": {"class": worst, "recall": recall[worst]}}


class EventLog:
    """Appends events like ``engine.events.EventWriter`` (one ``os.write`` per line)."""

    def __init__(self, run_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "events.jsonl"
        self.clock = clock
        self.seq = self._last_seq() + 1

    def _last_seq(self) -> int:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return -1
        for raw in reversed(lines):
            try:
                return int(json.loads(raw)["seq"])
            except (ValueError, KeyError):
                continue
        return -1

    def emit(self, type_: str, **data) -> dict:
        event = {"v": 1, "run": self.run_dir.name, "seq": self.seq, "time": self.clock(),
                 "type": type_, **data}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(event) + "\n").encode())
        finally:
            os.close(fd)
        self.seq += 1
        return event

    def checkpoint(self, epoch: int) -> None:
        path = self.run_dir / "checkpoints" / f"epoch{epoch}.pt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"fake checkpoint %d" % epoch)
        self.emit("checkpoint", epoch=epoch, path=f"checkpoints/epoch{epoch}.pt",
                  sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def fixed_clock(start: float = T0, step: float = 1.0) -> Callable[[], float]:
    state = {"t": start - step}

    def clock() -> float:
        state["t"] += step
        return state["t"]

    return clock


def train_events(log: EventLog, epochs: int, upto: int, *, start: int = 0, batches: int = 15,
                 finish: bool = True, save_every: int = 1,
                 sleep: Callable[[float], None] = lambda s: None, epoch_s: float = 0.0,
                 pid: Optional[int] = None) -> None:
    """``started`` (when ``start`` is 0), then for epochs ``start+1..upto`` three ``progress``,
    an ``epoch`` and a checkpoint every ``save_every``; ``finished`` after the last epoch.

    Without ``pid`` liveness cannot tell (no pid recorded), so an unfinished run stays
    ``running`` instead of turning ``lost``: what a test of a live run needs."""
    if start == 0:
        log.emit("started", device="cpu", counts=COUNTS, class_names=CLASS_NAMES, pid=pid,
                 epochs=epochs, start_epoch=0, base_epoch=0, resumed=False,
                 config_hash="fake", fingerprint="fake", train_images=sum(COUNTS))
    for epoch in range(start + 1, upto + 1):
        for b in (5, 10, 15):
            sleep(epoch_s / 3)
            done = (epoch - 1) * batches + b
            log.emit("progress", epoch=epoch, batch=b, batches=batches, loss=2.0 / epoch,
                     images_per_s=480.0, eta_s=0.1 * (epochs * batches - done))
        log.emit("epoch", **epoch_event(epoch, epochs))
        if epoch % save_every == 0 or epoch == epochs:
            log.checkpoint(epoch)
    if finish and upto >= epochs:
        last = epoch_event(epochs, epochs)
        log.emit("finished", epoch=epochs, clean_acc=last["clean_acc"],
                 robust_acc=last["robust_acc"])


def eval_events(log: EventLog, eval_id: str, attacks: Iterable[str], checkpoint: str,
                sleep: Callable[[float], None] = lambda s: None, step_s: float = 0.0) -> None:
    attacks = list(attacks)
    log.emit("eval_started", eval_id=eval_id, checkpoint=checkpoint, variant=None)
    for attack in attacks:
        for done in (0, 270, 540):
            sleep(step_s)
            log.emit("eval_progress", eval_id=eval_id, attack=attack, done=done, total=540,
                     eta_s=0.1 * (540 - done))
    log.emit("eval", eval_id=eval_id, checkpoint=checkpoint, variant=None,
             protocol={"norm": "Linf", "eps": 0.1, "num_steps": 20, "n_ex": None},
             protocol_hash="fakeprotocol0001", results=eval_results(attacks), warnings=[],
             flags={})


def replay_in_thread(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


# --- the script: a stand-in for `python -m engine` ------------------------------------------

class _Cancelled(Exception):
    pass


def _on_sigterm(signum, frame) -> None:
    raise _Cancelled(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    command, run_dir = argv[0], Path(argv[1])
    spec = json.loads(Path(argv[2]).read_text()) if command == "evaluate" else {}
    log = EventLog(run_dir)
    epoch_s = float(os.environ.get("FAKE_EPOCH_S", "0.2"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if command == "train":
            config = json.loads((run_dir / "config.json").read_text())
            epochs = int(config["train"]["epochs"])
            print(f"fake engine: training {run_dir.name} for {epochs} epochs", flush=True)
            train_events(log, epochs, epochs, sleep=time.sleep, epoch_s=epoch_s, pid=os.getpid())
            print("fake engine: finished", flush=True)
        elif command == "evaluate":
            eval_events(log, spec["eval_id"], spec["attacks"], f"checkpoints/{spec['checkpoint']}",
                        sleep=time.sleep, step_s=epoch_s / 10)
        else:
            print(f"fake engine: unknown command {command}", file=sys.stderr)
            return 2
        return 0
    except _Cancelled as exc:
        if command == "train":
            log.emit("cancelled", signal=str(exc))
        else:
            log.emit("eval_cancelled", eval_id=spec.get("eval_id"), signal=str(exc))
        print(f"fake engine: cancelled by {exc}", flush=True)
        return 143


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
