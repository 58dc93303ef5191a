"""What the fine-tuning loop is built from: the `Agent` it needs, and the default factories of
the agent, the environment pools and the replay buffer (`apv_hub.training.finetune.Finetuner`
takes others, e.g. a stub agent in tests or a relabelling replay for VIPER)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from apv_hub.envs import EnvPool
from apv_hub.replay import ReplayBuffer
from apv_hub.training.configs import FinetuneConfig


class Agent(Protocol):
    """What the loop needs of an agent (`apv_hub.agent.APVAgent` is one): an ``nn.Module``
    with these members."""

    action_dim: int
    num_updates: int
    training_info: dict[str, Any]

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def act(self, obs: dict, state: Any, explore: bool) -> tuple[torch.Tensor, Any]: ...
    def update(self, batch: dict, optimizers: dict, accelerator: Any) -> dict[str, float]: ...
    def save_pretrained(self, folder: Path, **kwargs: Any) -> Any: ...


def build_agent(config: FinetuneConfig, action_dim: int) -> Agent:
    """The run's APVAgent, seeded so that every process builds the same initial weights."""
    from apv_hub.agent import APVAgent

    torch.manual_seed(config.seed)
    return APVAgent.build(
        config.agent, action_dim, config.pretrained, revision=config.pretrained_revision
    )


def make_env_pool(config: FinetuneConfig, seed: int, num_envs: int) -> EnvPool:
    return EnvPool(
        config.env, num_envs, seed=seed, step_timeout=config.step_timeout, **config.env_options
    )


def make_replay_buffer(capacity: int, seed: int) -> ReplayBuffer:
    return ReplayBuffer(capacity, seed=seed)
