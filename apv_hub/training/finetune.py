"""APV fine-tuning: collect experience, train the agent every few steps, evaluate, checkpoint.

```bash
accelerate launch finetune.py --pretrained runs/pre --env metaworld/drawer-open-v3 --out runs/ft
apv-finetune --env dmc/quadruped-walk --variant dreamerv2 --out runs/dv2 --seed 1
apv-finetune --out runs/ft --resume          # continue the run in runs/ft exactly where it was
torchrun --nproc_per_node 2 finetune.py ...  # two processes (e.g. CPU, gloo)
```

The loop, DreamerV2's: ``prefill`` random-action steps; then ``pretrain_updates`` updates at once
(Meta-world holds the pre-trained encoder and action-free RSSM still during the first 100
updates, see ``AgentConfig``); then ``train_steps`` updates every ``train_every`` policy steps,
acting with the agent's exploring policy in between. Units: ``total_env_steps``, ``eval_every``,
``log_every`` and ``checkpoint_every`` count environment steps (action repeats included, the
paper's x axis); ``prefill`` and ``train_every`` count policy steps (one action each), as
DreamerV2 does. All counts are global over processes.

Several processes (``torchrun`` / ``accelerate launch`` with N processes): each rank runs its own
``num_envs`` environments (different seeds) and replay buffer (``replay_capacity / N`` steps) and
samples ``batch_size / N`` sequences per update; gradients are averaged over ranks before every
optimiser step (`apv_hub.training.optim.apply_gradients`), parameters start from rank 0's, and every
checkpoint checks that they are still identical everywhere. Steps are counted globally and only
the main process writes logs, curves, videos and the agent (each rank writes its own replay
into the checkpoint).

Exact resume: every episode starts from a seed derived from (seed, rank, slot, episode number),
checkpoints are taken when every environment has just finished an episode (at once with the
fixed-length episodes of Meta-world and DMC; forced mid-episode if environments never align for a
whole ``checkpoint_every``) and hold the agent, optimisers, replay, bonus state, counters and
every random generator; a run resumed from a checkpoint then continues bit for bit like the
uninterrupted run on the same machine (CPU; GPU kernels may not be deterministic).

Run folder (``--out``): ``config.json``, ``curve.csv`` / ``curve.json`` (evaluation learning
curve), ``tb/`` (TensorBoard), ``videos/eval-<step>.mp4``, ``checkpoints/ckpt-<step>/`` and, at
the end, ``agent/`` (the agent with a model card, loadable with ``APVAgent.from_pretrained``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apv_hub.agent import APVAgent, make_optimizers
from apv_hub.config import VARIANTS, AgentConfig, ConfigError
from apv_hub.data.video import video_grid, write_video
from apv_hub.envs import EnvPool, default_options
from apv_hub.evaluation.episodes import (
    EpisodeResult,
    episode_seed,
    parse_assignments,
    run_episodes,
    summarize,
)
from apv_hub.io import json_ready, write_atomic
from apv_hub.replay import ReplayBuffer
from apv_hub.training.checkpoint import (
    begin_checkpoint,
    checkpoint_path,
    commit_checkpoint,
    latest_checkpoint,
    link_files,
)
from apv_hub.training.logging import CurveWriter, ScalarLogger
from apv_hub.weights import CheckpointError, load_tensors, save_tensors, tensor_digest

CONFIG_FILE = "config.json"
RUN_STATE_FILE = "run_state.json"
PRECISIONS = ("auto", "fp32", "bf16")
# The and the paper's names for the variants of `apv_hub.config.VARIANTS`.
VARIANT_ALIASES = {
    "naive_ft": "naive_finetune",
    "apv_no_pretrain": "apv_scratch",
    "apv_encoder_decoder": "encoder_decoder",
}
# `numpy.random.SeedSequence` streams (evaluation uses `apv_hub.evaluation.EVAL_STREAM` = 1).
TRAIN_EPISODE_STREAM, ACTION_STREAM, TORCH_STREAM = 0, 2, 3
# Keys a resumed run may change: they decide what is recorded, not what is learned.
RUN_CONTROL_KEYS = (
    "total_env_steps",
    "eval_every",
    "eval_episodes",
    "eval_envs",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "video",
    "video_fps",
    "step_timeout",
    "max_nonfinite_updates",
)


def canonical_variant(name: str) -> str:
    """``"naive-ft" -> "naive_finetune"``; names every known variant when ``name`` is not one."""
    key = name.strip().lower().replace("-", "_")
    key = VARIANT_ALIASES.get(key, key)
    if key not in VARIANTS:
        known = sorted({*VARIANTS, *VARIANT_ALIASES})
        raise ConfigError(f"unknown variant {name!r}; choose one of {known}")
    return key


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run is made of; saved as ``config.json`` in the run folder.

    Presets (`FinetuneConfig.preset`): ``metaworld`` and ``dmc`` reproduce REFERENCE section 2,
    ``small`` is the Meta-world recipe at CPU scale, ``tiny`` is for tests.
    """

    # Environment name for `apv_hub.envs.make` and its options (episode_length, action_repeat,
    # camera, ...; the family's defaults otherwise).
    env: str = ""
    env_options: dict[str, Any] = field(default_factory=dict)
    # Which agent (see apv_hub.config.VARIANTS) and the pre-trained video model it builds on
    # (folder or Hub repo id; None only for variants that copy nothing).
    variant: str = "apv"
    pretrained: str | None = None
    # The preset this config started from (a record; presets are applied by `preset`).
    preset_name: str = "metaworld"
    seed: int = 0
    # Schedule. Environment steps include action repeats; policy steps are one action each.
    total_env_steps: int = 256_000
    prefill: int = 5000  # policy steps of uniformly random actions before training
    pretrain_updates: int = 100  # updates done at once when prefill ends (DreamerV2 "pretrain")
    train_every: int = 5  # policy steps between trainings ...
    train_steps: int = 1  # ... of this many updates
    num_envs: int = 1  # environments per process
    replay_capacity: int = 1_000_000  # steps, over all processes
    # Evaluation: deterministic episodes every eval_every environment steps and at the end.
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_envs: int = 1  # evaluation environments per process
    video: bool = True
    video_fps: int = 20
    # Records and safety.
    log_every: int = 1000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto: bf16 on GPUs that support it, else fp32
    step_timeout: float = 120.0  # seconds before a silent environment worker is replaced
    max_nonfinite_updates: int = 10  # consecutive updates with non-finite gradients -> abort
    agent: AgentConfig = field(default_factory=lambda: AgentConfig.preset("metaworld"))

    def __post_init__(self) -> None:
        if isinstance(self.agent, dict):
            self.agent = AgentConfig.from_dict(self.agent)
        self.variant = canonical_variant(self.variant)
        positive = (
            "total_env_steps",
            "train_every",
            "train_steps",
            "num_envs",
            "replay_capacity",
            "eval_every",
            "eval_episodes",
            "eval_envs",
            "video_fps",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "step_timeout",
            "max_nonfinite_updates",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("prefill", "pretrain_updates"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.env_options, dict):
            raise ConfigError(f"env_options must be a dict, got {self.env_options!r}")

    @property
    def action_repeat(self) -> int:
        """Environment steps per policy step."""
        return int({**default_options(self.env), **self.env_options}["action_repeat"])

    @classmethod
    def preset(cls, name: str, variant: str = "apv", **overrides: Any) -> FinetuneConfig:
        """Preset ``name`` (``metaworld``, ``dmc``, ``small``, ``tiny``) for ``variant``.

        ``overrides`` are run-level fields; the agent's are set with `override` or ``agent=``.
        """
        if name not in RUN_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(RUN_PRESETS)}")
        variant = canonical_variant(variant)
        data = {**RUN_PRESETS[name], "preset_name": name, "variant": variant, **overrides}
        data.setdefault("agent", AgentConfig.preset(name, variant))
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["env_options"] = dict(self.env_options)
        data["agent"] = self.agent.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], require_all: bool = False) -> FinetuneConfig:
        """Build from a dict (``agent`` a nested dict or AgentConfig), naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown FinetuneConfig field(s): {', '.join(unknown)}")
        if require_all and sorted(names - set(data)):
            raise ConfigError(f"config is missing field(s): {', '.join(sorted(names - set(data)))}")
        data = dict(data)
        agent = data.get("agent")
        if isinstance(agent, dict):
            data["agent"] = AgentConfig.from_dict(agent, require_all=require_all)
        return cls(**data)

    def save(self, path: str | Path) -> None:
        write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> FinetuneConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data, require_all=True)

    def override(self, assignments: dict[str, Any]) -> FinetuneConfig:
        """A copy with dotted keys set, e.g. ``{"agent.world_model.free_nats": 1.0,
        "env_options.episode_length": 200, "total_env_steps": 10_000}``; values are checked
        against the field's current type and the result is validated."""
        data = self.to_dict()
        for key, value in assignments.items():
            set_dotted(data, key, value)
        return FinetuneConfig.from_dict(data)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"]["c"] = value`` for key ``"a.b.c"``, naming an unknown key and the
    keys that exist there; ``env_options`` accepts new keys (the environment checks them)."""
    parts = key.split(".")
    node, path = data, []
    for part in parts[:-1]:
        path.append(part)
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown config key {'.'.join(path)!r} (in {key!r})")
        node = node[part]
    last = parts[-1]
    if last not in node and path != ["env_options"]:
        where = ".".join(path) or "the top level"
        raise ConfigError(f"unknown config key {key!r}; keys at {where}: {', '.join(sorted(node))}")
    current = node.get(last)
    node[last] = _checked_value(key, current, value)


def _checked_value(key: str, current: Any, value: Any) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} takes true or false, got {value!r}")
        return value
    if isinstance(current, int | float) and not isinstance(value, bool):
        if isinstance(current, int) and isinstance(value, int):
            return value
        if isinstance(current, int) and isinstance(value, float) and value.is_integer():
            return int(value)  # 1e5 on the command line
        if isinstance(current, float) and isinstance(value, int | float):
            return float(value)
    if isinstance(current, str) and isinstance(value, str):
        return value
    if isinstance(current, list | tuple) and isinstance(value, list):
        return value
    if isinstance(current, dict) and isinstance(value, dict):
        return value
    raise ConfigError(f"{key} takes a {type(current).__name__}, got {value!r}")


RUN_PRESETS: dict[str, dict[str, Any]] = {
    # REFERENCE section 2, Meta-world: 256K steps, prefill 5000, 100 pretrain updates, 10 eval
    # episodes (success rate).
    "metaworld": dict(
        total_env_steps=256_000,
        prefill=5000,
        pretrain_updates=100,
        eval_every=10_000,
        eval_episodes=10,
        checkpoint_every=10_000,
    ),
    # REFERENCE section 2, DMC: 502K steps (action repeat 2), prefill 1000, one eval episode.
    "dmc": dict(
        total_env_steps=502_000,
        prefill=1000,
        pretrain_updates=1,
        eval_every=10_000,
        eval_episodes=1,
        checkpoint_every=20_000,
    ),
    # The Meta-world recipe on the `small` agent: hours on a 2-core CPU (~1.4 env steps/s while
    # training, benchmarks/RESULTS.md); shorten with --steps for a look.
    "small": dict(
        total_env_steps=20_000,
        prefill=1000,
        pretrain_updates=100,
        eval_every=5000,
        eval_episodes=2,
        log_every=500,
        checkpoint_every=5000,
        replay_capacity=100_000,
    ),
    # Seconds: for tests.
    "tiny": dict(
        total_env_steps=200,
        prefill=40,
        pretrain_updates=2,
        eval_every=100,
        eval_episodes=1,
        log_every=50,
        checkpoint_every=100,
        replay_capacity=10_000,
        env_options={"episode_length": 50},
    ),
}


@dataclass
class RunState:
    """Global counters of a run (identical on every rank) and the learning curve so far."""

    env_steps: int = 0
    policy_steps: int = 0
    episodes: int = 0
    # Policy step at which training started (None during prefill) and updates done since
    # (excluding the pretrain updates).
    train_start: int | None = None
    periodic_updates: int = 0
    nonfinite_updates: int = 0
    consecutive_nonfinite: int = 0
    last_eval: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NonFiniteError(RuntimeError):
    """Training produced non-finite gradients for too many updates in a row."""


def make_accelerator(precision: str = "auto") -> Any:
    """An ``accelerate.Accelerator``: GPU when there is one (bf16 autocast for ``auto`` where
    supported), else CPU with fp32; several processes when launched by torchrun/accelerate."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16: this GPU does not support bfloat16; use fp32")
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if precision == "bf16" else "no")


