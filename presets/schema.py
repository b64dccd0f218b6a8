"""The typed run config: what a preset + dataset profile + overrides resolve to.

Stdlib only (the manager must never import torch). The engine reads the same dataclasses back
from ``RUN_DIR/config.json``. Names of components (heads, losses, ...) are plain strings; the
engine's registries hold the implementations and a test checks both lists agree.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

# Names the engine registers. Kept here so the manager can validate without importing torch;
# tests/test_registries_agree.py checks these against the engine's registries.
BACKBONES = ("wrn", "small_cnn", "tiny_mlp")
HEADS = ("fc", "cos", "dot", "post_norm", "cdt", "tde_sim", "cos_plus", "post_proc")
LOSSES = ("ce", "focal", "cb", "ldam", "uni_margin", "bce", "cdt", "logit_adjust", "multi_margin")
TRAIN_MODES = ("plain", "pgd_at", "trades", "inner_loss", "add_reg", "avmix")
REGULARISERS = ("none", "trades", "mart", "alp", "alp_2", "norm")
SAMPLERS = ("class_aware",)
ATTACKS = ("fgsm", "pgd", "cw", "mim", "aa")
DATASETS = ("cifar10-lt", "cifar100-lt", "digits-lt")
LR_SCHEDULES = ("reference_compounding", "step")
RAND_STARTS = ("one_sided", "symmetric")
FREEZE_MODES = ("lr0", "frozen")
ROBAL_FORWARDS = ("reference", "efficient")
AA_VERSIONS = ("reference", "standard")
KINDS = ("train", "finetune", "inference")

CONFIG_VERSION = 1


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "digits-lt"  # one of DATASETS
    num_classes: int = 10  # set by the dataset profile
    imbalance_ratio: float = 0.1  # n_min / n_max in (0, 1]; 1.0 keeps the balanced set
    data_root: Optional[str] = None  # where CIFAR archives live; None → ADVLT data dir
    download: bool = True  # try torchvision's download when the archive is missing
    eval_subset: int = 1344  # test images for per-epoch robust eval (reference: 21 batches of 64)
    num_workers: int = 0  # DataLoader workers; 0 keeps tests and the digits demo simple


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small_cnn"  # one of BACKBONES
    backbone_opt: dict = field(default_factory=dict)  # e.g. {depth = 34, widen_factor = 10}
    head: str = "fc"  # one of HEADS
    head_opt: dict = field(default_factory=dict)  # head keyword options (METHODS.md §2.3)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # one of LOSSES
    opt: dict = field(default_factory=dict)  # loss keyword options (METHODS.md §3)


@dataclass(frozen=True)
class AttackConfig:
    """The inner maximisation during training (L∞, [0,1] inputs)."""

    eps: float = 0.031  # reference value (≈7.9/255, not 8/255)
    step_size: float = 0.0078
    num_steps: int = 5
    rand_start: str = "one_sided"  # reference: x + eps·U[0,1); "symmetric": U[-eps, eps]


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "pgd_at"  # one of TRAIN_MODES
    mode_opt: dict = field(default_factory=dict)  # trades: {beta}; add_reg: {beta_adv, ...}
    epochs: int = 80  # epochs this run trains (fine-tunes: 1, numbering continues the parent's)
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_schedule: str = "reference_compounding"  # the reference's defect, or "step"
    milestones: tuple = (60, 75)  # epochs (1-based, absolute) where lr decays ×0.1
    warmup_epochs: int = 0
    lr_dict: Optional[dict] = None  # {substring: lr, ..., "else": lr}; first match wins
    freeze: str = "lr0"  # "lr0": reference (lr 0, BN stats still move); "frozen": truly frozen
    sampler: Optional[str] = None  # None → shuffle; "class_aware" → METHODS.md §1.6
    loss: LossConfig = field(default_factory=LossConfig)  # outer loss
    adv_loss: LossConfig = field(default_factory=LossConfig)  # inner-attack loss (inner_loss/add_reg)
    nat_loss: LossConfig = field(default_factory=LossConfig)  # natural loss (add_reg)
    attack: AttackConfig = field(default_factory=AttackConfig)
    deffer: Optional[dict] = None  # {"DRW": {...}} / {"DM": {...}} (METHODS.md §4.3)
    robal_forwards: str = "reference"  # add_reg: four train-mode forwards, or two ("efficient")
    eval_freq: int = 5  # per-epoch clean/robust eval every N epochs (and the last)
    save_freq: int = 10  # checkpoint every N epochs (and the last)
    log_interval: int = 20  # batches between progress events
    amp: str = "auto"  # "auto": bf16 autocast + channels_last on CUDA; "off"
    sync_bn: bool = False  # torchrun/DDP only: SyncBatchNorm (CUDA) instead of per-rank BN


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol (METHODS.md §5); its fingerprint goes with every result."""

    eps: float = 0.031
    step_size: float = 0.0078
    num_steps: int = 20
    attacks: tuple = ("fgsm", "pgd", "cw", "mim", "aa")
    aa_version: str = "reference"  # reference: APGD-CE + APGD-T; standard: the four attacks
    cw_kappa: float = 50.0
    mim_decay: float = 1.0
    n_ex: Optional[int] = None  # seeded class-balanced subset of the test set; None → all
    batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class HeadSpec:
    """An inference-time head: the classifier a checkpoint is evaluated with."""

    head: str = "fc"
    head_opt: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    preset: str = "pgd-at"
    kind: str = "train"  # one of KINDS
    seed: int = 1
    device: str = "auto"  # "auto" → CUDA when present, else CPU
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    inference_head: Optional[HeadSpec] = None  # default evaluation head (RoBal boundary adj.)
    parent_run: Optional[str] = None  # fine-tunes: the run they start from
    parent_checkpoint: Optional[str] = None  # absolute path, filled in by the manager
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def fingerprint(self) -> str:
        return config_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return from_plain(cls, data)


def config_hash(plain: dict) -> str:
    blob = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_plain(cls: type, data: dict) -> Any:
    """Build a dataclass from plain data (no validation: see presets.validate)."""
    hints = field_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp, _ = _strip_optional(hints[f.name])
        if value is not None and dataclasses.is_dataclass(tp):
            value = from_plain(tp, value)
        elif tp is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
