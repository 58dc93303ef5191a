"""Environments for fine-tuning: Meta-world, DeepMind Control (with Triped) and any Gymnasium
environment with pixels, behind one observation/step convention (`PixelEnv`), plus `EnvPool` for
running several of them in worker processes."""

from apv_hub.envs.base import Obs, PixelEnv
from apv_hub.envs.pool import EnvError, EnvPool, Failure
from apv_hub.envs.registry import default_options, make

__all__ = ["EnvError", "EnvPool", "Failure", "Obs", "PixelEnv", "default_options", "make"]
