"""Probe what a video model's features know: the paper's state and reward regressions (Fig. 8)
and its t-SNE of clip features coloured by task (Fig. 7a), against the same architecture at
random initialisation.

```bash
apv-probe runs/pre/model --env metaworld/drawer-open-v3 --episodes 10 --out probe
apv-probe apv/rlbench-99 --env metaworld/drawer-open-v3 --env metaworld/door-lock-v3 \\
    --episodes 10 --out probe --random-init-seeds 3 --over-time
```

For every environment, episodes are collected (Meta-world: the task's scripted expert with
Gaussian action noise; elsewhere uniformly random actions) with the environment's state vector
(`apv_hub.envs.PixelEnv.state_layout` names its parts) and rewards. The model reads each episode
(`APVVideoModel.features`, latent modes, so features are deterministic) and ridge regressions
(`apv_hub.evaluation.ridge`) map the features of one frame to that frame's state and reward:
fitted on the first episodes, the penalty chosen by cross-validation over those episodes, scored
on the last ``--test-episodes`` (held out) by R^2 (against predicting the training mean) and
MSE, in units of the training standard deviation. The same is done with features of freshly
initialised models (``--random-init-seeds`` seeds). ``--over-time`` also trains an MLP head by
Adam and records its held-out MSE every few steps (Fig. 8's curves). With several environments,
clip-averaged features are embedded in 2-D (t-SNE, or PCA) and their task clustering is
measured by the silhouette score.

Output in ``--out``: ``probe.json`` (every number), ``probe.md`` (the table) and the PNG figures
of `PLOTS`.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from apv_hub.cli import command
from apv_hub.envs import make
from apv_hub.envs.registry import split_name
from apv_hub.errors import ApvHubError
from apv_hub.evaluation import plots
from apv_hub.evaluation.ridge import (
    Standardizer,
    constant_columns,
    fit_ridge_cv,
    regression_scores,
)
from apv_hub.io import write_atomic, write_json
from apv_hub.video_model import APVVideoModel

POLICIES = ("auto", "scripted", "random")
EMBEDDINGS = ("tsne", "pca")
PLOTS = {
    "r2": "probe_r2.png",
    "over_time": "probe_over_time.png",
    "embedding": "probe_embedding.png",
}
PRETRAINED = "pretrained"
RANDOM_INIT = "random_init"


class ProbeError(ApvHubError, ValueError):
    """A probe that cannot run as asked (environment, policy, episode counts): exit code 2,
    like a bad argument."""

    exit_code = 2


@dataclass
class ProbeEpisode:
    """One collected episode: frames uint8 [T, 3, S, S], the state vector of every frame
    float64 [T, D], the reward that led to it float32 [T] (0 on the reset frame) and, when
    collected here, the action that led to it float32 [T, A] (zeros on the reset frame), so
    that the episode can also serve as replay."""

    env: str
    seed: int
    frames: np.ndarray
    states: np.ndarray
    rewards: np.ndarray
    actions: np.ndarray | None = None


def probe_episode_seeds(seed: int, env: str, episodes: int) -> list[int]:
    """Environment seeds of the probe's episodes of ``env`` (depend on seed and env only)."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(env.encode())])
    return [int(s) for s in sequence.generate_state(episodes)]


def resolve_policy(env: str, policy: str) -> str:
    """``auto`` -> ``scripted`` on Meta-world (the task's expert), ``random`` elsewhere."""
    if policy not in POLICIES:
        raise ProbeError(f"policy must be one of {POLICIES}, got {policy!r}")
    try:
        family = split_name(env)[0]
    except ValueError as e:
        raise ProbeError(str(e)) from e
    if policy == "auto":
        return "scripted" if family == "metaworld" else "random"
    if policy == "scripted" and family != "metaworld":
        raise ProbeError(f"{env}: scripted policies exist for Meta-world tasks only")
    return policy


