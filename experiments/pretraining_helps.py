"""Does action-free pre-training help on a task the videos never showed? (issue 12, part 4)

```bash
MUJOCO_GL=egl OMP_NUM_THREADS=1 python experiments/pretraining_helps.py --out runs/helps
python experiments/pretraining_helps.py --quick --out runs/helps-quick   # smoke run, tiny model
python experiments/pretraining_helps.py --scale paper --device cuda --out runs/helps-paper
```

1. Corpus: the shipped sample corpus (scripted Meta-world videos of reach, drawer-open,
   button-press-topdown and door-open) plus videos of more tasks built here with
   ``dataset_scripts/metaworld_scripted.py``; none of them is the target task.
2. Pre-training: an `APVVideoModel` of the scale's preset on that corpus (`apv_hub.training`).
3. Episodes of the target task (default ``door-lock-v3``), collected once by its scripted
   expert with Gaussian action noise (`apv_hub.evaluation.probe.collect_episodes`), saved as
   APV npz files and reused by every arm below.
4. (a) Probe: ridge regressions from one frame's features to the state and the reward
   (`apv_hub.evaluation.probe.score_features`), the episodes split into folds that take turns
   being held out; the pre-trained model against the same architecture at several random
   initialisations. Scores: held-out R^2 (1 perfect, 0 no better than the training mean).
5. (b) World model: the APV world model (action-free RSSM and encoder/decoder from the
   pre-trained model, a fresh action-conditional RSSM stacked on it, no intrinsic bonus:
   ``apv_no_bonus``) against DreamerV2's world model from scratch (``dreamerv2``), both of the
   pre-trained model's sizes, trained for the same number of world-model updates on batches of
   the training episodes (world-model loss only, no actor-critic), several seeds per arm; the
   reward-prediction loss (0.5 MSE) and image NLL are measured on fixed windows of the held-out
   episodes along the way.

Intervals are rliable's stratified percentile bootstrap (`apv_hub.evaluation.aggregate`): over
held-out folds (and random-init seeds) for the probe, over training seeds for the world
models. One model is pre-trained (one pre-training seed): the probe's intervals say how much
the held-out split and the random initialisation move the scores, not how much another
pre-training run would. Output in ``--out``: ``results.json``, ``results.md``, the figures
``probe.png`` and ``world_model.png``, and the stages' folders (corpus, pre-training run,
episodes). Re-running with the same ``--out`` reuses finished stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apv_hub import APVAgent, APVVideoModel
from apv_hub.config import AgentConfig
from apv_hub.data import sample_corpus_path
from apv_hub.envs.meta_world import STATE_LAYOUT
from apv_hub.evaluation import plots
from apv_hub.evaluation.aggregate import mean_interval, probability_of_improvement
from apv_hub.evaluation.probe import (
    PRETRAINED,
    RANDOM_INIT,
    ProbeEpisode,
    collect_episodes,
    episode_features,
    random_init_models,
    score_features,
    target_groups,
)
from apv_hub.io import write_atomic, write_json
from apv_hub.replay import ReplayBuffer, load_episode, save_episode
from apv_hub.training.configs import PretrainConfig
from apv_hub.training.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "dataset_scripts" / "metaworld_scripted.py"
ARMS = {"apv": "apv_no_bonus", "dreamerv2": "dreamerv2"}
PROBE_TARGETS = ("state", "hand", "objects", "reward")


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of one run of the experiment."""

    preset: str  # video model and agent preset
    corpus_tasks: tuple[str, ...]  # built here, beside the shipped sample corpus
    corpus_episodes: int
    corpus_steps: int
    pretrain_steps: int
    episodes: int  # of the target task, for both the probe and the world models
    episode_steps: int
    held_out: int  # episodes per held-out fold; the world models hold out the last fold
    init_seeds: int  # random-init models in the probe
    seeds: int  # world-model training seeds per arm
    updates: int
    eval_every: int
    batch_size: int
    seq_len: int
    freeze_updates: int  # APV holds the pre-trained parts for these first updates


