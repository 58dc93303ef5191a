"""Environment factories for the pool tests (module level, so spawned workers can unpickle them)."""

from __future__ import annotations

from apv_hub.envs import PixelEnv, make


def unstable_walker(seed: int) -> PixelEnv:
    """dm_control walker with a 10 s physics timestep: its first step raises ``PhysicsError``."""
    env = make("dmc/walker-walk", seed=seed, episode_length=50)
    env.env.physics.model.opt.timestep = 10.0
    return env


def broken_env(seed: int) -> PixelEnv:
    """An environment whose construction always fails (a bad task name)."""
    return make("dmc/walker-fly", seed=seed)