def build_agent(config: FinetuneConfig, action_dim: int) -> APVAgent:
    """The agent of ``config.variant``, on the pre-trained model when one is given (on CPU).

    Seeded with ``config.seed`` so that every process builds the same initial weights.
    """
    torch.manual_seed(config.seed)
    if config.pretrained:
        return APVAgent.from_video_model(config.pretrained, config.agent, action_dim)
    if config.agent.world_model.transfer != "none":
        raise ConfigError(
            f"variant {config.variant!r} copies weights from a pre-trained video model: pass "
            "--pretrained (a checkpoint folder or Hub repo id), or use a variant that starts "
            "from scratch (dreamerv2, apv_scratch)"
        )
    return APVAgent(config.agent, action_dim, training={"pretrained": None})


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


class Finetuner:
    """One fine-tuning run in ``out`` (see the module doc); ``run()`` does it all.

    Args:
        config: the run's config.
        out: the run folder.
        accelerator: an ``accelerate.Accelerator`` (default: `make_accelerator`).
        resume: continue from the newest checkpoint in ``out`` (start afresh if there is none).
        push_to_hub: a Hub repo id to upload the final agent, its curve and last video to.
        command: the command line, recorded in the model card.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        out: str | Path,
        *,
        accelerator: Any = None,
        resume: bool = False,
        push_to_hub: str | None = None,
        command: str | None = None,
    ) -> None:
        if not config.env:
            raise ConfigError("no environment: set env (e.g. --env metaworld/drawer-open-v3)")
        self.config, self.out = config, Path(out)
        self.acc = accelerator if accelerator is not None else make_accelerator(config.precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.resume, self.push_to_hub, self.command = resume, push_to_hub, command
        batch = config.agent.batch_size
        if batch % self.world:
            raise ConfigError(
                f"agent.batch_size {batch} does not split evenly over {self.world} processes"
            )
        self.local_batch = batch // self.world
        self.ckpt_dir = self.out / "checkpoints"
        self.state = RunState(world_size=self.world)
        self.metric_sums: dict[str, list[float]] = {}
        self.finished: list[tuple[float, float | None]] = []  # Training episodes since the log.
        self.last_checkpoint_step: int | None = None
        self.pending_checkpoint: int | None = None
        self.eval_pool: EnvPool | None = None
        self.logger: ScalarLogger | None = None
        self.curve: CurveWriter | None = None
        self.last_video: Path | None = None

    # Setup ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        checkpoint = latest_checkpoint(self.ckpt_dir) if self.resume else None
        if self.main:
            if not self.resume and latest_checkpoint(self.ckpt_dir) is not None:
                raise FileExistsError(
                    f"{self.out} already holds checkpoints: pass --resume to continue that run, "
                    "or choose another --out"
                )
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / CONFIG_FILE)
            self.logger = ScalarLogger(self.out / "tb")
            self.curve = CurveWriter(self.out)
        self.pool = EnvPool(
            cfg.env,
            cfg.num_envs,
            seed=_seed(cfg.seed, TRAIN_EPISODE_STREAM, self.rank),
            step_timeout=cfg.step_timeout,
            **cfg.env_options,
        )
        self.replay = ReplayBuffer(
            max(1, cfg.replay_capacity // self.world), seed=_seed(cfg.seed, 4, self.rank)
        )
        self.rng = np.random.default_rng(_seed(cfg.seed, ACTION_STREAM, self.rank))
        self.episode_index = np.zeros(cfg.num_envs, np.int64)
        self.returns = np.zeros(cfg.num_envs)
        self.successes = np.zeros(cfg.num_envs)
        with self.acc.main_process_first():  # One download of the pre-trained model.
            if checkpoint is not None:
                self.agent = APVAgent.from_pretrained(checkpoint / "agent")
            else:
                self.agent = build_agent(cfg, self.pool.action_dim)
        if self.agent.action_dim != self.pool.action_dim:
            raise CheckpointError(
                f"the agent acts in {self.agent.action_dim} dimensions, {cfg.env} needs "
                f"{self.pool.action_dim}"
            )
        self.agent.to(self.acc.device)
        self._broadcast_parameters()
        names = list(make_optimizers(self.agent))
        prepared = self.acc.prepare(*make_optimizers(self.agent).values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.optimizers = dict(zip(names, prepared, strict=True))
        torch.manual_seed(_seed(cfg.seed, TORCH_STREAM, self.rank))  # Ranks explore apart.
        if checkpoint is not None:
            self._restore(checkpoint)
        elif self.resume and self.main:
            warnings.warn(
                f"--resume: no checkpoint in {self.ckpt_dir}; starting afresh", stacklevel=2
            )

    def _broadcast_parameters(self) -> None:
        """Start every rank from rank 0's weights and buffers (they are built alike anyway)."""
        if self.world > 1:
            for tensor in self.agent.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    # The loop ------------------------------------------------------------------------------

    def run(self) -> Path | None:
        """Train to ``total_env_steps``; returns the final agent folder (main process)."""
        from tqdm.auto import tqdm

        self._setup()
        cfg = self.config
        bar = tqdm(
            total=cfg.total_env_steps,
            initial=self.state.env_steps,
            unit="step",
            desc=f"{cfg.env} {cfg.variant}",
            disable=not self.main,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        self.window_start = (time.perf_counter(), self.state.env_steps, self.agent.num_updates)
        obs: dict[str, np.ndarray] | None = None
        policy_state = None
        try:
            while self.state.env_steps < cfg.total_env_steps:
                before = self.state.env_steps
                obs, policy_state = self._collect(obs, policy_state)
                self._train()
                self._maybe_log(before, bar)
                if _crossed(before, self.state.env_steps, cfg.eval_every):
                    self._evaluate()
                self._maybe_checkpoint(before, obs)
                bar.update(self.state.env_steps - before)
            if self.last_checkpoint_step != self.state.env_steps:
                self._save_checkpoint()
            if self.state.last_eval != self.state.env_steps:
                self._evaluate(record_in_checkpoint=False)
            return self._finish()
        finally:
            bar.close()
            self._close()

    def _collect(
        self, obs: dict[str, np.ndarray] | None, policy_state: dict | None
    ) -> tuple[dict[str, np.ndarray], dict | None]:
        """One step of every environment (or a reset of all) into the replay; counts steps."""
        cfg = self.config
        if obs is None or obs["is_last"].all():
            # All episodes ended together (always so with fixed lengths): a fresh start, with
            # no action drawn, exactly what a run resumed from a checkpoint here does.
            new = self.pool.reset(self._episode_seeds())
            policy_state = None
        else:
            if self.state.policy_steps < cfg.prefill:
                action = self.rng.uniform(-1, 1, (cfg.num_envs, self.pool.action_dim))
            else:
                act, policy_state = self.agent.act(obs, policy_state, explore=True)
                action = act.float().cpu().numpy()
            new = self.pool.step(action.astype(np.float32), self._episode_seeds())
        self.replay.add_batch(new)
        self.episode_index += new["is_first"]
        moved = ~new["is_first"]
        self.returns = np.where(new["is_first"], 0.0, self.returns + new["reward"] * moved)
        if "success" in new:
            self.successes = np.where(
                new["is_first"], 0.0, np.maximum(self.successes, new["success"])
            )
        for i in np.flatnonzero(new["is_last"]):
            self.finished.append(
                (float(self.returns[i]), float(self.successes[i] > 0) if "success" in new else None)
            )
        counts = self._global_sum([int(moved.sum()), int(new["is_last"].sum())])
        self.state.policy_steps += counts[0]
        self.state.env_steps += counts[0] * cfg.action_repeat
        self.state.episodes += counts[1]
        return new, policy_state

    def _episode_seeds(self) -> list[int]:
        """Seeds of the next episode of each slot: fixed by (seed, rank, slot, episode number)."""
        cfg = self.config
        return [
            _seed(cfg.seed, TRAIN_EPISODE_STREAM, self.rank, slot, int(self.episode_index[slot]))
            for slot in range(cfg.num_envs)
        ]

    def _train(self) -> None:
        cfg, state = self.config, self.state
        if state.train_start is None:
            if state.policy_steps < cfg.prefill or state.policy_steps == 0:
                return
            state.train_start = state.policy_steps
            todo = cfg.pretrain_updates
        else:
            due = (state.policy_steps - state.train_start) // cfg.train_every * cfg.train_steps
            todo = due - state.periodic_updates
            state.periodic_updates = due
        for _ in range(todo):
            self._update()

    def _update(self) -> None:
        cfg = self.config
        batch = self.replay.sample(self.local_batch, cfg.agent.seq_len, device=self.acc.device)
        with self.acc.autocast():
            metrics = self.agent.update(batch, self.optimizers, accelerator=self.acc)
        for key, value in metrics.items():
            self.metric_sums.setdefault(key, []).append(value)
        # Gradient norms are computed after the all-reduce, so every rank decides alike.
        bad_norms = [
            k for k, v in metrics.items() if k.endswith("grad_norm") and not math.isfinite(v)
        ]
        if not bad_norms:
            self.state.consecutive_nonfinite = 0
            return
        self.state.nonfinite_updates += 1
        self.state.consecutive_nonfinite += 1
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        message = (
            f"update {self.agent.num_updates} at {self.state.env_steps} env steps: non-finite "
            f"{', '.join(bad)}; its optimiser steps were skipped"
        )
        if self.main:
            warnings.warn(message, stacklevel=2)
        if self.state.consecutive_nonfinite >= cfg.max_nonfinite_updates:
            raise NonFiniteError(
                f"{message}; {self.state.consecutive_nonfinite} non-finite updates in a row "
                f"(max_nonfinite_updates={cfg.max_nonfinite_updates}). Resume from the last "
                f"checkpoint in {self.ckpt_dir} with a lower learning rate or another seed."
            )

    # Records -------------------------------------------------------------------------------

    def _maybe_log(self, before: int, bar: Any) -> None:
        if not _crossed(before, self.state.env_steps, self.config.log_every):
            return
        keys = sorted(self.metric_sums)
        local = [_finite_mean(self.metric_sums[k]) for k in keys]
        means = self._global_mean(local) if keys else []
        episodes = self._gather(self.finished)
        self.metric_sums, self.finished = {}, []
        now, steps = time.perf_counter(), self.state.env_steps
        start, start_steps, start_updates = self.window_start
        self.window_start = (now, steps, self.agent.num_updates)
        if not self.main:
            return
        elapsed = max(now - start, 1e-9)
        perf = {
            "env_steps_per_s": (steps - start_steps) / elapsed,
            "updates_per_s": (self.agent.num_updates - start_updates) / elapsed,
        }
        logger = self.logger
        logger.log(steps, dict(zip(keys, means, strict=True)), "train")
        logger.log(steps, perf, "perf")
        logger.log(steps, {**self.replay.stats, "pool_restarts": self.pool.restarts}, "replay")
        counters = {
            "updates": self.agent.num_updates,
            "episodes": self.state.episodes,
            "nonfinite_updates": self.state.nonfinite_updates,
        }
        logger.log(steps, counters, "progress")
        postfix = {"upd": self.agent.num_updates, "sps": f"{perf['env_steps_per_s']:.1f}"}
        if episodes:
            returns = [r for r, _ in episodes]
            logger.log(steps, {"return": float(np.mean(returns))}, "episode")
            postfix["ret"] = f"{np.mean(returns):.1f}"
            success = [s for _, s in episodes if s is not None]
            if success:
                logger.log(steps, {"success": float(np.mean(success))}, "episode")
        bar.set_postfix(postfix, refresh=False)

    def _evaluate(self, record_in_checkpoint: bool = True) -> None:
        """Deterministic episodes split over the ranks; the main process records the score."""
        cfg = self.config
        seeds = [episode_seed(cfg.seed, i) for i in range(cfg.eval_episodes)]
        mine = seeds[self.rank :: self.world]
        results: list[EpisodeResult] = []
        if mine:
            if self.eval_pool is None:
                self.eval_pool = EnvPool(
                    cfg.env,
                    min(cfg.eval_envs, len(mine)),
                    seed=_seed(cfg.seed, 5, self.rank),
                    step_timeout=cfg.step_timeout,
                    **cfg.env_options,
                )
            record = len(mine) if (self.main and cfg.video) else 0
            results = run_episodes(self.agent, self.eval_pool, mine, record=record)
        videos = [r.frames for r in results if r.frames is not None]
        for r in results:
            r.frames = None
        gathered = self._gather(results)
        if record_in_checkpoint:
            self.state.last_eval = self.state.env_steps
        if not self.main:
            return
        # Back to episode order (rank r ran episodes r, r + N, ...).
        order = {seed: i for i, seed in enumerate(seeds)}
        score = summarize(sorted(gathered, key=lambda r: order[r.seed]))
        row = {
            "env_steps": self.state.env_steps,
            "updates": self.agent.num_updates,
            "episodes": self.state.episodes,
            "return_mean": score["return"]["mean"],
            "return_ci_low": score["return"]["ci95"][0],
            "return_ci_high": score["return"]["ci95"][1],
        }
        if "success_rate" in score:
            row["success_rate"] = score["success_rate"]["mean"]
        row["eval_episodes"] = score["episodes"]
        if record_in_checkpoint:
            self.state.curve.append(row)
        self.curve.append(row)
        self.logger.log(
            self.state.env_steps, {k: v for k, v in row.items() if "_ci_" not in k}, "eval"
        )
        if videos:
            path = self.out / "videos" / f"eval-{self.state.env_steps:09d}.mp4"
            self.last_video = write_video(path, video_grid(videos), fps=cfg.video_fps)

    # Checkpoints ---------------------------------------------------------------------------

    def _maybe_checkpoint(self, before: int, obs: dict[str, np.ndarray]) -> None:
        cfg = self.config
        if self.pending_checkpoint is None and _crossed(
            before, self.state.env_steps, cfg.checkpoint_every
        ):
            self.pending_checkpoint = self.state.env_steps
        if self.pending_checkpoint is None:
            return
        # Exact resume needs every environment at an episode boundary (see the module doc).
        aligned = self._global_sum([int(not obs["is_last"].all())])[0] == 0
        overdue = self.state.env_steps - self.pending_checkpoint >= cfg.checkpoint_every
        if aligned or overdue:
            self._save_checkpoint()

    def _save_checkpoint(self) -> Path:
        step = self.state.env_steps
        previous = latest_checkpoint(self.ckpt_dir)
        if self.main:
            begin_checkpoint(self.ckpt_dir, step)
        self.acc.wait_for_everyone()
        final = checkpoint_path(self.ckpt_dir, step)
        tmp = final.with_name(f".{final.name}.tmp")
        replay_dir = tmp / f"replay-rank{self.rank}"
        if previous is not None:
            # Finished episodes never change: share their files with the previous checkpoint.
            link_files(previous / f"replay-rank{self.rank}" / "episodes", replay_dir / "episodes")
        self.replay.save(replay_dir)
        digest = tensor_digest(dict(self.agent.named_parameters()))
        self._save_rank_state(tmp, digest)
        digests = self._gather([digest])
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"parameters differ across processes at {step} env steps (digests {digests}): "
                "gradient averaging is broken"
            )
        if self.main:
            self.agent.training_info["finetune"] = self._training_record()
            self.agent.save_pretrained(tmp / "agent")
            self.agent.save_training_state(tmp / "agent", self.optimizers)
            state = {"config": self.config.to_dict(), "state": self.state.to_dict()}
            write_atomic(
                tmp / RUN_STATE_FILE, (json.dumps(json_ready(state), indent=1) + "\n").encode()
            )
        self.acc.wait_for_everyone()
        if self.main:
            commit_checkpoint(tmp, keep=self.config.keep_checkpoints)
        self.acc.wait_for_everyone()
        self.last_checkpoint_step, self.pending_checkpoint = step, None
        return final

    def _save_rank_state(self, folder: Path, digest: str) -> None:
        tensors = {"rng/torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        save_tensors(tensors, folder / f"rank{self.rank}.safetensors")
        info = {
            "rank": self.rank,
            "world_size": self.world,
            "replay_steps": len(self.replay),
            "episode_index": self.episode_index.tolist(),
            "action_rng": self.rng.bit_generator.state,
            "returns": self.returns.tolist(),
            "successes": self.successes.tolist(),
            "pool_restarts": self.pool.restarts,
            "parameter_digest": digest,
        }
        write_atomic(folder / f"rank{self.rank}.json", (json.dumps(info, indent=1) + "\n").encode())

    def _restore(self, checkpoint: Path) -> None:
        saved = json.loads((checkpoint / RUN_STATE_FILE).read_text())
        state = RunState(**saved["state"])
        if state.world_size != self.world:
            raise CheckpointError(
                f"{checkpoint} was written by {state.world_size} process(es); resume it with "
                f"the same number (this run has {self.world}): each holds its own replay"
            )
        self.state = state
        self.agent.load_training_state(checkpoint / "agent", self.optimizers, restore_rng=False)
        self.replay.load(checkpoint / f"replay-rank{self.rank}")
        tensors, _ = load_tensors(checkpoint / f"rank{self.rank}.safetensors")
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        info = json.loads((checkpoint / f"rank{self.rank}.json").read_text())
        self.episode_index = np.asarray(info["episode_index"], np.int64)
        self.rng.bit_generator.state = info["action_rng"]
        self.returns = np.asarray(info["returns"])
        self.successes = np.asarray(info["successes"])
        self.last_checkpoint_step = state.env_steps
        if self.main:
            self.curve.reset(state.curve)

    # The end -------------------------------------------------------------------------------

    def _training_record(self) -> dict[str, Any]:
        cfg = self.config
        return json_ready(
            {
                "env": cfg.env,
                "env_options": cfg.env_options,
                "variant": cfg.variant,
                "preset": cfg.preset_name,
                "seed": cfg.seed,
                "env_steps": self.state.env_steps,
                "policy_steps": self.state.policy_steps,
                "updates": self.agent.num_updates,
                "processes": self.world,
                "eval_curve": self.curve.rows if self.curve is not None else [],
                "command": self.command,
            }
        )

    def _finish(self) -> Path | None:
        if not self.main:
            self.acc.wait_for_everyone()
            return None
        self.agent.training_info["finetune"] = self._training_record()
        folder = self.out / "agent"
        self.agent.save_pretrained(folder)
        if self.push_to_hub:
            push_run(self.agent, folder, self.push_to_hub, self.out, self.last_video)
        self.acc.wait_for_everyone()
        return folder

    def _close(self) -> None:
        for pool in (getattr(self, "pool", None), self.eval_pool):
            if pool is not None:
                pool.close()
        if self.logger is not None:
            self.logger.close()

    # Collectives (no-ops in one process) ---------------------------------------------------

    def _global_sum(self, values: list[int]) -> list[int]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.long, device=self.acc.device)
        return [int(v) for v in self.acc.reduce(tensor, reduction="sum")]

    def _global_mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        return [float(v) for v in self.acc.reduce(tensor, reduction="mean")]

    def _gather(self, items: list[Any]) -> list[Any]:
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))


