"""ClipDataset on real encoded videos: seeding, shards, DataLoader workers, mixtures, bad and
short videos, and the shipped sample corpus."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset

from apv_hub.data import (
    FEATURES,
    ClipDataset,
    CorpusCard,
    build_corpus,
    load_video_corpus,
    sample_corpus_path,
)
from apv_hub.data.sources import folder_items
from tests.data_helpers import CODEC_TOLERANCE, nearest_frames, ramp_frames, write_video

CARD = CorpusCard(pretty_name="fixture", description="test fixture", command="pytest")
# Six usable videos of different lengths and one of 5 frames, too short for an 8-frame clip.
LENGTHS = {f"v{i}.mp4": 12 + 2 * i for i in range(6)}
SHORT = "short.mp4"
SIZE = 32


@pytest.fixture(scope="module")
def fixture_corpus(tmp_path_factory) -> tuple[Dataset, dict[str, np.ndarray]]:
    """A corpus built from real mp4 files -> (corpus, source frames [T, H, W, 3] by key)."""
    tmp = tmp_path_factory.mktemp("clips")
    sources = {
        key: ramp_frames(n, SIZE, SIZE, seed=i) for i, (key, n) in enumerate(LENGTHS.items())
    }
    sources[SHORT] = ramp_frames(5, SIZE, SIZE, seed=99)
    for key, frames in sources.items():
        write_video(tmp / "videos" / key, frames)
    result = build_corpus(folder_items(tmp / "videos"), tmp / "corpus", CARD, progress=False)
    assert result.added == len(sources)
    return load_video_corpus(tmp / "corpus"), sources


def provenance(item: dict) -> tuple[int, int, int, int]:
    return item["corpus"], item["row"], item["start"], item["failed_draws"]


def test_same_seed_gives_identical_items_and_another_seed_other_draws(fixture_corpus):
    corpus, sources = fixture_corpus
    make = lambda seed: ClipDataset(corpus, length=4, stride=2, size=SIZE, seed=seed, num_clips=10)
    a, b, c = make(7), make(7), make(8)
    keys = corpus["key"]
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert provenance(x) == provenance(y)
        assert torch.equal(x["frames"], y["frames"])
        assert x["frames"].dtype == torch.uint8 and x["frames"].shape == (4, 3, SIZE, SIZE)
        # The provenance is where the frames really came from.
        decoded = x["frames"].numpy().transpose(0, 2, 3, 1)
        best, err = nearest_frames(decoded, sources[keys[x["row"]]])
        np.testing.assert_array_equal(best, x["start"] + 2 * np.arange(4))
        assert err.max() < CODEC_TOLERANCE
    draws_a = [a.draw(i) for i in range(len(a))]
    draws_c = [c.draw(i) for i in range(len(c))]
    assert draws_a != draws_c
    assert [provenance(c[i])[:3] for i in range(3)] == draws_c[:3]


def test_two_shards_see_disjoint_videos_that_cover_the_corpus(fixture_corpus):
    corpus, _ = fixture_corpus
    full = ClipDataset(corpus, length=8, size=SIZE, seed=1, num_clips=40, world_size=1)
    shards = [full.shard(rank, 2) for rank in range(2)]
    rows = [{s[i]["row"] for i in range(len(s))} for s in shards]
    assert rows[0] and rows[1]
    assert rows[0].isdisjoint(rows[1])
    usable = {i for i, n in enumerate(corpus["num_frames"]) if n >= full.span}
    assert rows[0] | rows[1] == usable
    # Same arguments through the constructor give the same shard.
    direct = ClipDataset(corpus, length=8, size=SIZE, seed=1, num_clips=40, rank=1, world_size=2)
    assert [direct.draw(i) for i in range(40)] == [shards[1].draw(i) for i in range(40)]


def test_dataloader_with_two_workers_yields_the_batches_of_one_process(fixture_corpus):
    corpus, _ = fixture_corpus
    clips = ClipDataset(corpus, length=6, size=SIZE, seed=3, num_clips=16)

    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(clips, batch_size=4, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    for s, p in zip(serial, parallel, strict=True):
        assert s["frames"].shape == (4, 6, 3, SIZE, SIZE)
        assert torch.equal(s["frames"], p["frames"])
        for name in ("corpus", "row", "start", "failed_draws"):
            assert torch.equal(s[name], p[name]), name
    assert len({tuple(b["row"].tolist()) for b in serial}) > 1


def test_mixture_weights_choose_the_corpus(fixture_corpus):
    corpus, _ = fixture_corpus
    sample = load_video_corpus(sample_corpus_path())
    only_first = ClipDataset([corpus, sample], length=8, size=SIZE, weights=[1, 0], num_clips=300)
    assert {only_first.draw(i)[0] for i in range(300)} == {0}
    mixed = ClipDataset([corpus, sample], length=8, size=SIZE, weights=[0.8, 0.2], num_clips=400)
    frequency = np.mean([mixed.draw(i)[0] == 0 for i in range(400)])
    # 3 standard deviations of a binomial frequency over 400 draws: 0.06.
    assert abs(frequency - 0.8) < 0.06
    # A decoded item from the second corpus is a clip of a sample video, resized to SIZE.
    index = next(i for i in range(400) if mixed.draw(i)[0] == 1)
    item = mixed[index]
    assert item["corpus"] == 1 and item["row"] < len(sample)
    assert item["frames"].shape == (8, 3, SIZE, SIZE)


def test_video_corrupt_at_load_time_is_skipped_counted_and_redrawn(fixture_corpus):
    corpus, _ = fixture_corpus
    bad_row = 2
    rows = corpus.to_list()
    # Damaged after the build: the row still claims its frames, its bytes no longer decode.
    rows[bad_row]["video"] = np.random.default_rng(0).bytes(len(rows[bad_row]["video"]))
    damaged = Dataset.from_list(rows, features=FEATURES)
    clips = ClipDataset(damaged, length=4, size=SIZE, seed=5, num_clips=200)
    hits = [i for i in range(len(clips)) if clips.draw(i)[1] == bad_row]
    assert len(hits) >= 2

    first = clips[hits[0]]
    assert first["row"] != bad_row and first["failed_draws"] >= 1
    assert first["frames"].shape == (4, 3, SIZE, SIZE)
    assert clips.stats["failed_draws"] == 1
    # The redraw is the next attempt of the same item: deterministic in a fresh process too.
    again = ClipDataset(damaged, length=4, size=SIZE, seed=5, num_clips=200)[hits[0]]
    assert provenance(again) == provenance(first)
    assert torch.equal(again["frames"], first["frames"])
    assert clips.draw(hits[0], first["failed_draws"]) == provenance(first)[:3]
    # Known bad: later items skip it without decoding it again.
    second = clips[hits[1]]
    assert second["row"] != bad_row and second["failed_draws"] >= 1
    assert clips.stats["failed_draws"] == 1
    assert clips.stats["clips"] == 2


def test_short_videos_are_skipped_and_counted_or_padded(fixture_corpus):
    corpus, sources = fixture_corpus
    short_row = corpus["key"].index(SHORT)
    skip = ClipDataset(corpus, length=8, size=SIZE, seed=0, num_clips=100, short_videos="skip")
    assert skip.excluded.total == 1 and skip.excluded.counts == {"too short": 1}
    assert SHORT in skip.excluded.examples["too short"][0]
    assert short_row not in {skip.draw(i)[1] for i in range(100)}

    pad = ClipDataset(corpus, length=8, size=SIZE, seed=0, num_clips=100, short_videos="pad")
    assert pad.excluded.total == 0
    index = next(i for i in range(100) if pad.draw(i)[1] == short_row)
    item = pad[index]
    assert item["row"] == short_row and item["start"] == 0
    frames = item["frames"].numpy().transpose(0, 2, 3, 1)
    best, err = nearest_frames(frames, sources[SHORT])
    # The 5 frames, then the last one repeated to fill the 8-frame clip.
    np.testing.assert_array_equal(best, [0, 1, 2, 3, 4, 4, 4, 4])
    assert err.max() < CODEC_TOLERANCE
    assert (frames[5:] == frames[4]).all()


def test_shipped_sample_gives_64px_clips_and_matches_its_card():
    root = sample_corpus_path()
    corpus = load_video_corpus(root)
    assert corpus.column_names == list(FEATURES)
    card = (root / "README.md").read_text()
    stated = lambda label: int(re.search(rf"^- {label}: (\d+)$", card, re.M).group(1))
    assert len(corpus) == stated("Videos")
    assert sum(corpus["num_frames"]) == stated("Frames")
    for task, n in Counter(corpus["task"]).items():
        assert f"| {task} | {n} |" in card
    for row in corpus.select_columns(["num_frames", "actions", "rewards", "success"]):
        assert len(row["actions"]) == len(row["rewards"]) == len(row["success"])
        assert len(row["actions"]) == row["num_frames"]

    clips = ClipDataset(root, length=25, size=64, seed=0, num_clips=4)
    for i in range(len(clips)):
        frames = clips[i]["frames"]
        assert frames.dtype == torch.uint8 and frames.shape == (25, 3, 64, 64)
        # Rendered scenes, not blank frames, and frames change over the clip.
        assert frames.float().std() > 10
        assert (frames[0] != frames[-1]).any()
