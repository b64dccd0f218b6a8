"""`advlt presets ...`: list, show, check and import method presets."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from advlt_tui.cli import app, fail, out, print_json, user_preset_dir
from presets import loader
from presets.validate import ConfigError

presets_app = typer.Typer(help="List, show, check and import method presets.",
                          invoke_without_command=True)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def presets_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List presets (name, kind, summary)."""
    if ctx.invoked_subcommand is not None:
        return
    items = [p.as_listing() for p in loader.list_presets(user_preset_dir())]
    if as_json:
        print_json(items)
        return
    from rich.table import Table

    table = Table(title="presets", header_style="bold")
    for col in ("name", "kind", "title", "summary"):
        table.add_column(col)
    for p in items:
        table.add_row(p["name"], p["kind"], p["title"], p["summary"])
    out.print(table)


@presets_app.command("show")
def presets_show(
    name: Annotated[str, typer.Argument(help="preset name")],
    dataset: Annotated[Optional[str], typer.Option(help="only this dataset")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """A preset's resolved values, per dataset."""
    from presets.schema import DATASETS

    try:
        preset = loader.get_preset(name, user_preset_dir())
        datasets = [dataset] if dataset else list(DATASETS)
        resolved = {}
        for ds in datasets:
            extra = {"parent_checkpoint": "<parent>"} if preset.kind == "finetune" else None
            resolved[ds] = loader.resolve(preset, ds, extra=extra).to_dict()
    except ConfigError as exc:
        fail(exc.render())
    if as_json:
        print_json({"preset": preset.as_listing(), "resolved": resolved})
        return
    out.print(f"[bold]{preset.name}[/] — {preset.title} ({preset.kind})\n{preset.summary}")
    for ds, cfg in resolved.items():
        out.rule(ds)
        out.print_json(json.dumps(cfg))


@presets_app.command("check")
def presets_check(path: Annotated[Path, typer.Argument(help="preset TOML file")]) -> None:
    """Validate a preset file; exit 2 with every problem listed."""
    from presets.schema import DATASETS

    try:
        preset = loader.parse_preset(path)
        for ds in DATASETS:
            extra = {"parent_checkpoint": "<parent>"} if preset.kind == "finetune" else None
            loader.resolve(preset, ds, extra=extra)
    except ConfigError as exc:
        fail(exc.render())
    out.print(f"{path}: ok ({preset.name}, {preset.kind})")
