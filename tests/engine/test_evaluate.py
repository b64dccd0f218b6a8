"""The evaluation suite (engine/evaluate.py, eval_suite.py, eval_report.py; METHODS.md §5, §10)
on tiny digits-LT models on the CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import eval_suite, evaluate as evaluate_mod
from engine.attacks import pgd
from engine.checkpoint import save_checkpoint
from engine.eval_report import attack_metrics, class_groups, masking_flags, protocol_hash, worst_case_predictions
from engine.eval_suite import AdversarialBoundError, SuiteParams, check_adversarial, run_aa_attack
from engine.evaluate import evaluate_checkpoint, evaluate_main
from engine.events import EventWriter
from engine.loaders import balanced_subset, to_unit_float
from engine.network import build_network
from presets.schema import DatasetConfig, HeadSpec, ModelConfig, RunConfig

EVAL_FIELDS = {"eval_id", "checkpoint", "variant", "protocol", "protocol_hash", "results", "warnings", "flags"}
METRIC_FIELDS = {"accuracy", "recall", "precision", "f1", "groups", "worst_class"}
ATTACKS = ["fgsm", "pgd", "cw", "mim", "aa"]
KEYS = ["clean", "fgsm", "pgd5", "pgd10", "pgd20", "cw", "mim", "aa", "worst"]


def _config(head: str = "fc", head_opt: dict | None = None, **kw) -> RunConfig:
    return RunConfig(
        device="cpu", dataset=DatasetConfig(name="digits-lt", num_classes=10, imbalance_ratio=0.1),
        model=ModelConfig(backbone="tiny_mlp", head=head, head_opt=head_opt or {}), **kw)


def _trained_state(bundle, cfg: RunConfig) -> dict:
    """An undefended model: 150 full-batch Adam steps of clean CE on the LT training set."""
    torch.manual_seed(0)
    net = build_network(cfg.model, bundle.num_classes, 1, 8, bundle.counts)
    x, y = to_unit_float(bundle.train_images, bundle.pixel_max), bundle.train_labels
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.state_dict()


def _make_run(path: Path, cfg: RunConfig, state: dict, epoch: int = 3) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(cfg.to_json())
    save_checkpoint(path / "checkpoints" / f"epoch{epoch}.pt",
                    {"epoch": epoch, "model": state, "config": cfg.to_dict()})
    return path


@pytest.fixture(scope="module")
def fc_state(digits_bundle):
    return _trained_state(digits_bundle, _config())


@pytest.fixture
def fc_run(tmp_path, fc_state) -> Path:
    return _make_run(tmp_path / "run-fc", _config(), fc_state)


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_full_suite_bounds_order_and_event(fc_run, digits_bundle, monkeypatch):
    seen = []
    real_check = eval_suite.check_adversarial

    def spy(x_adv, x, eps, name):
        seen.append((name, (x_adv - x).abs().max().item(), x_adv.min().item(), x_adv.max().item(), eps))
        real_check(x_adv, x, eps, name)

    monkeypatch.setattr(eval_suite, "check_adversarial", spy)
    # A resume state left by an attempt on another checkpoint must not be resumed.
    (fc_run / "evals").mkdir()
    (fc_run / "evals" / "e1.aa_state").write_bytes(b"state of another model")
    (fc_run / "evals" / "e1.aa_meta").write_text('{"checkpoint_sha256": "0000"}')
    writer = EventWriter(fc_run / "events.jsonl", fc_run.name)
    spec = {"eval_id": "e1", "checkpoint": 3, "attacks": ATTACKS, "protocol": {"n_ex": 30}}
    payload = evaluate_checkpoint(fc_run, spec, writer, bundle=digits_bundle)
    writer.close()
    assert any("discarded an AutoAttack resume state" in w for w in payload["warnings"])

    # Every attack's images were checked, and lie in the eps-ball and in [0, 1].
    assert {s[0] for s in seen} == set(ATTACKS)
    for name, dist, lo, hi, eps in seen:
        assert dist <= 0.031 + 1e-6 and eps == 0.031 and lo >= 0.0 and hi <= 1.0, name
    acc = {k: r["accuracy"] for k, r in payload["results"].items()}
    assert list(acc) == KEYS
    for key in KEYS:
        assert acc[key] <= acc["clean"] + 1e-12
        assert acc["worst"] <= acc[key] + 1e-12
    for r in payload["results"].values():
        assert set(r) == METRIC_FIELDS and len(r["recall"]) == 10
        assert set(r["groups"]) == {"head", "medium", "tail"}
        assert r["worst_class"]["recall"] == min(r["recall"])

    events = _events(fc_run)
    assert events[0]["type"] == "eval_started" and events[0]["checkpoint"] == "checkpoints/epoch3.pt"
    assert {e["attack"] for e in events if e["type"] == "eval_progress"} == {"clean", *ATTACKS}
    final = events[-1]
    assert final["type"] == "eval"
    assert set(final) - {"v", "run", "seq", "time", "type"} == EVAL_FIELDS
    proto = final["protocol"]
    assert proto["n_images"] == 30 and proto["norm"] == "Linf" and proto["restarts"] == 1
    assert proto["autoattack"]["attacks"] == ["apgd-ce", "apgd-t"]
    assert proto["autoattack"]["package"].startswith("pyautoattack")
    assert len(proto["checkpoint_sha256"]) == 64
    assert final["protocol_hash"] == protocol_hash(proto) and len(final["protocol_hash"]) == 16
    assert not list((fc_run / "evals").iterdir())  # finished: the resume state is gone


def test_check_adversarial_rejects_leaving_the_threat_model():
    x = torch.full((2, 1, 4, 4), 0.5)
    check_adversarial(x + 0.03, x, 0.031, "ok")
    with pytest.raises(AdversarialBoundError):
        check_adversarial(x + 0.05, x, 0.031, "far")
    with pytest.raises(AdversarialBoundError):
        check_adversarial(torch.full_like(x, 1.02), torch.full_like(x, 0.99), 0.031, "range")


def test_fixed_seed_reproduces_exactly(fc_run, digits_bundle):
    spec = {"eval_id": "r", "attacks": ATTACKS, "protocol": {"n_ex": 20, "seed": 7}}
    first = evaluate_checkpoint(fc_run, spec, bundle=digits_bundle)
    second = evaluate_checkpoint(fc_run, spec, bundle=digits_bundle)
    assert first["results"] == second["results"] and first["protocol_hash"] == second["protocol_hash"]
    other = evaluate_checkpoint(fc_run, {**spec, "attacks": ["fgsm"], "protocol": {"n_ex": 20, "seed": 8}},
                                bundle=digits_bundle)
    assert other["protocol"]["subset_sha256"] != first["protocol"]["subset_sha256"]
    assert other["protocol_hash"] != first["protocol_hash"]


def test_undefended_model_is_broken_and_cw_aa_not_weaker(fc_run, digits_bundle):
    spec = {"eval_id": "big", "attacks": ATTACKS,
            "protocol": {"n_ex": 40, "eps": 0.25, "step_size": 0.05}}
    acc = {k: r["accuracy"] for k, r in evaluate_checkpoint(fc_run, spec, bundle=digits_bundle)["results"].items()}
    assert acc["clean"] > 0.7
    assert acc["pgd20"] <= 0.05
    assert acc["cw"] <= acc["pgd20"] + 0.05 and acc["aa"] <= acc["pgd20"] + 0.05


def test_logits_times_1000_warn_and_flag_masking(tmp_path, digits_bundle):
    cfg = _config("cos", {"scale": 16.0})
    run = _make_run(tmp_path / "run-cos", cfg, _trained_state(digits_bundle, cfg))
    base = {"eval_id": "s", "attacks": ["fgsm", "pgd", "cw", "mim"], "protocol": {"n_ex": 40, "eps": 0.1, "step_size": 0.025}}
    same = evaluate_checkpoint(run, base, bundle=digits_bundle)
    assert not any("logit scale" in w for w in same["warnings"]) and not same["flags"]["gradient_masking"]
    scaled = evaluate_checkpoint(run, {**base, "variant_head": {"head": "cos", "head_opt": {"scale": 16000.0}}},
                                 bundle=digits_bundle)
    assert scaled["variant"] == "custom" and scaled["protocol"]["head_opt"]["scale"] == 16000.0
    # Same attack protocol, another head: the hash still lines the two up for comparison.
    assert scaled["protocol_hash"] == same["protocol_hash"]
    assert any("logit scale" in w and "x1000" in w for w in scaled["warnings"])
    assert scaled["flags"]["gradient_masking"] is True
    assert scaled["flags"]["zero_grad_frac"] > 0.5
    # Clean accuracy does not depend on a global scale; only CE-based robustness inflates.
    assert scaled["results"]["clean"]["accuracy"] == same["results"]["clean"]["accuracy"]
    assert scaled["results"]["pgd20"]["accuracy"] > same["results"]["pgd20"]["accuracy"] + 0.2


def test_masking_flags_thresholds():
    flags, warnings = masking_flags({"pgd20": 0.50, "mim": 0.40, "cw": 0.44, "aa": 0.46}, 0.0, "pgd20")
    assert flags["gradient_masking"] is True and flags["masking_gap"] == pytest.approx(0.06)
    assert warnings and "pgd20" in warnings[0] and "cw" in warnings[0]
    flags, _ = masking_flags({"pgd20": 0.50, "cw": 0.46}, 0.0, "pgd20")
    assert flags["gradient_masking"] is False
    flags, _ = masking_flags({"pgd20": 0.50, "fgsm": 0.9}, None, "pgd20")
    assert flags["masking_gap"] is None and flags["gradient_masking"] is False


def test_worst_case_is_pointwise():
    y = torch.tensor([0, 1, 2, 3])
    preds = {"clean": torch.tensor([0, 1, 2, 0]), "a": torch.tensor([1, 1, 2, 0]), "b": torch.tensor([0, 2, 2, 0])}
    assert worst_case_predictions(preds, y).tolist() == [1, 2, 2, 0]


def test_n_ex_subset_is_balanced_and_deterministic(fc_run, digits_bundle):
    labels = digits_bundle.test_labels
    idx = balanced_subset(labels, 50, 10, seed=3)
    assert torch.equal(idx, balanced_subset(labels, 50, 10, seed=3))
    assert torch.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    spec = {"eval_id": "n", "attacks": ["fgsm"], "protocol": {"n_ex": 50, "seed": 3}}
    a = evaluate_checkpoint(fc_run, spec, bundle=digits_bundle)["protocol"]
    b = evaluate_checkpoint(fc_run, spec, bundle=digits_bundle)["protocol"]
    assert a["n_images"] == 50 and a["subset_sha256"] == b["subset_sha256"]


class _Interrupting(torch.nn.Module):
    def __init__(self, model, fail_after):
        super().__init__()
        self.model, self.calls, self.fail_after = model, 0, fail_after

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated interruption")
        return self.model(x)


def test_interrupted_autoattack_resumes_from_state(tmp_path, fc_state, digits_bundle):
    net = build_network(_config().model, 10, 1, 8, digits_bundle.counts)
    net.load_state_dict(fc_state)
    net.eval().requires_grad_(False)
    idx = balanced_subset(digits_bundle.test_labels, 20, 10, seed=0)
    x = to_unit_float(digits_bundle.test_images[idx], digits_bundle.pixel_max)
    y = digits_bundle.test_labels[idx]
    params = SuiteParams(0.1, 0.025, 20, 50.0, 1.0, 8, 0, "reference")
    cpu = torch.device("cpu")
    events = []
    progress = lambda attack, done, total: events.append((attack, done, total))  # noqa: E731
    clean_correct = int((net(x).argmax(1) == y).sum())
    full = _Interrupting(net, None).eval()
    reference = run_aa_attack(full, x, y, params, cpu, progress, None, clean_correct)
    state = tmp_path / "e.aa_state"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_aa_attack(_Interrupting(net, full.calls // 2).eval(), x, y, params, cpu, progress, state,
                      clean_correct)
    assert state.exists()
    second = _Interrupting(net, None).eval()
    resumed = run_aa_attack(second, x, y, params, cpu, progress, state, clean_correct)
    assert torch.equal(resumed, reference)
    assert second.calls < full.calls  # it went on from the saved state, not from scratch
    assert (reference == y).float().mean() < (net(x).argmax(1) == y).float().mean()
    done = [d for a, d, t in events if a == "aa"]
    assert done[0] == 0 and done[-1] == events[-1][2]


def test_default_inference_head_is_used(tmp_path, digits_bundle):
    cfg = _config("cos_plus", {"scale": 1.0, "gamma": 0.0625},
                  inference_head=HeadSpec("post_proc", {"classifier": "Cos", "posthoc": True, "tau_p": 1.5,
                                                        "scale": 10.0}))
    run = _make_run(tmp_path / "run-robal", cfg, _trained_state(digits_bundle, cfg))
    p = evaluate_checkpoint(run, {"eval_id": "d", "attacks": ["fgsm"], "protocol": {"n_ex": 20}},
                            bundle=digits_bundle)
    assert p["variant"] == "default-inference-head"
    assert p["protocol"]["head"] == "post_proc" and p["protocol"]["head_opt"]["gamma"] == 0.0625
    # Training scale (CE on scale-1 cosine) differs from the ×10 inference head: §5.7 warning.
    assert any("logit scale" in w for w in p["warnings"])


def test_evaluate_main_events_and_exit_codes(fc_run, monkeypatch):
    evals = fc_run / "evals"
    evals.mkdir()
    good = evals / "ok.json"
    good.write_text(json.dumps({"eval_id": "ok", "checkpoint": "last", "attacks": ["fgsm", "pgd"],
                                "variant": "post-logit-adjust", "protocol": {"n_ex": 20}}))
    assert evaluate_main(fc_run, good) == 0
    last = _events(fc_run)[-1]
    assert last["type"] == "eval" and last["variant"] == "post-logit-adjust"
    assert last["protocol"]["head"] == "post_proc"

    bad = evals / "bad.json"
    bad.write_text(json.dumps({"eval_id": "bad", "attacks": ["fgsm", "nope"]}))
    assert evaluate_main(fc_run, bad) == 1
    failed = _events(fc_run)[-1]
    assert failed["type"] == "eval_failed" and failed["eval_id"] == "bad" and "nope" in failed["message"]

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(evaluate_mod, "evaluate_checkpoint", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert evaluate_main(fc_run, good) == 143
    cancelled = _events(fc_run)[-1]
    assert cancelled["type"] == "eval_cancelled" and cancelled["eval_id"] == "ok"
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_pgd_block_records_iterates_5_and_10_exactly(fc_state, digits_bundle):
    """PGD-5/PGD-10 come from the gradient forwards of PGD-20; they must equal the predictions
    on those iterates that attacks.pgd's own ``record_steps`` forwards give."""
    net = build_network(_config().model, 10, 1, 8, digits_bundle.counts)
    net.load_state_dict(fc_state)
    net.eval().requires_grad_(False)
    x = to_unit_float(digits_bundle.test_images[:50], digits_bundle.pixel_max)
    y = digits_bundle.test_labels[:50]
    params = SuiteParams(0.1, 0.01, 20, 50.0, 1.0, 32, 4, "reference")
    preds, frac = eval_suite.run_gradient_attack("pgd", net, x, y, params, torch.device("cpu"),
                                                 lambda *a: None)
    assert frac is None and set(preds) == {"pgd5", "pgd10", "pgd20"}
    gen = torch.Generator().manual_seed(eval_suite.attack_seed(4, "pgd"))
    expected = {5: [], 10: [], 20: []}
    for start in range(0, 50, 32):
        res = pgd(net, x[start:start + 32], y[start:start + 32], 0.1, 0.01, 20, record_steps=(5, 10),
                  generator=gen)
        expected[5].append(res.step_logits[5].argmax(1))
        expected[10].append(res.step_logits[10].argmax(1))
        expected[20].append(net(res.x_adv).argmax(1))
    for step, parts in expected.items():
        assert torch.equal(preds[f"pgd{step}"], torch.cat(parts)), step
    assert not torch.equal(preds["pgd5"], preds["pgd20"])  # the iterates really differ


