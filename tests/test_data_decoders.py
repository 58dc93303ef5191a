"""The two decoders, decord (default) and PyAV (fallback), give the same frames and errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from apv_hub.data import video
from apv_hub.data.video import (
    DECODER_ENV,
    VideoError,
    decode_frames,
    decoder_name,
    open_reader,
    probe_video,
)
from tests.data_helpers import CODEC_TOLERANCE, nearest_frames, ramp_frames, write_video

# Mean absolute difference (grey levels) allowed between the two decoders' frames: both run
# FFmpeg's decoders; only the colour conversion and scaler paths differ slightly.
DECODER_TOLERANCE = 1.0


def with_keyframes_every(path: Path, frames: np.ndarray, codec: str, gop: int) -> Path:
    """Encode with a keyframe every ``gop`` frames, so that decoding a batch must seek."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(25))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        stream.codec_context.gop_size = gop
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple[bytes, np.ndarray]]:
    root = tmp_path_factory.mktemp("videos")
    short, long = ramp_frames(30), ramp_frames(120, seed=4)
    # Brightness ramps repeat every 40 frames so that long videos stay within 0..255.
    long = np.concatenate([long[:40]] * 3)
    files = {
        "h264.mp4": (write_video(root / "a.mp4", short), short),
        "vp8.webm": (write_video(root / "b.webm", short, "libvpx"), short),
        "vp9.webm": (write_video(root / "c.webm", short, "libvpx-vp9"), short),
        "odd.mp4": (write_video(root / "d.mp4", ramp_frames(30, 47, 63), pix_fmt="yuv444p"), None),
        "gop8.mp4": (with_keyframes_every(root / "e.mp4", long, "libx264", 8), long),
        "gop8.webm": (with_keyframes_every(root / "f.webm", long, "libvpx", 8), long),
    }
    return {name: (path.read_bytes(), frames) for name, (path, frames) in files.items()}


def decode_with(decoder: str, monkeypatch, *args) -> np.ndarray:
    monkeypatch.setenv(DECODER_ENV, decoder)
    return decode_frames(*args)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", ["h264.mp4", "vp8.webm", "vp9.webm", "odd.mp4"])
@pytest.mark.parametrize("size", [(-1, -1), (32, 40), (100, 90)])
def test_both_decoders_give_the_same_frames_native_and_resized(videos, monkeypatch, name, size):
    data, source = videos[name]
    indices = [29, 3, 17, 17, 0]
    by_decord = decode_with("decord", monkeypatch, data, indices, *size)
    by_pyav = decode_with("pyav", monkeypatch, data, indices, *size)
    assert by_pyav.shape == by_decord.shape and by_pyav.dtype == np.uint8
    if size != (-1, -1):
        assert by_pyav.shape[1:3] == size
    assert mean_abs(by_pyav, by_decord) <= DECODER_TOLERANCE
    if source is not None and size == (-1, -1):
        for frames in (by_decord, by_pyav):
            best, err = nearest_frames(frames, source)
            assert best.tolist() == indices and err.max() <= CODEC_TOLERANCE


@pytest.mark.parametrize("name", ["gop8.mp4", "gop8.webm"])
def test_pyav_seeks_to_the_right_frames_in_long_videos(videos, monkeypatch, name):
    data, source = videos[name]
    rng = np.random.default_rng(0)
    batches = [[97, 3, 50, 50, 119], [8, 9, 10], [0], [119], sorted(rng.choice(120, 25))]
    for indices in batches:
        by_pyav = decode_with("pyav", monkeypatch, data, indices)
        by_decord = decode_with("decord", monkeypatch, data, indices)
        assert mean_abs(by_pyav, by_decord) <= DECODER_TOLERANCE, indices
        # Frames 40 apart repeat the ramp, so the source frame is identified modulo 40.
        best, err = nearest_frames(by_pyav, source[:40])
        assert (best == np.asarray(indices) % 40).all() and err.max() <= CODEC_TOLERANCE


