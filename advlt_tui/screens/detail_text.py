"""Text of the run-detail screen: the summary lines, evaluation rows and evaluation progress.

Pure functions of catalog rows and the tail state, so they are easy to test and the screen
module stays about layout and actions.
"""
from __future__ import annotations

from typing import Callable, Optional

from rich.text import Text

from advlt_tui.render import pct
from advlt_tui.widgets.class_bars import bar
from advlt_tui.widgets.format import STATUS_STYLE, age_at, duration, gpu_text
from advlt_tui.widgets.tail import EvalProgress, TailState


def run_fraction(run: dict, progress: Optional[dict]) -> Optional[float]:
    """How much of the run's epochs are done, counting the current epoch's batches."""
    total = run.get("epochs")
    if not total:
        return None
    done = float(run.get("epoch") or 0)
    if progress and progress.get("batches") and progress.get("epoch") == done + 1:
        done += progress.get("batch", 0) / progress["batches"]
    return max(0.0, min(1.0, done / total))


def summary_text(run: dict, epochs: list[dict], tail: TailState, now: float,
                 color: Callable[[str], str]) -> Text:
    """Three or four lines: identity and status; progress; accuracy, tags and note."""
    status = run.get("status") or "?"
    variable, glyph = STATUS_STYLE.get(status, ("text", "·"))
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{run.get('id')}  ", style="bold")
    text.append(f"{glyph} {status}", style=f"bold {color(variable)}")
    text.append(f"  {run.get('preset')} · {run.get('dataset')} · {run.get('kind') or 'train'}"
                f"  · device {gpu_text(run)}")
    if run.get("name"):
        text.append(f"  · {run['name']}")
    text.append("\n")

    progress = tail.progress
    fraction = run_fraction(run, progress)
    text.append(f"epoch {run.get('epoch') or 0}/{run.get('epochs') or '?'} ")
    text.append(bar(fraction, 12) if fraction is not None else " " * 12, style=color("text-accent"))
    text.append(f" {pct(fraction)}%" if fraction is not None else "")
    lr = next((e.get("lr") for e in reversed(epochs) if e.get("lr") is not None), None)
    if lr is not None:
        text.append(f"  lr {lr:.4g}")
    if progress:
        text.append(f"  loss {progress.get('loss', float('nan')):.3f}")
        if progress.get("images_per_s") is not None:
            text.append(f"  {progress['images_per_s']:.0f} img/s")
        if status == "running" and progress.get("eta_s") is not None:
            eta = progress["eta_s"] - max(0.0, now - (progress.get("time") or now))
            # An ETA already past means the run is late or stalled: say nothing rather than 0s.
            text.append(f"  ETA {duration(eta) if eta > 0 else '—'}")
    if status == "running" and tail.last_time:
        text.append(f"  · last event {age_at(tail.last_time, now)} ago", style=color("foreground-muted"))
    text.append("\n")

    best_epoch = run.get("best_epoch")
    text.append(f"clean {pct(run.get('clean_acc'))}%  robust {pct(run.get('robust_acc'))}%  "
                f"best robust {pct(run.get('best_robust_acc'))}%"
                + (f" @ {best_epoch}" if best_epoch is not None else ""))
    if run.get("tags"):
        text.append(f"  · tags {', '.join(run['tags'])}")
    if run.get("note"):
        text.append(f"  · note: {run['note']}")
    if run.get("message") and status in ("failed", "lost", "cancelled"):
        text.append(f"\n{run['message']}", style=color("text-error" if status != "cancelled" else "text-warning"))
    return text


def eval_row(ev: dict, live: Optional[EvalProgress]) -> tuple[str, ...]:
    """Columns: eval, checkpoint, variant, status, clean%, worst%, the other attacks."""
    results = ev.get("results") or {}
    status = ev.get("status") or "?"
    if live is not None and live.state == "running" and status in ("queued", "running"):
        status = f"{live.attack or '…'} {live.done}/{live.total}"
    others = "  ".join(f"{k} {pct(r.get('accuracy'))}" for k, r in results.items()
                       if k not in ("clean", "worst"))
    checkpoint = (ev.get("checkpoint") or "last").rsplit("/", 1)[-1]
    return (ev["id"], checkpoint, ev.get("variant") or "default", status,
            pct((results.get("clean") or {}).get("accuracy")),
            pct((results.get("worst") or {}).get("accuracy")), others)


def eval_progress_text(tail: TailState) -> Text:
    running = [ev for ev in tail.evals.values() if ev.state == "running"]
    if not running:
        return Text("no evaluation running · press e to evaluate a checkpoint")
    parts = []
    for ev in running:
        frac = ev.done / ev.total if ev.total else 0.0
        parts.append(f"{ev.eval_id}: {ev.attack or '…'} {bar(frac, 10)} {ev.done}/{ev.total}"
                     f"  ETA {duration(ev.eta_s)}")
    return Text("\n".join(parts))
