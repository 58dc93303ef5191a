"""Encoding frames to video bytes and files (PyAV, GIF through Pillow) and probing / decoding
video bytes: with decord by default, with PyAV where decord is not installed (it has wheels for
Linux x86-64 and Windows only) or when ``APV_HUB_DECODER=pyav`` is set.

Frames here are numpy uint8 ``[T, H, W, 3]`` (channels last, what encoders and decoders speak);
the clip loader turns them into channels-first tensors at the module edge.
"""

from __future__ import annotations

import functools
import io
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType

# PyAV before decord: decord bundles its own FFmpeg libraries, and when they load first PyAV's
# libvpx encoder fails to open (avcodec_open2 returns EINVAL) in the same process. decord is
# imported lazily (``_decord``), always after this module has imported av.
import av
import numpy as np

from apv_hub.errors import ApvHubError
from apv_hub.io import write_atomic

# Frames are decoded in chunks when a whole video is verified, so memory stays bounded.
_VERIFY_CHUNK = 64


class VideoError(ApvHubError, ValueError):
    """A video (or frame sequence) that cannot be used; the message is the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What a corpus row records about an encoded video."""

    num_frames: int
    fps: float
    height: int
    width: int


def as_rgb_frames(frames: np.ndarray) -> np.ndarray:
    """Any ``[T, H, W]``, ``[T, H, W, 1]``, ``[T, H, W, 3]`` or ``[T, H, W, 4]`` uint8 array
    -> uint8 ``[T, H, W, 3]``: grayscale is repeated, alpha dropped."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise VideoError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise VideoError(f"frames must be [T, H, W(, 1|3|4)], got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise VideoError("no frames")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3])


def encode_video(frames: np.ndarray, fps: float, crf: int = 15, pix_fmt: str = "yuv444p") -> bytes:
    """uint8 frames ``[T, H, W, 3]`` (or grayscale) -> H.264 mp4 bytes.

    ``yuv444p`` keeps full-resolution colour: at 64x64, 4:2:0 chroma subsampling costs about
    three grey levels of mean error against one here, for a similar file size. It also accepts
    odd frame sizes, which 4:2:0 does not.
    """
    frames = as_rgb_frames(frames)
    if pix_fmt == "yuv420p" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise VideoError(f"yuv420p needs even frame sizes, got {frames.shape[1:3]}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _fps_fraction(fps: float) -> Fraction:

    if fps <= 0:
        raise VideoError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


# Which decoder reads videos: "decord" (default where installed) or "pyav".
DECODER_ENV = "APV_HUB_DECODER"
DECODERS = ("decord", "pyav")


@functools.cache
def _decord() -> ModuleType | None:
    """decord, imported on first use (PyAV is loaded by then), or None where not installed."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def decoder_name() -> str:
    """The decoder in use: ``APV_HUB_DECODER`` if set, else decord when installed, else PyAV."""
    choice = os.environ.get(DECODER_ENV, "").strip().lower()
    if choice and choice not in DECODERS:
        raise ValueError(f"{DECODER_ENV} must be one of {list(DECODERS)}, got {choice!r}")
    if choice == "pyav":
        return "pyav"
    if _decord() is None:
        if choice == "decord":
            raise ImportError(
                f"{DECODER_ENV}=decord but decord is not installed (it has wheels for Linux "
                "x86-64 and Windows only); unset it to decode with PyAV"
            )
        return "pyav"
    return "decord"


