"""Broken presets: each fails with exactly its expected key paths (and the line of the offending
value, marked ``# expect`` in the file), through the API and through ``advlt presets check``."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from advlt_tui.cli import app
from presets import loader
from presets.schema import DATASETS
from presets.validate import ConfigError, Problem

BROKEN = Path(__file__).parent / "broken"
# file → the problems' key paths, in the order of the file's "# expect" markers (paths without a
# line in the file come last)
EXPECTED = {
    "unknown_key": ["train.epochz"],
    "wrong_type": ["train.epochs"],
    "eps_zero": ["train.attack.eps"],
    "eval_eps_negative": ["eval.eps"],
    "ratio_above_one": ["dataset.imbalance_ratio"],
    "ratio_zero": ["dataset.imbalance_ratio"],
    "negative_epochs": ["train.epochs"],
    "unknown_head": ["model.head"],
    "unknown_loss": ["train.loss.name"],
    "unknown_attack": ["eval.attacks[1]"],
    "unknown_head_option": ["model.head_opt.scael"],
    "option_wrong_type": ["train.loss.opt.s"],
    "option_out_of_range": ["model.head_opt.scale"],
    "cb_beta_one": ["train.loss.opt.beta"],
    "bad_choice": ["inference_head.head_opt.classifier"],
    "inference_without_head": ["inference_head"],
    "unknown_meta": ["preset.author"],
    "bad_kind": ["preset.kind"],
    "missing_preset_table": ["preset"],
    "per_dataset_typo": ["datasets.cifar100-lt.train.epoch"],
    "unknown_dataset_section": ["datasets.mnist"],
    "lr_dict_without_else": ["train.lr_dict"],
    "negative_milestone": ["train.milestones[0]"],
    "unknown_mode": ["train.mode"],
    "unknown_regulariser": ["train.mode_opt.reg"],
    "unknown_sampler": ["train.sampler"],
    "reserved_key": ["kind"],
    "not_toml": ["<file>"],
    "many_problems": ["model.head_opt.scale", "train.epochs", "train.momentum",
                      "train.lr_schedule", "train.attack.eps", "train.attack.rand_start"],
}


def problems_of(path: Path) -> list[Problem]:
    """Everything wrong with ``path``, for every dataset, each problem once."""
    try:
        preset = loader.parse_preset(path)
    except ConfigError as exc:
        return exc.problems
    found: list[Problem] = []
    for ds in DATASETS:
        try:
            loader.resolve(preset, ds)
        except ConfigError as exc:
            found += [p for p in exc.problems if p not in found]
    return found


def marker_lines(path: Path) -> list[int]:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1) if "# expect" in line]


def test_every_broken_file_is_in_the_table():
    assert sorted(p.stem for p in BROKEN.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_broken_preset_names_its_key_paths_and_lines(stem: str):
    path = BROKEN / f"{stem}.toml"
    problems = problems_of(path)
    assert sorted({p.path for p in problems}) == sorted(EXPECTED[stem]), [str(p) for p in problems]
    lines = marker_lines(path)
    for key_path, line in zip(EXPECTED[stem], lines):
        located = [p for p in problems if p.path == key_path]
        assert located[0].line == line, f"{key_path}: {located[0]}"
        assert located[0].source == str(path)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_check_command_exits_2_listing_every_problem(stem: str):
    path = BROKEN / f"{stem}.toml"
    result = CliRunner().invoke(app, ["presets", "check", str(path)])
    assert result.exit_code == 2, result.output
    for key_path in EXPECTED[stem]:
        assert key_path in result.output


def test_overrides_are_validated_the_same_way():
    overrides, parse_problems = loader.parse_overrides(
        ["train.attack.eps=0", "model.head=mlp", "train.epochs=-3", "dataset.imbalance_ratio=2",
         "train.loss.opt.nope=1", "eval.attacks=[\"pgd\", \"square\"]", "bad key=1"])
    assert [p.path for p in parse_problems] == ["bad key"]
    with pytest.raises(ConfigError) as err:
        loader.resolve(loader.get_preset("pgd-at"), "digits-lt", overrides)
    paths = {p.path for p in err.value.problems}
    assert paths == {"train.attack.eps", "model.head", "train.epochs", "dataset.imbalance_ratio",
                     "train.loss.opt.nope", "eval.attacks[1]"}
    assert all(p.source == "--set" for p in err.value.problems)
