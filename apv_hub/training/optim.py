"""The optimiser recipe of DreamerV2/APV: Adam with L2 weight decay and gradient-norm clipping."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def make_adam(
    params: Iterable[nn.Parameter], lr: float, eps: float = 1e-5, weight_decay: float = 1e-6
) -> torch.optim.Adam:
    """Adam whose weight decay is added to the gradient (L2), as in the released code."""
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor, clip: float) -> float:
    """Backward, clip the global gradient norm to ``clip``, step. Returns the pre-clip norm."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return float(norm)