def collect_episodes(
    env: str,
    episodes: int,
    *,
    seed: int = 0,
    policy: str = "auto",
    action_noise: float = 0.1,
    render_size: int = 64,
    episode_length: int | None = None,
    progress: bool = True,
) -> tuple[list[ProbeEpisode], dict[str, slice]]:
    """Run ``episodes`` episodes of ``env`` -> (episodes, the state layout of the env).

    ``scripted``: Meta-world's expert for the task plus Normal(0, ``action_noise``) noise on its
    actions (clipped to [-1, 1]); ``random``: uniform actions in [-1, 1].
    """
    from tqdm.auto import tqdm

    policy = resolve_policy(env, policy)
    options: dict[str, Any] = {"render_size": render_size}
    if episode_length is not None:
        options["episode_length"] = episode_length
    out = []
    try:
        pixel_env = make(env, seed=seed, **options)
    except ValueError as e:  # an unknown task or an option out of range
        raise ProbeError(f"cannot probe {env}: {e}") from e
    with pixel_env:
        layout = pixel_env.state_layout()
        expert = None
        if policy == "scripted":
            from apv_hub.envs.meta_world import scripted_policy

            try:
                expert = scripted_policy(split_name(env)[1])
            except ValueError as e:
                raise ProbeError(f"cannot probe {env}: {e}; pass --policy random") from e
        seeds = probe_episode_seeds(seed, env, episodes)
        for episode_seed in tqdm(seeds, desc=f"episodes {env}", disable=not progress):
            rng = np.random.default_rng(episode_seed)
            obs, info = pixel_env.reset(seed=episode_seed)
            frames, states, rewards = [obs["image"]], [info["state"]], [0.0]
            actions = [np.zeros(pixel_env.action_dim)]
            while not obs["is_last"]:
                if expert is None:
                    action = rng.uniform(-1.0, 1.0, pixel_env.action_dim)
                else:
                    with warnings.catch_warnings():
                        # Scripted policies warn every step that their gains exceed the clip.
                        warnings.filterwarnings("ignore", "Constant", UserWarning)
                        action = expert.get_action(info["state"])
                    action = action + rng.normal(0.0, action_noise, pixel_env.action_dim)
                action = np.clip(action, -1.0, 1.0)
                obs, info = pixel_env.step(action)
                actions.append(action)
                frames.append(obs["image"])
                states.append(info["state"])
                rewards.append(float(obs["reward"]))
            out.append(
                ProbeEpisode(
                    env,
                    episode_seed,
                    np.stack(frames),
                    np.asarray(states, np.float64),
                    np.asarray(rewards, np.float32),
                    np.asarray(actions, np.float32),
                )
            )
    return out, layout


