"""Run every benchmark in one go (``make bench``); each prints its own figures and targets.

Exit status is non-zero if any benchmark reports a missed target.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["bench_train.py"],                       # training step vs reference-style loop (issue 3)
    ["bench_train.py", "--model", "wrn-16-4", "--batch", "32", "--steps", "4"],
    ["bench_eval.py"],                        # PGD-20 evaluation vs torchattacks (issue 4)
    ["bench_catalog.py"],                     # catalog listing / ingest at 10,000 runs (issue 6)
    ["bench_tui_startup.py"],                 # TUI startup over 1,000 runs (issue 7)
]


def main() -> int:
    failed = []
    for argv in BENCHMARKS:
        print(f"\n=== {' '.join(argv)}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:]])
        if code:
            failed.append(" ".join(argv))
    if failed:
        print("\nmissed or failed: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
