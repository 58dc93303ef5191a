"""Simulator corpora: the real Meta-world and dm_control environments, rendered with MuJoCo
(MUJOCO_GL=egl), encoded, written and decoded back with decord."""

from __future__ import annotations

import numpy as np

from apv_hub.data import CorpusCard, build_corpus, load_video_corpus
from apv_hub.data.rollouts import (
    dmc_items,
    dmc_random_episode,
    episode_seed,
    metaworld_episode,
    metaworld_items,
)
from apv_hub.data.video import decode_frames
from apv_hub.envs.meta_world import make_gym_env
from tests.data_helpers import CODEC_TOLERANCE

CARD = CorpusCard(pretty_name="fixture", description="test fixture", command="pytest")


def decoded(row: dict) -> np.ndarray:
    """All frames of a corpus row -> uint8 [T, H, W, 3]."""
    return decode_frames(row["video"], np.arange(row["num_frames"]))


def frame_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute error per frame of two uint8 [T, H, W, 3] arrays -> [T]."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))


def test_metaworld_scripted_builder_reaches_success_and_decodes_to_rendered_frames(tmp_path):
    task, seed, steps = "reach-v3", 3, 50
    items, close = metaworld_items([task], episodes=1, max_steps=steps, seed=seed)
    try:
        result = build_corpus(items, tmp_path / "corpus", CARD, progress=False)
    finally:
        close()
    assert result.added == 1 and result.skipped.total == 0
    (row,) = load_video_corpus(tmp_path / "corpus")
    assert (row["key"], row["task"], row["camera"], row["episode"]) == (
        f"{task}/episode0000",
        task,
        "corner",
        0,
    )
    frames = steps + 1
    assert (row["num_frames"], row["height"], row["width"]) == (frames, 64, 64)
    actions = np.asarray(row["actions"], np.float32)
    assert actions.shape == (frames, 4)
    assert len(row["rewards"]) == len(row["success"]) == frames
    # Frame 0 is the reset: no action led to it, no reward, not yet a success.
    assert not actions[0].any() and row["rewards"][0] == 0 and not row["success"][0]
    assert np.abs(actions).max() <= 1 and np.abs(actions[1:]).sum(axis=1).min() > 0
    assert any(row["success"]), "the scripted policy did not solve reach-v3"
    assert max(row["rewards"]) > row["rewards"][1]

    # The episode is a function of (seed, task, episode): its first steps rendered again are
    # the frames the corpus holds, within codec tolerance, with the same actions and rewards.
    env = make_gym_env(task, seed=seed, render_size=64, variations="mt1")
    try:
        again = metaworld_episode(env, task, episode_seed(seed, task, 0), max_steps=10)
    finally:
        env.close()
    video = decoded(row)
    assert video.shape == (frames, 64, 64, 3)
    assert frame_errors(video[:11], again.frames).max() < CODEC_TOLERANCE
    np.testing.assert_array_equal(actions[:11], again.actions)
    np.testing.assert_allclose(row["rewards"][:11], again.rewards, rtol=1e-6)
    # The arm moves: the last frame is far from the first.
    assert frame_errors(video[:1], video[-1:])[0] > CODEC_TOLERANCE
    assert row["fps"] == again.fps


def test_dmc_random_builder_renders_a_walker_episode_that_decodes(tmp_path):
    name, seed, steps = "walker-walk", 0, 19
    items = dmc_items([name], episodes=1, max_steps=steps, seed=seed)
    result = build_corpus(items, tmp_path / "corpus", CARD, progress=False)
    assert result.added == 1
    (row,) = load_video_corpus(tmp_path / "corpus")
    assert (row["task"], row["camera"], row["num_frames"]) == (name, "0", steps + 1)
    assert row["fps"] == 20.0  # control step 0.025 s, action repeat 2
    actions = np.asarray(row["actions"], np.float32)
    assert actions.shape == (steps + 1, 6) and not actions[0].any()
    assert row["success"] is None and len(row["rewards"]) == steps + 1

    rendered = dmc_random_episode(name, episode_seed(seed, name, 0), steps)
    video = decoded(row)
    assert video.shape == rendered.frames.shape == (steps + 1, 64, 64, 3)
    assert frame_errors(video, rendered.frames).max() < CODEC_TOLERANCE
    np.testing.assert_array_equal(actions, rendered.actions)
    # A random policy moves the walker: frames differ over the episode.
    assert frame_errors(video[:1], video[-1:])[0] > CODEC_TOLERANCE
