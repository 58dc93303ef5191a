"""The release's details that live in documents: deviations in README and cards, presets."""

from __future__ import annotations

from pathlib import Path

from apv_hub.agent import APVAgent
from apv_hub.cards import RELEASE_DEVIATIONS
from apv_hub.config import AgentConfig, APVConfig
from apv_hub.convert import PRETRAIN_CONFIGS

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
