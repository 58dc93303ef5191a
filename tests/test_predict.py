"""The predict command: real video files in, side-by-side open-loop prediction videos out."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from apv_hub import APVConfig, APVVideoModel
from apv_hub.predict import (
    CONTEXT_COLOUR,
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    main,
    prediction_mse,
    read_clip,
    side_by_side,
)
from apv_hub.synthetic import moving_squares
from tests.pretrain_helpers import frames_of

# Mean absolute error (grey levels) an H.264 round trip may add to these frames.
CODEC_TOLERANCE = 6.0
FRAMES = moving_squares(1, 20, size=64, seed=5)[0]  # uint8 [20, 3, 64, 64]


def write_mp4(path: Path, frames: np.ndarray) -> Path:
    """uint8 [T, H, W, 3] -> a real H.264 file (near-lossless)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(10))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "10"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def mean_abs_error(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.fixture
def model(tmp_path) -> tuple[APVVideoModel, Path]:
    torch.manual_seed(0)
    model = APVVideoModel(APVConfig.preset("tiny")).eval()
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_read_clip_decodes_and_centre_crops(tmp_path):
    square = write_mp4(tmp_path / "square.mp4", FRAMES.numpy().transpose(0, 2, 3, 1))
    clip = read_clip(square, 64, start=4, length=6)
    assert clip.shape == (6, 3, 64, 64) and clip.dtype == torch.uint8
    assert mean_abs_error(clip, FRAMES[4:10]) < CODEC_TOLERANCE

    # A wider video (red bars left and right) is cropped back to its centre.
    wide = np.zeros((20, 64, 96, 3), np.uint8)
    wide[..., 0] = 255
    wide[:, :, 16:80] = FRAMES.numpy().transpose(0, 2, 3, 1)
    clip = read_clip(write_mp4(tmp_path / "wide.mp4", wide), 64)
    assert clip.shape == (20, 3, 64, 64)
    assert mean_abs_error(clip, FRAMES) < CODEC_TOLERANCE


def test_side_by_side_layout_marks_context_and_prediction():
    truth = torch.full((2, 6, 3, 8, 8), 50, dtype=torch.uint8)
    pred = torch.full((2, 4, 3, 8, 8), 200, dtype=torch.uint8)
    video = side_by_side(truth, pred, border=1, scale=2)
    assert video.shape == (6, 2 * 10 * 2, 2 * 10 * 2, 3)
    tile = video[:, ::2, ::2]  # undo the 2x upsampling -> [6, 20, 20, 3]
    for column in (0, 10):
        top, bottom = tile[:, :10, column : column + 10], tile[:, 10:, column : column + 10]
        assert (top[:, 1:-1, 1:-1] == 50).all() and (top[:, 0] == TRUTH_COLOUR).all()
        assert (bottom[:2, 1:-1, 1:-1] == 50).all() and (bottom[:2, 0] == CONTEXT_COLOUR).all()
        assert (bottom[2:, 1:-1, 1:-1] == 200).all() and (bottom[2:, 0] == PREDICTION_COLOUR).all()


def test_predict_command_writes_truth_above_prediction(model, tmp_path, capsys):
    model, folder = model
    video = write_mp4(tmp_path / "clip.mp4", FRAMES.numpy().transpose(0, 2, 3, 1))
    out = tmp_path / "pred.mp4"
    assert main([str(folder), str(video), "--out", str(out), "--context", "3", "--horizon", "5",
                 "--start", "2", "--scale", "1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out

    clip = read_clip(video, 64, start=2, length=8)
    expected = model.predict(clip[None, :3], horizon=5)[0]
    frames = frames_of(out)
    assert frames.shape == (8, 2 * 68, 68, 3)
    inner = frames[:, :, 2:66].transpose(0, 3, 1, 2)  # [8, 3, 136, 64]
    top, bottom = inner[:, :, 2:66], inner[:, :, 70:134]
    assert mean_abs_error(top, clip) < CODEC_TOLERANCE
    assert mean_abs_error(bottom[:3], clip[:3]) < CODEC_TOLERANCE
    assert mean_abs_error(bottom[3:], expected) < CODEC_TOLERANCE
    with Image.open(out.with_suffix(".gif")) as gif:
        assert (gif.n_frames, gif.size) == (8, (68, 136))

    mse = prediction_mse(clip[None], expected[None])
    assert f"predicted 5 frames after 3 context frames (open-loop MSE {mse:.4f}" in printed
    assert str(out) in printed


def test_predict_loads_a_repo_id_from_the_hub(model, local_hub, tmp_path):
    model, _ = model
    model.push_to_hub("apv/predict-test")
    video = write_mp4(tmp_path / "clip.mp4", FRAMES.numpy().transpose(0, 2, 3, 1))
    assert main(["apv/predict-test", str(video), "--out", str(tmp_path / "p.mp4"), "--no-gif"]) == 0
    assert frames_of(tmp_path / "p.mp4").shape == (20, 2 * 68 * 2, 68 * 2, 3)
    assert not (tmp_path / "p.gif").exists()


def test_predict_errors_name_the_problem(model, tmp_path, capsys):
    _, folder = model
    video = write_mp4(tmp_path / "clip.mp4", FRAMES.numpy().transpose(0, 2, 3, 1))

    def refused(*args: str) -> str:
        assert main([*args, "--out", str(tmp_path / "x.mp4")]) in (1, 2)
        error = capsys.readouterr().err
        assert error.startswith("apv-predict: error: ") and error.count("\n") == 1
        return error

    assert "has 20 frames; --start 25" in refused(str(folder), str(video), "--start", "25")
    assert "do not fit" in refused(str(folder), str(video), "--horizon", "30")
    assert "context must lie in [1, 19]" in refused(str(folder), str(video), "--context", "20")
    assert "no checkpoint folder" in refused(str(tmp_path / "missing"), str(video))
    assert "no video file at" in refused(str(folder), str(tmp_path / "missing.mp4"))
    assert not (tmp_path / "x.mp4").exists()
