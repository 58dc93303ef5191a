"""apv-hub: APV action-free video world models as Hugging Face Hub checkpoints."""

from apv_hub.agent import APVAgent, make_optimizers
from apv_hub.behavior import ActorCritic
from apv_hub.config import (
    AgentConfig,
    APVConfig,
    BehaviorConfig,
    ConfigError,
    IntrinsicConfig,
    WorldModelConfig,
)
from apv_hub.intrinsic import VideoIntrinsicBonus
from apv_hub.version import __version__
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import CheckpointError
from apv_hub.world_model import APVWorldModel

__all__ = [
    "APVAgent",
    "APVConfig",
    "APVVideoModel",
    "APVWorldModel",
    "ActorCritic",
    "AgentConfig",
    "BehaviorConfig",
    "CheckpointError",
    "ConfigError",
    "IntrinsicConfig",
    "VideoIntrinsicBonus",
    "WorldModelConfig",
    "__version__",
    "make_optimizers",
]
