"""Clip loading throughput: ClipDataset through a DataLoader against raw decord decoding.

For each corpus (the shipped Meta-world sample, and optionally a synthetic corpus of longer
videos built here), the same clips -- the draws of ``ClipDataset`` items -- are decoded

* raw: directly with ``decord.VideoReader(BytesIO(bytes)).get_batch(indices)`` in one process
  loop, the bytes already in memory;
* loader: as ``ClipDataset`` items through ``torch.utils.data.DataLoader`` (batch 16) with 1 and
  2 worker processes (worker start-up included: it is part of what a training run pays).

* cached: the same items read from the decoded uint8 clip cache (``ClipDataset.use_cache``,
  built first: its build time is reported), through the same DataLoaders.

The loader/raw ratio says what the dataset machinery costs on top of decoding (target >= 80%).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import decord
import numpy as np
import torch

from apv_hub.data import ClipDataset, CorpusCard, build_corpus, load_video_corpus
from apv_hub.data.corpus import SourceItem, VideoRecord, sample_corpus_path
from benchmarks.common import bench_parser, machine, report


def synthetic_corpus(root: Path, videos: int, frames: int, size: int) -> Path:
    """``videos`` mp4 videos of ``frames`` moving-noise frames (``size`` px), built once."""

    def item(i: int) -> SourceItem:
        def load() -> VideoRecord:
            rng = np.random.default_rng(i)
            base = rng.integers(0, 256, (size, size, 3), np.uint8)
            # A drifting texture: H.264 must code motion, as in real videos.
            video = np.stack([np.roll(base, t, axis=1) for t in range(frames)])
            return VideoRecord.from_frames(f"synthetic/{i:04d}", video, 20.0, "synthetic")

        return SourceItem(f"synthetic/{i:04d}", load)

    card = CorpusCard(pretty_name="synthetic", description="benchmark fixture", command="bench")
    build_corpus([item(i) for i in range(videos)], root, card, progress=False)
    return root


def raw_decode(clips: ClipDataset, items: range) -> float:
    """Seconds to decode the clips of ``items`` straight from bytes with decord."""
    videos = [c["video"] for c in clips.corpora]
    start = time.perf_counter()
    for i in items:
        corpus, row, first = clips.draw(i)
        reader = decord.VideoReader(io.BytesIO(videos[corpus][row]), num_threads=1)
        frames = reader.get_batch(list(range(first, first + clips.span, clips.stride))).asnumpy()
        assert frames.shape[0] == clips.length
    return time.perf_counter() - start


def loader_decode(clips: ClipDataset, batch_size: int, workers: int) -> float:
    """Seconds for a DataLoader to deliver every batch of ``clips``."""
    loader = torch.utils.data.DataLoader(clips, batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    for batch in loader:
        assert batch["frames"].dtype == torch.uint8
    return time.perf_counter() - start


def bench_corpus(name: str, corpus, args: argparse.Namespace) -> dict:
    clips = ClipDataset(
        corpus, length=args.length, size=args.size, seed=0, num_clips=args.batches * args.batch
    )
    n = len(clips)
    raw_decode(clips, range(args.batch))  # warm-up: page cache, decoder libraries
    raw = raw_decode(clips, range(n))
    out = {
        "corpus": name,
        "videos": len(clips.corpora[0]),
        "clips": n,
        "raw_clips_per_s": round(n / raw, 1),
        "raw_frames_per_s": round(n * args.length / raw, 1),
    }
    for workers in args.workers:
        seconds = loader_decode(clips, args.batch, workers)
        out[f"loader_{workers}w_clips_per_s"] = round(n / seconds, 1)
        out[f"loader_{workers}w_frames_per_s"] = round(n * args.length / seconds, 1)
        out[f"loader_{workers}w_over_raw"] = round(raw / seconds, 2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        clips.use_cache(Path(tmp) / "cache", progress=False)
        out["cache_build_s"] = round(time.perf_counter() - start, 2)
        for workers in args.workers:
            seconds = loader_decode(clips, args.batch, workers)
            out[f"cached_{workers}w_clips_per_s"] = round(n / seconds, 1)
    return out


def run(args: argparse.Namespace) -> dict:
    results = [bench_corpus("sample", load_video_corpus(sample_corpus_path()), args)]
    if args.synthetic_videos:
        with tempfile.TemporaryDirectory() as tmp:
            root = synthetic_corpus(
                Path(tmp) / "synthetic", args.synthetic_videos, args.synthetic_frames, args.size
            )
            results.append(bench_corpus("synthetic", load_video_corpus(root), args))
    return {
        "batch": args.batch,
        "length": args.length,
        "size": args.size,
        "results": results,
        "machine": machine("cpu"),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=25, help="frames per clip (T)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="batches timed per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--synthetic-videos", type=int, default=0, help="also a synthetic corpus of this many"
    )
    parser.add_argument("--synthetic-frames", type=int, default=300)
    report(run, parser.parse_args())


if __name__ == "__main__":
    main()
