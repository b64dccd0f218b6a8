"""Nothing is ever lost: real (tiny) engine runs killed with SIGKILL mid-epoch and mid-checkpoint
write, a corrupted checkpoint, the manager killed while its run goes on, Ctrl-C in the
foreground — each followed by reconcile/resume and checks that no event or row is damaged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runtools import (
    TINY, TINY_SETS, assert_stream_intact, kill_group, kill_leftovers, pid_alive, wait_for,
)
from typer.testing import CliRunner

from advlt_tui.cli import app
from runs import liveness, ops
from runs.catalog import TABLES, Catalog
from runs.events import read_events

HOOK = Path(__file__).resolve().parent / "pause_hook"
ENGINE_TIMEOUT = 90.0


@pytest.fixture
def cat(advlt_home: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("ADVLT_FAKE_GPUS", "0")  # whatever the box has: these runs use the CPU
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])))
    c = Catalog()
    yield c
    c.close()
    kill_leftovers(advlt_home)


def events(run: dict) -> list[dict]:
    return read_events(Path(run["run_dir"]) / "events.jsonl")[0]


def start_paused(cat: Catalog, monkeypatch: pytest.MonkeyPatch, pause: str, epochs: int) -> dict:
    monkeypatch.setenv("ADVLT_TEST_PAUSE", pause)
    run = ops.start_run(cat, "pgd-at", "digits-lt", epochs=epochs, sets=TINY_SETS)
    monkeypatch.delenv("ADVLT_TEST_PAUSE")  # later launches (resume) run normally
    return run


def finish(cat: Catalog, run_id: str) -> dict:
    def ended() -> bool:
        cat.ingest(run_id)
        return cat.get_run(run_id)["status"] in ops.ENDED

    wait_for(ended, timeout=ENGINE_TIMEOUT, poll=0.2, what=f"run {run_id} to end")
    return cat.get_run(run_id)


def kill_engine(cat: Catalog, run_id: str) -> None:
    pid = cat.get_run(run_id)["pid"]
    kill_group(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), what="the engine to die")


def snapshot(cat: Catalog) -> dict:
    skip = {"ingest_offset", "last_seq", "pid", "pgid", "proc_start", "host", "message", "ended",
            "last_event", "bad_lines"}
    out = {}
    for table in TABLES:
        rows = [{k: v for k, v in r.items() if k not in skip} for r in cat.db[table].rows]
        out[table] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    return out


def test_kill9_mid_epoch_corrupt_checkpoint_then_resume(cat: Catalog, monkeypatch) -> None:
    run = start_paused(cat, monkeypatch, "progress:3", epochs=3)
    wait_for(lambda: any(e["type"] == "progress" and e["epoch"] == 3 for e in events(run)),
             timeout=ENGINE_TIMEOUT, what="epoch 3 to start")
    kill_engine(cat, run["id"])
    changes = liveness.reconcile(cat)
    assert [(c.run_id, c.new) for c in changes] == [(run["id"], "lost")]
    lost = cat.get_run(run["id"])
    assert lost["status"] == "lost" and lost["epoch"] == 2
    assert [c["epoch"] for c in cat.run_checkpoints(run["id"])] == [1, 2]
    ckpt_dir = Path(run["run_dir"]) / "checkpoints"
    assert torch.load(ckpt_dir / "epoch2.pt", weights_only=True)["epoch"] == 2
    assert_stream_intact(Path(run["run_dir"]))
    # Damage the newest checkpoint: the resume must skip it, say so, and start from epoch 1.
    data = (ckpt_dir / "epoch2.pt").read_bytes()
    (ckpt_dir / "epoch2.pt").write_bytes(data[: len(data) // 3])

    resumed = ops.resume_run(cat, run["id"][:9])
    assert resumed["id"] == run["id"] and resumed["status"] in ("queued", "running")
    final = finish(cat, run["id"])
    assert final["status"] == "finished" and final["epoch"] == 3
    evs = assert_stream_intact(Path(run["run_dir"]))
    starts = [e for e in evs if e["type"] == "started"]
    assert [(s["resumed"], s["start_epoch"]) for s in starts] == [(False, 0), (True, 1)]
    warnings = [e["message"] for e in evs if e["type"] == "warning"]
    assert any("unreadable checkpoint" in w and "epoch2.pt" in w for w in warnings)
    assert [e["epoch"] for e in cat.run_epochs(run["id"])] == [1, 2, 3]
    before = snapshot(cat)
    cat.reindex()
    assert snapshot(cat) == before  # the run directory alone tells the same story


def test_kill9_during_checkpoint_write_then_resume(cat: Catalog, monkeypatch) -> None:
    run = start_paused(cat, monkeypatch, "ckpt:2", epochs=2)
    ckpt_dir = Path(run["run_dir"]) / "checkpoints"
    wait_for(lambda: list(ckpt_dir.glob(".epoch2.pt.tmp-*")), timeout=ENGINE_TIMEOUT,
             what="the checkpoint temp file")
    kill_engine(cat, run["id"])
    liveness.reconcile(cat)
    assert cat.get_run(run["id"])["status"] == "lost"
    assert not (ckpt_dir / "epoch2.pt").exists()  # never half a checkpoint under the real name
    assert torch.load(ckpt_dir / "epoch1.pt", weights_only=True)["epoch"] == 1
    assert [c["epoch"] for c in cat.run_checkpoints(run["id"])] == [1]

    ops.resume_run(cat, run["id"])
    final = finish(cat, run["id"])
    assert final["status"] == "finished"
    assert [c["epoch"] for c in cat.run_checkpoints(run["id"])] == [1, 2]
    assert torch.load(ckpt_dir / "epoch2.pt", weights_only=True)["epoch"] == 2
    evs = assert_stream_intact(Path(run["run_dir"]))
    assert [e["start_epoch"] for e in evs if e["type"] == "started"] == [0, 1]
    assert [e["epoch"] for e in cat.run_epochs(run["id"])] == [1, 2]


def cli_env(home: Path, pause: str | None = None) -> dict:
    env = dict(os.environ, ADVLT_HOME=str(home), PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK), root])
    if pause:
        env["ADVLT_TEST_PAUSE"] = pause
    return env


def test_manager_killed_run_survives_then_eval_and_compare(cat: Catalog, advlt_home: Path) -> None:
    # The engine pauses 4 s in epoch 2: time to kill the manager while the run is surely alive.
    cli = subprocess.Popen([sys.executable, "-m", "advlt_tui.cli", "run", "pgd-at", *TINY[:2],
                            *TINY[2:]], env=cli_env(advlt_home, "progress:2:4"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def paused_run() -> dict | None:
            rows = cat.list_runs()
            return rows[0] if rows and any(e["type"] == "progress" and e["epoch"] == 2
                                           for e in events(rows[0])) else None

        run = wait_for(paused_run, timeout=ENGINE_TIMEOUT, what="the run to reach epoch 2")
    finally:
        cli.kill()  # SIGKILL the manager only; the engine lives in its own session
        cli.wait()
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(run["id"], "running")]
    assert pid_alive(listed[0]["pid"])
    final = finish(cat, run["id"])
    assert final["status"] == "finished"
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert listed[0]["status"] == "finished" and listed[0]["epoch"] == 3

    # Evaluate the finished run in the foreground, then compare it.
    result = runner.invoke(app, ["eval", run["id"][:10], "--attacks", "fgsm,pgd", "--n-ex", "20",
                                 "--checkpoint", "2", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "finished"
    results = record["evaluation"]["results"]
    assert {"clean", "fgsm", "pgd2", "worst"} <= set(results)
    assert record["evaluation"]["checkpoint"] == "checkpoints/epoch2.pt"
    rows = json.loads(runner.invoke(app, ["compare", run["id"], "--format", "json"]).stdout)["rows"]
    ev_row = next(r for r in rows if r["eval_id"] == record["eval_id"])
    assert ev_row["fgsm"] == results["fgsm"]["accuracy"]
    assert ev_row["pgd20"] == results["pgd2"]["accuracy"]  # the protocol's full PGD (2 steps)
    assert ev_row["worst_class"] == min(results["worst"]["recall"])
    assert_stream_intact(Path(run["run_dir"]))


def test_ctrl_c_in_the_foreground_cancels_the_run(cat: Catalog, advlt_home: Path) -> None:
    cli = subprocess.Popen([sys.executable, "-m", "advlt_tui.cli", "run", "pgd-at", *TINY],
                           env=cli_env(advlt_home, "progress:1:60"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run = wait_for(lambda: next((r for r in cat.list_runs() if any(
            e["type"] == "progress" for e in events(r))), None), timeout=ENGINE_TIMEOUT,
            what="training to start")
        cli.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground command
        assert cli.wait(timeout=30) == 1
    finally:
        cli.kill()
    cat.ingest(run["id"])
    row = cat.get_run(run["id"])
    assert row["status"] == "cancelled"
    assert not pid_alive(row["pid"])
    evs = assert_stream_intact(Path(run["run_dir"]))
    assert evs[-1]["type"] == "cancelled"
