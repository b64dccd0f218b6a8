"""Startup of the TUI over a catalog of 1,000 runs: process start → interactive runs screen.

Creates a catalog with 1,000 runs in a temporary ADVLT_HOME (one bulk insert through the
catalog's sqlite-utils database), then starts a fresh Python process that imports the app,
runs it headless (``App.run_test``) and stops the clock when the runs table holds every row.
Target: under 1 s. Prints the figures (median of ``--repeat`` runs).

    .venv/bin/python benchmarks/bench_tui_startup.py [--runs 1000] [--repeat 3]
"""
from __future__ import annotations

import time

T_START = time.perf_counter()  # first thing in the child: imports are part of startup
CPU_START = time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["pgd-at", "trades", "ldam", "cos", "robal-n", "robal-r", "cb", "focal"]
DATASETS = ["cifar10-lt", "cifar100-lt", "digits-lt"]


def make_catalog(home: Path, n: int) -> None:
    """``n`` runs, mostly finished, a few running/failed, with accuracies and tags."""
    sys.path.insert(0, str(ROOT))
    from runs.catalog import Catalog
    from runs.ingest import run_row_from_meta

    rng = random.Random(0)
    now = time.time()
    rows = []
    for i in range(n):
        created = now - 60 * (n - i)
        meta = {"id": time.strftime("%y%m%d-%H%M%S", time.gmtime(created)) + f"-{i:04x}",
                "preset": rng.choice(PRESETS), "dataset": rng.choice(DATASETS), "kind": "train",
                "created": created, "tags": rng.sample(["sweep", "paper", "ablation", "seed2"], 1),
                "epochs": 80}
        row = run_row_from_meta(meta, home / "runs" / meta["id"])
        status = rng.choices(["finished", "failed", "running", "cancelled"], [90, 4, 2, 4])[0]
        robust = rng.uniform(0.2, 0.5)
        row.update(status=status, epoch=80 if status == "finished" else rng.randint(1, 79),
                   clean_acc=rng.uniform(0.5, 0.85), robust_acc=robust,
                   best_robust_acc=robust + rng.uniform(0, 0.03), device="cuda",
                   gpus=str(rng.randint(0, 7)))
        rows.append(row)
    with Catalog(home) as cat:
        cat.db["runs"].insert_all(rows, batch_size=500)
        assert cat.db["runs"].count == n


def child(n: int) -> None:
    """Import, start the app headless, wait for the full runs table; print seconds."""
    import asyncio

    from advlt_tui.app import create_app
    from advlt_tui.screens.runs import RunsScreen

    t_imported = time.perf_counter()

    async def main() -> dict:
        t_app = time.perf_counter()
        app = create_app()
        async with app.run_test(size=(120, 40)) as pilot:
            while not (isinstance(app.screen, RunsScreen) and app.screen.table.row_count == n):
                await pilot.pause(0.005)
            t_rows = time.perf_counter()
            await pilot.pause()  # until the table has measured its columns and painted
            t_ready = time.perf_counter()
            cpu_ready = time.process_time()
        return {"cpu_to_painted_s": cpu_ready - CPU_START,"imports_s": t_imported - T_START, "app_to_rows_s": t_rows - t_app,
                "app_to_painted_s": t_ready - t_app, "process_to_painted_s": t_ready - T_START}

    print(json.dumps(asyncio.run(main())), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.runs)
        return
    with tempfile.TemporaryDirectory(prefix="advlt-bench-") as tmp:
        home = Path(tmp)
        make_catalog(home, args.runs)
        env = {**os.environ, "ADVLT_HOME": str(home),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        results = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", "--runs", str(args.runs)],
                                 env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["wall_incl_interpreter_s"] = wall
            results.append(result)
    keys = ["imports_s", "app_to_rows_s", "app_to_painted_s", "process_to_painted_s",
            "cpu_to_painted_s", "wall_incl_interpreter_s"]
    print(f"TUI startup with {args.runs} runs (median of {args.repeat}):")
    for key in keys:
        print(f"  {key:26s} {statistics.median(r[key] for r in results):.3f} s")
    target = statistics.median(r["process_to_painted_s"] for r in results)
    print(f"  target < 1 s: {'met' if target < 1.0 else 'NOT met'} ({target:.3f} s)")


if __name__ == "__main__":
    main()