def test_both_decoders_probe_the_same_video_info(videos, monkeypatch):
    for name, (data, _) in videos.items():
        infos = []
        for decoder in ("decord", "pyav"):
            monkeypatch.setenv(DECODER_ENV, decoder)
            infos.append(probe_video(data))
            reader = open_reader(data)
            assert reader[0].shape == (infos[-1].height, infos[-1].width, 3)
        assert infos[0] == infos[1], name


def test_bad_files_give_the_same_kind_of_video_error(videos, monkeypatch):
    data = videos["h264.mp4"][0]
    cases = {
        "random bytes": (np.random.default_rng(0).bytes(5000), "cannot open"),
        "truncated mp4": (data[: len(data) // 2], "cannot open"),
        "empty": (b"", "empty file"),
    }
    for decoder in ("decord", "pyav"):
        monkeypatch.setenv(DECODER_ENV, decoder)
        for bad, reason in cases.values():
            with pytest.raises(VideoError, match=f"^{reason}"):
                probe_video(bad)
            with pytest.raises(VideoError, match=f"^{reason}"):
                decode_frames(bad, [0])
        with pytest.raises(VideoError, match="^cannot decode frames"):
            decode_frames(data, [30])  # past the end


def test_decoder_choice_default_fallback_and_override(monkeypatch):
    monkeypatch.delenv(DECODER_ENV, raising=False)
    assert decoder_name() == "decord"  # installed here: the default
    monkeypatch.setenv(DECODER_ENV, "pyav")
    assert decoder_name() == "pyav"
    monkeypatch.setenv(DECODER_ENV, "opencv")
    with pytest.raises(ValueError, match="APV_HUB_DECODER must be one of"):
        decoder_name()
    # Where decord has no wheel (Apple silicon, Linux arm64) PyAV takes over by itself.
    monkeypatch.setattr(video, "_decord", lambda: None)
    monkeypatch.delenv(DECODER_ENV)
    assert decoder_name() == "pyav"
    monkeypatch.setenv(DECODER_ENV, "decord")
    with pytest.raises(ImportError, match="decord is not installed"):
        decoder_name()


def test_frame_widths_decord_cannot_output_are_decoded_by_pyav(videos, monkeypatch):
    """decord 0.6.0 itself raises for these output sizes of this 48x64 video."""
    data, _ = videos["h264.mp4"]
    monkeypatch.setenv(DECODER_ENV, "decord")
    for size in [(48, 48), (36, 72), (16, 16)]:
        frames = decode_frames(data, [3, 7], *size)
        assert frames.shape == (2, *size, 3)
        assert mean_abs(frames, decode_with("pyav", monkeypatch, data, [3, 7], *size)) == 0
        monkeypatch.setenv(DECODER_ENV, "decord")


def test_clip_loader_reads_the_same_clips_with_either_decoder(monkeypatch):
    from apv_hub.data import ClipDataset, sample_corpus_path

    clips = {}
    for decoder in ("decord", "pyav"):
        monkeypatch.setenv(DECODER_ENV, decoder)
        dataset = ClipDataset(sample_corpus_path(), length=6, size=40, seed=1, num_clips=4)
        clips[decoder] = np.stack([dataset[i]["frames"].numpy() for i in range(4)])
    assert mean_abs(clips["pyav"], clips["decord"]) <= DECODER_TOLERANCE


def test_decord_loads_lazily_after_pyav_so_libvpx_still_encodes(run_python):
    """decord's bundled FFmpeg breaks PyAV's libvpx encoder when it loads first; video.py
    imports decord only on first decode, after av."""
    result = run_python(
        """
import sys
import numpy as np
from apv_hub.data.video import decode_frames, encode_video
assert "decord" not in sys.modules
frames = np.full((4, 32, 32, 3), 100, np.uint8)
decode_frames(encode_video(frames, 10), [0])
assert "decord" in sys.modules
import av, io
with av.open(io.BytesIO(), "w", format="webm") as c:
    s = c.add_stream("libvpx", rate=10)
    s.width = s.height = 32
    s.pix_fmt = "yuv420p"
    for f in frames:
        c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    c.mux(s.encode())
print("ok")
"""
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
