"""Training-step speed and peak memory of APVVideoModel: loss + backward + Adam step.

    PYTHONPATH=$PWD python benchmarks/bench_video_model.py --preset small --device cpu
    PYTHONPATH=$PWD python benchmarks/bench_video_model.py --preset paper --device cuda --bf16

Batches are random uint8 frames of the given batch x length (default: the preset's, 16 x 25 for
``paper``); a step costs the same whatever the frames and weights. Run one preset per process so
that the peak resident memory belongs to that preset alone.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from apv_hub import APVConfig, APVVideoModel
from apv_hub.config import PRESETS
from apv_hub.optim import apply_gradients, make_adam
from benchmarks.common import bench_parser, machine, report, time_calls


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    cfg = APVConfig.preset(args.preset)
    batch, length = args.batch or cfg.batch_size, args.length or cfg.seq_len
    model = APVVideoModel(cfg).to(args.device).train()
    if args.compile:
        model.loss = torch.compile(model.loss)
    opt = make_adam(model.parameters(), cfg.lr, cfg.adam_eps, cfg.weight_decay)
    size = cfg.image_size
    frames = torch.randint(0, 256, (batch, length, 3, size, size), dtype=torch.uint8)
    frames = frames.to(args.device)
    autocast = (
        torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
        if args.bf16
        else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss, _ = model.loss(frames)
        apply_gradients(loss, opt, model.parameters(), cfg.grad_clip)

    times = time_calls(step, args.device, args.warmup, args.steps)
    mean = sum(times) / len(times)
    return {
        "preset": args.preset,
        "batch": f"{batch} x {length}",
        "parameters": model.num_parameters()["total"],
        "bf16": args.bf16,
        "compile": args.compile,
        "seconds_per_step": round(mean, 4),
        "steps_per_second": round(1 / mean, 3),
        "seconds_each": [round(t, 4) for t in times],
        **machine(args.device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's")
    parser.add_argument("--length", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss")
    report(run, parser.parse_args(argv))


if __name__ == "__main__":
    main()