class _DecordReader:
    """decord's VideoReader behind the reader contract (numpy frames, VideoError)."""

    def __init__(self, data: bytes, height: int, width: int) -> None:
        self._decord = _decord()
        self._data, self._height, self._width = data, height, width
        # decord logs a failed open on stderr with the whole input as the "file name", which
        # puts the bytes of an invalid file on the terminal: what the C code writes to file
        # descriptor 2 during the open is captured instead, and FFmpeg's reason taken from it.
        with tempfile.TemporaryFile() as log:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                self._reader = self._decord.VideoReader(
                    io.BytesIO(data), width=width, height=height, num_threads=1
                )
            except (RuntimeError, self._decord.DECORDError) as e:
                log.seek(0)
                reason = _decoder_reason(log.read()) or _first_line(e)
                raise VideoError(f"cannot open: {reason}") from e
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    def __len__(self) -> int:
        return len(self._reader)

    def get_avg_fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return self._reader.get_batch([int(i) for i in indices]).asnumpy()
        except (RuntimeError, IndexError, self._decord.DECORDError) as e:
            # decord 0.6.0 cannot output some frame widths (e.g. 16, 48, 72: its copy into the
            # output array fails with this check); PyAV decodes those frames instead.
            if "DECORDArrayCopyFromTo" in str(e):
                return _PyAVReader(self._data, self._height, self._width).get_batch(indices)
            raise VideoError(_first_line(e)) from e

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]


