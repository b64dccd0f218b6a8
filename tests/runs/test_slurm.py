"""The Slurm backend against a stand-in scheduler: fake ``sbatch``/``squeue``/``sacct``/``scancel``
executables first on PATH, sharing a state folder. ``sbatch`` records the job and really runs
the batch script in the background (so real tiny digits-lt runs happen); ``squeue`` lists jobs
while PENDING/RUNNING and forgets them once ended; ``sacct`` remembers how they ended.

Two gate files make the timing deterministic: while ``pending.gate`` exists a job stays PENDING,
while ``start.gate`` exists it is RUNNING without having started its script yet.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from runtools import event_types, new_fake_run, wait_for
from typer.testing import CliRunner

from advlt_tui.cli import app
from runs import liveness, slurm
from runs.catalog import Catalog
from runs.event_log import append_event
from runs.events import read_events

runner = CliRunner()
TINY = ["--epochs", "1", "--set", "model.backbone_opt={width = 8}",
        "--set", "dataset.eval_subset=40", "--set", "eval.num_steps=2"]
LONG = ["--epochs", "200", *TINY[2:]]  # long enough to be cancelled or killed mid-way

FAKE_SLURM = r'''#!__PYTHON__
import fcntl, json, os, signal, subprocess, sys, time
from pathlib import Path

STATE = Path(__STATE__)
TOOL = os.path.basename(sys.argv[0])
args = sys.argv[1:]
ACTIVE = ("PENDING", "RUNNING")


def jdir(j):
    return STATE / "jobs" / j


def get(j, name):
    try:
        return (jdir(j) / name).read_text().strip()
    except OSError:
        return None


def put(j, name, text):
    tmp = jdir(j) / (name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, jdir(j) / name)


def opt(flag):
    return args[args.index(flag) + 1]


def cancelled(j):
    return (jdir(j) / "cancel").exists()


def gate(j, name):
    while (STATE / name).exists() and not cancelled(j):
        time.sleep(0.05)


def run_job(j):
    gate(j, "pending.gate")
    if not cancelled(j):
        put(j, "state", "RUNNING")
        gate(j, "start.gate")
    if cancelled(j):
        put(j, "state", "CANCELLED")
        return
    meta = json.loads(get(j, "meta.json"))
    with open(meta["output"], "ab") as out:
        proc = subprocess.Popen(["/bin/bash", meta["script"]], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "SLURM_JOB_ID": j})
    put(j, "pid", str(proc.pid))
    rc = proc.wait()
    put(j, "state", "CANCELLED" if cancelled(j) else "COMPLETED" if rc == 0 else "FAILED")


if TOOL == "sbatch" and "--run-job" in args:
    run_job(opt("--run-job"))
    sys.exit(0)
with open(STATE / "calls.log", "a") as log:
    log.write(" ".join([TOOL, *args]) + "\n")
if TOOL == "sbatch":
    assert args[0] == "--parsable", args
    script = Path(args[-1])
    directives = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].strip().partition("=")
            directives[key] = value
    if directives.get("--partition") == "nope":
        sys.exit("sbatch: error: invalid partition specified: nope")
    with open(STATE / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        j = str(int(f.read() or 1000) + 1)
        f.seek(0)
        f.truncate()
        f.write(j)
    jdir(j).mkdir(parents=True)
    put(j, "meta.json", json.dumps({"script": str(script), "output": directives["--output"],
                                    "directives": directives}))
    put(j, "state", "PENDING")
    subprocess.Popen([sys.executable, sys.argv[0], "--run-job", j], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    print(j)
elif TOOL == "squeue":
    ids, fmt = opt("-j").split(","), opt("-o")
    known = [j for j in ids if get(j, "state") in ACTIVE]
    if not known and len(ids) == 1:
        sys.exit("slurm_load_jobs error: Invalid job id specified")
    for j in known:
        print(fmt.replace("%i", j).replace("%T", get(j, "state")))
elif TOOL == "sacct":
    ids, fields = opt("-j").split(","), opt("-o").split(",")
    for j in ids:
        state = get(j, "state")
        if state:
            state += " by 1000" if state == "CANCELLED" else ""
            print("|".join({"JobIDRaw": j, "State": state}[f] for f in fields))
elif TOOL == "scancel":
    j = args[0]
    if get(j, "state") is None:
        sys.exit(f"scancel: error: Invalid job id {j}")
    (jdir(j) / "cancel").touch()
    pid = get(j, "pid")
    if pid and get(j, "state") == "RUNNING":
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
'''


class FakeSlurm:
    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.bin = root / "bin"
        (self.state / "jobs").mkdir(parents=True)
        self.bin.mkdir()
        code = (FAKE_SLURM.replace("__PYTHON__", sys.executable)
                .replace("__STATE__", repr(str(self.state))))
        for tool in ("sbatch", "squeue", "sacct", "scancel"):
            (self.bin / tool).write_text(code)
            (self.bin / tool).chmod(0o755)

    def calls(self, tool: str) -> list[str]:
        try:
            lines = (self.state / "calls.log").read_text().splitlines()
        except OSError:
            return []
        return [line for line in lines if line.split()[0] == tool]

    def job(self, job_id: str) -> dict:
        d = self.state / "jobs" / job_id
        read = lambda name: (d / name).read_text().strip() if (d / name).exists() else None
        return {"state": read("state"), "pid": read("pid"),
                "meta": json.loads(read("meta.json") or "{}")}

    def preset(self, job_id: str, state: str) -> None:
        """A job that exists only in the scheduler's memory (no process)."""
        (self.state / "jobs" / job_id).mkdir()
        (self.state / "jobs" / job_id / "state").write_text(state)

    def gate(self, name: str, closed: bool) -> None:
        path = self.state / f"{name}.gate"
        path.touch() if closed else path.unlink(missing_ok=True)

    def shutdown(self) -> None:
        """Let waiting jobs go away and kill whatever a failed test left running."""
        for job in (self.state / "jobs").iterdir():
            (job / "cancel").touch()
            pid = (job / "pid").read_text() if (job / "pid").exists() else None
            if pid:
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fs = FakeSlurm(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{fs.bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(slurm.ARGS_ENV, raising=False)
    monkeypatch.delenv(slurm.BACKEND_ENV, raising=False)
    yield fs
    fs.shutdown()


def cli(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def runs_json() -> dict[str, dict]:
    return {r["id"]: r for r in json.loads(cli("runs", "--json").stdout)}


def status_of(run_id: str) -> str:
    return runs_json()[run_id]["status"]


def test_run_queued_running_finished_then_eval_via_slurm(fake: FakeSlurm, advlt_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(slurm.ARGS_ENV, "--partition=tiny")
    fake.gate("pending", True)
    fake.gate("start", True)
    out = cli("run", "pgd-at", *TINY, "--backend", "slurm", "--detach", "--json",
              "--slurm-arg", "--time=00:10:00")
    run_id = json.loads(out.stdout)["id"]
    run_dir = advlt_home / "runs" / run_id
    record = json.loads((run_dir / "slurm.json").read_text())
    assert record["backend"] == "slurm" and record["host"] and not (run_dir / "engine.pid").exists()
    job = fake.job(record["job_id"])
    # The script sbatch saw: our directives (auto → one GPU), then the user's, in that order.
    assert job["meta"]["directives"] == {
        "--job-name": f"advlt-{run_id}", "--output": str(run_dir / "engine.log"),
        "--open-mode": "append", "--gres": "gpu:1", "--partition": "tiny", "--time": "00:10:00"}
    script = (run_dir / "slurm.sh").read_text()
    assert script.rstrip().endswith(f"-m engine train {run_dir}")
    assert script.splitlines()[-1].startswith(f"exec {sys.executable}")

    row = runs_json()[run_id]
    assert row["status"] == "queued" and "pending" in row["message"].lower()
    fake.gate("pending", False)
    wait_for(lambda: fake.job(record["job_id"])["state"] == "RUNNING", what="job running")
    assert status_of(run_id) == "running"  # from squeue alone: the script has not started yet
    assert fake.job(record["job_id"])["pid"] is None
    fake.gate("start", False)
    wait_for(lambda: status_of(run_id) == "finished", timeout=60, poll=0.2, what="run finished")
    types = event_types(run_dir)
    assert types[0] == "queued" and "started" in types and types[-1] == "finished"
    assert f"slurm job {record['job_id']}" in (run_dir / "engine.log").read_text()

    out = cli("eval", run_id, "--backend", "slurm", "--gpus", "cpu", "--attacks", "fgsm",
              "--n-ex", "20", "--json")
    result = json.loads(out.stdout)
    assert result["status"] == "finished"
    assert result["evaluation"]["results"]["fgsm"]["accuracy"] is not None
    eval_id = result["eval_id"]
    eval_record = json.loads((run_dir / "evals" / f"{eval_id}.slurm.json").read_text())
    # The result event comes before the process exits; the job ends right after.
    wait_for(lambda: fake.job(eval_record["job_id"])["state"] == "COMPLETED", what="job done")
    eval_job = fake.job(eval_record["job_id"])
    assert "--gres" not in eval_job["meta"]["directives"]  # --gpus cpu: no GPU asked for
    assert eval_job["meta"]["directives"]["--output"] == str(run_dir / "evals" / f"{eval_id}.log")
    assert "CUDA_VISIBLE_DEVICES=" in (run_dir / "evals" / f"{eval_id}.slurm.sh").read_text()
    assert (run_dir / "evals" / f"{eval_id}.log").read_text().strip()


def test_cancel_scancels_and_the_engine_records_it_then_resume_and_cancel_pending(
        fake: FakeSlurm, advlt_home: Path) -> None:
    out = cli("run", "pgd-at", *LONG, "--backend", "slurm", "--detach", "--json")
    run_id = json.loads(out.stdout)["id"]
    run_dir = advlt_home / "runs" / run_id
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    wait_for(lambda: "epoch" in event_types(run_dir), timeout=60, what="training under way")
    out = cli("cancel", run_id, "--json")
    assert json.loads(out.stdout)["status"] == "cancelled"
    assert fake.calls("scancel") == [f"scancel {job_id}"]
    last = read_events(run_dir / "events.jsonl")[0][-1]
    # Written by the engine's SIGTERM handler, not by the manager.
    assert last["type"] == "cancelled" and last["signal"] == "SIGTERM" and "message" not in last
    assert fake.job(job_id)["state"] == "CANCELLED"
    cli("cancel", run_id, code=2)  # already ended

    fake.gate("pending", True)
    out = cli("resume", run_id, "--backend", "slurm", "--detach", "--json")
    assert json.loads(out.stdout)["status"] == "queued"
    new_job = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    assert new_job != job_id and fake.job(new_job)["state"] == "PENDING"
    cli("rm", run_id, "--yes", code=2)  # a pending job is alive: refuse to delete
    out = cli("cancel", run_id, "--json")
    assert json.loads(out.stdout)["status"] == "cancelled"
    assert fake.job(new_job)["state"] == "CANCELLED" and fake.job(new_job)["pid"] is None
    last = read_events(run_dir / "events.jsonl")[0][-1]
    assert last["type"] == "cancelled" and last["message"] == f"cancelled (scancel {new_job})"


def test_job_that_fails_without_a_final_event_is_lost(fake: FakeSlurm, advlt_home: Path) -> None:
    out = cli("run", "pgd-at", *LONG, "--backend", "slurm", "--gpus", "2", "--detach", "--json")
    run_id = json.loads(out.stdout)["id"]
    run_dir = advlt_home / "runs" / run_id
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    assert fake.job(job_id)["meta"]["directives"]["--gres"] == "gpu:2"
    wait_for(lambda: "started" in event_types(run_dir), timeout=60, what="engine started")
    assert status_of(run_id) == "running"
    os.killpg(int(fake.job(job_id)["pid"]), signal.SIGKILL)  # e.g. the OOM killer
    wait_for(lambda: fake.job(job_id)["state"] == "FAILED", what="job failed")
    row = runs_json()[run_id]
    assert row["status"] == "lost"
    assert f"Slurm job {job_id} ended FAILED" in row["message"]
    assert fake.calls("sacct")  # squeue had forgotten the job; sacct told how it ended


def test_reconcile_asks_slurm_once_for_all_jobs(fake: FakeSlurm, advlt_home: Path) -> None:
    cat = Catalog()
    cases = {"pend": ("PENDING", "queued"), "run": ("RUNNING", "running"),
             "oom": ("OUT_OF_MEMORY", "lost"), "node": ("NODE_FAIL", "lost"),
             "scancelled": ("CANCELLED", "cancelled"), "done": ("COMPLETED", "finished")}
    for n, (run_id, (state, _)) in enumerate(cases.items()):
        run_dir = new_fake_run(cat, run_id)
        fake.preset(str(500 + n), state)
        (run_dir / "slurm.json").write_text(json.dumps({"backend": "slurm",
                                                        "job_id": str(500 + n)}))
    append_event(advlt_home / "runs" / "done", "finished", epoch=1)  # ended properly
    liveness.reconcile(cat)
    assert {r: cat.get_run(r)["status"] for r in cases} == {r: c[1] for r, c in cases.items()}
    assert fake.calls("squeue") == ["squeue -h -j 500,501,502,503,504,505 -o %i %T"]
    assert fake.calls("sacct") == ["sacct -n -P -X -j 502,503,504,505 -o JobIDRaw,State"]
    assert "OUT_OF_MEMORY" in cat.get_run("oom")["message"]
    cat.close()


def test_missing_sbatch_and_bad_options_write_nothing(fake: FakeSlurm, advlt_home: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for args in (["--gpus", "0,1"], ["--slurm-arg", "partition=gpu"], ["--share"]):
        result = cli("run", "pgd-at", *TINY, "--backend", "slurm", *args, code=2)
        assert "error" in result.output
    cli("run", "pgd-at", *TINY, "--slurm-arg=--partition=gpu", code=2)  # local backend
    refused = cli("run", "pgd-at", *TINY, "--backend", "slurm", "--slurm-arg=--partition=nope",
                  code=2)
    assert "sbatch refused the job (exit 1): sbatch: error: invalid partition" in refused.output
    assert len(fake.calls("sbatch")) == 1 and runs_json() == {}  # the run was removed again
    assert not any((advlt_home / "runs").glob("*"))
    monkeypatch.setenv(slurm.BACKEND_ENV, "kubernetes")
    assert "expected local or slurm" in cli("run", "pgd-at", *TINY, code=2).output
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv(slurm.BACKEND_ENV, "slurm")  # the default backend from the environment
    result = cli("run", "pgd-at", *TINY, "--detach", code=2)
    assert "sbatch not found; is Slurm installed? use --backend local" in result.output
    assert len(fake.calls("sbatch")) == 1  # only the refused one above
    assert runs_json() == {}
    assert not any((advlt_home / "runs").glob("*"))
