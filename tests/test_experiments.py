"""The pieces of experiments/pretraining_helps.py that run in CI. The whole experiment, even at
``--quick`` scale (74 s of CPU: Meta-world renders in software), is run by hand and recorded in
benchmarks/RESULTS.md."""

import dataclasses
import math

import numpy as np
import pytest

from apv_hub import APVVideoModel
from apv_hub.evaluation.probe import ProbeEpisode
from apv_hub.replay import ReplayBuffer
from experiments.pretraining_helps import (
    SCALES,
    held_out_windows,
    main,
    replay_arrays,
    train_world_model,
)
from tests.finetune_helpers import save_tiny_video_model


def episode(steps: int, seed: int = 0, size: int = 8) -> ProbeEpisode:
    rng = np.random.default_rng(seed)
    return ProbeEpisode(
        "metaworld/door-lock-v3",
        seed,
        rng.integers(0, 256, (steps, 3, size, size), dtype=np.uint8),
        rng.normal(size=(steps, 39)),
        np.r_[0.0, rng.uniform(size=steps - 1)].astype(np.float32),
        np.r_[np.zeros((1, 4)), rng.uniform(-1, 1, (steps - 1, 4))].astype(np.float32),
    )


def test_episodes_become_one_replay_episode_each():
    replay = ReplayBuffer(capacity=100, seed=0)
    replay.add_episode(replay_arrays(episode(11)))
    arrays = replay_arrays(episode(11))
    assert arrays["is_first"].tolist() == [True] + [False] * 10
    assert arrays["is_last"].tolist() == [False] * 10 + [True]
    assert not arrays["is_terminal"].any() and len(replay) == 11
    assert replay.sample(2, 5)["image"].shape == (2, 5, 3, 8, 8)


def test_held_out_windows_tile_each_episode_and_restart_the_model():
    episodes = [episode(11, 0), episode(9, 1)]
    windows = held_out_windows(episodes, 4)
    # 11 steps -> windows at 0 and 4; 9 steps -> 0 and 4 (the tails are left out).
    assert windows["image"].shape == (4, 4, 3, 8, 8)
    assert windows["is_first"][:, 0].all() and not windows["is_first"][:, 1:].any()
    np.testing.assert_array_equal(windows["reward"][1].numpy(), episodes[0].rewards[4:8])
    np.testing.assert_array_equal(windows["action"][3].numpy(), episodes[1].actions[4:8])


def test_the_target_must_be_absent_from_the_corpus(tmp_path):
    with pytest.raises(SystemExit):
        main(["--quick", "--env", "metaworld/door-open-v3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--quick", "--env", "metaworld/window-open-v3", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
    for scale in SCALES.values():
        assert scale.episodes % scale.held_out == 0 and scale.episodes > scale.held_out


@pytest.mark.parametrize("arm", ["apv", "dreamerv2"])
def test_world_model_arms_train_through_the_agents_update(arm, tmp_path):
    """Stage (b) at the smallest size: both arms step the world model through
    `APVAgent.update_world_model` (APV's pre-trained group held, then released) and record
    finite held-out losses at the evaluation points."""
    model_dir = save_tiny_video_model(tmp_path / "video")
    video = APVVideoModel.from_pretrained(model_dir)
    scale = dataclasses.replace(SCALES["quick"], updates=4, eval_every=2, freeze_updates=2)
    episodes = [episode(20, seed, size=video.config.image_size) for seed in range(3)]
    windows = held_out_windows(episodes[2:], scale.seq_len)
    curve = train_world_model(arm, 0, video, model_dir, episodes[:2], windows, scale, "cpu")
    assert curve["updates"] == [0, 2, 4]
    for name in ("reward_loss", "image_loss"):
        assert all(isinstance(v, float) and math.isfinite(v) for v in curve[name])
    assert curve["image_loss"][-1] != curve["image_loss"][0]
