"""The fine-tuning loop per variant: updates/s and env steps/s while training, prefill env
steps/s, peak memory, kernels per update, recompilations.

    PYTHONPATH=$PWD MUJOCO_GL=egl python benchmarks/bench_finetune.py --quick   # CPU, < 1 minute
    PYTHONPATH=$PWD MUJOCO_GL=egl python benchmarks/bench_finetune.py --preset small \\
        --env metaworld/drawer-open-v3 --steps 600 --prefill 500 --threads 2
    PYTHONPATH=$PWD MUJOCO_GL=egl python benchmarks/bench_finetune.py --preset metaworld \\
        --steps 3000 --prefill 1000 --num-envs 4                                 # on a GPU

Each variant (eager fp32, eager bf16, compiled bf16 and, on CUDA, graph-captured bf16) runs the
real loop (``apv_hub.training.finetune.Finetuner``: environment workers, replay, an update every
``train_every`` policy steps; evaluation and checkpoints only at the end) in a fresh process and
reads its own records (``metrics.json``): windows up to the prefill are random-action
collection; the training windows after the first (compilation, allocator growth) give env
steps/s and updates/s. Kernels per update: one loop iteration from one world-model optimiser
step to the next (the update, and the acting between two updates), counted by
``torch.profiler`` (CUDA: device kernels; CPU: outermost aten operator calls). Recompilations:
frames Dynamo compiled after that update began (0 expected). ``--quick``: the tiny preset on a
dm_control task, eager variants.

A random video model of the preset's size stands in for a pre-trained one (speed does not depend
on the weights).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import (
    StepProfiler,
    load_average,
    loop_overrides,
    loop_parser,
    loop_setup,
    machine,
    peak_memory_gib,
    report_loop,
    run_loop_variant,
)

QUICK = {
    "preset": "tiny", "env": "dmc/cartpole-swingup", "steps": 240, "prefill": 60,
    "log_every": 40, "threads": 1,
}  # fmt: skip
PROFILED_UPDATE = 3  # Past the prefill's burst of updates' first compilation.


def run_one(args: argparse.Namespace) -> dict:
    """One variant in this process -> its row."""
    from apv_hub import APVVideoModel
    from apv_hub.training.configs import FinetuneConfig
    from apv_hub.training.finetune import Finetuner

    out = Path(args.out)
    config = FinetuneConfig.preset(args.preset, args.variant, env=args.env)
    APVVideoModel(config.agent.video).save_pretrained(out.parent / f"{out.name}-video")
    config = config.override(
        {
            "pretrained": str(out.parent / f"{out.name}-video"),
            "total_env_steps": args.steps,
            "prefill": args.prefill,
            "pretrain_updates": 1,
            "num_envs": args.num_envs,
            "eval_episodes": 1,
            "log_every": args.log_every,
            "eval_every": 10 * args.steps,
            "checkpoint_every": 10 * args.steps,
            "video": False,
            **loop_overrides(args.one_variant),
        }
    )
    trainer = Finetuner(config, out, progress=False)
    model_opt = trainer.optimizers["model"]
    inner = getattr(model_opt, "optimizer", model_opt)
    profiler = StepProfiler(PROFILED_UPDATE, str(trainer.run.device), lambda o: o is inner)
    trainer.train()
    rows = json.loads((out / "metrics.json").read_text())
    prefill = args.prefill * config.action_repeat
    windows, previous = {"prefill": [], "training": []}, 0
    for row in rows:
        seconds = (row["env_steps"] - previous) / row["perf/env_steps_per_s"]
        phase = "prefill" if row["env_steps"] <= prefill else "training"
        windows[phase].append((row["env_steps"] - previous, seconds, row["perf/updates_per_s"]))
        previous = row["env_steps"]
    timed = windows["training"][1:] or windows["training"]  # The first one compiles.
    steps, seconds = sum(w[0] for w in timed), sum(w[1] for w in timed)
    updates = sum(w[2] * w[1] for w in timed)
    collect = windows["prefill"]
    return {
        "variant": args.one_variant,
        "batch": f"{config.agent.batch_size} x {config.agent.seq_len}",
        "train_every": config.train_every,
        "updates_per_second": round(updates / seconds, 3) if seconds else None,
        "env_steps_per_second": round(steps / seconds, 2) if seconds else None,
        "prefill_env_steps_per_second": (
            round(sum(w[0] for w in collect) / sum(w[1] for w in collect), 2) if collect else None
        ),
        "peak_memory_mib": round(1024 * peak_memory_gib(str(trainer.run.device))),
        "kernels_per_step": profiler.kernels,
        "recompiles": profiler.recompiles() if config.compile else "-",
        "first_window_s": round(windows["training"][0][1], 2) if windows["training"] else None,
        **{k: v for k, v in machine(str(trainer.run.device)).items() if k in ("device", "torch")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = loop_parser(__doc__, QUICK)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "metaworld", "dmc"])
    parser.add_argument("--env", default="metaworld/drawer-open-v3")
    parser.add_argument("--variant", default="apv", help="the agent variant")
    parser.add_argument("--steps", type=int, default=1500, help="total environment steps")
    parser.add_argument("--prefill", type=int, default=500, help="policy steps")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=100, help="env steps per record")
    args = parser.parse_args(argv)
    variants = loop_setup(args, QUICK, run_one)
    if variants is None:
        return
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        rows = [run_variant(args, v, Path(tmp)) for v in variants]
    report_loop(
        rows,
        lambda first: (
            f"Fine-tuning loop, {args.env}, preset {args.preset}, agent {args.variant}, batch "
            f"{first.get('batch')}, an update every {first.get('train_every')} policy steps, "
            f"{args.num_envs} env(s); prefill (random actions) "
            f"{', '.join(str(r.get('prefill_env_steps_per_second')) for r in rows)} env steps/s"
        ),
        before,
        args.json,
    )


def run_variant(args: argparse.Namespace, variant: str, workdir: Path) -> dict:
    """``variant`` in a fresh process -> its row (or the error it ended with)."""
    options = {
        "preset": args.preset, "env": args.env, "variant": args.variant, "steps": args.steps,
        "prefill": args.prefill, "num-envs": args.num_envs, "threads": args.threads,
        "log-every": args.log_every, "out": workdir / variant,
    }  # fmt: skip
    return run_loop_variant(__file__, variant, options, args.threads, args.timeout)


if __name__ == "__main__":
    main()
