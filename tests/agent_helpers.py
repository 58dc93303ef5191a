"""Builders shared by the world-model, behavior and agent tests: tiny configs and batches."""

from __future__ import annotations

import torch
from torch import Tensor

from apv_hub.config import AgentConfig

ACTION_DIM = 3


def random_batch(
    config: AgentConfig, batch: int = 3, length: int | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """A replay batch of random frames, actions and rewards; one episode start per row."""
    length = length or config.seq_len
    g = torch.Generator().manual_seed(seed)
    size, channels = config.video.image_size, config.video.image_channels
    shape = (batch, length)
    is_first = torch.zeros(shape, dtype=torch.bool)
    is_first[:, 0] = True
    action = torch.rand(*shape, ACTION_DIM, generator=g) * 2 - 1
    action[:, 0] = 0.0
    return {
        "image": torch.randint(0, 256, (*shape, channels, size, size), generator=g).to(torch.uint8),
        "action": action,
        "reward": torch.rand(shape, generator=g),
        "is_first": is_first,
        "is_last": torch.zeros(shape, dtype=torch.bool),
        "is_terminal": torch.zeros(shape, dtype=torch.bool),
    }


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of every tensor in a module's state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, Tensor], module: torch.nn.Module) -> set[str]:
    """Names of state-dict tensors that differ from ``before``."""
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}
