"""Evaluate an APV agent: deterministic episodes, a score with a confidence interval, a video.

One implementation serves the fine-tuning loop (evaluation every N environment steps) and the
``apv-evaluate`` command:

```bash
apv-evaluate --agent runs/ft/model --env metaworld/drawer-open-v3 --episodes 10 --out runs/eval
apv-evaluate --agent me/apv-drawer-open      # a Hub repo id; the environment the agent was
                                             # fine-tuned on is the default
```

Episodes are reproducible: the agent acts as the release evaluates, with ``explore=False`` (the
actor's mode) on sampled latent states, drawn from a torch generator seeded by the episodes'
seeds (the caller's random state is left untouched); episode ``i`` starts from seed
``episode_seed(seed, i)``, so the same agent gets the same score. A fine-tuning run evaluates on
fresh seeds (fresh Meta-world object and goal positions) every evaluation round, as the release
does: ``episode_seed(seed, i, evaluation=env_steps)``.
The score (``score.json``) holds the mean return and, for environments that report ``success``
(Meta-world), the success rate (an episode succeeds if ``success`` is reached at any step, as APV
and DreamerV2 count it), each with its per-episode values and a 95% percentile-bootstrap
confidence interval of the mean. That interval resamples the evaluation episodes of this one run:
it measures how well the episodes pin down this agent's score, not how much the score varies
between training seeds. Across seeds and tasks, use ``apv-report`` (`apv_hub.evaluation.report`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apv_hub.agent import APVAgent
from apv_hub.cli import command
from apv_hub.config_base import ConfigError, parse_assignments
from apv_hub.envs import EnvPool
from apv_hub.evaluation.aggregate import mean_interval
from apv_hub.io import write_json

# What the interval of score.json resamples, written beside it so that no reader mistakes it for
# an interval over training seeds.
CI_OVER = (
    "percentile bootstrap over the evaluation episodes of this one run (not over training seeds: "
    "use apv-report for that)"
)
# Streams of `numpy.random.SeedSequence` entropy: evaluation seeds never equal training seeds.
EVAL_STREAM = 1


@dataclass
class EpisodeResult:
    """One evaluation episode: its seed, return, success (None if not reported), length in
    policy steps, and its frames uint8 [T + 1, 3, H, W] when recorded."""

    seed: int
    episode_return: float
    success: float | None
    length: int
    frames: np.ndarray | None = None


def episode_seed(seed: int, index: int, evaluation: int | None = None) -> int:
    """The environment seed of evaluation episode ``index`` of a run seeded ``seed``; with
    ``evaluation`` (a trainer's evaluation point, its env steps) fresh seeds every round."""
    key = [seed, EVAL_STREAM, index] + ([] if evaluation is None else [evaluation])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


@torch.no_grad()
def run_episodes(
    agent: APVAgent, pool: EnvPool, seeds: Sequence[int], record: int = 0
) -> list[EpisodeResult]:
    """Run one evaluation episode per seed on ``pool``'s environments, ``pool.num_envs`` at a
    time; the first ``record`` episodes keep their frames.

    The latent states are sampled (module docstring) from torch's generator, seeded by each
    round's seeds inside `torch.random.fork_rng`: the same seeds and ``num_envs`` give the same
    episodes, and the caller's random state (a training run's) is not consumed. Slots without
    an episode of their own in the last round run a throwaway episode.
    """
    results: list[EpisodeResult] = []
    n = pool.num_envs
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        for start in range(0, len(seeds), n):
            chunk = list(seeds[start : start + n])
            padded = chunk + [chunk[-1]] * (n - len(chunk))
            # Seeded per round: an episode's draws depend on its round's seeds only.
            torch.manual_seed(int(np.random.SeedSequence(padded).generate_state(1)[0]))
            keep = max(0, min(record - start, len(chunk)))
            results += _run_round(agent, pool, padded, len(chunk), keep)
    return results


def _run_round(
    agent: APVAgent, pool: EnvPool, seeds: list[int], count: int, record: int
) -> list[EpisodeResult]:
    obs = pool.reset(seeds)
    n = pool.num_envs
    returns, lengths = np.zeros(n), np.zeros(n, int)
    success = np.zeros(n) if "success" in obs else None
    frames: list[list[np.ndarray]] = [[obs["image"][i]] for i in range(record)]
    done = np.zeros(n, bool)
    state = None
    while not done[:count].all():
        action, state = agent.act(obs, state, explore=False)
        obs = pool.step(action.float().cpu().numpy())
        running = ~done
        returns[running] += obs["reward"][running]
        lengths[running] += 1
        if success is not None:
            success[running] = np.maximum(success[running], obs["success"][running])
        for i in range(record):
            if running[i]:
                frames[i].append(obs["image"][i])
        done |= obs["is_last"]
    return [
        EpisodeResult(
            seed=int(seeds[i]),
            episode_return=float(returns[i]),
            success=None if success is None else float(success[i] > 0),
            length=int(lengths[i]),
            frames=np.stack(frames[i]) if i < record else None,
        )
        for i in range(count)
    ]


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values``, resampling the values
    (here: the evaluation episodes of one run; it says nothing about other seeds). rliable's
    bootstrap (`apv_hub.evaluation.aggregate.mean_interval`)."""
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    interval = mean_interval(values, reps=resamples, confidence=confidence, seed=seed)
    return float(interval.low[0]), float(interval.high[0])


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Score of evaluation episodes: ``return`` (and ``success_rate`` where reported), each
    ``{"mean", "ci95": [low, high], "per_episode"}``, plus ``episodes``, ``seeds``,
    ``lengths`` and ``ci95_over`` (what the intervals resample: the episodes, see `CI_OVER`)."""
    if not results:
        raise ValueError("no episodes to summarize")
    score: dict[str, Any] = {
        "episodes": len(results),
        "seeds": [r.seed for r in results],
        "lengths": [r.length for r in results],
        "ci95_over": CI_OVER,
    }
    metrics = {"return": [r.episode_return for r in results]}
    if all(r.success is not None for r in results):
        metrics["success_rate"] = [float(r.success) for r in results]
    for name, values in metrics.items():
        low, high = bootstrap_ci(values)
        score[name] = {"mean": float(np.mean(values)), "ci95": [low, high], "per_episode": values}
    return score


def curve_row(score: dict[str, Any]) -> dict[str, float]:
    """A `summarize` score as one row of an evaluation curve (``eval.csv``): mean return with
    its 95% CI over episodes, success rate where reported, the number of episodes."""
    row = {
        "return_mean": score["return"]["mean"],
        "return_ci_low": score["return"]["ci95"][0],
        "return_ci_high": score["return"]["ci95"][1],
    }
    if "success_rate" in score:
        row["success_rate"] = score["success_rate"]["mean"]
    return {**row, "eval_episodes": score["episodes"]}


def evaluate(
    agent: APVAgent,
    env: str,
    episodes: int,
    *,
    seed: int = 0,
    num_envs: int = 1,
    env_options: dict[str, Any] | None = None,
    record: int = 0,
) -> tuple[dict[str, Any], list[EpisodeResult]]:
    """Run ``episodes`` deterministic episodes of ``env`` -> (score, episode results)."""
    seeds = [episode_seed(seed, i) for i in range(episodes)]
    with EnvPool(env, min(num_envs, episodes), seed=seed, **(env_options or {})) as pool:
        if pool.action_dim != agent.action_dim:
            raise ConfigError(
                f"{env} has {pool.action_dim}-dimensional actions, the agent was trained for "
                f"{agent.action_dim}"
            )
        results = run_episodes(agent, pool, seeds, record=record)
    return summarize(results), results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apv-evaluate",
        description="Run deterministic episodes of a fine-tuned APV agent; write an mp4 of them "
        "and score.json (mean return, success rate where the environment reports it, "
        "per-episode values, 95%% confidence intervals). The intervals are a bootstrap over the "
        "evaluation episodes of this one run, not over training seeds; to compare runs across "
        "seeds and tasks use apv-report.",
    )
    parser.add_argument(
        "--agent", required=True, help="agent checkpoint folder or Hub repo id (APVAgent)"
    )
    parser.add_argument(
        "--env",
        help="environment name for apv_hub.envs.make (default: the one the agent was "
        "fine-tuned on, from its config)",
    )
    parser.add_argument(
        "--episodes", type=int, default=None, help="episodes (default: 10 Meta-world, 1 else)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode seeds")
    parser.add_argument("--num-envs", type=int, default=1, help="environments run in parallel")
    parser.add_argument(
        "--env-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment option (e.g. episode_length=200); the agent's fine-tuning options "
        "are the defaults",
    )
    parser.add_argument("--out", default="eval", help="output folder (default: ./eval)")
    parser.add_argument("--video-episodes", type=int, default=10, help="episodes in the video")
    parser.add_argument("--fps", type=int, default=20, help="video frame rate")
    parser.add_argument("--no-video", action="store_true", help="do not write a video")
    parser.add_argument(
        "--revision", default=None, help="Hub revision (branch, tag or commit) of the agent"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the agent runs (default: cuda when available, else cpu)",
    )
    return parser


