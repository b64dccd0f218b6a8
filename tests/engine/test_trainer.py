"""The training loop (``engine.trainer``) on tiny digits-LT: resume ≡ an uninterrupted run,
determinism, the event stream's contents (DESIGN.md), fine-tuning from a parent checkpoint (ours
and the reference's bare ``model.module.`` layout, METHODS.md §4.5), corrupted checkpoints, and
the process behaviour of ``python -m engine train`` (SIGTERM, crash, bad config)."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from engine import checkpoint as ckpt
from engine.datasets import load_dataset
from engine.trainer import Trainer, train_main
from engine.train_support import keep_head_fp32
from presets.loader import deep_merge, get_preset, resolve

TINY = {"model": {"backbone_opt": {"width": 8}}, "dataset": {"eval_subset": 60},
        "eval": {"num_steps": 2},
        "train": {"save_freq": 1, "eval_freq": 1, "log_interval": 5}}
# Compounding lr with a milestone at epoch 2: epoch 3's lr depends on the schedule's history.
COMPOUNDING = {"train": {"lr_schedule": "reference_compounding", "milestones": [2]}}
VOLATILE = frozenset({"time", "seconds", "images_per_s", "eta_s", "pid"})
PLACE = frozenset({"run", "seq"})  # where an event sits in its file, not what it says
EVENT_TYPES = {"started", "progress", "epoch", "checkpoint", "warning", "finished"}


class Interrupt(Exception):
    """Stands in for a killed process: raised right after a chosen epoch's checkpoint."""


