"""apv-hub: APV action-free video world models as Hugging Face Hub checkpoints."""

__version__ = "0.1.0"

from apv_hub.agent import APVAgent, make_optimizers  # noqa: E402
from apv_hub.behavior import ActorCritic  # noqa: E402
from apv_hub.config import (  # noqa: E402
    AgentConfig,
    APVConfig,
    BehaviorConfig,
    ConfigError,
    IntrinsicConfig,
    WorldModelConfig,
)
from apv_hub.intrinsic import VideoIntrinsicBonus  # noqa: E402
from apv_hub.video_model import APVVideoModel  # noqa: E402
from apv_hub.weights import CheckpointError  # noqa: E402
from apv_hub.world_model import APVWorldModel  # noqa: E402

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
