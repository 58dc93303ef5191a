"""Action-free pre-training of the APV video model on video corpora, on Accelerate.

    apv-pretrain --data sample --preset small --steps 300 --out runs/sample
    accelerate launch pretrain.py --data data/rlbench --preset paper --out runs/rlbench
    torchrun --nproc_per_node 2 pretrain.py --data data/mw --out runs/mw   # 2 CPU processes, gloo
    apv-pretrain --resume runs/rlbench --steps 700000                      # continue exactly

The run folder is `apv_hub.training.run`'s; besides it, ``videos/pred-<step>.mp4`` (and .gif)
show open-loop predictions: ground truth above context + prediction.

Determinism: clip ``i`` of rank ``r`` is a pure function of ``(seed, r, i)`` (ClipDataset), and
the torch RNG (the RSSM's latent samples) is re-seeded from ``(seed, rank, step)`` before every
step. A checkpoint's step therefore fixes both the data position and the RNG state, and
``--resume`` continues the run bit for bit on CPU.

``model.batch_size`` is the global batch: with N processes each one draws ``batch_size / N``
clips per step from its own shard of the videos, and the gradients are averaged, so the
optimisation does not depend on how many processes share the work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apv_hub.compilation import begin_step, compile_step, keep
from apv_hub.optim import apply_gradients, load_optimizer_state, make_adam, save_optimizer_state
from apv_hub.seeding import derive_seed
from apv_hub.training.configs import PretrainConfig
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
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import load_into, load_tensors, tensor_digest

# The loss terms APVVideoModel.loss reports; the card states their final values.
LOSS_TERMS = ("loss", "image_nll", "image_mse", "kl", "kl_loss")
VIDEO_FPS = 10


def make_clips(
    config: PretrainConfig,
    rank: int,
    world_size: int,
    num_clips: int,
    seed: int,
    cache: bool = False,
):
    """The ClipDataset of one process: its shard of the videos, ``num_clips`` items; read from
    ``config.clip_cache`` with ``cache`` (built there first if needed)."""
    from apv_hub.data import ClipDataset

    clips = ClipDataset(
        config.corpora(),
        length=config.model.seq_len,
        stride=config.stride,
        size=config.model.image_size,
        weights=config.weights,
        seed=seed,
        num_clips=num_clips,
        short_videos=config.short_videos,
        resize=config.resize,
        rank=rank,
        world_size=world_size,
    )
    if cache and config.clip_cache is not None:
        clips.use_cache(config.clip_cache, progress=rank == 0)
    return clips


def build_model(config: PretrainConfig) -> APVVideoModel:
    """A fresh model seeded by ``config.seed``, or the ``init`` checkpoint's weights."""
    # The init checkpoint first: its loader checks it before a model of its size is allocated.
    source = (
        APVVideoModel.from_pretrained(config.init, revision=config.init_revision)
        if config.init is not None
        else None
    )
    torch.manual_seed(config.seed)
    model = APVVideoModel(config.model)
    if source is not None:
        load_into(model, source.state_dict(), source=config.init)
    return model


