"""`presets.yaml_import`: the reference's configs (METHODS.md §6, typed in reference_configs.py)
import into presets that resolve exactly like the shipped ones, modulo the documented
differences (name/meta; a RoBal training file without its eval file has no inference head)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from presets import components, loader, yaml_import
from presets.validate import ConfigError

from reference_configs import ROWS, config

IMPORTABLE = [stem for stem, row in ROWS.items() if row[2] is not None]


def write_yaml(folder: Path, stem: str, data: dict | None = None) -> Path:
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data if data is not None else config(stem), sort_keys=False))
    return path


def comparable(cfg) -> dict:
    """A resolved config with component options in effect and without the preset's name."""
    d = cfg.to_dict()
    d.pop("preset")
    d["model"]["head_opt"] = components.effective_options("head", d["model"]["head"],
                                                          d["model"]["head_opt"])
    d["train"]["mode_opt"] = components.effective_options("mode", d["train"]["mode"],
                                                          d["train"]["mode_opt"])
    for slot in ("loss", "adv_loss", "nat_loss"):
        spec = d["train"][slot]
        spec["opt"] = components.effective_options("loss", spec["name"], spec["opt"])
    if d["inference_head"]:
        h = d["inference_head"]
        h["head_opt"] = components.effective_options("head", h["head"], h["head_opt"])
    return d


def resolve(preset: loader.Preset, dataset: str):
    extra = {"parent_checkpoint": "/parent/epoch80.pt"} if preset.kind == "finetune" else None
    return loader.resolve(preset, dataset, extra=extra)


@pytest.mark.parametrize("stem", IMPORTABLE)
def test_reference_config_imports_as_the_shipped_preset(stem, tmp_path):
    _, _, shipped, eval_stem = ROWS[stem]
    eval_path = write_yaml(tmp_path, eval_stem) if eval_stem else None
    result, target = yaml_import.import_yaml(write_yaml(tmp_path, stem), tmp_path / "out",
                                             eval_path=eval_path)
    imported = loader.parse_preset(target)
    expected = loader.get_preset(shipped)
    assert imported.kind == expected.kind == result.kind
    dataset = "cifar100-lt" if stem.startswith("cifar100") else "cifar10-lt"
    assert result.dataset == dataset
    assert comparable(resolve(imported, dataset)) == comparable(resolve(expected, dataset))
    assert tomllib.loads(target.read_text()) == result.doc  # the emitter round-trips
    assert any("model_dir" in n for n in result.notes)  # bookkeeping dropped with a note


def test_robal_training_file_alone_lacks_only_the_inference_head(tmp_path):
    result, target = yaml_import.import_yaml(
        write_yaml(tmp_path, "cifar10_LT0.02_pgdat_robal_N_train"), tmp_path)
    assert any("--eval" in w for w in result.warnings)
    imported = comparable(resolve(loader.parse_preset(target), "cifar10-lt"))
    shipped = comparable(resolve(loader.get_preset("robal-n"), "cifar10-lt"))
    assert imported["inference_head"] is None
    imported.pop("inference_head"), shipped.pop("inference_head")
    assert imported == shipped


@pytest.mark.parametrize("stem, shipped, dataset", [
    ("cifar10_LT0.02_pgdat_robal_N_eval", "robal-n", "cifar10-lt"),
    ("cifar100_LT0.1_pgdat_robal_N_eval", "robal-n", "cifar100-lt"),
    ("cifar100_LT0.1_pgdat_robal_R_eval", "robal-r", "cifar100-lt"),
])
def test_an_eval_only_file_is_an_inference_preset(stem, shipped, dataset, tmp_path):
    result, target = yaml_import.import_yaml(write_yaml(tmp_path, stem), tmp_path)
    assert result.kind == "inference"
    imported = comparable(resolve(loader.parse_preset(target), dataset))
    assert imported["inference_head"] == comparable(
        resolve(loader.get_preset(shipped), dataset))["inference_head"]


