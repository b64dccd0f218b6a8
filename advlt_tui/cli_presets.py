"""`advlt presets ...`: list, show, check and import method presets.

Thin commands over :mod:`presets.loader` and :mod:`presets.yaml_import`; every bad input is one
report listing every problem (dotted key path, file and line), exit code 2, nothing written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from advlt_tui.cli import app, err, fail, out, print_json, user_preset_dir
from presets import loader
from presets.schedule import describe_schedule, effective_lrs
from presets.schema import DATASETS
from presets.validate import ConfigError

presets_app = typer.Typer(help="List, show, check and import method presets.",
                          invoke_without_command=True)
app.add_typer(presets_app, name="presets")

# A fine-tune preset is only complete with a parent; `show`/`check` resolve it with a stand-in.
PARENT_PLACEHOLDER = "<parent checkpoint: --from RUN>"


def _extra(preset: loader.Preset) -> Optional[dict]:
    return {"parent_checkpoint": PARENT_PLACEHOLDER} if preset.kind == "finetune" else None


@presets_app.callback()
def presets_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List presets (name, kind: train / finetune / inference, summary)."""
    if ctx.invoked_subcommand is not None:
        return
    broken: list[ConfigError] = []
    try:
        items = [p.as_listing() for p in loader.list_presets(user_preset_dir(), broken)]
    except ConfigError as exc:
        fail(exc.render())
    if as_json:
        print_json(items)
    else:
        from rich.table import Table

        table = Table(title="presets", header_style="bold")
        for col in ("name", "kind", "title", "summary"):
            table.add_column(col)
        for p in items:
            name = p["name"] if p["builtin"] else f"{p['name']} (user)"
            table.add_row(name, p["kind"], p["title"], p["summary"])
        out.print(table)
    for exc in broken:  # listed, not fatal: one bad user file must not hide the others
        err.print(f"[yellow]skipped:[/] {exc.render()}", highlight=False)


@presets_app.command("show")
def presets_show(
    name: Annotated[str, typer.Argument(help="preset name")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="only this dataset")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """A preset's resolved values, per dataset."""
    if dataset is not None and dataset not in DATASETS:
        fail(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    try:
        preset = loader.get_preset(name, user_preset_dir())
        resolved = {ds: loader.resolve(preset, ds, extra=_extra(preset)).to_dict()
                    for ds in ([dataset] if dataset else DATASETS)}
    except ConfigError as exc:
        fail(exc.render())
    if as_json:
        print_json({"preset": {**preset.as_listing(), **preset.meta}, "resolved": resolved})
        return
    out.print(f"[bold]{preset.name}[/] — {preset.title} ({preset.kind})\n{preset.summary}",
              highlight=False)
    refs = preset.meta.get("reference_config")
    if refs:
        out.print("reference: " + (", ".join(refs) if isinstance(refs, list) else refs),
                  highlight=False)
    for ds, cfg in resolved.items():
        out.rule(ds)
        out.print_json(json.dumps(cfg))
        t = cfg["train"]
        lrs = effective_lrs(t["epochs"], t["lr"], t["lr_schedule"], t["milestones"],
                            t["warmup_epochs"])
        out.print(f"[bold]lr ({t['lr_schedule']}) by epoch:[/] {describe_schedule(lrs)}",
                  highlight=False)


@presets_app.command("check")
def presets_check(
    path: Annotated[Path, typer.Argument(help="preset TOML file")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Validate a preset file for every dataset; exit 2 with every problem listed."""
    problems = []
    preset = None
    try:
        preset = loader.parse_preset(path)
    except ConfigError as exc:
        problems += exc.problems
    if preset is not None:
        for ds in DATASETS:
            try:
                loader.resolve(preset, ds, extra=_extra(preset))
            except ConfigError as exc:
                problems += [p for p in exc.problems if p not in problems]
    if as_json:
        print_json({"path": str(path), "ok": not problems,
                    "name": preset.name if preset else None,
                    "problems": [{"path": p.path, "message": p.message, "source": p.source,
                                  "line": p.line} for p in problems]})
        if problems:
            raise typer.Exit(2)
        return
    if problems:
        fail(ConfigError(problems, f"invalid preset {path}").render())
    out.print(f"{path}: ok ({preset.name}, {preset.kind})", highlight=False)


@presets_app.command("import")
def presets_import(
    path: Annotated[Path, typer.Argument(help="reference-repository YAML config")],
    name: Annotated[Optional[str], typer.Option(help="preset name (default: from the file name)")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder to write NAME.toml "
                                                    "(default: the user preset folder)")] = None,
    eval_file: Annotated[Optional[Path], typer.Option("--eval", help="the matching evaluation "
                                                      "YAML (e.g. RoBal's *_eval.yaml): its "
                                                      "classifier becomes [inference_head]")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Convert a reference-repository YAML config into a preset (validated, written atomically)."""
    from presets import yaml_import

    target_dir = out_dir if out_dir is not None else user_preset_dir()
    try:
        result, target = yaml_import.import_yaml(path, target_dir, name, eval_file, force)
    except ConfigError as exc:
        fail(exc.render())
    if as_json:
        print_json(result.as_dict(target))
        return
    out.print(f"wrote {target} ({result.name}, {result.kind}, for {result.dataset})",
              highlight=False)
    for note in result.notes:
        out.print(f"  note: {note}", highlight=False)
    for warning in result.warnings:
        err.print(f"  [yellow]warning:[/] {warning}", highlight=False)
