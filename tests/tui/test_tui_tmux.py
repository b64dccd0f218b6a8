"""The real ``advlt-tui`` under tmux: launch a digits-lt run from the new-run screen with
keystrokes and read its progress off the captured pane. The run is the real engine (torch),
started detached, so closing the TUI (killing tmux) leaves it running."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runs import launcher, ops
from runs.catalog import Catalog

WIDTH, HEIGHT = 120, 35


def advlt_tui() -> str:
    local = Path(sys.executable).parent / "advlt-tui"
    return str(local) if local.exists() else (shutil.which("advlt-tui") or "")


class Tmux:
    """A private tmux server (its own socket), so the test never touches the user's."""

    def __init__(self, name: str) -> None:
        self.socket = name
        self.target = f"{name}:0"

    def __call__(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                             timeout=10)
        return out.stdout

    def keys(self, *keys: str) -> None:
        for key in keys if keys[0] != "-l" else [keys]:
            self("send-keys", "-t", self.target, *([key] if isinstance(key, str) else key))
            time.sleep(0.3)

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", self.target)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.pane()
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"pane never showed {pattern!r}; last pane:\n{self.pane()}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_launch_from_the_tui_under_tmux(tmp_path):
    exe = advlt_tui()
    assert exe, "advlt-tui is not installed in this environment"
    home = tmp_path / "home"
    tmux = Tmux(f"advlt-test-{os.getpid()}")
    # pytest's COLUMNS/LINES reach the tmux server's environment and would pin the app to 80×24.
    command = (f"env -u COLUMNS -u LINES ADVLT_HOME={home} OMP_NUM_THREADS=1 "
               f"ADVLT_CPU_THREADS=1 {exe}")
    tmux("new-session", "-d", "-s", tmux.socket, "-x", str(WIDTH), "-y", str(HEIGHT), command)
    run_id = None
    try:
        tmux.wait_for(r"0/0 runs")
        tmux.keys("n")
        tmux.wait_for(r"valid configuration")  # the form is mounted and validated
        # Keys are typed, not pasted: a key that moves focus bubbles up to its binding
        # asynchronously, so characters sent in the same burst would reach the old widget.
        tmux.keys("Tab", "Tab")
        tmux.keys("-l", "train.epochs=2")
        tmux.keys("Enter")
        tmux.keys("-l", "model.backbone_opt={width = 8}")
        tmux.wait_for(r"▊ train\.epochs=2\s+▎\n.*▊ model\.backbone_opt=\{width = 8\}")
        tmux.wait_for(r"valid configuration")
        tmux.keys("C-l")
        text = tmux.wait_for(r"1/1 runs")
        runs = Catalog(home).list_runs()
        assert len(runs) == 1
        run_id = runs[0]["id"]
        assert run_id in text
        # The runs table follows the engine: an epoch count, then finished.
        line = tmux.wait_for(rf"{run_id}.*(finished|running\s+pgd-at\s+digits-lt\s+[12]/2)",
                             timeout=60)
        line = tmux.wait_for(rf"{run_id}.*finished.*2/2", timeout=60)
        assert re.search(rf"{run_id}.*pgd-at\s+digits-lt\s+2/2", line)
    finally:
        tmux("kill-server")
        if run_id is not None:  # closing the TUI never stops a run: end it here
            with Catalog(home) as cat:
                run_dir = Path(cat.get_run(run_id)["run_dir"])
                deadline = time.monotonic() + 30
                while launcher.is_running(run_dir) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if launcher.is_running(run_dir):
                    ops.cancel_run(cat, run_id, grace_s=5)
    with Catalog(home) as cat:
        cat.ingest(run_id)
        final = cat.get_run(run_id)
    assert final["status"] == "finished" and final["epoch"] == 2
    assert [c["epoch"] for c in Catalog(home).run_checkpoints(run_id)][-1] == 2