def make_run(parent: Path, name: str = "run", preset: str = "pgd-at", epochs: int = 3,
             overrides: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    cfg = resolve(get_preset(preset), "digits-lt", deep_merge(TINY, overrides or {}),
                  deep_merge({"train": {"epochs": epochs}}, extra or {}))
    run_dir = parent / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    return run_dir


def train(run_dir: Path, monkeypatch: Optional[pytest.MonkeyPatch] = None,
          stop_after: Optional[int] = None) -> None:
    """Train in-process through ``train_main`` (so the stream ends with ``finished``); with
    ``stop_after`` the run dies right after that epoch's checkpoint, leaving no final event."""
    if stop_after is None:
        assert train_main(run_dir) == 0, read_events(run_dir)[-1]
        return
    original = Trainer._save

    def save_then_die(self: Trainer, epoch: int, metrics: dict) -> None:
        original(self, epoch, metrics)
        if epoch == stop_after:
            raise Interrupt(epoch)

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    trainer = Trainer(run_dir)
    try:
        trainer.setup()
        with pytest.raises(Interrupt):
            trainer.run()
    finally:
        trainer.events.close()
        monkeypatch.undo()


def read_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def stable(event: dict, drop: frozenset = frozenset()) -> dict:
    return {k: v for k, v in event.items() if k not in VOLATILE | drop}


def model_at(run_dir: Path, epoch: int) -> dict:
    return ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, epoch))["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """PGD-AT, compounding schedule, trained 3 epochs straight (checkpoints every epoch)."""
    run_dir = make_run(tmp_path_factory.mktemp("baseline"), overrides=COMPOUNDING)
    train(run_dir)
    return run_dir


@pytest.mark.parametrize("sampler", [None, "class_aware"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, sampler):
    # (a class-aware epoch is 10 × 121 draws: batches of 64 keep it short)
    overrides = deep_merge(COMPOUNDING, {"train": {"sampler": sampler,
                                                   "batch_size": 64 if sampler else 32}})
    straight = make_run(tmp_path, "straight", overrides=overrides)
    train(straight)
    resumed = make_run(tmp_path, "resumed", overrides=overrides)
    train(resumed, monkeypatch, stop_after=2)
    assert [e["epoch"] for e in of_type(read_events(resumed), "epoch")] == [1, 2]
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(resumed, 2))
    if sampler:  # the class-aware cycling iterators are mid-cycle: their state must carry over
        iters = state["loader"]["sampler"]["index_iters"]
        assert any(0 <= it["pos"] < len(it["items"]) - 1 for it in iters)
    assert any(v["momentum_buffer"].abs().sum() > 0 for v in state["optimizer"]["state"].values())

    train(resumed)

    assert_same_weights(model_at(straight, 3), model_at(resumed, 3))
    a, b = read_events(straight), read_events(resumed)
    assert [stable(e, PLACE) for e in of_type(a, "epoch")] == \
        [stable(e, PLACE) for e in of_type(b, "epoch")]
    restart = of_type(b, "started")[-1]
    assert restart["resumed"] is True and restart["start_epoch"] == 2
    assert b[-1]["type"] == "finished" and len(of_type(b, "finished")) == 1
    # compounding: 0.05 · d(1) · d(2) · d(3) with d = 1, 0.1, 0.1
    assert of_type(b, "epoch")[-1]["lr"] == pytest.approx(0.05 * 0.1 * 0.1)


def test_same_seed_same_event_stream_and_other_seed_differs(tmp_path):
    """RoBal-R (add_reg, CosPlus moving average, four train-mode forwards) twice with one seed:
    identical streams, checkpoint digests included; another seed changes the losses."""
    streams = []
    for folder, seed, epochs in (("a", 1, 2), ("b", 1, 2), ("c", 2, 1)):
        run_dir = make_run(tmp_path / folder, preset="robal-r", epochs=epochs,
                           extra={"seed": seed})
        train(run_dir)
        streams.append([stable(e) for e in read_events(run_dir)])
    first, again, other = streams
    assert first == again
    epochs = of_type(first, "epoch")
    assert len(epochs) == 2 and epochs[-1]["clean_acc"] is not None
    assert of_type(first, "epoch")[0]["train_loss"] != of_type(other, "epoch")[0]["train_loss"]


def test_event_stream_contents(baseline):
    events = read_events(baseline)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(e["v"] == 1 and e["run"] == baseline.name for e in events)
    assert {e["type"] for e in events} <= EVENT_TYPES
    assert events[0]["type"] == "started" and events[-1]["type"] == "finished"

    started = events[0]
    bundle = load_dataset("digits-lt", 0.1, None, False)
    counts = torch.bincount(bundle.train_labels, minlength=10).tolist()
    assert started["counts"] == counts and counts[0] > counts[-1]
    kept = ",".join(str(i) for i in bundle.kept_indices)
    assert started["fingerprint"] == hashlib.sha256(kept.encode()).hexdigest()
    plain = json.loads((baseline / "config.json").read_text())
    blob = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
    assert started["config_hash"] == hashlib.sha256(blob).hexdigest()[:16]
    assert started["device"] == "cpu" and started["precision"] == "float32"

    epochs = of_type(events, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["lr"] for e in epochs] == pytest.approx([0.05, 0.005, 0.0005])
    labels = bundle.test_labels[:60]
    per_class_n = torch.bincount(labels, minlength=10).tolist()
    for e in epochs:
        assert 0 < e["train_loss"] < 10
        for kind in ("clean", "robust"):
            recall = e[f"per_class_{kind}"]
            assert len(recall) == 10 and all(0 <= r <= 1 for r in recall if r is not None)
            # overall accuracy = per-class recall weighted by the subset's class sizes
            weighted = sum(r * n for r, n in zip(recall, per_class_n) if n) / len(labels)
            assert e[f"{kind}_acc"] == pytest.approx(weighted)

    batches = sum(counts) // 32
    progress = of_type(events, "progress")
    assert all(p["batches"] == batches and p["images_per_s"] > 0 and p["eta_s"] >= 0
               for p in progress)
    per_epoch = [p["batch"] for p in progress if p["epoch"] == 1]
    assert per_epoch == sorted({*range(5, batches + 1, 5), batches})
    assert progress[-1]["eta_s"] == 0

    saved = of_type(events, "checkpoint")
    assert [c["epoch"] for c in saved] == [1, 2, 3]
    for c in saved:
        assert c["path"] == f"checkpoints/epoch{c['epoch']}.pt"
        assert hashlib.sha256((baseline / c["path"]).read_bytes()).hexdigest() == c["sha256"]
    assert events[-1]["epoch"] == 3 and events[-1]["clean_acc"] == epochs[-1]["clean_acc"]


def test_lws_finetune_continues_the_parent(tmp_path, baseline):
    parent_path = ckpt.checkpoint_path(baseline, 2)
    parent = ckpt.load_checkpoint(parent_path)["model"]
    run_dir = make_run(tmp_path, preset="lws", epochs=1,
                       extra={"parent_checkpoint": str(parent_path), "parent_run": "baseline"})
    trainer = Trainer(run_dir)
    trainer.setup()
    own = trainer.model.state_dict()
    assert trainer.start_epoch == 2
    assert torch.equal(own["classifier.fc.weight"], parent["classifier.fc.weight"])
    assert torch.equal(own["classifier.cla_scale"], torch.ones(10))
    for key in (k for k in parent if k.startswith("backbone.")):
        assert torch.equal(own[key], parent[key]), key
    trainer.run()
    trainer.events.close()

    events = read_events(run_dir)
    assert [e["epoch"] for e in of_type(events, "epoch")] == [3]
    assert of_type(events, "epoch")[0]["lr"] == pytest.approx(0.1)  # cla_scale's lr
    assert [c["epoch"] for c in of_type(events, "checkpoint")] == [3]
    assert of_type(events, "started")[0]["base_epoch"] == 2
    missing = of_type(events, "warning")[0]["missing"]
    assert missing == ["classifier.cla_scale"]  # an FC parent has no scales: reported, not fatal
    child = model_at(run_dir, 3)
    for key in ("classifier.fc.weight", *(k for k in parent if k.endswith((".weight", ".bias"))
                                          and k.startswith("backbone."))):
        assert torch.equal(child[key], parent[key]), key  # lr 0: frozen
    assert not torch.equal(child["classifier.cla_scale"], torch.ones(10))
    # freeze = "lr0" (reference, METHODS.md §9.1.3): BatchNorm running statistics still move
    assert not torch.equal(child["backbone.features.1.running_mean"],
                           parent["backbone.features.1.running_mean"])


def test_reference_layout_checkpoint_loads_as_parent(tmp_path, baseline):
    weights = model_at(baseline, 2)
    bare = {f"model.module.{k}": v for k, v in weights.items()}
    bare["model.module.backbone.sub_block1.conv.weight"] = torch.zeros(3)  # skipped (§4.5)
    ref_path = tmp_path / "reference" / "epoch80.pt"
    ref_path.parent.mkdir()
    torch.save(bare, ref_path)
    run_dir = make_run(tmp_path, preset="rs-fine", epochs=1,
                       extra={"parent_checkpoint": str(ref_path), "parent_run": "reference"})
    trainer = Trainer(run_dir)
    trainer.setup()
    assert_same_weights(trainer.model.state_dict(), weights)
    trainer.run()
    trainer.events.close()
    events = read_events(run_dir)
    assert not of_type(events, "warning")
    assert of_type(events, "started")[0]["parent"]["format"] == "reference"
    assert [e["epoch"] for e in of_type(events, "epoch")] == [81]
    child = model_at(run_dir, 81)
    assert torch.equal(child["backbone.features.0.weight"], weights["backbone.features.0.weight"])
    assert not torch.equal(child["classifier.fc.weight"], weights["classifier.fc.weight"])


def test_corrupted_newest_checkpoint_is_skipped(tmp_path, monkeypatch, baseline):
    run_dir = make_run(tmp_path, overrides=COMPOUNDING)
    train(run_dir, monkeypatch, stop_after=2)
    newest = ckpt.checkpoint_path(run_dir, 2)
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn write
    train(run_dir)
    events = read_events(run_dir)
    warning = of_type(events, "warning")[0]
    assert "epoch2.pt" in warning["message"]
    assert of_type(events, "started")[-1]["start_epoch"] == 1
    assert [e["epoch"] for e in of_type(events, "epoch")] == [1, 2, 2, 3]
    assert_same_weights(model_at(run_dir, 3), model_at(baseline, 3))


def test_resume_of_a_finished_run_trains_nothing(tmp_path, baseline):
    run_dir = tmp_path / baseline.name
    shutil.copytree(baseline, run_dir)
    before = len(read_events(run_dir))
    assert train_main(run_dir) == 0
    new = read_events(run_dir)[before:]
    assert [e["type"] for e in new] == ["started", "finished"]
    last_epoch = of_type(read_events(baseline), "epoch")[-1]
    assert new[1]["epoch"] == 3 and new[1]["robust_acc"] == last_epoch["robust_acc"]


def test_invalid_config_is_a_failed_event_naming_the_key(tmp_path):
    run_dir = make_run(tmp_path)
    plain = json.loads((run_dir / "config.json").read_text())
    plain["train"]["eval_freq"] = 0  # impossible: the manager's validation would refuse it
    (run_dir / "config.json").write_text(json.dumps(plain))
    assert train_main(run_dir) == 2
    events = read_events(run_dir)
    assert [e["type"] for e in events] == ["failed"]
    assert "train.eval_freq" in events[0]["message"]


def start_engine(run_dir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "train", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(run_dir: Path, kind: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "events.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and f'"type":"{kind}"' in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event (exit {proc.poll()}): {proc.stderr.read()[-2000:]}")


def test_sigterm_is_a_cancelled_event_and_exit_143(tmp_path, project_env):
    run_dir = make_run(tmp_path, epochs=200)
    proc = start_engine(run_dir, project_env)
    try:
        wait_for(run_dir, "progress", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
    events = read_events(run_dir)
    assert events[-1]["type"] == "cancelled" and events[-1]["signal"] == "SIGTERM"
    assert not of_type(events, "finished")


def test_crash_in_the_loop_is_a_failed_event_and_exit_1(tmp_path):
    """In-process ``train_main`` returns what ``python -m engine train`` exits with."""
    run_dir = make_run(tmp_path, epochs=2)
    (run_dir / "checkpoints").write_text("not a folder")  # the first save cannot succeed
    assert train_main(run_dir) == 1
    events = read_events(run_dir)
    assert [e["type"] for e in events][-2:] == ["epoch", "failed"]  # it died inside the loop
    failed = events[-1]
    assert failed["message"].startswith(("FileExistsError", "NotADirectoryError"))
    assert "save_checkpoint" in failed["traceback"] and "Traceback" in failed["traceback"]


def test_head_stays_float32_under_autocast():
    """Under bf16 autocast the backbone's output is bf16, yet the head (and hence every loss)
    computes in float32, exactly as the float32 head applied to those features."""
    from engine.network import build_network
    from presets.schema import ModelConfig

    torch.manual_seed(0)
    net = build_network(ModelConfig(backbone="tiny_mlp", head="cos_plus",
                                    head_opt={"scale": 1.0}), 10, 1, 8, [5] * 10)
    net.eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = net(x)
        features = net.backbone(x)
    keep_head_fp32(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    with torch.no_grad():
        expected = net.classifier.__class__.forward(net.classifier, features.float())
    assert torch.equal(logits.detach(), expected)
    assert not torch.equal(raw.detach().float(), expected)  # what bf16 inside the head costs
    twin = copy.deepcopy(net)  # the wrapped forward follows the copy's own weights
    with torch.no_grad():
        twin.classifier.weight.mul_(-1)
        assert torch.equal(twin.classifier(features), -net.classifier(features))
    assert list(net.state_dict()) == list(build_network(
        ModelConfig(backbone="tiny_mlp", head="cos_plus"), 10, 1, 8, [5] * 10).state_dict())


def _bench_train():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_robal_reference_step_matches_a_reference_style_loop_bitwise():
    """RoBal (add_reg + trades, four train-mode forwards): the engine's step and the
    reference-style loop of benchmarks/bench_train.py (written from METHODS.md §4.2 with
    ``loss.backward()`` attacks and ``F.kl_div(..., reduction='sum')``) give the same loss."""
    bench = _bench_train()
    case = next(c for c in bench.CASES if c.mode == "add_reg" and c.robal_forwards == "reference")
    spec = ("small_cnn", {"width": 4})
    from engine.network import build_network
    from presets.schema import ModelConfig

    torch.manual_seed(0)
    base = build_network(ModelConfig(backbone=spec[0], backbone_opt=spec[1], head=case.head,
                                     head_opt=case.head_opt), 10, 3, 16, bench.COUNTS)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    engine_loss, reference_loss = bench.first_step_losses(case, base, spec, x, y,
                                                          torch.device("cpu"))
    assert engine_loss == reference_loss and engine_loss > 0


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 300.0])
def test_robal_trades_regulariser_is_the_reference_kl_to_the_bit(scale):
    """``reg_trades`` gives the reference's ``KLDivLoss(size_average=False)(log(p_adv + 1e-12),
    p_nat) / B`` exactly, and its gradient stays finite where ``p_nat`` underflows to 0 (scale
    300), where the reference's is NaN."""
    import torch.nn.functional as F

    from engine.modes import reg_trades

    gen = torch.Generator().manual_seed(3)
    z_nat = (scale * torch.randn(16, 10, generator=gen)).requires_grad_()
    z_adv = (z_nat.detach() + 1e-3 * torch.randn(16, 10, generator=gen)).requires_grad_()
    expected = F.kl_div(torch.log(F.softmax(z_adv, 1) + 1e-12), F.softmax(z_nat, 1),
                        reduction="sum") / 16
    value = reg_trades(z_nat, z_adv, torch.zeros(16, dtype=torch.long))
    assert torch.equal(value, expected)
    value.backward()
    assert torch.isfinite(z_nat.grad).all() and torch.isfinite(z_adv.grad).all()
