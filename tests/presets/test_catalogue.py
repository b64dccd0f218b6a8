"""Every shipped preset resolves to exactly the values of METHODS.md §6, for every dataset.

The expected values are typed in from the spec (§6 table, §4.5, §7), not read from the presets.
Component options are compared as the values in effect (defaults filled in from the option
tables, themselves checked against the engine in test_components_agree.py), so writing an option
that equals its default or leaving it out are the same setting.
"""
from __future__ import annotations

import tomllib

import pytest

from presets import components, loader

# §6: the baseline files (cifar10_LT0.02_pgdat.yaml / cifar100_LT0.1_pgdat.yaml).
CIFAR_BASE = {
    "train.epochs": 80, "train.batch_size": 64, "train.weight_decay": 0.0002, "train.lr": 0.1,
    "train.momentum": 0.9, "train.milestones": (60, 75), "train.attack.num_steps": 5,
    "train.attack.step_size": 0.0078, "train.attack.eps": 0.031, "eval.num_steps": 20,
    "eval.step_size": 0.0078, "eval.eps": 0.031, "eval.batch_size": 64, "train.save_freq": 10,
    "train.eval_freq": 5, "train.warmup_epochs": 0, "model.backbone": "wrn",
    "train.lr_schedule": "reference_compounding", "train.attack.rand_start": "one_sided",
    "train.sampler": None, "train.lr_dict": None, "train.freeze": "lr0",
}
DATASET = {"cifar10-lt": {"dataset.num_classes": 10, "dataset.imbalance_ratio": 0.02},
           "cifar100-lt": {"dataset.num_classes": 100, "dataset.imbalance_ratio": 0.1}}
CE = ("ce", {})
FINE = {"train.epochs": 1, "train.milestones": (3, 6), "train.save_freq": 1}  # 81 / [83, 86] − 80
CB = ("cb", {"beta": 0.9999, "loss_type": "focal", "gamma": 2.0})
ROBAL_MODE = {"beta_adv": 1.0, "beta_nat": 0.0, "beta_reg": 6.0, "reg": "trades"}

