"""A decoded uint8 clip cache for pre-training: decord once, then memory-mapped reads.

Decoding a clip costs milliseconds of CPU; a GPU pre-training step costs less, so on-the-fly
decoding would keep the GPU waiting (REFERENCE section 7). `ClipCache` decodes every video a
process may draw from (its shard of the corpora: ``ClipDataset``'s rank and world size) once, at
the clip frame size, into one uint8 file [frames, 3, H, W] that every DataLoader worker maps
read-only; a clip is then a strided slice of it. Items are exactly those decord gives
(``ClipDataset`` draws the same clips and reads them from here instead of decoding).

Folder layout (one subfolder per shard, built by that shard's process)::

    <folder>/rank<r>-of-<w>/frames.u8      uint8 [N, 3, H, W], every video's frames in turn
    <folder>/rank<r>-of-<w>/index.npy      int64 [V, 2]: first frame and frame count of each
                                           video (count -1: the video did not decode)
    <folder>/rank<r>-of-<w>/manifest.json  what the cache was built from, written last

The manifest records the corpora (a digest of every video's key, size, frame count and byte
length), the frame size and resize mode, the clip length, stride and short-video policy, and the
shard. A cache whose manifest is missing (a build that did not finish), differs (another corpus
or clip setting) or whose files do not have the recorded sizes is rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apv_hub.data.video import VideoError
from apv_hub.io import publish, write_json

if TYPE_CHECKING:
    from apv_hub.data.clips import ClipDataset

CACHE_VERSION = 1
FRAMES_FILE, INDEX_FILE, MANIFEST_FILE = "frames.u8", "index.npy", "manifest.json"


class ClipCache:
    """The decoded frames of one shard (see the module doc); `open_or_build` makes one."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.index = np.load(folder / INDEX_FILE)
        self.frame_shape = tuple(manifest["frame_shape"])
        # Offsets of each corpus's videos in the index (its pool positions follow in order).
        self.corpus_offsets = np.cumsum([0, *manifest["videos_per_corpus"]])
        self._frames: np.ndarray | None = None  # Mapped on first read, in each process.

    @classmethod
    def open_or_build(cls, folder: str | Path, clips: ClipDataset, progress: bool = True):
        """The cache of ``clips``'s shard in ``folder``: opened when its manifest matches,
        else (re)built (decoding every video of the shard once)."""
        shard = Path(folder) / f"rank{clips.rank}-of-{clips.world_size}"
        identity = cache_identity(clips)
        manifest = read_manifest(shard)
        if manifest is None or manifest["identity"] != identity or not files_complete(shard):
            manifest = build(shard, clips, identity, progress)
        return cls(shard, manifest)

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = np.memmap(
                self.folder / FRAMES_FILE, np.uint8, "r", shape=(self.num_frames, *self.frame_shape)
            )
        return self._frames

    @property
    def num_frames(self) -> int:
        return int(self.manifest["frames"])

    def clip(self, corpus: int, pos: int, start: int, length: int, stride: int) -> np.ndarray:
        """Video ``pos`` of corpus ``corpus``'s pool: ``length`` frames from ``start``, every
        ``stride``-th (the last frame repeated past the end) -> uint8 [T, 3, H, W]."""
        first, count = (int(v) for v in self.index[self.corpus_offsets[corpus] + pos])
        if count < 0:
            raise VideoError(self.manifest["failures"].get(f"{corpus}/{pos}", "did not decode"))
        indices = np.minimum(start + stride * np.arange(length), count - 1)
        return np.ascontiguousarray(self.frames[first + indices])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers map the file themselves rather than receive a copy of the frames.
        return {**self.__dict__, "_frames": None}


def cache_identity(clips: ClipDataset) -> dict[str, Any]:
    """What a cache's content depends on (its manifest must match it exactly)."""
    corpora = []
    for corpus in range(len(clips.corpora)):
        digest = hashlib.sha256()
        for video in clips.pool_videos(corpus):
            digest.update(json.dumps(video, sort_keys=True).encode())
        corpora.append(digest.hexdigest())
    return {
        "version": CACHE_VERSION,
        "corpora": corpora,
        "size": list(clips.size),
        "resize": clips.resize,
        "length": clips.length,
        "stride": clips.stride,
        "short_videos": clips.short_videos,
        "rank": clips.rank,
        "world_size": clips.world_size,
    }


def read_manifest(shard: Path) -> dict[str, Any] | None:
    try:
        return json.loads((shard / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def files_complete(shard: Path) -> bool:
    """Whether the frame and index files have the sizes the manifest records."""
    manifest = read_manifest(shard)
    try:
        frames_ok = (shard / FRAMES_FILE).stat().st_size == manifest["bytes"]
        index = np.load(shard / INDEX_FILE)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return frames_ok and index.shape == (sum(manifest["videos_per_corpus"]), 2)


def build(shard: Path, clips: ClipDataset, identity: dict[str, Any], progress: bool) -> dict:
    """Decode every video of the shard into ``shard`` (replacing what is there) -> manifest."""
    from tqdm.auto import tqdm

    if shard.exists():
        shutil.rmtree(shard)
    shard.mkdir(parents=True)
    videos = [
        (corpus, pos, video)
        for corpus in range(len(clips.corpora))
        for pos, video in enumerate(clips.pool_videos(corpus))
    ]
    frame_shape = (3, *clips.size)
    total = sum(video["num_frames"] for _, _, video in videos)
    tmp = shard / f".{FRAMES_FILE}.tmp"
    frames = np.memmap(tmp, np.uint8, "w+", shape=(max(total, 1), *frame_shape))
    index = np.full((len(videos), 2), -1, np.int64)
    failures: dict[str, str] = {}
    offset = 0
    bar = tqdm(
        videos, desc=f"decoding the clip cache {shard.name}", unit="video", disable=not progress
    )
    for i, (corpus, pos, _) in enumerate(bar):
        try:
            decoded = clips.decode_video(corpus, pos)
        except VideoError as e:
            failures[f"{corpus}/{pos}"] = f"{clips.video_name(corpus, pos)}: {e}"
            continue
        frames[offset : offset + len(decoded)] = decoded
        index[i] = (offset, len(decoded))
        offset += len(decoded)
    frames.flush()
    del frames
    # Failed videos leave their frames unused: trim the file to what was written.
    size = offset * int(np.prod(frame_shape))
    with open(tmp, "r+b") as f:
        f.truncate(size)
    publish(tmp, shard / FRAMES_FILE)
    np.save(shard / INDEX_FILE, index)
    manifest = {
        "identity": identity,
        "frames": offset,
        "bytes": size,
        "frame_shape": list(frame_shape),
        "videos_per_corpus": [len(clips.pool_videos(c)) for c in range(len(clips.corpora))],
        "failures": failures,
    }
    write_json(shard / MANIFEST_FILE, manifest)  # Last: its presence marks a finished build.
    return manifest
