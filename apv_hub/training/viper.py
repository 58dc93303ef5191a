"""Training a VIPER reward model on video corpora, on Accelerate: the tokenizer, then the prior.

    apv-viper-train --data sample --preset tiny --classes task --out runs/viper-sample
    accelerate launch viper_train.py --data data/dmc-experts --classes task --out runs/viper-dmc
    apv-viper-train --resume runs/viper-dmc --prior-steps 200000      # continue exactly

One run, two phases over one step counter: steps 0 .. ``tokenizer_steps`` train the
`VQTokenizer` on frames, the next ``prior_steps`` train the `VideoPrior` on windows of frames
tokenized by the (then fixed) tokenizer. The run folder is `apv_hub.training.run`'s; besides it,
``videos/recon-<step>.mp4`` (tokenizer phase: ground truth above reconstruction) and
``videos/pred-<step>.mp4`` (prior phase: ground truth above the context frames and frames
sampled by the EMA prior with its KV cache, decoded by the tokenizer), each with a gif. The final
``model/`` is a `VIPERRewardModel` with the EMA prior weights and the reward standardisation
statistics of whole training videos scored with them, and its card.

What the models ask of a trainer (see their docs), and where it happens here:

- ``init_codebook`` once, before the first tokenizer step: k-means over the encoder outputs of
  ``kmeans_frames`` frames, on the main process, broadcast to the others (a resumed run sees
  ``codebook_initialized`` and skips it);
- ``restart_dead_codes`` after every tokenizer optimiser step, the idle counts min-reduced over
  the processes before and the codebook broadcast from the main process after;
- the EMA of the prior after every prior step, decay ``min(ema_decay, (1 + n) / (10 + n))``
  after n prior steps (TensorFlow's ``num_updates`` rule: short runs are not dominated by the
  initial weights); the EMA weights are what the prediction videos sample and what scores;
- the reward statistics at the end, with the final EMA weights, on whole training videos (up to
  ``stats_videos`` per class), episode starts included as an agent's episodes have them.

Determinism: clip ``i`` of rank ``r`` in a phase is a pure function of ``(seed, phase, r, i)``
(`ClipDataset`), the torch RNG (dropout, dead-code restarts) is re-seeded from
``(seed, rank, step)`` before every step, the k-means init and the sampled predictions have
their own seeds. A checkpoint's step fixes everything, so ``--resume`` continues bit for bit on
the CPU. Batch sizes are global: each of N processes takes 1/N of them from its own shard of the
videos, and gradients are averaged.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apv_hub.config_base import ConfigError
from apv_hub.optim import apply_gradients, load_optimizer_state, save_optimizer_state
from apv_hub.seeding import derive_seed
from apv_hub.training.configs import VIPERTrainConfig
from apv_hub.training.run import (
    MetricWindow,
    NonFiniteGuard,
    Run,
    RunResult,
    local_batch,
    make_accelerator,
    peak_memory_mb,
    prepare_optimizers,
)
from apv_hub.weights import load_into, load_tensors, save_tensors

PHASES = ("tokenizer", "prior")
EMA_FILE = "prior_ema.safetensors"
VIDEO_FPS = 10
# The logged loss terms the model card states, per phase.
CARD_TERMS = {
    "tokenizer": ("loss", "l1", "psnr", "perplexity", "usage", "dead_codes"),
    "prior": ("loss", "bits_per_token", "accuracy"),
}


def task_classes(config: VIPERTrainConfig, corpora: list[Any]) -> tuple[list[str], list[Tensor]]:
    """The task classes of a run -> (class names, per corpus the class id of each row, long [N]).

    ``classes=task`` reads the corpora's ``task`` column, ``corpus`` names each corpus by
    ``corpus_classes`` or its ``data`` entry, ``none`` has no classes (ids all 0). Class ids
    follow ``model.class_names`` where the config names them (they must be the classes the data
    has), else the sorted names."""
    if config.classes == "none":
        if config.model.class_names or config.model.prior.num_classes:
            raise ConfigError(
                "classes=none trains an unconditional prior, but model.class_names / "
                "model.prior.num_classes name classes: set classes=task or classes=corpus"
            )
        return [], [torch.zeros(len(c), dtype=torch.long) for c in corpora]
    labels: list[list[str]] = []
    for entry, corpus in zip(config.data, corpora, strict=True):
        if config.classes == "corpus":
            labels.append([config.corpus_classes.get(entry, entry)] * len(corpus))
            continue
        tasks = list(corpus.select_columns(["task"])["task"])
        untagged = sum(1 for t in tasks if not t)
        if untagged:
            raise ConfigError(
                f"classes=task: {untagged} video(s) of corpus {entry} have no task; use "
                "classes=corpus (one class per corpus) or classes=none"
            )
        labels.append(tasks)
    found = sorted({name for names in labels for name in names})
    names = list(config.model.class_names) or found
    if sorted(names) != found:
        raise ConfigError(
            f"model.class_names {names} are not the classes of the data ({found}, classes="
            f"{config.classes})"
        )
    index = {name: i for i, name in enumerate(names)}
    return names, [torch.tensor([index[n] for n in names_], dtype=torch.long) for names_ in labels]


def ema_decay(limit: float, updates: int) -> float:
    """Decay of the prior's EMA after ``updates`` prior steps: min(limit, (1 + n) / (10 + n))."""
    return min(limit, (1 + updates) / (10 + updates))


