"""The video corpus: one schema, a resumable parquet writer, the dataset card, loading and push.

A corpus is a folder (locally or as a Hub dataset repo)::

    README.md                    dataset card: YAML front matter + what, how, counts, licence
    data/train-00000.parquet     shards, one row per video (schema: FEATURES)
    data/train-00001.parquet

which ``datasets.load_dataset(folder_or_repo_id)`` reads as it is. Videos are stored as encoded
bytes (H.264 mp4 for frame sources, the original bytes for file sources) and decoded with decord
(or PyAV, see ``video``); datasets' own ``Video`` feature is not used because it decodes with
torchcodec. Corpora too large for the disk are streamed (``load_video_corpus(...,
streaming=True)``) and pushed in resumable batches (``push_corpus_to_hub(..., large=True)``).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, IterableDataset, List, Value

from apv_hub.data.report import SkipReport
from apv_hub.data.video import VideoError, VideoInfo, encode_video, probe_video
from apv_hub.io import file_sha256

FEATURES = Features(
    {
        "key": Value("string"),  # unique within a corpus: what a resumed build checks
        "video": Value("binary"),  # encoded video file bytes
        "format": Value("string"),  # container: mp4, webm, avi, mkv
        "num_frames": Value("int32"),
        "fps": Value("float32"),  # average frame rate for variable-rate files
        "height": Value("int32"),
        "width": Value("int32"),
        "source": Value("string"),  # metaworld, dmc, rlbench, something-something-v2, ...
        "task": Value("string"),  # "" where the source has none
        "camera": Value("string"),  # "" where the source has none
        "episode": Value("int64"),  # -1 where the source has none
        "label": Value("string"),  # class label (Something-Something), "" otherwise
        # Per-frame columns, null where the source has none. actions[t] is the action that led to
        # frame t (zeros at t = 0), rewards[t] the reward received with frame t.
        "actions": List(List(Value("float32"))),
        "rewards": List(Value("float32")),
        "success": List(Value("bool")),
    }
)
METADATA_COLUMNS = ("key", "num_frames", "fps", "height", "width", "source", "task", "camera")
DATA_DIR = "data"
SHARD_GLOB = "train-*.parquet"
CARD_NAME = "README.md"
# Pushes of corpora above this size go through the large-folder path (see push_corpus_to_hub).
LARGE_CORPUS_BYTES = 5 << 30
SHARDS_PER_COMMIT = 50


@dataclass
class VideoRecord:
    """One corpus row before it is written."""

    key: str
    video: bytes
    format: str
    info: VideoInfo
    source: str
    task: str = ""
    camera: str = ""
    episode: int = -1
    label: str = ""
    actions: np.ndarray | None = None  # float32 [T, A]
    rewards: np.ndarray | None = None  # float32 [T]
    success: np.ndarray | None = None  # bool [T]

    def __post_init__(self) -> None:
        for name in ("actions", "rewards", "success"):
            value = getattr(self, name)
            if value is not None and len(value) != self.info.num_frames:
                raise VideoError(
                    f"per-frame column {name} has {len(value)} entries for "
                    f"{self.info.num_frames} frames"
                )

    @classmethod
    def from_frames(
        cls, key: str, frames: np.ndarray, fps: float, source: str, crf: int = 15, **columns
    ) -> VideoRecord:
        """Encode uint8 frames ``[T, H, W, 3]`` (or grayscale) to mp4 and describe them."""
        data = encode_video(frames, fps, crf=crf)
        info = probe_video(data)
        if info.num_frames != len(frames):
            raise VideoError(f"encoder wrote {info.num_frames} frames of {len(frames)}")
        return cls(key=key, video=data, format="mp4", info=info, source=source, **columns)

    @classmethod
    def from_file_bytes(
        cls, key: str, data: bytes, format: str, source: str, **columns
    ) -> VideoRecord:
        """Keep an encoded file's bytes as they are, after decoding every frame once."""
        info = probe_video(data)
        return cls(key=key, video=data, format=format, info=info, source=source, **columns)

    def to_row(self) -> dict:
        def listed(x: np.ndarray | None) -> list | None:
            return None if x is None else np.asarray(x).tolist()

        return {
            "key": self.key,
            "video": self.video,
            "format": self.format,
            "num_frames": self.info.num_frames,
            "fps": self.info.fps,
            "height": self.info.height,
            "width": self.info.width,
            "source": self.source,
            "task": self.task,
            "camera": self.camera,
            "episode": int(self.episode),
            "label": self.label,
            "actions": listed(None if self.actions is None else self.actions.astype(np.float32)),
            "rewards": listed(None if self.rewards is None else self.rewards.astype(np.float32)),
            "success": listed(None if self.success is None else self.success.astype(bool)),
        }


