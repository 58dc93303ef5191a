"""Fixture data for the data tests: real encoded video files, PNG folders and npz episodes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Largest mean absolute error (grey levels) a decoded frame may have against its source frame.
CODEC_TOLERANCE = 4.0


def ramp_frames(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3] frames that codecs keep well (smooth colour ramps) and that differ
    clearly from one frame to the next (brightness steps of 6), so a wrong frame is detected."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    colour = rng.uniform(0.2, 1.0, size=3)[None, None, None]
    return np.clip(20 + 6 * t + (0.5 * x + 0.4 * y) * colour, 0, 255).astype(np.uint8)


def write_video(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 10,
    pts_ms: list[int] | None = None,
) -> Path:
    """Encode uint8 [T, H, W, 3] frames to ``path`` with PyAV; ``pts_ms`` makes variable fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        # High enough that every codec keeps frames within CODEC_TOLERANCE of the source.
        stream.bit_rate = 4_000_000
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts_ms is not None:
                video_frame.pts, video_frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def write_png_folder(folder: Path, frames: np.ndarray, mode: str = "RGB") -> Path:
    """RLBench's layout for one camera: ``<i>.png`` per frame (``mode="L"``: grayscale)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).convert(mode).save(folder / f"{i}.png")
    return folder


def nearest_frames(decoded: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each decoded frame, the index of the closest source frame and the error to it.

    decoded [N, H, W, 3], source [T, H, W, 3] -> (indices [N], mean abs errors [N]).
    """
    err = np.abs(decoded[:, None].astype(np.int16) - source[None].astype(np.int16))
    err = err.mean(axis=(2, 3, 4))
    best = err.argmin(axis=1)
    return best, err[np.arange(len(decoded)), best]
