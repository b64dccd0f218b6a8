"""Catalog speed on a big home: 10,000 runs with per-epoch metrics and evaluations.

    .venv/bin/python benchmarks/bench_catalog.py [--runs 10000] [--epochs 10] [--events 100000]

Times ``advlt runs --json`` (in-process: ingest check + reconcile + list + JSON dump, and as a
subprocess), ``advlt show`` (in-process and subprocess), ``advlt compare`` of 20 runs, and the
ingest of 100,000 events. Targets: listing under 0.3 s in-process, ingest over 20,000 events/s.
Setup inserts rows directly in bulk (and writes each run's directory with its events file, so the
listing's "did anything change?" checks touch real files).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runs.catalog import Catalog  # noqa: E402
from runs.compare import compare_rows, render_compare  # noqa: E402
from runs.events import EVENT_VERSION  # noqa: E402
from runs.liveness import reconcile  # noqa: E402

ATTACKS = ("clean", "fgsm", "pgd20", "mim", "cw", "aa", "worst")
NUM_CLASSES = 10


def fill(cat: Catalog, n_runs: int, n_epochs: int) -> list[str]:
    """Bulk-insert finished runs with epochs, checkpoints, counts and one evaluation each."""
    rng = random.Random(0)
    counts = json.dumps([500 // (i + 1) for i in range(NUM_CLASSES)])
    config = json.dumps({"eval": {"eps": 0.031, "num_steps": 20}, "dataset": {"name": "cifar10-lt"},
                         "model": {"backbone": "wrn", "head": "fc"}})
    runs, epochs, evals, results, ckpts, run_counts = [], [], [], [], [], []
    ids = []
    t0 = 1_700_000_000.0
    for i in range(n_runs):
        run_id = f"{230101 + i // 10000:06d}-{i % 1000000:06d}-{i % 65536:04x}"
        ids.append(run_id)
        run_dir = cat.runs_root / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"v": EVENT_VERSION, "run": run_id, "seq": 0, "time": t0, "type": "finished"}) + "\n"
        (run_dir / "events.jsonl").write_text(line)
        (run_dir / "config.json").write_text(config)
        clean, robust = rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5)
        runs.append((run_id, f"run{i}", rng.choice(["pgd-at", "trades", "robal-n"]), "cifar10-lt",
                     "train", "finished", t0 + i, t0 + i, t0 + i + 100, n_epochs, n_epochs, clean,
                     robust, robust, n_epochs, "cpu", "[]", "[]", str(run_dir), len(line), 0))
        for e in range(1, n_epochs + 1):
            per_class = json.dumps([round(rng.random(), 3) for _ in range(NUM_CLASSES)])
            epochs.append((run_id, e, 0.1, 1.0 / e, clean, robust, per_class, per_class, 10.0))
        ckpts.append((run_id, n_epochs, f"checkpoints/epoch{n_epochs}.pt", "0" * 64))
        run_counts.append((run_id, counts, None))
        eval_id = f"e-{run_id}"
        evals.append((eval_id, run_id, f"checkpoints/epoch{n_epochs}.pt", None,
                      json.dumps({"eps": 0.031, "num_steps": 20}), "P1", "finished", t0 + i,
                      "[]", "{}"))
        recall = json.dumps([round(rng.random(), 3) for _ in range(NUM_CLASSES)])
        for attack in ATTACKS:
            results.append((eval_id, attack, rng.random(), recall, recall, recall,
                            json.dumps({"head": 0.5, "medium": 0.3, "tail": 0.1}),
                            json.dumps({"class": 9, "recall": 0.0})))
    conn = cat.conn
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO runs (id, name, preset, dataset, kind, status, created, started, ended,"
        " epoch, epochs, clean_acc, robust_acc, best_robust_acc, best_epoch, device, gpus, tags,"
        " run_dir, ingest_offset, last_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        runs)
    conn.executemany("INSERT INTO epochs VALUES (?,?,?,?,?,?,?,?,?)", epochs)
    conn.executemany(
        "INSERT INTO evaluations (id, run_id, checkpoint, variant, protocol, protocol_hash,"
        " status, created, warnings, flags) VALUES (?,?,?,?,?,?,?,?,?,?)", evals)
    conn.executemany("INSERT INTO eval_results VALUES (?,?,?,?,?,?,?,?)", results)
    conn.executemany("INSERT INTO checkpoints VALUES (?,?,?,?)", ckpts)
    conn.executemany("INSERT INTO run_counts VALUES (?,?,?)", run_counts)
    conn.execute("COMMIT")
    return ids


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def listing(cat: Catalog) -> str:
    """What `advlt runs --json` does, minus process start-up."""
    cat.ingest_all()
    reconcile(cat)
    return json.dumps(cat.list_runs(), default=str)


def show(cat: Catalog, run_id: str) -> str:
    from advlt_tui.cli import read_config

    cat.ingest(run_id)
    row = cat.get_run(run_id)
    return json.dumps({"run": row, "config": read_config(row), "epochs": cat.run_epochs(run_id),
                       "counts": cat.run_counts(run_id), "checkpoints": cat.run_checkpoints(run_id),
                       "evaluations": cat.run_evaluations(run_id), "children": cat.children(run_id)},
                      default=str)


def cli(home: Path, *args: str) -> float:
    env = dict(os.environ, ADVLT_HOME=str(home), PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "advlt_tui.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def ingest_events(cat: Catalog, n_events: int) -> float:
    row = cat.create_run({"id": "ingest-bench", "preset": "pgd-at", "dataset": "cifar10-lt"})
    path = Path(row["run_dir"]) / "events.jsonl"
    per_class = [0.5] * NUM_CLASSES
    with open(path, "w") as f:
        for seq in range(n_events):
            if seq % 100 == 99:
                data = {"type": "epoch", "epoch": seq // 100 + 1, "lr": 0.1, "train_loss": 1.0,
                        "clean_acc": 0.6, "robust_acc": 0.3, "per_class_clean": per_class,
                        "per_class_robust": per_class}
            else:
                data = {"type": "progress", "epoch": seq // 100 + 1, "batch": seq % 100,
                        "loss": 1.0, "images_per_s": 1000.0, "eta_s": 10.0}
            f.write(json.dumps({"v": EVENT_VERSION, "run": "ingest-bench", "seq": seq,
                                "time": 1e9 + seq, **data}, separators=(",", ":")) + "\n")
    t = time.perf_counter()
    applied = cat.ingest("ingest-bench")
    elapsed = time.perf_counter() - t
    assert applied == n_events, applied
    return n_events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="advlt-bench-") as tmp:
        home = Path(tmp)
        os.environ["ADVLT_HOME"] = str(home)
        cat = Catalog(home)
        t = time.perf_counter()
        ids = fill(cat, args.runs, args.epochs)
        print(f"setup: {args.runs} runs, {args.runs * args.epochs} epoch rows, "
              f"{args.runs} evaluations in {time.perf_counter() - t:.1f} s")
        figures = {
            "runs --json (in-process)": best_of(lambda: listing(cat)),
            "runs --json (subprocess)": min(cli(home, "runs", "--json") for _ in range(2)),
            "show --json (in-process)": best_of(lambda: show(cat, ids[len(ids) // 2])),
            "show --json (subprocess)": cli(home, "show", ids[len(ids) // 2], "--json"),
            "compare 20 runs (in-process)": best_of(
                lambda: render_compare(compare_rows(cat, ids[:20]), "table")),
            "compare 20 runs (subprocess)": cli(home, "compare", *ids[:20]),
        }
        for name, seconds in figures.items():
            print(f"{name:32s} {seconds * 1000:8.1f} ms")
        rate = ingest_events(cat, args.events)
        print(f"{'ingest ' + str(args.events) + ' events':32s} {rate:8.0f} events/s")
        listing_s = figures["runs --json (in-process)"]
        print(f"targets: listing < 0.3 s: {'ok' if listing_s < 0.3 else 'MISSED'} "
              f"({listing_s:.3f} s); ingest > 20,000 events/s: "
              f"{'ok' if rate > 20_000 else 'MISSED'} ({rate:.0f}/s)")


if __name__ == "__main__":
    main()
