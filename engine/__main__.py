"""``python -m engine train RUN_DIR`` / ``python -m engine evaluate RUN_DIR SPEC.json``.

The engine runs in its own process, reads everything it needs from the run directory and talks
back only through ``RUN_DIR/events.jsonl`` (optionally mirrored on stdout).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) the run in RUN_DIR")
    train.add_argument("run_dir", type=Path)
    train.add_argument("--mirror", action="store_true", help="also print events on stdout")
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint of the run in RUN_DIR")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("spec", type=Path, help="evaluation request (JSON) written by the manager")
    ev.add_argument("--mirror", action="store_true")
    args = parser.parse_args(argv)
    if not (args.run_dir / "config.json").is_file():
        print(f"error: {args.run_dir} is not a run directory (no config.json)", file=sys.stderr)
        return 2
    if args.command == "train":
        from engine.trainer import train_main

        return train_main(args.run_dir, mirror=args.mirror)
    from engine.evaluate import evaluate_main

    return evaluate_main(args.run_dir, args.spec, mirror=args.mirror)


if __name__ == "__main__":
    sys.exit(main())