@command("apv-evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    """The ``apv-evaluate`` command: writes ``score.json`` (and ``eval.mp4``) under ``--out``."""
    from apv_hub.data.video import video_grid, write_video

    args = build_parser().parse_args(argv)
    for name in ("episodes", "num_envs", "video_episodes", "fps"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "video_episodes" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    agent = APVAgent.from_pretrained(args.agent, revision=args.revision, map_location=args.device)
    finetune = agent.training_info.get("finetune", {})
    env = args.env or finetune.get("env")
    if not env:
        raise ConfigError(f"{args.agent} does not record its environment: pass --env")
    options = dict(finetune.get("env_options", {})) if env == finetune.get("env") else {}
    options.update(parse_assignments(args.env_option))
    episodes = args.episodes or (10 if env.startswith("metaworld/") else 1)
    record = 0 if args.no_video else min(args.video_episodes, episodes)
    score, results = evaluate(
        agent,
        env,
        episodes,
        seed=args.seed,
        num_envs=args.num_envs,
        env_options=options,
        record=record,
    )
    score.update(agent=str(args.agent), env=env, env_options=options, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if record:
        frames = video_grid([r.frames for r in results[:record]], columns=5)
        score["video"] = str(write_video(out / "eval.mp4", frames, fps=args.fps))
    write_json(out / "score.json", score)
    line = f"{env}: return {score['return']['mean']:.2f} {score['return']['ci95']}"
    if "success_rate" in score:
        line += f", success rate {score['success_rate']['mean']:.2f}"
    print(f"{line} over {episodes} episode(s); wrote {out / 'score.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
