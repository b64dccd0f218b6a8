"""What the training loop needs besides the loop: the run config, the device and its precision
policy, and the per-epoch clean/robust check on the evaluation subset (METHODS.md §5.6).

Precision policy (CUDA only; the CPU always trains in float32): with ``train.amp = "auto"`` the
backbone runs under bf16 autocast on channels-last tensors, where the time goes, while the
classifier head — and so every loss and regulariser computed from its logits — stays float32.
The heads normalise features and weights and RoBal's CosPlus head emits *scale-1* cosine logits
(values in about [−1, 1]); bf16 keeps 8 mantissa bits, an error of ~0.004 on such a logit, of
the order of the margins and KL terms being trained. Losses already autocast to float32, but
their inputs would have been rounded first.
"""
from __future__ import annotations

import json
import os
import types
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

from engine.attacks import pgd
from engine.datasets import DataBundle
from engine.loaders import eval_batches
from engine.metrics import per_class_metrics
from presets.schema import RunConfig
from presets.validate import ConfigError, Problem, check_dataclass, check_values

SMALL_BACKBONES = ("small_cnn", "tiny_mlp")


def read_config(run_dir: Path) -> RunConfig:
    """``RUN_DIR/config.json`` as a RunConfig, validated like the manager validates (a file
    edited by hand fails here with every bad key named, not deep inside the loop)."""
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError([Problem("<file>", str(exc), str(path))], f"cannot read {path}") from None
    problems: list[Problem] = []
    check_dataclass(RunConfig, data, "", problems)
    if problems:
        raise ConfigError(problems)
    cfg = RunConfig.from_dict(data)
    check_values(cfg.to_dict(), problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def pick_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; anything else as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_device(device: torch.device, backbone: str) -> None:
    """CPU threads and cuDNN determinism for ``device``.

    Small models on the CPU run fastest on one thread: intra-op threads only add synchronisation,
    and on a busy machine spinning OpenMP threads can cost 10-30×. ``ADVLT_CPU_THREADS``
    overrides. On CUDA, cuDNN picks deterministic algorithms (same seed → same run, as far as the
    kernels allow); ``ADVLT_CUDNN_BENCHMARK=1`` trades that for autotuned speed.
    """
    if device.type == "cuda":
        fast = os.environ.get("ADVLT_CUDNN_BENCHMARK") == "1"
        torch.backends.cudnn.benchmark = fast
        torch.backends.cudnn.deterministic = not fast
        return
    if device.type != "cpu":
        return
    env = os.environ.get("ADVLT_CPU_THREADS")
    if env:
        torch.set_num_threads(max(1, int(env)))
    elif backbone in SMALL_BACKBONES:
        torch.set_num_threads(1)


def uses_amp(cfg: RunConfig, device: torch.device) -> bool:
    """bf16 autocast + channels_last: CUDA with bf16 support and ``train.amp = "auto"`` only."""
    return cfg.train.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_for(cfg: RunConfig, device: torch.device) -> ContextManager[Any]:
    """The context a training step runs in: bf16 autocast where :func:`uses_amp`, else none."""
    if uses_amp(cfg, device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _fp32_forward(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=features.device.type, enabled=False):
        return type(head).forward(head, features.float())


def keep_head_fp32(model: nn.Module) -> None:
    """Run ``model.classifier`` in float32 even inside an autocast region (see the module doc).

    The head's ``forward`` is replaced on the instance by a method bound to the head (so a
    ``deepcopy`` rebinds it to the copy); parameter names, state dicts and checkpoints are
    unchanged.
    """
    head = model.classifier
    head.forward = types.MethodType(_fp32_forward, head)


def prepare_model(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    """Move to ``device``; under AMP also channels_last and the float32 head."""
    model.to(device)
    if uses_amp(cfg, device):
        model.to(memory_format=torch.channels_last)
        keep_head_fp32(model)
    return model


@dataclass
class EpochEval:
    clean_acc: float
    robust_acc: float
    per_class_clean: list
    per_class_robust: list


def evaluate_subset(model: nn.Module, bundle: DataBundle, cfg: RunConfig, device: torch.device,
                    epoch: int) -> EpochEval:
    """Clean and PGD accuracy on the first ``dataset.eval_subset`` test images (reference §5.6:
    train.py evaluates robustness on the first 21 test batches). Eval mode, float32, a
    symmetric random start from a generator seeded by (run seed, epoch), so the check neither
    depends on nor disturbs the training RNG streams."""
    n = min(cfg.dataset.eval_subset, len(bundle.test_labels))
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + epoch)
    model.eval()
    clean_pred, adv_pred, labels = [], [], []
    batches = eval_batches(bundle.test_images[:n], bundle.test_labels[:n], cfg.eval.batch_size,
                           device, bundle.pixel_max)
    for x, y in batches:
        with torch.no_grad():
            clean_pred.append(model(x).argmax(1))
        result = pgd(model, x, y, cfg.eval.eps, cfg.eval.step_size, cfg.eval.num_steps,
                     rand_start="symmetric", generator=generator)
        with torch.no_grad():
            adv_pred.append(model(result.x_adv).argmax(1))
        labels.append(y)
    target = torch.cat(labels)
    clean = per_class_metrics(torch.cat(clean_pred), target, bundle.num_classes)
    robust = per_class_metrics(torch.cat(adv_pred), target, bundle.num_classes)
    return EpochEval(clean["accuracy"], robust["accuracy"], clean["recall"], robust["recall"])


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs (for a resume warning)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += config_changes(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [prefix or "<root>"]