class VIPERTrainer:
    """One VIPER reward-model run: ``VIPERTrainer(config, out).train()``; see the module doc.

    Everything is built and every input checked in the constructor, before the run folder is
    created or touched. The task classes found in the data are written into the config's model
    section (``model.prior.num_classes``, ``model.class_names``) before the run saves it.
    """

    def __init__(
        self,
        config: VIPERTrainConfig,
        out: str | Path,
        *,
        resume: bool = False,
        command: str | None = None,
        progress: bool = True,
    ) -> None:
        from apv_hub.data import load_video_corpus
        from apv_hub.viper import VIPERRewardModel

        accelerator = make_accelerator(config.precision)
        self.corpora = [load_video_corpus(c) for c in config.corpora()]
        names, self.class_table = task_classes(config, self.corpora)
        cfg = self.config = config.override(
            {"model.prior.num_classes": len(names), "model.class_names": names}
        )
        rank, world = accelerator.process_index, accelerator.num_processes
        frames = local_batch(
            accelerator, cfg.model.tokenizer.batch_size, "model.tokenizer.batch_size"
        )
        if frames % cfg.tokenizer_clip_frames:
            raise ConfigError(
                f"each of {world} process(es) takes {frames} frames a tokenizer step, not a "
                f"multiple of tokenizer_clip_frames {cfg.tokenizer_clip_frames}"
            )
        self.clips_per_step = {
            "tokenizer": frames // cfg.tokenizer_clip_frames,
            "prior": local_batch(accelerator, cfg.model.prior.batch_size, "model.prior.batch_size"),
        }
        self.clips = {
            phase: self._clips(
                phase,
                rank,
                world,
                self.phase_steps(phase) * self.clips_per_step[phase],
                derive_seed(cfg.seed, "data", PHASES.index(phase)),
            )
            for phase in PHASES
            if self.phase_steps(phase)
        }
        self.eval_frames, self.eval_classes = self._eval_clips()
        torch.manual_seed(cfg.seed)
        self.model = VIPERRewardModel(cfg.model).to(accelerator.device)
        self.ema = copy.deepcopy(self.model.prior).requires_grad_(False).eval()
        tok, tok_cfg = self.model.tokenizer, cfg.model.tokenizer
        self.params = {
            "tokenizer": tok.autoencoder_parameters(),
            "prior": list(self.model.prior.parameters()),
        }
        optimizers = {
            "tokenizer": torch.optim.AdamW(
                self.params["tokenizer"], lr=tok_cfg.lr, weight_decay=tok_cfg.weight_decay
            ),
            "prior": torch.optim.Adam(self.params["prior"], lr=cfg.model.prior.lr),
        }
        if tok.discriminator is not None:
            self.params["discriminator"] = list(tok.discriminator.parameters())
            optimizers["discriminator"] = torch.optim.Adam(
                self.params["discriminator"], lr=tok_cfg.lr, betas=(0.5, 0.9)
            )
        self.optimizers = prepare_optimizers(accelerator, optimizers)
        self.run = Run(
            cfg,
            out,
            resume=resume,
            command=command,
            accelerator=accelerator,
            progress=progress,
            step_name="step",
        )
        self.step = 0
        self.failed_draws = 0
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self.last_video: Path | None = None
        self.eval_row: dict[str, dict[str, float]] = {}
        trainer_state = self.run.restore(self._load_checkpoint)
        if trainer_state is not None:
            self.step, self.failed_draws = trainer_state["step"], trainer_state["failed_draws"]
            self.eval_row = trainer_state["eval"]

    # Data -------------------------------------------------------------------------------------

    def phase_steps(self, phase: str) -> int:
        return self.config.tokenizer_steps if phase == "tokenizer" else self.config.prior_steps

    def phase_start(self, phase: str) -> int:
        return 0 if phase == "tokenizer" else self.config.tokenizer_steps

    def phase_of(self, step: int) -> str:
        """The phase that step ``step`` (1-based: the step just done) belongs to."""
        return "tokenizer" if step <= self.config.tokenizer_steps else "prior"

    def _clips(self, phase: str, rank: int, world: int, num_clips: int, seed: int) -> Any:
        """``num_clips`` clips of a phase (tokenizer clips, or prior windows) on shard ``rank``
        of ``world``, drawn from ``seed`` (a ClipDataset)."""
        from apv_hub.data import ClipDataset

        cfg = self.config
        if phase == "tokenizer":
            length, stride = cfg.tokenizer_clip_frames, cfg.tokenizer_stride
        else:
            length, stride = cfg.model.prior.frames, cfg.model.prior.frame_skip
        return ClipDataset(
            self.corpora,
            length=length,
            stride=stride,
            size=cfg.model.tokenizer.image_size,
            weights=cfg.weights,
            seed=seed,
            num_clips=num_clips,
            short_videos=cfg.short_videos,
            resize=cfg.resize,
            rank=rank,
            world_size=world,
        )

    def classes_of(self, batch: dict[str, Any]) -> Tensor | None:
        """The class ids long [N] of a batch of clips (None for an unconditional prior)."""
        if not self.config.model.prior.num_classes:
            return None
        pairs = zip(batch["corpus"].tolist(), batch["row"].tolist(), strict=True)
        return torch.stack([self.class_table[c][r] for c, r in pairs]).to(self.run.device)

    def _eval_clips(self) -> tuple[Tensor, Tensor | None]:
        """The fixed clips of the eval videos (prior windows): uint8 [E, F, 3, H, W], classes."""
        cfg = self.config
        clips = self._clips("prior", 0, 1, cfg.eval_clips, derive_seed(cfg.seed, "eval_clips"))
        items = [clips[i] for i in range(cfg.eval_clips)]
        frames = torch.stack([item["frames"] for item in items])
        if not cfg.model.prior.num_classes:
            return frames, None
        return frames, torch.stack([self.class_table[i["corpus"]][i["row"]] for i in items])

    def _loader(self, phase: str) -> Iterator[dict[str, Any]]:
        """Batches of this process's clips of ``phase`` from the current step to its end."""
        cfg, per_step = self.config, self.clips_per_step[phase]
        done = self.step - self.phase_start(phase)
        loader = torch.utils.data.DataLoader(
            self.clips[phase],
            batch_size=per_step,
            # Items are pure functions of their index: resuming is starting at the right one.
            sampler=range(done * per_step, self.phase_steps(phase) * per_step),
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if cfg.num_workers else None,
        )
        return iter(loader)

    # Training ---------------------------------------------------------------------------------

    def train(self) -> RunResult:
        """Train both phases to their steps, then save, evaluate and (if asked) push the model."""
        cfg, run = self.config, self.run
        bar = run.progress_bar(cfg.total_steps, self.step, "VIPER")
        try:
            for phase in PHASES:
                end = self.phase_start(phase) + self.phase_steps(phase)
                if self.step >= end:
                    continue
                bar.set_description(f"VIPER {phase}")
                self._begin_phase(phase)
                window, batches = MetricWindow(), self._loader(phase)
                while self.step < end:
                    fetch = time.perf_counter()
                    batch = next(batches)
                    frames = batch["frames"].to(run.device, non_blocking=True)
                    window.data_seconds += time.perf_counter() - fetch
                    self.failed_draws += int(batch["failed_draws"].sum())
                    if phase == "tokenizer":
                        self._tokenizer_step(frames, window)
                    else:
                        self._prior_step(frames, self.classes_of(batch), window)
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == end:
                        row = self._log(window, phase)
                        bar.set_postfix(loss=f"{row.get(f'{phase}/loss', float('nan')):.3g}")
                        window = MetricWindow()
                    at_eval = self.step % cfg.eval_every == 0 or self.step == end
                    if at_eval and self.step < cfg.total_steps:
                        self._evaluate(phase)
                    if self.step % cfg.checkpoint_every == 0 or self.step == end:
                        self._save_checkpoint()
        finally:
            bar.close()
        return self._finish()

    def _begin_phase(self, phase: str) -> None:
        tokenizer, prior = self.model.tokenizer, self.model.prior
        if phase == "tokenizer":
            tokenizer.train()
            self._init_codebook()
        else:
            tokenizer.eval()  # Frozen from here on: it only encodes the prior's windows.
            prior.train()

    def _init_codebook(self) -> None:
        """k-means init of the codebook (main process, then broadcast), unless it has run."""
        cfg, run, tokenizer = self.config, self.run, self.model.tokenizer
        if tokenizer.codebook_initialized or cfg.model.tokenizer.kmeans_iters == 0:
            return
        if run.is_main:
            seed = derive_seed(cfg.seed, "codebook_init")
            needed = math.ceil(cfg.kmeans_frames / cfg.tokenizer_clip_frames)
            clips = self._clips("tokenizer", 0, 1, needed, seed)
            frames = torch.cat([clips[i]["frames"] for i in range(needed)])
            frames = frames[: cfg.kmeans_frames][None].to(run.device)
            tokenizer.init_codebook(
                frames,
                generator=torch.Generator().manual_seed(seed),
                batch_size=cfg.model.tokenizer.batch_size,
            )
        run.broadcast_module(tokenizer)

    def _tokenizer_step(self, frames: Tensor, window: MetricWindow) -> None:
        """One tokenizer step on uint8 frames [clips, T, 3, H, W] (+ the discriminator's), then
        the dead-code restart."""
        cfg, run = self.config, self.run
        tokenizer, tok_cfg = self.model.tokenizer, cfg.model.tokenizer
        torch.manual_seed(derive_seed(cfg.seed, "steps", run.rank, self.step))
        lr = tok_cfg.lr * min(1.0, (self.step + 1) / max(tok_cfg.warmup_steps, 1))
        for group in self.optimizers["tokenizer"].param_groups:
            group["lr"] = lr
        with run.accelerator.autocast():
            loss, metrics = tokenizer.loss(frames)
        norms = {"grad_norm": self._apply(loss, "tokenizer")}
        if tokenizer.discriminator is not None:
            with run.accelerator.autocast():
                d_loss, d_metrics = tokenizer.discriminator_loss(frames)
            metrics.update(d_metrics)
            norms["disc_grad_norm"] = self._apply(d_loss, "discriminator")
        metrics["restarted_codes"] = self._restart_dead_codes()
        self._observe("tokenizer", metrics, norms, window, lr=lr)

    def _apply(self, loss: Tensor, name: str) -> Tensor:
        """Backward and a clipped step of optimiser ``name`` on its parameters -> grad norm."""
        return apply_gradients(
            loss,
            self.optimizers[name],
            self.params[name],
            self.config.grad_clip,
            self.run.accelerator,
        )

    def _restart_dead_codes(self) -> int:
        """Dead-code restart, the same on every process (see the module doc)."""
        tokenizer, run = self.model.tokenizer, self.run
        quantizer = tokenizer.quantizer
        if run.world_size > 1:
            torch.distributed.all_reduce(quantizer.idle_steps, op=torch.distributed.ReduceOp.MIN)
        moved = tokenizer.restart_dead_codes()
        if run.world_size > 1:
            torch.distributed.broadcast(quantizer.codebook.data, src=0)
        return moved

    def _prior_step(self, frames: Tensor, cls: Tensor | None, window: MetricWindow) -> None:
        """One prior step on uint8 windows [N, F, 3, H, W] of classes [N] (or None), then the
        EMA update."""
        cfg, run = self.config, self.run
        torch.manual_seed(derive_seed(cfg.seed, "steps", run.rank, self.step))
        # Tokens in full precision, as scoring computes them.
        tokens = self.model.tokenizer.encode(frames, cfg.model.tokenizer.batch_size)
        with run.accelerator.autocast():
            loss, metrics = self.model.prior.loss(tokens, cls)
        norm = self._apply(loss, "prior")
        decay = ema_decay(cfg.model.prior.ema_decay, self.step - cfg.tokenizer_steps)
        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), self.params["prior"], strict=True):
                ema.lerp_(live.detach(), 1.0 - decay)
        self._observe("prior", metrics, {"grad_norm": norm}, window, lr=cfg.model.prior.lr)

    def _observe(
        self,
        phase: str,
        metrics: dict[str, Tensor | float],
        norms: dict[str, float],
        window: MetricWindow,
        lr: float,
    ) -> None:
        """Count the step, apply the non-finite policy, add its metrics to the window."""
        cfg, run = self.config, self.run
        self.step += 1
        finite = all(math.isfinite(n) for n in norms.values()) and math.isfinite(metrics["loss"])
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in {**metrics, **norms}.items())
        where = f"{phase} step {self.step} (of {cfg.total_steps}) on process {run.rank}"
        self.guard.observe(finite, where, values, run.checkpoint)
        window.add({f"{phase}/{k}": v for k, v in {**metrics, **norms, "lr": lr}.items()})

    # Records ----------------------------------------------------------------------------------

    def _log(self, window: MetricWindow, phase: str) -> dict[str, Any]:
        """Average the window over steps and processes and log it; returns the row."""
        cfg = self.config
        row = self.run.reduce(window)
        seconds = time.perf_counter() - window.start
        steps_per_sec = window.steps / seconds
        if phase == "tokenizer":
            frames = cfg.model.tokenizer.batch_size
        else:
            frames = cfg.model.prior.batch_size * cfg.model.prior.frames
        row["perf/steps_per_sec"] = steps_per_sec
        row["perf/frames_per_sec"] = steps_per_sec * frames
        row["perf/data_wait_fraction"] = window.data_seconds / seconds
        row["perf/peak_memory_mb"] = peak_memory_mb()
        row["data/failed_draws"] = self.failed_draws
        self.run.log(self.step, row)
        return row

    @torch.no_grad()
    def _evaluate(self, phase: str) -> None:
        """Main process: the reconstruction (tokenizer phase) or prediction (prior phase) video
        of the eval clips, saved, logged to TensorBoard, with its measures in the eval curve."""
        from apv_hub.data.video import write_gif, write_video
        from apv_hub.predict import prediction_mse, side_by_side
        from apv_hub.viper.tokenizer import codebook_stats

        cfg, run = self.config, self.run
        if not run.is_main:
            return
        tokenizer = self.model.tokenizer
        training = tokenizer.training
        tokenizer.eval()
        frames = self.eval_frames
        tokens = tokenizer.encode(frames.to(run.device))
        if phase == "tokenizer":
            shown = tokenizer.decode(tokens).cpu()
            usage = codebook_stats(tokens, tokenizer.codebook_size)
            row = {
                "recon_mse": prediction_mse(frames, shown),
                "codebook_perplexity": float(usage["perplexity"]),
                "codebook_usage": float(usage["usage"]),
            }
            name = "recon"
        else:
            cls = None if self.eval_classes is None else self.eval_classes.to(run.device)
            context = cfg.eval_context
            generator = torch.Generator(device=run.device)
            generator.manual_seed(derive_seed(cfg.seed, "eval_clips", self.step))
            sampled = self.ema.sample(
                tokens[:, :context], frames.shape[1] - context, cls, generator=generator
            )
            shown = tokenizer.decode(sampled).cpu()
            _, nll = self.ema.loss(tokens, cls)
            row = {
                "prediction_mse": prediction_mse(frames, shown),
                "bits_per_token": float(nll["bits_per_token"]),
            }
            name = "pred"
        tokenizer.train(training)
        video = side_by_side(frames, shown)
        path = write_video(run.paths.videos / f"{name}-{self.step}.mp4", video, fps=VIDEO_FPS)
        write_gif(path.with_suffix(".gif"), video, fps=VIDEO_FPS)
        row = {f"{phase}/{k}": v for k, v in row.items()}
        self.eval_row[phase] = row
        run.log(self.step, row, curve="eval")
        tag = "reconstruction" if phase == "tokenizer" else "prediction"
        run.logger.video(f"eval/{tag}", video, self.step, fps=VIDEO_FPS)
        self.last_video = path

    # Checkpoints ------------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        def write(folder: Path) -> None:
            if self.run.is_main:
                self.model.training_info = self.training_info()
                self.model.save_pretrained(folder / "model")
                save_tensors(self.ema.state_dict(), folder / EMA_FILE)
                save_optimizer_state(folder, self.optimizers)

        state = {
            "step": self.step,
            "phase": self.phase_of(self.step),
            "failed_draws": self.failed_draws,
            "eval": self.eval_row,
        }
        self.run.save_checkpoint(self.step, write, state)

    def _load_checkpoint(self, folder: Path, state: dict[str, Any]) -> None:
        tensors, _ = load_tensors(folder / "model" / "model.safetensors")
        load_into(self.model, tensors, source=str(folder / "model"))
        ema, _ = load_tensors(folder / EMA_FILE)
        load_into(self.ema, ema, source=str(folder / EMA_FILE))
        load_optimizer_state(folder, self.optimizers)

    # Outputs ----------------------------------------------------------------------------------

    def _finish(self) -> RunResult:
        run = self.run
        final_phase = self.phase_of(self.step)
        self._evaluate(final_phase)
        model = self.reward_model() if run.is_main else None
        summary = {
            "steps": self.step,
            "final": self.final_metrics(),
            "video": self.last_video,
            "classes": list(self.config.model.class_names),
        }
        model_dir = run.finish(model, summary)
        return RunResult(
            run.paths.root,
            self.step,
            run.checkpoint,
            model_dir,
            self.last_video,
            self.final_metrics(),
            run.session_seconds(),
        )

    def reward_model(self) -> Any:
        """The run's VIPERRewardModel: the tokenizer, the EMA prior weights, the reward
        statistics of whole training videos scored with them, and the training record."""
        model = copy.deepcopy(self.model).eval()
        model.prior.load_state_dict(self.ema.state_dict())
        model.reset_reward_stats()
        videos = self._stats_videos()
        bar = self.run.progress_bar(len(videos), 0, "reward statistics", unit="video")
        for frames, cls in videos:
            model.update_reward_stats(frames[None].to(self.run.device), cls)
            bar.update(1)
        bar.close()
        model.training_info = self.training_info(stats_videos=len(videos))
        return model

    def _stats_videos(self) -> list[tuple[Tensor, int | None]]:
        """Whole training videos for the reward statistics: the first ``stats_videos`` of each
        class in corpus order (all with 0) -> [(uint8 frames [T, 3, H, W], class id or None)]."""
        from apv_hub.data.video import center_crop, decode_frames, decode_size

        cfg = self.config
        size = cfg.model.tokenizer.image_size
        conditional = bool(cfg.model.prior.num_classes)
        taken: dict[int, int] = {}
        videos = []
        for corpus, classes in zip(self.corpora, self.class_table, strict=True):
            meta = corpus.select_columns(["num_frames", "height", "width"])
            for row, cls in enumerate(classes.tolist()):
                if cfg.stats_videos and taken.get(cls, 0) >= cfg.stats_videos:
                    continue
                taken[cls] = taken.get(cls, 0) + 1
                info = meta[row]
                shape = decode_size(info["height"], info["width"], size, size, cfg.resize)
                frames = decode_frames(corpus[row]["video"], range(info["num_frames"]), *shape)
                frames = center_crop(frames, size, size).transpose(0, 3, 1, 2)
                videos.append(
                    (torch.from_numpy(np.ascontiguousarray(frames)), cls if conditional else None)
                )
        return videos

    def final_metrics(self) -> dict[str, float]:
        """The last logged loss terms of each phase and the last evaluation's measures."""
        rows = self.run.metrics.rows if self.run.is_main else []
        metrics: dict[str, float] = {}
        for phase, terms in CARD_TERMS.items():
            last = next((r for r in reversed(rows) if f"{phase}/loss" in r), {})
            metrics.update(
                {f"{phase}/{t}": last[f"{phase}/{t}"] for t in terms if f"{phase}/{t}" in last}
            )
        for row in self.eval_row.values():
            metrics.update({f"eval/{k}": v for k, v in row.items()})
        return metrics

    def training_info(self, stats_videos: int | None = None) -> dict[str, Any]:
        """What the model card states about this run: data, steps, batches, measured values."""
        cfg, run = self.config, self.run
        tok, prior = cfg.model.tokenizer, cfg.model.prior
        batch = (
            f"tokenizer: {tok.batch_size} frames (clips of {cfg.tokenizer_clip_frames}, every "
            f"{cfg.tokenizer_stride}th frame); prior: {prior.batch_size} windows of "
            f"{prior.frames} frames {prior.frame_skip} apart"
        )
        if run.world_size > 1:
            batch += f"; over {run.world_size} processes"
        note = (
            "loss terms: means over the last logged window of each phase; eval: "
            f"{cfg.eval_clips} clips (reconstruction, or {cfg.eval_context} context frames and "
            f"the rest sampled by the EMA prior), pixels in [0, 1]"
        )
        if stats_videos is not None:
            note += f"; reward statistics: {stats_videos} whole training videos, EMA weights"
        return {
            "data": cfg.describe_data(),
            "classes": cfg.classes,
            "steps": f"{min(self.step, cfg.tokenizer_steps)} tokenizer + "
            f"{max(self.step - cfg.tokenizer_steps, 0)} prior",
            "batch": batch,
            "metrics": self.final_metrics(),
            "metrics_note": note,
            "seed": cfg.seed,
            "precision": "fp32" if run.accelerator.mixed_precision == "no" else "bf16",
            "command": "\n".join(run.commands),
            "card_notes": Path(cfg.card_notes).read_text() if cfg.card_notes else None,
        }


def train_viper(config: VIPERTrainConfig, out: str | Path, **kwargs: Any) -> RunResult:
    """Run (or with ``resume=True``, continue) VIPER reward-model training into the run folder
    ``out`` (see `VIPERTrainer` for the keyword arguments)."""
    return VIPERTrainer(config, out, **kwargs).train()
