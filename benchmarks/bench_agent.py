"""Speed and peak memory of one full APVAgent update (world model + bonus + actor-critic).

    PYTHONPATH=$PWD python benchmarks/bench_agent.py --preset small --device cpu
    PYTHONPATH=$PWD python benchmarks/bench_agent.py --preset metaworld --device cuda

The agent is built on a randomly initialised video model of the preset's size: an update costs
the same whatever the weights. Batches are random uint8 frames of the preset's batch x length.
"""

from __future__ import annotations

import argparse

import torch

from apv_hub.agent import APVAgent, make_optimizers
from apv_hub.config import AGENT_PRESETS, VARIANTS, AgentConfig
from apv_hub.video_model import APVVideoModel
from benchmarks.common import bench_parser, machine, report, time_calls


def random_batch(config: AgentConfig, action_dim: int, device: str) -> dict[str, torch.Tensor]:
    b, t, s = config.batch_size, config.seq_len, config.video.image_size
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    batch = {
        "image": torch.randint(
            0, 256, (b, t, config.video.image_channels, s, s), dtype=torch.uint8
        ),
        "action": torch.rand(b, t, action_dim) * 2 - 1,
        "reward": torch.rand(b, t),
        "is_first": is_first,
        "is_last": torch.zeros(b, t, dtype=torch.bool),
        "is_terminal": torch.zeros(b, t, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    config = AgentConfig.preset(args.preset, args.variant)
    video = APVVideoModel(config.video).to(args.device)
    agent = APVAgent.from_video_model(video, config, args.action_dim)
    optimizers = make_optimizers(agent)
    batch = random_batch(config, args.action_dim, args.device)
    times = time_calls(
        lambda: agent.update(batch, optimizers), args.device, args.warmup, args.updates
    )
    mean = sum(times) / len(times)
    result = {
        "preset": args.preset,
        "variant": args.variant,
        "batch": f"{config.batch_size} x {config.seq_len}",
        "parameters": agent.num_parameters(),
        "seconds_per_update": round(mean, 3),
        "updates_per_second": round(1 / mean, 3),
        "seconds_each": [round(t, 3) for t in times],
        **machine(args.device),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--preset", default="small", choices=sorted(AGENT_PRESETS))
    parser.add_argument("--variant", default="apv", choices=sorted(VARIANTS))
    parser.add_argument("--action-dim", type=int, default=4, help="Meta-world: 4")
    parser.add_argument("--updates", type=int, default=3)
    report(run, parser.parse_args(argv))


if __name__ == "__main__":
    main()
