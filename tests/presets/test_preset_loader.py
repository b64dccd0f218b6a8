"""Resolution rules of presets.loader: layer order, option merging, component switches,
int→float normalisation, user presets, line numbers of value problems, fine-tune parents."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from presets import loader, toml_writer
from presets.toml_lines import find_line
from presets.validate import ConfigError

HEADER = '[preset]\nname = "{name}"\ntitle = "t"\nkind = "{kind}"\nsummary = "s"\n\n'


def write(folder: Path, name: str, body: str, kind: str = "train") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(HEADER.format(name=name, kind=kind) + body)
    return path


def test_layers_later_wins_and_per_dataset_changes_one_option(tmp_path):
    preset = loader.parse_preset(write(tmp_path, "p", (
        '[model]\nhead = "cos"\nhead_opt = { scale = 16.0, bias = false }\n'
        '[train]\nepochs = 7\n'
        '[datasets."digits-lt".model]\nhead_opt = { scale = 4.0 }\n')))
    digits = loader.resolve(preset, "digits-lt")
    assert digits.model.head_opt == {"scale": 4.0, "bias": False}  # merged key by key
    assert digits.train.epochs == 7  # preset over profile (digits: 15)
    assert loader.resolve(preset, "cifar10-lt").model.head_opt == {"scale": 16.0, "bias": False}
    over = loader.resolve(preset, "digits-lt", {"train": {"epochs": 2}}, {"train": {"epochs": 3}})
    assert over.train.epochs == 2  # --set beats the manager's extra values


def test_naming_another_component_drops_the_old_options():
    robal = loader.get_preset("robal-n")
    cfg = loader.resolve(robal, "digits-lt", loader.parse_overrides(
        ["model.head=cos", "train.loss.name=ldam", "model.backbone=tiny_mlp"])[0])
    assert cfg.model.head_opt == {} and cfg.train.loss.opt == {}
    assert cfg.model.backbone_opt == {}
    same = loader.resolve(robal, "digits-lt", {"model": {"head": "cos_plus"}})
    assert same.model.head_opt["gamma"] == 0.03125  # same head: options kept


def test_integers_resolve_to_the_same_config_as_floats():
    pgd = loader.get_preset("pgd-at")
    a = loader.resolve(pgd, "digits-lt", loader.parse_overrides(
        ["train.lr=1", "model.head=cos", "model.head_opt.scale=16", "train.lr_dict={else = 1}"])[0])
    b = loader.resolve(pgd, "digits-lt", loader.parse_overrides(
        ["train.lr=1.0", "model.head=cos", "model.head_opt.scale=16.0",
         "train.lr_dict={else = 1.0}"])[0])
    assert isinstance(a.train.lr, float) and isinstance(a.model.head_opt["scale"], float)
    assert a.fingerprint() == b.fingerprint()


def test_finetune_needs_a_parent_and_inference_needs_a_head():
    with pytest.raises(ConfigError) as err:
        loader.resolve(loader.get_preset("lws"), "digits-lt")
    assert [p.path for p in err.value.problems] == ["parent_run"]
    cfg = loader.resolve(loader.get_preset("lws"), "digits-lt",
                         extra={"parent_run": "r1", "parent_checkpoint": "/x/epoch80.pt"})
    assert cfg.parent_run == "r1" and cfg.kind == "finetune"
    assert loader.resolve(loader.get_preset("post-cdt"), "digits-lt").inference_head.head == "cdt"


def test_value_problems_name_the_file_and_line_that_set_them(tmp_path):
    # lines: 1-5 [preset], 6 blank, 7 [train], 8 mode, 9 mode_opt, 10 blank, 11 [train.attack], 12
    path = write(tmp_path, "p", "[train]\nmode = \"trades\"\nmode_opt = { beta = -1.0 }\n"
                               "\n[train.attack]\nstep_size = 0.0\n")
    with pytest.raises(ConfigError) as err:
        loader.resolve(loader.parse_preset(path), "digits-lt")
    where = {p.path: (p.source, p.line) for p in err.value.problems}
    assert where == {"train.mode_opt.beta": (str(path), 9), "train.attack.step_size": (str(path), 12)}


def test_user_presets_replace_builtins_and_unknown_names_list_the_choices(tmp_path):
    write(tmp_path, "pgd-at", '[train]\nepochs = 3\n')
    write(tmp_path, "mine", '[model]\nhead = "cos"\n')
    names = [p.name for p in loader.list_presets(tmp_path)]
    assert names.count("pgd-at") == 1 and names[-2:] == ["mine", "pgd-at"]
    assert loader.get_preset("pgd-at", tmp_path).builtin is False
    with pytest.raises(ConfigError) as err:
        loader.get_preset("nope", tmp_path)
    assert "robal-n" in str(err.value) and "mine" in str(err.value)


def test_find_line_handles_headers_inline_tables_and_arrays():
    text = ('a = 1\n[train]\nmilestones = [1, 2]\nloss = { name = "x", opt = { s = 1 } }\n'
            '[datasets."cifar100-lt".train.loss]\nopt = { m = 0.2 }\n[b.c]\n')
    assert find_line(text, ("a",)) == 1
    assert find_line(text, ("train", "milestones")) == 3
    assert find_line(text, ("train", "loss", "opt", "s")) == 4
    assert find_line(text, ("train", "loss", "opt", "m"), ("datasets", "cifar100-lt")) == 6
    assert find_line(text, ("b",)) == 7
    assert find_line(text, ("nothing",)) is None


def test_toml_writer_round_trips_every_kind_of_value(tmp_path):
    doc = {"preset": {"name": "x", "paper_row": 3, "reference_config": ["a.yaml", "b \"q\".yaml"]},
           "model": {"head": "cos", "head_opt": {"scale": 16.0, "bias": False, "eps": 1e-12}},
           "train": {"milestones": [3, 6], "lr_dict": {"cla_scale": 0.1, "else": 0.0},
                     "sampler": None, "loss": {"name": "cb", "opt": {}},
                     "attack": {"eps": 0.031}},
           "datasets": {"cifar100-lt": {"train": {"loss": {"opt": {"m": 0.2}}}}}}
    text = toml_writer.dumps(doc, ["line one", ""], {"train.milestones": "why"})
    back = tomllib.loads(text)
    doc["train"].pop("sampler")  # None is "not set"
    assert back == doc
    assert text.startswith("# line one\n#\n")
    assert "milestones = [3, 6]  # why" in text
    target = tmp_path / "sub" / "x.toml"
    toml_writer.write_atomic(target, text)
    assert target.read_text() == text and [p.name for p in target.parent.iterdir()] == ["x.toml"]
    with pytest.raises(TypeError):
        toml_writer.value(object())
