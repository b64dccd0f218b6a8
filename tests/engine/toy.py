"""Small models trained inside tests (shared by the attack and AutoAttack tests)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 100) -> nn.Module:
    """An undefended linear classifier fitted to (x, y) with Adam; eval mode, no grads left."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model