class _PyAVReader:
    """PyAV decoding with decord's contract.

    Frame ``i`` is the frame with the i-th smallest timestamp among the video stream's packets,
    which are read once when the reader opens (as decord indexes a video). A batch is decoded
    from the last keyframe at or before its first frame, resized on decode with bilinear
    scaling (what decord's resize gives, within a grey level or so).
    """

    def __init__(self, data: bytes, height: int, width: int) -> None:
        self._data, self._height, self._width = data, height, width
        try:
            with av.open(io.BytesIO(data)) as container:
                if not container.streams.video:
                    raise VideoError("cannot open: no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        except (av.FFmpegError, ValueError, OSError) as e:
            raise VideoError(f"cannot open: {_first_line(e)}") from e
        if not packets:
            raise VideoError("cannot open: no video frames")
        self._fps = float(rate) if rate else float("nan")
        self._count = len(packets)
        # Without timestamps on every packet, frames are counted in decoding order from the start.
        timed = all(pts is not None for pts, _ in packets)
        self._pts = sorted(pts for pts, _ in packets) if timed else None
        self._index = {pts: i for i, pts in enumerate(self._pts or [])}
        self._keyframes = sorted(pts for pts, key in packets if key) if timed else []

    def __len__(self) -> int:
        return self._count

    def get_avg_fps(self) -> float:
        return self._fps

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        wanted = set(indices)
        if not wanted:
            raise VideoError("no frame indices given")
        if min(wanted) < 0 or max(wanted) >= self._count:
            raise VideoError(f"frame index out of range [0, {self._count}): {sorted(wanted)}")
        frames = self._decode(wanted, seek=self._pts is not None)
        if len(frames) < len(wanted) and self._pts is not None:
            frames = self._decode(wanted, seek=False)  # a seek that overshot: from the start
        missing = sorted(wanted - set(frames))
        if missing:
            raise VideoError(f"frames {missing[:5]} of {self._count} did not decode")
        return np.stack([frames[i] for i in indices])

    def _decode(self, wanted: set[int], seek: bool) -> dict[int, np.ndarray]:
        size = {} if self._height < 0 else {"height": self._height, "width": self._width}
        first, last = min(wanted), max(wanted)
        frames: dict[int, np.ndarray] = {}
        try:
            with av.open(io.BytesIO(self._data)) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1
                if seek and self._pts is not None and first > 0:
                    target = self._pts[first]
                    keyframe = max((k for k in self._keyframes if k <= target), default=None)
                    if keyframe is not None and keyframe > self._pts[0]:
                        container.seek(keyframe, stream=stream, backward=True)
                for count, frame in enumerate(container.decode(stream)):
                    index = self._index.get(frame.pts) if self._pts is not None else count
                    if index is None:
                        continue
                    if seek and not frames and index > first:
                        return frames  # landed after the first wanted frame
                    if index in wanted:
                        frames[index] = frame.to_ndarray(format="rgb24", **size)
                    if len(frames) == len(wanted) or (index >= last and self._pts is None):
                        break
        except (av.FFmpegError, ValueError, OSError) as e:
            raise VideoError(f"after {len(frames)} frames: {_first_line(e)}") from e
        return frames


def open_reader(data: bytes, height: int = -1, width: int = -1) -> _DecordReader | _PyAVReader:
    """A reader over encoded bytes (mp4, webm, avi, mkv ...), resized on decode when ``height``
    and ``width`` are given: ``len(reader)`` frames, ``reader.get_batch(indices)`` -> uint8
    ``[N, H, W, 3]``, ``reader.get_avg_fps()``. decord or PyAV (see ``decoder_name``); both
    raise VideoError naming what went wrong."""
    if not data:
        raise VideoError("empty file")
    reader = _DecordReader if decoder_name() == "decord" else _PyAVReader
    return reader(data, height, width)


def decode_frames(
    data: bytes, indices: list[int] | np.ndarray, height: int = -1, width: int = -1
) -> np.ndarray:
    """Decode the frames at ``indices`` -> uint8 ``[len(indices), H, W, 3]``."""
    reader = open_reader(data, height, width)
    try:
        return reader.get_batch(indices)
    except VideoError as e:
        raise VideoError(f"cannot decode frames: {e}") from e


def probe_video(data: bytes) -> VideoInfo:
    """Open and decode every frame of a video -> its VideoInfo; VideoError if any frame fails.

    Decoding everything at build time is what lets the clip loader trust ``num_frames``: a
    truncated file whose container still claims the full length is caught here, not mid-run.
    """
    reader = open_reader(data)
    n = len(reader)
    if n == 0:
        raise VideoError("no frames")
    height = width = 0
    try:
        for start in range(0, n, _VERIFY_CHUNK):
            chunk = reader.get_batch(list(range(start, min(start + _VERIFY_CHUNK, n))))
            height, width = chunk.shape[1], chunk.shape[2]
    except VideoError as e:
        raise VideoError(f"truncated or corrupt after frame {start}: {e}") from e
    fps = float(reader.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoError(f"no usable frame rate ({fps})")
    return VideoInfo(num_frames=n, fps=fps, height=int(height), width=int(width))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _decoder_reason(log: bytes) -> str:
    """FFmpeg's reason in decord's last log line (``... ERROR opening: <input>, <reason>``)."""
    lines = [line for line in log.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return ""
    reason = lines[-1].rsplit(", ", 1)[-1].strip()
    return reason[:200] if reason.isprintable() else ""


def cover_size(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Size to decode a height x width video at so it covers out_h x out_w, aspect kept."""
    scale = max(out_h / height, out_w / width)
    return max(out_h, round(height * scale)), max(out_w, round(width * scale))


def center_crop(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Frames [T, H, W, C] -> their centre [T, out_h, out_w, C]."""
    top, left = (frames.shape[1] - out_h) // 2, (frames.shape[2] - out_w) // 2
    return frames[:, top : top + out_h, left : left + out_w]


def decode_size(height: int, width: int, out_h: int, out_w: int, resize: str) -> tuple[int, int]:
    """Size to ask the decoder for a height x width video that must become out_h x out_w:
    (-1, -1) for the native size; ``crop`` keeps the aspect ratio (cover, then `center_crop`),
    ``stretch`` scales each side."""
    if (height, width) == (out_h, out_w):
        return -1, -1
    if resize == "stretch":
        return out_h, out_w
    return cover_size(height, width, out_h, out_w)


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
    """Encode uint8 frames [T, H, W, 3] as an H.264 mp4 that any player opens (yuv420p), at
    ``fps``, atomically. Odd frame sizes are padded by one black row/column (yuv420p needs even
    sizes); crf 12 is near-lossless, since blurred details at 64x64 hide what the agent sees."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T > 0, got {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, encode_video(frames, fps, crf=12, pix_fmt="yuv420p"))


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
