"""Fixture data and helpers for the pre-training and predict tests.

Corpora are built by the real data pipeline (frames -> H.264 mp4 -> parquet corpus), and runs go
through the real command line, in this process or in fresh ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from apv_hub.data import CorpusCard, SourceItem, VideoRecord, build_corpus
from apv_hub.synthetic import moving_squares
from apv_hub.weights import load_tensors

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_squares_corpus(root: Path, num_videos: int = 6, length: int = 30, seed: int = 0) -> Path:
    """A corpus of moving-square videos (64x64, learnable dynamics) written as real mp4s."""
    videos = moving_squares(num_videos, length, size=64, seed=seed).numpy()

    def item(i: int) -> SourceItem:
        frames = videos[i].transpose(0, 2, 3, 1)  # [T, H, W, 3] for the encoder
        return SourceItem(
            f"squares-{i}", lambda: VideoRecord.from_frames(f"squares-{i}", frames, 10, "synthetic")
        )

    card = CorpusCard(pretty_name="moving squares", description="test corpus", command="pytest")
    build_corpus([item(i) for i in range(num_videos)], root, card, progress=False)
    return root


def run_cli(args: list[str], env: dict[str, str] | None = None, launcher: list[str] | None = None):
    """Run ``pretrain.py`` in a fresh interpreter (optionally under a launcher such as torchrun)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [*(launcher or [sys.executable]), str(REPO_ROOT / "pretrain.py"), *args]
    return subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tiny_args(data: Path | str, out: Path, steps: int, *extra: str) -> list[str]:
    """Command-line arguments of a seconds-long run: tiny preset, batch 4 x 8 frames."""
    return [
        "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", str(steps),
        "--batch-size", "4", "--seq-len", "8", "--eval-clips", "2", "--eval-context", "3",
        "--no-progress", *extra,
    ]  # fmt: skip


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Model and optimiser tensors of a checkpoint folder, prefixed by file."""
    model, _ = load_tensors(folder / "model" / "model.safetensors")
    optimizer, _ = load_tensors(folder / "optimizers.safetensors")
    return {**{f"model/{k}": v for k, v in model.items()}, **optimizer}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def learning_rows(run: Path) -> list[dict]:
    """The run's learning curve without the timing columns (which differ between runs)."""
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def frames_of(path: Path) -> np.ndarray:
    """Decode a video file -> uint8 [T, H, W, 3] (decord, as the data pipeline reads videos)."""
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()
