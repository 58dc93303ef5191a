"""EnvPool: real worker processes stepping real MuJoCo environments, and surviving their deaths."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from envs_helpers import broken_env, unstable_walker

from apv_hub.envs import EnvError, EnvPool


def zeros(pool: EnvPool) -> np.ndarray:
    return np.zeros((pool.num_envs, pool.action_dim), np.float32)


@pytest.fixture(scope="module")
def pool():
    with EnvPool("dmc/walker-walk", num_envs=2, seed=0, episode_length=12, step_timeout=60) as p:
        yield p


def test_batched_steps_and_dreamer_style_auto_reset(pool: EnvPool) -> None:
    obs = pool.reset()
    assert obs["image"].shape == (2, 3, 64, 64) and obs["image"].dtype == np.uint8
    assert obs["is_first"].all() and (obs["image"][0] != obs["image"][1]).any()
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 2, pool.action_dim)).astype(np.float32)
    for t in range(6):  # 12 environment steps at action repeat 2.
        obs = pool.step(actions[t])
        np.testing.assert_array_equal(obs["action"], actions[t])
        assert not obs["is_first"].any()
        assert obs["is_last"].all() == (t == 5)
    assert obs["is_last"].all() and not obs["is_terminal"].any()
    obs = pool.step(actions[0])  # Ignored: both slots start new episodes.
    assert obs["is_first"].all() and not obs["action"].any() and not obs["reward"].any()
    assert pool.restarts == 0


def test_killed_worker_is_restarted_and_its_episode_truncated(pool: EnvPool) -> None:
    obs = pool.reset()
    obs = pool.step(zeros(pool))
    killed = pool.worker_pids[0]
    restarts = pool.restarts
    os.kill(killed, signal.SIGKILL)
    obs = pool.step(zeros(pool))
    assert obs["is_last"].tolist() == [True, False]  # Slot 1 is unaffected.
    assert not obs["is_terminal"].any()
    assert pool.restarts == restarts + 1
    assert pool.failures[-1].slot == 0 and "died" in pool.failures[-1].reason
    assert "-9" in pool.failures[-1].reason  # SIGKILL's exit code.
    assert pool.worker_pids[0] != killed
    obs = pool.step(zeros(pool))
    assert obs["is_first"].tolist() == [True, False]  # A new episode on the fresh worker.
    obs = pool.step(zeros(pool))
    assert not obs["is_first"].any() and not obs["is_last"].any()


def test_hung_worker_is_detected_by_timeout(pool: EnvPool) -> None:
    pool.reset()
    hung = pool.worker_pids[1]
    restarts = pool.restarts
    os.kill(hung, signal.SIGSTOP)
    pool.step_timeout = 3.0
    try:
        obs = pool.step(zeros(pool))
    finally:
        pool.step_timeout = 60.0
    assert obs["is_last"].tolist() == [False, True]
    assert pool.restarts == restarts + 1 and "hung" in pool.failures[-1].reason
    assert not os.path.exists(f"/proc/{hung}") or _is_zombie_or_gone(hung)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_physics_error_in_a_worker_ends_the_episode_and_training_goes_on() -> None:
    with EnvPool(unstable_walker, num_envs=1, seed=0) as pool:
        obs = pool.reset()
        assert obs["is_first"].all()
        obs = pool.step(np.ones((1, pool.action_dim), np.float32))
        assert obs["is_last"].all() and not obs["is_terminal"].any()
        assert pool.restarts == 1 and "PhysicsError" in pool.failures[0].reason
        obs = pool.step(zeros(pool))
        assert obs["is_first"].all()


def test_an_env_that_cannot_be_built_raises_a_clear_error() -> None:
    expected = r"cannot be built \(worker 0 failed 2 times in a row\): .*walker-fly"
    with pytest.raises(EnvError, match=expected):
        EnvPool(broken_env, num_envs=1, max_start_attempts=2)


def test_pool_steps_recorded_in_replay_form_complete_episodes(pool: EnvPool) -> None:
    from apv_hub.replay import ReplayBuffer

    replay = ReplayBuffer(capacity=1000, seed=0)
    obs = pool.reset()
    replay.add_batch(obs)
    for _ in range(8):  # Episodes of 6 steps plus the reset observation; then a new episode.
        obs = pool.step(np.random.default_rng(1).uniform(-1, 1, (2, pool.action_dim)))
        replay.add_batch(obs)
    assert len(replay.episodes) == 2 and set(replay.ongoing) == {0, 1}
    for episode in replay.episodes:
        data = episode.arrays()
        assert len(episode) == 7 and data["is_first"].tolist() == [True] + [False] * 6
        assert data["is_last"].tolist() == [False] * 6 + [True] and not data["action"][0].any()
    assert all(len(e) == 2 for e in replay.ongoing.values())