def test_bad_requests_fail_clearly(fc_run, digits_bundle):
    with pytest.raises(ValueError, match="unknown protocol keys"):
        evaluate_checkpoint(fc_run, {"protocol": {"epsilon": 0.1}}, bundle=digits_bundle)
    with pytest.raises(ValueError, match="num_steps"):
        evaluate_checkpoint(fc_run, {"protocol": {"num_steps": 0}}, bundle=digits_bundle)
    with pytest.raises(FileNotFoundError, match="epoch9"):
        evaluate_checkpoint(fc_run, {"checkpoint": 9}, bundle=digits_bundle)


def test_cifar100_sized_runs_get_decile_group_means():
    counts = [int(500 * 0.1 ** (c / 99)) for c in range(100)]
    groups = class_groups(counts)
    assert {"head", "medium", "tail", "0-9", "90-99"} <= set(groups) and len(groups) == 13
    y = torch.arange(100).repeat(2)
    pred = torch.where(y % 3 == 0, (y + 1) % 100, y)  # every third class always wrong
    metrics = attack_metrics(pred, y, 100, groups)
    for start in range(0, 100, 10):
        wrong = sum(1 for c in range(start, start + 10) if c % 3 == 0)
        assert metrics["groups"][f"{start}-{start + 9}"] == pytest.approx(1 - wrong / 10)
    assert metrics["worst_class"] == {"class": 0, "recall": 0.0}


def test_engine_process_is_cancelled_by_sigterm(fc_run, project_env):
    """``python -m engine evaluate`` in its own process: SIGTERM mid-attack → eval_cancelled, 143."""
    spec = fc_run / "evals" / "long.json"
    spec.parent.mkdir()
    spec.write_text(json.dumps({"eval_id": "long", "attacks": ["pgd"], "protocol": {"num_steps": 10**7}}))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "evaluate", str(fc_run), str(spec)],
                            env=project_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            path = fc_run / "events.jsonl"
            if path.exists() and any(e.get("attack") == "pgd" for e in _events(path.parent)):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    events = _events(fc_run)
    assert [e["type"] for e in events][0] == "eval_started"
    assert events[-1]["type"] == "eval_cancelled" and events[-1]["signal"] == "SIGTERM"
