"""Fixtures of the TUI tests: seeded catalogs, the fake engine as the launched process, and a
runner for ``async def`` tests (Textual's ``run_test`` is async; no pytest plugin needed)."""
from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tui_support import seed_run  # noqa: E402

from runs import launcher  # noqa: E402
from runs.catalog import Catalog  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
        return True
    return None


@pytest.fixture
def catalog(advlt_home) -> Catalog:
    cat = Catalog(advlt_home)
    yield cat
    cat.close()


@pytest.fixture
def seeded(catalog) -> list[dict]:
    """Three runs: pgd-at finished (evaluated), robal-n running (5 of 15), ldam finished."""
    return [
        seed_run(catalog, "pgd-at", 0, upto=15, tags=["baseline"], evaluate=True),
        seed_run(catalog, "robal-n", 1, upto=5, finish=False),
        seed_run(catalog, "ldam", 2, upto=15),
    ]


@pytest.fixture
def fake_launch(monkeypatch):
    """``python -m engine`` replaced by ``python tests/tui/fake_engine.py`` (still spawned
    detached by the real launcher, so pid files, liveness and SIGTERM are real)."""

    def command(run_dir: Path, command: str = "train", *extra: str) -> list[str]:
        return [sys.executable, str(HERE / "fake_engine.py"), command, str(run_dir), *extra]

    monkeypatch.setattr(launcher, "engine_command", command)
    monkeypatch.setenv("FAKE_EPOCH_S", "0.2")
    started: list[Path] = []
    real_spawn = launcher.spawn

    def spawn(run_dir: Path, argv: list[str], **kw) -> dict:
        started.append(Path(run_dir))
        return real_spawn(run_dir, argv, **kw)

    monkeypatch.setattr(launcher, "spawn", spawn)
    yield started
    for run_dir in started:  # never leave a fake engine behind
        launcher.terminate(run_dir, grace_s=2.0)
