"""VIPER (Escontrela et al. 2023): video prediction likelihoods as rewards.

- ``config``: TokenizerConfig, PriorConfig, VIPERConfig and the presets (tiny, dmc, atari).
- ``tokenizer``: VQTokenizer, the per-frame VQ autoencoder (k-means init, dead-code restart).
- ``prior``: VideoPrior, the GPT-2 transformer over the tokens of a window of frames.
- ``reward_model``: VIPERRewardModel, tokenizer + prior + scoring, a Hub checkpoint.

A models-layer package: it never imports ``apv_hub.training``. It needs ``transformers``.
"""

from apv_hub.viper.config import PriorConfig, TokenizerConfig, VIPERConfig
from apv_hub.viper.prior import VideoPrior
from apv_hub.viper.reward_model import VIPERRewardModel, window_indices
from apv_hub.viper.tokenizer import VQTokenizer

__all__ = [
    "PriorConfig",
    "TokenizerConfig",
    "VIPERConfig",
    "VIPERRewardModel",
    "VQTokenizer",
    "VideoPrior",
    "window_indices",
]