SCALES = {
    "quick": Scale("tiny", ("window-open-v3",), 1, 40, 5, 6, 12, 2, 2, 2, 4, 2, 2, 8, 2),
    "cpu": Scale(
        "small", ("window-open-v3", "drawer-close-v3"), 3, 150, 200, 8, 60, 2, 3, 3, 90, 30,
        6, 16, 30,
    ),
    # For a GPU (issue 12 part 6): the paper's model, a larger corpus, longer runs.
    "paper": Scale(
        "paper",
        ("window-open-v3", "drawer-close-v3", "window-close-v3", "faucet-open-v3",
         "handle-press-v3", "plate-slide-v3", "coffee-button-v3", "push-v3"),
        20, 500, 50_000, 20, 500, 4, 5, 5, 5000, 250, 50, 50, 100,
    ),
}  # fmt: skip
AGENT_PRESET = {"tiny": "tiny", "small": "small", "paper": "metaworld"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Stages 1-3: corpus, pre-training, episodes --------------------------------------------------


def build_corpus(scale: Scale, out: Path) -> Path:
    """The extra corpus, built by the dataset script exactly as a user would run it."""
    folder = out / "corpus"
    command = [sys.executable, str(BUILDER), "--tasks", *scale.corpus_tasks]
    command += ["--episodes", str(scale.corpus_episodes), "--max-steps", str(scale.corpus_steps)]
    command += ["--seed", "0", "--out", str(folder), "--no-progress"]
    log("corpus: " + " ".join(command[1:]))
    subprocess.run(command, check=True)
    return folder


def pretrain_model(scale: Scale, corpus: Path, out: Path, device: str) -> Path:
    """Pre-train on the sample corpus and ``corpus``; returns the model folder."""
    run = out / "pretrain"
    model_dir = run / "model"
    if (model_dir / "config.json").is_file():
        log(f"pre-training: reusing {model_dir}")
        return model_dir
    from apv_hub.config import APVConfig

    config = PretrainConfig(
        data=[str(sample_corpus_path()), str(corpus)],
        model=APVConfig.preset(scale.preset),
        steps=scale.pretrain_steps,
        eval_every=scale.pretrain_steps,
        log_every=max(1, scale.pretrain_steps // 10),
        checkpoint_every=scale.pretrain_steps,
        num_workers=1,
    )
    resume = (run / "run_config.json").is_file()  # an interrupted pre-training continues
    log(f"pre-training {scale.preset} for {scale.pretrain_steps} steps into {run}")
    pretrain(config, run, resume=resume, progress=sys.stderr.isatty())
    del device  # the run layer places the model (accelerate picks the GPU where there is one)
    return model_dir


def target_episodes(
    env: str, scale: Scale, out: Path, size: int
) -> tuple[list[ProbeEpisode], dict[str, slice]]:
    """The target task's episodes, collected once and saved as APV npz files (with states)."""
    folder = out / "episodes"
    files = sorted(folder.glob("episode-*.npz"))
    if len(files) == scale.episodes:
        log(f"episodes: reusing {len(files)} in {folder}")
        episodes = []
        for path in files:
            data = load_episode(path)
            seed = int(path.stem.split("-")[1])
            episodes.append(
                ProbeEpisode(
                    env, seed, data["image"], data["state"], data["reward"], data["action"]
                )
            )
        return episodes, dict(STATE_LAYOUT)
    log(f"episodes: {scale.episodes} x {scale.episode_steps} steps of {env} (scripted + noise)")
    episodes, layout = collect_episodes(
        env, scale.episodes, seed=0, render_size=size, episode_length=scale.episode_steps
    )
    folder.mkdir(parents=True, exist_ok=True)
    for i, episode in enumerate(episodes):
        save_episode(
            folder / f"episode-{i:03d}.npz", {**replay_arrays(episode), "state": episode.states}
        )
    return episodes, layout


def replay_arrays(episode: ProbeEpisode) -> dict[str, np.ndarray]:
    """A probe episode in the replay layout (`apv_hub.replay`): one finished episode."""
    steps = len(episode.rewards)
    flags = np.zeros(steps, bool)
    return {
        "image": episode.frames,
        "action": episode.actions,
        "reward": episode.rewards,
        "is_first": np.r_[True, flags[1:]],
        "is_last": np.r_[flags[1:], True],
        "is_terminal": flags,
    }


# Stage 4a: the probe --------------------------------------------------------------------------


def probe(
    model: APVVideoModel,
    episodes: list[ProbeEpisode],
    layout: dict[str, slice],
    scale: Scale,
    device: str,
) -> dict[str, Any]:
    """Held-out R^2 per fold, feature set and target; aggregated with bootstrap intervals."""
    model = model.to(device).eval()
    sets = [(PRETRAINED, None, model)]
    sets += list(
        (RANDOM_INIT, s, m)
        for s, m in random_init_models(model.config, range(scale.init_seeds), device)
    )
    features = {
        (kind, s): [episode_features(net, e.frames, device) for e in episodes]
        for kind, s, net in sets
    }
    folds = len(episodes) // scale.held_out
    rows = []
    for fold in range(folds):
        test = set(range(fold * scale.held_out, (fold + 1) * scale.held_out))
        train = [i for i in range(len(episodes)) if i not in test]
        train_eps = [episodes[i] for i in train]
        test_eps = [episodes[i] for i in sorted(test)]
        groups, _ = target_groups(layout, np.concatenate([e.states for e in train_eps]))
        for (kind, init_seed), per_episode in features.items():
            scores = score_features(
                [per_episode[i] for i in train],
                [per_episode[i] for i in sorted(test)],
                train_eps,
                test_eps,
                {k: v for k, v in groups.items() if k in PROBE_TARGETS},
                folds=min(4, len(train)),
            )
            for target, entry in scores.items():
                rows.append(
                    {"fold": fold, "features": kind, "init_seed": init_seed, "target": target}
                    | {"r2": entry["r2"], "mse": entry["mse"]}
                )
    summary = {}
    for target in PROBE_TARGETS:
        mine = [r for r in rows if r["target"] == target]
        if not mine:
            continue
        pre = np.array([r["r2"] for r in mine if r["features"] == PRETRAINED])
        rand = np.array([r["r2"] for r in mine if r["features"] == RANDOM_INIT])
        summary[target] = {
            "pretrained": mean_interval(pre).as_dict(),
            "random_init": mean_interval(rand).as_dict(),
            "p_pretrained_better": probability_of_improvement(
                pre[:, None], rand[:, None]
            ).as_dict(),
            "runs": {"pretrained": len(pre), "random_init": len(rand)},
        }
    return {"folds": folds, "rows": rows, "summary": summary}


# Stage 4b: world models -----------------------------------------------------------------------


def held_out_windows(episodes: list[ProbeEpisode], seq_len: int) -> dict[str, torch.Tensor]:
    """Every non-overlapping ``seq_len`` window of the held-out episodes, each starting the
    world model afresh (``is_first`` at its first step): {key: [N, seq_len, ...]}."""
    windows: dict[str, list[np.ndarray]] = {}
    for episode in episodes:
        arrays = replay_arrays(episode)
        for start in range(0, len(episode.rewards) - seq_len + 1, seq_len):
            for key, value in arrays.items():
                window = value[start : start + seq_len].copy()
                if key == "is_first":
                    window[0] = True
                windows.setdefault(key, []).append(window)
    return {key: torch.from_numpy(np.stack(v)) for key, v in windows.items()}


@torch.no_grad()
def held_out_losses(agent: APVAgent, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reward loss (0.5 MSE) and image NLL of the world model on the held-out windows; the
    posterior samples are drawn under a fixed seed so that every model sees the same noise."""
    model = agent.world_model.eval()
    batch = {k: v.to(agent.device) for k, v in windows.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, metrics = model.loss(batch)
    return {name: float(metrics[name]) for name in ("reward_loss", "image_loss")}


def train_world_model(
    arm: str,
    seed: int,
    video: APVVideoModel,
    model_dir: Path,
    train_eps: list[ProbeEpisode],
    windows: dict[str, torch.Tensor],
    scale: Scale,
    device: str,
) -> dict[str, list[float]]:
    """World-model updates only, on batches of ``train_eps``; held-out losses along the way."""
    overrides = {"world_model": {"freeze_pretrained_updates": scale.freeze_updates}}
    config = AgentConfig.preset(AGENT_PRESET[scale.preset], ARMS[arm], **overrides)
    config = dataclasses.replace(config, video=video.config)  # both arms: the same sizes
    torch.manual_seed(seed)
    pretrained = model_dir if arm == "apv" else None
    agent = APVAgent.build(config, train_eps[0].actions.shape[1], pretrained).to(device)
    optimizer = agent.make_optimizers()["model"]
    replay = ReplayBuffer(capacity=10**7, seed=seed)
    for episode in train_eps:
        replay.add_episode(replay_arrays(episode))
    wm_config = config.world_model
    curve: dict[str, list[float]] = {"updates": [], "reward_loss": [], "image_loss": []}
    for update in range(scale.updates + 1):
        if update % scale.eval_every == 0 or update == scale.updates:
            curve["updates"].append(update)
            for name, value in held_out_losses(agent, windows).items():
                curve[name].append(value)
        if update == scale.updates:
            break
        agent.world_model.train()
        batch = replay.sample(scale.batch_size, scale.seq_len, device)
        agent.update_world_model(batch, optimizer, update < wm_config.freeze_pretrained_updates)
    return curve


def world_models(
    video: APVVideoModel,
    model_dir: Path,
    episodes: list[ProbeEpisode],
    scale: Scale,
    device: str,
) -> dict[str, Any]:
    train_eps, test_eps = episodes[: -scale.held_out], episodes[-scale.held_out :]
    windows = held_out_windows(test_eps, scale.seq_len)
    curves: dict[str, list[dict[str, list[float]]]] = {arm: [] for arm in ARMS}
    for seed in range(scale.seeds):
        for arm in ARMS:
            start = time.time()
            curves[arm].append(
                train_world_model(arm, seed, video, model_dir, train_eps, windows, scale, device)
            )
            final = {k: f"{v[-1]:.4g}" for k, v in curves[arm][-1].items() if k != "updates"}
            log(f"world model {arm} seed {seed}: held-out {final} ({time.time() - start:.0f} s)")
    summary = {}
    for loss in ("reward_loss", "image_loss"):
        finals = {arm: np.array([c[loss][-1] for c in curves[arm]]) for arm in ARMS}
        summary[loss] = {arm: mean_interval(v).as_dict() for arm, v in finals.items()}
        # Lower is better: P(APV's loss < DreamerV2's) = P(-APV > -DreamerV2).
        summary[loss]["p_apv_lower"] = probability_of_improvement(
            -finals["apv"][:, None], -finals["dreamerv2"][:, None]
        ).as_dict()
        summary[loss]["per_seed"] = {arm: v.tolist() for arm, v in finals.items()}
    return {
        "held_out_windows": int(len(windows["reward"])),
        "curves": curves,
        "summary": summary,
    }


# Output ---------------------------------------------------------------------------------------


def fmt(entry: dict[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{entry['point']:.3f} [{low:.3f}, {high:.3f}]"


def markdown(results: dict[str, Any]) -> str:
    s, a, b = results["scale"], results["probe"], results["world_model"]
    lines = [
        f"Target task `{results['env']}` (not in the pre-training corpus); scale "
        f"`{results['scale_name']}`; {results['wall_seconds'] / 60:.1f} min wall in all.",
        "",
        f"- corpus: shipped sample (reach, drawer-open, button-press-topdown, door-open: 12 "
        f"videos x 151 frames) + {', '.join(s['corpus_tasks'])} ({s['corpus_episodes']} "
        f"episodes x {s['corpus_steps'] + 1} frames each, built by "
        "dataset_scripts/metaworld_scripted.py)",
        f"- pre-training: `{s['preset']}` video model, {s['pretrain_steps']} steps "
        f"(final loss {results['pretrain_loss']:.4g})",
        f"- target episodes: {s['episodes']} x {s['episode_steps'] + 1} frames, scripted expert "
        f"+ N(0, 0.1) action noise, collected once",
        "",
        f"### (a) Probe: held-out R^2 ({a['folds']} folds of {s['held_out']} held-out episodes; "
        f"random init: {s['init_seeds']} seeds x {a['folds']} folds)",
        "",
        "| target | pre-trained | random init | P(pre-trained > random init) |",
        "| --- | --- | --- | --- |",
    ]
    for target, e in a["summary"].items():
        lines.append(
            f"| {target} | {fmt(e['pretrained'])} | {fmt(e['random_init'])} | "
            f"{fmt(e['p_pretrained_better'])} |"
        )
    lines += [
        "",
        f"### (b) World model: held-out losses after {s['updates']} updates "
        f"({s['seeds']} seeds per arm, batch {s['batch_size']} x {s['seq_len']}, "
        f"{b['held_out_windows']} held-out windows of {s['seq_len']} steps; APV holds its "
        f"pre-trained parts for the first {s['freeze_updates']} updates)",
        "",
        "| loss | APV (pre-trained) | DreamerV2 (scratch) | P(APV lower) | "
        "per seed APV / DreamerV2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for loss, e in b["summary"].items():
        seeds = " / ".join(", ".join(f"{v:.4g}" for v in e["per_seed"][arm]) for arm in ARMS)
        lines.append(
            f"| {loss} | {fmt(e['apv'])} | {fmt(e['dreamerv2'])} | {fmt(e['p_apv_lower'])} "
            f"| {seeds} |"
        )
    lines += ["", "Intervals: 95% stratified bootstrap (rliable) over folds/seeds."]
    return "\n".join(lines) + "\n"


def write_figures(results: dict[str, Any], out: Path) -> None:
    palette = plots.colours(["pretrained", "random init"])
    summary = results["probe"]["summary"]
    fig, axes = plots.new_figure(panel=(5.0, 3.4))
    ax = axes[0, 0]
    x = np.arange(len(summary))
    for offset, (key, label) in zip(
        (-0.2, 0.2), ((PRETRAINED, "pretrained"), (RANDOM_INIT, "random init")), strict=True
    ):
        point = np.array([e[key]["point"] for e in summary.values()])
        low = point - [e[key]["ci"][0] for e in summary.values()]
        high = [e[key]["ci"][1] for e in summary.values()] - point
        ax.bar(
            x + offset, point, 0.4, yerr=[low, high], capsize=3, color=palette[label], label=label
        )
    ax.set_xticks(x, list(summary))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(ylabel="held-out R^2", title=f"Probe on {results['env']}")
    ax.legend()
    plots.save_figure(fig, out / "probe.png")

    arms = plots.colours(list(ARMS))
    fig, axes = plots.new_figure(2, 1)
    for ax, loss in zip(axes[0], ("reward_loss", "image_loss"), strict=True):
        for arm in ARMS:
            curves = results["world_model"]["curves"][arm]
            values = np.array([c[loss] for c in curves])
            for row in values:
                ax.plot(curves[0]["updates"], row, color=arms[arm], alpha=0.3, linewidth=1)
            ax.plot(curves[0]["updates"], values.mean(0), color=arms[arm], label=arm, linewidth=2)
        ax.set(xlabel="world-model updates", ylabel=f"held-out {loss}", yscale="log")
        ax.legend()
    plots.save_figure(fig, out / "world_model.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, help="output folder (re-runs reuse finished stages)"
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--quick", action="store_true", help="the quick scale: a smoke run")
    parser.add_argument("--env", default="metaworld/door-lock-v3", help="target task")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else args.scale
    scale = SCALES[name]
    task = args.env.split("/", 1)[-1]
    if task in scale.corpus_tasks or task in {
        "reach-v3",
        "drawer-open-v3",
        "button-press-topdown-v3",
        "door-open-v3",
    }:
        parser.error(f"{args.env} is in the pre-training corpus: pick a task it does not show")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    corpus = build_corpus(scale, out)
    model_dir = pretrain_model(scale, corpus, out, args.device)
    summary = json.loads((model_dir.parent / "summary.json").read_text())
    video = APVVideoModel.from_pretrained(model_dir, map_location=args.device)
    episodes, layout = target_episodes(args.env, scale, out, video.config.image_size)
    log("probe")
    probe_results = probe(video, episodes, layout, scale, args.device)
    log("world models")
    wm_results = world_models(video, model_dir, episodes, scale, args.device)
    results = {
        "env": args.env,
        "scale_name": name,
        "scale": dataclasses.asdict(scale),
        "device": args.device,
        "pretrain_loss": summary["final"].get("loss", float("nan")),
        "probe": probe_results,
        "world_model": wm_results,
        "wall_seconds": time.time() - start,
        "cpu_seconds": time.process_time(),
    }
    write_json(out / "results.json", results)
    write_atomic(out / "results.md", markdown(results).encode())
    write_figures(results, out)
    print(markdown(results))
    log(f"wrote {out / 'results.md'} ({results['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
