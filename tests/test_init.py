"""Initialisation as the release (Keras defaults) for fresh models; older configs keep theirs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from apv_hub.agent import APVAgent
from apv_hub.config import AgentConfig, APVConfig
from apv_hub.nets import keras_init_
from apv_hub.video_model import APVVideoModel

LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, LAYERS)]


def glorot_limit(weight: torch.Tensor) -> float:
    """Keras's glorot-uniform limit: fans are channels times the receptive field."""
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return math.sqrt(6.0 / ((weight.shape[0] + weight.shape[1]) * receptive))


def assert_keras(module: nn.Module) -> None:
    found = layers(module)
    assert found
    for layer in found:
        limit = glorot_limit(layer.weight)
        assert layer.weight.abs().max() <= limit
        if layer.weight.numel() >= 2000:  # U(-a, a) has standard deviation a / sqrt(3).
            assert layer.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
        assert layer.bias is None or not layer.bias.any()


def test_keras_init_gives_glorot_uniform_weights_and_zero_biases() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 4), nn.ConvTranspose2d(32, 16, 5), nn.Linear(300, 200))
    assert any(layer.bias.any() for layer in layers(net))  # PyTorch's defaults differ.
    assert_keras(keras_init_(net))


def test_fresh_video_model_follows_the_release() -> None:
    torch.manual_seed(0)
    model = APVVideoModel(APVConfig.preset("tiny"))
    assert_keras(model)
    gru = model.rssm.gru
    assert gru.linear.bias is not None and gru.norm.eps == 1e-3


def test_fresh_agent_parts_follow_the_release_and_transferred_ones_are_copied() -> None:
    torch.manual_seed(0)
    config = AgentConfig.preset("tiny")
    video = APVVideoModel(config.video.override({"init": "torch"}))
    agent = APVAgent.from_video_model(video, config, action_dim=2)
    for part in (agent.world_model.rssm, agent.world_model.reward_head, agent.behavior.actor):
        assert_keras(part)
    assert_keras(agent.behavior.critic)
    for slow, fast in zip(
        agent.behavior.slow_critic.parameters(), agent.behavior.critic.parameters(), strict=True
    ):
        assert torch.equal(slow, fast)
    # The pre-trained encoder keeps the video model's (PyTorch-initialised) weights.
    torch.testing.assert_close(
        agent.world_model.encoder.state_dict(), video.encoder.state_dict(), rtol=0, atol=0
    )
    assert any(layer.bias.any() for layer in layers(agent.world_model.encoder))


def test_configs_saved_before_the_fields_keep_pytorch_defaults() -> None:
    data = APVConfig.preset("tiny").to_dict()
    for key in ("init", "layer_norm_eps", "gru_bias"):
        del data[key]
    old = APVConfig.from_dict(data, complete=True)
    assert (old.init, old.layer_norm_eps, old.gru_bias) == ("torch", 1e-5, False)
    torch.manual_seed(0)
    model = APVVideoModel(old)
    assert model.rssm.gru.linear.bias is None and model.rssm.gru.norm.eps == 1e-5
    assert any(layer.bias.any() for layer in layers(model))
    agent = AgentConfig.preset("tiny").to_dict()
    del agent["init"]
    assert AgentConfig.from_dict(agent, complete=True).init == "torch"
