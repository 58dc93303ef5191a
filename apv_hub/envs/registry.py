"""``make(name, seed=..., **options)``: every environment family behind one name scheme.

Families, with their default episode length (environment steps), action repeat and camera:

- ``metaworld/<task>``: any MT50 task, e.g. ``metaworld/drawer-open-v3``; 500, 1, ``corner``.
- ``dmc/<domain>-<task>``: a dm_control suite task, e.g. ``dmc/walker-walk``; 1000, 2, camera 2
  for quadruped and 0 otherwise.
- ``dmc/triped-walk``, ``dmc/triped-run``: the three-legged quadruped of `apv_hub.envs.triped`;
  1000, 2, camera 2.
- ``gym/<id>``: any Gymnasium id whose environment renders ``rgb_array`` frames; the
  environment's own limit, 1, the environment's own camera.

Length is in environment steps (before action repeat), as in REFERENCE section 2. Options of every
family: ``episode_length``, ``action_repeat``, ``render_size`` (64). Family options:
``camera`` (metaworld: a camera name; dmc: a camera id), ``variations`` (metaworld: ``random`` or
``mt1``, see `apv_hub.envs.meta_world`), ``make_kwargs`` (gym: extra ``gymnasium.make`` kwargs).
"""

from __future__ import annotations

from typing import Any

from apv_hub.envs.base import PixelEnv

FAMILIES = ("metaworld", "dmc", "gym")
COMMON_OPTIONS = ("episode_length", "action_repeat", "render_size")
FAMILY_OPTIONS = {
    "metaworld": ("camera", "variations"),
    "dmc": ("camera",),
    "gym": ("make_kwargs",),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "metaworld": {"episode_length": 500, "action_repeat": 1, "render_size": 64},
    "dmc": {"episode_length": 1000, "action_repeat": 2, "render_size": 64},
    "gym": {"episode_length": None, "action_repeat": 1, "render_size": 64},
}


def split_name(name: str) -> tuple[str, str]:
    """``"dmc/walker-walk" -> ("dmc", "walker-walk")``, checking the family."""
    family, sep, task = name.partition("/")
    if not sep or not task or family not in FAMILIES:
        raise ValueError(
            f"environment name {name!r} must look like '<family>/<task>' with family one of "
            f"{', '.join(FAMILIES)} (e.g. 'metaworld/drawer-open-v3', 'dmc/walker-walk')"
        )
    return family, task


def default_options(name: str) -> dict[str, Any]:
    """The defaults `make` uses for ``name``'s family (episode length, action repeat, size)."""
    return dict(DEFAULTS[split_name(name)[0]])


def make(name: str, seed: int | None = None, **options: Any) -> PixelEnv:
    """Build environment ``name`` behind the `PixelEnv` observation/step convention.

    Args:
        name: ``metaworld/<task>``, ``dmc/<domain>-<task>`` or ``gym/<id>`` (see the module doc).
        seed: seeds initial states and task variations; None draws from the OS.
        **options: ``episode_length``, ``action_repeat``, ``render_size`` and the family's own
            options.

    Example:
        >>> env = make("dmc/walker-walk", seed=0, episode_length=100)
        >>> obs, info = env.reset()          # obs["image"]: uint8 [3, 64, 64], is_first=True
        >>> obs, info = env.step(env.act_space.sample())
    """
    family, task = split_name(name)
    unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(FAMILY_OPTIONS[family]))
    if unknown:
        allowed = ", ".join(COMMON_OPTIONS + FAMILY_OPTIONS[family])
        raise TypeError(f"make({name!r}): unknown option(s) {unknown}; {family} takes {allowed}")
    common = {**DEFAULTS[family], **{k: options.pop(k) for k in COMMON_OPTIONS if k in options}}
    size = common["render_size"]
    if family == "metaworld":
        from apv_hub.envs.meta_world import MAX_PATH_LENGTH, make_gym_env

        if common["episode_length"] is None or common["episode_length"] > MAX_PATH_LENGTH:
            raise ValueError(
                f"make({name!r}): Meta-world episodes last at most {MAX_PATH_LENGTH} steps, "
                f"got episode_length={common['episode_length']}"
            )
        env = make_gym_env(task, seed=seed, render_size=size, **options)
        return PixelEnv(
            env, seed=seed, flip_vertical=True, info_scalars=("success",), name=name, **common
        )
    if family == "dmc":
        from apv_hub.envs.dmc import DMCEnv

        domain, sep, dm_task = task.partition("-")
        if not sep:
            raise ValueError(f"make({name!r}): DMC names look like 'dmc/<domain>-<task>'")
        env = DMCEnv(domain, dm_task, seed=seed, width=size, height=size, **options)
        return PixelEnv(env, seed=seed, name=name, **common)
    import gymnasium as gym

    env = gym.make(task, render_mode="rgb_array", **options.get("make_kwargs", {}))
    return PixelEnv(env, seed=seed, name=name, **common)
