"""Streamed corpora: load_video_corpus(streaming=True) and StreamingClipDataset on a local parquet
corpus and on the same corpus served by the local Hub, ranks, DataLoader workers, bad videos."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset

from apv_hub.data import (
    FEATURES,
    CorpusCard,
    StreamingClipDataset,
    build_corpus,
    load_video_corpus,
    push_corpus_to_hub,
)
from apv_hub.data.corpus import DATA_DIR
from apv_hub.data.sources import folder_items
from tests.data_helpers import CODEC_TOLERANCE, nearest_frames, ramp_frames, write_video

CARD = CorpusCard(pretty_name="stream fixture", description="test fixture", command="pytest")
SIZE = 32
USABLE = [f"v{i}.mp4" for i in range(8)]  # 10 to 17 frames
SHORT, CORRUPT = "short.mp4", "v8.mp4"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A corpus of 10 one-video shards: 8 usable videos, one too short for the clips below and
    one whose bytes were damaged after the build -> (folder, source frames by key)."""
    tmp = tmp_path_factory.mktemp("stream")
    sources = {key: ramp_frames(10 + i, SIZE, SIZE, seed=i) for i, key in enumerate(USABLE)}
    sources[SHORT] = ramp_frames(3, SIZE, SIZE, seed=50)
    sources[CORRUPT] = ramp_frames(12, SIZE, SIZE, seed=60)
    for key, frames in sources.items():
        write_video(tmp / "videos" / key, frames)
    build_corpus(folder_items(tmp / "videos"), tmp / "built", CARD, progress=False)
    rows = load_video_corpus(tmp / "built").to_list()
    root = tmp / "corpus"
    (root / DATA_DIR).mkdir(parents=True)
    shutil.copy(tmp / "built" / "README.md", root / "README.md")
    for i, row in enumerate(sorted(rows, key=lambda r: r["key"])):
        if row["key"] == CORRUPT:
            row["video"] = np.random.default_rng(0).bytes(len(row["video"]))
        shard = root / DATA_DIR / f"train-{i:05d}.parquet"
        Dataset.from_list([row], features=FEATURES).to_parquet(str(shard))
    return root, sources


def clips_of(dataset) -> list[dict]:
    return list(dataset)


def assert_frames_are_the_source(item: dict, sources: dict, stride: int = 1) -> None:
    frames = item["frames"].permute(0, 2, 3, 1).numpy()
    best, err = nearest_frames(frames, sources[item["key"]])
    assert (best == item["start"] + stride * np.arange(len(frames))).all()
    assert err.max() <= CODEC_TOLERANCE


def test_streaming_load_reads_the_same_rows_without_loading(corpus_dir):
    root, _ = corpus_dir
    streamed = load_video_corpus(root, streaming=True)
    assert isinstance(streamed, IterableDataset) and streamed.num_shards == 10
    assert [r["key"] for r in streamed] == load_video_corpus(root)["key"]


def test_every_usable_video_gives_its_clips_and_bad_ones_are_counted(corpus_dir):
    root, sources = corpus_dir
    clips = StreamingClipDataset(
        root, length=4, stride=2, size=SIZE, seed=0, buffer_size=3, clips_per_video=2
    )
    items = clips_of(clips)
    assert Counter(item["key"] for item in items) == dict.fromkeys(USABLE, 2)
    for item in items:
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (4, 3, SIZE, SIZE)
        assert_frames_are_the_source(item, sources, stride=2)
    assert sum(item["skipped"] for item in items) == 1
    assert clips.stats == {"clips": 16, "videos": 10, "corrupt_videos": 1, "short_videos": 1}
    assert clips.excluded.counts == {"too short": 1, "corrupt": 1}
    assert CORRUPT in clips.excluded.examples["corrupt"][0]
    # The buffer mixes videos: clips of one video do not all come back to back.
    keys = [item["key"] for item in items]
    assert sum(a == b for a, b in zip(keys, keys[1:], strict=False)) < len(USABLE)


def test_the_stream_is_a_function_of_seed_and_epoch(corpus_dir):
    streamed = load_video_corpus(corpus_dir[0], streaming=True)

    def draws(seed: int, epochs: int = 1) -> list[tuple[str, int]]:
        clips = StreamingClipDataset(
            streamed, length=4, size=SIZE, seed=seed, buffer_size=4, clips_per_video=1,
            epochs=epochs,
        )  # fmt: skip
        return [(item["key"], item["start"]) for item in clips]

    # (Each pass over a parquet stream ends with a 5 s pause in datasets 5.2: few passes here.)
    first = draws(0)
    assert len(first) == len(USABLE) and draws(1) != first
    two_epochs = draws(0, epochs=2)
    assert two_epochs[: len(first)] == first  # same seed, same stream
    assert two_epochs[len(first) :] != first  # the next epoch reshuffles


