"""The GPU queue: discovery, --gpus parsing, OS-level locks, and runs that wait as queued until a
(fake) GPU frees — including one freed by a kill -9."""
from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest
from runtools import (
    event_types, fake_engine_argv, fake_info, kill_group, kill_leftovers, new_fake_run, wait_for,
)

from runs import gpus, launcher, liveness
from runs.catalog import Catalog


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, advlt_home: Path):
    def set_count(n: int) -> None:
        monkeypatch.setenv(gpus.FAKE_ENV, str(n))

    monkeypatch.setenv("ADVLT_GPU_POLL_S", "0.05")
    yield set_count
    kill_leftovers(advlt_home)


def test_discovery_from_nvidia_smi_and_fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                   "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(gpus.FAKE_ENV, raising=False)
    assert gpus.discover_gpus() == [0, 1]
    monkeypatch.setenv(gpus.FAKE_ENV, "3")
    assert gpus.discover_gpus() == [0, 1, 2]
    monkeypatch.setenv(gpus.FAKE_ENV, "two")
    with pytest.raises(gpus.GpuSpecError):
        gpus.discover_gpus()


def test_gpu_spec_parsing(fake_gpus) -> None:
    fake_gpus(2)
    assert gpus.parse_gpu_spec(None) == gpus.GpuRequest("auto")
    assert gpus.parse_gpu_spec("CPU").mode == "cpu"
    assert gpus.parse_gpu_spec("1,0,1").indices == (1, 0)
    assert gpus.parse_gpu_spec("0", share=True).share
    for bad in ("2", "0,5", "gpu0", "-1", "0;1", "1.5"):
        with pytest.raises(gpus.GpuSpecError, match="--gpus"):
            gpus.parse_gpu_spec(bad)
    fake_gpus(0)
    with pytest.raises(gpus.GpuSpecError, match="GPUs found: none"):
        gpus.parse_gpu_spec("0")


def test_locks_exclusive_shared_all_or_nothing(advlt_home: Path, fake_gpus) -> None:
    fake_gpus(2)
    auto = gpus.GpuRequest("auto")
    first = gpus.try_acquire(advlt_home, auto)
    second = gpus.try_acquire(advlt_home, auto)
    assert list(first) == [0] and list(second) == [1]
    assert gpus.try_acquire(advlt_home, auto) is None  # both taken
    # A list takes all of its GPUs or none: GPU 1 is taken, so GPU 0 must not stay held.
    gpus.release(first)
    assert gpus.try_acquire(advlt_home, gpus.GpuRequest("list", (0, 1))) is None
    assert not gpus.gpu_busy(advlt_home, 0) and gpus.gpu_busy(advlt_home, 1)
    gpus.release(second)
    shared = [gpus.try_acquire(advlt_home, gpus.GpuRequest("list", (0,), share=True))
              for _ in range(2)]
    assert all(s is not None for s in shared)  # --share runs coexist ...
    assert gpus.try_acquire(advlt_home, gpus.GpuRequest("list", (0,))) is None  # ... not exclusive
    for s in shared:
        gpus.release(s)
    assert gpus.try_acquire(advlt_home, gpus.GpuRequest("cpu")) == {}
    fake_gpus(0)
    assert gpus.try_acquire(advlt_home, auto) == {}  # CPU-only box: run on the CPU at once


def test_third_run_waits_for_a_free_gpu_and_kill9_frees_one(advlt_home: Path, fake_gpus) -> None:
    fake_gpus(2)
    cat = Catalog()
    dirs = [new_fake_run(cat, f"r{i}") for i in range(4)]
    infos = [launcher.launch(d, fake_engine_argv(d), "auto") for d in dirs[:2]]
    started = wait_for(lambda: [fake_info(d) for d in dirs[:2]] if all(fake_info(d) for d in dirs[:2])
                       else None, what="two runs on the two GPUs")
    infos.append(launcher.launch(dirs[2], fake_engine_argv(dirs[2]), "auto"))
    assert sorted(s["cuda"] for s in started) == ["0", "1"]
    # exec keeps the pid the launcher recorded: liveness (pid + start time) stays right.
    assert [s["pid"] for s in started] == [i["pid"] for i in infos[:2]]
    assert all(liveness.is_alive(i["pid"], i["start_time"]) for i in infos)
    time.sleep(0.5)  # ten polls of the waiter
    assert fake_info(dirs[2]) is None
    assert event_types(dirs[2]) == ["queued"]
    cat.ingest_all()
    assert [cat.get_run(f"r{i}")["status"] for i in range(3)] == ["running", "running", "queued"]

    (dirs[0] / "stop").touch()  # r0 finishes: r2 takes its GPU by itself
    third = wait_for(lambda: fake_info(dirs[2]), what="the queued run to start")
    assert third["cuda"] == started[0]["cuda"]
    assert event_types(dirs[2]) == ["queued", "gpu_assigned", "started"]

    launcher.launch(dirs[3], fake_engine_argv(dirs[3]), "auto")
    time.sleep(0.3)
    assert fake_info(dirs[3]) is None  # both GPUs busy again
    kill_group(infos[1]["pid"], signal.SIGKILL)  # a crashed run frees its GPU (kernel-held lock)
    fourth = wait_for(lambda: fake_info(dirs[3]), what="the GPU of the killed run")
    assert fourth["cuda"] == started[1]["cuda"]

    changes = liveness.reconcile(cat)
    assert {(c.run_id, c.new) for c in changes} >= {("r0", "finished"), ("r1", "lost")}
    cat.ingest_all()
    assert cat.get_run("r2")["status"] == "running"
    for d in (dirs[2], dirs[3]):
        (d / "stop").touch()
    wait_for(lambda: not any(gpus.gpu_busy(advlt_home, i) for i in (0, 1)), what="GPUs freed")


def test_explicit_gpu_list_waits_for_all_of_them(advlt_home: Path, fake_gpus) -> None:
    fake_gpus(2)
    cat = Catalog()
    a, b = new_fake_run(cat, "a"), new_fake_run(cat, "b")
    launcher.launch(a, fake_engine_argv(a), "1")
    wait_for(lambda: fake_info(a), what="run a on GPU 1")
    launcher.launch(b, fake_engine_argv(b), "0,1")
    time.sleep(0.4)
    assert fake_info(b) is None and not gpus.gpu_busy(advlt_home, 0)  # holds nothing while waiting
    (a / "stop").touch()
    assert wait_for(lambda: fake_info(b), what="run b on GPUs 0,1")["cuda"] == "0,1"
    (b / "stop").touch()


def test_cpu_request_hides_gpus(advlt_home: Path, fake_gpus) -> None:
    fake_gpus(1)
    cat = Catalog()
    d = new_fake_run(cat, "c")
    launcher.launch(d, fake_engine_argv(d), "cpu")
    assert wait_for(lambda: fake_info(d))["cuda"] == ""
    assert not gpus.gpu_busy(advlt_home, 0)
    (d / "stop").touch()
