"""The reference repository's configs as data, typed in from METHODS.md §6 (not from our presets).

``CONFIGS[file stem] = (yaml dict, shipped preset, dataset, eval file stem or None)``. Each file
is the baseline of its dataset plus the keys §6 lists as different for that row.
"""
from __future__ import annotations

import copy

C10_BASE = {
    "epochs": 80, "batch_size": 64, "test_batch_size": 64, "weight_decay": 0.0002, "lr": 0.1,
    "momentum": 0.9, "lr_decline": [60, 75], "train_num_steps": 5, "train_step_size": 0.0078,
    "train_epsilon": 0.031, "test_num_steps": 20, "test_step_size": 0.0078,
    "test_epsilon": 0.031, "random": True, "log_interval": 100, "save_freq": 10, "eval_freq": 5,
    "imbalance_ratio": 0.02, "dataset": "CIFAR10", "num_classes": 10, "train_mode": "pgd_at",
    "loss_opt": None, "sampler": None, "backbone": "WideResNet", "classifier": "FC",
    "model_dir": "./checkpoints/cifar10-0.02-pgd-5", "resume_epoch": 0, "remark": None,
    "model_path": "./checkpoints/cifar10-0.02-pgd-5/epoch80.pt",
}
C100_BASE = {k: v for k, v in C10_BASE.items() if k not in ("eval_freq", "resume_epoch", "remark")}
C100_BASE.update({"imbalance_ratio": 0.1, "dataset": "CIFAR100", "num_classes": 100,
                  "beta": 6.0, "model_dir": "./checkpoints/cifar100-0.1-pgd-5",
                  "model_path": "./checkpoints/cifar100-0.1-pgd-5/epoch80.pt"})
BASELINE_CKPT = "./checkpoints/cifar10-0.02-pgd-5/epoch80.pt"
CB = {"CB": {"beta": 0.9999, "loss_type": "focal", "gamma": 2.0}}