def test_ranks_read_disjoint_videos_that_cover_the_corpus(corpus_dir):
    root, _ = corpus_dir
    seen = [
        {
            item["key"]
            for item in StreamingClipDataset(root, length=4, size=SIZE, rank=r, world_size=2)
        }
        for r in range(2)
    ]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(USABLE)


def test_dataloader_workers_split_the_stream_without_repeats(corpus_dir):
    root, sources = corpus_dir
    clips = StreamingClipDataset(root, length=4, size=SIZE, seed=3, clips_per_video=3)
    loader = torch.utils.data.DataLoader(clips, batch_size=5, num_workers=2)
    keys, skipped = Counter(), 0
    for batch in loader:
        assert batch["frames"].shape[1:] == (4, 3, SIZE, SIZE)
        keys.update(batch["key"])
        skipped += int(batch["skipped"].sum())
    assert keys == dict.fromkeys(USABLE, 3) and skipped == 1


def test_several_corpora_are_interleaved(corpus_dir, tmp_path):
    root, _ = corpus_dir
    other = tmp_path / "other"
    write_video(tmp_path / "o" / "w.mp4", ramp_frames(12, SIZE, SIZE, seed=70))
    build_corpus(folder_items(tmp_path / "o"), other, CARD, progress=False)
    items = clips_of(StreamingClipDataset([root, other], length=4, size=SIZE, clips_per_video=1))
    assert Counter(item["key"] for item in items) == dict.fromkeys([*USABLE, "w.mp4"], 1)


def test_a_hub_repo_streams_like_the_folder(corpus_dir, local_hub):
    root, sources = corpus_dir
    push_corpus_to_hub(root, "apv-test/streamed-corpus")
    remote = load_video_corpus("apv-test/streamed-corpus", streaming=True)
    assert isinstance(remote, IterableDataset) and remote.num_shards == 10
    make = lambda corpus: StreamingClipDataset(corpus, length=4, size=SIZE, seed=5, buffer_size=4)
    from_hub, from_folder = clips_of(make("apv-test/streamed-corpus")), clips_of(make(root))
    assert [(i["key"], i["start"]) for i in from_hub] == [
        (i["key"], i["start"]) for i in from_folder
    ]
    for a, b in zip(from_hub, from_folder, strict=True):
        assert torch.equal(a["frames"], b["frames"])
    assert not local_hub.unhandled_requests


def test_a_large_push_commits_in_batches_and_a_rerun_uploads_only_what_is_missing(
    corpus_dir, local_hub, tmp_path
):
    """Without hf_xet (disabled here) the large path commits the shards in batches; the card
    comes last. An interrupted push (here: half the shards) resumes without re-committing."""
    from huggingface_hub import HfApi

    root, _ = corpus_dir
    repo = "apv-test/large-corpus"
    half = tmp_path / "half"
    shutil.copytree(root, half)
    for shard in sorted((half / DATA_DIR).glob("*.parquet"))[5:]:
        shard.unlink()
    (half / "README.md").write_text((root / "README.md").read_text() + "\nFirst half.\n")

    def latest_commits(count: int) -> list[str]:
        commits = HfApi().list_repo_commits(repo, repo_type="dataset", revision="v1")
        return [c.title.removeprefix("Upload video corpus ") for c in commits][:count]

    push_corpus_to_hub(half, repo, large=True, shards_per_commit=2, revision="v1")
    assert latest_commits(4) == [
        "(card)", "(shards, part 3 of 3)", "(shards, part 2 of 3)", "(shards, part 1 of 3)"
    ]  # fmt: skip
    push_corpus_to_hub(root, repo, large=True, shards_per_commit=4, revision="v1")
    # The five shards already there are not committed again: 5 new ones in 2 commits.
    assert latest_commits(3) == ["(card)", "(shards, part 2 of 2)", "(shards, part 1 of 2)"]
    pushed = load_video_corpus(repo, revision="v1")
    assert pushed["key"] == load_video_corpus(root)["key"]
    assert pushed.to_list() == load_video_corpus(root).to_list()
    assert not local_hub.unhandled_requests and not local_hub.errors
