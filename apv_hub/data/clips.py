"""Random video clips for pre-training: a map-style torch Dataset over one or more corpora.

Item ``i`` is a pure function of ``(seed, rank, i)``: the corpus is drawn by the mixture
weights, the video uniformly within it, the start frame uniformly among those that fit the clip.
A resumed run therefore restarts at item ``step * batch_size`` with no hidden iterator state, and
any number of DataLoader workers produce the same items in the same order.

Videos shorter than a clip (``(length - 1) * stride + 1`` frames) are handled by
``short_videos``: ``"skip"`` (default) leaves them out when the dataset is built, counted and
reported once; ``"pad"`` keeps them and repeats their last frame to fill the clip.

A clip that fails to decode is replaced by a fresh deterministic draw, and counted: per item
(``failed_draws``) and per process (``stats``); each bad video is logged once per process, named
by its corpus and key, and `failed_videos` names the videos an item skipped. When every video
is undecodable, a `VideoError` says so in one line instead.

``StreamingClipDataset`` (an iterable dataset) draws clips from corpora streamed rather than
loaded, for corpora that do not fit on disk (see its docstring).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from datasets import Dataset, IterableDataset

from apv_hub.data.corpus import load_video_corpus
from apv_hub.data.report import SkipReport
from apv_hub.data.video import VideoError, center_crop, decode_frames, decode_size
from apv_hub.hub import hub_failure

if TYPE_CHECKING:
    from apv_hub.data.clip_cache import ClipCache

logger = logging.getLogger(__name__)

# Redraws before an item gives up: only reached when (almost) every video is undecodable.
MAX_DRAWS = 64


@dataclass(frozen=True)
class _Pool:
    """The videos of one corpus that this rank samples from."""

    rows: np.ndarray  # int64 [N]: row indices into the corpus
    num_frames: np.ndarray  # int64 [N]
    heights: np.ndarray  # int64 [N]
    widths: np.ndarray  # int64 [N]
    keys: list[str]  # [N]: the videos' corpus keys


class ClipDataset(torch.utils.data.Dataset):
    """Clips of ``length`` frames, every ``stride``-th frame, resized to ``size``.

    Items: ``{"frames": uint8 [T, 3, H, W], "corpus": int, "row": int, "start": int,
    "failed_draws": int, "index": int}``: the corpus index in the mixture, the row of the video
    in that corpus, the first frame index, how many draws before this one failed to decode, and
    the item's own index.

    Args:
        corpora: a corpus (``datasets.Dataset``, folder or Hub repo id) or a list of them.
        length: frames per clip (T).
        stride: take every ``stride``-th frame.
        size: output frame size, an int (square) or (height, width).
        weights: mixture weights per corpus (normalised); default: proportional to the
            number of usable videos, i.e. uniform over all videos.
        seed: fixes every draw.
        num_clips: ``len()`` of the dataset; default: the number of non-overlapping clips
            the usable videos hold (one "epoch").
        short_videos: ``"skip"`` or ``"pad"`` (see the module docstring).
        resize: ``"crop"`` scales the short side to ``size`` and crops the centre (keeps the
            aspect ratio); ``"stretch"`` scales each side to ``size``.
        rank, world_size: this process's shard: rank r samples only the videos with position
            ``r (mod world_size)`` in each corpus, so ranks see disjoint videos.
    """

    def __init__(
        self,
        corpora: Dataset | str | Sequence[Dataset | str],
        length: int = 25,
        stride: int = 1,
        size: int | tuple[int, int] = 64,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        num_clips: int | None = None,
        short_videos: str = "skip",
        resize: str = "crop",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_clip_args(length, stride, short_videos, resize, rank, world_size)
        if isinstance(corpora, (Dataset, str)) or not isinstance(corpora, Sequence):
            corpora = [corpora]
        self.corpora = [_open_corpus(c) for c in corpora]
        # How videos are named in messages: the corpus as given, or its position.
        self.names = [c if isinstance(c, str) else f"corpus {i}" for i, c in enumerate(corpora)]
        self.length, self.stride = length, stride
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.short_videos, self.resize = short_videos, resize
        self._init_args = dict(weights=weights, num_clips=num_clips)
        self.excluded = SkipReport()
        self._pools = [self._pool(i, c) for i, c in enumerate(self.corpora)]
        self.weights = self._mixture_weights(weights)
        if num_clips is None:
            num_clips = sum(int((p.num_frames // self.span).sum()) for p in self._pools)
        self.num_clips = max(int(num_clips), 1)
        # Only the video column is read per item; a column view is cheap and pickles for workers.
        self._videos = [c.select_columns(["video"]) for c in self.corpora]
        self.stats = {"clips": 0, "failed_draws": 0}
        self._bad_rows: set[tuple[int, int]] = set()
        self.cache: ClipCache | None = None  # Set by use_cache.
        if self.excluded.total:
            logger.warning("ClipDataset (rank %d): %s", rank, self.excluded.summary())

    @property
    def span(self) -> int:
        """Frames a clip covers in its video: (length - 1) * stride + 1."""
        return (self.length - 1) * self.stride + 1

    def _pool(self, index: int, corpus: Dataset) -> _Pool:
        missing = {"num_frames", "height", "width", "video", "key"} - set(corpus.column_names)
        if missing:
            raise ValueError(f"corpus {index} lacks column(s) {sorted(missing)}")
        meta = corpus.select_columns(["num_frames", "height", "width", "key"]).with_format("numpy")
        num_frames = np.asarray(meta["num_frames"], np.int64)
        keep = np.ones(len(num_frames), bool)
        if self.short_videos == "skip":
            keep = num_frames >= self.span
            keys = meta["key"]
            for row in np.flatnonzero(~keep):
                self.excluded.add(
                    f"corpus {index} {keys[row]}",
                    f"too short: {num_frames[row]} < {self.span} frames",
                )
        rows = np.flatnonzero(keep)[self.rank :: self.world_size]
        if len(rows) == 0:
            raise ValueError(
                f"corpus {index} has no usable video for rank {self.rank} of {self.world_size} "
                f"({int(keep.sum())} usable of {len(keep)}, clip span {self.span} frames)"
            )
        keys = meta["key"]
        return _Pool(
            rows=rows,
            num_frames=num_frames[rows],
            heights=np.asarray(meta["height"], np.int64)[rows],
            widths=np.asarray(meta["width"], np.int64)[rows],
            keys=[str(keys[row]) for row in rows],
        )

    def _mixture_weights(self, weights: Sequence[float] | None) -> np.ndarray:
        if weights is None:
            w = np.array([len(p.rows) for p in self._pools], np.float64)
        else:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(self._pools),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {len(self._pools)} non-negative numbers, not all zero; "
                    f"got {list(weights)}"
                )
        return w / w.sum()

    def shard(self, rank: int, world_size: int) -> ClipDataset:
        """The same clips configuration restricted to shard ``rank`` of ``world_size``."""
        return ClipDataset(
            self.corpora, self.length, self.stride, self.size, seed=self.seed,
            short_videos=self.short_videos, resize=self.resize, rank=rank,
            world_size=world_size, **self._init_args,
        )  # fmt: skip

    def __len__(self) -> int:
        return self.num_clips

    def draw(self, index: int, attempt: int = 0) -> tuple[int, int, int]:
        """Item ``index``'s ``attempt``-th draw -> (corpus, row of that corpus, start frame)."""
        corpus, pos, start = self._draw(index, attempt)
        return corpus, int(self._pools[corpus].rows[pos]), start

    def _draw(self, index: int, attempt: int) -> tuple[int, int, int]:
        """-> (corpus, position in its pool of usable rows, start frame)."""
        rng = np.random.default_rng([self.seed, self.rank, index, attempt])
        corpus = int(rng.choice(len(self._pools), p=self.weights))
        pool = self._pools[corpus]
        pos = int(rng.integers(len(pool.rows)))
        return corpus, pos, draw_start(rng, int(pool.num_frames[pos]), self.span)

    def video_name(self, corpus: int, pos: int) -> str:
        """``<corpus as given>:<key>`` of the video at position ``pos`` of a corpus's pool."""
        return f"{self.names[corpus]}:{self._pools[corpus].keys[pos]}"

    def failed_videos(self, index: int, failed_draws: int) -> list[str]:
        """The videos item ``index`` skipped before the one it returned (``failed_draws`` of
        them, each undecodable), by name (`video_name`); draws are pure, so any process can
        name what a DataLoader worker skipped."""
        return [self.video_name(*self._draw(index, a)[:2]) for a in range(failed_draws)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range [0, {self.num_clips})")
        # Failures are logged once the item has a clip: a corpus of undecodable videos then
        # gives one error line rather than a warning per video first.
        failures: list[str] = []
        for attempt in range(MAX_DRAWS):
            corpus, pos, start = self._draw(index, attempt)
            row = int(self._pools[corpus].rows[pos])
            if (corpus, row) in self._bad_rows:
                continue
            try:
                frames = self._decode(corpus, pos, start)
            except VideoError as e:
                self._bad_rows.add((corpus, row))
                self.stats["failed_draws"] += 1
                failures.append(f"{self.video_name(corpus, pos)} ({e})")
                if self._all_bad():
                    break
                continue
            for failure in failures:
                logger.warning("skipping undecodable video %s", failure)
            self.stats["clips"] += 1
            return {
                "frames": torch.from_numpy(frames),
                "corpus": corpus,
                "row": row,
                "start": start,
                "failed_draws": attempt,
                "index": index,
            }
        shown = "; ".join(failures[:3])
        if len(failures) > 3:
            shown += f"; and {len(failures) - 3} more"
        if self._all_bad():
            usable = sum(len(p.rows) for p, w in zip(self._pools, self.weights, strict=True) if w)
            raise VideoError(
                f"no video of {', '.join(self.names)} can be decoded ({usable} of {usable} "
                f"failed: {shown}); rebuild the corpus with its dataset script"
            )
        raise VideoError(
            f"no decodable clip for item {index} in {MAX_DRAWS} draws ({len(failures)} videos "
            f"failed: {shown}); is most of the corpus damaged?"
        )

    def _all_bad(self) -> bool:
        """Whether every video this process may draw (of corpora with weight) failed."""
        bad = np.bincount([c for c, _ in self._bad_rows], minlength=len(self._pools))
        return all(bad[c] >= len(p.rows) for c, p in enumerate(self._pools) if self.weights[c] > 0)

    def use_cache(self, folder: str | Path, progress: bool = True) -> ClipCache:
        """Read clips from the decoded clip cache of this shard in ``folder`` (built now, with
        a progress bar, unless a finished cache of the same corpora and settings is there; see
        `apv_hub.data.clip_cache`). The items stay the same."""
        from apv_hub.data.clip_cache import ClipCache

        self.cache = ClipCache.open_or_build(folder, self, progress)
        return self.cache

    def pool_videos(self, corpus: int) -> list[dict]:
        """What describes each video of corpus ``corpus`` this shard draws from, in pool order:
        key, num_frames, height, width (what a clip cache's manifest is checked against)."""
        pool = self._pools[corpus]
        return [
            {"key": key, "num_frames": int(n), "height": int(h), "width": int(w)}
            for key, n, h, w in zip(
                pool.keys, pool.num_frames, pool.heights, pool.widths, strict=True
            )
        ]

    def decode_video(self, corpus: int, pos: int) -> np.ndarray:
        """Every frame of video ``pos`` of a corpus's pool, at the clip size: uint8 [N, 3, H, W]."""
        return self._decode_frames(corpus, pos, 0, int(self._pools[corpus].num_frames[pos]), 1)

    def _decode(self, corpus: int, pos: int, start: int) -> np.ndarray:
        """One clip -> uint8 [T, 3, H, W]."""
        if self.cache is not None:
            return self.cache.clip(corpus, pos, start, self.length, self.stride)
        return self._decode_frames(corpus, pos, start, self.length, self.stride)

    def _decode_frames(
        self, corpus: int, pos: int, start: int, length: int, stride: int
    ) -> np.ndarray:
        pool = self._pools[corpus]
        row = int(pool.rows[pos])
        data = self._videos[corpus][row]["video"]
        video = (int(pool.num_frames[pos]), int(pool.heights[pos]), int(pool.widths[pos]))
        return decode_clip(data, *video, start, length, stride, self.size, self.resize)


def check_clip_args(
    length: int, stride: int, short_videos: str, resize: str, rank: int, world_size: int
) -> None:
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
    if short_videos not in ("skip", "pad"):
        raise ValueError(f"short_videos must be 'skip' or 'pad', got {short_videos!r}")
    if resize not in ("crop", "stretch"):
        raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")


def draw_start(rng: np.random.Generator, num_frames: int, span: int) -> int:
    """A start frame drawn uniformly among those where a clip of ``span`` frames fits (0 for a
    shorter video, which is then padded)."""
    return int(rng.integers(max(num_frames - span, 0) + 1))


def decode_clip(
    data: bytes,
    num_frames: int,
    height: int,
    width: int,
    start: int,
    length: int,
    stride: int,
    size: tuple[int, int],
    resize: str,
) -> np.ndarray:
    """``length`` frames from ``start``, every ``stride``-th, of a num_frames x height x width
    video -> uint8 [T, 3, *size]. Past the end (short videos padded) the last frame repeats;
    ``resize``: "crop" (cover ``size`` keeping the aspect ratio, centre crop) or "stretch"."""
    indices = np.minimum(start + stride * np.arange(length), num_frames - 1)
    out_h, out_w = size
    frames = decode_frames(data, indices, *decode_size(height, width, out_h, out_w, resize))
    if frames.shape[0] != length:
        raise VideoError(f"decoded {frames.shape[0]} of {length} frames")
    frames = center_crop(frames, out_h, out_w)
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


@dataclass
class _Buffered:
    """A streamed video waiting in the buffer, and how many more clips it gives."""

    key: str
    video: bytes
    num_frames: int
    height: int
    width: int
    clips_left: int


class StreamingClipDataset(torch.utils.data.IterableDataset):
    """Clips of ``length`` frames from corpora streamed, not loaded (corpora larger than disk).

    Videos stream in (shard order shuffled by the seed, per epoch) into a buffer of
    ``buffer_size`` videos. Each clip comes from a video drawn uniformly from the buffer, at a
    uniformly drawn start frame; a video leaves the buffer after ``clips_per_video`` clips and
    the next streamed video takes its place. So clips of one video are spread over the stream,
    and one pass reads each video once.

    Items: ``{"frames": uint8 [T, 3, H, W], "key": str, "start": int, "skipped": int}``, where
    ``skipped`` counts the corrupt videos this worker dropped since its previous item (sum it
    over batches for a total). A corrupt video is dropped from the buffer at its first failed
    clip, logged once with its key and counted in ``stats``/``excluded`` (per worker process).

    Sharding: rank ``r`` of ``world_size`` reads its part of the corpus through
    ``datasets.distributed.split_dataset_by_node`` (whole shards when their number divides by
    ``world_size``, otherwise every ``world_size``-th video), and the DataLoader workers of a
    rank split its shards (datasets' shard-aware iteration: a corpus needs at least
    ranks x workers shards to keep every worker busy). The stream is a pure function of
    ``(seed, epoch, rank, world_size, workers)``; resuming restarts the epoch.

    Args:
        corpora: a streamed corpus (``datasets.IterableDataset``), a folder or Hub repo id
            (opened with ``load_video_corpus(..., streaming=True)``), or a list of them.
        length, stride, size, short_videos, resize, rank, world_size: as for ClipDataset.
        weights: mixture probabilities of several corpora (``datasets.interleave_datasets``);
            default: alternate between them.
        seed: fixes the shard order and every draw.
        buffer_size: videos held at once (memory: their encoded bytes).
        clips_per_video: clips drawn from each streamed video.
        epochs: passes over the stream per iteration (None: endless); ``set_epoch`` sets the
            first one.
    """

    def __init__(
        self,
        corpora: IterableDataset | str | Path | Sequence[IterableDataset | str | Path],
        length: int = 25,
        stride: int = 1,
        size: int | tuple[int, int] = 64,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        buffer_size: int = 64,
        clips_per_video: int = 4,
        short_videos: str = "skip",
        resize: str = "crop",
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = 1,
    ) -> None:
        from datasets import interleave_datasets
        from datasets.distributed import split_dataset_by_node

        check_clip_args(length, stride, short_videos, resize, rank, world_size)
        if buffer_size < 1 or clips_per_video < 1:
            raise ValueError("buffer_size and clips_per_video must be >= 1")
        if isinstance(corpora, (IterableDataset, str, Path)):
            corpora = [corpora]
        streams = [
            c if isinstance(c, IterableDataset) else load_video_corpus(c, streaming=True)
            for c in corpora
        ]
        columns = ["key", "video", "num_frames", "height", "width"]
        streams = [c.select_columns(columns) for c in streams]
        if len(streams) > 1:
            probabilities = None
            if weights is not None:
                w = np.asarray(weights, np.float64)
                if w.shape != (len(streams),) or (w < 0).any() or w.sum() <= 0:
                    raise ValueError(f"weights must be {len(streams)} non-negative numbers")
                probabilities = (w / w.sum()).tolist()
            stream = interleave_datasets(
                streams,
                probabilities,
                seed=seed,
                stopping_strategy="all_exhausted_without_replacement",
            )
        else:
            stream = streams[0]
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        # buffer_size=1: datasets shuffles the shard order only; the clip buffer mixes videos.
        self._stream = stream.shuffle(seed=seed, buffer_size=1)
        self.length, self.stride = length, stride
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.short_videos, self.resize = short_videos, resize
        self.buffer_size, self.clips_per_video = buffer_size, clips_per_video
        self.epochs, self.epoch = epochs, 0
        self.stats = {"clips": 0, "videos": 0, "corrupt_videos": 0, "short_videos": 0}
        self.excluded = SkipReport()

    @property
    def span(self) -> int:
        """Frames a clip covers in its video: (length - 1) * stride + 1."""
        return (self.length - 1) * self.stride + 1

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration starts at (it reshuffles shards and draws)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        epochs = (
            itertools.count(self.epoch)
            if self.epochs is None
            else range(self.epoch, self.epoch + self.epochs)
        )
        for epoch in epochs:
            self._stream.set_epoch(epoch)
            rng = np.random.default_rng([self.seed, epoch, self.rank, worker_id])
            yield from self._clips(iter(self._stream), rng)

    def _clips(self, rows: Iterator[dict], rng: np.random.Generator) -> Iterator[dict]:
        buffer: list[_Buffered] = []
        skipped = 0
        while True:
            while len(buffer) < self.buffer_size and (row := next(rows, None)) is not None:
                self.stats["videos"] += 1
                if self.short_videos == "skip" and row["num_frames"] < self.span:
                    self.stats["short_videos"] += 1
                    self.excluded.add(
                        row["key"], f"too short: {row['num_frames']} < {self.span} frames"
                    )
                    continue
                buffer.append(
                    _Buffered(
                        row["key"], row["video"], int(row["num_frames"]), int(row["height"]),
                        int(row["width"]), self.clips_per_video,
                    )
                )  # fmt: skip
            if not buffer:
                return
            slot = int(rng.integers(len(buffer)))
            video = buffer[slot]
            start = draw_start(rng, video.num_frames, self.span)
            try:
                frames = decode_clip(
                    video.video, video.num_frames, video.height, video.width, start,
                    self.length, self.stride, self.size, self.resize,
                )  # fmt: skip
                video.clips_left -= 1
            except VideoError as e:
                skipped += 1
                self.stats["corrupt_videos"] += 1
                self.excluded.add(video.key, f"corrupt: {e}")
                logger.warning("skipping corrupt video %s: %s", video.key, e)
                video.clips_left = 0
                frames = None
            if video.clips_left == 0:
                buffer[slot] = buffer[-1]
                buffer.pop()
            if frames is None:
                continue
            self.stats["clips"] += 1
            yield {
                "frames": torch.from_numpy(frames),
                "key": video.key,
                "start": start,
                "skipped": skipped,
            }
            skipped = 0


def _open_corpus(corpus: Dataset | str) -> Dataset:
    """A loaded corpus; a folder or repo id that holds none raises a VideoError naming it."""
    if isinstance(corpus, Dataset):
        return corpus
    try:
        return load_video_corpus(corpus)
    except Exception as e:
        # Hub client errors first: the offline one is also a FileNotFoundError.
        message = hub_failure(e, str(corpus), kind="dataset repository")
        if message is None and not isinstance(e, FileNotFoundError):
            raise
        text = message or str(e)
        raise VideoError(text if str(corpus) in text else f"corpus {corpus}: {text}") from None
