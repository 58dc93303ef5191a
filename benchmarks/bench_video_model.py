"""One APVVideoModel pre-training step (loss + backward + clipping + Adam) per variant.

    PYTHONPATH=$PWD python benchmarks/bench_video_model.py --quick                  # CPU, < 1 min
    PYTHONPATH=$PWD python benchmarks/bench_video_model.py --preset paper --device cpu \\
        --variants eager_fp32 --warmup 1 --steps 3
    PYTHONPATH=$PWD python benchmarks/bench_video_model.py --preset paper --device cuda \\
        --warmup 10 --steps 50                                                       # on a GPU

Prints a table over the variants eager fp32, eager bf16 (autocast), compiled fp32 and compiled
bf16 (``torch.compile`` of ``APVVideoModel.loss``; backward and the optimiser step stay eager):
seconds and steps per second, peak memory (GPU memory allocated on CUDA, the process's peak
resident set on a CPU), kernels per step (``torch.profiler``: device kernels on CUDA, outermost
aten operator calls on a CPU), the first call's time (compilation) and, compiled, the graphs and
graph breaks. Each variant runs in a fresh process. Batches are random uint8 frames of batch x
length (default: the preset's, 16 x 25 for ``paper``): a step costs the same whatever the frames
and weights.
"""

from __future__ import annotations

import argparse

import torch

from apv_hub import APVConfig, APVVideoModel
from apv_hub.compilation import compile_step
from apv_hub.optim import apply_gradients, make_adam
from benchmarks.common import VARIANTS, autocast, variant_main, variant_parser, variant_row

QUICK = {"preset": "tiny", "batch": 4, "length": 10, "steps": 2, "warmup": 0}


def run(args: argparse.Namespace) -> dict:
    """One variant in this process -> its row."""
    variant = VARIANTS[args.one_variant]
    torch.manual_seed(0)
    cfg = APVConfig.preset(args.preset)
    batch, length = args.batch or cfg.batch_size, args.length or cfg.seq_len
    model = APVVideoModel(cfg).to(args.device).train()
    loss_fn = compile_step(model.loss) if variant.compiled else model.loss
    opt = make_adam(model.parameters(), cfg.lr, cfg.adam_eps, cfg.weight_decay)
    size = cfg.image_size
    frames = torch.randint(0, 256, (batch, length, 3, size, size), dtype=torch.uint8)
    frames = frames.to(args.device)

    def step() -> None:
        with autocast(args.device, variant.bf16):
            loss, _ = loss_fn(frames)
        apply_gradients(loss, opt, model.parameters(), cfg.grad_clip)

    return variant_row(
        args, step, args.steps, preset=args.preset, batch=f"{batch} x {length}",
        parameters=model.num_parameters()["total"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = variant_parser(__doc__, QUICK)
    parser.add_argument("--preset", default="small", choices=sorted(APVConfig.PRESETS))
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's")
    parser.add_argument("--length", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    variant_main(
        __file__, run, parser.parse_args(argv), QUICK,
        options=("preset", "batch", "length", "steps"),
        title=lambda row: (
            "APVVideoModel pre-training step (loss + backward + clipping + Adam), preset "
            f"{row.get('preset')}, batch {row.get('batch')}, {row.get('parameters')} parameters"
        ),
        step="step",
    )  # fmt: skip


if __name__ == "__main__":
    main()