# stem → (dataset base, keys that differ (§6), shipped preset, eval file stem)
ROWS = {
    "cifar10_LT0.02_pgdat": (C10_BASE, {}, "pgd-at", None),
    "cifar100_LT0.1_pgdat": (C100_BASE, {}, "pgd-at", None),
    "cifar10_LT0.02_pgdat_cos": (C10_BASE, {
        "classifier": "Cos", "classifier_opt": {"bias": False, "scale": 16}}, "cos", None),
    "cifar10_LT0.02_pgdat_outer_LDAM": (C10_BASE, {
        "loss_opt": {"LDAM": {"max_m": 0.5, "weight": None, "s": 1}}}, "ldam", None),
    "cifar10_LT0.02_pgdat_cos_HE": (C10_BASE, {
        "classifier": "Cos", "classifier_opt": {"bias": False, "scale": 1},
        "loss_opt": {"UniMargin": {"m": 0.2, "weight": None, "s": 10}}}, "cos-he", None),
    "cifar10_LT0.02_pgdat_outer_CDT": (C10_BASE, {"loss_opt": {"CDT": {"tau": 0.3}}}, "cdt", None),
    "cifar10_LT0.02_pgdat_outer_logitadjust": (C10_BASE, {
        "classifier": "Dot", "loss_opt": {"LogitAdjust": {"tau": 1}},
        "model_dir": "./checkpoints/supp/cifar10-0.02-pgd-5-la"}, "logit-adjust", None),
    "cifar10_LT0.02_pgdat_outer_focal": (C10_BASE, {
        "loss_opt": {"focal": {"gamma": 2.0}}, "warmup_epochs": 5, "adv_loss_opt": None},
        "focal", None),
    "cifar10_LT0.02_pgdat_rs-whole": (C10_BASE, {
        "sampler": "ClassAware", "epochs": 25, "lr_decline": [15, 20], "save_freq": 5},
        "rs-whole", None),
    "cifar10_LT0.02_pgdat_outer_CB": (C10_BASE, {"loss_opt": CB, "log_level": "INFO"}, "cb", None),
    "cifar10_LT0.02_pgdat_rs-fine": (C10_BASE, {
        "epochs": 81, "resume_epoch": 80, "load_model": BASELINE_CKPT, "sampler": "ClassAware",
        "lr_dict": {"classifier": 0.1, "else": 0.0}, "lr_decline": [83, 86], "save_freq": 1},
        "rs-fine", None),
    "cifar10_LT0.02_pgdat_rw-fine": (C10_BASE, {
        "epochs": 81, "resume_epoch": 80, "load_model": BASELINE_CKPT, "loss_opt": CB,
        "lr_decline": [83, 86], "save_freq": 1,
        "model_dir": "./checkpoints/supp/cifar10-0.02-pgd-5-rw-fine"}, "rw-fine", None),
    "cifar10_LT0.02_pgdat_lws": (C10_BASE, {
        "epochs": 90, "resume_epoch": 80, "load_model": BASELINE_CKPT, "sampler": "ClassAware",
        "classifier": "PostNorm",
        "classifier_opt": {"tau": 1, "norm": False, "avg_T": 1, "bias": False, "lws": True},
        "lr_dict": {"cla_scale": 0.1, "else": 0.0}, "lr_decline": [83, 86], "save_freq": 1,
        "eval_freq": 1, "beta": 6.0}, "lws", None),
    "cifar10_LT0.02_pgdat_post_CDT": (C10_BASE, {
        "classifier": "CDT", "classifier_opt": {"posthoc": True, "bias": False, "tau": 0.3}},
        "post-cdt", None),
    "cifar10_LT0.02_pgdat_post_norm": (C10_BASE, {
        "classifier": "PostNorm",
        "classifier_opt": {"tau": 1, "norm": True, "avg_T": 1, "bias": False},
        "resume_epoch": 80, "save_freq": 5, "eval_freq": 1}, "post-norm", None),
    "cifar10_LT0.02_pgdat_post_logitadjust": (C10_BASE, {
        "classifier": "PostProc",
        "classifier_opt": {"bias": False, "tau_p": 1, "posthoc": True, "classifier": "FC"}},
        "post-logit-adjust", None),
    "cifar10_LT0.02_pgdat_TDESim": (C10_BASE, {
        "classifier": "TDESim", "classifier_opt": {"bias": False, "posthoc": True, "alpha": 0.1,
                                                   "gamma": 0.03125, "scale": 16, "mu": 0.9}},
        "tde", None),
    "cifar10_LT0.02_pgdat_robal_N_train": (C10_BASE, {
        "train_mode": {"add_reg": {"beta_adv": 1.0, "beta_nat": 0.0, "beta_reg": 6.0,
                                   "reg_opt": "trades"}},
        "loss_opt": {"MultiMargin": {"m": 0.1, "s": 10, "tau_b": 1.2, "tau_m": 0}},
        "adv_loss_opt": None, "nat_loss_opt": None, "classifier": "CosPlus",
        "classifier_opt": {"bias": False, "gamma": 0.03125, "scale": 1, "mu": 0.9}},
        "robal-n", "cifar10_LT0.02_pgdat_robal_N_eval"),
    "cifar10_LT0.02_pgdat_robal_N_eval": (C10_BASE, {
        "classifier": "PostProc", "classifier_opt": {
            "bias": False, "tau_p": 0.1, "posthoc": True, "classifier": "Cos",
            "gamma": 0.03125, "scale": 10},
        "train_mode": "pgd_at", "loss_opt": None}, None, None),
    "cifar10_LT0.02_pgdat_robal_R_train": (C10_BASE, {
        "train_mode": {"add_reg": {"beta_adv": 1.0, "beta_nat": 0.0, "beta_reg": 6.0,
                                   "reg_opt": "trades"}},
        "loss_opt": {"MultiMargin": {"m": 0.1, "s": 10, "tau_b": 1.5, "tau_m": 0.3}},
        "classifier": "CosPlus",
        "classifier_opt": {"bias": False, "posthoc": False, "gamma": 0.03125, "scale": 1}},
        "robal-r", "cifar10_LT0.02_pgdat_robal_R_eval"),
    "cifar100_LT0.1_pgdat_robal_N_train": (C100_BASE, {
        "train_mode": {"add_reg": {"beta_adv": 1.0, "beta_nat": 0, "beta_reg": 3.0,
                                   "reg_opt": "trades"}},
        "loss_opt": {"MultiMargin": {"m": 0.2, "s": 10, "tau_m": 0, "tau_b": 0}},
        "adv_loss_opt": None, "nat_loss_opt": None, "classifier": "CosPlus",
        "classifier_opt": {"bias": False, "gamma": 0.03125, "scale": 1}},
        "robal-n", "cifar100_LT0.1_pgdat_robal_N_eval"),
    "cifar100_LT0.1_pgdat_robal_N_eval": (C100_BASE, {
        "classifier": "PostProc", "classifier_opt": {
            "bias": False, "tau_p": 1.5, "posthoc": True, "classifier": "Cos",
            "gamma": 0.03125, "scale": 10}}, None, None),
    "cifar100_LT0.1_pgdat_robal_R_train": (C100_BASE, {
        "train_mode": {"add_reg": {"beta_adv": 1.0, "beta_nat": 0, "beta_reg": 6.0,
                                   "reg_opt": "trades"}},
        "loss_opt": {"MultiMargin": {"m": 0.3, "s": 10, "tau_m": 0, "tau_b": 0}},
        "classifier": "CosPlus",
        "classifier_opt": {"bias": False, "gamma": 0.0625, "scale": 1, "mu": 0.9}},
        "robal-r", "cifar100_LT0.1_pgdat_robal_R_eval"),
    "cifar100_LT0.1_pgdat_robal_R_eval": (C100_BASE, {
        "classifier": "PostProc", "classifier_opt": {
            "posthoc": True, "classifier": "Cos", "bias": False, "tau_p": 1.7, "scale": 10,
            "gamma": 0.0625}}, None, None),
}


def config(stem: str) -> dict:
    """The YAML content of ``stem``: its dataset's baseline with the row's differences."""
    if stem == "cifar10_LT0.02_pgdat_robal_R_eval":  # identical to its training file (§6 row 18)
        return config("cifar10_LT0.02_pgdat_robal_R_train")
    base, diff, _, _ = ROWS[stem]
    out = copy.deepcopy(base)
    out.update(copy.deepcopy(diff))
    return out


ROWS["cifar10_LT0.02_pgdat_robal_R_eval"] = (C10_BASE, {}, None, None)
