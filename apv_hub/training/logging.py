"""What a training run writes for people to read: TensorBoard scalars, a learning curve as CSV
and JSON, and videos (mp4, H.264 through PyAV).

Every writer here is meant for the main process only; the trainers create them there and pass
``None`` elsewhere.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apv_hub.data.video import gif_bytes
from apv_hub.io import write_atomic


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
