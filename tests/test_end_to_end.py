"""`advlt run` end to end on tiny data: preset → catalog → detached engine → events → catalog."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from advlt_tui.cli import app

runner = CliRunner()
TINY = ["--epochs", "2", "--set", "dataset.eval_subset=60", "--set", "train.batch_size=64",
        "--set", "model.backbone_opt={width = 8}", "--set", "eval.num_steps=3"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_run_digits_end_to_end():
    result = invoke("run", "pgd-at", "--dataset", "digits-lt", *TINY, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "finished"

    listing = json.loads(invoke("runs", "--json").stdout)
    assert [r["id"] for r in listing] == [summary["id"]]
    run = listing[0]
    assert run["status"] == "finished"
    assert 0.0 <= run["robust_acc"] <= run["clean_acc"] <= 1.0

    shown = json.loads(invoke("show", summary["id"][:8], "--json").stdout)
    epochs = shown["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert len(epochs[-1]["per_class_clean"]) == 10
    assert len(epochs[-1]["per_class_robust"]) == 10
    counts = shown["counts"]["counts"]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert [c["epoch"] for c in shown["checkpoints"]][-1] == 2
    assert shown["config"]["train"]["mode"] == "pgd_at"


def test_bad_override_is_one_clear_error_and_writes_nothing(advlt_home):
    result = invoke("run", "pgd-at", "--set", "train.attack.eps=-1", "--set", "nope=1")
    assert result.exit_code == 2
    assert "train.attack.eps" in result.output and "nope" in result.output
    assert not (advlt_home / "runs").exists() or not any((advlt_home / "runs").iterdir())


def test_unknown_preset_lists_the_allowed_ones():
    result = invoke("run", "no-such-preset")
    assert result.exit_code == 2
    assert "pgd-at" in result.output