@torch.no_grad()
def episode_features(
    model: APVVideoModel, frames: np.ndarray, device: str | torch.device, clip_length: int = 0
) -> np.ndarray:
    """uint8 frames [T, 3, S, S] -> features [T, feat_dim] of the whole episode read in one
    pass, or with ``clip_length`` L > 0 the features of each of the T // L clips read on its own
    and averaged over its frames [T // L, feat_dim]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    if not clip_length:
        return model.features(video[None], sample=False)[0].float().cpu().numpy()
    clips = len(video) // clip_length
    video = video[: clips * clip_length].reshape(clips, clip_length, *video.shape[1:])
    return model.features(video, sample=False).mean(dim=1).float().cpu().numpy()


def random_init_models(
    config, seeds: Sequence[int], device: str | torch.device
) -> Iterator[tuple[int, APVVideoModel]]:
    """Fresh models of ``config`` initialised under each torch seed, one at a time."""
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = APVVideoModel(config)
        yield seed, model.to(device).eval()


def target_groups(
    layout: dict[str, slice], train_states: np.ndarray
) -> tuple[dict[str, list[int]], list[int]]:
    """Columns of every named state group that vary in the training episodes, the group
    ``state`` holding all of them -> (groups, constant columns left out)."""
    constant = constant_columns(train_states)
    varying = [int(i) for i in np.flatnonzero(~constant)]
    groups = {"state": varying}
    for name, part in layout.items():
        columns = [i for i in range(train_states.shape[1])[part] if not constant[i]]
        if columns and columns != varying:
            groups[name] = columns
    return groups, [int(i) for i in np.flatnonzero(constant)]


def score_features(
    train: list[np.ndarray],
    test: list[np.ndarray],
    train_episodes: list[ProbeEpisode],
    test_episodes: list[ProbeEpisode],
    groups: dict[str, list[int]],
    folds: int,
) -> dict[str, dict[str, float]]:
    """Fit state and reward probes on ``train`` features (per episode [T, F]) and score them on
    ``test`` -> {group: {"r2", "mse", "alpha"}}; reward rows skip each episode's reset frame."""
    episode_ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(train)])
    x_train, x_test = np.concatenate(train), np.concatenate(test)
    states = np.concatenate([e.states for e in train_episodes])[:, groups["state"]]
    test_states = np.concatenate([e.states for e in test_episodes])[:, groups["state"]]
    state_probe = fit_ridge_cv(x_train, states, episode_ids, folds=folds)
    predicted = state_probe.predict(x_test)
    scores = {}
    for name, columns in groups.items():
        index = [groups["state"].index(c) for c in columns]
        norm = Standardizer(state_probe.y_norm.mean[index], state_probe.y_norm.scale[index])
        scores[name] = regression_scores(test_states[:, index], predicted[:, index], norm)
        scores[name]["alpha"] = state_probe.alpha
    after_reset = lambda arrays: np.concatenate([a[1:] for a in arrays])
    rewards = after_reset([e.rewards for e in train_episodes])[:, None].astype(np.float64)
    reward_ids = np.concatenate([np.full(len(f) - 1, i) for i, f in enumerate(train)])
    if constant_columns(rewards).all():
        return scores
    reward_probe = fit_ridge_cv(after_reset(train), rewards, reward_ids, folds=folds)
    test_rewards = after_reset([e.rewards for e in test_episodes])[:, None].astype(np.float64)
    scores["reward"] = regression_scores(
        test_rewards, reward_probe.predict(after_reset(test)), reward_probe.y_norm
    )
    scores["reward"]["alpha"] = reward_probe.alpha
    return scores


def train_head_over_time(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    steps: int = 1000,
    eval_every: int = 50,
    hidden: int = 256,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Train an MLP head (one hidden ELU layer; ``hidden=0``: linear) by Adam on standardised
    x [n, d] -> y [n, k] and record the held-out MSE (training-std units) every ``eval_every``
    steps -> {"steps", "test_mse"} (Fig. 8 of the paper)."""
    x_norm, y_norm = Standardizer.fit(x_train), Standardizer.fit(y_train)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)
    xt, yt = as_tensor(x_norm(x_train)), as_tensor(y_norm(y_train))
    xv, yv = as_tensor(x_norm(x_test)), as_tensor(y_norm(y_test))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.Linear(xt.shape[1], hidden), nn.ELU(), nn.Linear(hidden, yt.shape[1])]
        head = nn.Sequential(*layers) if hidden else nn.Linear(xt.shape[1], yt.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {"steps": [], "test_mse": []}
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                curve["steps"].append(step)
                curve["test_mse"].append(float((head(xv) - yv).pow(2).mean()))
        if step == steps:
            break
        batch = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=generator)
        loss = (head(xt[batch]) - yt[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return curve


def embed_2d(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Standardised features [n, F] -> 2-D points [n, 2] by t-SNE (PCA below 10 points)."""
    x = Standardizer.fit(features)(features)
    if method == "tsne" and len(x) >= 10:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(x) - 1) / 3.0)
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score of the task labels in the standardised feature space (1: tight,
    separate task clusters; 0: overlapping)."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(Standardizer.fit(features)(features), labels))


