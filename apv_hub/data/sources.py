"""Corpus sources stored on disk, each read in its native layout -> SourceItems.

- a folder of video files (mp4 / webm / avi / mkv, recursive): original bytes kept;
- RLBench demonstrations: ``<task>/variation<N>/episodes/episode<M>/<camera>/<i>.png``;
- APV / ContextWM npz episodes: ``*.npz`` with ``image`` [T, H, W, 3] uint8 and optional
  ``reward`` [T] and ``action`` [T, A];
- Something-Something-v2: ``<id>.webm`` files plus a label JSON list of
  ``{id, label, template, placeholders}``, with a reproducible random subset.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apv_hub.data.corpus import SourceItem, VideoRecord
from apv_hub.data.video import VideoError

VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv")
RLBENCH_CAMERAS = (
    "front_rgb",
    "left_shoulder_rgb",
    "overhead_rgb",
    "right_shoulder_rgb",
    "wrist_rgb",
)
# Neither RLBench demonstrations nor npz episodes store a frame rate. RLBench steps its
# simulation every 0.05 s; the fps column only labels the videos (clips index frames).
RLBENCH_FPS = 20.0
NPZ_FPS = 20.0


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise VideoError(f"unreadable file: {e}") from e


def folder_items(
    root: str | Path, source: str = "folder", extensions: Sequence[str] = VIDEO_EXTENSIONS
) -> list[SourceItem]:
    """Every video file under ``root`` (recursive). Key: the relative path; task: its folder."""
    root = Path(root)
    exts = {e.lower().lstrip(".") for e in extensions}
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix[1:].lower() in exts)

    def item(path: Path) -> SourceItem:
        rel = path.relative_to(root)
        task = rel.parent.as_posix() if rel.parent != Path(".") else ""
        return SourceItem(
            key=rel.as_posix(),
            load=lambda: VideoRecord.from_file_bytes(
                rel.as_posix(), _read_bytes(path), path.suffix[1:].lower(), source, task=task
            ),
        )

    return [item(p) for p in paths]


def _numbered(folder: Path, pattern: str) -> list[tuple[int, Path]]:
    """Children whose name matches ``pattern`` (one integer group), sorted by that integer."""
    regex = re.compile(pattern)
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := regex.fullmatch(p.name))]
    return sorted(found)


def _load_png_frames(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    pngs = _numbered(folder, r"(\d+)\.png")
    if not pngs:
        raise VideoError("no frames: no <i>.png files")
    frames = []
    for _, path in pngs:
        try:
            with Image.open(path) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except (OSError, UnidentifiedImageError) as e:
            raise VideoError(f"unreadable frame: {path.name}: {e}") from e
        if frames[-1].shape != frames[0].shape:
            raise VideoError(
                f"frame size changes: {path.name} is {frames[-1].shape[:2]}, "
                f"frame 0 is {frames[0].shape[:2]}"
            )
    return np.stack(frames)


def rlbench_items(
    root: str | Path,
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    tasks: Sequence[str] | None = None,
    fps: float = RLBENCH_FPS,
    crf: int = 15,
) -> list[SourceItem]:
    """One video per (task, variation, episode, camera) of an RLBench dataset folder."""
    root = Path(root)
    unknown = sorted(set(cameras) - set(RLBENCH_CAMERAS))
    if unknown:
        raise ValueError(f"unknown RLBench camera(s) {unknown}; choose from {RLBENCH_CAMERAS}")
    task_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if tasks is not None:
        missing = sorted(set(tasks) - {p.name for p in task_dirs})
        if missing:
            raise FileNotFoundError(f"task folder(s) {missing} not found under {root}")
        task_dirs = [p for p in task_dirs if p.name in set(tasks)]
    items = []
    for task_dir in task_dirs:
        for variation, var_dir in _numbered(task_dir, r"variation(\d+)"):
            episodes_dir = var_dir / "episodes"
            if not episodes_dir.is_dir():
                continue
            for episode, ep_dir in _numbered(episodes_dir, r"episode(\d+)"):
                for camera in cameras:
                    key = f"{task_dir.name}/variation{variation}/episode{episode}/{camera}"
                    items.append(
                        _frames_item(
                            key,
                            ep_dir / camera,
                            fps,
                            crf,
                            "rlbench",
                            task=task_dir.name,
                            camera=camera,
                            episode=episode,
                        )
                    )
    return items


def _frames_item(
    key: str, folder: Path, fps: float, crf: int, source: str, **columns
) -> SourceItem:
    def load() -> VideoRecord:
        if not folder.is_dir():
            raise VideoError(f"missing camera folder: {folder}")
        return VideoRecord.from_frames(
            key, _load_png_frames(folder), fps, source, crf=crf, **columns
        )

    return SourceItem(key=key, load=load)


def npz_items(
    root: str | Path,
    source: str = "npz",
    task: str | None = None,
    fps: float = NPZ_FPS,
    crf: int = 15,
) -> list[SourceItem]:
    """One video per ``*.npz`` episode under ``root`` (recursive), in sorted order.

    ``task`` defaults to each file's folder relative to ``root``; ``episode`` is the file's
    position in sorted order.
    """
    root = Path(root)
    paths = sorted(root.rglob("*.npz"))

    def item(episode: int, path: Path) -> SourceItem:
        rel = path.relative_to(root)
        name = (
            task if task is not None else (rel.parent.as_posix() if rel.parent != Path(".") else "")
        )
        return SourceItem(
            key=rel.as_posix(),
            load=lambda: _load_npz(
                rel.as_posix(), path, fps, crf, source, task=name, episode=episode
            ),
        )

    return [item(i, p) for i, p in enumerate(paths)]


def _load_npz(key: str, path: Path, fps: float, crf: int, source: str, **columns) -> VideoRecord:
    try:
        with np.load(path) as episode:
            data = {k: episode[k] for k in episode.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VideoError(f"unreadable npz: {e}") from e
    if "image" not in data:
        raise VideoError(f"no image key: keys are {sorted(data)}")
    n = len(data["image"])
    per_frame = {}
    for name, key_ in (("rewards", "reward"), ("actions", "action")):
        if key_ in data and len(data[key_]) == n:
            per_frame[name] = np.asarray(data[key_], np.float32)
    if "actions" in per_frame and per_frame["actions"].ndim == 1:
        per_frame["actions"] = per_frame["actions"][:, None]
    return VideoRecord.from_frames(key, data["image"], fps, source, crf=crf, **columns, **per_frame)


def select_ssv2(
    annotations: list[dict],
    count: int | None = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
) -> list[dict]:
    """A reproducible subset of Something-Something-v2 annotations.

    ``labels`` keeps only those classes (the template without brackets, e.g. "Pushing something
    from left to right"); ``count`` then draws that many at random with ``seed``, from the
    entries sorted by id, so the same arguments always give the same videos.
    """
    entries = sorted(annotations, key=lambda a: int(a["id"]))
    if labels is not None:
        wanted = set(labels)
        entries = [a for a in entries if ssv2_class(a) in wanted]
        missing = wanted - {ssv2_class(a) for a in entries}
        if missing:
            raise ValueError(f"no annotation has label(s) {sorted(missing)}")
    if count is not None and count < len(entries):
        picks = np.random.default_rng(seed).choice(len(entries), size=count, replace=False)
        entries = [entries[i] for i in sorted(picks)]
    return entries


def ssv2_class(annotation: dict) -> str:
    """The class name of an annotation: its template without the brackets."""
    return annotation["template"].replace("[", "").replace("]", "")


def ssv2_items(videos: str | Path, annotations: list[dict]) -> list[SourceItem]:
    """One item per annotation: ``<videos>/<id>.webm``, its original bytes kept."""
    videos = Path(videos)

    def item(a: dict) -> SourceItem:
        path = videos / f"{a['id']}.webm"

        def load() -> VideoRecord:
            if not path.is_file():
                raise VideoError(f"missing file: {path}")
            return VideoRecord.from_file_bytes(
                str(a["id"]),
                _read_bytes(path),
                "webm",
                "something-something-v2",
                episode=int(a["id"]),
                label=ssv2_class(a),
            )

        return SourceItem(key=str(a["id"]), load=load)

    return [item(a) for a in annotations]


def read_ssv2_annotations(path: str | Path) -> list[dict]:
    """A Something-Something-v2 label JSON file (a list of {id, label, template, ...})."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not all("id" in a and "template" in a for a in entries):
        raise ValueError(
            f"{path} is not a Something-Something-v2 label list of "
            "{{id, label, template, placeholders}}"
        )
    return entries
