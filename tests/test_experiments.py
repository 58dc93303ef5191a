"""The pieces of experiments/pretraining_helps.py that run in CI. The whole experiment, even at
``--quick`` scale (74 s of CPU: Meta-world renders in software), is run by hand and recorded in
benchmarks/RESULTS.md."""

import numpy as np
import pytest

from apv_hub.evaluation.probe import ProbeEpisode
from apv_hub.replay import ReplayBuffer
from experiments.pretraining_helps import SCALES, held_out_windows, main, replay_arrays


def episode(steps: int, seed: int = 0) -> ProbeEpisode:
    rng = np.random.default_rng(seed)
    return ProbeEpisode(
        "metaworld/door-lock-v3",
        seed,
        rng.integers(0, 256, (steps, 3, 8, 8), dtype=np.uint8),
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
