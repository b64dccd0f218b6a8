"""Helpers shared by the TUI tests (fixtures live in conftest.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import fake_engine as fe

from runs.catalog import Catalog

SIZE = (100, 30)
FROZEN_NOW = fe.T0 + 2 * 3600  # the screens' clock: ages are fixed


async def wait_until(pilot, condition: Callable[[], object], timeout: float = 15.0,
                     what: str = "condition") -> None:
    """Let the app run until ``condition()`` is true (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def seed_run(cat: Catalog, preset: str, index: int, *, upto: int, epochs: int = 15,
             finish: bool = True, tags=(), evaluate: bool = False) -> dict:
    """A run with fixed id, creation time and event times, its events ingested."""
    run = fe.create_run(cat, preset, run_id=f"231114-2213{20 + index:02d}-a{index}b0",
                        created=fe.T0 - 3600 * (index + 1), tags=tags)
    run_dir = Path(run["run_dir"])
    log = fe.EventLog(run_dir, clock=fe.fixed_clock(fe.T0 + 10 * index))
    fe.train_events(log, epochs, upto, finish=finish, save_every=5)
    if evaluate:
        fe.eval_events(log, f"e231114-22{index:02d}00-ev{index}", ["fgsm", "pgd20", "cw"],
                       f"checkpoints/epoch{upto}.pt")
    (run_dir / "engine.log").write_text("".join(f"engine line {k}\n" for k in range(40)))
    cat.ingest(run["id"])
    return cat.get_run(run["id"])


def events_of(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def open_detail(pilot, run_id: str):
    """From the runs screen, open ``run_id``'s detail screen with the keyboard."""
    from advlt_tui.screens.run_detail import RunDetailScreen

    screen = pilot.app.screen
    screen.table.move_cursor(row=screen.table.get_row_index(run_id))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunDetailScreen), what="detail")
    return pilot.app.screen