class Pretrainer:
    """One pre-training run: ``Pretrainer(config, out).run()``; see the module docstring.

    Everything is built and every input checked in the constructor, before the run folder is
    created or touched.
    """

    def __init__(
        self,
        config: PretrainConfig,
        out: str | Path,
        *,
        resume: bool = False,
        command: str | None = None,
        progress: bool = True,
        debug_dump: str | Path | None = None,
    ) -> None:
        self.config = cfg = config
        self.debug_dump = Path(debug_dump) if debug_dump else None
        accelerator = make_accelerator(cfg.precision)
        self.local_batch = local_batch(accelerator, cfg.model.batch_size, "model.batch_size")
        rank, world_size = accelerator.process_index, accelerator.num_processes
        self.clips = make_clips(
            cfg, rank, world_size, cfg.steps * self.local_batch, self.data_seed, cache=True
        )
        self.eval_frames = self._eval_frames()
        self.model = build_model(cfg).to(accelerator.device)
        self.params = list(self.model.parameters())
        adam = make_adam(self.params, cfg.model.lr, cfg.model.adam_eps, cfg.model.weight_decay)
        self.optimizers = prepare_optimizers(accelerator, {"model": adam})
        self.compile_mode = cfg.compile_mode if cfg.compile else None
        self.loss_fn = compile_step(self.model.loss, cfg.compile_mode) if cfg.compile else None
        self.run = Run(
            cfg,
            out,
            resume=resume,
            command=command,
            accelerator=accelerator,
            progress=progress,
            step_name="step",
        )
        self.run.watch(self.model)
        self.step = 0
        self.failed_draws = 0
        self.clips_seen: list[list[int]] = []
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self.last_video: Path | None = None
        self.eval_mse: float | None = None
        trainer_state = self.run.restore(self._load_checkpoint)
        if trainer_state is not None:
            self.step, self.failed_draws = trainer_state["step"], trainer_state["failed_draws"]

    @property
    def data_seed(self) -> int:
        return derive_seed(self.config.seed, "data")

    def _eval_frames(self) -> Tensor:
        """The fixed clips of the eval video: uint8 [eval_clips, T, 3, H, W]."""
        cfg = self.config
        seed = derive_seed(cfg.seed, "eval_clips")
        clips = make_clips(cfg, 0, 1, num_clips=cfg.eval_clips, seed=seed)
        return torch.stack([clips[i]["frames"] for i in range(cfg.eval_clips)])

    def _loader(self) -> torch.utils.data.DataLoader:
        """Batches of this process's clips from item ``step * local_batch`` to the end."""
        cfg = self.config
        return torch.utils.data.DataLoader(
            self.clips,
            batch_size=self.local_batch,
            # Items are pure functions of their index: resuming is starting at the right one.
            sampler=range(self.step * self.local_batch, cfg.steps * self.local_batch),
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if cfg.num_workers else None,
        )

    # Training ---------------------------------------------------------------------------------

    def train(self) -> RunResult:
        """Train to ``config.steps``, then save, evaluate and (if asked) push the model."""
        cfg, run = self.config, self.run
        bar = run.progress_bar(cfg.steps, self.step, "pre-training")
        window = MetricWindow()
        batches = iter(self._loader()) if self.step < cfg.steps else iter(())
        try:
            while self.step < cfg.steps:
                fetch = time.perf_counter()
                batch = next(batches)
                frames = batch["frames"].to(run.device, non_blocking=True)
                window.data_seconds += time.perf_counter() - fetch
                self._note_batch(batch)
                self._train_step(frames, window)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = self._log(window)
                    bar.set_postfix(loss=f"{row.get('train/loss', float('nan')):.1f}")
                    window = MetricWindow()
                if self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self._evaluate()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self._save_checkpoint()
        except BaseException:
            run.close()
            raise
        finally:
            bar.close()
        return self._finish()

    def _train_step(self, frames: Tensor, window: MetricWindow) -> None:
        cfg, run = self.config, self.run
        torch.manual_seed(derive_seed(cfg.seed, "steps", run.rank, self.step))
        begin_step(self.compile_mode)
        with run.accelerator.autocast():
            loss, metrics = (self.loss_fn or self.model.loss)(frames)
        if self.compile_mode is not None:
            metrics = keep(metrics)
        norm = apply_gradients(
            loss, self.optimizers["model"], self.params, cfg.model.grad_clip, run.accelerator
        )
        self.step += 1
        # Decided on the device, read back at the next log row or checkpoint (no host sync).
        metrics = {**metrics, "grad_norm": norm}
        finite = torch.isfinite(norm) & torch.isfinite(metrics["loss"])
        where = f"training step {self.step} (of {cfg.steps}) on process {run.rank}"
        self.guard.defer(finite, where, metrics)
        window.add(metrics)

    def _note_batch(self, batch: dict) -> None:
        self.failed_draws += int(batch["failed_draws"].sum())
        # Videos that failed to decode (the dataset logged why): listed in summary.json.
        if batch["failed_draws"].any():
            failed = batch["failed_draws"].tolist()
            for index, count in zip(batch["index"].tolist(), failed, strict=True):
                for name in self.clips.failed_videos(index, count):
                    self.run.recover("skipped_videos", name)
        if self.debug_dump is not None:
            ids = torch.stack([batch["corpus"], batch["row"], batch["start"]], 1)
            self.clips_seen += ids.tolist()

    def _log(self, window: MetricWindow) -> dict[str, Any]:
        """Average the window over steps and processes and log it; returns the row."""
        cfg = self.config
        self.guard.flush(self.run.checkpoint)
        means = self.run.reduce(window)
        seconds = time.perf_counter() - window.start
        steps_per_sec = window.steps / seconds
        row = {f"train/{k}": v for k, v in means.items()}
        row["train/lr"] = self.optimizers["model"].param_groups[0]["lr"]
        row["perf/steps_per_sec"] = steps_per_sec
        row["perf/frames_per_sec"] = steps_per_sec * cfg.model.batch_size * cfg.model.seq_len
        row["perf/data_wait_fraction"] = window.data_seconds / seconds
        row["perf/peak_memory_mb"] = peak_memory_mb()
        row["data/failed_draws"] = self.failed_draws
        self.run.log(self.step, row)
        return row

    def _evaluate(self) -> None:
        """Main process: the open-loop prediction video of the eval clips, saved and logged."""
        from apv_hub.data.video import write_gif, write_video
        from apv_hub.predict import open_loop, prediction_mse, side_by_side

        run = self.run
        if not run.is_main:
            return
        self.model.eval()
        predictions = open_loop(self.model, self.eval_frames, self.config.eval_context)
        self.model.train()
        self.eval_mse = prediction_mse(self.eval_frames, predictions)
        video = side_by_side(self.eval_frames, predictions)
        path = write_video(run.paths.videos / f"pred-{self.step}.mp4", video, fps=VIDEO_FPS)
        write_gif(path.with_suffix(".gif"), video, fps=VIDEO_FPS)
        run.log(self.step, {"open_loop_mse": self.eval_mse}, curve="eval")
        run.log_video("eval/open_loop_prediction", video, self.step, fps=VIDEO_FPS)
        self.last_video = path

    # Checkpoints ------------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        self.guard.flush(self.run.checkpoint)

        def write(folder: Path) -> None:
            if self.run.is_main:
                self.model.training_info = self.training_info()
                self.model.save_pretrained(folder / "model")
                save_optimizer_state(folder, self.optimizers)

        # Every process's next clip index follows from the step and the data seed.
        state = {"step": self.step, "failed_draws": self.failed_draws, "data_seed": self.data_seed}
        self.run.save_checkpoint(self.step, write, state)

    def _load_checkpoint(self, folder: Path, state: dict[str, Any]) -> None:
        tensors, _ = load_tensors(folder / "model" / "model.safetensors")
        load_into(self.model, tensors, source=str(folder / "model"))
        load_optimizer_state(folder, self.optimizers)

    # Outputs ----------------------------------------------------------------------------------

    def _finish(self) -> RunResult:
        self._evaluate()
        run = self.run
        if self.debug_dump is not None:
            self._write_debug_dump()
        self.model.training_info = self.training_info()
        summary = {"steps": self.step, "final": self.final_metrics(), "video": self.last_video}
        model_dir = run.finish(self.model, summary)
        return RunResult(
            run.paths.root,
            self.step,
            run.checkpoint,
            model_dir,
            self.last_video,
            self.final_metrics(),
            run.session_seconds(),
        )

    def final_metrics(self) -> dict[str, float]:
        """The last logged loss terms (means over the last log window, all processes)."""
        rows = self.run.metrics.rows if self.run.is_main else []
        last = rows[-1] if rows else {}
        metrics = {k: last[f"train/{k}"] for k in LOSS_TERMS if f"train/{k}" in last}
        if self.eval_mse is not None:
            metrics["open_loop_mse"] = self.eval_mse
        return metrics

    def training_info(self) -> dict[str, Any]:
        """What the model card states about this run: data, steps, batch, measured losses."""
        cfg, run = self.config, self.run
        rows = run.metrics.rows if run.is_main else []
        last = rows[-1]["step"] if rows else self.step
        window = min(cfg.log_every, last)
        batch = f"{cfg.model.batch_size} clips x {cfg.model.seq_len} frames (stride {cfg.stride})"
        if run.world_size > 1:
            batch += f" over {run.world_size} processes"
        return {
            "data": cfg.describe_data(),
            "steps": self.step,
            "batch": batch,
            "metrics": self.final_metrics(),
            "metrics_note": (
                f"loss terms: means over training steps {last - window + 1}-{last}; "
                f"open_loop_mse: {cfg.eval_clips} clips, {cfg.eval_context} context frames, "
                f"{cfg.model.seq_len - cfg.eval_context} predicted, pixels in [0, 1]"
            ),
            "init": cfg.init,
            "seed": cfg.seed,
            "precision": "fp32" if run.accelerator.mixed_precision == "no" else "bf16",
            "command": "\n".join(run.commands),
            "card_notes": Path(cfg.card_notes).read_text() if cfg.card_notes else None,
        }

    def _write_debug_dump(self) -> None:
        """Test seam (--debug-dump DIR): what this process saw, one JSON file per rank."""
        run = self.run
        self.debug_dump.mkdir(parents=True, exist_ok=True)
        dump = {
            "rank": run.rank,
            "world_size": run.world_size,
            "local_batch": self.local_batch,
            "param_digest": tensor_digest(self.model.state_dict()),
            "clips": self.clips_seen,
        }
        (self.debug_dump / f"rank-{run.rank}.json").write_text(json.dumps(dump))


def pretrain(config: PretrainConfig, out: str | Path, **kwargs: Any) -> RunResult:
    """Run (or with ``resume=True``, continue) pre-training into the run folder ``out`` (see
    `Pretrainer` for the keyword arguments)."""
    return Pretrainer(config, out, **kwargs).train()
