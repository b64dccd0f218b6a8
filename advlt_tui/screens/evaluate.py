"""The evaluate dialog: checkpoint, attacks, inference-time variant, number of test images.

It calls ``runs.ops.request_eval`` (the same as ``advlt eval``), which writes the request to
``RUN_DIR/evals/<id>.json`` and starts the engine detached; the evaluation's progress and
result then arrive through the run's event stream, in the run-detail screen.
"""
from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, SelectionList, Static

from presets import loader
from presets.schema import ATTACKS
from presets.validate import ConfigError
from runs import ops
from runs.catalog import CatalogError

DEFAULT_VARIANT = "default"


def variant_options() -> list[tuple[str, str]]:
    """"default" (the run's own head, or RoBal's boundary adjustment) and every preset with an
    inference-time head."""
    try:
        presets = loader.list_presets(ops.user_preset_dir())
    except ConfigError:
        presets = loader.list_presets(None)
    options = [("default (the run's own evaluation head)", DEFAULT_VARIANT)]
    options += [(f"{p.name} · {p.title}", p.name) for p in presets if p.body.get("inference_head")]
    return options


class EvaluateModal(ModalScreen[Optional[dict]]):
    BINDINGS = [
        Binding("ctrl+l", "evaluate", "Evaluate", id="eval.go", priority=True),
        Binding("escape", "close", "Close", id="eval.close"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="eval-dialog", can_focus=False):
            yield Label(f"Evaluate {self.run_id}", classes="dialog-title")
            yield Label("Attacks (space toggles)", classes="field-label")
            yield SelectionList[str](*((a, a, True) for a in ATTACKS), id="attacks")
            with Horizontal(classes="form-row"):
                yield Label("Checkpoint", classes="row-label")
                yield Select([("last", "last")], value="last", allow_blank=False,
                             id="checkpoint", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Variant", classes="row-label")
                yield Select(variant_options(), value=DEFAULT_VARIANT, allow_blank=False,
                             id="variant", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Test images", classes="row-label")
                yield Input(placeholder="all (n-ex: a class-balanced subset of N images)",
                            type="integer", id="n-ex", compact=True)
            yield Static(id="eval-problems")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Evaluate (ctrl+l)", id="eval-go", variant="primary", compact=True)
                yield Button("Close (esc)", id="eval-close", compact=True)

    def on_mount(self) -> None:
        ckpts = self.app.catalog.run_checkpoints(self.run_id)
        select = self.query_one("#checkpoint", Select)
        select.set_options([("last", "last")]
                           + [(f"epoch {c['epoch']}", str(c["epoch"])) for c in reversed(ckpts)])
        select.value = "last"
        if not ckpts:
            self._problems([f"run {self.run_id} has no checkpoint yet"])
        self.query_one("#attacks", SelectionList).focus()

    def _problems(self, lines: list[str]) -> None:
        box = self.query_one("#eval-problems", Static)
        box.set_class(bool(lines), "-invalid")
        box.display = bool(lines)
        box.update("\n".join(f"✘ {line}" for line in lines))

    def request(self) -> dict:
        """The arguments of ``ops.request_eval`` from the form (n-ex checked here)."""
        n_ex_text = self.query_one("#n-ex", Input).value.strip()
        variant = self.query_one("#variant", Select).value
        return {
            "checkpoint": str(self.query_one("#checkpoint", Select).value),
            "attacks": list(self.query_one("#attacks", SelectionList).selected),
            "variant": None if variant in (DEFAULT_VARIANT, Select.NULL) else str(variant),
            "n_ex": int(n_ex_text) if n_ex_text.lstrip("-").isdigit() else None,
            "n_ex_text": n_ex_text,
        }

    def action_evaluate(self) -> None:
        req = self.request()
        problems = []
        if not req["attacks"]:
            problems.append("attacks: choose at least one")
        if req["n_ex_text"] and req["n_ex"] is None:
            problems.append(f"n-ex: {req['n_ex_text']!r} is not a whole number")
        if problems:
            self._problems(problems)
            return
        try:
            spec = ops.request_eval(self.app.catalog, self.run_id, checkpoint=req["checkpoint"],
                                    attacks=req["attacks"], variant=req["variant"],
                                    n_ex=req["n_ex"])
        except ConfigError as exc:
            self._problems([str(p) for p in exc.problems])
            return
        except (CatalogError, OSError) as exc:
            self._problems([str(exc)])
            return
        self.notify(f"evaluation {spec['eval_id']} started on {self.run_id}")
        self.dismiss(spec)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "eval-go":
            self.action_evaluate()
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
