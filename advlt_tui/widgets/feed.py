"""The catalog feed: what changed in the catalog since the last look (not a widget).

A worker thread opens its *own* ``Catalog`` (a sqlite connection belongs to the thread that
opened it) and, a few times a second, ingests the runs whose event streams grew, marks runs
whose engine vanished as ``lost`` (``runs.liveness.reconcile``, every few seconds) and diffs the
``runs`` rows against the last look. Only the rows that changed travel to the UI, in one
message per tick: with eight runs streaming the screen still refreshes a few times a second,
never once per event line.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from textual.message import Message

from runs.catalog import Catalog
from runs.ingest import EVENTS_FILE
from runs.liveness import reconcile

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


class RunsUpdated(Message):
    """Rows that changed (full rows, by id) and ids that disappeared, since the last message."""

    def __init__(self, changed: dict[str, dict], removed: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.changed = changed
        self.removed = removed


def _grew(row: dict) -> bool:
    """Whether the run's events file holds bytes the catalog has not ingested (one stat)."""
    try:
        size = os.stat(Path(row["run_dir"]) / EVENTS_FILE).st_size
    except (OSError, TypeError, KeyError):
        return False
    return size > (row.get("ingest_offset") or 0)


class CatalogFeed:
    """One poll per ``tick()``; ``run()`` loops until ``stop()`` (call it from any thread)."""

    def __init__(self, home: Path, initial: dict[str, dict], interval_s: float = 0.5,
                 reconcile_s: float = 2.0) -> None:
        self.home = Path(home)
        self.known = dict(initial)
        self.interval_s = interval_s
        self.reconcile_s = reconcile_s
        self._stop = threading.Event()
        self._last_reconcile = 0.0

    def stop(self) -> None:
        self._stop.set()

    def tick(self, catalog: Catalog) -> tuple[dict[str, dict], frozenset[str]]:
        """Ingest what grew, reconcile now and then, and return (changed rows, removed ids)."""
        rows = {r["id"]: r for r in catalog.list_runs()}
        applied = 0
        for row in rows.values():
            if row["status"] in ACTIVE or _grew(row):
                try:
                    applied += catalog.ingest(row["id"])
                except Exception:  # a damaged run directory must not stop the feed
                    log.exception("ingest of %s failed", row["id"])
        now = time.monotonic()
        if now - self._last_reconcile >= self.reconcile_s:
            self._last_reconcile = now
            applied += len(reconcile(catalog))
        if applied:
            rows = {r["id"]: r for r in catalog.list_runs()}
        changed = {k: r for k, r in rows.items() if self.known.get(k) != r}
        removed = frozenset(self.known) - frozenset(rows)
        self.known = rows
        return changed, removed

    def run(self, post: Callable[[RunsUpdated], object],
            cancelled: Optional[Callable[[], bool]] = None) -> None:
        """Poll until stopped; ``post`` must be thread-safe (``App.post_message`` is)."""
        # The first look waits one interval: the UI thread has just read every row and is
        # painting them; competing for the GIL then would only delay the first screen.
        if self._stop.wait(self.interval_s):
            return
        catalog = Catalog(self.home)
        try:
            while not self._stop.is_set() and not (cancelled and cancelled()):
                try:
                    changed, removed = self.tick(catalog)
                except Exception:  # e.g. a lock held too long; try again next tick
                    log.exception("catalog feed tick failed")
                    changed, removed = {}, frozenset()
                if changed or removed:
                    post(RunsUpdated(changed, removed))
                self._stop.wait(self.interval_s)
        finally:
            catalog.close()
