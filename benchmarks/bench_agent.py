"""One full APVAgent update (world model + bonus + actor-critic) per variant.

    PYTHONPATH=$PWD python benchmarks/bench_agent.py --quick                        # CPU, < 1 min
    PYTHONPATH=$PWD python benchmarks/bench_agent.py --preset metaworld --device cpu \\
        --variants eager_fp32 --batch 16 --length 50 --warmup 1 --updates 2
    PYTHONPATH=$PWD python benchmarks/bench_agent.py --preset metaworld --device cuda \\
        --warmup 10 --updates 50                                                     # on a GPU

Prints a table over the variants eager fp32, eager bf16 (autocast around the whole update, as
the fine-tuning trainer does), compiled fp32 and compiled bf16
(``APVAgent.compile_update``: the world model's loss, imagination with the actor loss, and the
critic loss; backward passes and optimiser steps stay eager):
seconds and updates per second, peak memory (GPU memory allocated on CUDA, the process's peak
resident set on a CPU), kernels per update (``torch.profiler``: device kernels on CUDA,
outermost aten operator calls on a CPU), the first call's time (compilation) and, compiled, the
graphs and graph breaks. Each variant runs in a fresh process.

The agent is built on a randomly initialised video model of the preset's size (an update costs
the same whatever the weights); batches are random uint8 frames of batch x length (default: the
preset's, 50 x 50 for ``metaworld``).
"""

from __future__ import annotations

import argparse

import torch

from apv_hub.agent import APVAgent, make_optimizers
from apv_hub.config import AGENT_PRESETS, AgentConfig
from apv_hub.config import VARIANTS as AGENT_VARIANTS
from apv_hub.video_model import APVVideoModel
from benchmarks.common import VARIANTS, autocast, variant_main, variant_parser, variant_row

QUICK = {"preset": "tiny", "batch": 4, "length": 10, "updates": 2, "warmup": 0}


def random_batch(
    config: AgentConfig, action_dim: int, device: str, batch: int, length: int
) -> dict[str, torch.Tensor]:
    """A replay batch [batch, length, ...] of random frames, actions and rewards."""
    s = config.video.image_size
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    image = torch.randint(0, 256, (batch, length, config.video.image_channels, s, s))
    data = {
        "image": image.to(torch.uint8),
        "action": torch.rand(batch, length, action_dim) * 2 - 1,
        "reward": torch.rand(batch, length),
        "is_first": is_first,
        "is_last": torch.zeros(batch, length, dtype=torch.bool),
        "is_terminal": torch.zeros(batch, length, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in data.items()}


def run(args: argparse.Namespace) -> dict:
    """One variant in this process -> its row."""
    variant = VARIANTS[args.one_variant]
    torch.manual_seed(0)
    config = AgentConfig.preset(args.preset, args.agent_variant)
    batch, length = args.batch or config.batch_size, args.length or config.seq_len
    video = APVVideoModel(config.video).to(args.device)
    agent = APVAgent.from_video_model(video, config, args.action_dim)
    if variant.compiled:
        agent.compile_update()
    optimizers = make_optimizers(agent)
    data = random_batch(config, args.action_dim, args.device, batch, length)

    def update() -> None:
        with autocast(args.device, variant.bf16):
            agent.update(data, optimizers)

    return variant_row(
        args, update, args.updates, preset=args.preset, agent_variant=args.agent_variant,
        batch=f"{batch} x {length}", parameters=agent.num_parameters()["total"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = variant_parser(__doc__, QUICK)
    parser.add_argument("--preset", default="small", choices=sorted(AGENT_PRESETS))
    parser.add_argument("--agent-variant", default="apv", choices=sorted(AGENT_VARIANTS))
    parser.add_argument("--action-dim", type=int, default=4, help="Meta-world: 4")
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's")
    parser.add_argument("--length", type=int, default=None, help="default: the preset's")
    parser.add_argument("--updates", type=int, default=3, help="timed updates")
    variant_main(
        __file__, run, parser.parse_args(argv), QUICK,
        options=("preset", "agent_variant", "action_dim", "batch", "length", "updates"),
        title=lambda row: (
            f"APVAgent update ({row.get('agent_variant')}: world model + bonus + actor-critic), "
            f"preset {row.get('preset')}, batch {row.get('batch')}, "
            f"{row.get('parameters')} parameters"
        ),
        step="update",
    )  # fmt: skip


if __name__ == "__main__":
    main()