# preset → kind, components (head, loss, mode; adv/nat loss default CE), inference head,
# scalar keys that differ from the baseline, and per-dataset changes.
SPEC = {
    "plain": dict(kind="train", head=("fc", {}), loss=CE, mode=("plain", {})),
    "pgd-at": dict(kind="train", head=("fc", {}), loss=CE, mode=("pgd_at", {})),  # row 1
    "trades": dict(kind="train", head=("fc", {}), loss=CE, mode=("trades", {"beta": 6.0})),
    "cos": dict(kind="train", head=("cos", {"bias": False, "scale": 16.0}), loss=CE),  # row 2
    "ldam": dict(kind="train", head=("fc", {}), loss=("ldam", {"max_m": 0.5, "s": 1.0})),  # row 3
    "cos-he": dict(kind="train", head=("cos", {"bias": False, "scale": 1.0}),  # row 4
                   loss=("uni_margin", {"m": 0.2, "s": 10.0})),
    "cdt": dict(kind="train", head=("fc", {}), loss=("cdt", {"tau": 0.3})),  # row 5
    "logit-adjust": dict(kind="train", head=("dot", {}), loss=("logit_adjust", {"tau": 1.0})),
    "focal": dict(kind="train", head=("fc", {}), loss=("focal", {"gamma": 2.0}),  # row 7
                  values={"train.warmup_epochs": 5}),
    "rs-whole": dict(kind="train", head=("fc", {}), loss=CE, values={  # row 8
        "train.sampler": "class_aware", "train.epochs": 25, "train.milestones": (15, 20),
        "train.save_freq": 5}),
    "cb": dict(kind="train", head=("fc", {}), loss=CB),  # row 9
    "rs-fine": dict(kind="finetune", head=("fc", {}), loss=CE, values={  # row 10
        **FINE, "train.sampler": "class_aware",
        "train.lr_dict": {"classifier": 0.1, "else": 0.0}}),
    "rw-fine": dict(kind="finetune", head=("fc", {}), loss=CB, values=FINE),  # row 11: no lr_dict
    "lws": dict(kind="finetune", loss=CE, head=("post_norm", {  # row 12
        "tau": 1.0, "norm": False, "avg_T": 1.0, "bias": False, "lws": True}), values={
        **FINE, "train.epochs": 10, "train.sampler": "class_aware",
        "train.lr_dict": {"cla_scale": 0.1, "else": 0.0}, "train.eval_freq": 1}),
    "post-cdt": dict(kind="inference", inference=("cdt", {  # row 13
        "posthoc": True, "bias": False, "tau": 0.3})),
    "post-norm": dict(kind="inference", inference=("post_norm", {  # row 14
        "tau": 1.0, "norm": True, "avg_T": 1.0, "bias": False})),
    "post-logit-adjust": dict(kind="inference", inference=("post_proc", {  # row 15
        "bias": False, "tau_p": 1.0, "posthoc": True, "classifier": "FC"})),
    "tde": dict(kind="train", loss=CE, head=("tde_sim", {  # row 16 (trained with posthoc: True)
        "bias": False, "posthoc": True, "alpha": 0.1, "gamma": 0.03125, "scale": 16.0,
        "mu": 0.9}), inference=("tde_sim", {"bias": False, "posthoc": True, "alpha": 0.1,
                                             "gamma": 0.03125, "scale": 16.0, "mu": 0.9})),
    "robal-n": dict(  # rows 17 (CIFAR-10) and 19 (CIFAR-100)
        kind="train", mode=("add_reg", ROBAL_MODE),
        head=("cos_plus", {"bias": False, "gamma": 0.03125, "scale": 1.0, "mu": 0.9}),
        loss=("multi_margin", {"m": 0.1, "s": 10.0, "tau_b": 1.2, "tau_m": 0.0}),
        inference=("post_proc", {"bias": False, "tau_p": 0.1, "posthoc": True,
                                 "classifier": "Cos", "gamma": 0.03125, "scale": 10.0}),
        per_dataset={"cifar100-lt": dict(
            mode=("add_reg", {**ROBAL_MODE, "beta_reg": 3.0}),
            head=("cos_plus", {"bias": False, "gamma": 0.03125, "scale": 1.0}),
            loss=("multi_margin", {"m": 0.2, "s": 10.0, "tau_m": 0.0, "tau_b": 0.0}),
            inference=("post_proc", {"bias": False, "tau_p": 1.5, "posthoc": True,
                                     "classifier": "Cos", "gamma": 0.03125, "scale": 10.0}))}),
    "robal-r": dict(  # rows 18 (CIFAR-10: eval file = training file) and 20 (CIFAR-100)
        kind="train", mode=("add_reg", ROBAL_MODE),
        head=("cos_plus", {"bias": False, "posthoc": False, "gamma": 0.03125, "scale": 1.0}),
        loss=("multi_margin", {"m": 0.1, "s": 10.0, "tau_b": 1.5, "tau_m": 0.3}),
        inference=("cos_plus", {"bias": False, "posthoc": False, "gamma": 0.03125, "scale": 1.0}),
        per_dataset={"cifar100-lt": dict(
            head=("cos_plus", {"bias": False, "gamma": 0.0625, "scale": 1.0, "mu": 0.9}),
            loss=("multi_margin", {"m": 0.3, "s": 10.0, "tau_m": 0.0, "tau_b": 0.0}),
            inference=("post_proc", {"posthoc": True, "classifier": "Cos", "bias": False,
                                     "tau_p": 1.7, "scale": 10.0, "gamma": 0.0625}))}),
}
SHIPPED = ["plain", "pgd-at", "trades", "cos", "ldam", "cos-he", "cdt", "logit-adjust", "focal",
           "rs-whole", "cb", "rs-fine", "rw-fine", "lws", "post-cdt", "post-norm",
           "post-logit-adjust", "tde", "robal-n", "robal-r"]


def get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return tuple(node) if isinstance(node, list) else node


def effective(kind: str, name: str, opts: dict) -> dict:
    return components.effective_options(kind, name, opts)


