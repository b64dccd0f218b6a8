"""The ``advlt`` command line: thin typer commands over ``runs`` and ``presets``.

Bare ``advlt`` opens the TUI. Every listing has ``--json``. Bad input is one clear message on
stderr and exit code 2, with nothing written.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from presets.validate import ConfigError
from runs import launcher, ops
from runs.catalog import Catalog, CatalogError

app = typer.Typer(help="advlt: adversarial robustness under long-tailed data — experiment "
                       "manager.", invoke_without_command=True, no_args_is_help=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False)

out = Console()
err = Console(stderr=True)


user_preset_dir = ops.user_preset_dir

def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.callback()
def main_callback(
    ctx: typer.Context,
    home: Annotated[Optional[Path], typer.Option("--home", help="catalog and run directories "
                                                 "(default $ADVLT_HOME or ~/.advlt)")] = None,
) -> None:
    if home is not None:
        import os

        os.environ["ADVLT_HOME"] = str(home.expanduser().resolve())
    if ctx.invoked_subcommand is None:
        from advlt_tui.app import run_app

        run_app()


def open_catalog() -> Catalog:
    return Catalog()


@app.command("run")
def run_cmd(
    preset: Annotated[str, typer.Argument(help="preset name (see `advlt presets`)")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="cifar10-lt, cifar100-lt or "
                                         "digits-lt")] = "digits-lt",
    epochs: Annotated[Optional[int], typer.Option(help="epochs to train")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="folder holding the CIFAR archives")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override KEY=VALUE "
                                                      "(dotted key), repeatable")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="parent run (fine-tune presets)")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="GPU spec: auto, 0, 0,1 (CUDA_VISIBLE_DEVICES)")] = None,
    name: Annotated[Optional[str], typer.Option(help="a name for the run")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="start and return at once")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the run id and final status as JSON")] = False,
) -> None:
    """Train a preset; follows the run with a progress bar unless --detach."""
    catalog = open_catalog()
    try:
        run = ops.start_run(catalog, preset, dataset, epochs=epochs, data_root=data_root,
                            sets=set_ or [], parent_ref=from_, gpus=gpus, name=name, seed=seed)
    except ConfigError as exc:
        fail(exc.render())
    except CatalogError as exc:
        fail(str(exc))
    run_dir = Path(run["run_dir"])
    if detach:
        if as_json:
            print_json({"id": run["id"], "status": "running", "run_dir": str(run_dir)})
        else:
            out.print(f"started run [bold]{run['id']}[/] ({run['preset']} on {run['dataset']}) — "
                      f"`advlt logs {run['id']} --follow` to watch")
        return
    status = follow(catalog, run["id"], quiet=as_json)
    final = catalog.get_run(run["id"])
    if as_json:
        print_json({"id": run["id"], "status": final["status"], "clean_acc": final["clean_acc"],
                    "robust_acc": final["robust_acc"], "run_dir": str(run_dir)})
    else:
        show_summary(catalog, final)
    raise typer.Exit(0 if status == "finished" else 1)


ENDED = ops.ENDED


def follow(catalog: Catalog, run_id: str, quiet: bool = False) -> str:
    """Ingest the run's events until it ends; a rich progress bar while it trains.
    Ctrl-C cancels the run cleanly (use --detach to leave it running)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    run_dir = Path(catalog.get_run(run_id)["run_dir"])
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} ep"), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=err, disable=quiet, transient=False) as progress:
        task = progress.add_task(run_id, total=None, info="starting…")
        try:
            while True:
                catalog.ingest(run_id)
                run = catalog.get_run(run_id)
                if run["epochs"]:
                    progress.update(task, total=run["epochs"] - (run.get("start_epoch") or 0))
                done = (run["epoch"] or 0) - (run.get("start_epoch") or 0)
                info = f"clean {fmt(run['clean_acc'])} robust {fmt(run['robust_acc'])}"
                progress.update(task, completed=max(done, 0), info=info)
                if run["status"] in ENDED:
                    return run["status"]
                if not launcher.is_running(run_dir):
                    time.sleep(0.3)  # let the last events land, then decide
                    catalog.ingest(run_id)
                    run = catalog.get_run(run_id)
                    if run["status"] not in ENDED:
                        catalog.set_status(run_id, "lost", "engine exited without a final event; "
                                           f"see {run_dir / 'engine.log'}")
                    return catalog.get_run(run_id)["status"]
                time.sleep(0.25)
        except KeyboardInterrupt:
            progress.update(task, info="cancelling…")
            launcher.terminate(run_dir)
            catalog.ingest(run_id)
            if catalog.get_run(run_id)["status"] not in ENDED:
                catalog.set_status(run_id, "cancelled", "cancelled from the terminal")
            return "cancelled"


def fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def show_summary(catalog: Catalog, run: dict) -> None:
    from advlt_tui.render import per_class_table

    out.print(f"run [bold]{run['id']}[/] {run['preset']} on {run['dataset']}: "
              f"[bold]{run['status']}[/] — clean {fmt(run['clean_acc'])}, "
              f"robust {fmt(run['robust_acc'])}")
    if run.get("message"):
        out.print(run["message"])
    epochs = [e for e in catalog.run_epochs(run["id"]) if e.get("per_class_clean")]
    counts = catalog.run_counts(run["id"]) or {}
    if epochs and counts.get("counts"):
        last = epochs[-1]
        out.print(per_class_table(counts["counts"], last["per_class_clean"],
                                  last["per_class_robust"], counts.get("class_names"),
                                  title=f"epoch {last['epoch']}: accuracy per class, head → tail "
                                        f"(robust = PGD-{cfg_steps(run)})"))


def cfg_steps(run: dict) -> str:
    try:
        cfg = json.loads((Path(run["run_dir"]) / "config.json").read_text())
        return str(cfg["eval"]["num_steps"])
    except (OSError, ValueError, KeyError):
        return "?"


@app.command("runs")
def runs_cmd(
    status: Annotated[Optional[str], typer.Option(help="only runs with this status")] = None,
    preset: Annotated[Optional[str], typer.Option(help="only runs of this preset")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the runs of the catalog."""
    from runs.liveness import reconcile

    catalog = open_catalog()
    catalog.ingest_all()
    reconcile(catalog)
    rows = catalog.list_runs(status=status, preset=preset)
    if as_json:
        print_json(rows)
        return
    from advlt_tui.render import runs_table

    out.print(runs_table(rows))


@app.command("show")
def show_cmd(
    run: Annotated[str, typer.Argument(help="run id or unique prefix")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """A run's config, status, per-epoch metrics, evaluations and per-class tables."""
    catalog = open_catalog()
    try:
        run_id = catalog.resolve(run)
    except CatalogError as exc:
        fail(str(exc))
    catalog.ingest(run_id)
    row = catalog.get_run(run_id)
    if as_json:
        config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        print_json({"run": row, "config": config, "epochs": catalog.run_epochs(run_id),
                    "counts": catalog.run_counts(run_id),
                    "checkpoints": catalog.run_checkpoints(run_id),
                    "evaluations": catalog.run_evaluations(run_id)})
        return
    show_summary(catalog, row)


@app.command("tui")
def tui_cmd() -> None:
    """Open the TUI (same as bare `advlt` and `advlt-tui`)."""
    from advlt_tui.app import run_app

    run_app()


def main() -> None:
    app()


# Command groups in their own modules register themselves on `app` (imported last: they use it).
from advlt_tui import cli_presets  # noqa: E402,F401

if __name__ == "__main__":
    main()
