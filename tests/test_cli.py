"""The `advlt` command line in-process (typer's CliRunner) on synthetic runs: help everywhere,
bad input → exit 2 with one clear message and nothing written, and every management command.
Commands that start the real engine are covered in tests/runs/test_reliability.py."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import sqlite_utils
import typer
from typer.testing import CliRunner

from advlt_tui.cli import app
from runs import launcher, migrations
from runs.catalog import Catalog
from runs.event_log import append_event
from runs.paths import catalog_path

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def tree(home: Path) -> list[str]:
    """Every file under the home except the catalog itself (which opening may create)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and not p.name.startswith("catalog.db"))


def synthetic_run(cat: Catalog, run_id: str, status_event: str | None = "finished",
                  lr: float = 0.1, checkpoint: bool = True) -> Path:
    cfg = {"preset": "pgd-at", "train": {"lr": lr, "epochs": 1}, "eval": {"num_steps": 20},
           "dataset": {"name": "digits-lt"}}
    row = cat.create_run({"id": run_id, "name": run_id, "preset": "pgd-at",
                          "dataset": "digits-lt", "kind": "train"}, json.dumps(cfg))
    run_dir = Path(row["run_dir"])
    append_event(run_dir, "started", counts=[50, 30, 10], class_names=["a", "b", "c"], epochs=1)
    append_event(run_dir, "epoch", epoch=1, clean_acc=0.5, robust_acc=0.25,
                 per_class_clean=[0.8, 0.5, 0.2], per_class_robust=[0.5, 0.2, 0.05])
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "epoch1.pt").write_bytes(b"not really a checkpoint")
        append_event(run_dir, "checkpoint", epoch=1, path="checkpoints/epoch1.pt", sha256="x")
    if status_event:
        append_event(run_dir, status_event, epoch=1)
    cat.ingest(run_id)
    return run_dir