def run_probe(
    model: APVVideoModel,
    envs: Sequence[str],
    out: str | Path,
    *,
    episodes: int = 10,
    test_episodes: int | None = None,
    seed: int = 0,
    random_init_seeds: int = 3,
    policy: str = "auto",
    action_noise: float = 0.1,
    episode_length: int | None = None,
    folds: int = 5,
    over_time: bool = False,
    over_time_steps: int = 1000,
    embedding: str = "tsne",
    clip_length: int = 25,
    device: str | torch.device = "cpu",
    model_name: str = "model",
    progress: bool = True,
) -> dict[str, Any]:
    """Probe ``model`` (and random-init copies) on ``envs``; write ``probe.json``, ``probe.md``
    and the figures of `PLOTS` into ``out`` and return the report (see the module doc)."""
    from tqdm.auto import tqdm

    envs = list(dict.fromkeys(envs))
    if not envs:
        raise ProbeError("name at least one environment")
    if embedding not in EMBEDDINGS:
        raise ProbeError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    if folds < 2:
        raise ProbeError(f"cross-validation needs at least 2 folds, got {folds}")
    if random_init_seeds < 0:
        raise ProbeError(f"random_init_seeds must be 0 or more, got {random_init_seeds}")
    if test_episodes is not None and test_episodes < 1:
        raise ProbeError(f"test_episodes must be at least 1, got {test_episodes}")
    test_episodes = test_episodes or max(1, round(0.3 * episodes))
    if episodes - test_episodes < 2:
        raise ProbeError(
            f"{episodes} episodes with {test_episodes} held out leave fewer than 2 to fit on "
            "(cross-validation needs two): collect more episodes"
        )
    model = model.to(device).eval()
    cfg = model.config
    collected = {}
    layouts = {}
    for env in envs:
        collected[env], layouts[env] = collect_episodes(
            env,
            episodes,
            seed=seed,
            policy=policy,
            action_noise=action_noise,
            render_size=cfg.image_size,
            episode_length=episode_length,
            progress=progress,
        )
    init_seeds = [seed * 1000 + k for k in range(random_init_seeds)]
    feature_sets = [(PRETRAINED, None, model)]
    feature_sets += [(RANDOM_INIT, s, m) for s, m in random_init_models(cfg, init_seeds, device)]
    # Clip features for the embedding: the pre-trained model and the first random init.
    embedded = {(PRETRAINED, None), *[(RANDOM_INIT, s) for s in init_seeds[:1]]}
    features: dict[tuple[str, int | None], dict[str, list[np.ndarray]]] = {}
    clips: dict[tuple[str, int | None], list[np.ndarray]] = {}
    clip_labels: list[str] = []
    total = len(feature_sets) * len(envs) * episodes
    with tqdm(total=total, desc="features", disable=not progress) as bar:
        for kind, init_seed, net in feature_sets:
            key = (kind, init_seed)
            features[key] = {env: [] for env in envs}
            for env in envs:
                for episode in collected[env]:
                    features[key][env].append(episode_features(net, episode.frames, device))
                    if len(envs) > 1 and key in embedded:
                        clip = episode_features(net, episode.frames, device, clip_length)
                        clips.setdefault(key, []).append(clip)
                        if kind == PRETRAINED:
                            clip_labels += [env] * len(clip)
                    bar.update()
    rows: list[dict[str, Any]] = []
    targets: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    split = episodes - test_episodes
    for env in tqdm(envs, desc="regressions", disable=not progress):
        train_eps, test_eps = collected[env][:split], collected[env][split:]
        groups, dropped = target_groups(layouts[env], np.concatenate([e.states for e in train_eps]))
        targets[env] = {"groups": groups, "constant_columns": dropped}
        for (kind, init_seed), per_env in features.items():
            scores = score_features(
                per_env[env][:split], per_env[env][split:], train_eps, test_eps, groups, folds
            )
            for target, entry in scores.items():
                rows.append(
                    {
                        "env": env,
                        "target": target,
                        "dims": len(groups.get(target, [0])),
                        "features": kind,
                        "init_seed": init_seed,
                        **entry,
                    }
                )
        if over_time:
            curves[env] = over_time_curves(
                features, env, train_eps, test_eps, groups, split, over_time_steps, seed
            )
    report: dict[str, Any] = {
        "model": model_name,
        "feat_dim": model.feat_dim,
        "envs": envs,
        "episodes": episodes,
        "test_episodes": test_episodes,
        "episode_frames": {env: [len(e.frames) for e in collected[env]] for env in envs},
        "policy": {env: resolve_policy(env, policy) for env in envs},
        "action_noise": action_noise,
        "seed": seed,
        "random_init_seeds": init_seeds,
        "targets": targets,
        "rows": rows,
        "summary": summarize_rows(rows),
        "over_time": curves or None,
        "embedding": None,
    }
    if clips:
        labels = np.asarray(clip_labels)
        report["embedding"] = {"method": embedding, "clip_length": clip_length, "sets": {}}
        for (kind, init_seed), parts in clips.items():
            stacked = np.concatenate(parts)
            report["embedding"]["sets"][kind] = {
                "init_seed": init_seed,
                "silhouette": silhouette(stacked, labels),
                "points": embed_2d(stacked, embedding, seed).tolist(),
                "labels": clip_labels,
            }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, out)
    write_json(out / "probe.json", report)
    write_atomic(out / "probe.md", markdown(report).encode())
    return report


