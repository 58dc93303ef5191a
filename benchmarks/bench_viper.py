"""VIPER speed: tokenizer and prior training steps/s, reward scoring throughput (frames/s).

    PYTHONPATH=$PWD python benchmarks/bench_viper.py --presets tiny dmc --quick --device cpu
    PYTHONPATH=$PWD python benchmarks/bench_viper.py --presets dmc atari --device cuda --warmup 3
    PYTHONPATH=$PWD python benchmarks/bench_viper.py --presets tiny --quick --trainer-steps 8

One tokenizer step = ``VQTokenizer.loss`` on a batch of random uint8 frames + backward + AdamW;
one prior step = ``VideoPrior.loss`` on a batch of random token windows (the preset's frames)
+ backward + Adam; both at the preset's batch sizes (``--quick``: 2 frames and 1 window, one
timed step, for a CPU). Scoring, in eval mode without gradient: "steady" = what ``score`` spends
per step past an episode's start (one frame through the tokenizer, one full window through the
prior with the head on its last frame), timed on a batch of such steps; "episodes" (not with
``--quick``) = ``VIPERRewardModel.score`` end to end on a batch of episodes, episode starts
included. Frames/s counts scored steps. Costs do not depend on the values of frames or weights.
``--trainer-steps N``: also the whole trainer (`apv_hub.training.viper`, clip decoding from
``--data`` with ``--num-workers`` processes, k-means init, dead-code restarts, EMA, logging) for N
tokenizer and N prior steps at the preset's batches, its steps/s read from the run's log (the
second half of each phase, after warm-up). Prints a table, then JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from apv_hub.viper import VIPERConfig, VIPERRewardModel
from benchmarks.common import bench_parser, machine, report, sync, time_calls


def bench_preset(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    cfg = VIPERConfig.preset(name)
    tok_cfg, prior_cfg = cfg.tokenizer, cfg.prior
    device = args.device
    model = VIPERRewardModel(cfg).to(device)
    size, grid = tok_cfg.image_size, tok_cfg.token_grid
    frames_batch = 2 if args.quick else args.tokenizer_batch or tok_cfg.batch_size
    windows_batch = 1 if args.quick else args.prior_batch or prior_cfg.batch_size
    steps = 1 if args.quick else args.steps
    warmup = 0 if args.quick else args.warmup

    tokenizer = model.tokenizer.train()
    tok_opt = torch.optim.AdamW(
        tokenizer.autoencoder_parameters(), lr=tok_cfg.lr, weight_decay=tok_cfg.weight_decay
    )
    frames = torch.randint(0, 256, (1, frames_batch, 3, size, size), dtype=torch.uint8)
    frames = frames.to(device)

    def tokenizer_step() -> None:
        loss, _ = tokenizer.loss(frames)
        tok_opt.zero_grad(set_to_none=True)
        loss.backward()
        tok_opt.step()
        tokenizer.restart_dead_codes()

    prior = model.prior.train()
    prior_opt = torch.optim.Adam(prior.parameters(), lr=prior_cfg.lr)
    shape = (windows_batch, prior_cfg.frames, grid, grid)
    tokens = torch.randint(0, tok_cfg.codebook_size, shape, device=device)
    cls = (
        torch.zeros(windows_batch, dtype=torch.long, device=device)
        if prior_cfg.num_classes
        else None
    )

    def prior_step() -> None:
        loss, _ = prior.loss(tokens, cls)
        prior_opt.zero_grad(set_to_none=True)
        loss.backward()
        prior_opt.step()

    model.eval()
    steady = args.steady_batch
    steady_frames = torch.randint(0, 256, (1, steady, 3, size, size), dtype=torch.uint8)
    steady_frames = steady_frames.to(device)
    windows = torch.randint(
        0, tok_cfg.codebook_size, (steady, cfg.context_frames, grid, grid), device=device
    )
    steady_cls = None if cls is None else torch.zeros(steady, dtype=torch.long, device=device)

    @torch.no_grad()
    def score_steady() -> None:
        model.tokenizer.encode(steady_frames)
        model.prior.frame_log_probs(windows, steady_cls, last_frames=1)

    video = torch.randint(0, 256, (args.episodes, args.length, 3, size, size), dtype=torch.uint8)
    video = video.to(device)

    def score_episodes() -> None:
        model.score(video, cls=0 if prior_cfg.num_classes else None)

    tok_times = time_calls(tokenizer_step, device, warmup, steps)
    prior_times = time_calls(prior_step, device, warmup, steps)
    steady_times = time_calls(score_steady, device, warmup, steps)
    episode_times = [] if args.quick else time_calls(score_episodes, device, warmup, steps)
    sync(device)
    mean = lambda times: sum(times) / len(times)
    counts = model.num_parameters()
    scored = args.episodes * args.length
    return {
        "preset": name,
        "parameters": {"tokenizer": counts["tokenizer"], "prior": counts["prior"]},
        "tokenizer_batch_frames": frames_batch,
        "tokenizer_steps_per_second": round(1 / mean(tok_times), 3),
        "prior_batch_windows": f"{windows_batch} x {1 + prior_cfg.frames * grid * grid} tokens",
        "prior_steps_per_second": round(1 / mean(prior_times), 3),
        "score_steady_frames_per_second": round(steady / mean(steady_times), 2),
        "score_episodes": None if args.quick else f"{args.episodes} x {args.length} frames",
        "score_episodes_frames_per_second": (
            None if args.quick else round(scored / mean(episode_times), 2)
        ),
        "seconds_each": {
            "tokenizer": [round(t, 4) for t in tok_times],
            "prior": [round(t, 4) for t in prior_times],
            "score_steady": [round(t, 4) for t in steady_times],
            "score_episodes": [round(t, 4) for t in episode_times],
        },
    }


def bench_trainer(name: str, args: argparse.Namespace) -> dict:
    """The trainer's own steps/s over the second half of each phase (see the module doc)."""
    from apv_hub.training.configs import VIPERTrainConfig
    from apv_hub.training.viper import train_viper

    steps = args.trainer_steps
    half = max(steps // 2, 1)
    config = VIPERTrainConfig(
        data=args.data,
        model=VIPERConfig.preset(name),
        classes="task" if VIPERConfig.preset(name).prior.num_classes else "none",
        tokenizer_steps=steps,
        prior_steps=steps,
        log_every=half,
        eval_every=10 * steps,
        checkpoint_every=10 * steps,
        eval_clips=1,
        stats_videos=1,
        num_workers=args.num_workers,
        precision="auto" if args.device.startswith("cuda") else "fp32",
    )
    with tempfile.TemporaryDirectory() as tmp:
        train_viper(config, Path(tmp) / "run", progress=False)
        rows = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    out = {}
    for phase in ("tokenizer", "prior"):
        last = [r for r in rows if f"{phase}/loss" in r][-1]
        out[f"trainer_{phase}_steps_per_second"] = round(last["perf/steps_per_sec"], 3)
        out[f"trainer_{phase}_data_wait_fraction"] = round(last["perf/data_wait_fraction"], 3)
    return out


def table_row(r: dict) -> str:
    episodes = r["score_episodes_frames_per_second"]
    episodes = "-" if episodes is None else f"{episodes} ({r['score_episodes']})"
    return (
        f"| {r['preset']} | {r['tokenizer_steps_per_second']} ({r['tokenizer_batch_frames']} "
        f"frames) | {r['prior_steps_per_second']} ({r['prior_batch_windows']}) | "
        f"{r['score_steady_frames_per_second']} | {episodes} |"
    )


def run(args: argparse.Namespace) -> dict:
    header = ["tokenizer steps/s (batch)", "prior steps/s (batch)", "scoring frames/s, steady"]
    print("| preset | " + " | ".join(header) + " | scoring frames/s, episodes |")
    print("|---|---|---|---|---|", flush=True)
    rows = []
    for name in args.presets:
        rows.append(bench_preset(name, args))
        print(table_row(rows[-1]), flush=True)
    if args.trainer_steps:
        header = "trainer tokenizer steps/s (data wait) | trainer prior steps/s (data wait)"
        print(f"\n| preset | {header} |")
        print("|---|---|---|", flush=True)
        for row in rows:
            row.update(bench_trainer(row["preset"], args))
            print(
                f"| {row['preset']} | {row['trainer_tokenizer_steps_per_second']} "
                f"({row['trainer_tokenizer_data_wait_fraction']}) | "
                f"{row['trainer_prior_steps_per_second']} "
                f"({row['trainer_prior_data_wait_fraction']}) |",
                flush=True,
            )
    return {"quick": args.quick, "results": rows, **machine(args.device)}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "dmc"], choices=sorted(VIPERConfig.PRESETS)
    )
    parser.add_argument("--quick", action="store_true", help="tiny batches, one step (CPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed calls of each kind")
    parser.add_argument("--tokenizer-batch", type=int, default=None, help="default: preset's")
    parser.add_argument("--prior-batch", type=int, default=None, help="default: preset's")
    parser.add_argument("--steady-batch", type=int, default=4, help="steps per steady call")
    parser.add_argument("--episodes", type=int, default=4, help="episodes scored per call")
    parser.add_argument("--length", type=int, default=100, help="frames per scored episode")
    parser.add_argument(
        "--trainer-steps", type=int, default=0, help="also time the trainer for N steps per phase"
    )
    parser.add_argument("--data", nargs="+", default=["sample"], help="the trainer's corpora")
    parser.add_argument("--num-workers", type=int, default=2, help="the trainer's clip decoders")
    report(run, parser.parse_args(argv))


if __name__ == "__main__":
    main()
