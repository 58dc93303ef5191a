"""Replay buffer: sequence shapes, episode boundaries, FIFO capacity, npz layout, save/restore."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from apv_hub.replay import ReplayBuffer, ReplayError, load_episode

A = 3


def step(episode: int, t: int, length: int, size: int = 8) -> dict[str, np.ndarray]:
    """Step t of an episode whose frames and rewards encode (episode, t), for checking samples."""
    return {
        "image": np.full((3, size, size), episode, np.uint8),
        "action": np.full(A, 0.0 if t == 0 else t, np.float32),
        "reward": np.array(t, np.float32),
        "is_first": np.array(t == 0),
        "is_last": np.array(t == length - 1),
        "is_terminal": np.array(t == length - 1 and episode % 2 == 0),
    }


def fill(replay: ReplayBuffer, lengths: list[int], first_id: int = 0) -> None:
    for i, length in enumerate(lengths):
        for t in range(length):
            replay.add(step(first_id + i, t, length))


def check_within_episodes(batch: dict[str, np.ndarray]) -> None:
    """Every sequence is consecutive steps of one episode; only its first step is is_first."""
    ids, rewards, first = batch["image"][:, :, 0, 0, 0], batch["reward"], batch["is_first"]
    assert (ids == ids[:, :1]).all(), "a sequence spans two episodes"
    np.testing.assert_array_equal(np.diff(rewards, axis=1), 1.0)
    assert first[:, 0].all() and not first[:, 1:].any()


def test_sample_shapes_dtypes_and_torch() -> None:
    replay = ReplayBuffer(capacity=1000, seed=0)
    fill(replay, [20, 30])
    batch = replay.sample(5, 7)
    assert batch["image"].shape == (5, 7, 3, 8, 8) and batch["image"].dtype == np.uint8
    assert batch["action"].shape == (5, 7, A) and batch["action"].dtype == np.float32
    assert batch["reward"].shape == (5, 7) and batch["reward"].dtype == np.float32
    for flag in ("is_first", "is_last", "is_terminal"):
        assert batch[flag].shape == (5, 7) and batch[flag].dtype == bool
    tensors = replay.sample(2, 4, device="cpu")
    assert tensors["image"].dtype == torch.uint8 and tensors["image"].shape == (2, 4, 3, 8, 8)
    with pytest.raises(ReplayError, match="no finished episode longer than seq_len=30"):
        replay.sample(1, 30)  # 30 steps are 29 transitions: the release skips such episodes.


def test_sequences_stay_within_one_episode_and_start_with_is_first() -> None:
    replay = ReplayBuffer(capacity=1000, seed=1)
    fill(replay, [5, 12, 9, 30])
    batch = replay.sample(1000, 8)
    check_within_episodes(batch)
    # Episode 0 (4 transitions) is too short for 8-step slices; episode 2 (8) just fits.
    assert set(np.unique(batch["image"][:, 0, 0, 0, 0])) == {1, 2, 3}
    # Flags are the stored ones, in particular is_terminal only on even episodes' last steps.
    assert (batch["is_terminal"] <= batch["is_last"]).all()


def test_episodes_are_drawn_uniformly_not_by_length() -> None:
    replay = ReplayBuffer(capacity=1000, seed=2)
    fill(replay, [11, 101])
    ids = replay.sample(4000, 10)["image"][:, 0, 0, 0, 0]
    assert abs((ids == 0).mean() - 0.5) < 0.03  # Length-weighted would give 11 / 112.


@pytest.mark.parametrize("prioritize_ends", [True, False])
def test_start_index_follows_the_release_end_prioritisation(prioritize_ends: bool) -> None:
    """DreamerV2's rule for an episode of L steps and slices of T: with prioritize_ends the
    start is min(randint(L - T + 1 + T), L - T), so the last slice gets T + 1 of L + 1 draws."""
    length, seq_len, draws = 41, 10, 20_000
    replay = ReplayBuffer(capacity=1000, seed=3, prioritize_ends=prioritize_ends)
    fill(replay, [length])
    starts = replay.sample(draws, seq_len)["reward"][:, 0].astype(int)
    last = length - seq_len
    counts = np.bincount(starts, minlength=last + 1) / draws
    upper = last + 1 + (seq_len if prioritize_ends else 0)
    expected = np.full(last + 1, 1 / upper)
    expected[last] = (upper - last) / upper
    # Binomial standard error of each frequency is below 0.0035; allow 4 of them.
    np.testing.assert_allclose(counts, expected, atol=0.014)


def test_ongoing_and_short_episodes_are_never_sampled() -> None:
    replay = ReplayBuffer(capacity=1000, seed=4)
    for t in range(6):  # Two interleaved streams, as from EnvPool slots.
        replay.add_batch(
            {
                k: np.stack([v, w])
                for (k, v), w in zip(step(0, t, 6).items(), step(1, t, 10).values(), strict=True)
            }
        )
    assert len(replay.episodes) == 1 and set(replay.ongoing) == {1}
    np.testing.assert_array_equal(replay.episodes[0].arrays()["reward"], np.arange(6))
    assert len(replay) == 12
    assert replay.can_sample(5) and not replay.can_sample(6)
    batch = replay.sample(200, 3)
    assert (batch["image"][:, :, 0, 0, 0] == 0).all()  # Not the ongoing episode 1.
    check_within_episodes(batch)
    with pytest.raises(ReplayError, match="1 still being collected"):
        replay.sample(1, 6)
    with pytest.raises(ReplayError, match="is_first"):
        replay.add(step(5, 3, 10), stream=7)
    replay.add(step(2, 0, 10), stream=1)  # Stream 1 restarts: its episode ends truncated.
    assert len(replay.episodes) == 2 and replay.episodes[-1].arrays()["is_last"][-1]
    assert not replay.episodes[-1].arrays()["is_terminal"][-1]


def test_capacity_evicts_whole_oldest_episodes() -> None:
    replay = ReplayBuffer(capacity=25, seed=3)
    fill(replay, [10, 10])
    assert len(replay) == 20 and replay.episodes_evicted == 0
    fill(replay, [10], first_id=2)
    assert len(replay) == 20 and replay.episodes_evicted == 1
    ids = replay.sample(300, 5)["image"][:, :, 0, 0, 0]
    assert set(np.unique(ids)) == {1, 2}


def test_finished_episodes_are_written_in_the_apv_npz_layout(tmp_path) -> None:
    replay = ReplayBuffer(capacity=1000, directory=tmp_path / "eps")
    fill(replay, [7, 4])
    replay.add(step(9, 0, 5))  # Ongoing: not written.
    files = sorted((tmp_path / "eps").iterdir())
    assert len(files) == 2
    for file in files:
        match = re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{32}-(\d+)\.npz", file.name)
        assert match, file.name
        with np.load(file) as data:
            assert set(data.files) == {
                "image",
                "action",
                "reward",
                "is_first",
                "is_last",
                "is_terminal",
            }
            assert data["image"].shape[1:] == (8, 8, 3) and data["image"].dtype == np.uint8
            assert int(match.group(1)) == len(data["image"]) - 1  # DreamerV2: transitions.
            assert data["is_first"][0] and data["is_last"][-1]
    episode = load_episode(files[0])
    assert episode["image"].shape[1] == 3


def test_save_load_round_trip_resumes_identically(tmp_path) -> None:
    replay = ReplayBuffer(capacity=40, seed=4)
    fill(replay, [10, 12])
    replay.add(step(7, 0, 9), stream=3)
    replay.add(step(7, 1, 9), stream=3)
    path = replay.save(tmp_path / "ckpt")
    fill(replay, [15], first_id=2)  # Evicts episode 0.
    replay.save(path)  # Saving again updates the same folder.
    names = json.loads((path / "replay.json").read_text())["episodes"]
    assert sorted(p.name for p in (path / "episodes").iterdir()) == sorted(
        names + list(json.loads((path / "replay.json").read_text())["ongoing"].values())
    )
    (path / "episodes" / ".junk.npz.tmp").write_bytes(b"interrupted")  # A crashed save's leftover.

    restored = ReplayBuffer(capacity=40, seed=123)
    restored.load(path)
    assert len(restored) == len(replay) and restored.stats == replay.stats
    for got, want in zip(restored.episodes, replay.episodes, strict=True):
        for key in want.arrays():
            np.testing.assert_array_equal(got.arrays()[key], want.arrays()[key])
    np.testing.assert_array_equal(
        restored.ongoing[3].arrays()["image"], replay.ongoing[3].arrays()["image"]
    )
    for _ in range(3):  # Same generator state: the run continues with the same batches.
        a, b = replay.sample(8, 5), restored.sample(8, 5)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    restored.add(step(7, 2, 9), stream=3)  # The ongoing episode continues after resume.
    assert len(restored.ongoing[3]) == 3
    with pytest.raises(ReplayError, match="no saved replay"):
        ReplayBuffer(10).load(tmp_path / "nothing")


def test_npz_episodes_load_with_the_video_corpus_builder(tmp_path) -> None:
    """Collected experience is a pre-training corpus: real frames -> npz -> corpus -> decord."""
    corpus = pytest.importorskip("apv_hub.data.corpus")
    sources = pytest.importorskip("apv_hub.data.sources")
    decord = pytest.importorskip("decord")
    import io

    from apv_hub.envs import make

    replay = ReplayBuffer(capacity=1000, directory=tmp_path / "episodes")
    rng = np.random.default_rng(0)
    with make("dmc/walker-walk", seed=0, episode_length=10) as env:
        for _ in range(2):
            obs, _ = env.reset()
            replay.add(obs)
            while not obs["is_last"]:
                obs, _ = env.step(rng.uniform(-1, 1, env.action_dim))
                replay.add(obs)
    card = corpus.CorpusCard(pretty_name="replay", description="walker episodes from replay")
    result = corpus.build_corpus(
        sources.npz_items(tmp_path / "episodes", source="replay"), tmp_path / "corpus", card
    )
    assert result.added == 2 and not result.skipped.counts
    rows = corpus.load_video_corpus(tmp_path / "corpus")
    assert len(rows) == 2
    for row in rows:
        matches = [
            e.arrays() for e in replay.episodes if np.allclose(e.arrays()["reward"], row["rewards"])
        ]
        assert len(matches) == 1
        episode = matches[0]
        frames = decord.VideoReader(io.BytesIO(row["video"])).get_batch(range(row["num_frames"]))
        frames = frames.asnumpy().transpose(0, 3, 1, 2)
        assert frames.shape == episode["image"].shape
        error = np.abs(frames.astype(float) - episode["image"]).mean()
        assert error < 8, error  # Lossy H.264 at crf 15.
        np.testing.assert_allclose(row["rewards"], episode["reward"])
        np.testing.assert_allclose(row["actions"], episode["action"])
