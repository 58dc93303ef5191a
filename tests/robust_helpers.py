"""Fixtures for the robustness, Hub-convention and tracker tests: damaged corpora, an
environment whose worker crashes once, and a tracker that records what it is given.

``CrashOnce`` is registered with Gymnasium as ``tests.robust_helpers:CrashOnce-v0`` (see
`CRASH_ENV`), so ``apv_hub.envs.make`` builds it in pool worker processes too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from accelerate.tracking import GeneralTracker

from tests.finetune_helpers import SlideToCenter

CRASH_ENV = "gym/tests.robust_helpers:CrashOnce-v0"


def damage_videos(root: Path, keys: set[str] | None = None) -> list[str]:
    """Overwrite the encoded bytes of the videos ``keys`` (all when None) of a corpus folder
    with random bytes of the same length, as a disk fault after the build would; the rows
    keep claiming their frames. Returns the damaged keys."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    damaged = []
    rng = np.random.default_rng(0)
    for shard in sorted((root / "data").glob("*.parquet")):
        table = pq.read_table(shard)
        videos = table.column("video").to_pylist()
        for i, key in enumerate(table.column("key").to_pylist()):
            if keys is None or key in keys:
                videos[i] = rng.bytes(len(videos[i]))
                damaged.append(key)
        index = table.schema.get_field_index("video")
        field = table.schema.field(index)
        pq.write_table(table.set_column(index, field, pa.array(videos, type=field.type)), shard)
    return damaged


class CrashOnce(SlideToCenter):
    """SlideToCenter whose first worker dies at step ``crash_at`` of its first episode: the
    ``marker`` file records that the crash happened, so a replacement worker runs normally."""

    def __init__(self, marker: str, crash_at: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker, self.crash_at, self.steps = Path(marker), crash_at, 0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        if self.steps == self.crash_at and not self.marker.exists():
            self.marker.write_text("crashed")
            raise RuntimeError("simulated simulator crash")
        return super().step(action)


gym.register("CrashOnce-v0", entry_point=CrashOnce)


class RecordingTracker(GeneralTracker):
    """An Accelerate tracker that appends every call as a JSON line to ``<logs>/record.jsonl``
    (``--log-with tests.robust_helpers:RecordingTracker``)."""

    name = "recording"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str, **kwargs: Any) -> None:
        super().__init__()
        self.path = Path(logging_dir) / "record.jsonl"

    @property
    def tracker(self) -> Path:
        return self.path

    def _write(self, **entry: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def start(self) -> None:
        self._write(call="start")

    def store_init_configuration(self, values: dict) -> None:
        self._write(call="config", values=values)

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self._write(call="log", values=values, step=step)

    def log_images(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        shapes = {k: [list(np.asarray(image).shape) for image in v] for k, v in values.items()}
        self._write(call="images", shapes=shapes, step=step)

    def finish(self) -> None:
        self._write(call="finish")


def stderr_errors(text: str, prog: str) -> list[str]:
    """The lines of ``text`` that a command's error boundary printed (``<prog>: error: ...``)."""
    return [line for line in text.splitlines() if line.startswith(f"{prog}: error:")]
