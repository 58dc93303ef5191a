"""Throughput of the whole fine-tuning loop: environment steps per second, prefill and training.

Runs `apv_hub.training.finetune` for real (environment workers, replay, agent updates every
``train_every`` policy steps, evaluation and checkpoints only at the end) and reads the loop's
own ``perf/env_steps_per_s`` records (``metrics.json`` of the run): the windows up to the
prefill are random-action collection, the later ones collection + training.

    PYTHONPATH=$PWD MUJOCO_GL=egl python benchmarks/bench_finetune.py --preset small \
        --env metaworld/drawer-open-v3 --steps 600 --prefill 500 --threads 2

A random `small`/`tiny` video model of the preset's size stands in for a pre-trained one (speed
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from apv_hub import APVVideoModel
from apv_hub.training.configs import FinetuneConfig
from apv_hub.training.finetune import finetune


def read_perf(run: Path) -> list[tuple[int, float]]:
    rows = json.loads((run / "metrics.json").read_text())
    return [(row["env_steps"], row["perf/env_steps_per_s"]) for row in rows]


def phase_rates(perf: list[tuple[int, float]], prefill_env_steps: int) -> dict[str, float]:
    """Env steps/s of collection alone (windows ending at or before the prefill) and of
    collection + training (the later ones); each record covers (previous record, step]."""
    totals = {"prefill": [0, 0.0], "training": [0, 0.0]}
    previous = 0
    for step, rate in perf:
        phase = "prefill" if step <= prefill_env_steps else "training"
        totals[phase][0] += step - previous
        totals[phase][1] += (step - previous) / rate
        previous = step
    return {
        f"{phase}_env_steps_per_s": round(steps / seconds, 3)
        for phase, (steps, seconds) in totals.items()
        if seconds
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "metaworld"])
    parser.add_argument("--env", default="metaworld/drawer-open-v3")
    parser.add_argument("--variant", default="apv")
    parser.add_argument("--steps", type=int, default=1500, help="total environment steps")
    parser.add_argument("--prefill", type=int, default=500)
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50, help="env steps per perf record")
    parser.add_argument("--eval-episodes", type=int, default=1, help="of the final evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = FinetuneConfig.preset(args.preset, args.variant, env=args.env)
        video = APVVideoModel(config.agent.video)
        video.save_pretrained(tmp / "video")
        config = config.override(
            {
                "pretrained": str(tmp / "video"),
                "total_env_steps": args.steps,
                "prefill": args.prefill,
                "pretrain_updates": 1,
                "num_envs": args.num_envs,
                "eval_episodes": args.eval_episodes,
                "log_every": args.log_every,
                "eval_every": 10 * args.steps,
                "checkpoint_every": 10 * args.steps,
            }
        )
        start = time.perf_counter()
        finetune(config, tmp / "run")
        total = time.perf_counter() - start
        perf = read_perf(tmp / "run")
    cfg = config.agent
    result = {
        "preset": args.preset,
        "env": args.env,
        "variant": config.variant,
        "num_envs": args.num_envs,
        "batch": f"{cfg.batch_size} x {cfg.seq_len}",
        "train_every": config.train_every,
        "threads": args.threads,
        "env_steps": args.steps,
        **phase_rates(perf, args.prefill * config.action_repeat),
        "wall_s_including_final_eval_and_checkpoint": round(total, 1),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
