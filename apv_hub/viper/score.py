"""``apv-viper-score``: a video's per-step VIPER rewards, as a plot and a JSON file.

    apv-viper-score runs/viper/model episode.mp4                     # -> episode.viper.png/.json
    apv-viper-score me/viper-dmc walker.mp4 --class walker-walk --out plots/walker.png

The video is decoded whole, its frames scaled so that the short side is the model's frame size
and centre-cropped (as the training clips were), and scored as one episode starting at its first
frame (`VIPERRewardModel.score`). The plot shows the reward of every step: standardised with the
model's statistics of expert videos where it has them (0 is the expert mean; ``--raw`` plots the
log-likelihoods instead). The JSON holds both, per step, and their sums.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apv_hub.cli import command
from apv_hub.config_base import ConfigError
from apv_hub.io import write_atomic, write_json


def video_rewards(
    model: Any, frames: Tensor, cls: str | int | None = None
) -> dict[str, Tensor | None]:
    """Rewards of one episode, uint8 frames [T, C, H, W] -> {"raw": float32 [T], "standardized":
    float32 [T] or None (the model has no statistics for the class)}."""
    raw = model.score(frames[None], cls)[0]
    cls_ids = model.class_tensor(cls, 1)
    slot = 0 if cls_ids is None else int(cls_ids[0])
    has_stats = bool(model.reward_stats()["count"][slot] > 0)
    standardized = model.standardize(raw[None], cls_ids)[0] if has_stats else None
    return {"raw": raw, "standardized": standardized}


def plot_rewards(path: Path, rewards: Sequence[float], title: str, ylabel: str) -> Path:
    """A line plot of per-step rewards, written atomically as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # No display: render to a file.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(range(len(rewards)), rewards, lw=1.2, color="tab:blue")
    axes.axhline(0.0, color="grey", lw=0.6, ls="--")
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apv-viper-score",
        description=__doc__.split("\n\n", 1)[0]
        + ". Writes the plot (PNG) and the rewards (JSON) next to the video, or at --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="VIPERRewardModel: a checkpoint folder or a Hub repo id")
    parser.add_argument("video", help="video file (mp4, webm, avi, mkv)")
    parser.add_argument(
        "--class",
        dest="cls",
        metavar="NAME",
        help="task class of a class-conditional model (one of its class names, or an id)",
    )
    parser.add_argument(
        "--out", metavar="PNG", help="plot path (default: VIDEO.viper.png); JSON beside it"
    )
    parser.add_argument(
        "--raw", action="store_true", help="plot the raw log-likelihoods, not standardised ones"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )
    return parser


@command("apv-viper-score")
def main(argv: Sequence[str] | None = None) -> int:
    """``apv-viper-score MODEL VIDEO``: see ``--help``."""
    from apv_hub.predict import read_clip
    from apv_hub.viper.reward_model import VIPERRewardModel

    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = VIPERRewardModel.from_pretrained(args.model).to(device).eval()
    cls: str | int | None = args.cls
    if cls is not None and cls.isdigit() and cls not in model.config.class_names:
        cls = int(cls)
    try:
        model.class_tensor(cls, 1)
    except ValueError as e:
        raise ConfigError(f"--class: {e}") from None
    video = Path(args.video)
    frames = read_clip(video, model.config.tokenizer.image_size)
    rewards = video_rewards(model, frames, cls)
    png = Path(args.out) if args.out else video.with_suffix(".viper.png")
    standardized = rewards["standardized"]
    plotted = rewards["raw"] if args.raw or standardized is None else standardized
    kind = "raw log-likelihood" if plotted is rewards["raw"] else "standardised reward"
    label = f" ({cls})" if cls is not None else ""
    title = f"VIPER rewards of {video.name}{label}: mean {float(plotted.mean()):.3g}"
    plot_rewards(png, plotted.tolist(), title, kind)
    record = {
        "model": str(args.model),
        "video": str(video),
        "class": cls,
        "frames": len(frames),
        "frame_size": model.config.tokenizer.image_size,
        "likelihood": model.config.likelihood,
        "plotted": kind,
        "raw": rewards["raw"].tolist(),
        "raw_sum": float(rewards["raw"].sum()),
        "standardized": None if standardized is None else standardized.tolist(),
        "standardized_sum": None if standardized is None else float(standardized.sum()),
    }
    json_path = write_json(png.with_suffix(".json"), record)
    if standardized is None and not args.raw:
        print("apv-viper-score: the model has no reward statistics for this class: raw plotted")
    print(f"{len(frames)} steps scored: plot {png}, rewards {json_path}")
    return 0
