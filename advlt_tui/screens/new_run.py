"""The new-run screen: preset, dataset profile, overrides, GPUs, parent run → launch.

Validation is the CLI's (``runs.ops.resolve_run_config``): every change re-validates after a
short pause and shows each problem inline, with the override line it comes from. Launching
calls ``runs.ops.start_run`` (record the run as queued, start the engine detached) and hands the
new row back to the runs screen, which shows it at once.
"""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option

from advlt_tui.widgets.format import preset_key_values
from presets import loader
from presets.schedule import describe_schedule, effective_lrs
from presets.schema import DATASETS
from presets.validate import ConfigError, Problem
from runs import ops
from runs.catalog import CatalogError

DEFAULT_PRESET = "pgd-at"
DEFAULT_DATASET = "digits-lt"
VALIDATE_DELAY_S = 0.25


def schedule_summary(cfg) -> str:
    """The effective lr per epoch of this run (METHODS.md §4.4: the reference's compounding
    schedule freezes training soon after the first milestone — worth seeing before launching)."""
    t = cfg.train
    lrs = effective_lrs(t.epochs, t.lr, t.lr_schedule, t.milestones, t.warmup_epochs)
    return f"lr ({t.lr_schedule}) by epoch: {describe_schedule(lrs)}"


def override_lines(text: str) -> list[str]:
    """Non-blank, non-comment lines of the overrides box, each a ``KEY=VALUE``."""
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]


def describe_problems(problems: list[Problem], lines: list[str]) -> list[str]:
    """One line per problem, naming the override line it comes from when there is one."""
    out = []
    for p in problems:
        where = ""
        for i, line in enumerate(lines):
            key = line.partition("=")[0].strip()
            if key and (p.path == key or p.path.startswith(key + ".") or key.startswith(p.path + ".")):
                where = f"line {i + 1}: "
                break
        hint = " (choose the parent run below)" if p.path == "parent_run" else ""
        out.append(f"✘ {where}{p.path}: {p.message}{hint}")
    return out


def load_presets() -> tuple[list, Optional[str]]:
    """Training and fine-tune presets (inference presets are evaluation variants)."""
    try:
        presets, warning = loader.list_presets(ops.user_preset_dir()), None
    except ConfigError as exc:  # a broken user preset must not hide the built-in ones
        presets, warning = loader.list_presets(None), exc.render().splitlines()[0]
    return [p for p in presets if p.kind in ("train", "finetune")], warning


