"""Convert a reference-repository YAML config (METHODS.md §6–§7) into a preset TOML.

``convert_yaml(path)`` reads one of the reference's 25 configs (or any file in their schema) and
returns the preset it describes; ``import_yaml`` also validates it and writes it atomically.

* Dataset: ``CIFAR10`` → profile ``cifar10-lt``, ``CIFAR100`` → ``cifar100-lt``; a ratio other
  than the profile's goes to ``[datasets."<profile>".dataset]``.
* Kind: ``resume_epoch ≥ epochs`` (nothing to train, e.g. the τ-norm file) or a post-hoc head
  (CDT/PostProc with ``posthoc``, PostNorm τ-norm) on the baseline's training recipe →
  ``inference`` with that head as ``[inference_head]``; ``resume_epoch > 0`` or ``load_model`` →
  ``finetune`` (epochs and milestones counted from the parent's last epoch, as advlt counts
  them); otherwise ``train``.
* Components: ``classifier``/``classifier_opt`` → ``model.head``/``head_opt``; the loss dicts
  → ``train.{loss,adv_loss,nat_loss}``; dict-form ``train_mode`` → ``train.mode``/``mode_opt``;
  ``lr_dict``, ``sampler``, ``lr_decline``, ``warmup_epochs``, ``deffer_opt`` likewise.
* Values equal to the profile's are not repeated (the profile supplies them).
* Dropped with a note: run bookkeeping (``model_dir``, ``model_path``, ``remark``, ...); with a
  warning: dead keys (§7.2), unknown keys, and options the reference itself ignores.
* An evaluation file (``eval_path``, e.g. RoBal's ``*_eval.yaml``) supplies ``[inference_head]``
  and the evaluation protocol; a TDESim head's inference head is the same head with ``posthoc``.

Documented differences from the shipped presets: the name and ``[preset]`` texts; a RoBal
training file imported without its evaluation file has no ``[inference_head]``.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from presets import loader, toml_writer
from presets import yaml_keys as K
from presets.validate import ConfigError, Problem


@dataclass
class ImportResult:
    name: str
    kind: str
    dataset: str  # the profile the reference config was written for
    doc: dict  # the preset document ([preset] + config sections)
    text: str  # the TOML text
    notes: list[str] = field(default_factory=list)  # keys dropped on purpose
    warnings: list[str] = field(default_factory=list)  # dead/unknown/ignored keys

    def as_dict(self, path: Optional[Path] = None) -> dict:
        return {"name": self.name, "kind": self.kind, "dataset": self.dataset,
                "path": str(path) if path else None, "notes": self.notes,
                "warnings": self.warnings}


def read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ModuleNotFoundError:  # pragma: no cover - PyYAML is a dependency
        raise ConfigError([Problem("<file>", "PyYAML is not installed (pip install pyyaml)")],
                          "cannot import") from None
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("<file>", str(exc), str(path))], f"cannot read {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError([Problem("<file>", f"not valid YAML: {exc}", str(path),
                                   mark.line + 1 if mark else None)],
                          f"cannot read {path}") from None
    if not isinstance(data, dict):
        raise ConfigError([Problem("<root>", "expected a mapping of config keys", str(path))],
                          f"cannot import {path}")
    return data


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "imported"


class _Converter:
    """One conversion: collects the preset document, notes, warnings and problems."""

    def __init__(self, cfg: dict, source: str) -> None:
        self.cfg, self.source = cfg, source
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.body: dict = {}
        self.comments: dict[str, str] = {}

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message, self.source))

    def put(self, section: str, key: str, value: Any, comment: Optional[str] = None) -> None:
        node = self.body
        for part in section.split("."):
            node = node.setdefault(part, {})
        node[key] = value
        if comment:
            self.comments[f"{section}.{key}"] = comment

    # ------------------------------------------------------------------ pieces

    def dataset(self) -> str:
        ref = self.cfg.get("dataset")
        profile = K.DATASET_PROFILES.get(str(ref))
        if profile is None:
            self.problem("dataset", f"unsupported dataset {ref!r}; allowed: "
                         + ", ".join(K.DATASET_PROFILES))
            return "cifar10-lt"
        self.profile = loader.load_profile(profile)
        classes = K.coerce_number(self.cfg.get("num_classes", self.profile["dataset"]["num_classes"]), True)
        if classes != self.profile["dataset"]["num_classes"]:
            self.problem("num_classes", f"{ref} has {self.profile['dataset']['num_classes']} "
                         f"classes, not {classes!r}")
        ratio = K.coerce_number(self.cfg.get("imbalance_ratio", 0.0), False)
        if ratio == 0:
            ratio = 1.0  # the reference's 0 means "no long tail"
        if ratio != self.profile["dataset"]["imbalance_ratio"]:
            self.ratio = float(ratio)
        return profile

    def mode(self) -> tuple[str, dict]:
        raw = self.cfg.get("train_mode")
        if isinstance(raw, dict):
            if list(raw) != ["add_reg"]:
                self.problem("train_mode", f"dict form must be {{add_reg: {{...}}}}, got {list(raw)}")
                return "pgd_at", {}
            opt = dict(raw["add_reg"] or {})
            out = {}
            for key in ("beta_adv", "beta_nat", "beta_reg"):
                if key in opt:
                    out[key] = K.coerce_number(opt.pop(key), False)
            reg = opt.pop("reg_opt", None)
            if reg not in K.REG_OPTS:
                self.problem("train_mode.add_reg.reg_opt", f"unknown regulariser {reg!r}; allowed: "
                             + ", ".join(str(k) for k in K.REG_OPTS if k))
            else:
                out["reg"] = K.REG_OPTS[reg]
            for key in opt:
                self.problem(f"train_mode.add_reg.{key}", "unknown add_reg option")
            return "add_reg", out
        if raw not in K.TRAIN_MODES:
            self.problem("train_mode", f"unknown train mode {raw!r}; allowed: "
                         + ", ".join(K.TRAIN_MODES) + ", {add_reg: {...}}")
            return "pgd_at", {}
        mode = K.TRAIN_MODES[raw]
        if mode == "trades":
            return mode, {"beta": K.coerce_number(self.cfg.get("beta", 1.0), False)}
        return mode, {}

    def loss(self, key: str) -> dict:
        raw = self.cfg.get(key)
        if raw is None:
            return {"name": "ce"}
        if not isinstance(raw, dict):
            self.problem(key, f"expected null or a dict such as {{LDAM: {{...}}}}, got {raw!r}")
            return {"name": "ce"}
        present = [(ref, ours) for ref, ours in K.LOSS_ORDER if ref in raw]
        if not present:
            self.problem(key, f"unknown loss {list(raw)}; allowed: "
                         + ", ".join(r for r, _ in K.LOSS_ORDER))
            return {"name": "ce"}
        (ref, name), ignored = present[0], [r for r in raw if r != present[0][0]]
        if ignored:
            self.warnings.append(f"{key}: the reference uses only {ref!r} (first in its order); "
                                 f"ignored {ignored}")
        opts = dict(raw[ref] or {})
        if "weight" in opts:
            if opts["weight"] is not None:
                self.problem(f"{key}.{ref}.weight", "explicit class weights are not supported")
            del opts["weight"]
        out = {"name": name}
        if opts:
            out["opt"] = K.options("loss", name, opts)
        return out

    def head(self, cfg: dict, where: str) -> dict:
        raw = cfg.get("classifier", "FC")
        opts = dict(cfg.get("classifier_opt") or {})
        if raw is None:
            self.notes.append(f"{where}classifier: null (the backbone's own FC) → fc head")
            return {"head": "fc"}
        name = K.match_head(str(raw))
        if name is None:
            self.problem("classifier", f"unknown classifier {raw!r}; allowed: "
                         + ", ".join(r for r, _, _ in K.HEAD_ORDER))
            return {"head": "fc"}
        known = K.components.HEAD_OPTIONS[name]
        if name in ("fc", "dot") and opts:
            self.warnings.append(f"{where}classifier_opt {opts} is not passed to {raw} by the "
                                 "reference; dropped")
            opts = {}
        extra = [k for k in opts if k not in known]
        if name == "cos_plus" and extra:  # CosPlus swallows unknown keyword options
            self.warnings.append(f"{where}classifier_opt {extra}: ignored by CosPlus; dropped")
            opts = {k: v for k, v in opts.items() if k in known}
        out: dict = {"head": name}
        if opts:
            out["head_opt"] = K.options("head", name, opts)
        return out

    def simple_keys(self, cfg: dict, keys: set, with_comment: bool = True) -> None:
        for ref in K.SIMPLE_KEYS:  # in a fixed order, so the output is stable
            if ref not in keys or ref not in cfg:
                continue
            section, key = K.SIMPLE_KEYS[ref]
            value = K.coerce_number(cfg[ref], ref in K.INT_KEYS)
            base = self.profile
            for part in section.split(".") + [key]:
                base = base.get(part, {}) if isinstance(base, dict) else {}
            if value != base:
                self.put(section, key, value, f"reference {ref}: {cfg[ref]!r}" if with_comment else None)
        if cfg.get("test_step_size", 0.0078) != 0.0078:
            self.warnings.append("test_step_size: the reference asserts 0.0078 and refuses "
                                 "other values; kept as given")

    def other_keys(self) -> None:
        for key, value in self.cfg.items():
            if key in K.STRUCTURAL_KEYS or key in K.SIMPLE_KEYS:
                continue
            if key in K.DROPPED_KEYS:
                self.notes.append(f"{key}: dropped — {K.DROPPED_KEYS[key]}")
            elif key in K.DEAD_KEYS:
                self.warnings.append(f"{key}: a dead key (never read by the reference); dropped")
            elif key in K.NEUTRAL_KEYS:
                neutral = K.NEUTRAL_KEYS[key]
                same = (value == neutral) or (not value and not neutral)
                if not same:
                    self.problem(key, f"{key}: {value!r} is not supported (only {neutral!r})")
            else:
                self.warnings.append(f"{key}: not a key of the reference's schema; dropped")

    # ------------------------------------------------------------------ the whole config

    def schedule(self, kind: str, mode: str) -> None:
        cfg = self.cfg
        epochs = K.coerce_number(cfg.get("epochs"), True)
        resume = K.coerce_number(cfg.get("resume_epoch", 0) or 0, True)
        milestones = [K.coerce_number(m, True) for m in (cfg.get("lr_decline") or (60, 75, 90))]
        warmup = K.coerce_number(cfg.get("warmup_epochs", 0) or 0, True)
        train = self.profile["train"]
        if kind == "finetune":
            # advlt counts a fine-tune's epochs and milestones from the parent's last epoch;
            # a milestone already passed at the start still counts from this run's first epoch.
            self.put("train", "epochs", epochs - resume,
                     f"reference: epochs {epochs} after resume_epoch {resume}")
            self.put("train", "milestones", [max(m - resume, 1) for m in milestones],
                     f"reference: lr_decline {milestones}")
            if warmup > resume:
                self.warnings.append(f"warmup_epochs {warmup} reaches into the fine-tune "
                                     "(absolute epochs in the reference); dropped")
            elif warmup:
                self.notes.append(f"warmup_epochs {warmup}: over before epoch {resume + 1}; dropped")
            return
        if epochs != train["epochs"]:
            self.put("train", "epochs", epochs)
        if milestones != list(train["milestones"]):
            self.put("train", "milestones", milestones, f"reference lr_decline: {milestones}")
        if warmup:
            self.put("train", "warmup_epochs", warmup)

    def recipe(self, kind: str) -> None:
        cfg = self.cfg
        mode, mode_opt = self.mode()
        if "beta" in cfg and mode != "trades":
            self.notes.append(f"beta: {cfg['beta']!r} is read only by the trades mode; dropped")
        self.body.setdefault("model", {}).update(self.head(cfg, ""))
        backbone = cfg.get("backbone", "WideResNet")
        if backbone != "WideResNet":
            self.problem("backbone", f"only WideResNet is selectable in the reference, got {backbone!r}")
        bopt = dict(cfg.get("backbone_opt") or {})
        ours = {}
        for key, value in bopt.items():
            if key in K.BACKBONE_OPTS:
                ours[K.BACKBONE_OPTS[key]] = value
            elif K.BACKBONE_OPT_DEFAULTS.get(key, object()) != value:
                self.problem(f"backbone_opt.{key}", "not supported by advlt's WideResNet")
        merged_bopt = {**self.profile["model"]["backbone_opt"], **ours}
        if merged_bopt != self.profile["model"]["backbone_opt"]:
            self.put("model", "backbone_opt", merged_bopt)
        raw_mode = cfg.get("train_mode")
        self.put("train", "mode", mode,
                 f"reference train_mode: {raw_mode!r}" if isinstance(raw_mode, dict) else None)
        if mode_opt:
            self.put("train", "mode_opt", mode_opt)
        sampler = cfg.get("sampler")
        if sampler is not None:
            ours_sampler = K.match_sampler(str(sampler))
            if ours_sampler is None:
                self.problem("sampler", f"unsupported sampler {sampler!r} (Mix is defective and "
                             "Group unusable in the reference); allowed: ClassAware")
            else:
                self.put("train", "sampler", ours_sampler, f"reference sampler: {sampler}")
        if cfg.get("lr_dict") is not None:
            lr_dict = cfg["lr_dict"]
            if not isinstance(lr_dict, dict):
                self.problem("lr_dict", f"expected a mapping {{substring: lr, else: lr}}, got {lr_dict!r}")
            else:
                self.put("train", "lr_dict", {str(k): K.coerce_number(v, False)
                                              for k, v in lr_dict.items()})
                self.put("train", "freeze", "lr0", "reference: lr 0, BatchNorm statistics still move")
        if cfg.get("deffer_opt"):
            if mode != "pgd_at":
                self.warnings.append("deffer_opt: read only by the pgd_at mode; dropped")
            else:
                self.put("train", "deffer", dict(cfg["deffer_opt"]))
        other = dict(cfg.get("other_params") or {})
        defaults = {"distance": "l_inf", "rand_start_mode": "uniform", "rand_start_step": 1}
        for key, value in other.items():
            if defaults.get(key, object()) != value:
                self.problem(f"other_params.{key}", "not supported (advlt's PGD-AT start is "
                             "train.attack.rand_start)")
        for key in ("loss", "adv_loss", "nat_loss"):
            spec = self.loss(f"{key}_opt")
            self.body.setdefault("train", {})[key] = spec
        self.schedule(kind, mode)
        self.simple_keys(cfg, set(K.SIMPLE_KEYS) - K.EVAL_KEYS)

    def detect_kind(self) -> str:
        cfg = self.cfg
        epochs = K.coerce_number(cfg.get("epochs"), True)
        resume = K.coerce_number(cfg.get("resume_epoch", 0) or 0, True)
        if isinstance(epochs, int) and resume >= epochs:
            return "inference"
        head = K.match_head(str(cfg.get("classifier", "FC")))
        opts = cfg.get("classifier_opt") or {}
        posthoc = ((head in ("cdt", "post_proc") and opts.get("posthoc"))
                   or (head == "post_norm" and opts.get("norm") and not opts.get("lws")))
        baseline_recipe = (cfg.get("train_mode") == "pgd_at" and cfg.get("loss_opt") is None
                           and cfg.get("sampler") is None and cfg.get("lr_dict") is None
                           and not cfg.get("warmup_epochs") and not cfg.get("deffer_opt"))
        if posthoc and baseline_recipe and not resume and not cfg.get("load_model"):
            return "inference"
        if resume > 0 or cfg.get("load_model"):
            return "finetune"
        return "train"


def convert_yaml(path: Path, name: Optional[str] = None,
                 eval_path: Optional[Path] = None) -> ImportResult:
    """The preset a reference YAML config describes (not yet validated or written)."""
    path = Path(path)
    cfg = read_yaml(path)
    conv = _Converter(cfg, str(path))
    for key in K.REQUIRED_KEYS:
        if key not in cfg:
            conv.problem(key, "required by the reference (no default)")
    if conv.problems:
        raise ConfigError(conv.problems, f"cannot import {path}")
    dataset = conv.dataset()
    if conv.problems:
        raise ConfigError(conv.problems, f"cannot import {path}")
    kind = conv.detect_kind()
    if kind == "inference":
        conv.body["inference_head"] = conv.head(cfg, "")
        conv.notes.append("inference-time preset: the training keys describe the parent run "
                          "and are not carried over")
    else:
        conv.recipe(kind)
        if kind == "finetune":
            where = cfg.get("load_model") or f"model_dir/epoch{cfg.get('resume_epoch')}.pt"
            conv.notes.append(f"load_model/resume_epoch: starts from {where} — pass the parent "
                              "run with `advlt run NAME --from RUN`")
    conv.simple_keys(cfg, K.EVAL_KEYS)
    conv.other_keys()
    sources = [path.name]
    if eval_path is not None:
        _merge_eval(conv, Path(eval_path), cfg, kind)
        sources.append(Path(eval_path).name)
    elif conv.body.get("model", {}).get("head") == "tde_sim":
        conv.body["inference_head"] = {
            "head": "tde_sim", "head_opt": {**conv.body["model"].get("head_opt", {}),
                                            "posthoc": True}}
        conv.notes.append("TDESim: evaluated with the same head and posthoc = true (README)")
    elif conv.body.get("model", {}).get("head") == "cos_plus":
        conv.warnings.append("a CosPlus (RoBal) training file: pass its *_eval.yaml with --eval "
                             "to get the boundary-adjusted [inference_head]")
    if conv.problems:
        raise ConfigError(conv.problems, f"cannot import {path}")
    if hasattr(conv, "ratio"):
        conv.body["datasets"] = {dataset: {"dataset": {"imbalance_ratio": conv.ratio}}}
    name = name or slug(path.stem)
    meta = {"name": name, "title": path.stem, "kind": kind,
            "summary": _summary(conv.body, kind, dataset),
            "reference_config": sources if len(sources) > 1 else sources[0]}
    doc = {"preset": meta, **{k: v for k, v in conv.body.items() if k != "datasets"}}
    if "datasets" in conv.body:
        doc["datasets"] = conv.body["datasets"]
    header = [f"Imported from the reference config {', '.join(sources)} by `advlt presets import`",
              f"(written for {dataset}; METHODS.md §6-§7 describe the keys)."]
    header += [f"note: {n}" for n in conv.notes] + [f"warning: {w}" for w in conv.warnings]
    text = toml_writer.dumps(doc, header, conv.comments)
    return ImportResult(name, kind, dataset, doc, text, conv.notes, conv.warnings)


def _merge_eval(conv: _Converter, eval_path: Path, train_cfg: dict, kind: str) -> None:
    """An evaluation file: its classifier is the inference head, its test_* keys the protocol."""
    ecfg = read_yaml(eval_path)
    if ecfg.get("dataset") != train_cfg.get("dataset"):
        conv.problem("dataset", f"the evaluation file is for {ecfg.get('dataset')!r}, the "
                     f"training file for {train_cfg.get('dataset')!r}")
        return
    conv.body["inference_head"] = conv.head(ecfg, f"{eval_path.name}: ")
    conv.body.pop("eval", None)
    conv.simple_keys(ecfg, K.EVAL_KEYS)
    conv.notes.append(f"{eval_path.name}: its classifier is [inference_head]; its training keys "
                      "are not read by test.py")


def _summary(body: dict, kind: str, dataset: str) -> str:
    if kind == "inference":
        return f"imported: evaluate with the {body['inference_head']['head']} head ({dataset})"
    train = body.get("train", {})
    return (f"imported: {train.get('mode')}, {body.get('model', {}).get('head')} head, "
            f"{train.get('loss', {}).get('name')} loss ({kind}, {dataset})")


def import_yaml(path: Path, out_dir: Path, name: Optional[str] = None,
                eval_path: Optional[Path] = None, force: bool = False) -> tuple[ImportResult, Path]:
    """Convert, validate like any preset (for its dataset) and write ``out_dir/NAME.toml``
    atomically. Raises ConfigError (nothing written) on any problem."""
    result = convert_yaml(path, name, eval_path)
    target = Path(out_dir) / f"{result.name}.toml"
    if target.exists() and not force:
        raise ConfigError([Problem("--out", f"{target} exists (use --force to replace it)")],
                          "not written")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / target.name
        probe.write_text(result.text)
        try:
            preset = loader.parse_preset(probe)
            extra = {"parent_checkpoint": "<parent>"} if preset.kind == "finetune" else None
            loader.resolve(preset, result.dataset, extra=extra)
        except ConfigError as exc:
            raise ConfigError(exc.problems, f"the converted preset is invalid ({path})") from None
    toml_writer.write_atomic(target, result.text)
    return result, target