@dataclass
class SourceItem:
    """One video a builder may produce: its key and a loader that makes the record.

    ``load`` raises VideoError (with the reason) for an item that must be skipped.
    """

    key: str
    load: Callable[[], VideoRecord]


@dataclass
class CorpusCard:
    """What a dataset card says besides the counts it computes from the shards."""

    pretty_name: str
    description: str  # what the source is
    command: str = field(default_factory=lambda: "python " + shlex.join(sys.argv))
    license: str = "other"  # a Hub licence id
    license_note: str = ""
    tags: Sequence[str] = ("apv", "video", "world-model", "reinforcement-learning")
    # Hub task categories: what the corpus serves (action-free pre-training for control).
    task_categories: Sequence[str] = ("reinforcement-learning", "robotics")


@dataclass
class BuildResult:
    root: Path
    added: int
    already_present: int
    skipped: SkipReport

    def summary(self) -> str:
        return (
            f"{self.root}: {self.added} videos added, {self.already_present} already present\n"
            + self.skipped.summary()
        )


def shard_paths(root: str | Path) -> list[Path]:
    return sorted((Path(root) / DATA_DIR).glob(SHARD_GLOB))


class CorpusWriter:
    """Appends rows to a corpus folder in parquet shards, resumably.

    A shard is written to a temporary file and renamed into place, so a folder only ever holds
    complete shards; keys already in the folder are reported by ``existing_keys`` so a re-run
    skips them. An interrupted build loses at most the rows of the shard it was filling.
    """

    def __init__(self, root: str | Path, shard_videos: int = 200, shard_bytes: int = 256 << 20):
        self.root = Path(root)
        self.shard_videos = shard_videos
        self.shard_bytes = shard_bytes
        (self.root / DATA_DIR).mkdir(parents=True, exist_ok=True)
        for stale in (self.root / DATA_DIR).glob("*.tmp"):
            stale.unlink()
        self.existing_keys = set(_read_columns(self.root, ["key"])["key"])
        self._rows: list[dict] = []
        self._bytes = 0
        self._next_shard = len(shard_paths(self.root))

    def add(self, record: VideoRecord) -> None:
        if record.key in self.existing_keys:
            raise ValueError(f"key {record.key!r} is already in {self.root}")
        self._rows.append(record.to_row())
        self.existing_keys.add(record.key)
        self._bytes += len(record.video)
        if len(self._rows) >= self.shard_videos or self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        # Never overwrite: a name taken since this writer started (another run) moves us on.
        while (path := self.root / DATA_DIR / f"train-{self._next_shard:05d}.parquet").exists():
            self._next_shard += 1
        tmp = path.with_suffix(".tmp")
        Dataset.from_list(self._rows, features=FEATURES).to_parquet(str(tmp))
        os.replace(tmp, path)
        self._next_shard += 1
        self._rows, self._bytes = [], 0


def build_corpus(
    items: Sequence[SourceItem],
    root: str | Path,
    card: CorpusCard,
    min_frames: int = 1,
    shard_videos: int = 200,
    progress: bool = True,
) -> BuildResult:
    """Run every item not yet in ``root``, write the rows and the dataset card.

    Items that raise VideoError, or have fewer than ``min_frames`` frames, are skipped and
    counted; the summary (also in the card) lists each reason once. Keys must be unique.
    """
    from tqdm.auto import tqdm

    keys = Counter(item.key for item in items)
    duplicated = [k for k, n in keys.items() if n > 1]
    if duplicated:
        raise ValueError(f"duplicate item keys: {duplicated[:5]}")
    writer = CorpusWriter(root, shard_videos=shard_videos)
    todo = [item for item in items if item.key not in writer.existing_keys]
    skipped = SkipReport()
    added = 0
    try:
        for item in tqdm(todo, desc=f"building {Path(root).name}", disable=not progress):
            try:
                record = item.load()
                if record.info.num_frames < min_frames:
                    raise VideoError(f"too short: {record.info.num_frames} < {min_frames} frames")
            except VideoError as e:
                skipped.add(item.key, str(e))
                continue
            writer.add(record)
            added += 1
    finally:
        # Also on Ctrl-C: what was built so far is kept for the re-run.
        writer.flush()
    write_card(root, card, skipped)
    return BuildResult(Path(root), added, len(items) - len(todo), skipped)


