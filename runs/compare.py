"""The data behind ``advlt compare`` and ``advlt diff`` (and the TUI's compare screen).

``compare_rows`` gives one row per run (its training-time numbers: clean and PGD accuracy of the
last measured epoch on the per-epoch eval subset) and one row per finished evaluation (the full
attack suite on a checkpoint, METHODS.md §5). Numbers only line up when they were measured under
the same protocol, so every row carries its ``protocol_hash`` and rows are flagged (``mismatch``)
when their protocol differs from the most common one among rows of the same kind — the table
never silently mixes them. Training-time rows and evaluation rows are two kinds of measurement
(a small eval subset during training vs. the evaluation protocol) and are compared within kind.

Stdlib only: the manager never imports torch.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

from runs.catalog import Catalog
from runs.compare_render import FORMATS, render_compare

__all__ = ["COLUMNS", "FORMATS", "compare_rows", "render_compare", "config_diff", "flatten",
           "class_groups"]

COLUMNS = ["id", "preset", "dataset", "eval_id", "variant", "checkpoint", "clean", "fgsm",
           "pgd20", "mim", "cw", "aa", "head", "medium", "tail", "worst_class", "protocol_hash",
           "mismatch"]
ACCURACY_COLUMNS = ("clean", "fgsm", "pgd20", "mim", "cw", "aa", "head", "medium", "tail",
                    "worst_class")
GROUP_NAMES = ("head", "medium", "tail")


def class_groups(counts: list[int], many: int = 100, few: int = 20) -> dict[str, list[int]]:
    """Head/medium/tail classes by training count: Many > 100, Medium 20..100, Few < 20 (Liu et
    al., CVPR 2019); if a group would be empty, thirds of the classes sorted head → tail (the
    first third taking the remainder). Same rule as the engine's ``metrics.default_groups``."""
    if len(counts) < 3:
        return {}
    masks = ([c > many for c in counts], [few <= c <= many for c in counts],
             [c < few for c in counts])
    if all(any(m) for m in masks):
        return {g: [i for i, keep in enumerate(m) if keep] for g, m in zip(GROUP_NAMES, masks)}
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    n, k = len(order), 3
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    out, start = {}, 0
    for g, size in zip(GROUP_NAMES, sizes):
        out[g] = sorted(order[start:start + size])
        start += size
    return out


def _mean(values: list[Optional[float]], idx: list[int]) -> Optional[float]:
    picked = [values[i] for i in idx if i < len(values) and values[i] is not None]
    return sum(picked) / len(picked) if picked else None


