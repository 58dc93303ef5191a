"""APV fine-tuning: collect experience, train the agent every few steps, evaluate, checkpoint.

```bash
accelerate launch finetune.py --pretrained runs/pre/model --env metaworld/drawer-open-v3 \
    --out runs/ft
apv-finetune --env dmc/quadruped-walk --variant dreamerv2 --out runs/dv2 --seed 1
apv-finetune --resume runs/ft                # continue the run exactly where it was
torchrun --nproc_per_node 2 finetune.py ...  # two processes (e.g. CPU, gloo)
```

The loop, DreamerV2's: ``prefill`` random-action steps; then ``pretrain_updates`` updates at once;
then ``train_steps`` updates every ``train_every`` policy steps, acting with the agent's
exploring policy in between. Counts are global over processes (units: `FinetuneConfig`).

Several processes: each rank runs its own ``num_envs`` environments and replay buffer
(``replay_capacity / N`` steps) and samples ``batch_size / N`` sequences per update; gradients are
averaged before every optimiser step, and every checkpoint checks that the parameters are still
identical everywhere.

Exact resume: every episode starts from a seed derived from (seed, rank, slot, episode number);
checkpoints are taken when every environment has just finished an episode (forced mid-episode if
they never align for a whole ``checkpoint_every``) and hold the agent, optimisers, replay, bonus
state, counters and every random generator, so a resumed run continues bit for bit like the
uninterrupted one on the same machine (CPU; GPU kernels may not be deterministic).

The agent, the environment pools and the replay buffer come from factories (`Finetuner`'s
``make_agent``, ``make_pool``, ``make_replay``), so the loop runs the same with a stub agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apv_hub.config_base import ConfigError
from apv_hub.data.video import video_grid, write_video
from apv_hub.envs import EnvPool
from apv_hub.evaluation.episodes import (
    EpisodeResult,
    curve_row,
    episode_seed,
    run_episodes,
    summarize,
)
from apv_hub.io import json_ready, write_json
from apv_hub.optim import load_optimizer_state, save_optimizer_state
from apv_hub.replay import ReplayBuffer
from apv_hub.seeding import derive_seed
from apv_hub.training.checkpoint import link_files, list_checkpoints
from apv_hub.training.configs import FinetuneConfig
from apv_hub.training.factories import Agent, build_agent, make_env_pool, make_replay_buffer
from apv_hub.training.run import (
    MetricWindow,
    NonFiniteGuard,
    Run,
    local_batch,
    make_accelerator,
    prepare_optimizers,
)
from apv_hub.viper.relabel import relabelling_replay
from apv_hub.weights import CheckpointError, load_into, load_tensors, tensor_digest


@dataclass
class Counters:
    """Global counters of a run (identical on every rank), saved in every checkpoint."""

    env_steps: int = 0
    policy_steps: int = 0
    episodes: int = 0
    # Policy step at which training started (None during prefill) and updates done since
    # (excluding the pretrain updates).
    train_start: int | None = None
    periodic_updates: int = 0
    last_eval: int | None = None


class Finetuner:
    """One fine-tuning run in ``out`` (see the module doc); ``train()`` does it all.

    Every input (environment, pre-trained model, batch split) is checked and everything is
    built in the constructor, before the run folder is created or touched.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        out: str | Path,
        *,
        resume: bool = False,
        command: str | None = None,
        progress: bool = True,
        accelerator: Any = None,
        make_agent: Callable[[FinetuneConfig, int], Agent] = build_agent,
        make_pool: Callable[[FinetuneConfig, int, int], EnvPool] = make_env_pool,
        make_replay: Callable[[int, int], ReplayBuffer] = make_replay_buffer,
    ) -> None:
        cfg = self.config = config
        if not cfg.env:
            raise ConfigError("no environment: set env (e.g. --env metaworld/drawer-open-v3)")
        accelerator = accelerator or make_accelerator(cfg.precision)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.local_batch = local_batch(accelerator, cfg.agent.batch_size, "agent.batch_size")
        self.make_pool = make_pool
        self.pool = make_pool(cfg, derive_seed(cfg.seed, "train_episodes", self.rank), cfg.num_envs)
        self.eval_pool: EnvPool | None = None
        try:
            with accelerator.main_process_first():  # One download of the pre-trained model.
                self.agent = make_agent(cfg, self.pool.action_dim)
                # Variant viper: a frozen video reward model relabels the steps entering replay.
                make_replay = relabelling_replay(
                    make_replay, cfg.reward_model, cfg.reward_class, cfg.env,
                    cfg.relabel_segment, self.pool.obs_space["image"].shape, accelerator.device,
                )  # fmt: skip
            self.run = Run(
                cfg,
                out,
                resume=resume,
                command=command,
                accelerator=accelerator,
                progress=progress,
                step_name="env_steps",
            )
        except BaseException:
            self.pool.close()
            raise
        self.agent.to(self.run.device)
        self.run.broadcast_module(self.agent)
        self.run.watch(self.agent)
        if cfg.compile:
            self.agent.compile_update(cfg.compile_mode)
        self.optimizers = prepare_optimizers(accelerator, self.agent.make_optimizers())
        self.replay = make_replay(
            max(1, cfg.replay_capacity // self.world), derive_seed(cfg.seed, "replay", self.rank)
        )
        self.rng = np.random.default_rng(derive_seed(cfg.seed, "actions", self.rank))
        torch.manual_seed(derive_seed(cfg.seed, "torch", self.rank))  # Ranks explore apart.
        self.counters = Counters()
        self.episode_index = np.zeros(cfg.num_envs, np.int64)
        self.returns = np.zeros(cfg.num_envs)
        self.successes = np.zeros(cfg.num_envs)
        self.finished: list[tuple[float, float | None]] = []  # Training episodes since the log.
        self.window = MetricWindow()
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self.last_checkpoint_step: int | None = None
        self.pending_checkpoint: int | None = None
        self.last_video: Path | None = None
        saved = self.run.restore(self._load_checkpoint, {"actions": self.rng})
        if saved is not None:
            self.counters = Counters(**saved["counters"])
            self.last_checkpoint_step = self.counters.env_steps
        self.update_start = (time.perf_counter(), self.counters.env_steps, self.agent.num_updates)

    # The loop ------------------------------------------------------------------------------

    def train(self) -> Path | None:
        """Train to ``total_env_steps``; returns the final agent folder (main process)."""
        cfg, counters = self.config, self.counters
        bar = self.run.progress_bar(
            cfg.total_env_steps, counters.env_steps, f"{cfg.env} {cfg.variant}"
        )
        obs: dict[str, np.ndarray] | None = None
        policy_state = None
        try:
            while counters.env_steps < cfg.total_env_steps:
                before = counters.env_steps
                obs, policy_state = self._collect(obs, policy_state)
                self._train()
                if crossed(before, counters.env_steps, cfg.log_every):
                    self._log(bar)
                # Evaluation points: first_eval + k * eval_every env steps (k >= 0).
                first, now = cfg.first_eval, counters.env_steps
                if now >= first and crossed(before - first, now - first, cfg.eval_every):
                    self._evaluate()
                self._maybe_checkpoint(before, obs)
                bar.update(counters.env_steps - before)
            if self.last_checkpoint_step != counters.env_steps:
                self._save_checkpoint()
            if counters.last_eval != counters.env_steps:
                self._evaluate(record_in_checkpoint=False)
            return self._finish()
        finally:
            bar.close()
            self.close()

    def _collect(
        self, obs: dict[str, np.ndarray] | None, policy_state: Any
    ) -> tuple[dict[str, np.ndarray], Any]:
        """One step of every environment (or a reset of all) into the replay; counts steps."""
        cfg, counters = self.config, self.counters
        if obs is None or obs["is_last"].all():
            # All episodes ended together (always so with fixed lengths): a fresh start, with
            # no action drawn, exactly what a run resumed from a checkpoint here does.
            new = self.pool.reset(self._episode_seeds())
            policy_state = None
        else:
            if counters.policy_steps < cfg.prefill:
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
            success = float(self.successes[i] > 0) if "success" in new else None
            self.finished.append((float(self.returns[i]), success))
        moved_count, ended = self.run.all_sum([int(moved.sum()), int(new["is_last"].sum())])
        counters.policy_steps += moved_count
        counters.env_steps += moved_count * cfg.action_repeat
        counters.episodes += ended
        return new, policy_state

    def _episode_seeds(self) -> list[int]:
        """Seeds of the next episode of each slot: fixed by (seed, rank, slot, episode number)."""
        seed = self.config.seed
        return [
            derive_seed(seed, "train_episodes", self.rank, slot, int(self.episode_index[slot]))
            for slot in range(self.config.num_envs)
        ]

    def _train(self) -> None:
        cfg, counters = self.config, self.counters
        if counters.train_start is None:
            if counters.policy_steps < cfg.prefill or counters.policy_steps == 0:
                return
            if not self.replay.can_sample(cfg.agent.seq_len):
                return  # Sequences come from finished episodes only: wait for the first one.
            counters.train_start = counters.policy_steps
            todo = cfg.pretrain_updates
        else:
            due = (counters.policy_steps - counters.train_start) // cfg.train_every
            todo = due * cfg.train_steps - counters.periodic_updates
            counters.periodic_updates = due * cfg.train_steps
        for _ in range(todo):
            self._update()

    def _update(self) -> None:
        run = self.run
        batch = self.replay.sample(self.local_batch, self.config.agent.seq_len, device=run.device)
        with run.accelerator.autocast():
            metrics = self.agent.update(batch, self.optimizers, accelerator=run.accelerator)
        self.window.add(metrics)
        # Gradient norms are computed after the all-reduce, so every rank decides alike. The
        # verdict stays on the device until the next log row or checkpoint (no host sync).
        norms = [
            torch.as_tensor(v, device=run.device)
            for k, v in metrics.items()
            if k.endswith("grad_norm")
        ]
        finite = torch.stack(norms).isfinite().all() if norms else torch.tensor(True)
        where = f"update {self.agent.num_updates} at {self.counters.env_steps} env steps"
        self.guard.defer(finite, where, metrics)

    # Records -------------------------------------------------------------------------------

    def _log(self, bar: Any) -> None:
        run, counters = self.run, self.counters
        self.guard.flush(run.checkpoint)
        means = run.reduce(self.window)
        episodes = run.gather(self.finished)
        self.window, self.finished = MetricWindow(), []
        now, updates = time.perf_counter(), self.agent.num_updates
        start, start_steps, start_updates = self.update_start
        self.update_start = (now, counters.env_steps, updates)
        elapsed = max(now - start, 1e-9)
        row: dict[str, Any] = {f"train/{k}": v for k, v in means.items()}
        row["perf/env_steps_per_s"] = (counters.env_steps - start_steps) / elapsed
        row["perf/updates_per_s"] = (updates - start_updates) / elapsed
        row.update({f"replay/{k}": v for k, v in self.replay.stats.items()})
        row["replay/pool_restarts"] = self.pool.restarts
        self._note_restarts()
        row.update(
            {
                "progress/updates": updates,
                "progress/episodes": counters.episodes,
                "progress/nonfinite_updates": self.guard.total,
            }
        )
        postfix = {"upd": updates, "sps": f"{row['perf/env_steps_per_s']:.1f}"}
        if episodes:
            row["episode/return"] = float(np.mean([r for r, _ in episodes]))
            postfix["ret"] = f"{row['episode/return']:.1f}"
            success = [s for _, s in episodes if s is not None]
            if success:
                row["episode/success"] = float(np.mean(success))
        run.log(counters.env_steps, row)
        bar.set_postfix(postfix, refresh=False)

    def _evaluate(self, record_in_checkpoint: bool = True) -> None:
        """Deterministic episodes split over the ranks; the main process records the score."""
        cfg, run = self.config, self.run
        # Fresh seeds (Meta-world: object and goal positions) every round, as the release.
        env_steps = self.counters.env_steps
        seeds = [episode_seed(cfg.seed, i, evaluation=env_steps) for i in range(cfg.eval_episodes)]
        mine = seeds[self.rank :: self.world]
        results: list[EpisodeResult] = []
        if mine:
            if self.eval_pool is None:
                seed = derive_seed(cfg.seed, "eval_pool", self.rank)
                self.eval_pool = self.make_pool(cfg, seed, min(cfg.eval_envs, len(mine)))
            record = len(mine) if (run.is_main and cfg.video) else 0
            results = run_episodes(self.agent, self.eval_pool, mine, record=record)
        videos = [r.frames for r in results if r.frames is not None]
        for r in results:
            r.frames = None
        gathered = run.gather(results)
        if record_in_checkpoint:
            self.counters.last_eval = self.counters.env_steps
        if not run.is_main:
            return
        # Back to episode order (rank r ran episodes r, r + N, ...).
        order = {seed: i for i, seed in enumerate(seeds)}
        score = summarize(sorted(gathered, key=lambda r: order[r.seed]))
        row = {"updates": self.agent.num_updates, "episodes": self.counters.episodes}
        run.log(self.counters.env_steps, {**row, **curve_row(score)}, curve="eval")
        if videos:
            path = run.paths.videos / f"eval-{self.counters.env_steps:09d}.mp4"
            self.last_video = write_video(path, video_grid(videos), fps=cfg.video_fps)

    # Checkpoints ---------------------------------------------------------------------------

    def _maybe_checkpoint(self, before: int, obs: dict[str, np.ndarray]) -> None:
        cfg, counters = self.config, self.counters
        if self.pending_checkpoint is None and crossed(
            before, counters.env_steps, cfg.checkpoint_every
        ):
            self.pending_checkpoint = counters.env_steps
        if self.pending_checkpoint is None:
            return
        # Exact resume needs every environment at an episode boundary (see the module doc).
        aligned = self.run.all_sum([int(not obs["is_last"].all())])[0] == 0
        overdue = counters.env_steps - self.pending_checkpoint >= cfg.checkpoint_every
        if aligned or overdue:
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        run, step = self.run, self.counters.env_steps
        self.guard.flush(run.checkpoint)
        previous = list_checkpoints(run.paths.checkpoints)
        digest = tensor_digest(dict(self.agent.named_parameters()))
        digests = run.gather([digest])
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"parameters differ across processes at {step} env steps (digests {digests}): "
                "gradient averaging is broken"
            )

        def write(folder: Path) -> None:
            replay_dir = folder / f"replay-rank{self.rank}"
            if previous:
                # Finished episodes never change: share their files with the previous checkpoint.
                old = previous[-1][1] / f"replay-rank{self.rank}" / "episodes"
                link_files(old, replay_dir / "episodes")
            self.replay.save(replay_dir)
            loop = {
                "world_size": self.world,
                "replay_steps": len(self.replay),
                "episode_index": self.episode_index.tolist(),
                "returns": self.returns.tolist(),
                "successes": self.successes.tolist(),
                "pool_restarts": self.pool.restarts,
                "parameter_digest": digest,
            }
            write_json(folder / f"loop-rank{self.rank}.json", loop)
            if run.is_main:
                self.agent.training_info["finetune"] = self.training_record()
                self.agent.save_pretrained(folder / "model")
                save_optimizer_state(folder, self.optimizers)

        state = {"counters": asdict(self.counters), "nonfinite_updates": self.guard.total}
        run.save_checkpoint(step, write, state, {"actions": self.rng})
        self.last_checkpoint_step, self.pending_checkpoint = step, None

    def _load_checkpoint(self, folder: Path, state: dict[str, Any]) -> None:
        tensors, _ = load_tensors(folder / "model" / "model.safetensors")
        load_into(self.agent, tensors, source=str(folder / "model"))
        load_optimizer_state(folder, self.optimizers)
        self.replay.load(folder / f"replay-rank{self.rank}")
        try:
            loop = json.loads((folder / f"loop-rank{self.rank}.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder} has no readable loop state: {e}") from None
        self.episode_index = np.asarray(loop["episode_index"], np.int64)
        self.returns = np.asarray(loop["returns"], np.float64)
        self.successes = np.asarray(loop["successes"], np.float64)
        self.guard.total = state["nonfinite_updates"]

    # The end -------------------------------------------------------------------------------

    def training_record(self) -> dict[str, Any]:
        """What the agent's card states about its fine-tuning."""
        cfg, run = self.config, self.run
        return json_ready(
            {
                "env": cfg.env,
                "env_options": cfg.env_options,
                "variant": cfg.variant,
                "reward_model": cfg.reward_model,
                "preset": cfg.preset_name,
                "seed": cfg.seed,
                "env_steps": self.counters.env_steps,
                "policy_steps": self.counters.policy_steps,
                "updates": self.agent.num_updates,
                "processes": self.world,
                "eval_curve": run.evals.rows if run.is_main else [],
                "command": "\n".join(run.commands),
            }
        )

    def _note_restarts(self) -> None:
        """Replaced environment workers (the pool logged each) into the run's recoveries."""
        for pool in (self.pool, self.eval_pool):
            for failure in pool.failures if pool is not None else []:
                self.run.recover("env_worker_restarts", failure.describe(pool.env))

    def _finish(self) -> Path | None:
        run = self.run
        self._note_restarts()
        self.agent.training_info["finetune"] = self.training_record()
        paths = run.paths
        extra = {"eval.csv": paths.root / "eval.csv", "eval.json": paths.root / "eval.json"}
        extra["run_config.json"] = paths.config
        if self.last_video is not None:
            extra["eval.mp4"] = self.last_video
        summary = {
            "env_steps": self.counters.env_steps,
            "updates": self.agent.num_updates,
            "final_eval": run.evals.rows[-1] if run.is_main and run.evals.rows else None,
            "pool_restarts": self.pool.restarts,
            "nonfinite_updates": self.guard.total,
        }
        folder = run.finish(self.agent, summary, extra)
        return folder if run.is_main else None

    def close(self) -> None:
        for pool in (self.pool, self.eval_pool):
            if pool is not None:
                pool.close()
        self.run.close()


def crossed(before: int, now: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, now]."""
    return now // every > before // every


def finetune(config: FinetuneConfig, out: str | Path, **kwargs: Any) -> Path | None:
    """Run (or with ``resume=True``, continue) fine-tuning (see `Finetuner` for the keyword
    arguments); returns the agent folder on the main process."""
    return Finetuner(config, out, **kwargs).train()
