"""VIPER (Escontrela et al. 2023): video prediction likelihoods as rewards.

- ``config``: TokenizerConfig, PriorConfig, VIPERConfig and the presets (tiny, dmc, atari).
- ``tokenizer``: VQTokenizer, the per-frame VQ autoencoder (k-means init, dead-code restart).
- ``prior``: VideoPrior, the GPT-2 transformer over the tokens of a window of frames.
- ``reward_model``: VIPERRewardModel, tokenizer + prior + scoring, a Hub checkpoint.
- ``relabel``: RewardRelabeller, VIPER rewards for the steps of a fine-tuning run's replay.
- ``score``: the ``apv-viper-score`` command (a video's per-step rewards, plotted).

A models-layer package: it never imports ``apv_hub.training``. It needs ``transformers``, which
is imported only when a model class is first used: ``apv_hub.viper.config`` alone is cheap, so
configs that hold a VIPERConfig load without it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PriorConfig": "apv_hub.viper.config",
    "TokenizerConfig": "apv_hub.viper.config",
    "VIPERConfig": "apv_hub.viper.config",
    "VideoPrior": "apv_hub.viper.prior",
    "VIPERRewardModel": "apv_hub.viper.reward_model",
    "window_indices": "apv_hub.viper.reward_model",
    "VQTokenizer": "apv_hub.viper.tokenizer",
    "RewardRelabeller": "apv_hub.viper.relabel",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'apv_hub.viper' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
