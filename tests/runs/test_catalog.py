"""The run catalog: ingest idempotence, partial/corrupt lines, reindex == ingest, prefixes,
schema migration (concurrency: test_catalog_concurrency.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import sqlite_utils

from runs import migrations
from runs.catalog import TABLES, AmbiguousRun, Catalog, CatalogError, RunNotFound
from runs.events import EVENT_VERSION
from runs.paths import advlt_home, atomic_write_json, catalog_path, new_run_id


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADVLT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def cat(home: Path) -> Catalog:
    c = Catalog()
    yield c
    c.close()


class Stream:
    """Writes a synthetic engine event stream for one run."""

    def __init__(self, run_dir: Path, run_id: str, seq: int = 0) -> None:
        self.path = run_dir / "events.jsonl"
        self.run_id = run_id
        self.seq = seq

    def line(self, type_: str, **data: object) -> bytes:
        event = {"v": EVENT_VERSION, "run": self.run_id, "seq": self.seq,
                 "time": 1_700_000_000.0 + self.seq, "type": type_, **data}
        self.seq += 1
        return (json.dumps(event) + "\n").encode()

    def emit(self, type_: str, **data: object) -> None:
        self.raw(self.line(type_, **data))

    def raw(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()


def new_run(cat: Catalog, run_id: str | None = None, **meta: object) -> tuple[str, Stream]:
    run_id = run_id or new_run_id()
    row = cat.create_run({"id": run_id, "name": "n", "preset": "pgd-at", "dataset": "digits-lt",
                          "kind": "train", **meta})
    return run_id, Stream(Path(row["run_dir"]), run_id)


def epoch_data(epoch: int, robust: float | None = None) -> dict:
    robust = 0.1 * epoch if robust is None else robust
    return {"epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch, "clean_acc": 0.5 + 0.01 * epoch,
            "robust_acc": robust, "per_class_clean": [0.9, 0.1 * epoch], "per_class_robust": [0.5, robust],
            "seconds": 1.5}


def started(epochs: int = 3, **extra: object) -> dict:
    return {"device": "cpu", "counts": [50, 20, 5], "fingerprint": "abc", "config_hash": "cfg",
            "pid": 4242, "epochs": epochs, "start_epoch": 0, "class_names": ["a", "b", "c"],
            "resumed": False, **extra}


def snapshot(cat: Catalog) -> dict[str, list[tuple]]:
    return {t: sorted(cat.conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}


# --- ingest ------------------------------------------------------------------------------------


def test_ingest_is_idempotent_and_incremental(cat: Catalog) -> None:
    run_id, s = new_run(cat)
    assert cat.get_run(run_id)["status"] == "queued"
    s.emit("started", **started())
    s.emit("progress", epoch=1, batch=1, batches=10, loss=2.3, images_per_s=100.0, eta_s=5.0)
    s.emit("epoch", **epoch_data(1))
    assert cat.ingest(run_id) == 3
    assert cat.ingest(run_id) == 0  # nothing new: nothing applied twice
    s.emit("epoch", **epoch_data(2, robust=0.05))
    s.emit("checkpoint", epoch=2, path="checkpoints/epoch2.pt", sha256="f" * 64)
    s.emit("heartbeat")
    assert cat.ingest(run_id) == 3
    assert cat.ingest(run_id) == 0
    run = cat.get_run(run_id)
    assert run["status"] == "running" and run["device"] == "cpu" and run["epochs"] == 3
    assert run["epoch"] == 2 and run["robust_acc"] == pytest.approx(0.05)
    assert (run["best_epoch"], run["best_robust_acc"]) == (1, pytest.approx(0.1))
    assert run["last_seq"] == 5 and run["ingest_offset"] == s.path.stat().st_size
    assert run["pid"] == 4242 and run["fingerprint"] == "abc"
    assert [e["epoch"] for e in cat.run_epochs(run_id)] == [1, 2]
    assert cat.run_epochs(run_id)[0]["per_class_robust"] == [0.5, pytest.approx(0.1)]
    assert cat.run_checkpoints(run_id) == [
        {"run_id": run_id, "epoch": 2, "path": "checkpoints/epoch2.pt", "sha256": "f" * 64}]
    assert cat.run_counts(run_id) == {"counts": [50, 20, 5], "class_names": ["a", "b", "c"]}
    s.emit("finished", epoch=2, clean_acc=0.6, robust_acc=0.07)
    assert cat.ingest(run_id) == 1
    run = cat.get_run(run_id)
    assert (run["status"], run["clean_acc"], run["ended"]) == ("finished", 0.6, 1_700_000_006.0)


def test_events_at_or_below_last_seq_are_skipped(cat: Catalog) -> None:
    run_id, s = new_run(cat)
    s.emit("started", **started())
    s.emit("epoch", **epoch_data(1))
    cat.ingest(run_id)
    # A stream rewritten with the same seqs (plus one new one) must not apply old events again.
    s.path.write_bytes(b"")
    s.seq = 0
    s.emit("started", **started())
    s.emit("epoch", **epoch_data(1, robust=0.9))
    s.emit("epoch", **epoch_data(2))
    cat.conn.execute("UPDATE runs SET ingest_offset = 0 WHERE id = ?", [run_id])
    cat.conn.commit()
    assert cat.ingest(run_id) == 1
    assert [e["robust_acc"] for e in cat.run_epochs(run_id)] == [pytest.approx(0.1), pytest.approx(0.2)]


def test_a_crash_mid_batch_applies_nothing_not_even_the_offset(
    cat: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runs import ingest

    run_id, s = new_run(cat)
    s.emit("started", **started())
    s.emit("epoch", **epoch_data(1))
    s.emit("epoch", **epoch_data(2))
    real = ingest.HANDLERS["epoch"]

    def dies_on_epoch_2(conn, rid, event):  # type: ignore[no-untyped-def]
        if event["epoch"] == 2:
            raise KeyboardInterrupt  # as if the process were interrupted half-way
        return real(conn, rid, event)

    monkeypatch.setitem(ingest.HANDLERS, "epoch", dies_on_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        cat.ingest(run_id)
    run = cat.get_run(run_id)
    assert (run["status"], run["ingest_offset"], run["last_seq"]) == ("queued", 0, -1)
    assert cat.run_epochs(run_id) == []
    monkeypatch.setitem(ingest.HANDLERS, "epoch", real)
    assert cat.ingest(run_id) == 3
    assert [e["epoch"] for e in cat.run_epochs(run_id)] == [1, 2]


def test_truncated_last_line_waits_until_completed(cat: Catalog) -> None:
    run_id, s = new_run(cat)
    s.emit("started", **started())
    tail = s.line("epoch", **epoch_data(1))
    s.raw(tail[:25])
    assert cat.ingest(run_id) == 1
    assert cat.run_epochs(run_id) == [] and cat.get_run(run_id)["bad_lines"] == 0
    s.raw(tail[25:])
    assert cat.ingest(run_id) == 1
    assert [e["epoch"] for e in cat.run_epochs(run_id)] == [1]
    assert cat.get_run(run_id)["bad_lines"] == 0


def test_corrupt_middle_line_is_skipped_and_counted(cat: Catalog) -> None:
    run_id, s = new_run(cat)
    s.emit("started", **started())
    s.raw(b'{"v": 1, "run": "' + run_id.encode() + b'", "seq": 99, "type": "epo\n')
    s.emit("epoch", **epoch_data(1))
    s.emit("wholly_new_type", detail=1)  # unknown: kept in the stream, ignored here
    s.emit("epoch", **epoch_data(2))
    assert cat.ingest(run_id) == 4
    run = cat.get_run(run_id)
    assert run["bad_lines"] == 1 and run["last_seq"] == 3
    assert [e["epoch"] for e in cat.run_epochs(run_id)] == [1, 2]
    assert cat.ingest(run_id) == 0 and cat.get_run(run_id)["bad_lines"] == 1  # not recounted


def test_failed_cancelled_and_eval_failures(cat: Catalog) -> None:
    a, sa = new_run(cat)
    sa.emit("started", **started())
    sa.emit("failed", message="CUDA out of memory", traceback="...")
    b, sb = new_run(cat)
    sb.emit("started", **started())
    sb.emit("cancelled", signal="SIGTERM")
    c, sc = new_run(cat)
    sc.emit("started", **started())
    sc.emit("finished", epoch=3, clean_acc=0.5, robust_acc=0.2)
    sc.emit("eval_progress", eval_id="ev1", attack="pgd", done=1, total=4, eta_s=1.0)
    sc.emit("failed", eval_id="ev1", message="attack diverged", traceback="...")
    assert cat.ingest_all() == 8
    assert (cat.get_run(a)["status"], cat.get_run(a)["message"]) == ("failed", "CUDA out of memory")
    assert (cat.get_run(b)["status"], cat.get_run(b)["message"]) == ("cancelled", "cancelled by signal SIGTERM")
    assert cat.get_run(c)["status"] == "finished"  # an eval's failure leaves the run finished
    [ev] = cat.run_evaluations(c)
    assert (ev["status"], ev["message"], ev["results"]) == ("failed", "attack diverged", {})


def test_evaluations_with_results_and_requests(cat: Catalog) -> None:
    run_id, s = new_run(cat)
    run_dir = Path(cat.get_run(run_id)["run_dir"])
    (run_dir / "evals").mkdir()
    (run_dir / "evals" / "ev2.json").write_text(json.dumps(
        {"eval_id": "ev2", "checkpoint": "checkpoints/epoch3.pt", "variant": "post-norm",
         "protocol": {"eps": 0.031}, "protocol_hash": "p1", "created": 5.0}))
    s.emit("started", **started())
    s.emit("eval_progress", eval_id="ev1", attack="pgd", done=2, total=4, eta_s=1.0)
    cat.ingest(run_id)
    states = {e["id"]: e["status"] for e in cat.run_evaluations(run_id)}
    assert states == {"ev1": "running", "ev2": "queued"}
    results = {
        "clean": {"accuracy": 0.8, "recall": [0.9, 0.7], "precision": [0.8, 0.8], "f1": [0.85, 0.75],
                  "worst_class": [1, 0.7]},
        "pgd": {"accuracy": 0.4, "recall": [0.6, 0.2], "precision": [0.5, 0.3], "f1": [0.55, 0.24],
                "groups": {"many": 0.6, "few": 0.2}, "worst_class": [1, 0.2]},
    }
    s.emit("eval", eval_id="ev1", checkpoint="checkpoints/epoch3.pt", variant=None,
           protocol={"eps": 0.031, "steps": 20}, protocol_hash="p1", results=results,
           warnings=["n_ex < test set"], flags={"reference_aa": True})
    cat.ingest(run_id)
    by_id = {e["id"]: e for e in cat.run_evaluations(run_id)}
    ev1 = by_id["ev1"]
    assert ev1["status"] == "finished" and ev1["protocol"] == {"eps": 0.031, "steps": 20}
    assert ev1["warnings"] == ["n_ex < test set"] and ev1["flags"] == {"reference_aa": True}
    assert list(ev1["results"]) == ["clean", "pgd"]
    assert ev1["results"]["pgd"]["groups"] == {"many": 0.6, "few": 0.2}
    assert ev1["results"]["pgd"]["worst_class"] == [1, 0.2]
    assert ev1["results"]["clean"]["recall"] == [0.9, 0.7] and ev1["results"]["clean"]["groups"] is None
    assert (by_id["ev2"]["variant"], by_id["ev2"]["created"]) == ("post-norm", 5.0)


def test_resume_drops_epochs_of_the_lost_attempt(cat: Catalog) -> None:
    run_id, s = new_run(cat)
    s.emit("started", **started(epochs=5))
    for e in (1, 2, 3):
        s.emit("epoch", **epoch_data(e, robust=[0.1, 0.2, 0.9][e - 1]))
    cat.ingest(run_id)
    assert cat.get_run(run_id)["best_epoch"] == 3
    s.emit("started", **started(epochs=5, start_epoch=2, resumed=True))
    cat.ingest(run_id)
    assert [e["epoch"] for e in cat.run_epochs(run_id)] == [1, 2]
    assert cat.get_run(run_id)["best_epoch"] == 2  # epoch 3's 0.9 came from the lost attempt


# --- reindex -----------------------------------------------------------------------------------


def build_varied_runs(cat: Catalog) -> None:
    """Several runs fed incrementally, with partial lines, a corrupt line, a resume, evals."""
    base, s = new_run(cat, "240101-000000-0001", tags=["base"], gpus=[0, 1])
    run_dir = Path(cat.get_run(base)["run_dir"])
    (run_dir / "engine.pid").write_text(json.dumps({"pid": 99999, "start_time": 123, "pgid": 99999}))
    (run_dir / "evals").mkdir()
    (run_dir / "evals" / "q1.json").write_text(json.dumps({"checkpoint": "checkpoints/epoch2.pt",
                                                           "variant": "post-cdt", "created": 3.0}))
    s.emit("started", **started(epochs=4))
    s.emit("epoch", **epoch_data(1))
    s.raw(b"corrupt\n")
    partial = s.line("epoch", **epoch_data(2))
    s.raw(partial[:30])
    cat.ingest_all()
    s.raw(partial[30:])
    s.emit("checkpoint", epoch=2, path="checkpoints/epoch2.pt", sha256="a" * 64)
    cat.ingest_all()
    s.emit("started", **started(epochs=4, start_epoch=1, resumed=True))
    s.emit("epoch", **epoch_data(2, robust=0.15))
    s.emit("epoch", **epoch_data(3))
    cat.ingest(base)
    s.emit("epoch", **epoch_data(4, robust=None) | {"robust_acc": None, "clean_acc": None})
    s.emit("eval", eval_id="e1", checkpoint="checkpoints/epoch2.pt", variant=None,
           protocol={"eps": 0.031}, protocol_hash="h", warnings=[], flags={},
           results={"pgd": {"accuracy": 0.3, "recall": [0.3], "precision": [0.3], "f1": [0.3],
                            "worst_class": [0, 0.3]}})
    s.emit("finished", epoch=4, clean_acc=0.55, robust_acc=0.3)
    cat.ingest_all()
    child, sc = new_run(cat, "240102-000000-0002", parent_run=base, kind="finetune")
    sc.emit("started", **started(epochs=5, start_epoch=4))
    sc.emit("cancelled", signal=15)
    cat.ingest_all()
    failed, sf = new_run(cat, "240103-000000-0003")
    sf.emit("started", **started())
    sf.emit("failed", message="boom", traceback="Traceback ...")
    cat.ingest(failed)
    new_run(cat, "240104-000000-0004", note="never started")
    cat.add_tags(child, ["ft", "rs"])
    cat.set_note(base, "the baseline")


def test_reindex_rebuilds_the_same_catalog(cat: Catalog, home: Path) -> None:
    build_varied_runs(cat)
    incremental = snapshot(cat)
    assert len(incremental["runs"]) == 4 and incremental["eval_results"]
    stray = home / "runs" / "not-a-run"
    stray.mkdir()
    copy = home / "runs" / "zz-copy-of-0003"  # sorts after the original
    copy.mkdir()
    (copy / "meta.json").write_text((home / "runs" / "240103-000000-0003" / "meta.json").read_text())
    problems: list[str] = []
    assert cat.reindex(report=problems.append) == 4
    assert len(problems) == 3 and "not-a-run" in problems[0] and "meta.json" in problems[0]
    assert "differs" in problems[1] and "already indexed" in problems[2]
    assert snapshot(cat) == incremental
    cat.close()
    # From nothing at all, too: a fresh catalog file rebuilt from the run directories.
    for suffix in ("", "-wal", "-shm"):
        Path(str(catalog_path(home)) + suffix).unlink(missing_ok=True)
    fresh = Catalog()
    assert fresh.list_runs() == []
    shutil.rmtree(copy)
    fresh.reindex(report=lambda _: None)
    assert snapshot(fresh) == incremental
    base = fresh.get_run("240101")
    assert base["tags"] == ["base"] and base["note"] == "the baseline"
    assert (base["pid"], base["proc_start"], base["pgid"]) == (99999, 123, 99999)
    assert [c["id"] for c in fresh.children(base["id"])] == ["240102-000000-0002"]
    assert fresh.get_run("240102")["tags"] == ["ft", "rs"]
    fresh.close()


# --- lookup and small writes --------------------------------------------------------------------


def test_prefix_resolution(cat: Catalog) -> None:
    for run_id in ("250101-000000-aaaa", "250101-000000-aaab", "250102-120000-beef"):
        new_run(cat, run_id)
    assert cat.get_run("250102")["id"] == "250102-120000-beef"
    assert cat.get_run("250101-000000-aaab")["id"] == "250101-000000-aaab"
    with pytest.raises(AmbiguousRun) as err:
        cat.get_run("250101")
    assert "250101-000000-aaaa" in str(err.value) and "250101-000000-aaab" in str(err.value)
    assert err.value.candidates == ["250101-000000-aaaa", "250101-000000-aaab"]
    with pytest.raises(RunNotFound, match="'99'"):
        cat.get_run("99")
    with pytest.raises(RunNotFound):
        cat.get_run("")
    with pytest.raises(RunNotFound):
        cat.get_run("2501%")  # LIKE wildcards are not wildcards here


def test_list_status_tags_note_children_delete(cat: Catalog) -> None:
    a, _ = new_run(cat, "250101-000000-0001", created=1.0)
    b, _ = new_run(cat, "250101-000000-0002", created=2.0, preset="trades", parent_run=a)
    assert [r["id"] for r in cat.list_runs()] == [b, a]  # newest first
    assert [r["id"] for r in cat.list_runs(preset="trades")] == [b]
    cat.set_status(a, "running")
    assert [r["id"] for r in cat.list_runs(status="running")] == [a]
    assert {r["id"] for r in cat.list_runs(status=["running", "queued"])} == {a, b}
    with pytest.raises(CatalogError, match="unknown status"):
        cat.set_status(a, "exploded")
    cat.set_status(a, "cancelled", "user asked")
    run = cat.get_run(a)
    assert run["message"] == "user asked" and run["ended"] is not None
    assert cat.add_tags(a, ["x", "y", "x"]) == ["x", "y"]
    assert cat.remove_tags(a, ["x"]) == ["y"]
    cat.set_note(a, "hello")
    meta = json.loads((Path(run["run_dir"]) / "meta.json").read_text())
    assert meta["tags"] == ["y"] and meta["note"] == "hello"
    assert [c["id"] for c in cat.children(a)] == [b]
    with pytest.raises(CatalogError, match="already exists"):
        cat.create_run({"id": a})
    deleted = cat.delete_run(a)
    assert deleted["id"] == a and Path(deleted["run_dir"]).is_dir()  # directory left to the caller
    with pytest.raises(RunNotFound):
        cat.get_run(a)


def test_create_run_writes_meta_and_config(cat: Catalog) -> None:
    run_id = new_run_id()
    row = cat.create_run({"id": run_id, "preset": "pgd-at"}, config_json='{"seed": 1}')
    run_dir = Path(row["run_dir"])
    assert run_dir == cat.runs_root / run_id
    assert json.loads((run_dir / "config.json").read_text()) == {"seed": 1}
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["id"] == run_id and meta["tags"] == [] and meta["created"] == row["created"]


# --- schema migration ---------------------------------------------------------------------------


def test_older_schema_catalog_is_migrated(home: Path) -> None:
    home.mkdir(parents=True)
    old = sqlite_utils.Database(catalog_path(home))
    migrations.migrate(old, stop_before="m002_host_hints_indexes")
    assert "host" not in old["runs"].columns_dict
    old["runs"].insert({"id": "230101-000000-0001", "status": "queued", "last_seq": -1,
                        "ingest_offset": 0, "tags": "[]", "run_dir": str(home / "runs" / "230101-000000-0001")})
    old.close()
    cat = Catalog(home)
    cols = cat.db["runs"].columns_dict
    assert {"host", "last_event", "bad_lines"} <= set(cols)
    assert migrations.pending(cat.db) == []
    run = cat.get_run("230101")
    assert run["bad_lines"] == 0 and run["status"] == "queued"
    s = Stream(home / "runs" / run["id"], run["id"])
    s.path.parent.mkdir(parents=True)
    s.emit("started", **started())
    assert cat.ingest(run["id"]) == 1 and cat.get_run(run["id"])["status"] == "running"
    cat.close()
    with Catalog(home) as again:  # reopening migrates nothing and keeps the data
        assert again.get_run("230101")["status"] == "running"


def test_catalog_file_is_in_wal_mode(cat: Catalog) -> None:
    assert cat.db.journal_mode == "wal"
    assert cat.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert os.path.exists(catalog_path())


def test_paths_home_ids_and_atomic_writes(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert advlt_home() == home
    monkeypatch.delenv("ADVLT_HOME")
    assert advlt_home() == Path.home() / ".advlt"
    ids = [new_run_id(now=t) for t in (1_700_000_000, 1_700_000_001, 1_800_000_000)]
    assert ids == sorted(ids) and ids[0].startswith("231114-221320-") and len(ids[0]) == 18
    target = home / "x" / "meta.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["meta.json"]  # no temp files left
