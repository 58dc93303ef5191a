"""apv-hub: APV action-free video world models as Hugging Face Hub checkpoints."""

__version__ = "0.1.0"

from apv_hub.config import APVConfig, ConfigError  # noqa: E402
from apv_hub.video_model import APVVideoModel  # noqa: E402
from apv_hub.weights import CheckpointError  # noqa: E402

__all__ = ["APVConfig", "APVVideoModel", "CheckpointError", "ConfigError", "__version__"]
