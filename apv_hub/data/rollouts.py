"""Corpus sources rendered from simulators: Meta-world scripted policies, dm_control rollouts.

Every episode is seeded from ``(seed, task, episode)`` alone, so an interrupted build re-run
renders exactly the episodes it is missing, and the same arguments always give the same videos.
Per-frame columns follow the corpus convention: frame 0 is the reset observation with a zero
action, zero reward and no success; ``actions[t]`` is the action that led to frame t.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from apv_hub.data.corpus import SourceItem, VideoRecord
from apv_hub.envs.meta_world import make_gym_env, scripted_policy

DMC_LOCOMOTION = (
    "walker-walk",
    "walker-run",
    "quadruped-walk",
    "quadruped-run",
    "hopper-hop",
    "cheetah-run",
)


@dataclass
class Episode:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    actions: np.ndarray  # float32 [T, A]
    rewards: np.ndarray  # float32 [T]
    success: np.ndarray | None  # bool [T]
    fps: float


def episode_seed(seed: int, task: str, episode: int) -> int:
    """A 32-bit seed that depends on (seed, task name, episode index) only."""
    seq = np.random.SeedSequence([seed, zlib.crc32(task.encode()), episode])
    return int(seq.generate_state(1)[0])


class _OneEnv:
    """Keeps the environment of the task being built and closes it when the task changes."""

    def __init__(self, make: Callable[[str], object]) -> None:
        self._make = make
        self._task: str | None = None
        self._env = None

    def get(self, task: str):
        if task != self._task:
            self.close()
            self._env, self._task = self._make(task), task
        return self._env

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._task = None, None


def metaworld_tasks(names: Sequence[str]) -> list[str]:
    """Task names, with ``MT50`` expanding to every Meta-world task that has a scripted policy."""
    from metaworld.policies import ENV_POLICY_MAP

    out: list[str] = []
    for name in names:
        out.extend(sorted(ENV_POLICY_MAP) if name.upper() == "MT50" else [name])
    unknown = sorted(set(out) - set(ENV_POLICY_MAP))
    if unknown:
        raise ValueError(
            f"no Meta-world scripted policy for {unknown}; known: "
            f"{', '.join(sorted(ENV_POLICY_MAP))}"
        )
    return list(dict.fromkeys(out))


def _render_metaworld(env) -> np.ndarray:
    # Upside down, as the environments of apv_hub.envs.meta_world (see its docstring) and APV.
    return np.ascontiguousarray(env.render()[::-1])


def metaworld_episode(
    env,
    task: str,
    seed: int,
    max_steps: int,
    action_noise: float = 0.0,
    action_repeat: int = 1,
    policy: str = "scripted",
) -> Episode:
    """Run ``policy`` for ``max_steps`` decisions -> T = max_steps + 1 frames.

    ``policy``: ``"scripted"`` (the task's expert, plus Gaussian ``action_noise``) or
    ``"random"`` (uniform actions in [-1, 1]: a baseline for rewards learned from videos). Each
    action is applied for ``action_repeat`` environment steps and one frame is rendered per
    decision (rewards summed over the repeats, success if any repeat succeeded), as in
    ``dmc_random_episode``. Meta-world ignores ``reset(seed=...)``: seeding the base environment
    seeds both the draw of the MT1 task variation (object and goal positions) at reset and the
    action space.
    """
    if policy not in ("scripted", "random"):
        raise ValueError(f"policy must be 'scripted' or 'random', got {policy!r}")
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    expert = scripted_policy(task)
    rng = np.random.default_rng(seed)
    env.unwrapped.seed(seed)
    obs, _ = env.reset()
    dim = env.action_space.shape[0]
    frames, actions = [_render_metaworld(env)], [np.zeros(dim, np.float32)]
    rewards, success = [0.0], [False]
    done = False
    for _ in range(max_steps):
        if policy == "random":
            action = rng.uniform(-1.0, 1.0, size=dim)
        else:
            with warnings.catch_warnings():
                # Scripted policies warn on every step that their gains exceed the [-1, 1] clip.
                warnings.filterwarnings("ignore", "Constant", UserWarning)
                action = expert.get_action(obs)
            if action_noise > 0:
                action = action + rng.normal(0.0, action_noise, size=dim)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        reward, solved = 0.0, False
        for _ in range(action_repeat):
            obs, r, terminated, truncated, info = env.step(action)
            reward += float(r)
            solved = solved or bool(info["success"])
            done = terminated or truncated
            if done:
                break
        frames.append(_render_metaworld(env))
        actions.append(action)
        rewards.append(reward)
        success.append(solved)
        if done:
            break
    fps = float(env.metadata.get("render_fps") or 80) / action_repeat
    return Episode(
        np.stack(frames),
        np.stack(actions),
        np.asarray(rewards, np.float32),
        np.asarray(success),
        fps,
    )


def metaworld_items(
    tasks: Sequence[str],
    episodes: int,
    max_steps: int = 500,
    seed: int = 0,
    size: int = 64,
    action_noise: float = 0.0,
    crf: int = 15,
) -> tuple[list[SourceItem], Callable[[], None]]:
    """``episodes`` scripted-policy videos per task from the ``corner`` camera.

    Returns the items and a ``close`` function releasing the environment (call it after the
    build). Columns: actions (4-dim), rewards, success per frame.
    """
    tasks = metaworld_tasks(tasks)
    # MT1's 50 fixed variations, fixed by ``seed``: each episode's reset draws one of them.
    envs = _OneEnv(lambda task: make_gym_env(task, seed=seed, render_size=size, variations="mt1"))

    def item(task: str, episode: int) -> SourceItem:
        key = f"{task}/episode{episode:04d}"

        def load() -> VideoRecord:
            ep = metaworld_episode(
                envs.get(task), task, episode_seed(seed, task, episode), max_steps, action_noise
            )
            return VideoRecord.from_frames(
                key,
                ep.frames,
                ep.fps,
                "metaworld",
                crf=crf,
                task=task,
                camera="corner",
                episode=episode,
                actions=ep.actions,
                rewards=ep.rewards,
                success=ep.success,
            )

        return SourceItem(key, load)

    return [item(t, e) for t in tasks for e in range(episodes)], envs.close


def dmc_camera(domain: str) -> int:
    """The camera APV and DreamerV2 render: 2 for quadruped, 0 otherwise."""
    return 2 if domain == "quadruped" else 0


def split_dmc_name(name: str) -> tuple[str, str]:
    """``walker-walk`` -> (``walker``, ``walk``); ``ball_in_cup-catch`` -> (``ball_in_cup``,
    ``catch``)."""
    domain, sep, task = name.partition("-")
    if not sep or not task:
        raise ValueError(f"dm_control task names are <domain>-<task>, got {name!r}")
    return domain, task


def dmc_random_episode(
    name: str, seed: int, max_steps: int, action_repeat: int = 2, size: int = 64
) -> Episode:
    """A uniformly random policy on a dm_control task, rendered every ``action_repeat`` steps."""
    from dm_control import suite

    domain, task = split_dmc_name(name)
    env = suite.load(domain, task, task_kwargs={"random": seed})
    rng = np.random.default_rng(seed)
    spec = env.action_spec()
    camera = dmc_camera(domain)
    render = lambda: env.physics.render(size, size, camera_id=camera)
    timestep = env.reset()
    frames, actions, rewards = [render()], [np.zeros(spec.shape, np.float32)], [0.0]
    for _ in range(max_steps):
        if timestep.last():
            break
        action = rng.uniform(spec.minimum, spec.maximum).astype(np.float32)
        reward = 0.0
        for _ in range(action_repeat):
            timestep = env.step(action)
            reward += timestep.reward or 0.0
            if timestep.last():
                break
        frames.append(render())
        actions.append(action)
        rewards.append(reward)
    fps = 1.0 / (env.control_timestep() * action_repeat)
    env.close()
    return Episode(np.stack(frames), np.stack(actions), np.asarray(rewards, np.float32), None, fps)


def dmc_items(
    tasks: Sequence[str],
    episodes: int,
    max_steps: int = 500,
    seed: int = 0,
    action_repeat: int = 2,
    size: int = 64,
    crf: int = 15,
) -> list[SourceItem]:
    """``episodes`` random-policy videos per dm_control task (default 500 steps of repeat 2:
    the 1000-step episode of the benchmark)."""
    from dm_control import suite

    unknown = [name for name in tasks if split_dmc_name(name) not in suite.ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown dm_control task(s) {unknown}")

    def item(name: str, episode: int) -> SourceItem:
        key = f"{name}/episode{episode:04d}"

        def load() -> VideoRecord:
            ep = dmc_random_episode(
                name, episode_seed(seed, name, episode), max_steps, action_repeat, size
            )
            return VideoRecord.from_frames(
                key,
                ep.frames,
                ep.fps,
                "dmc",
                crf=crf,
                task=name,
                camera=str(dmc_camera(split_dmc_name(name)[0])),
                episode=episode,
                actions=ep.actions,
                rewards=ep.rewards,
            )

        return SourceItem(key, load)

    return [item(t, e) for t in tasks for e in range(episodes)]
