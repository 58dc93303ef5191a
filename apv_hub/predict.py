"""Open-loop video prediction: the ``predict`` command and the side-by-side video it writes.

A model reads ``context`` frames of a clip through its posterior, then rolls its prior forward
for the rest of the clip without seeing it. The video shows the ground truth on top (white
frames) and, below, the context frames (green) followed by the predicted frames (red)::

    apv-predict runs/sample/model clip.mp4 --out pred.mp4 --context 5
    apv-predict apv/rlbench-99 clip.webm --out pred.mp4 --horizon 20 --start 30
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from apv_hub.cli import command
from apv_hub.config_base import ConfigError
from apv_hub.video_model import APVVideoModel

# Frame colours (RGB) telling what a tile is: ground truth, context seen by the model, prediction.
TRUTH_COLOUR = (255, 255, 255)
CONTEXT_COLOUR = (0, 200, 0)
PREDICTION_COLOUR = (220, 0, 0)


def open_loop(model: APVVideoModel, frames: Tensor, context: int) -> Tensor:
    """uint8 frames [B, T, C, H, W] -> uint8 predictions [B, T - context, C, H, W].

    The model sees ``frames[:, :context]`` and predicts the remaining frames open loop (latent
    modes, no sampling), so the result is deterministic.
    """
    length = frames.shape[1]
    if not 0 < context < length:
        raise ConfigError(f"context must lie in [1, {length - 1}] for clips of {length} frames")
    device = next(model.parameters()).device
    return model.predict(frames[:, :context].to(device), horizon=length - context).cpu()


def prediction_mse(frames: Tensor, predictions: Tensor) -> float:
    """Mean squared error of predictions [B, H', C, H, W] against the last H' of frames
    [B, T, C, H, W], in pixel units scaled to [0, 1]."""
    truth = frames[:, frames.shape[1] - predictions.shape[1] :].float() / 255.0
    return float((predictions.float() / 255.0 - truth).pow(2).mean())


def _framed(frames: np.ndarray, colour: tuple[int, int, int], border: int) -> np.ndarray:
    """uint8 [T, 3, H, W] -> uint8 [T, 3, H + 2 border, W + 2 border] inside a coloured frame."""
    t, c, h, w = frames.shape
    out = np.empty((t, c, h + 2 * border, w + 2 * border), np.uint8)
    out[:] = np.asarray(colour, np.uint8)[None, :, None, None]
    out[:, :, border : border + h, border : border + w] = frames
    return out


def side_by_side(
    frames: Tensor, predictions: Tensor, border: int = 2, scale: int = 1
) -> np.ndarray:
    """Ground truth above context + prediction, one clip per column.

    frames: uint8 [B, T, 3, H, W]; predictions: uint8 [B, T - context, 3, H, W].
    Returns uint8 [T, 2 * (H + 2 border) * scale, B * (W + 2 border) * scale, 3] (channels
    last, what video writers take), ``scale``-fold nearest-neighbour upsampled.
    """
    frames, predictions = frames.cpu().numpy(), predictions.cpu().numpy()
    context = frames.shape[1] - predictions.shape[1]
    columns = []
    for truth, pred in zip(frames, predictions, strict=True):
        top = _framed(truth, TRUTH_COLOUR, border)
        bottom = np.concatenate(
            [
                _framed(truth[:context], CONTEXT_COLOUR, border),
                _framed(pred, PREDICTION_COLOUR, border),
            ]
        )
        columns.append(np.concatenate([top, bottom], axis=2))  # stack along height
    video = np.concatenate(columns, axis=3).transpose(0, 2, 3, 1)  # clips along width
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.ascontiguousarray(video)


def read_clip(path: str | Path, size: int, start: int = 0, length: int | None = None) -> Tensor:
    """Decode frames ``start .. start + length`` of a video file -> uint8 [T, 3, size, size].

    Frames are scaled so that the short side is ``size`` and centre-cropped, as the clip loader
    does for training (``resize="crop"``). ``length=None`` reads to the end of the video.
    """
    from apv_hub.data.video import center_crop, cover_size, decode_frames, open_reader

    if not Path(path).is_file():
        raise ConfigError(f"no video file at {path}")
    data = Path(path).read_bytes()
    reader = open_reader(data)
    total = len(reader)
    height, width = reader[0].shape[:2]
    del reader
    if not 0 <= start < total:
        raise ConfigError(f"{path} has {total} frames; --start {start} is outside it")
    stop = total if length is None else start + length
    if stop > total:
        raise ConfigError(f"{path} has {total} frames; frames {start}..{stop - 1} do not fit")
    frames = decode_frames(data, np.arange(start, stop), *cover_size(height, width, size, size))
    frames = center_crop(frames, size, size)
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))


@dataclass
class Prediction:
    """What ``predict_video`` wrote and measured."""

    video: Path
    gif: Path | None
    frames: int
    context: int
    mse: float


def predict_video(
    model: APVVideoModel | str | Path,
    video: str | Path,
    out: str | Path,
    context: int = 5,
    horizon: int | None = None,
    start: int = 0,
    scale: int = 2,
    fps: int = 10,
    gif: bool = True,
) -> Prediction:
    """Predict a video file open loop and write the side-by-side mp4 (and gif) to ``out``.

    ``model`` is a loaded model, a checkpoint folder or a Hub repo id. ``horizon`` frames are
    predicted after ``context`` frames starting at frame ``start``; None: to the video's end.
    """
    from apv_hub.data.video import write_gif, write_video

    if not isinstance(model, APVVideoModel):
        model = APVVideoModel.from_pretrained(model)
    length = None if horizon is None else context + horizon
    frames = read_clip(video, model.config.image_size, start, length)[None]
    predictions = open_loop(model.eval(), frames, context)
    composed = side_by_side(frames, predictions, scale=scale)
    out = Path(out)
    write_video(out, composed, fps=fps)
    gif_path = write_gif(out.with_suffix(".gif"), composed, fps=fps) if gif else None
    return Prediction(out, gif_path, frames.shape[1], context, prediction_mse(frames, predictions))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apv-predict",
        description="Open-loop video prediction with a pre-trained APV video model: writes the "
        "ground truth above the model's prediction as an mp4 (and a gif).",
    )
    parser.add_argument("checkpoint", help="checkpoint folder (save_pretrained) or Hub repo id")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of the checkpoint")
    parser.add_argument("video", help="video file (mp4, webm, avi, mkv ...)")
    parser.add_argument("--out", default="prediction.mp4", help="output mp4 path")
    parser.add_argument("--context", type=int, default=5, help="frames the model sees")
    parser.add_argument("--horizon", type=int, help="frames to predict (default: to the end)")
    parser.add_argument("--start", type=int, default=0, help="first frame of the clip")
    parser.add_argument("--scale", type=int, default=2, help="upsampling of the output video")
    parser.add_argument("--fps", type=int, default=10, help="frame rate of the output video")
    parser.add_argument("--no-gif", action="store_true", help="write the mp4 only")
    return parser


@command("apv-predict")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = APVVideoModel.from_pretrained(args.checkpoint, revision=args.revision)
    result = predict_video(
        model,
        args.video,
        args.out,
        context=args.context,
        horizon=args.horizon,
        start=args.start,
        scale=args.scale,
        fps=args.fps,
        gif=not args.no_gif,
    )
    predicted = result.frames - result.context
    print(
        f"predicted {predicted} frames after {result.context} context frames "
        f"(open-loop MSE {result.mse:.4f} on [0, 1] pixels)"
    )
    print(f"video: {result.video}" + (f"\ngif:   {result.gif}" if result.gif else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
