"""One run on several processes (``engine.distributed``): ``torchrun`` + DDP on the CPU (gloo).

A 2-process run of tiny digits-LT writes one event stream and loadable checkpoints; with a model
without BatchNorm and no random attack start (``plain``), the per-epoch train loss and the final
weights equal a single-process run with the same global batch up to float rounding (DDP averages
the two half-batch gradients, a single process takes the mean over the whole batch). A batch
size the world size does not divide is one clear error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from engine import checkpoint as ckpt
from engine import distributed as ddp
from engine.datasets import load_dataset
from engine.loaders import TrainLoader
from engine.trainer import train_main
from presets.loader import deep_merge, get_preset, resolve

ROOT = Path(__file__).resolve().parents[2]
TINY = {"model": {"backbone_opt": {"width": 8}}, "dataset": {"eval_subset": 40},
        "eval": {"num_steps": 2},
        "train": {"batch_size": 32, "save_freq": 1, "eval_freq": 1, "log_interval": 5}}
MLP = {"model": {"backbone": "tiny_mlp", "backbone_opt": {"hidden": 16}}}


def make_run(parent: Path, name: str, preset: str, overrides: Optional[dict] = None) -> Path:
    cfg = resolve(get_preset(preset), "digits-lt", deep_merge(TINY, overrides or {}),
                  {"train": {"epochs": 2}})
    run_dir = parent / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    return run_dir


def torchrun(run_dir: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "ADVLT_CPU_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), "-m", "engine", "train", str(run_dir)]
    return subprocess.run(argv, env=env, cwd=run_dir, capture_output=True, text=True,
                          timeout=120)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_two_process_run_writes_one_stream_and_loadable_checkpoints(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "ddp", "pgd-at")
    proc = torchrun(run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evs = events(run_dir)
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(len(evs)))  # one writer: no duplicates, no gaps
    types = [e["type"] for e in evs]
    assert types.count("started") == 1 and types.count("finished") == 1
    assert types[-1] == "finished" and types.count("epoch") == 2
    started = evs[0]
    assert started["world_size"] == 2
    assert started["distributed"] == {"backend": "gloo", "sync_bn": False, "per_rank_batch": 16}
    epochs = [e for e in evs if e["type"] == "epoch"]
    assert all(0.0 <= e["robust_acc"] <= 1.0 for e in epochs)  # rank 0 evaluated each epoch
    # The same number of optimiser steps per epoch as one process with batch 32 (drop_last).
    bundle = load_dataset("digits-lt", 0.1, None, False)
    progress = [e for e in evs if e["type"] == "progress"]
    assert progress[-1]["batches"] == len(bundle.train_labels) // 32
    paths = sorted(p.name for p in (run_dir / "checkpoints").glob("epoch*.pt"))
    assert paths == ["epoch1.pt", "epoch2.pt"]
    state = ckpt.load_checkpoint(run_dir / "checkpoints" / "epoch2.pt")
    assert state["format"] == ckpt.FORMAT and state["epoch"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the bare module's names


def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    single = make_run(tmp_path, "single", "plain", MLP)
    assert train_main(single) == 0
    multi = make_run(tmp_path, "multi", "plain", MLP)
    proc = torchrun(multi)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loss_1 = [e["train_loss"] for e in events(single) if e["type"] == "epoch"]
    loss_2 = [e["train_loss"] for e in events(multi) if e["type"] == "epoch"]
    assert len(loss_1) == len(loss_2) == 2
    assert loss_2 == pytest.approx(loss_1, rel=1e-4, abs=1e-6)
    w1 = ckpt.load_checkpoint(single / "checkpoints" / "epoch2.pt")["model"]
    w2 = ckpt.load_checkpoint(multi / "checkpoints" / "epoch2.pt")["model"]
    assert w1.keys() == w2.keys()
    for key in w1:
        assert torch.allclose(w1[key], w2[key], rtol=1e-4, atol=1e-5), key
    # ...and training did move the weights (the comparison is not between two initialisations).
    init = ckpt.load_checkpoint(single / "checkpoints" / "epoch1.pt")["model"]
    assert any(not torch.equal(init[k], w1[k]) for k in w1)


def test_indivisible_batch_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ddp.DistributedConfigError, match="batch_size 30 is not divisible by the 4"):
        ddp.per_rank_batch(30, 4)
    assert ddp.per_rank_batch(32, 4) == 8
    run_dir = make_run(tmp_path, "odd", "plain", deep_merge(MLP, {"train": {"batch_size": 31}}))
    proc = torchrun(run_dir)
    assert proc.returncode != 0
    failed = [e for e in events(run_dir) if e["type"] == "failed"]
    assert len(failed) == 1  # reported once (rank 0), not once per rank
    assert "train.batch_size 31 is not divisible by the 2 processes" in failed[0]["message"]
    assert not (run_dir / "checkpoints").exists()


def test_sharded_loader_splits_each_global_batch(tmp_path: Path) -> None:
    """Rank slices of the sharded loaders, concatenated, are the unsharded loader's batches
    (same shuffle, same class-aware draws, same augmentation)."""
    bundle = load_dataset("digits-lt", 0.1, None, False)
    for sampler in (None, "class_aware"):
        whole = list(TrainLoader(bundle, 12, sampler, 3, "cpu"))
        parts = [list(TrainLoader(bundle, 12, sampler, 3, "cpu", shard=(r, 3))) for r in range(3)]
        assert all(len(p) == len(whole) for p in parts)
        for b, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([p[b][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[b][1] for p in parts]), y)
    with pytest.raises(ValueError, match="divisible"):
        TrainLoader(bundle, 10, None, 3, "cpu", shard=(0, 3))


def test_peer_failure_stays_the_last_word(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"seq": 0, "type": "started"}) + "\n")
    assert not ddp.last_event_is_peer_failure(path)
    ddp.PeerEvents(path, "r", 1).emit("progress", loss=1.0)  # peers write nothing else
    assert len(path.read_text().splitlines()) == 1
    ddp.PeerEvents(path, "r", 1).emit("failed", message="boom")
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["type"] == "failed" and last["rank"] == 1 and last["seq"] == 1
    assert ddp.last_event_is_peer_failure(path)


def test_manager_launches_torchrun_and_checks_nproc(monkeypatch: pytest.MonkeyPatch) -> None:
    """``advlt run ... --gpus cpu --nproc 2`` runs the engine under torchrun (detached, through
    the GPU queue) to ``finished``; impossible process counts are exit-2 errors."""
    from typer.testing import CliRunner

    from advlt_tui.cli import app
    from presets.validate import ConfigError
    from runs import gpus as gpu_locks
    from runs import launcher, ops

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = CliRunner()
    result = runner.invoke(app, ["run", "plain", "--gpus", "cpu", "--nproc", "2", "--epochs", "1",
                                 "--set", "model.backbone=tiny_mlp", "--set",
                                 "dataset.eval_subset=40", "--set", "eval.num_steps=2", "--json"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["status"] == "finished", final
    run_dir = Path(final["run_dir"])
    assert json.loads((run_dir / "meta.json").read_text())["nproc"] == 2  # a resume keeps it
    assert "-m torch.distributed.run --standalone --nproc_per_node 2 -m engine train" in (
        run_dir / "engine.log").read_text()
    started = [e for e in events(run_dir) if e["type"] == "started"]
    assert len(started) == 1 and started[0]["world_size"] == 2
    assert launcher.engine_train_command(run_dir, 1) == launcher.engine_command(run_dir)
    two = gpu_locks.GpuRequest("list", (0, 1))
    assert ops.check_nproc(two, None, True, 64) == 2
    assert ops.check_nproc(gpu_locks.GpuRequest("cpu"), None, False, 64) is None
    for request, nproc, message in ((two, 3, "names 2 GPU"),
                                    (gpu_locks.GpuRequest("auto"), 2, "explicit GPUs"),
                                    (gpu_locks.GpuRequest("cpu"), None, "needs --nproc"),
                                    (gpu_locks.GpuRequest("cpu"), 5, "not divisible by 5")):
        with pytest.raises(ConfigError, match=message):
            ops.check_nproc(request, nproc, True, 64)