def _read_config(run: dict) -> dict:
    try:
        cfg = json.loads((Path(run["run_dir"]) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _training_protocol(cfg: dict) -> Optional[dict]:
    """What the per-epoch robust accuracy measures (PGD on the eval subset during training)."""
    ev, ds = cfg.get("eval") or {}, cfg.get("dataset") or {}
    if not ev:
        return None
    return {"kind": "training-subset", "norm": "Linf", "eps": ev.get("eps"),
            "step_size": ev.get("step_size"), "num_steps": ev.get("num_steps"),
            "eval_subset": ds.get("eval_subset"), "dataset": ds.get("name"),
            "imbalance_ratio": ds.get("imbalance_ratio")}


def _hash(protocol: Optional[dict]) -> Optional[str]:
    if protocol is None:
        return None
    blob = json.dumps(protocol, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _architecture(cfg: dict) -> Optional[str]:
    model = cfg.get("model") or {}
    if not model:
        return None
    opts = model.get("backbone_opt") or {}
    extra = ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return f"{model.get('backbone')}{'(' + extra + ')' if extra else ''}+{model.get('head')}"


def _base_row(run: dict, cfg: dict) -> dict:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(id=run["id"], preset=run.get("preset"), dataset=run.get("dataset"),
               name=run.get("name"), status=run.get("status"), architecture=_architecture(cfg),
               eps=(cfg.get("eval") or {}).get("eps"), mismatch=False)
    return row


def _training_row(catalog: Catalog, run: dict, cfg: dict) -> dict:
    row = _base_row(run, cfg)
    protocol = _training_protocol(cfg)
    steps = (protocol or {}).get("num_steps")
    row.update(kind="training", checkpoint=f"epoch {run['epoch']}" if run.get("epoch") else None,
               clean=run.get("clean_acc"), pgd20=run.get("robust_acc"),
               pgd_key=f"pgd{steps}" if steps else None, protocol=protocol,
               protocol_hash=_hash(protocol), robust_key=f"pgd{steps}" if steps else None)
    measured = [e for e in catalog.run_epochs(run["id"]) if e.get("per_class_robust")]
    counts = (catalog.run_counts(run["id"]) or {}).get("counts")
    if measured and counts:
        per_class = measured[-1]["per_class_robust"]
        for group, idx in class_groups(counts).items():
            row[group] = _mean(per_class, idx)
        known = [(v, i) for i, v in enumerate(per_class) if v is not None]
        if known:
            row["worst_class"], row["worst_class_index"] = min(known)
    return row


def _pgd_key(results: dict, protocol: dict) -> Optional[str]:
    """The evaluation's full-length PGD result: ``pgd{num_steps}`` (PGD-20 under the standard
    protocol; another length is recorded in ``pgd_key`` and shows up as a protocol mismatch)."""
    steps = protocol.get("num_steps")
    if steps and f"pgd{steps}" in results:
        return f"pgd{steps}"
    keys = sorted((k for k in results if k.startswith("pgd") and k[3:].isdigit()),
                  key=lambda k: int(k[3:]))
    return keys[-1] if keys else None


def _evaluation_row(run: dict, cfg: dict, ev: dict) -> dict:
    row = _base_row(run, cfg)
    results, protocol = ev.get("results") or {}, ev.get("protocol") or {}
    acc = {k: r.get("accuracy") for k, r in results.items()}
    pgd = _pgd_key(results, protocol)
    # Group and worst-class numbers come from the strongest result available: the pointwise
    # worst case over every attack run (robust only if no attack fooled the image).
    robust_key = next((k for k in ("worst", "aa", pgd) if k and k in results), None)
    robust = results.get(robust_key) or {}
    row.update(kind="evaluation", eval_id=ev["id"], variant=ev.get("variant"),
               checkpoint=ev.get("checkpoint"), clean=acc.get("clean"), fgsm=acc.get("fgsm"),
               pgd20=acc.get(pgd) if pgd else None, mim=acc.get("mim"), cw=acc.get("cw"),
               aa=acc.get("aa"), worst=acc.get("worst"), protocol=protocol or None,
               protocol_hash=ev.get("protocol_hash"), pgd_key=pgd, robust_key=robust_key,
               eval_status=ev.get("status"), warnings=ev.get("warnings") or [],
               flags=ev.get("flags") or {})
    if ev.get("variant") is None and protocol.get("variant"):
        row["variant"] = protocol["variant"]
    if protocol.get("eps") is not None:
        row["eps"] = protocol["eps"]
    groups = robust.get("groups") or {}
    for group in GROUP_NAMES:
        row[group] = groups.get(group)
    worst = robust.get("worst_class") or {}
    row["worst_class"], row["worst_class_index"] = worst.get("recall"), worst.get("class")
    return row


def _flag_mismatches(rows: list[dict]) -> dict[str, Optional[str]]:
    """Flag rows whose protocol differs from the most common one of their kind; returns the
    reference protocol hash of each kind (ties: the first row's)."""
    reference: dict[str, Optional[str]] = {}
    for kind in ("training", "evaluation"):
        same_kind = [r for r in rows if r["kind"] == kind]
        if not same_kind:
            continue
        votes = Counter(r["protocol_hash"] for r in same_kind)
        best = max(votes.values())
        ref = next(r["protocol_hash"] for r in same_kind if votes[r["protocol_hash"]] == best)
        reference[kind] = ref
        for r in same_kind:
            r["mismatch"] = r["protocol_hash"] != ref or r["protocol_hash"] is None
    return reference


def compare_rows(catalog: Catalog, refs: list[str], *, training_rows: bool = True,
                 finished_only: bool = True) -> dict:
    """One row per run and per evaluation of the runs ``refs`` (ids or unique prefixes, in the
    given order; a run listed twice appears once).

    Returns ``{"columns", "rows", "mismatch", "reference_protocol", "protocols"}``; accuracies
    are fractions in [0, 1] (None where not measured). Unknown or ambiguous refs raise the
    catalog's ``RunNotFound``/``AmbiguousRun`` before anything is read.
    """
    ids = list(dict.fromkeys(catalog.resolve(ref) for ref in refs))
    rows: list[dict] = []
    protocols: dict[str, Any] = {}
    for run_id in ids:
        run = catalog.get_run(run_id)
        cfg = _read_config(run)
        if training_rows:
            rows.append(_training_row(catalog, run, cfg))
        for ev in catalog.run_evaluations(run_id):
            if finished_only and ev.get("status") != "finished":
                continue
            rows.append(_evaluation_row(run, cfg, ev))
    for r in rows:
        if r["protocol_hash"] is not None:
            protocols.setdefault(r["protocol_hash"], r.get("protocol"))
    reference = _flag_mismatches(rows)
    return {"columns": list(COLUMNS), "rows": rows, "mismatch": any(r["mismatch"] for r in rows),
            "reference_protocol": reference, "protocols": protocols}


_MISSING = object()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": value}``; lists and scalars are leaves; an empty dict is a leaf."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj} if prefix else {}


def config_diff(catalog: Catalog, a: str, b: str) -> list[tuple[str, object, object]]:
    """Dotted keys whose values differ between the ``config.json`` of runs ``a`` and ``b``,
    sorted by key; a key present in only one config has ``None`` on the other side."""
    configs = []
    for ref in (a, b):
        run = catalog.get_run(ref)
        path = Path(run["run_dir"]) / "config.json"
        try:
            configs.append(flatten(json.loads(path.read_text(encoding="utf-8"))))
        except FileNotFoundError:
            raise FileNotFoundError(f"run {run['id']}: {path} is missing") from None
        except ValueError as exc:
            raise ValueError(f"run {run['id']}: {path} is not valid JSON ({exc})") from None
    left, right = configs
    out = []
    for key in sorted(set(left) | set(right)):
        va, vb = left.get(key, _MISSING), right.get(key, _MISSING)
        if va != vb:
            out.append((key, None if va is _MISSING else va, None if vb is _MISSING else vb))
    return out


def parse_refs(refs: Iterable[str]) -> list[str]:
    """Command-line refs, also accepting comma-separated lists (``a,b c``)."""
    return [r for ref in refs for r in ref.split(",") if r.strip()]
