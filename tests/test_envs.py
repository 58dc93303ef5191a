"""Every environment family steps for real (software EGL rendering) under one convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apv_hub.envs import default_options, make
from apv_hub.envs.meta_world import scripted_policy

FLAGS = ("is_first", "is_last", "is_terminal")


def check_obs(env, obs, first: bool) -> None:
    assert env.obs_space.contains(obs), {
        k: (np.shape(v), np.asarray(v).dtype) for k, v in obs.items()
    }
    assert obs["image"].shape == (3, env.render_size, env.render_size)
    assert obs["image"].dtype == np.uint8 and obs["image"].std() > 0  # A real, non-blank frame.
    assert bool(obs["is_first"]) is first
    if first:
        assert obs["reward"] == 0 and not obs["action"].any() and not obs["is_last"]


@pytest.mark.parametrize(
    "name, repeat",
    [
        ("metaworld/reach-v3", 1),
        ("dmc/walker-walk", 2),
        ("dmc/hopper-hop", 2),
        ("dmc/quadruped-walk", 2),
        ("dmc/triped-walk", 2),
    ],
)
def test_family_steps_obeys_time_limit_and_action_repeat(name: str, repeat: int) -> None:
    assert default_options(name)["action_repeat"] == repeat
    length = 7  # Odd: the last repeated action is cut short by the limit.
    rng = np.random.default_rng(0)
    with make(name, seed=1, episode_length=length) as env:
        assert env.action_repeat == repeat
        obs, info = env.reset()
        check_obs(env, obs, first=True)
        assert "state" in info
        steps = 0
        while not obs["is_last"]:
            action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
            obs, _ = env.step(action)
            check_obs(env, obs, first=False)
            np.testing.assert_array_equal(obs["action"], action)
            steps += 1
        assert steps == math.ceil(length / repeat)
        assert env.env_steps == length
        assert not obs["is_terminal"]  # A time limit truncates.
        if name.startswith("dmc/"):
            # Physics time proves each action ran `repeat` control steps.
            control = env.env._env.control_timestep()
            assert env.env.physics.data.time == pytest.approx(length * control)
        else:
            assert obs["success"] in (0.0, 1.0)
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(env.action_dim))


def test_paper_defaults_and_cameras() -> None:
    assert default_options("metaworld/drawer-open-v3") == {
        "episode_length": 500,
        "action_repeat": 1,
        "render_size": 64,
    }
    assert default_options("dmc/quadruped-run")["episode_length"] == 1000
    with make("dmc/quadruped-walk", seed=0) as quadruped, make("dmc/hopper-hop", seed=0) as hopper:
        assert (quadruped.env.camera, hopper.env.camera) == (2, 0)
    with pytest.raises(ValueError, match="at most 500"):
        make("metaworld/reach-v3", episode_length=501)
    with pytest.raises(TypeError, match="unknown option"):
        make("dmc/walker-walk", variations="mt1")
    with pytest.raises(ValueError, match="family"):
        make("atari/pong")


def test_actions_are_rescaled_to_the_env_bounds() -> None:
    with make("dmc/quadruped-walk", seed=0, action_repeat=1) as env:
        env.reset()
        spec = env.env._env.action_spec()
        for value, bound in ((1.0, spec.maximum), (-1.0, spec.minimum), (5.0, spec.maximum)):
            env.step(np.full(env.action_dim, value, np.float32))
            np.testing.assert_allclose(env.env.physics.data.ctrl, bound, rtol=1e-6)


def test_metaworld_frames_orientation_and_seeded_variations() -> None:
    with make("metaworld/reach-v3", seed=3) as env, make("metaworld/reach-v3", seed=3) as twin:
        obs, info = env.reset()
        # Frames are Gymnasium's frame flipped vertically (APV's mujoco-py orientation): the red
        # Sawyer arm stands on the left half.
        raw = env.env.render()
        np.testing.assert_array_equal(obs["image"], raw[::-1].transpose(2, 0, 1))
        image = obs["image"].astype(float)
        red = image[0] - (image[1] + image[2]) / 2
        assert red[:, :32].mean() > 2 * red[:, 32:].mean()
        # Same seed, same variations; each reset draws a new one.
        _, twin_info = twin.reset()
        np.testing.assert_array_equal(info["state"], twin_info["state"])
        _, info2 = env.reset()
        assert not np.array_equal(info["state"][4:7], info2["state"][4:7])  # Object position.


@pytest.mark.filterwarnings("ignore:Constant")  # Meta-world's own note that it clips actions.
def test_metaworld_scripted_policy_solves_drawer_open_through_the_wrapper() -> None:
    policy = scripted_policy("drawer-open-v3")
    with make("metaworld/drawer-open-v3", seed=0) as env:
        obs, info = env.reset()
        assert obs["success"] == 0.0
        rewards = []
        while not obs["is_last"] and not obs["success"]:
            obs, info = env.step(policy.get_action(info["state"]))
            rewards.append(float(obs["reward"]))
        assert obs["success"] == 1.0, f"not solved in {len(rewards)} steps"
        assert not obs["is_last"]  # Success does not end the episode (APV's setting).
        assert rewards[-1] > rewards[0]


def test_any_gymnasium_env_with_pixels_terminates_and_resizes() -> None:
    with make("gym/InvertedPendulum-v5", seed=0, make_kwargs={"width": 96, "height": 96}) as env:
        obs, _ = env.reset()
        check_obs(env, obs, first=True)
        assert env.env.render().shape == (96, 96, 3)  # Resized to render_size by the wrapper.
        while not obs["is_last"]:
            obs, _ = env.step(np.ones(env.action_dim, np.float32))  # Pushes the pole over.
        assert obs["is_terminal"]


def test_triped_has_three_legs() -> None:
    with make("dmc/triped-walk", seed=0) as triped, make("dmc/quadruped-walk", seed=0) as quad:
        names = lambda env: [
            env.env.physics.model.id2name(i, "body") for i in range(env.env.physics.model.nbody)
        ]
        assert sorted(n for n in names(triped) if n.startswith("toe_")) == [
            "toe_back",
            "toe_front_left",
            "toe_front_right",
        ]
        assert len([n for n in names(quad) if n.startswith("toe_")]) == 4
        assert (triped.action_dim, quad.action_dim) == (9, 12)
        force_sensors = triped.env.physics.force_torque()
        assert force_sensors.shape == (3 * 2 * 3,)  # Force and torque (3-D) at three toes.


def test_triped_walks_under_a_nonzero_policy() -> None:
    from apv_hub.envs.triped import load

    def torso_travel(policy) -> float:
        env = load("walk", random=0)
        env.reset()
        for _ in range(100):  # Land and settle.
            env.step(np.zeros(9))
        start = env.physics.named.data.xpos["torso"][:2].copy()
        for t in range(300):
            env.step(policy(t * 0.02))
        return float(np.linalg.norm(env.physics.named.data.xpos["torso"][:2] - start))

    gait = lambda t: np.sin(2 * np.pi * 2 * t + np.arange(9))  # Phase-shifted joint oscillators.
    still = torso_travel(lambda t: np.zeros(9))
    moved = torso_travel(gait)
    assert still < 0.05
    assert moved > 0.3
