"""`advlt presets [--json]`, `presets show`, `presets check`, `presets import` (typer CliRunner)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from advlt_tui.cli import app
from reference_configs import config

runner = CliRunner()
BROKEN = Path(__file__).parent / "broken"


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_list_json_has_every_method_with_its_kind():
    result = invoke("presets", "--json")
    assert result.exit_code == 0
    kinds = {p["name"]: p["kind"] for p in json.loads(result.stdout)}
    assert len(kinds) == 20
    assert {n for n, k in kinds.items() if k == "finetune"} == {"rs-fine", "rw-fine", "lws"}
    assert {n for n, k in kinds.items() if k == "inference"} == {
        "post-cdt", "post-norm", "post-logit-adjust"}
    listing = json.loads(result.stdout)
    rows = [p["paper_row"] for p in listing if p["paper_row"]]
    assert rows == sorted(rows)  # the study's order


def test_list_table_mentions_every_preset():
    result = invoke("presets")
    assert result.exit_code == 0
    for name in ("pgd-at", "robal-n", "post-logit-adjust", "lws"):
        assert name in result.stdout


def test_show_json_resolves_per_dataset():
    result = invoke("presets", "show", "robal-n", "--dataset", "cifar100-lt", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert list(data["resolved"]) == ["cifar100-lt"]
    cfg = data["resolved"]["cifar100-lt"]
    assert cfg["train"]["mode_opt"]["beta_reg"] == 3.0  # §6 row 19
    assert cfg["inference_head"]["head_opt"]["tau_p"] == 1.5
    assert data["preset"]["paper_row"] == 17
    every = json.loads(invoke("presets", "show", "lws", "--json").stdout)["resolved"]
    assert sorted(every) == ["cifar10-lt", "cifar100-lt", "digits-lt"]


def test_show_unknown_preset_or_dataset_exits_2():
    assert invoke("presets", "show", "nope").exit_code == 2
    assert invoke("presets", "show", "pgd-at", "--dataset", "mnist").exit_code == 2


def test_check_a_good_file_and_a_broken_one_as_json():
    good = Path(__file__).parents[2] / "presets" / "builtin" / "robal-r.toml"
    assert invoke("presets", "check", str(good)).exit_code == 0
    result = invoke("presets", "check", str(BROKEN / "many_problems.toml"), "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert not report["ok"] and len(report["problems"]) == 6
    assert all(p["line"] for p in report["problems"])


def test_import_writes_a_user_preset_that_lists_and_runs_validation(tmp_path, advlt_home):
    src = tmp_path / "cifar10_LT0.02_pgdat_outer_LDAM.yaml"
    src.write_text(yaml.safe_dump(config("cifar10_LT0.02_pgdat_outer_LDAM")))
    result = invoke("presets", "import", str(src), "--name", "my-ldam", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "train" and info["dataset"] == "cifar10-lt"
    assert Path(info["path"]) == advlt_home / "presets" / "my-ldam.toml"
    listing = {p["name"]: p for p in json.loads(invoke("presets", "--json").stdout)}
    assert listing["my-ldam"]["builtin"] is False
    shown = json.loads(invoke("presets", "show", "my-ldam", "-d", "cifar10-lt", "--json").stdout)
    assert shown["resolved"]["cifar10-lt"]["train"]["loss"] == {
        "name": "ldam", "opt": {"max_m": 0.5, "s": 1.0}}
    again = invoke("presets", "import", str(src), "--name", "my-ldam")
    assert again.exit_code == 2 and "--force" in again.output
    assert invoke("presets", "import", str(src), "--name", "my-ldam", "--force").exit_code == 0


def test_import_with_eval_file_and_out_dir(tmp_path):
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump(config("cifar100_LT0.1_pgdat_robal_R_train")))
    ev = tmp_path / "eval.yaml"
    ev.write_text(yaml.safe_dump(config("cifar100_LT0.1_pgdat_robal_R_eval")))
    out = tmp_path / "out"
    result = invoke("presets", "import", str(train), "--eval", str(ev), "--out", str(out))
    assert result.exit_code == 0, result.output
    written = list(out.glob("*.toml"))
    assert [p.name for p in written] == ["train.toml"]
    assert invoke("presets", "check", str(written[0])).exit_code == 0
    assert 'tau_p = 1.7' in written[0].read_text()


def test_import_of_a_bad_file_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config("cifar10_LT0.02_pgdat"), "sampler": "Group"}))
    out = tmp_path / "out"
    result = invoke("presets", "import", str(bad), "--out", str(out))
    assert result.exit_code == 2 and "sampler" in result.output
    assert not out.exists()
    (tmp_path / "broken.yaml").write_text("epochs: [1,\n")
    assert invoke("presets", "import", str(tmp_path / "broken.yaml")).exit_code == 2
    assert invoke("presets", "import", str(tmp_path / "missing.yaml")).exit_code == 2


def test_a_broken_user_preset_is_reported_but_does_not_hide_the_others(advlt_home):
    user = advlt_home / "presets"
    user.mkdir()
    (user / "oops.toml").write_text((BROKEN / "eps_zero.toml").read_text().replace(
        "eps-zero", "oops").replace("eps = 0.0", "epochz = 1"))
    result = invoke("presets", "--json")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 20
    assert "oops" in result.stderr
    assert invoke("presets", "show", "oops").exit_code == 2


def test_run_of_a_finetune_preset_needs_a_parent():
    result = invoke("run", "rs-fine", "--dataset", "digits-lt")
    assert result.exit_code == 2 and "parent_run" in result.output and "--from" in result.output
