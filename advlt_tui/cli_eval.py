"""``advlt eval | compare | diff``: evaluations of checkpoints and side-by-side comparisons."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from advlt_tui.cli import (
    BackendOpt, DetachOpt, GpusOpt, JsonOpt, RunArg, SlurmArgOpt, app, err, fail, open_catalog,
    out, print_json, resolve_run, user_errors,
)
from runs import compare as run_compare
from runs import ops
from runs.evals import parse_attacks


@app.command("eval")
def eval_cmd(
    run: RunArg,
    checkpoint: Annotated[str, typer.Option(help="epoch number, or last")] = "last",
    attacks: Annotated[str, typer.Option(help="comma-separated: fgsm,pgd,mim,cw,aa — or all")] = "all",
    variant: Annotated[Optional[str], typer.Option(help="inference-time preset (e.g. post-cdt, "
                                                   "post-logit-adjust)")] = None,
    n_ex: Annotated[Optional[int], typer.Option("--n-ex", help="evaluate a seeded class-balanced "
                                                "subset of N test images")] = None,
    gpus: GpusOpt = None,
    backend: BackendOpt = None,
    slurm_arg: SlurmArgOpt = None,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint of a run (follows it unless --detach; Ctrl-C cancels).

    Prints per-attack accuracy with head/medium/tail means and the worst class at the end.
    """
    from advlt_tui.cli_follow import follow_eval
    from advlt_tui.render import eval_result_table

    catalog = open_catalog()
    run_id = resolve_run(catalog, run)
    events_path = Path(catalog.get_run(run_id)["run_dir"]) / "events.jsonl"
    offset = events_path.stat().st_size if events_path.exists() else 0
    with user_errors():
        spec = ops.request_eval(catalog, run_id, checkpoint=checkpoint,
                                attacks=parse_attacks(attacks), variant=variant, n_ex=n_ex,
                                gpus=gpus, backend=backend, slurm_args=slurm_arg or [])
    eval_id = spec["eval_id"]
    if detach:
        if as_json:
            print_json({"run": run_id, "eval_id": eval_id, "status": "queued",
                        "attacks": spec["attacks"], "checkpoint": spec["checkpoint"]})
        else:
            out.print(f"evaluation [bold]{eval_id}[/] of run {run_id} started — "
                      f"`advlt logs {run_id} --eval {eval_id} --follow` to watch", highlight=False)
        return
    status = follow_eval(catalog, run_id, eval_id, offset, err, quiet=as_json)
    record = next((e for e in catalog.run_evaluations(run_id) if e["id"] == eval_id), None)
    if as_json:
        print_json({"run": run_id, "eval_id": eval_id, "status": status, "evaluation": record})
    elif record is not None and record.get("results"):
        out.print(eval_result_table(record, title=f"evaluation {eval_id} of {run_id} "
                                                  f"({record.get('checkpoint')})"))
        for w in record.get("warnings") or []:
            err.print(f"[yellow]warning:[/] {w}", highlight=False)
    else:
        message = (record or {}).get("message") or status
        err.print(f"evaluation {eval_id}: {status} — {message}", highlight=False, markup=False)
    raise typer.Exit(0 if status == "finished" else 1)


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[str], typer.Argument(help="run ids or unique prefixes")],
    format_: Annotated[str, typer.Option("--format", "-f", help="table, csv, json, markdown, "
                                         "latex or robustbench")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
) -> None:
    """Compare runs: one row per run and per evaluation, protocol mismatches flagged.

    Columns: clean, FGSM, PGD-20, MIM, CW, AA and head/medium/tail/worst-class robust accuracy.
    """
    fmt = "json" if as_json else format_
    if fmt not in run_compare.FORMATS:
        fail(f"unknown format {fmt!r}; allowed: {', '.join(run_compare.FORMATS)}")
    catalog = open_catalog()
    refs = run_compare.parse_refs(runs)
    ids = [resolve_run(catalog, r) for r in refs]
    for run_id in ids:
        catalog.ingest(run_id)
    data = run_compare.compare_rows(catalog, ids)
    sys.stdout.write(run_compare.render_compare(data, fmt))
    if data["mismatch"] and fmt not in ("table", "markdown", "latex"):
        err.print("[yellow]warning:[/] some rows were measured under a different protocol "
                  "(mismatch = true)", highlight=False)


@app.command("diff")
def diff_cmd(run_a: RunArg, run_b: RunArg, as_json: JsonOpt = False) -> None:
    """Config differences between two runs (dotted keys), nothing else."""
    from advlt_tui.render import diff_table

    catalog = open_catalog()
    a, b = resolve_run(catalog, run_a), resolve_run(catalog, run_b)
    try:
        diff = run_compare.config_diff(catalog, a, b)
    except (OSError, ValueError) as exc:
        fail(str(exc), 1)
    if as_json:
        print_json([{"key": k, "a": va, "b": vb} for k, va, vb in diff])
    elif not diff:
        out.print(f"{a} and {b} have the same config", highlight=False)
    else:
        out.print(diff_table(diff, a, b))