def _read_columns(root: str | Path, columns: list[str]) -> dict[str, list]:
    import pyarrow.parquet as pq

    out: dict[str, list] = {c: [] for c in columns}
    for path in shard_paths(root):
        table = pq.read_table(path, columns=columns)
        for c in columns:
            out[c].extend(table.column(c).to_pylist())
    return out


def _counts_table(title: str, counts: Counter, limit: int = 30) -> str:
    rows = [f"| {name or '(none)'} | {n} |" for name, n in counts.most_common(limit)]
    more = f"\n\n... and {len(counts) - limit} more." if len(counts) > limit else ""
    return f"| {title} | videos |\n|---|---|\n" + "\n".join(rows) + more


def write_card(root: str | Path, card: CorpusCard, skipped: SkipReport | None = None) -> Path:
    """Write ``README.md`` with YAML front matter and counts read from the shards."""
    cols = _read_columns(root, list(METADATA_COLUMNS))
    n = len(cols["key"])
    frames = int(sum(cols["num_frames"]))
    sizes = Counter(f"{h}x{w}" for h, w in zip(cols["height"], cols["width"], strict=True))
    fps = sorted(set(round(f, 2) for f in cols["fps"]))
    tags = "\n".join(f"- {t}" for t in card.tags)
    categories = "\n".join(f"- {t}" for t in card.task_categories)
    skip_text = skipped.summary() if skipped is not None else "not recorded"
    fps_text = f"{fps[0]} to {fps[-1]}" if len(fps) > 1 else (str(fps[0]) if fps else "-")
    text = f"""---
pretty_name: {card.pretty_name}
license: {card.license}
task_categories:
{categories}
tags:
{tags}
size_categories:
- {_size_category(n)}
configs:
- config_name: default
  data_files:
  - split: train
    path: {DATA_DIR}/{SHARD_GLOB}
---

# {card.pretty_name}

A video corpus for action-free pre-training (APV, Seo et al., ICML 2022), in the apv-hub corpus
schema: one row per video, the encoded file in the `video` column (decode it with
`decord.VideoReader(io.BytesIO(row["video"]))`), frame count, fps, size and provenance columns.

## Source

{card.description}

## How it was built

```bash
{card.command}
```

## Counts

- Videos: {n}
- Frames: {frames}
- Frame sizes (HxW): {", ".join(f"{s} ({c})" for s, c in sizes.most_common(10)) or "-"}
- Frame rate: {fps_text}
- Skipped in the last build run: {skip_text}

{_counts_table("source", Counter(cols["source"]))}

{_counts_table("task", Counter(cols["task"]))}

{_counts_table("camera", Counter(cols["camera"]))}

## Licence

{card.license_note or "See the licence of the source."}

## Usage

```python
from apv_hub.data import ClipDataset, load_video_corpus

corpus = load_video_corpus("path/or/repo_id")
clips = ClipDataset(corpus, length=25, size=64, seed=0)
clips[0]["frames"]  # uint8 [25, 3, 64, 64]
```
"""
    path = Path(root) / CARD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]
    return next((name for bound, name in bounds if n < bound), "100K<n<1M")


def load_video_corpus(
    name_or_path: str | Path,
    revision: str | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """A corpus folder, or a Hub dataset repo id, -> a ``datasets.Dataset`` (one row per video).

    Hub repos are downloaded with ``snapshot_download`` (card and shards only) and read like a
    local folder, so the result is the same memory-mapped dataset either way.

    ``streaming=True`` is for corpora that do not fit on disk: nothing is downloaded up front;
    the result is a ``datasets.IterableDataset`` that reads the parquet shards (of the folder, or
    of the repo over HTTP) as it is iterated. ``StreamingClipDataset`` draws clips from it.
    """
    path = Path(name_or_path)
    if not path.is_dir() and (path.exists() or str(name_or_path).count("/") != 1):
        raise FileNotFoundError(f"{name_or_path} is neither a corpus folder nor a repo id")
    if streaming:
        from datasets import load_dataset

        if path.is_dir():
            files = shard_paths(path)
            if not files:
                raise FileNotFoundError(f"{path} holds no {DATA_DIR}/{SHARD_GLOB} shards")
            source, data_files = "parquet", {"train": [str(f) for f in files]}
        else:
            source, data_files = str(name_or_path), {"train": f"{DATA_DIR}/{SHARD_GLOB}"}
        return load_dataset(
            source,
            data_files=data_files,
            split="train",
            streaming=True,
            features=FEATURES,
            revision=revision,
            cache_dir=cache_dir,
        )
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                str(name_or_path),
                repo_type="dataset",
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=[CARD_NAME, f"{DATA_DIR}/*.parquet"],
            )
        )
    files = shard_paths(path)
    if not files:
        raise FileNotFoundError(f"{path} holds no {DATA_DIR}/{SHARD_GLOB} shards")
    corpus = Dataset.from_parquet([str(f) for f in files], features=FEATURES, cache_dir=cache_dir)
    return corpus