def over_time_curves(
    features: dict[tuple[str, int | None], dict[str, list[np.ndarray]]],
    env: str,
    train_eps: list[ProbeEpisode],
    test_eps: list[ProbeEpisode],
    groups: dict[str, list[int]],
    split: int,
    steps: int,
    seed: int,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Held-out MSE of MLP heads over training steps -> {target: {feature set: curve}}, the
    feature sets named ``pretrained`` and ``random_init[<seed>]``."""
    states = lambda eps: np.concatenate([e.states for e in eps])[:, groups["state"]]
    rewards = lambda eps: np.concatenate([e.rewards[1:] for e in eps])[:, None]
    result: dict[str, dict[str, list]] = {"state": {}, "reward": {}}
    for (kind, init_seed), per_env in features.items():
        x = per_env[env]
        name = kind if init_seed is None else f"{kind}[{init_seed}]"
        result["state"][name] = train_head_over_time(
            np.concatenate(x[:split]),
            states(train_eps),
            np.concatenate(x[split:]),
            states(test_eps),
            steps=steps,
            seed=seed,
        )
        result["reward"][name] = train_head_over_time(
            np.concatenate([f[1:] for f in x[:split]]),
            rewards(train_eps),
            np.concatenate([f[1:] for f in x[split:]]),
            rewards(test_eps),
            steps=steps,
            seed=seed,
        )
    return result


def summarize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (env, target): pre-trained R^2/MSE and the random-init mean, min and max."""
    summary = []
    keys = list(dict.fromkeys((r["env"], r["target"]) for r in rows))
    for env, target in keys:
        mine = [r for r in rows if r["env"] == env and r["target"] == target]
        pre = next(r for r in mine if r["features"] == PRETRAINED)
        rand = [r for r in mine if r["features"] == RANDOM_INIT]
        entry = {"env": env, "target": target, "dims": pre["dims"]}
        entry["pretrained"] = {"r2": pre["r2"], "mse": pre["mse"]}
        if rand:
            entry["random_init"] = {
                metric: {
                    "mean": float(np.mean([r[metric] for r in rand])),
                    "min": float(np.min([r[metric] for r in rand])),
                    "max": float(np.max([r[metric] for r in rand])),
                }
                for metric in ("r2", "mse")
            }
        summary.append(entry)
    return summary


# Output ---------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The probe table: held-out R^2 and MSE per environment and target group."""
    seeds = report["random_init_seeds"]
    lines = [
        "# Representation probe",
        "",
        f"- model: `{report['model']}` (features: {report['feat_dim']} per frame, latent modes)",
        f"- {report['episodes']} episodes per environment, the last {report['test_episodes']} "
        "held out; ridge regression from one frame's features to its state and reward, penalty "
        "by cross-validation over the training episodes",
        f"- random init: the same architecture under torch seeds {seeds}"
        + (" (mean [min, max] over seeds)" if len(seeds) > 1 else ""),
        "- held-out episodes: R^2 = 1 - squared error / squared deviation from the training mean "
        "(1 perfect, 0 no better than the mean, < 0 worse); MSE in units of each target's "
        "training std",
        "",
        "| env | target | dims | R^2 pre-trained | R^2 random init | MSE pre-trained | "
        "MSE random init |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in report["summary"]:
        rand = entry.get("random_init")
        cells = []
        for metric in ("r2", "mse"):
            cells.append(_num(entry["pretrained"][metric]))
            if rand is None:
                cells.append("-")
            elif len(seeds) > 1:
                r = rand[metric]
                cells.append(f"{_num(r['mean'])} [{_num(r['min'])}, {_num(r['max'])}]")
            else:
                cells.append(_num(rand[metric]["mean"]))
        lines.append(
            f"| {entry['env']} | {entry['target']} | {entry['dims']} | " + " | ".join(cells) + " |"
        )
    embedding = report["embedding"]
    if embedding:
        lines += ["", f"## Clip features ({embedding['clip_length']} frames) by task", ""]
        lines += ["| features | silhouette score |", "| --- | --- |"]
        for kind, entry in embedding["sets"].items():
            lines.append(f"| {kind} | {_num(entry['silhouette'])} |")
    if report["over_time"]:
        lines += ["", "## MLP head trained by Adam: held-out MSE, first and last step", ""]
        lines += ["| env | target | features | first | last |", "| --- | --- | --- | --- | --- |"]
        for env, targets in report["over_time"].items():
            for target, sets in targets.items():
                for name, curve in sets.items():
                    first, last = curve["test_mse"][0], curve["test_mse"][-1]
                    lines.append(f"| {env} | {target} | {name} | {_num(first)} | {_num(last)} |")
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({file})" for name, file in report["plots"].items()]
    return "\n".join(lines) + "\n"


def write_plots(report: dict[str, Any], out: Path) -> dict[str, str]:
    """The figures of `PLOTS` that apply -> {name: file name in ``out``}."""
    envs = report["envs"]
    palette = plots.colours([PRETRAINED, RANDOM_INIT])
    written = {}

    fig, axes = plots.new_figure(len(envs), 1, panel=(5.0, 3.4))
    for ax, env in zip(axes[0], envs, strict=True):
        entries = [e for e in report["summary"] if e["env"] == env]
        x = np.arange(len(entries))
        pre = [e["pretrained"]["r2"] for e in entries]
        ax.bar(x - 0.2, pre, 0.4, color=palette[PRETRAINED], label="pre-trained")
        if all("random_init" in e for e in entries):
            rand = [e["random_init"]["r2"] for e in entries]
            mean = np.array([r["mean"] for r in rand])
            spread = [mean - [r["min"] for r in rand], [r["max"] for r in rand] - mean]
            ax.bar(
                x + 0.2,
                mean,
                0.4,
                yerr=spread,
                capsize=3,
                color=palette[RANDOM_INIT],
                label="random init",
            )
        ax.set_xticks(x, [e["target"] for e in entries], rotation=30, ha="right")
        ax.set_ylim(-1.0, 1.05)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=env, ylabel="held-out R^2")
    axes[0, 0].legend()
    written["r2"] = plots.save_figure(fig, out / PLOTS["r2"]).name

    if report["over_time"]:
        fig, axes = plots.new_figure(2, len(envs), panel=(4.6, 3.2))
        for row, env in enumerate(envs):
            for col, target in enumerate(("state", "reward")):
                ax = axes[row, col]
                for name, curve in report["over_time"][env][target].items():
                    kind = PRETRAINED if name == PRETRAINED else RANDOM_INIT
                    label = "pre-trained" if kind == PRETRAINED else "random init"
                    ax.plot(curve["steps"], curve["test_mse"], color=palette[kind], label=label)
                ax.set(title=f"{env}: {target}", xlabel="SGD steps", ylabel="held-out MSE")
                ax.set_yscale("log")
                handles, labels = ax.get_legend_handles_labels()
                unique = dict(zip(labels, handles, strict=True))
                ax.legend(unique.values(), unique.keys())
        written["over_time"] = plots.save_figure(fig, out / PLOTS["over_time"]).name

    if report["embedding"]:
        sets = report["embedding"]["sets"]
        env_colours = plots.colours(envs)
        fig, axes = plots.new_figure(len(sets), 1, panel=(4.4, 4.0))
        for ax, (kind, entry) in zip(axes[0], sets.items(), strict=True):
            points = np.asarray(entry["points"])
            labels = np.asarray(entry["labels"])
            for env in envs:
                mine = points[labels == env]
                ax.scatter(mine[:, 0], mine[:, 1], s=14, color=env_colours[env], label=env)
            ax.set_title(f"{kind}: silhouette {entry['silhouette']:.2f}")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, 0].legend(fontsize="small")
        fig.suptitle(f"Clip-averaged features ({report['embedding']['method']})")
        written["embedding"] = plots.save_figure(fig, out / PLOTS["embedding"]).name
    return written


