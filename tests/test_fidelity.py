"""The release's details that live in documents: deviations in README and cards, presets."""

from __future__ import annotations

from pathlib import Path

import torch

from apv_hub.agent import APVAgent
from apv_hub.cards import RELEASE_DEVIATIONS
from apv_hub.config import AgentConfig, APVConfig
from apv_hub.convert import PRETRAIN_CONFIGS
from apv_hub.envs import EnvPool
from apv_hub.evaluation.episodes import run_episodes
from tests.finetune_helpers import SLIDE_ENV

README = Path(__file__).resolve().parents[1] / "README.md"


def words(text: str) -> str:
    return " ".join(text.split())


def test_every_deviation_is_in_the_readme_and_in_every_agent_card() -> None:
    readme = words(README.read_text())
    assert "## Fidelity to the release" in README.read_text()
    for variant in ("apv", "dreamerv2"):
        card = words(str(APVAgent(AgentConfig.preset("tiny", variant), 2).model_card()))
        for item in RELEASE_DEVIATIONS:
            assert words(item) in card, item
            assert words(item) in readme, item


def test_dmc_pretraining_preset_is_the_release_config() -> None:
    preset, release = APVConfig.preset("paper_dmc"), PRETRAIN_CONFIGS["dmc_vision_pretrain"]
    assert {key: getattr(preset, key) for key in release} == release
    paper = APVConfig.preset("paper")
    assert (preset.deter, preset.hidden, preset.cnn_depth) == (paper.deter, paper.hidden, 48)


def test_evaluation_samples_latents_reproducibly_and_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(0)
    agent = APVAgent(AgentConfig.preset("tiny", "dreamerv2"), action_dim=1)
    with EnvPool(SLIDE_ENV, 1, seed=0, episode_length=12, render_size=64) as pool:
        state = torch.random.get_rng_state()
        first = run_episodes(agent, pool, [3, 4])
        assert torch.equal(torch.random.get_rng_state(), state)  # Nothing drawn from it.
        again = run_episodes(agent, pool, [3, 4])
        other = run_episodes(agent, pool, [5, 4])
    assert [r.episode_return for r in first] == [r.episode_return for r in again]
    assert first[0].episode_return != other[0].episode_return