def _crossed(before: int, now: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, now]."""
    return now // every > before // every


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def push_run(agent: APVAgent, folder: Path, repo_id: str, run_dir: Path, video: Path | None) -> str:
    """Upload the agent (weights, config, card naming ``repo_id``), the learning curve and the
    last evaluation video to the Hub repo ``repo_id``; returns the commit URL."""
    import shutil
    import tempfile

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as stage:
        stage = Path(stage)
        agent.save_pretrained(stage, model_card_kwargs={"repo_id": repo_id})
        for name in ("curve.csv", "curve.json", CONFIG_FILE):
            if (run_dir / name).is_file():
                target = stage / ("finetune_config.json" if name == CONFIG_FILE else name)
                shutil.copy2(run_dir / name, target)
        if video is not None and video.is_file():
            shutil.copy2(video, stage / "eval.mp4")
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(
            folder_path=stage, repo_id=repo_id, commit_message="Upload fine-tuned APV agent"
        )
    return str(commit)


def finetune(config: FinetuneConfig, out: str | Path, **kwargs: Any) -> Path | None:
    """Run fine-tuning (see `Finetuner` for the keyword arguments); returns the agent folder."""
    return Finetuner(config, out, **kwargs).run()


# Command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    fields = "\n".join(
        f"  {f.name} = {json.dumps(f.default) if f.default is not dataclasses.MISSING else '...'}"
        for f in dataclasses.fields(FinetuneConfig)
        if f.name != "agent"
    )
    parser = argparse.ArgumentParser(
        prog="apv-finetune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune an APV agent (or a baseline) on an environment, from a "
        "pre-trained action-free video model. Launch with torchrun / accelerate launch for "
        "several processes.",
        epilog="Run-level config keys for --set (defaults before presets):\n"
        f"{fields}\n"
        "Agent keys: agent.batch_size, agent.seq_len, agent.world_model.*, agent.behavior.*, "
        "agent.intrinsic.* (see apv_hub.config); --print-config shows them all.\n"
        "Presets: metaworld and dmc reproduce the paper (REFERENCE section 2); small is the "
        "Meta-world recipe at CPU scale; tiny is for tests.\n"
        f"Variants: {', '.join(sorted(VARIANTS))} (aliases: "
        f"{', '.join(f'{k.replace(chr(95), chr(45))}={v}' for k, v in VARIANT_ALIASES.items())}).",
    )
    parser.add_argument("--env", help="environment, e.g. metaworld/drawer-open-v3, dmc/walker-walk")
    parser.add_argument(
        "--pretrained", help="pre-trained APVVideoModel: a checkpoint folder or Hub repo id"
    )
    parser.add_argument("--variant", default=None, help="apv (default), dreamerv2, naive-ft, ...")
    parser.add_argument(
        "--preset",
        choices=sorted(RUN_PRESETS),
        help="default: metaworld for metaworld/ environments, dmc otherwise",
    )
    parser.add_argument("--config", help="a FinetuneConfig JSON file to start from")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument("--steps", type=int, help="total environment steps (total_env_steps)")
    parser.add_argument("--num-envs", type=int, help="environments per process (num_envs)")
    parser.add_argument("--precision", choices=PRECISIONS, help="auto (default), fp32, bf16")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for nested ones), e.g. --set prefill=1000 "
        "--set agent.world_model.free_nats=1.0 --set env_options.episode_length=200",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint (with its saved config; "
        f"only {', '.join(RUN_CONTROL_KEYS)} may change)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final agent")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    return parser


def resolve_config(args: argparse.Namespace) -> FinetuneConfig:
    """The run's config from the command line (and, with --resume, the saved one)."""
    saved_path = Path(args.out) / CONFIG_FILE
    saved = FinetuneConfig.load(saved_path) if args.resume and saved_path.is_file() else None
    given = _command_line_config(args, base=saved)
    if saved is None:
        return given
    before, after = _flatten(saved.to_dict()), _flatten(given.to_dict())
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    forbidden = [k for k in changed if k not in RUN_CONTROL_KEYS]
    if forbidden:
        raise ConfigError(
            f"--resume continues {args.out} with its saved config; these differ from it: "
            f"{', '.join(forbidden)} (only {', '.join(RUN_CONTROL_KEYS)} may change)"
        )
    return given