# Command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apv-probe",
        description="Probe a video model's features (paper Figs. 7a and 8): collect episodes, "
        "fit ridge regressions from each frame's features to the environment's state and reward "
        "on some episodes, score R^2 and MSE on held-out ones, and compare with the same "
        "architecture at random initialisation. Writes probe.json, probe.md and PNG figures.",
    )
    parser.add_argument("model", help="video model folder or Hub repo id (APVVideoModel)")
    parser.add_argument(
        "--env",
        action="append",
        required=True,
        help="environment for apv_hub.envs.make, e.g. metaworld/drawer-open-v3 or "
        "dmc/walker-walk; repeat for several (then a t-SNE of clip features by task is drawn)",
    )
    parser.add_argument("--episodes", type=int, default=10, help="episodes per environment")
    parser.add_argument(
        "--test-episodes", type=int, default=None, help="held-out episodes (default: 30%%)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of episodes and inits (0)")
    parser.add_argument(
        "--random-init-seeds", type=int, default=3, help="random-init models to compare (3)"
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default="auto",
        help="auto: Meta-world's scripted expert with action noise, random actions elsewhere",
    )
    parser.add_argument(
        "--action-noise", type=float, default=0.1, help="std of the expert's action noise (0.1)"
    )
    parser.add_argument(
        "--episode-length",
        type=int,
        default=None,
        help="environment steps per episode (default: the environment's, 500 on Meta-world)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    parser.add_argument(
        "--over-time", action="store_true", help="also train MLP heads and plot held-out MSE"
    )
    parser.add_argument("--over-time-steps", type=int, default=1000, help="their Adam steps")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default="tsne")
    parser.add_argument("--clip-length", type=int, default=25, help="frames per embedded clip")
    parser.add_argument("--revision", default=None, help="Hub revision of the model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


@command("apv-probe")
def main(argv: Sequence[str] | None = None) -> int:
    """The ``apv-probe`` command: 0 on success, 2 for a probe that cannot run as asked, 1 for a
    model that cannot be loaded."""
    args = build_parser().parse_args(argv)
    model = APVVideoModel.from_pretrained(
        args.model, revision=args.revision, map_location=args.device
    )
    report = run_probe(
        model,
        args.env,
        args.out,
        episodes=args.episodes,
        test_episodes=args.test_episodes,
        seed=args.seed,
        random_init_seeds=args.random_init_seeds,
        policy=args.policy,
        action_noise=args.action_noise,
        episode_length=args.episode_length,
        folds=args.folds,
        over_time=args.over_time,
        over_time_steps=args.over_time_steps,
        embedding=args.embedding,
        clip_length=args.clip_length,
        device=args.device,
        model_name=str(args.model),
        progress=not args.quiet,
    )
    print(markdown(report).split("\n## ")[0], file=sys.stderr)
    print(f"wrote {Path(args.out) / 'probe.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
