"""The decoded uint8 clip cache (issue 11 part 6): clips read from it are the clips decord
decodes, per shard; a cache of another corpus or clip setting, or one whose build did not
finish, is rebuilt rather than read; DataLoader workers read it; pre-training uses it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from apv_hub.data import FEATURES, ClipDataset, CorpusCard, build_corpus, load_video_corpus
from apv_hub.data.clip_cache import FRAMES_FILE, INDEX_FILE, MANIFEST_FILE
from apv_hub.data.sources import folder_items
from apv_hub.training.checkpoint import checkpoint_path
from apv_hub.training.commands import pretrain_main
from tests.data_helpers import ramp_frames, write_video
from tests.pretrain_helpers import build_squares_corpus, checkpoint_tensors, tiny_args

CARD = CorpusCard(pretty_name="fixture", description="cache fixture", command="pytest")
LENGTHS = {f"v{i}.mp4": 10 + 3 * i for i in range(4)} | {"short.mp4": 4}
SIZE = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Dataset:
    tmp = tmp_path_factory.mktemp("cache-corpus")
    for i, (key, n) in enumerate(LENGTHS.items()):
        write_video(tmp / "videos" / key, ramp_frames(n, 32, 40, seed=i))
    build_corpus(folder_items(tmp / "videos"), tmp / "corpus", CARD, progress=False)
    return load_video_corpus(tmp / "corpus")


def clips(corpus: Dataset, **kw) -> ClipDataset:
    args = dict(length=6, stride=2, size=SIZE, seed=3, num_clips=30) | kw
    return ClipDataset(corpus, **args)


def assert_same_items(cached: ClipDataset, decoded: ClipDataset) -> None:
    for i in range(len(decoded)):
        a, b = cached[i], decoded[i]
        assert (a["corpus"], a["row"], a["start"]) == (b["corpus"], b["row"], b["start"]), i
        assert a["frames"].dtype == torch.uint8 and torch.equal(a["frames"], b["frames"]), i


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_cached_clips_equal_decord_clips(corpus, tmp_path: Path, resize: str) -> None:
    cached = clips(corpus, resize=resize)
    cache = cached.use_cache(tmp_path / "cache", progress=False)
    assert cache.folder == tmp_path / "cache" / "rank0-of-1"
    # Every usable video once, at the clip size: those of at least (6 - 1) * 2 + 1 frames.
    assert cache.num_frames == sum(n for n in LENGTHS.values() if n >= 11) == 13 + 16 + 19
    assert cache.frames.shape[1:] == (3, SIZE, SIZE)
    assert_same_items(cached, clips(corpus, resize=resize))


def test_padded_short_videos_repeat_their_last_frame_as_decoded(corpus, tmp_path: Path) -> None:
    cached = clips(corpus, short_videos="pad", length=8)
    cached.use_cache(tmp_path / "cache", progress=False)
    assert_same_items(cached, clips(corpus, short_videos="pad", length=8))


def test_each_rank_caches_its_own_shard(corpus, tmp_path: Path) -> None:
    for rank in range(2):
        cached = clips(corpus, rank=rank, world_size=2)
        cache = cached.use_cache(tmp_path / "cache", progress=False)
        assert cache.folder.name == f"rank{rank}-of-2"
        keys = {v["key"] for v in cached.pool_videos(0)}
        assert cache.manifest["videos_per_corpus"] == [len(keys)]
        assert_same_items(cached, clips(corpus, rank=rank, world_size=2))


def test_a_finished_cache_is_reused_and_a_changed_one_rebuilt(corpus, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    first = clips(corpus).use_cache(folder, progress=False)
    frames = first.folder / FRAMES_FILE
    stamp = frames.stat().st_mtime_ns
    clips(corpus).use_cache(folder, progress=False)
    assert frames.stat().st_mtime_ns == stamp  # Reused: nothing decoded again.
    # Another clip length: the manifest differs, the cache is rebuilt (and still right).
    longer = clips(corpus, length=7)
    cache = longer.use_cache(folder, progress=False)
    assert cache.manifest["identity"]["length"] == 7
    assert_same_items(longer, clips(corpus, length=7))
    # Another corpus (a video dropped): rebuilt too.
    smaller = corpus.select(range(len(corpus) - 2))
    cached = clips(smaller)
    cache = cached.use_cache(folder, progress=False)
    assert cache.manifest["videos_per_corpus"] == [len(cached.pool_videos(0))]
    assert_same_items(cached, clips(smaller))


@pytest.mark.parametrize("damage", ["no manifest", "truncated frames", "bad index"])
def test_a_partially_written_cache_is_rebuilt_not_trusted(corpus, tmp_path, damage) -> None:
    folder = tmp_path / "cache"
    shard = clips(corpus).use_cache(folder, progress=False).folder
    if damage == "no manifest":
        # A build killed before its last write; its frames hold zeros.
        (shard / MANIFEST_FILE).unlink()
        with open(shard / FRAMES_FILE, "r+b") as f:
            f.write(bytes(f.seek(0, 2)))
    elif damage == "truncated frames":
        with open(shard / FRAMES_FILE, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
    else:
        np.save(shard / INDEX_FILE, np.zeros((1, 2), np.int64))
    cached = clips(corpus)
    cached.use_cache(folder, progress=False)
    assert json.loads((shard / MANIFEST_FILE).read_text())["frames"] > 0
    assert_same_items(cached, clips(corpus))


def test_an_undecodable_video_is_redrawn_as_without_the_cache(corpus, tmp_path: Path) -> None:
    rows = corpus.to_list()
    bad = next(i for i, row in enumerate(rows) if row["key"] == "v3.mp4")
    rows[bad]["video"] = np.random.default_rng(0).bytes(len(rows[bad]["video"]))
    damaged = Dataset.from_list(rows, features=FEATURES)
    cached = clips(damaged)
    cache = cached.use_cache(tmp_path / "cache", progress=False)
    assert len(cache.manifest["failures"]) == 1
    plain = clips(damaged)
    assert_same_items(cached, plain)
    assert any(plain[i]["failed_draws"] for i in range(len(plain)))


def test_dataloader_workers_map_the_cache(corpus, tmp_path: Path) -> None:
    cached = clips(corpus)
    cached.use_cache(tmp_path / "cache", progress=False)
    cached[0]  # Maps the file in this process; a worker gets the path, not the frames.
    assert len(pickle.dumps(cached.cache)) < 10_000
    loader = torch.utils.data.DataLoader(cached, batch_size=5, num_workers=2)
    got = torch.cat([batch["frames"] for batch in loader])
    want = torch.stack([clips(corpus)[i]["frames"] for i in range(len(cached))])
    assert torch.equal(got, want)


def test_pretraining_from_the_cache_trains_exactly_as_from_the_videos(tmp_path: Path) -> None:
    data = build_squares_corpus(tmp_path / "squares", num_videos=3, length=12)
    no_workers = ("--num-workers", "0", "--checkpoint-every", "2")
    assert pretrain_main(tiny_args(data, tmp_path / "plain", 2, *no_workers)) == 0
    cache = tmp_path / "cache"
    args = tiny_args(data, tmp_path / "cached", 2, *no_workers, "--set", f"clip_cache={cache}")
    assert pretrain_main(args) == 0
    assert (cache / "rank0-of-1" / MANIFEST_FILE).is_file()
    plain = checkpoint_tensors(checkpoint_path(tmp_path / "plain" / "checkpoints", 2))
    cached = checkpoint_tensors(checkpoint_path(tmp_path / "cached" / "checkpoints", 2))
    assert plain.keys() == cached.keys()
    assert all(torch.equal(plain[k], cached[k]) for k in plain)
