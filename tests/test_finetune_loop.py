"""The real fine-tuning loop driven with a counting stub agent on a small real environment: the
schedule (prefill, update cadence, evaluation, checkpoint alignment) pinned by counting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apv_hub.envs import EnvPool
from apv_hub.training.checkpoint import list_checkpoints
from apv_hub.training.configs import FinetuneConfig
from apv_hub.training.factories import make_env_pool
from apv_hub.training.finetune import Finetuner
from apv_hub.weights import save_tensors
from tests.finetune_helpers import SLIDE_ENV


class CountingAgent(nn.Module):
    """Acts with zeros and records when it was asked to act and to update."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.training_info: dict[str, Any] = {}
        self.weight = nn.Parameter(torch.zeros(1))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.explore_acts = 0
        self.eval_acts = 0
        # Exploring acts done before each update, and the batch shape it got.
        self.update_log: list[tuple[int, tuple[int, ...]]] = []

    @property
    def num_updates(self) -> int:
        return int(self.updates)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.SGD([self.weight], lr=0.0)}

    def act(self, obs: dict, state: Any, explore: bool) -> tuple[torch.Tensor, Any]:
        if explore:
            self.explore_acts += 1
        else:
            self.eval_acts += 1
        return torch.zeros(len(obs["image"]), self.action_dim), state

    def update(self, batch: dict, optimizers: dict, accelerator: Any) -> dict[str, float]:
        self.update_log.append((self.explore_acts, tuple(batch["image"].shape[:2])))
        self.updates += 1
        return {"loss": 0.0, "model_grad_norm": 0.0}

    def save_pretrained(self, folder: Path, **kwargs: Any) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_tensors(self.state_dict(), Path(folder) / "model.safetensors")


def test_the_loop_keeps_the_schedule(tmp_path: Path) -> None:
    config = FinetuneConfig.preset("tiny", "dreamerv2", env=SLIDE_ENV).override(
        {
            "env_options.episode_length": 20,
            "env_options.render_size": 32,
            "total_env_steps": 100,
            "prefill": 30,
            "pretrain_updates": 3,
            "train_every": 7,
            "train_steps": 2,
            "eval_every": 50,
            "eval_episodes": 2,
            "checkpoint_every": 30,
            "keep_checkpoints": 0,
            "log_every": 25,
            "video": False,
            "agent.batch_size": 3,
            "agent.seq_len": 5,
        }
    )
    agents: list[CountingAgent] = []

    def make_agent(config: FinetuneConfig, action_dim: int) -> CountingAgent:
        agents.append(CountingAgent(action_dim))
        return agents[-1]

    pools: list[EnvPool] = []
    resets: list[list[int]] = []  # Seeds of every reset of the evaluation pool.

    def make_pool(config: FinetuneConfig, seed: int, num: int) -> EnvPool:
        pools.append(make_env_pool(config, seed, num))
        if len(pools) == 2:  # The evaluation pool, made at the first evaluation.
            reset = pools[-1].reset
            pools[-1].reset = lambda seeds=None: resets.append(list(seeds)) or reset(seeds)
        return pools[-1]

    Finetuner(
        config, tmp_path / "run", make_agent=make_agent, make_pool=make_pool, progress=False
    ).train()
    [agent] = agents
    # Each of the 3 evaluations runs 2 episodes on fresh seeds, as the release's fresh goals.
    assert len(resets) == 6 and len({seed for seeds in resets for seed in seeds}) == 6

    # Prefill: 30 random policy steps, no exploring acts; then the 3 "pretrain" updates at once.
    assert agent.update_log[:3] == [(0, (3, 5))] * 3
    # Then 2 updates every 7 policy steps, each after 7 more exploring acts, to step 100.
    periodic = [acts for acts, _ in agent.update_log[3:]]
    assert periodic == [7 * k for k in range(1, 11) for _ in range(2)]
    assert agent.explore_acts == 100 - 30
    # Evaluations as the release: when prefill ends (30 env steps, after the pretrain updates)
    # and every 50 env steps after it (80), then at the end (100); 2 episodes of 20 steps each.
    rows = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [(r["env_steps"], r["updates"], r["eval_episodes"]) for r in rows] == [
        (30, 3, 2),
        (80, 3 + 2 * 7, 2),
        (100, 23, 2),
    ]
    assert agent.eval_acts == 3 * 2 * 20
    # Checkpoints wait for the episode boundary after each multiple of 30 env steps.
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [40, 60, 100]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["env_steps"] for r in metrics] == [25, 50, 75, 100]
    assert [r["progress/updates"] for r in metrics] == [0, 7, 15, 23]


def test_a_run_config_from_before_eval_from_prefill_keeps_its_schedule(tmp_path: Path) -> None:
    config = FinetuneConfig.preset("tiny", "dreamerv2", env=SLIDE_ENV)
    data = config.to_dict()
    del data["eval_from_prefill"]
    old = FinetuneConfig.from_dict(data, complete=True)
    assert not old.eval_from_prefill and old.first_eval == old.eval_every
    assert config.eval_from_prefill and config.first_eval == config.prefill * config.action_repeat
