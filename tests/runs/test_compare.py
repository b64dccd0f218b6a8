"""runs/compare.py: rows per run and evaluation, protocol mismatches flagged, every output format,
config diffs, and head/medium/tail groups (Liu et al. 2019 thresholds, thirds fallback)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from runs.catalog import Catalog, RunNotFound
from runs.compare import COLUMNS, class_groups, compare_rows, config_diff, flatten, render_compare
from runs.compare_render import FORMATS, eps_text, latex_escape
from runs.event_log import append_event

COUNTS = [150, 120, 50, 30, 10, 5]  # many > 100: 0,1 · medium 20..100: 2,3 · few < 20: 4,5
PER_CLASS_ROBUST = [0.9, 0.7, 0.5, 0.3, 0.2, 0.0]


def config(num_steps: int = 20, lr: float = 0.1) -> dict:
    return {"preset": "pgd-at", "seed": 1, "train": {"lr": lr, "epochs": 2},
            "eval": {"eps": 8 / 255, "step_size": 2 / 255, "num_steps": num_steps},
            "dataset": {"name": "cifar10-lt", "eval_subset": 100, "imbalance_ratio": 0.01},
            "model": {"backbone": "wrn", "backbone_opt": {"depth": 34}, "head": "fc"}}


def add_run(cat: Catalog, run_id: str, preset: str = "pgd-at", cfg: dict | None = None) -> Path:
    row = cat.create_run({"id": run_id, "name": f"{run_id}-name", "preset": preset,
                          "dataset": "cifar10-lt", "kind": "train"},
                         json.dumps(cfg or config()))
    run_dir = Path(row["run_dir"])
    append_event(run_dir, "started", counts=COUNTS, epochs=2)
    append_event(run_dir, "epoch", epoch=2, clean_acc=0.6, robust_acc=0.35,
                 per_class_clean=[0.9] * 6, per_class_robust=PER_CLASS_ROBUST)
    append_event(run_dir, "finished", epoch=2)
    return run_dir


def add_eval(run_dir: Path, eval_id: str, protocol_hash: str, aa: float | None = 0.3) -> dict:
    def result(acc: float, tail: float = 0.05, worst: float = 0.0) -> dict:
        return {"accuracy": acc, "groups": {"head": acc + 0.2, "medium": acc, "tail": tail},
                "worst_class": {"class": 5, "recall": worst}, "recall": [acc] * 6}

    results = {"clean": result(0.62), "fgsm": result(0.4), "pgd5": result(0.38),
               "pgd20": result(0.36), "mim": result(0.37), "cw": result(0.34),
               "worst": result(0.29, tail=0.01, worst=0.0)}
    if aa is not None:
        results["aa"] = result(aa)
    append_event(run_dir, "eval", eval_id=eval_id, checkpoint="checkpoints/epoch2.pt",
                 variant=None, protocol={"eps": 8 / 255, "num_steps": 20},
                 protocol_hash=protocol_hash, results=results, warnings=[], flags={})
    return results


@pytest.fixture
def cat(advlt_home: Path) -> Catalog:
    c = Catalog()
    yield c
    c.close()


def test_groups_follow_the_many_medium_few_rule_and_thirds_fallback() -> None:
    assert class_groups(COUNTS) == {"head": [0, 1], "medium": [2, 3], "tail": [4, 5]}
    # No class above 100 images: thirds of the classes sorted by count, the first the largest.
    assert class_groups([60, 90, 70, 80, 50]) == {"head": [1, 3], "medium": [0, 2], "tail": [4]}
    assert class_groups([5, 5]) == {}


def test_rows_per_run_and_evaluation_with_mismatch_flags(cat: Catalog) -> None:
    a, b, c = add_run(cat, "ra"), add_run(cat, "rb"), add_run(cat, "rc", cfg=config(num_steps=10))
    res_a = add_eval(a, "ea", "P1")
    add_eval(b, "eb", "P1", aa=None)
    add_eval(c, "ec", "P2")
    cat.ingest_all()
    data = compare_rows(cat, ["ra", "rb", "rc", "ra"])
    assert data["columns"] == COLUMNS
    rows = data["rows"]
    assert [(r["id"], r["eval_id"]) for r in rows] == [
        ("ra", None), ("ra", "ea"), ("rb", None), ("rb", "eb"), ("rc", None), ("rc", "ec")]
    training = rows[0]
    assert (training["clean"], training["pgd20"]) == (0.6, 0.35)
    for group, idx in (("head", [0, 1]), ("medium", [2, 3]), ("tail", [4, 5])):
        expected = sum(PER_CLASS_ROBUST[i] for i in idx) / len(idx)
        assert training[group] == pytest.approx(expected)
    assert training["worst_class"] == 0.0
    ev = rows[1]
    for col in ("clean", "fgsm", "mim", "cw", "aa"):
        assert ev[col] == res_a[col]["accuracy"]
    assert ev["pgd20"] == res_a["pgd20"]["accuracy"]  # PGD-20, not PGD-5
    assert (ev["head"], ev["tail"]) == (res_a["worst"]["groups"]["head"], 0.01)
    assert rows[3]["aa"] is None
    # rc was trained with 10-step PGD and evaluated under protocol P2: both of its rows are
    # flagged; the others agree with the majority of their kind.
    assert [r["mismatch"] for r in rows] == [False, False, False, False, True, True]
    assert data["mismatch"] is True
    assert data["reference_protocol"]["evaluation"] == "P1"
    assert compare_rows(cat, ["ra", "rb"])["mismatch"] is False
    with pytest.raises(RunNotFound):
        compare_rows(cat, ["ra", "nope"])


def test_every_format(cat: Catalog) -> None:
    a = add_run(cat, "ra", preset="my_preset")
    add_eval(a, "ea", "P1")
    b = add_run(cat, "rb")
    add_eval(b, "eb", "P2")
    cat.ingest_all()
    data = compare_rows(cat, ["ra", "rb"])
    outputs = {fmt: render_compare(data, fmt) for fmt in FORMATS}

    parsed = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert list(parsed[0]) == COLUMNS and len(parsed) == 4
    assert float(parsed[1]["fgsm"]) == 0.4 and parsed[0]["fgsm"] == ""
    assert json.loads(outputs["json"])["rows"][1]["eval_id"] == "ea"

    table = outputs["table"].splitlines()
    assert "PGD-20" in table[0] and "40.0" in table[3]  # FGSM 0.4 shown as a percentage
    flagged = [line for line in table if line.rstrip().endswith("*")]
    assert len(flagged) == 1 and "eb" in flagged[0]  # a 1-1 tie: the first row sets the reference
    assert any(line.startswith("* ") for line in table)

    md = outputs["markdown"].splitlines()
    assert md[0].startswith("| id |") and set(md[1]) <= set("|-:") and len(md) >= 6
    assert "my\\_preset" in outputs["latex"] and outputs["latex"].count(r"\\") >= 5
    assert r"\begin{tabular}" in outputs["latex"] and r"\bottomrule" in outputs["latex"]

    bench = json.loads(outputs["robustbench"])
    assert [e["advlt"]["eval_id"] for e in bench] == ["ea", "eb"]  # evaluations only
    entry = bench[0]
    for key in ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
                "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc",
                "unreliable"):
        assert key in entry
    assert (entry["dataset"], entry["eps"], entry["clean_acc"], entry["autoattack_acc"]) == (
        "cifar10", "8/255", "62.00", "30.00")
    with pytest.raises(ValueError, match="unknown format"):
        render_compare(data, "xml")


def test_helpers() -> None:
    assert eps_text(8 / 255) == "8/255" and eps_text(0.031) == "0.031" and eps_text(None) is None
    assert latex_escape("a_b & 50%") == r"a\_b \& 50\%"
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}


def test_config_diff(cat: Catalog) -> None:
    cfg_b = config(lr=0.05)
    cfg_b["train"]["warmup"] = 5
    del cfg_b["seed"]
    add_run(cat, "ra")
    add_run(cat, "rb", cfg=cfg_b)
    assert config_diff(cat, "ra", "rb") == [("seed", 1, None), ("train.lr", 0.1, 0.05),
                                            ("train.warmup", None, 5)]
    assert config_diff(cat, "ra", "ra") == []
