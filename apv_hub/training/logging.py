"""What a training run writes for people to read: the trackers' logs (TensorBoard by default,
any of Accelerate's trackers on request), a learning curve as CSV and JSON, and videos.

Every writer here is meant for the main process only; the trainers create them there and pass
``None`` elsewhere.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apv_hub.config_base import ConfigError
from apv_hub.data.video import gif_bytes
from apv_hub.io import write_atomic

TENSORBOARD = "tensorboard"
# Hub-wide project name of the trackers that group runs by project (wandb, mlflow, ...).
PROJECT = "apv-hub"


def tracker_names() -> list[str]:
    """The trackers Accelerate knows by name (installed or not)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def check_tracker_name(name: str) -> None:
    """A ConfigError unless ``name`` is a tracker Accelerate knows or a ``module:Class`` path
    (what a config may name; whether it is installed is checked when the run starts)."""
    if ":" in name:
        module, _, attr = name.partition(":")
        if module and attr.isidentifier():
            return
    elif name in tracker_names():
        return
    raise ConfigError(
        f"log_with: unknown tracker {name!r}; choose from {', '.join(tracker_names())}, or give "
        "module:Class of an accelerate.tracking.GeneralTracker subclass"
    )


def tracker_class(name: str) -> type:
    """The Accelerate tracker class that ``name`` names: one of Accelerate's trackers
    (``tensorboard``, ``wandb``, ``mlflow``, ...) or ``module:Class`` of a ``GeneralTracker``
    subclass. A ConfigError says when it is unknown, not installed or not a tracker."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers

    check_tracker_name(name)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"log_with: cannot import tracker {name!r}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, GeneralTracker)):
            raise ConfigError(
                f"log_with: {name} is not an accelerate.tracking.GeneralTracker subclass"
            )
        return cls
    if name not in {str(t) for t in get_available_trackers()}:
        raise ConfigError(f"log_with: the {name} tracker is not installed (pip install {name})")
    return LOGGER_TYPE_TO_CLASS[name]


class RunLogger:
    """A run's trackers: scalars, text and videos go to each of them.

    ``log_with`` names Accelerate trackers (`tracker_class`). TensorBoard writes its event files
    straight into ``directory`` and hides the events a crashed run wrote from ``purge_step`` on
    (a resumed run's first step), so curves do not double back; trackers that need a folder get
    ``directory``, and wandb also gets the run's name. Non-finite values are logged as they are,
    so a diverging run is visible rather than silently dropped.
    """

    def __init__(
        self,
        directory: str | Path,
        log_with: Sequence[str] = (TENSORBOARD,),
        run_name: str = "run",
        purge_step: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.trackers: list[Any] = []
        for name in log_with:
            cls = tracker_class(name)
            project, kwargs = PROJECT, {}
            if cls.name == TENSORBOARD:
                project, kwargs = "", {"purge_step": purge_step}
            elif cls.name == "wandb":
                kwargs = {"name": run_name, "dir": str(self.directory)}
            if cls.requires_logging_directory:
                self.directory.mkdir(parents=True, exist_ok=True)
                tracker = cls(project, str(self.directory), **kwargs)
            else:
                tracker = cls(project, **kwargs)
            tracker.start()
            self.trackers.append(tracker)
        if config:
            # TensorBoard shows the config as text (`text`); its hyper-parameter writer would
            # add a sub-run to the logs every session.
            flat = {k: v if _is_scalar(v) else json.dumps(v) for k, v in config.items()}
            for tracker in self.trackers:
                if tracker.name != TENSORBOARD:
                    tracker.store_init_configuration(flat)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Write ``metrics`` ({name: number}) at ``step``, each under ``prefix/name``."""
        values = {f"{prefix}/{k}" if prefix else k: float(v) for k, v in metrics.items()}
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        for tracker in self.trackers:
            tracker.log({tag: text}, step=step)

    def video(self, tag: str, frames: np.ndarray, step: int, fps: int = 10) -> None:
        """uint8 frames [T, H, W, 3], through each tracker's own API: an animated image (gif)
        in TensorBoard's Images tab (what ``add_video`` writes, without its moviepy
        dependency), a ``wandb.Video``, the frames as images for other trackers that take
        images, nothing for those that take none."""
        for tracker in self.trackers:
            if tracker.name == TENSORBOARD:
                writer = tracker.tracker
                writer.file_writer.add_summary(_gif_summary(tag, frames, fps), step)
                writer.flush()
            elif tracker.name == "wandb":
                import wandb

                clip = wandb.Video(frames.transpose(0, 3, 1, 2), fps=fps, format="gif")
                tracker.log({tag: clip}, step=step)
            elif hasattr(tracker, "log_images"):
                tracker.log_images({tag: list(frames)}, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _gif_summary(tag: str, frames: np.ndarray, fps: int) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(
        height=frames.shape[1],
        width=frames.shape[2],
        colorspace=3,
        encoded_image_string=gif_bytes(frames, fps),
    )
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


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