def test_the_cifar10_robal_r_eval_file_is_a_training_file(tmp_path):
    result = yaml_import.convert_yaml(write_yaml(tmp_path, "cifar10_LT0.02_pgdat_robal_R_eval"))
    assert result.kind == "train" and result.doc["model"]["head"] == "cos_plus"


def test_dead_and_unknown_keys_are_warned_about_and_dropped(tmp_path):
    data = {**config("cifar10_LT0.02_pgdat"), "step_bar": 2.0, "free_bn": False,
            "margin_opt": None, "my_own_key": 3}
    result = yaml_import.convert_yaml(write_yaml(tmp_path, "x", data))
    for key in ("step_bar", "free_bn", "margin_opt", "my_own_key"):
        assert any(w.startswith(key) for w in result.warnings), key
        lines = [line for line in result.text.splitlines() if key in line]
        assert lines and all(line.startswith("# warning:") for line in lines)  # comments only
    for key in ("model_dir", "model_path", "remark", "log_interval"):
        assert any(n.startswith(key) for n in result.notes), key


def test_finetune_milestones_count_from_the_parent(tmp_path):
    data = {**config("cifar10_LT0.02_pgdat_rs-fine"), "lr_decline": [60, 75, 83]}
    result = yaml_import.convert_yaml(write_yaml(tmp_path, "x", data))
    # milestones the parent already passed still count from this run's first epoch
    assert result.doc["train"]["milestones"] == [1, 1, 3]
    assert result.doc["train"]["epochs"] == 1


def test_other_values_ratios_and_trades(tmp_path):
    data = {**config("cifar10_LT0.02_pgdat"), "train_mode": "trades", "beta": 6.0,
            "imbalance_ratio": 0.01, "weight_decay": "5e-4", "train_num_steps": 10}
    result, target = yaml_import.import_yaml(write_yaml(tmp_path, "x", data), tmp_path,
                                             name="my-trades")
    assert target.name == "my-trades.toml"
    cfg = resolve(loader.parse_preset(target), "cifar10-lt")
    assert cfg.train.mode == "trades" and cfg.train.mode_opt == {"beta": 6.0}
    assert cfg.dataset.imbalance_ratio == 0.01
    assert cfg.train.weight_decay == 0.0005 and cfg.train.attack.num_steps == 10
    # the ratio belongs to CIFAR-10: another dataset keeps its own
    assert resolve(loader.parse_preset(target), "digits-lt").dataset.imbalance_ratio == 0.1


@pytest.mark.parametrize("change, key", [
    ({"dataset": "ImageNet"}, "dataset"),
    ({"sampler": "Mix"}, "sampler"),
    ({"num_classes": 100}, "num_classes"),
    ({"train_mode": "free_at"}, "train_mode"),
    ({"loss_opt": {"Hinge": {}}}, "loss_opt"),
    ({"classifier": "MLP"}, "classifier"),
    ({"existing_ratio": 0.5}, "existing_ratio"),
    ({"classifier": "Cos", "classifier_opt": {"scael": 16}}, "model.head_opt.scael"),
])
def test_bad_reference_configs_fail_and_write_nothing(change, key, tmp_path):
    data = {**config("cifar10_LT0.02_pgdat"), **change}
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        yaml_import.import_yaml(write_yaml(tmp_path, "bad", data), out)
    assert key in [p.path for p in err.value.problems]
    assert not out.exists() or not list(out.iterdir())


def test_missing_required_keys_and_non_mapping(tmp_path):
    data = {k: v for k, v in config("cifar10_LT0.02_pgdat").items() if k != "train_mode"}
    with pytest.raises(ConfigError) as err:
        yaml_import.convert_yaml(write_yaml(tmp_path, "x", data))
    assert [p.path for p in err.value.problems] == ["train_mode"]
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        yaml_import.convert_yaml(tmp_path / "list.yaml")
