"""What a training run writes for people to read: TensorBoard scalars, a learning curve as CSV
and JSON, and videos (mp4, H.264 through PyAV).

Every writer here is meant for the main process only; the trainers create them there and pass
``None`` elsewhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


class ScalarLogger:
    """TensorBoard event files under ``directory`` (one run), written by ``log(step, metrics)``.

    Non-finite values are written as they are (TensorBoard shows them), so a diverging run is
    visible rather than silently dropped.
    """

    def __init__(self, directory: str | Path, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step; events the crashed run wrote from that
        step on are hidden, so curves do not double back."""
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is an optional extra

        self.directory = Path(directory)
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Write ``metrics`` ({name: number}) at ``step``, each under ``prefix/name``."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)
        self.writer.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)
        self.writer.flush()

    def video(self, tag: str, frames: np.ndarray, step: int, fps: int = 10) -> None:
        """An animated image (gif) of uint8 frames [T, H, W, 3], shown in TensorBoard's Images
        tab (what ``add_video`` writes, without its moviepy dependency)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(
            height=frames.shape[1],
            width=frames.shape[2],
            colorspace=3,
            encoded_image_string=gif_bytes(frames, fps),
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self.writer._get_file_writer().add_summary(summary, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CurveWriter:
    """A learning curve as rows of numbers, kept as ``<stem>.csv`` and ``<stem>.json``.

    Both files are rewritten atomically after every row, so a crashed run leaves a valid curve
    and a resumed run can restart the curve from the rows saved in its checkpoint. Columns are
    the union of every row's keys, in first-seen order; missing cells are empty (CSV) / absent
    (JSON).
    """

    def __init__(self, directory: str | Path, stem: str = "curve") -> None:
        self.directory = Path(directory)
        self.csv_path = self.directory / f"{stem}.csv"
        self.json_path = self.directory / f"{stem}.json"
        self.rows: list[dict[str, Any]] = []

    def reset(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the curve with ``rows`` (e.g. those restored from a checkpoint) and write it."""
        self.rows = [dict(row) for row in rows]
        self._write()

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self._write()

    def _write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.csv_path, text.getvalue().encode())
        write_atomic(self.json_path, (json.dumps(self.rows, indent=1) + "\n").encode())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_ready(value: Any) -> Any:
    """Numbers as JSON can hold them: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def video_grid(episodes: Sequence[np.ndarray], columns: int = 5, scale: int = 1) -> np.ndarray:
    """Tile episodes side by side into one video.

    episodes: uint8 arrays [T_i, 3, H, W] (channels first, the project's convention); shorter
    episodes hold their last frame. Returns uint8 [max T_i, rows * H * scale,
    columns * W * scale, 3] (channels last, for video writers), with ``scale``-fold nearest
    upsampling.
    """
    if not episodes:
        raise ValueError("video_grid needs at least one episode")
    shapes = {tuple(ep.shape[1:]) for ep in episodes}
    if len(shapes) != 1 or any(ep.ndim != 4 or ep.shape[1] != 3 for ep in episodes):
        raise ValueError(f"episodes must all be uint8 [T, 3, H, W] of one size, got {shapes}")
    columns = max(1, min(columns, len(episodes)))
    rows = math.ceil(len(episodes) / columns)
    length = max(len(ep) for ep in episodes)
    _, height, width = episodes[0].shape[1:]
    grid = np.zeros((length, rows * height, columns * width, 3), np.uint8)
    for i, ep in enumerate(episodes):
        padded = np.concatenate([ep, np.repeat(ep[-1:], length - len(ep), 0)])
        r, c = divmod(i, columns)
        grid[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = padded.transpose(
            0, 2, 3, 1
        )
    if scale > 1:
        grid = grid.repeat(scale, 1).repeat(scale, 2)
    return grid


def write_video(path: str | Path, frames: np.ndarray, fps: int = 20) -> Path:
    """Encode uint8 frames [T, H, W, 3] as an H.264 mp4 (yuv420p) at ``fps``, atomically.

    Odd frame sizes are padded by one black row/column (yuv420p needs even sizes).
    """
    import av  # PyAV: an optional extra (apv-hub[data])

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T > 0, got {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Near-lossless: 64x64 frames are tiny, and blurred details hide what the agent sees.
        stream.options = {"crf": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def gif_bytes(frames: np.ndarray, fps: int = 10) -> bytes:
    """uint8 frames [T, H, W, 3] -> an endlessly looping animated gif."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T > 0, got {frames.shape}")
    images = [Image.fromarray(frame) for frame in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        optimize=False,
    )
    return buf.getvalue()


def write_gif(path: str | Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Write uint8 frames [T, H, W, 3] as an animated gif, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, gif_bytes(frames, fps))
    return path
