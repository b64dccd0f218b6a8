"""The four rooms keep to their imports (DESIGN.md): the manager never imports torch (start-up
over SSH), the engine never imports the UI or the catalog."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

MANAGER_MODULES = ["presets", "presets.loader", "runs", "runs.catalog", "runs.launcher",
                   "runs.liveness", "advlt_tui", "advlt_tui.cli", "advlt_tui.app"]
ENGINE_MODULES = ["engine", "engine.trainer", "engine.attacks", "engine.datasets",
                  "engine.autoattack_adapter", "engine.__main__"]


def imported_after(module: str, project_env: dict) -> set[str]:
    code = ("import importlib, json, sys; importlib.import_module(%r); "
            "print(json.dumps(sorted(sys.modules)))" % module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=project_env, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", MANAGER_MODULES)
def test_manager_never_imports_torch(module, project_env):
    mods = imported_after(module, project_env)
    assert not {m for m in mods if m == "torch" or m.startswith("torch.")}, module


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_never_imports_ui_or_catalog(module, project_env):
    mods = imported_after(module, project_env)
    forbidden = {"textual", "typer", "sqlite_utils", "runs", "advlt_tui"}
    assert not {m for m in mods if m.split(".")[0] in forbidden}, module
    if module not in ("engine", "engine.__main__"):  # those two import torch lazily
        assert "torch" in mods
