"""Meta-world tasks (any MT50 task) through Gymnasium, as APV fine-tuned on them.

The environment is ``gymnasium.make("Meta-World/MT1", env_name=task, render_mode="rgb_array",
camera_name="corner", ...)`` with three changes that matter for pixels-based RL:

* Frames are flipped upside down. Meta-world's ``corner`` camera is mounted upside down (its
  image y axis points to world -z), so Gymnasium's correctly oriented frames show the table on
  top. The released APV data and APV's own Meta-world runs rendered with mujoco-py, which returns
  OpenGL's bottom-up buffer unflipped: that is exactly Gymnasium's frame flipped vertically (the
  table at the bottom, the robot on the left). We flip the same way so that frames match APV's
  and the Meta-world video corpus of `apv_hub.data` (a physically upright camera would see the
  mirror image of this, robot on the right).
* Task variations (object and goal positions): with ``variations="random"`` (the default, what
  APV's released code did by unfreezing ``rand_vec``) every reset draws fresh positions from the
  environment's seeded generator; ``variations="mt1"`` keeps MT1's behaviour of sampling one of
  its 50 fixed variations per reset. Both are reproducible from ``seed``.
* Episodes last 500 steps (``max_path_length``, the longest Meta-world allows) and never end on
  success; ``success`` (0/1) is reported in every observation.

The 39-dimensional state observation is returned in ``info["state"]`` (its parts:
`STATE_LAYOUT`): Meta-world's scripted policies (`scripted_policy`) read it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

MAX_PATH_LENGTH = 500
VARIATIONS = ("random", "mt1")


def task_names() -> list[str]:
    """All Meta-world v3 task names (the MT50 set), e.g. ``drawer-open-v3``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS)


def make_gym_env(
    task: str,
    *,
    seed: int | None = None,
    render_size: int = 64,
    camera: str = "corner",
    variations: str = "random",
) -> gym.Env:
    """The Gymnasium Meta-world environment for ``task``, seeded and with variations configured."""
    import metaworld  # noqa: F401  (registers the Meta-World/* Gymnasium ids)

    if task not in task_names():
        raise ValueError(f"unknown Meta-world task {task!r}; known: {', '.join(task_names())}")
    if variations not in VARIATIONS:
        raise ValueError(f"variations must be one of {VARIATIONS}, got {variations!r}")
    env = gym.make(
        "Meta-World/MT1",
        env_name=task,
        seed=seed,
        render_mode="rgb_array",
        camera_name=camera,
        width=render_size,
        height=render_size,
        disable_env_checker=True,
    )
    if variations == "random":
        # Take a variation once to configure the task, then let every reset draw new positions
        # from the unwrapped environment's generator (seeded by MT1 from `seed`).
        env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        base = env.unwrapped
        base.set_task(env.get_wrapper_attr("tasks")[0])
        base._freeze_rand_vec = False
        base.seeded_rand_vec = True
    return SeedOnReset(env)


# The 39-dimensional Meta-world (v3) state: the current frame's hand position, gripper opening and
# two object poses (position + quaternion each, zero-padded), the same 18 numbers one step earlier,
# and the goal position (zeros while the goal is hidden, as in MT1).
STATE_LAYOUT = {
    "hand": slice(0, 3),
    "gripper": slice(3, 4),
    "objects": slice(4, 18),
    "previous_step": slice(18, 36),
    "goal": slice(36, 39),
}


class SeedOnReset(gym.Wrapper):
    """Make ``reset(seed=...)`` reseed a Meta-world environment.

    Meta-world's ``reset`` ignores its ``seed`` argument (positions are drawn before Gymnasium's
    seeding runs), so an explicit seed goes through the environment's own ``seed()`` first:
    an episode reset with seed s then always starts from the same positions.
    """

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.env.unwrapped.seed(seed)
        return self.env.reset(options=options)

    def state_layout(self) -> dict[str, slice]:
        """Named parts of the state observation (`STATE_LAYOUT`)."""
        return dict(STATE_LAYOUT)


def scripted_policy(task: str) -> Any:
    """Meta-world's scripted expert for ``task``: ``policy.get_action(info["state"]) -> [4]``.

    Its actions already lie in ``[-1, 1]``, the normalised action space of our wrapper.
    """
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ValueError(f"Meta-world has no scripted policy for {task!r}")
    return ENV_POLICY_MAP[task]()
