"""The ``advlt`` command line: thin typer commands over ``runs`` and ``presets``.

Bare ``advlt`` opens the TUI. Every listing has ``--json``. Bad input (unknown preset, bad
``--set``, unknown or ambiguous run id, bad ``--gpus``) is one clear message on stderr and exit
code 2, with nothing written. Command groups live in ``cli_*.py`` modules and register
themselves on ``app``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, NoReturn, Optional

import typer
from rich.console import Console

from presets.validate import ConfigError
from runs import ops
from runs.catalog import STATUSES, Catalog, CatalogError

app = typer.Typer(help="advlt: adversarial robustness under long-tailed data — experiment "
                       "manager.", invoke_without_command=True, no_args_is_help=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False, add_completion=False)

out = Console()
err = Console(stderr=True)

user_preset_dir = ops.user_preset_dir
ENDED = ops.ENDED
EXIT_USAGE = 2

RunArg = Annotated[str, typer.Argument(help="run id or a unique prefix of one")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output (JSON)")]
GpusOpt = Annotated[Optional[str], typer.Option(
    "--gpus", help="GPU queue: auto (first free GPU, else CPU), cpu, 0, 0,1 — waits as queued "
                   "until the GPU(s) are free")]
ShareOpt = Annotated[bool, typer.Option("--share", help="allow other --share runs on the same "
                                        "GPU(s)")]
DetachOpt = Annotated[bool, typer.Option("--detach", help="start and return at once")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", help="local (this machine, GPU queue) or slurm (sbatch; --gpus is then a GPU "
                      "count) — default $ADVLT_BACKEND or local")]
SlurmArgOpt = Annotated[Optional[list[str]], typer.Option(
    "--slurm-arg", help="extra sbatch option, e.g. --slurm-arg=--partition=gpu (repeatable; "
                        "after those in $ADVLT_SLURM_ARGS)")]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def print_json(obj: object) -> None:
    """Indented for a person at a terminal, compact (and much faster) for a pipe."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(obj, indent=indent, default=str) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """Expected failures become one clear line and exit 2; nothing else is caught."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.render())
    except CatalogError as exc:
        fail(str(exc))


@app.callback()
def main_callback(
    ctx: typer.Context,
    home: Annotated[Optional[Path], typer.Option("--home", help="catalog and run directories "
                                                 "(default $ADVLT_HOME or ~/.advlt)")] = None,
) -> None:
    """advlt: adversarial robustness under long-tailed data — experiment manager."""
    if home is not None:
        os.environ["ADVLT_HOME"] = str(home.expanduser().resolve())
    if ctx.invoked_subcommand is None:
        from advlt_tui.app import run_app

        run_app()


def open_catalog() -> Catalog:
    with user_errors():
        return Catalog()


def resolve_run(catalog: Catalog, ref: str) -> str:
    with user_errors():
        return catalog.resolve(ref)


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
    gpus: GpusOpt = None,
    share: ShareOpt = False,
    name: Annotated[Optional[str], typer.Option(help="a name for the run")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    detach: DetachOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the run id and final status as JSON")] = False,
    backend: BackendOpt = None,
    slurm_arg: SlurmArgOpt = None,
    ddp: Annotated[bool, typer.Option("--ddp", help="one run on all --gpus (torchrun + "
                                      "DistributedDataParallel, batch split over the GPUs)")] = False,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="processes of a --ddp run "
                                                 "(default: one per GPU; with --gpus cpu: gloo)")] = None,
) -> None:
    """Train a preset; follows the run with a progress bar unless --detach (Ctrl-C cancels)."""
    catalog = open_catalog()
    with user_errors():
        run = ops.start_run(catalog, preset, dataset, epochs=epochs, data_root=data_root,
                            sets=set_ or [], parent_ref=from_, gpus=gpus, name=name, seed=seed,
                            share=share, ddp=ddp, nproc=nproc, backend=backend,
                            slurm_args=slurm_arg or [])
    finish_launch(catalog, run, detach, as_json, verb="started")


def finish_launch(catalog: Catalog, run: dict, detach: bool, as_json: bool, verb: str) -> None:
    """Shared tail of ``run`` and ``resume``: report at once (detach) or follow to the end."""
    from advlt_tui.cli_follow import follow_run

    if detach:
        run = catalog.get_run(run["id"])
        if as_json:
            print_json({"id": run["id"], "status": run["status"], "run_dir": run["run_dir"]})
        else:
            out.print(f"{verb} run [bold]{run['id']}[/] ({run['preset']} on {run['dataset']}, "
                      f"{run['status']}) — `advlt logs {run['id']} --follow` to watch")
        return
    status = follow_run(catalog, run["id"], err, quiet=as_json)
    final = catalog.get_run(run["id"])
    if as_json:
        print_json({"id": final["id"], "status": final["status"], "clean_acc": final["clean_acc"],
                    "robust_acc": final["robust_acc"], "run_dir": final["run_dir"],
                    "message": final.get("message")})
    else:
        show_summary(catalog, final)
    raise typer.Exit(0 if status == "finished" else 1)


def fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def read_config(run: dict) -> Optional[dict]:
    try:
        return json.loads((Path(run["run_dir"]) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def directory_problem(run: dict) -> Optional[str]:
    run_dir = Path(run["run_dir"])
    if not run_dir.is_dir():
        return (f"the run directory {run_dir} is missing (deleted or moved): only the catalog's "
                f"copy is shown; `advlt rm {run['id']} --yes` drops the entry")
    if not (run_dir / "config.json").is_file():
        return f"{run_dir / 'config.json'} is missing"
    return None


def show_summary(catalog: Catalog, run: dict) -> None:
    from advlt_tui.render import per_class_table

    out.print(f"run [bold]{run['id']}[/] {run['preset']} on {run['dataset']}: "
              f"[bold]{run['status']}[/] — clean {fmt(run['clean_acc'])}, "
              f"robust {fmt(run['robust_acc'])}", highlight=False)
    if run.get("message"):
        out.print(run["message"], highlight=False, markup=False)
    epochs = [e for e in catalog.run_epochs(run["id"]) if e.get("per_class_clean")]
    counts = catalog.run_counts(run["id"]) or {}
    if epochs and counts.get("counts"):
        last = epochs[-1]
        steps = ((read_config(run) or {}).get("eval") or {}).get("num_steps", "?")
        out.print(per_class_table(counts["counts"], last["per_class_clean"],
                                  last["per_class_robust"], counts.get("class_names"),
                                  title=f"epoch {last['epoch']}: accuracy per class, head → tail "
                                        f"(robust = PGD-{steps})"))


def rows_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else
                         (",".join(r[c]) if isinstance(r.get(c), list) else r.get(c))
                         for c in columns])
    return buf.getvalue()


RUN_CSV_COLUMNS = ["id", "name", "status", "preset", "dataset", "kind", "epoch", "epochs",
                   "clean_acc", "robust_acc", "best_robust_acc", "best_epoch", "created", "started",
                   "ended", "gpus", "parent_run", "tags", "note", "run_dir"]


@app.command("runs")
def runs_cmd(
    status: Annotated[Optional[str], typer.Option(help=f"only runs with this status "
                                                  f"({', '.join(STATUSES)})")] = None,
    preset: Annotated[Optional[str], typer.Option(help="only runs of this preset")] = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output")] = False,
) -> None:
    """List the runs of the catalog (newest first); statuses are reconciled with the processes."""
    from runs.liveness import reconcile

    if status is not None and status not in STATUSES:
        fail(f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
    catalog = open_catalog()
    catalog.ingest_all()
    reconcile(catalog)
    rows = catalog.list_runs(status=status, preset=preset)
    if as_json:
        print_json(rows)
    elif as_csv:
        sys.stdout.write(rows_csv(rows, RUN_CSV_COLUMNS))
    else:
        from advlt_tui.render import runs_table

        out.print(runs_table(rows, width=out.width))


@app.command("show")
def show_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """A run's config, status, per-epoch metrics, checkpoints, evaluations and per-class tables."""
    from advlt_tui.render import epochs_table, eval_result_table, evaluations_table
    from runs.liveness import reconcile

    catalog = open_catalog()
    run_id = resolve_run(catalog, run)
    catalog.ingest(run_id)
    reconcile(catalog)
    row = catalog.get_run(run_id)
    problem = directory_problem(row)
    if problem:
        warn(problem)
    evaluations = catalog.run_evaluations(run_id)
    if as_json:
        print_json({"run": row, "config": read_config(row), "epochs": catalog.run_epochs(run_id),
                    "counts": catalog.run_counts(run_id),
                    "checkpoints": catalog.run_checkpoints(run_id),
                    "evaluations": evaluations, "children": catalog.children(run_id),
                    "problems": [problem] if problem else []})
        return
    show_summary(catalog, row)
    epochs = catalog.run_epochs(run_id)
    if epochs:
        out.print(epochs_table(epochs))
    ckpts = catalog.run_checkpoints(run_id)
    if ckpts:
        out.print("checkpoints: " + ", ".join(c["path"] for c in ckpts), highlight=False)
    if row.get("bad_lines"):
        warn(f"{row['bad_lines']} unreadable line(s) in events.jsonl were skipped")
    if evaluations:
        out.print(evaluations_table(evaluations, width=out.width))
        for ev in evaluations:
            if ev.get("results"):
                out.print(eval_result_table(ev))
            elif ev.get("message"):
                out.print(f"evaluation {ev['id']}: {ev['status']} — {ev['message']}",
                          highlight=False, markup=False)


@app.command("tui")
def tui_cmd() -> None:
    """Open the TUI (same as bare `advlt` and `advlt-tui`)."""
    from advlt_tui.app import run_app

    run_app()


def main() -> None:
    app()


# Command groups in their own modules register themselves on `app` (imported last: they use it).
from advlt_tui import cli_eval, cli_manage, cli_presets  # noqa: E402,F401

if __name__ == "__main__":
    # `python -m advlt_tui.cli`: the command groups registered themselves on the app of the
    # imported module `advlt_tui.cli`, not on this `__main__` copy, so run that one.
    from advlt_tui import cli as _imported

    _imported.main()
