"""Every preset runs: one training step per train/fine-tune preset on tiny digits-LT, and every
inference head builds on a trained checkpoint, loads it and gives the logits of its formula
(METHODS.md §2.3), computed here independently from the checkpoint's weights."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from engine import checkpoint as ckpt
from engine.datasets import load_dataset
from engine.network import build_network, load_reference_state_dict
from engine.trainer import Trainer
from presets import loader

TINY = {"dataset": {"eval_subset": 20},
        "model": {"backbone": "tiny_mlp", "backbone_opt": {"hidden": 64}},
        "train": {"epochs": 1, "batch_size": 256, "log_interval": 1, "attack": {"num_steps": 1}},
        "eval": {"num_steps": 1, "batch_size": 32}}
# A class-aware epoch of digits-LT is 10·121 draws: one batch of 1 024 makes it one step.
CLASS_AWARE_BATCH = 1024
TRAINED = ["plain", "pgd-at", "trades", "cos", "ldam", "cos-he", "cdt", "logit-adjust", "focal",
           "rs-whole", "cb", "tde", "robal-n", "robal-r"]
FINETUNED = ["rs-fine", "rw-fine", "lws"]
TIMINGS: dict[str, float] = {}


def tiny_config(name: str, parent: Path | None = None):
    preset = loader.get_preset(name)
    extra = {"parent_checkpoint": str(parent or "/parent.pt"), "parent_run": "parent"}
    extra = extra if preset.kind == "finetune" else None
    overrides = loader.deep_merge(TINY, {})
    if loader.resolve(preset, "digits-lt", extra=extra).train.sampler == "class_aware":
        overrides["train"]["batch_size"] = CLASS_AWARE_BATCH
    return loader.resolve(preset, "digits-lt", overrides, extra)


def train(tmp: Path, name: str, parent: Path | None = None, run_name: str | None = None) -> Path:
    """Train ``name`` in-process in a run dir under ``tmp``; returns its last checkpoint."""
    start = time.perf_counter()
    run_dir = tmp / (run_name or name)
    run_dir.mkdir()
    cfg = tiny_config(name, parent)
    (run_dir / "config.json").write_text(cfg.to_json())
    trainer = Trainer(run_dir)
    trainer.setup()
    trainer.run()
    trainer.events.close()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["type"] == "progress"]
    assert len(progress) == 1, f"{name}: one step per preset, got {len(progress)}"
    loss = progress[0]["loss"]
    assert loss == loss and abs(loss) < 1e6, f"{name}: loss {loss}"
    epoch = [e for e in events if e["type"] == "epoch"][-1]
    assert 0.0 <= epoch["robust_acc"] <= 1.0
    TIMINGS[name] = time.perf_counter() - start
    return ckpt.checkpoint_path(run_dir, epoch["epoch"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def parent(runs) -> Path:
    """A tiny PGD-AT baseline: the parent of the fine-tunes and the inference variants."""
    return train(runs, "pgd-at", run_name="parent")


@pytest.mark.parametrize("name", TRAINED)
def test_train_preset_takes_one_step(name, runs):
    path = train(runs, name)
    assert path.is_file()


@pytest.mark.parametrize("name", FINETUNED)
def test_finetune_preset_continues_its_parent(name, runs, parent):
    path = train(runs, name, parent)
    state = ckpt.load_checkpoint(path, torch.device("cpu"))
    assert state["epoch"] == 2  # numbering continues the parent's epoch 1
    before = ckpt.load_checkpoint(parent, torch.device("cpu"))["model"]
    after = state["model"]
    backbone_moved = not torch.equal(before["backbone.fc.weight"], after["backbone.fc.weight"])
    # rs-fine / lws freeze the backbone with lr 0 (reference); rw-fine trains everything (§9.1.4)
    assert backbone_moved == (name == "rw-fine")
    if name == "lws":  # only the per-class scales learn; the FC weights stay the parent's
        assert torch.equal(before["classifier.fc.weight"], after["classifier.fc.weight"])
        assert not torch.equal(after["classifier.cla_scale"], torch.ones(10))


def eval_network(cfg, state: dict):
    bundle = load_dataset("digits-lt", cfg.dataset.imbalance_ratio)
    model_cfg = cfg.model.__class__(backbone=cfg.model.backbone,
                                    backbone_opt=cfg.model.backbone_opt,
                                    head=cfg.inference_head.head,
                                    head_opt=cfg.inference_head.head_opt)
    net = build_network(model_cfg, 10, 1, 8, bundle.counts)
    report = load_reference_state_dict(net, state)
    net.eval()
    x = bundle.test_images[:16].float() / bundle.pixel_max
    return net, report, x, torch.tensor(bundle.counts, dtype=torch.float64)


def baseline_parts(state: dict, net, x):
    with torch.no_grad():
        f = net.backbone(x).double()
    return f, state["classifier.fc.weight"].double(), state["classifier.fc.bias"].double()


@pytest.mark.parametrize("name", ["post-cdt", "post-norm", "post-logit-adjust"])
def test_inference_preset_reads_the_baseline(name, parent):
    cfg = tiny_config(name)
    state = ckpt.load_checkpoint(parent, torch.device("cpu"))["model"]
    net, report, x, counts = eval_network(cfg, state)
    assert not report["mismatched"] and not [k for k in report["missing"] if "cla_scale" not in k]
    with torch.no_grad():
        z = net(x).double()
    f, w, b = baseline_parts(state, net, x)
    prior = counts / counts.sum()
    expected = {"post-cdt": (f @ w.T + b) / counts ** 0.3,  # row 13
                "post-norm": f @ (w / w.norm(dim=1, keepdim=True)).T,  # row 14: bias dropped
                "post-logit-adjust": f @ w.T + b - prior.log()}[name]  # row 15
    assert torch.allclose(z, expected, atol=1e-4)


@pytest.mark.parametrize("name", ["robal-n", "robal-r", "tde"])
def test_train_preset_default_variant_reads_its_own_checkpoint(name, runs):
    path = runs / name
    if not path.exists():
        train(runs, name)
    cfg = json.loads((path / "config.json").read_text())
    from presets.schema import RunConfig

    cfg = RunConfig.from_dict(cfg)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(path, 1), torch.device("cpu"))["model"]
    net, report, x, counts = eval_network(cfg, state)
    assert report["loaded"] > 0 and not report["mismatched"]
    assert not report["missing"]
    with torch.no_grad():
        z = net(x).double()
        f = net.backbone(x).double()
    w = state["classifier.weight"].double()
    gamma = cfg.inference_head.head_opt["gamma"]
    cos = (f / f.norm(dim=1, keepdim=True)) @ (w / (w.norm(dim=1, keepdim=True) + gamma)).T
    if name == "robal-n":  # row 17: 10·cos' − 0.1·log π
        expected = 10 * cos - 0.1 * (counts / counts.sum()).log()
    elif name == "robal-r":  # row 18: the eval file is the training file, CosPlus at scale 1
        expected = cos
    else:  # TDE debiased path with the trained moving sum m
        m = state["classifier.moving_ed"].double()
        f_unit = f / f.norm(dim=1, keepdim=True)
        c = torch.nn.functional.cosine_similarity(f, m, dim=1).unsqueeze(1)
        expected = 16 * ((f_unit - 0.1 * c * m) @ (w / (w.norm(dim=1, keepdim=True) + gamma)).T)
    assert torch.allclose(z, expected, atol=1e-4)


def test_zz_whole_file_is_fast():
    """Profiled: each one-step run takes well under a second on one CPU thread."""
    assert TIMINGS, "the training tests ran first"
    assert max(TIMINGS.values()) < 10, TIMINGS
