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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from apv_hub.data.corpus import load_video_corpus
from apv_hub.data.report import SkipReport
from apv_hub.data.video import VideoError, center_crop, cover_size, decode_frames
from apv_hub.hub import hub_failure

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
        if length < 1 or stride < 1:
            raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
        if short_videos not in ("skip", "pad"):
            raise ValueError(f"short_videos must be 'skip' or 'pad', got {short_videos!r}")
        if resize not in ("crop", "stretch"):
            raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
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
        start = int(rng.integers(max(int(pool.num_frames[pos]) - self.span, 0) + 1))
        return corpus, pos, start

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

    def _decode(self, corpus: int, pos: int, start: int) -> np.ndarray:
        """One clip -> uint8 [T, 3, H, W]."""
        pool = self._pools[corpus]
        row = int(pool.rows[pos])
        n = int(pool.num_frames[pos])
        # Past the end (only with short_videos="pad"): repeat the last frame.
        indices = np.minimum(start + self.stride * np.arange(self.length), n - 1)
        height, width = self._decode_size(int(pool.heights[pos]), int(pool.widths[pos]))
        data = self._videos[corpus][row]["video"]
        frames = decode_frames(data, indices, height, width)
        if frames.shape[0] != self.length:
            raise VideoError(f"decoded {frames.shape[0]} of {self.length} frames")
        frames = center_crop(frames, *self.size)
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))

    def _decode_size(self, height: int, width: int) -> tuple[int, int]:
        """Size to ask the decoder for (-1, -1: native). Crop mode keeps the aspect ratio."""
        out_h, out_w = self.size
        if (height, width) == (out_h, out_w):
            return -1, -1
        if self.resize == "stretch":
            return out_h, out_w
        return cover_size(height, width, out_h, out_w)


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
