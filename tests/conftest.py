"""Shared fixtures: every test gets its own ADVLT_HOME so nothing touches a real home."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tiny models on 2 shared cores: intra-op threads only add contention (10-30× slower under
# load). Set before torch is first imported so every in-process test and subprocess inherits it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ADVLT_CPU_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def advlt_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("advlt-home")
    monkeypatch.setenv("ADVLT_HOME", str(home))
    return home


@pytest.fixture
def project_env() -> dict:
    """Environment for subprocesses that must import the project (engine, CLI)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