@pytest.fixture
def cat(advlt_home: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("ADVLT_FAKE_GPUS", "1")
    c = Catalog()
    yield c
    c.close()


def all_commands() -> list[tuple[list[str], object]]:
    """Every command and group under ``advlt`` (typer vendors its own click: duck-typed)."""
    found = []

    def walk(cmd, path: list[str]) -> None:
        found.append((path, cmd))
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_has_help() -> None:
    commands = all_commands()
    names = {" ".join(p) for p, _ in commands}
    assert {"run", "runs", "show", "logs", "eval", "compare", "diff", "resume", "cancel", "rm",
            "tag", "note", "reindex", "tui", "presets"} <= names
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"`advlt {' '.join(path)}` has no help text"
        result = invoke(*path, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, path
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"{' '.join(path)} {param.opts} has no help"


@pytest.mark.parametrize("args, needle", [
    (["run", "no-such-preset"], "unknown preset"),
    (["run", "pgd-at", "--set", "train.lr"], "train.lr"),
    (["run", "pgd-at", "--set", "train.nope=1"], "train.nope"),
    (["run", "pgd-at", "--dataset", "mnist"], "mnist"),
    (["run", "pgd-at", "--gpus", "3"], "no GPU 3"),
    (["run", "pgd-at", "--gpus", "gpu0"], "--gpus"),
    (["run", "pgd-at", "--from", "zzz"], "no run matches"),
    (["show", "zzz"], "no run matches"),
    (["show", "aa"], "ambiguous"),
    (["runs", "--status", "sleeping"], "unknown status"),
    (["compare", "aa1", "--format", "xml"], "unknown format"),
    (["compare", "aa1", "zzz"], "no run matches"),
    (["diff", "aa1", "aa"], "ambiguous"),
    (["eval", "aa1", "--attacks", "fgsm,laser"], "laser"),
    (["eval", "aa1", "--checkpoint", "7"], "no checkpoint of epoch 7"),
    (["eval", "aa1", "--n-ex", "0"], "n_ex"),
    (["eval", "aa1", "--variant", "pgd-at"], "no inference-time head"),
    (["eval", "aa1", "--gpus", "5"], "no GPU 5"),
    (["eval", "nockpt"], "no checkpoint"),
    (["resume", "aa1"], "already finished"),
    (["resume", "aa2", "--gpus", "9"], "no GPU 9"),
    (["cancel", "aa1"], "already ended"),
    (["logs", "aa1", "--eval", "nope"], "no evaluation log"),
    (["tag", "aa1", " , "], "no tag"),
])
def test_bad_input_is_exit_2_one_message_nothing_written(cat: Catalog, advlt_home: Path,
                                                         args: list[str], needle: str) -> None:
    synthetic_run(cat, "aa1")
    synthetic_run(cat, "aa2", status_event="cancelled")
    synthetic_run(cat, "nockpt", checkpoint=False)
    before = tree(advlt_home)
    rows_before = [(r["id"], r["status"]) for r in cat.list_runs()]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output
    assert result.stderr.lower().startswith("error")
    assert tree(advlt_home) == before
    assert [(r["id"], r["status"]) for r in cat.list_runs()] == rows_before


def test_listing_show_tags_note_diff_compare(cat: Catalog) -> None:
    synthetic_run(cat, "r1")
    synthetic_run(cat, "r2", lr=0.05)
    listed = json.loads(invoke("runs", "--json").stdout)
    assert [r["id"] for r in listed] == ["r2", "r1"] and listed[0]["status"] == "finished"
    assert json.loads(invoke("runs", "--status", "running", "--json").stdout) == []
    csv_lines = invoke("runs", "--csv").stdout.splitlines()
    assert csv_lines[0].startswith("id,") and len(csv_lines) == 3

    assert invoke("tag", "r1", "baseline,paper", "seed1").exit_code == 0
    assert invoke("tag", "r1", "paper", "--remove").exit_code == 0
    assert invoke("note", "r1", "the good one").exit_code == 0
    shown = json.loads(invoke("show", "r1", "--json").stdout)
    assert shown["run"]["tags"] == ["baseline", "seed1"] and shown["run"]["note"] == "the good one"
    assert json.loads(Path(shown["run"]["run_dir"], "meta.json").read_text())["tags"] == [
        "baseline", "seed1"]  # in the run directory too, so reindex keeps them
    text = invoke("show", "r1").stdout
    assert "epochs" in text and "per class" in text

    diff = json.loads(invoke("diff", "r1", "r2", "--json").stdout)
    assert diff == [{"key": "train.lr", "a": 0.1, "b": 0.05}]
    assert "same config" in invoke("diff", "r1", "r1").stdout
    compared = json.loads(invoke("compare", "r1", "r2", "--json").stdout)
    assert [r["id"] for r in compared["rows"]] == ["r1", "r2"]
    assert invoke("compare", "r1,r2", "--format", "markdown").stdout.startswith("| id |")

    assert json.loads(invoke("reindex", "--json").stdout)["runs"] == 2
    shown = json.loads(invoke("show", "r1", "--json").stdout)
    assert shown["run"]["tags"] == ["baseline", "seed1"] and shown["epochs"][0]["epoch"] == 1


def test_rm_asks_refuses_running_and_deletes(cat: Catalog, advlt_home: Path) -> None:
    run_dir = synthetic_run(cat, "r1")
    busy_dir = synthetic_run(cat, "busy", status_event=None)
    info = launcher.spawn(busy_dir, [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result = invoke("rm", "busy", "--yes")
        assert result.exit_code == 2 and "cancel" in result.stderr
        assert busy_dir.is_dir()
    finally:
        os.killpg(info["pgid"], signal.SIGKILL)
    result = invoke("rm", "r1", input="n\n")
    assert result.exit_code == 1 and run_dir.is_dir()
    result = invoke("rm", "r1", input="y\n")
    assert result.exit_code == 0 and not run_dir.exists()
    assert [r["id"] for r in cat.list_runs()] == ["busy"]


def test_logs_prints_the_engine_log(cat: Catalog) -> None:
    run_dir = synthetic_run(cat, "r1")
    (run_dir / "engine.log").write_text("epoch 1 done\n")
    result = invoke("logs", "r1", "--follow")  # no process: follow ends at once
    assert result.exit_code == 0 and result.stdout == "epoch 1 done\n"


def test_deleted_run_directory_is_a_clear_message(cat: Catalog) -> None:
    import shutil

    run_dir = synthetic_run(cat, "gone", status_event="cancelled")
    synthetic_run(cat, "kept")
    shutil.rmtree(run_dir)
    shown = invoke("show", "gone", "--json")
    assert shown.exit_code == 0 and "missing" in shown.stderr
    assert json.loads(shown.stdout)["run"]["status"] == "cancelled"
    assert invoke("logs", "gone").exit_code == 1
    resumed = invoke("resume", "gone")
    assert resumed.exit_code == 2 and "missing" in resumed.stderr
    assert invoke("compare", "gone", "kept", "--json").exit_code == 0
    assert json.loads(invoke("reindex", "--json").stdout)["runs"] == 1
    assert [r["id"] for r in cat.list_runs()] == ["kept"]


def test_truncated_last_event_line(cat: Catalog) -> None:
    run_dir = synthetic_run(cat, "r1", status_event=None)
    with open(run_dir / "events.jsonl", "ab") as f:
        f.write(b'{"v":1,"run":"r1","seq":3,"type":"fini')  # a writer killed mid-line
    shown = json.loads(invoke("show", "r1", "--json").stdout)
    assert shown["run"]["status"] == "running" and shown["epochs"][0]["epoch"] == 1
    append_event(run_dir, "finished", epoch=1)  # a later writer ends the partial line first
    shown = json.loads(invoke("show", "r1", "--json").stdout)
    assert shown["run"]["status"] == "finished" and shown["run"]["bad_lines"] == 1
    assert "unreadable line" in invoke("show", "r1").stderr


def test_corrupt_and_old_catalogs(cat: Catalog, advlt_home: Path) -> None:
    synthetic_run(cat, "r1")
    cat.close()
    path = catalog_path(advlt_home)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    result = invoke("runs", "--json")
    assert result.exit_code == 2 and "reindex" in result.stderr
    assert (advlt_home / "runs" / "r1" / "events.jsonl").exists()  # nothing else touched
    path.unlink()
    assert json.loads(invoke("reindex", "--json").stdout)["runs"] == 1

    # A catalog from before migration 2 (no host column): opened, migrated, nothing lost.
    path.unlink()
    db = sqlite_utils.Database(path)
    migrations.migrate(db, stop_before="m002_host_hints_indexes")
    db["runs"].insert({"id": "old1", "preset": "pgd-at", "status": "finished", "tags": "[]",
                       "run_dir": str(advlt_home / "runs" / "old1"), "ingest_offset": 0,
                       "last_seq": -1})
    db.close()
    listed = json.loads(invoke("runs", "--json").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [("old1", "finished")]
    assert "host" in listed[0]