def resolved(name: str, dataset: str) -> dict:
    preset = loader.get_preset(name)
    extra = {"parent_checkpoint": "/parent/epoch80.pt"} if preset.kind == "finetune" else None
    return loader.resolve(preset, dataset, extra=extra).to_dict()


def test_the_catalogue_is_exactly_the_study():
    assert sorted(p.name for p in loader.list_presets()) == sorted(SHIPPED)
    assert sorted(SPEC) == sorted(SHIPPED)


@pytest.mark.parametrize("dataset", ["cifar10-lt", "cifar100-lt"])
@pytest.mark.parametrize("name", SHIPPED)
def test_preset_resolves_to_the_reference_values(name: str, dataset: str):
    spec = {**SPEC[name], **SPEC[name].get("per_dataset", {}).get(dataset, {})}
    cfg = resolved(name, dataset)
    assert cfg["kind"] == spec["kind"] and cfg["preset"] == name
    expected = {**DATASET[dataset]}
    if spec["kind"] != "inference":  # an evaluation takes the parent run's training recipe
        expected.update({**CIFAR_BASE, **spec.get("values", {})})
    for key, value in expected.items():
        assert get(cfg, key) == value, f"{name}/{dataset}: {key}"
    if spec["kind"] == "inference":
        assert cfg["inference_head"] is not None
    else:
        head, head_opt = spec["head"]
        assert cfg["model"]["head"] == head
        assert effective("head", head, cfg["model"]["head_opt"]) == effective("head", head, head_opt)
        mode, mode_opt = spec.get("mode", ("pgd_at", {}))
        assert cfg["train"]["mode"] == mode
        assert effective("mode", mode, cfg["train"]["mode_opt"]) == effective("mode", mode, mode_opt)
        for slot, (loss, opt) in (("loss", spec["loss"]), ("adv_loss", CE), ("nat_loss", CE)):
            assert cfg["train"][slot]["name"] == loss, f"{name}: train.{slot}"
            assert effective("loss", loss, cfg["train"][slot]["opt"]) == effective("loss", loss, opt)
    if "inference" in spec:
        head, head_opt = spec["inference"]
        assert cfg["inference_head"]["head"] == head
        got = cfg["inference_head"]["head_opt"]
        assert effective("head", head, got) == effective("head", head, head_opt)
    elif spec["kind"] != "inference":
        assert cfg["inference_head"] is None


@pytest.mark.parametrize("name", SHIPPED)
def test_digits_takes_the_method_of_cifar10_and_the_scale_of_its_profile(name: str):
    digits, cifar10 = resolved(name, "digits-lt"), resolved(name, "cifar10-lt")
    profile = tomllib.loads((loader.PROFILE_DIR / "digits-lt.toml").read_text())
    assert digits["train"]["attack"]["eps"] == profile["train"]["attack"]["eps"]
    assert digits["eval"]["eps"] == profile["eval"]["eps"]
    assert digits["model"]["backbone"] == profile["model"]["backbone"]
    for key in ("model.head", "model.head_opt", "train.mode", "train.mode_opt", "train.loss",
                "train.sampler", "train.lr_dict", "inference_head"):
        assert get(digits, key) == get(cifar10, key), f"{name}: {key}"


def test_only_the_robal_presets_differ_between_cifar10_and_cifar100():
    for name in SHIPPED:
        a, b = resolved(name, "cifar10-lt"), resolved(name, "cifar100-lt")
        a.pop("dataset"), b.pop("dataset")
        assert (a != b) == name.startswith("robal-"), name


@pytest.mark.parametrize("name", SHIPPED)
def test_every_preset_says_what_it_is(name: str):
    preset = loader.get_preset(name)
    assert preset.builtin and preset.path.stem == name
    assert preset.title and len(preset.summary) > 20
    text = preset.path.read_text()
    assert text.lstrip().startswith("#"), "a preset opens with a comment that says why"
    if name not in ("plain", "trades"):  # the two presets with no row in the study
        assert isinstance(preset.meta.get("paper_row"), int)
        assert preset.meta.get("reference_config")
