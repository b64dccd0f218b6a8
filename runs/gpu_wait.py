"""``python -m runs.gpu_wait RUN_DIR --gpus SPEC [--share] [--eval-id ID] -- ENGINE ARGV...``

The GPU queue without a daemon. The launcher starts this small stdlib-only process detached
(its own session) instead of the engine. It records ``queued``, polls the GPU locks
(``runs.gpus``) until its request can be served, records ``gpu_assigned``, sets
``CUDA_VISIBLE_DEVICES`` and ``exec``s the engine command. ``exec`` keeps the pid, the process
start time (liveness stays valid) and the inheritable lock descriptors: the engine holds its GPUs
until it dies, and the kernel then frees them for the next waiter — no bookkeeping to go stale.

SIGTERM/SIGINT while waiting writes ``cancelled`` (``eval_cancelled`` for an evaluation) and
exits 143/130, like the engine would.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from runs import gpus as gpu_locks
from runs.event_log import append_event

POLL_ENV = "ADVLT_GPU_POLL_S"
DEFAULT_POLL_S = 1.0
EXIT_BAD_SPEC, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def _event(run_dir: Path, eval_id: Optional[str], type_: str, **data: Any) -> None:
    if eval_id is not None:
        append_event(run_dir, f"eval_{type_}", eval_id=eval_id, **data)
    else:
        append_event(run_dir, type_, **data)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m runs.gpu_wait RUN_DIR --gpus SPEC [--share] "
                         "[--eval-id ID] [--home DIR] -- COMMAND...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m runs.gpu_wait")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--gpus", default="auto")
    parser.add_argument("--share", action="store_true")
    parser.add_argument("--eval-id", default=None)
    parser.add_argument("--home", type=Path, default=None,
                        help="where the GPU locks live (default: two levels above RUN_DIR)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("gpu_wait: no command after --")
    return args, command


def wait_and_exec(args: argparse.Namespace, command: list[str]) -> int:
    run_dir = args.run_dir.resolve()
    home = args.home or run_dir.parent.parent  # $ADVLT_HOME/runs/<id>
    try:
        request = gpu_locks.parse_gpu_spec(args.gpus, args.share)
    except gpu_locks.GpuSpecError as exc:
        _event(run_dir, args.eval_id, "failed", message=str(exc))
        return EXIT_BAD_SPEC
    poll_s = float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        _event(run_dir, args.eval_id, "queued", gpus=request.text(), share=request.share,
               pid=os.getpid())
        held = gpu_locks.try_acquire(home, request)
        while held is None:
            time.sleep(poll_s)
            held = gpu_locks.try_acquire(home, request)
        visible = gpu_locks.cuda_visible_devices(held)
        _event(run_dir, args.eval_id, "gpu_assigned", gpus=sorted(held),
               cuda_visible_devices=visible, device="cuda" if held else "cpu")
    except _Stop as stop:
        _event(run_dir, args.eval_id, "cancelled", signal=str(stop), pid=os.getpid(),
               message="cancelled while waiting for a GPU")
        return EXIT_SIGINT if stop.signum == signal.SIGINT else EXIT_SIGTERM
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = visible
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # indices as nvidia-smi numbers them
    env["ADVLT_GPUS"] = visible
    # Back to the default handlers before exec (an ignored signal would stay ignored in the
    # engine); a signal arriving from here on simply ends the process and frees the locks.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        _event(run_dir, args.eval_id, "failed", message=f"cannot start {command[0]}: {exc}")
        return 1
    return 0  # not reached


def main(argv: Optional[list[str]] = None) -> int:
    args, command = _parse(list(sys.argv[1:] if argv is None else argv))
    return wait_and_exec(args, command)


if __name__ == "__main__":
    sys.exit(main())