def push_corpus_to_hub(
    root: str | Path,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload video corpus",
    revision: str | None = None,
    large: bool | None = None,
    shards_per_commit: int = SHARDS_PER_COMMIT,
) -> str:
    """Upload a corpus folder (card + shards) to a Hub dataset repo -> the URL of the (last)
    commit (of the repo where ``upload_large_folder`` made them).

    ``revision``: a branch, created if missing. ``large`` (default: above LARGE_CORPUS_BYTES)
    pushes through the client's large-folder path: ``upload_large_folder`` (huggingface_hub
    1.x), else ``upload_folder`` when hf_xet is usable (2.x: batched commits that resume), else
    shards in commits of ``shards_per_commit``, skipping those already in the repo with the same
    SHA-256, so a re-run after an interruption uploads only what is missing; the card comes last.
    """
    from huggingface_hub import HfApi

    root = Path(root)
    shards = shard_paths(root)
    if not shards:
        raise FileNotFoundError(f"{root} holds no {DATA_DIR}/{SHARD_GLOB} shards to push")
    if large is None:
        large = sum(f.stat().st_size for f in shards) >= LARGE_CORPUS_BYTES
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    patterns = [CARD_NAME, f"{DATA_DIR}/*.parquet"]
    if large and hasattr(api, "upload_large_folder"):  # huggingface_hub 1.x
        api.upload_large_folder(
            repo_id=repo_id, folder_path=str(root), repo_type="dataset", revision=revision,
            private=private, allow_patterns=patterns,
        )  # fmt: skip
        return str(url)
    if large and not _xet_usable():
        return _push_in_batches(api, root, repo_id, revision, commit_message, shards_per_commit)
    return str(
        api.upload_folder(
            folder_path=str(root), repo_id=repo_id, repo_type="dataset", revision=revision,
            allow_patterns=patterns, commit_message=commit_message,
        )
    )  # fmt: skip


def _xet_usable() -> bool:
    """Whether huggingface_hub uploads through hf_xet (installed and not disabled)."""
    import importlib.util

    from huggingface_hub import constants

    return importlib.util.find_spec("hf_xet") is not None and not constants.HF_HUB_DISABLE_XET


def _push_in_batches(
    api: Any, root: Path, repo_id: str, revision: str | None, message: str, per_commit: int
) -> str:
    """Shards missing from the repo (by SHA-256) in commits of ``per_commit``, then the card."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import EntryNotFoundError
    from tqdm.auto import tqdm

    try:
        listed = api.list_repo_tree(
            repo_id, path_in_repo=DATA_DIR, repo_type="dataset", revision=revision
        )
        remote = {f.path: f.lfs.sha256 for f in listed if getattr(f, "lfs", None)}
    except EntryNotFoundError:
        remote = {}
    todo = [
        path
        for path in tqdm(shard_paths(root), desc="checking shards", leave=False)
        if remote.get(f"{DATA_DIR}/{path.name}") != file_sha256(path)
    ]
    batches = [todo[i : i + per_commit] for i in range(0, len(todo), per_commit)]
    for i, batch in enumerate(tqdm(batches, desc=f"pushing {repo_id}", unit="commit")):
        api.create_commit(
            repo_id,
            repo_type="dataset",
            revision=revision,
            operations=[CommitOperationAdd(f"{DATA_DIR}/{p.name}", str(p)) for p in batch],
            commit_message=f"{message} (shards, part {i + 1} of {len(batches)})",
        )
    card = api.create_commit(
        repo_id,
        repo_type="dataset",
        revision=revision,
        operations=[CommitOperationAdd(CARD_NAME, str(root / CARD_NAME))],
        commit_message=f"{message} (card)",
    )
    return str(card)


def sample_corpus_path() -> Path:
    """The small Meta-world corpus shipped inside the package (see its README.md)."""
    return Path(__file__).parent / "sample"