class NewRunScreen(Screen[Optional[dict]]):
    AUTO_FOCUS = "#presets"
    BINDINGS = [
        Binding("ctrl+l", "launch", "Launch", id="new.launch", priority=True),
        Binding("escape", "back", "Back", id="new.back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.presets, self._preset_warning = load_presets()
        self._timer: Optional[Timer] = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="new-run"):
            with Vertical(id="preset-pane"):
                yield Label("Preset", classes="field-label")
                yield OptionList(*(Option(self._preset_prompt(p), id=p.name) for p in self.presets),
                                 id="presets")
            with VerticalScroll(id="form", can_focus=False):
                yield Static(id="preset-info")
                yield Label("Dataset profile", classes="field-label")
                yield Select([(d, d) for d in DATASETS], value=DEFAULT_DATASET, allow_blank=False,
                             id="dataset")
                yield Label("Overrides, one KEY=VALUE per line (e.g. train.epochs=2)",
                            classes="field-label")
                yield TextArea(id="overrides", soft_wrap=True, tab_behavior="focus",
                               placeholder="e.g.  train.epochs=2  ·  model.backbone_opt={width = 8}")
                yield Static(id="problems")
                with Horizontal(id="gpu-name"):
                    with Vertical():
                        yield Label("GPUs (CUDA_VISIBLE_DEVICES)", classes="field-label")
                        yield Input(placeholder="auto", id="gpus")
                    with Vertical():
                        yield Label("Name", classes="field-label")
                        yield Input(placeholder="PRESET-DATASET", id="name")
                yield Label("Parent run (fine-tune presets start from its last checkpoint)",
                            classes="field-label")
                yield Select([], prompt="no parent", id="parent", disabled=True)
                yield Button("Launch  (ctrl+l)", id="launch", variant="primary")
        yield Footer()

    @staticmethod
    def _preset_prompt(preset) -> Text:
        text = Text(preset.name)
        if preset.kind != "train":
            text.append(f"  {preset.kind}", style="italic")
        return text

    def on_mount(self) -> None:
        options = self.query_one("#presets", OptionList)
        names = [p.name for p in self.presets]
        options.highlighted = names.index(DEFAULT_PRESET) if DEFAULT_PRESET in names else 0
        if self._preset_warning:
            self.notify(self._preset_warning, severity="warning")
        self._show_preset()
        self._validate()

    # --- the form's values -----------------------------------------------------------------

    @property
    def preset(self):
        index = self.query_one("#presets", OptionList).highlighted
        return self.presets[index] if index is not None and self.presets else None

    def form(self) -> dict:
        dataset = self.query_one("#dataset", Select).value
        parent = self.query_one("#parent", Select).value
        return {
            "preset": self.preset.name if self.preset else None,
            "dataset": dataset if isinstance(dataset, str) else DEFAULT_DATASET,
            "sets": override_lines(self.query_one("#overrides", TextArea).text),
            "gpus": self.query_one("#gpus", Input).value.strip() or None,
            "name": self.query_one("#name", Input).value.strip() or None,
            "parent": parent if isinstance(parent, str) else None,
        }

    def _show_preset(self) -> None:
        preset = self.preset
        info = self.query_one("#preset-info", Static)
        if preset is None:
            info.update("no presets found")
            return
        text = Text()
        text.append(preset.title, style="bold")
        text.append(f"   {preset.name} · {preset.kind}\n")
        text.append(preset.summary + "\n")
        for key, value in preset_key_values(preset):
            text.append(f"{key}: ", style="bold")
            text.append(f"{value}\n")
        info.update(text)
        parent = self.query_one("#parent", Select)
        needs_parent = preset.kind == "finetune"
        parent.disabled = not needs_parent
        if needs_parent:
            parent.set_options(self._parent_options())
        else:
            parent.clear()

    def _parent_options(self) -> list[tuple[str, str]]:
        """Training runs with at least one checkpoint, newest first."""
        with_ckpt = {r["run_id"] for r in self.app.catalog.db.query(
            "SELECT DISTINCT run_id FROM checkpoints")}
        runs = [r for r in self.app.runs.values()
                if r["id"] in with_ckpt and r.get("kind") in ("train", "finetune")]
        runs.sort(key=lambda r: r.get("created") or 0, reverse=True)
        return [(f"{r['id']}  {r.get('preset')} · {r.get('dataset')} · {r.get('status')}", r["id"])
                for r in runs]

    # --- validation ------------------------------------------------------------------------

    def _schedule_validate(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(VALIDATE_DELAY_S, self._validate)

    def _validate(self) -> bool:
        """Resolve the form like the CLI would; show problems inline. True when valid."""
        form = self.form()
        problems: list[str] = []
        summary = ""
        if form["preset"] is None:
            problems.append("✘ choose a preset")
        else:
            try:
                parent = ops.parent_of(self.app.catalog, form["parent"]) if form["parent"] else None
                cfg = ops.resolve_run_config(form["preset"], form["dataset"], sets=form["sets"],
                                             parent=parent)
                summary = schedule_summary(cfg)
            except ConfigError as exc:
                problems += describe_problems(exc.problems, form["sets"])
            except CatalogError as exc:
                problems.append(f"✘ parent: {exc}")
        self._show_problems(problems, summary)
        return not problems

    def _show_problems(self, problems: list[str], summary: str = "") -> None:
        box = self.query_one("#problems", Static)
        box.set_class(bool(problems), "-invalid")
        self.query_one("#overrides", TextArea).set_class(bool(problems), "-invalid")
        ok = "✔ valid configuration" + (f"\n{summary}" if summary else "")
        box.update(Text("\n".join(problems)) if problems else Text(ok))

    def on_option_list_option_highlighted(self, _event: OptionList.OptionHighlighted) -> None:
        self._show_preset()
        self._schedule_validate()

    def on_option_list_option_selected(self, _event: OptionList.OptionSelected) -> None:
        self.query_one("#dataset", Select).focus()

    def on_select_changed(self, _event: Select.Changed) -> None:
        self._schedule_validate()

    def on_text_area_changed(self, _event: TextArea.Changed) -> None:
        self._schedule_validate()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "launch":
            self.action_launch()

    # --- actions ---------------------------------------------------------------------------

    def action_launch(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if not self._validate():
            self.notify("fix the problems shown under the overrides first", severity="error")
            return
        form = self.form()
        try:
            run = ops.start_run(self.app.catalog, form["preset"], form["dataset"],
                                sets=form["sets"], parent_ref=form["parent"], gpus=form["gpus"],
                                name=form["name"])
        except ConfigError as exc:
            self._show_problems(describe_problems(exc.problems, form["sets"]))
            return
        except (CatalogError, OSError) as exc:
            self._show_problems([f"✘ {exc}"])
            return
        self.notify(f"launched {run['id']} ({run['preset']} on {run['dataset']})")
        self.dismiss(run)

    def action_back(self) -> None:
        self.dismiss(None)
