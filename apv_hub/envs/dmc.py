"""DeepMind Control Suite tasks as Gymnasium environments with pixel rendering.

`DMCEnv` adapts a ``dm_control`` ``control.Environment`` (a suite task, or the Triped tasks of
`apv_hub.envs.triped`) to the Gymnasium API: the state observation is the flattened
concatenation of the suite's observation dict, ``render()`` returns the frame of one camera, and
the suite's own time limit is disabled so that `apv_hub.envs.base.PixelEnv` owns episode length
(a suite episode of 1000 control steps is ``episode_length=1000``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Cameras of REFERENCE section 2: the side-tracking camera 2 for (quadruped-like) legged bodies,
# camera 0 for everything else.
DEFAULT_CAMERAS = {"quadruped": 2, "triped": 2}


def load_dm_env(domain: str, task: str, seed: int | None) -> Any:
    """A dm_control ``control.Environment`` without its own time limit.

    ``domain`` is a suite domain (``quadruped``, ``walker``, ...) or ``triped``.
    """
    task_kwargs = {"random": seed, "time_limit": float("inf")}
    if domain == "triped":
        from apv_hub.envs.triped import load as load_triped

        return load_triped(task, **task_kwargs)
    from dm_control import suite

    if (domain, task) not in suite.ALL_TASKS:
        known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS)
        raise ValueError(f"unknown DMC task {domain}-{task}; known: {known}, triped-walk/run")
    return suite.load(domain, task, task_kwargs=task_kwargs)


class DMCEnv(gym.Env):
    """A dm_control task behind the Gymnasium API, rendering ``camera`` at ``width x height``.

    Episodes never end on their own (the suite's tasks used here do not terminate and their time
    limit is removed), except when a task reports a terminal step (discount 0), which becomes
    ``terminated=True``.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        seed: int | None = None,
        camera: int | None = None,
        width: int = 64,
        height: int = 64,
    ) -> None:
        self.domain, self.task = domain, task
        self.render_mode = "rgb_array"
        self.camera = DEFAULT_CAMERAS.get(domain, 0) if camera is None else camera
        self.width, self.height = width, height
        self._env = load_dm_env(domain, task, seed)
        spec = self._env.action_spec()
        self.action_space = spaces.Box(
            spec.minimum.astype(np.float32), spec.maximum.astype(np.float32), dtype=np.float32
        )
        size = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float64)

    @property
    def physics(self) -> Any:
        """The dm_control physics (for tests and diagnostics)."""
        return self._env.physics

    def state_layout(self) -> dict[str, slice]:
        """Where each key of the suite's observation dict lies in the flattened state vector."""
        layout, start = {}, 0
        for key, spec in self._env.observation_spec().items():
            size = int(np.prod(spec.shape))
            layout[key] = slice(start, start + size)
            start += size
        return layout

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            # dm_control tasks draw initial states from their own RandomState.
            self._env.task._random = np.random.RandomState(seed)
        time_step = self._env.reset()
        return _flatten(time_step.observation), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        time_step = self._env.step(action)
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        reward = float(time_step.reward or 0.0)
        return _flatten(time_step.observation), reward, terminated, False, {}

    def render(self) -> np.ndarray:
        """The camera's frame, uint8 ``[height, width, 3]``."""
        return self._env.physics.render(self.height, self.width, camera_id=self.camera)

    def close(self) -> None:
        self._env.close()


def _flatten(observation: dict[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in observation.values()])
