"""The one observation/step convention of apv-hub, over any Gymnasium environment with pixels.

`PixelEnv` wraps a ``gymnasium.Env`` created with ``render_mode="rgb_array"`` and turns it into the
DreamerV2-style interface that the fine-tuning loop and the replay buffer consume:

* ``reset() -> (obs, info)`` and ``step(action) -> (obs, info)``, where ``obs`` is a dict

  ==============  =====================  ==================================================
  ``image``       uint8 ``[3, S, S]``    the rendered frame, channels first
  ``action``      float32 ``[A]``        the normalised action that led to this observation
                                         (zeros on the first observation of an episode)
  ``reward``      float32 ``[]``         summed over the repeated actions (0 on reset)
  ``is_first``    bool ``[]``            True only on the observation returned by reset
  ``is_last``     bool ``[]``            the episode ended here (terminated or truncated)
  ``is_terminal`` bool ``[]``            the environment terminated (no bootstrapping)
  ``success``     float32 ``[]``         only where the environment reports it (Meta-world)
  ==============  =====================  ==================================================

  and ``info`` is the underlying environment's info dict of the last step plus ``state`` (the
  underlying state observation, for scripted policies and data builders).
* Actions live in ``[-1, 1]`` and are rescaled to the underlying environment's bounds.
* ``action_repeat`` repeats each action; ``episode_length`` counts *environment* steps (before
  action repeat, the way the paper counts steps), so a DMC episode of 1000 steps with action
  repeat 2 is 500 calls to ``step``. The episode is truncated (``is_last`` without
  ``is_terminal``) when the limit is reached or the underlying environment truncates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

Obs = dict[str, np.ndarray]


class PixelEnv:
    """A pixel-observation, normalised-action view of a Gymnasium environment.

    Args:
        env: a Gymnasium environment whose ``render()`` returns an RGB frame ``[H, W, 3]`` uint8
            and whose action space is a bounded ``Box``.
        episode_length: maximum environment steps per episode (None: only the environment's own
            termination and truncation end episodes).
        action_repeat: how many environment steps each action is applied for.
        render_size: side of the square frames returned, in pixels (frames of another size are
            resized with a box filter).
        flip_vertical: flip frames upside down (Meta-world's ``corner`` camera, see
            `apv_hub.envs.meta_world`).
        info_scalars: keys of the environment's info dict copied into the observation as float32
            scalars (maximum over the repeated steps), e.g. ``("success",)``.
        seed: seed passed to the first ``env.reset``.
        name: a name for error messages and ``repr``.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        episode_length: int | None = None,
        action_repeat: int = 1,
        render_size: int = 64,
        flip_vertical: bool = False,
        info_scalars: Sequence[str] = (),
        seed: int | None = None,
        name: str = "",
    ) -> None:
        self.name = name or (env.spec.id if env.spec else type(env.unwrapped).__name__)
        if action_repeat < 1:
            raise ValueError(f"{self.name}: action_repeat must be >= 1, got {action_repeat}")
        if episode_length is not None and episode_length < 1:
            raise ValueError(f"{self.name}: episode_length must be >= 1, got {episode_length}")
        if render_size < 1:
            raise ValueError(f"{self.name}: render_size must be >= 1, got {render_size}")
        space = env.action_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"{self.name}: needs a 1-D Box action space, got {space}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"{self.name}: the action space must be bounded, got {space}")
        self.env = env
        self.episode_length = episode_length
        self.action_repeat = action_repeat
        self.render_size = render_size
        self.flip_vertical = flip_vertical
        self.info_scalars = tuple(info_scalars)
        self._seed = seed
        self._low = space.low.astype(np.float64)
        self._high = space.high.astype(np.float64)
        self._env_steps = 0
        self._done = True
        self.action_dim = int(space.shape[0])
        self.act_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        scalar = lambda dtype: spaces.Box(-np.inf, np.inf, (), dtype)
        flag = spaces.Box(0, 1, (), bool)
        obs_spaces: dict[str, spaces.Space] = {
            "image": spaces.Box(0, 255, (3, render_size, render_size), np.uint8),
            "action": self.act_space,
            "reward": scalar(np.float32),
            "is_first": flag,
            "is_last": flag,
            "is_terminal": flag,
        }
        for key in self.info_scalars:
            obs_spaces[key] = scalar(np.float32)
        self.obs_space = spaces.Dict(obs_spaces)

    def __repr__(self) -> str:
        return (
            f"PixelEnv({self.name!r}, episode_length={self.episode_length}, "
            f"action_repeat={self.action_repeat}, render_size={self.render_size})"
        )

    def state_layout(self) -> dict[str, slice]:
        """Named parts of the state vector of ``info["state"]`` (e.g. Meta-world's hand, gripper
        and object positions, or the observation keys of a DMC task); the whole vector as
        ``state`` where the environment names no parts."""
        try:
            return self.env.get_wrapper_attr("state_layout")()
        except AttributeError:
            shape = self.env.observation_space.shape
            if shape is None or len(shape) != 1:
                raise TypeError(
                    f"{self.name}: the state observation is not a vector ({shape})"
                ) from None
            return {"state": slice(0, int(shape[0]))}

    @property
    def env_steps(self) -> int:
        """Environment steps taken in the current episode (counting repeats)."""
        return self._env_steps

    def reset(self, seed: int | None = None) -> tuple[Obs, dict[str, Any]]:
        """Start an episode: the observation has ``is_first=True``, zero action and zero reward.

        ``seed`` reseeds the environment for this episode (reproducible episodes, e.g. for
        evaluation or an exact resume); None continues its own random stream.
        """
        state, info = self.env.reset(seed=self._seed if seed is None else seed)
        self._seed = None  # Seed once; later episodes continue the environment's own stream.
        self._env_steps = 0
        self._done = False
        scalars = {key: float(info.get(key, 0.0)) for key in self.info_scalars}
        obs = self._obs(np.zeros(self.action_dim, np.float32), 0.0, True, False, False, scalars)
        return obs, {**info, "state": np.asarray(state)}

    def step(self, action: np.ndarray) -> tuple[Obs, dict[str, Any]]:
        """Apply ``action`` (shape ``[A]`` in ``[-1, 1]``, clipped) for ``action_repeat`` steps."""
        if self._done:
            raise RuntimeError(f"{self.name}: call reset() before step() (the episode is over)")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"{self.name}: action must have shape ({self.action_dim},), got {action.shape}"
            )
        action = np.clip(action, -1.0, 1.0)
        env_action = self._low + (action.astype(np.float64) + 1.0) / 2.0 * (self._high - self._low)
        env_action = env_action.astype(self.env.action_space.dtype)
        reward = 0.0
        terminated = truncated = False
        scalars = dict.fromkeys(self.info_scalars, 0.0)
        for _ in range(self.action_repeat):
            state, r, terminated, truncated, info = self.env.step(env_action)
            self._env_steps += 1
            reward += float(r)
            for key in self.info_scalars:
                scalars[key] = max(scalars[key], float(info.get(key, 0.0)))
            if self.episode_length is not None and self._env_steps >= self.episode_length:
                truncated = True
            if terminated or truncated:
                break
        self._done = bool(terminated or truncated)
        obs = self._obs(action, reward, False, self._done, bool(terminated), scalars)
        return obs, {**info, "state": np.asarray(state)}

    def render(self) -> np.ndarray:
        """The current frame, uint8 ``[3, S, S]``."""
        frame = np.asarray(self.env.render())
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"{self.name}: render() must return [H, W, 3], got {frame.shape}")
        if self.flip_vertical:
            frame = frame[::-1]
        if frame.shape[:2] != (self.render_size, self.render_size):
            frame = _resize(frame, self.render_size)
        return np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.uint8)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> PixelEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _obs(
        self,
        action: np.ndarray,
        reward: float,
        is_first: bool,
        is_last: bool,
        is_terminal: bool,
        scalars: dict[str, float],
    ) -> Obs:
        obs = {
            "image": self.render(),
            "action": action,
            "reward": np.array(reward, np.float32),
            "is_first": np.array(is_first),
            "is_last": np.array(is_last),
            "is_terminal": np.array(is_terminal),
        }
        obs.update({key: np.array(value, np.float32) for key, value in scalars.items()})
        return obs


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``[H, W, 3]`` uint8 frame to ``[size, size, 3]`` with a box (area) filter."""
    from PIL import Image  # Only environments that cannot render at the requested size need it.

    image = Image.fromarray(np.ascontiguousarray(frame))
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))
