"""The catalog under concurrency: 8 engine processes append events to 8 runs and ingest their
own run now and then, while a thread of this process ingests everything and reads continuously.
No "database is locked", no lost or duplicated rows."""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from runs.catalog import Catalog
from runs.events import EVENT_VERSION


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADVLT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Stream:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.seq = 0

    def line(self, type_: str, **data: object) -> bytes:
        event = {"v": EVENT_VERSION, "run": self.run_id, "seq": self.seq, "time": float(self.seq),
                 "type": type_, **data}
        self.seq += 1
        return (json.dumps(event) + "\n").encode()


def started(epochs: int) -> dict:
    return {"device": "cpu", "counts": [5, 2], "fingerprint": "f", "config_hash": "c", "pid": 1,
            "epochs": epochs, "start_epoch": 0, "class_names": ["a", "b"], "resumed": False}


def epoch_data(epoch: int, robust: float) -> dict:
    return {"epoch": epoch, "lr": 0.1, "train_loss": 1.0, "clean_acc": 0.5, "robust_acc": robust,
            "per_class_clean": [0.5, 0.5], "per_class_robust": [robust, robust], "seconds": 0.1}


N_WRITERS = 8
N_EPOCHS = 30


def _writer(home: str, run_id: str, index: int) -> None:
    """An engine (appending lines in two chunks) that also ingests its own run now and then."""
    cat = Catalog(Path(home))
    s = Stream(run_id)
    path = Path(home) / "runs" / run_id / "events.jsonl"
    lines = [s.line("started", **started(epochs=N_EPOCHS))]
    for epoch in range(1, N_EPOCHS + 1):
        lines.append(s.line("progress", epoch=epoch, batch=1, batches=2, loss=1.0, images_per_s=1.0, eta_s=1.0))
        lines.append(s.line("epoch", **epoch_data(epoch, robust=index + epoch / 1000)))
        if epoch % 10 == 0:
            lines.append(s.line("checkpoint", epoch=epoch, path=f"checkpoints/epoch{epoch}.pt", sha256="0"))
    lines.append(s.line("finished", epoch=N_EPOCHS, clean_acc=0.5, robust_acc=0.25))
    with open(path, "ab") as f:
        for i, data in enumerate(lines):
            f.write(data[:11])
            f.flush()
            f.write(data[11:])
            f.flush()
            if i % 6 == 0:
                cat.ingest(run_id)
    cat.close()


def test_concurrent_writers_and_readers(home: Path) -> None:
    cat = Catalog()
    ids = [cat.create_run({"id": f"250101-000000-{i:04d}", "preset": "pgd-at"})["id"] for i in range(N_WRITERS)]
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        mine = Catalog()
        try:
            while not done.is_set():
                mine.ingest_all()
                for run in mine.list_runs():
                    epochs = [e["epoch"] for e in mine.run_epochs(run["id"])]
                    assert epochs == list(range(1, len(epochs) + 1)), epochs
        except BaseException as exc:  # surfaced by the main thread's assertion
            errors.append(exc)
        finally:
            mine.close()

    # spawn, not fork: a forked child inherits SQLite's per-process lock bookkeeping of the
    # parent's open connections (here the reader thread's) and can wait on a lock nobody holds.
    ctx = multiprocessing.get_context("spawn")
    start = time.monotonic()
    thread = threading.Thread(target=reader)
    thread.start()
    procs = [ctx.Process(target=_writer, args=(str(home), run_id, i)) for i, run_id in enumerate(ids)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=30)
    finally:
        done.set()
        thread.join(timeout=30)
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    assert errors == []
    cat.ingest_all()
    n_events = 1 + 2 * N_EPOCHS + N_EPOCHS // 10 + 1
    for i, run_id in enumerate(ids):
        run = cat.get_run(run_id)
        assert (run["status"], run["last_seq"], run["bad_lines"]) == ("finished", n_events - 1, 0)
        assert run["best_epoch"] == N_EPOCHS
        rows = cat.run_epochs(run_id)
        assert [e["epoch"] for e in rows] == list(range(1, N_EPOCHS + 1))
        assert [e["robust_acc"] for e in rows] == [pytest.approx(i + e / 1000) for e in range(1, N_EPOCHS + 1)]
        assert len(cat.run_checkpoints(run_id)) == N_EPOCHS // 10
    total = cat.conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    assert total == N_WRITERS * N_EPOCHS
    # ~2-5 s on 2 cores; far more means some connection sat in the busy timeout waiting for a lock.
    assert time.monotonic() - start < 20
    cat.close()
