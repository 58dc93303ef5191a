"""End-to-end learning that can fail: a tiny agent fine-tuned on a small pixel task on a CPU
must clearly beat a random policy and a do-nothing policy on the same episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apv_hub import APVAgent
from apv_hub.envs import make
from apv_hub.evaluation.episodes import episode_seed, evaluate
from apv_hub.training.finetune import finetune
from tests.finetune_helpers import SLIDE_ENV, slide_config

EPISODES = 10


def baseline_returns(policy, options: dict) -> list[float]:
    """Returns of ``policy(rng) -> action`` on the evaluation episodes' seeds."""
    rng = np.random.default_rng(0)
    returns = []
    with make(SLIDE_ENV, **options) as env:
        for i in range(EPISODES):
            obs, _ = env.reset(episode_seed(0, i))
            total = 0.0
            while not obs["is_last"]:
                obs, _ = env.step(policy(rng))
                total += float(obs["reward"])
            returns.append(total)
    return returns


def test_tiny_agent_learns_slide_to_center_and_beats_random(tmp_path: Path) -> None:
    # About 350 updates; DreamerV2's recipe (no pre-trained model needed for the task itself).
    config = slide_config(total_env_steps=1600, eval_every=1600, eval_episodes=2, log_every=400)
    folder = finetune(config, tmp_path / "run")
    agent = APVAgent.from_pretrained(folder)
    score, results = evaluate(
        agent, SLIDE_ENV, EPISODES, seed=0, env_options=config.env_options, num_envs=2
    )
    trained = score["return"]["mean"]
    random_policy = np.mean(baseline_returns(lambda rng: rng.uniform(-1, 1, 1), config.env_options))
    still = np.mean(baseline_returns(lambda rng: np.zeros(1), config.env_options))
    # Returns are minus the summed distance over 20 steps: random and still policies score about
    # -10; reaching and holding the centre scores about -3.
    assert trained > random_policy + 4.0, (trained, random_policy)
    assert trained > still + 4.0, (trained, still)
    # The evaluation is deterministic: the same agent, seeds and batching give the same score.
    again, _ = evaluate(agent, SLIDE_ENV, 2, seed=0, env_options=config.env_options, num_envs=2)
    assert again["return"]["per_episode"] == [r.episode_return for r in results[:2]]