def _command_line_config(args: argparse.Namespace, base: FinetuneConfig | None) -> FinetuneConfig:
    if args.config:
        if args.variant or args.preset:
            raise SystemExit("apv-finetune: --config fixes the preset and variant; drop them")
        config = FinetuneConfig.load(args.config)
    elif base is not None and not (args.env or args.preset or args.variant):
        config = base
    else:
        env = args.env or (base.env if base else "")
        if not env:
            raise SystemExit("apv-finetune: --env is required (or --config, or --resume)")
        preset = args.preset or ("metaworld" if env.startswith("metaworld/") else "dmc")
        config = FinetuneConfig.preset(preset, args.variant or "apv", env=env)
    direct = {
        "env": args.env,
        "pretrained": args.pretrained,
        "seed": args.seed,
        "total_env_steps": args.steps,
        "num_envs": args.num_envs,
        "precision": args.precision,
    }
    overrides = {k: v for k, v in direct.items() if v is not None}
    overrides.update(parse_assignments(args.set, "--set"))
    return config.override(overrides)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "env_options":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main(argv: Sequence[str] | None = None) -> Path | None:
    """The ``apv-finetune`` command (and ``finetune.py``); returns the final agent folder."""
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as e:
        raise SystemExit(f"apv-finetune: {e}") from e
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return None
    command = shlex.join(["apv-finetune", *(sys.argv[1:] if argv is None else argv)])
    return finetune(
        config, args.out, resume=args.resume, push_to_hub=args.push_to_hub, command=command
    )
