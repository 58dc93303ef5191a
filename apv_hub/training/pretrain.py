"""Action-free pre-training of the APV video model on video corpora, on Accelerate.

    python pretrain.py --data sample --preset small --steps 300 --out runs/sample
    accelerate launch pretrain.py --data data/rlbench --preset paper --out runs/rlbench
    torchrun --nproc_per_node 2 pretrain.py --data data/mw --out runs/mw   # 2 CPU processes, gloo
    python pretrain.py --resume runs/rlbench                                # continue exactly

A run folder holds::

    run_config.json             the PretrainConfig (PretrainConfig.load, --resume, --config)
    checkpoints/ckpt-<step>/    model + optimizer (safetensors + JSON), state.json: step, data
                                position, RNG seeds, learning curve; written atomically
    logs/                       TensorBoard: every loss term, KL, grad norm, lr, throughput, videos
    metrics.csv, metrics.json   the learning curve
    videos/pred-<step>.mp4/gif  open-loop predictions: ground truth above context + prediction
    model/                      the final save_pretrained folder with its model card

Determinism: clip ``i`` of rank ``r`` is a pure function of ``(seed, r, i)`` (ClipDataset), and
the torch RNG (the RSSM's latent samples) is re-seeded from ``(seed, rank, step)`` before every
step. A checkpoint's step therefore fixes both the data position and the RNG state, and
``--resume`` continues the run bit for bit on CPU.

``batch_size`` (in the model's APVConfig) is the global batch: with N processes each one draws
``batch_size / N`` clips per step from its own shard of the videos, and the gradients are
averaged, so the optimisation does not depend on how many processes share the work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apv_hub.config import APVConfig, ConfigError
from apv_hub.hub import CONFIG_NAME, resolve_file
from apv_hub.optim import apply_gradients, make_adam
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import load_into, load_tensors, save_tensors, tensor_digest

SAMPLE = "sample"
PRECISIONS = ("auto", "fp32", "bf16")
RUN_CONFIG = "run_config.json"
# What --resume may change: the schedule and the outputs, never what or how the model learns.
RESUMABLE_FIELDS = (
    "steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_workers",
    "push_to_hub",
    "card_notes",
)
# Checkpoint files (safetensors + JSON only).
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
STATE_FILE = "state.json"
# Test seam: a process whose environment sets CRASH_ENV to a step number exits (os._exit, no
# clean-up) in the middle of writing that step's checkpoint, as a killed process would.
CRASH_ENV = "APV_HUB_CRASH_IN_CHECKPOINT"
CRASH_EXIT_CODE = 70
# The loss terms APVVideoModel.loss reports; the card states their final values.
LOSS_TERMS = ("loss", "image_nll", "image_mse", "kl", "kl_loss")


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss or gradient norm; the step was not kept."""


@dataclass
class PretrainConfig:
    """Everything a pre-training run is built from; saved as ``run_config.json`` in the run.

    The model's APVConfig holds the architecture, the loss and optimiser settings and the batch
    shape (``batch_size`` clips of ``seq_len`` frames, REFERENCE section 2: 16 x 25).
    """

    # Corpora: folders, Hub dataset repo ids, or "sample" (the corpus shipped with apv-hub).
    data: list[str]
    # Mixture weights, one per corpus (normalised); None: uniform over all videos.
    weights: list[float] | None = None
    model: APVConfig = field(default_factory=lambda: APVConfig.preset("small"))
    # Checkpoint (folder or repo id) whose weights the run starts from.
    init: str | None = None
    # Clips take every `stride`-th frame.
    stride: int = 1
    # Gradient steps (the paper: 600K).
    steps: int = 600_000
    log_every: int = 100
    # Every eval_every steps: an open-loop prediction video and its error.
    eval_every: int = 5000
    # Every checkpoint_every steps (the paper: 5000); the newest keep_checkpoints are kept
    # (0: all).
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    # DataLoader worker processes decoding clips (per training process).
    num_workers: int = 2
    # auto: bf16 where the GPU supports it, fp32 on CPU.
    precision: str = "auto"
    seed: int = 0
    # torch.compile the loss computation.
    compile: bool = False
    # The eval video: eval_clips clips, the model sees eval_context frames and predicts the rest.
    eval_clips: int = 4
    eval_context: int = 5
    # How ClipDataset treats videos shorter than a clip ("skip" or "pad") and resizes frames.
    short_videos: str = "skip"
    resize: str = "crop"
    # Hub repo the final model is pushed to.
    push_to_hub: str | None = None
    # A markdown file (e.g. model_cards/rlbench-99.md) whose text the model card includes.
    card_notes: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(d) for d in self.data]
        if not self.data:
            raise ConfigError("data: name at least one corpus")
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]
            if len(self.weights) != len(self.data):
                raise ConfigError(
                    f"weights: {len(self.weights)} weight(s) for {len(self.data)} corpora"
                )
            if min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ConfigError(f"weights must be non-negative, not all 0: {self.weights}")
        if isinstance(self.model, dict):
            self.model = APVConfig.from_json_dict(self.model)
        for name in ("stride", "steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("keep_checkpoints", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.eval_clips < 1:
            raise ConfigError(f"eval_clips must be at least 1, got {self.eval_clips}")
        if not 0 < self.eval_context < self.model.seq_len:
            raise ConfigError(
                f"eval_context must lie in [1, seq_len - 1] = [1, {self.model.seq_len - 1}], "
                f"got {self.eval_context}"
            )
        if self.card_notes is not None and not Path(self.card_notes).is_file():
            raise ConfigError(f"card_notes: no file at {self.card_notes}")
        if self.model.batch_size < 1 or self.model.seq_len < 2:
            raise ConfigError(
                f"need batch_size >= 1 and seq_len >= 2, got {self.model.batch_size} x "
                f"{self.model.seq_len}"
            )

    @property
    def batch_size(self) -> int:
        return self.model.batch_size

    @property
    def seq_len(self) -> int:
        return self.model.seq_len

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Build from a dict, naming unknown fields (a typo must not be silently dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown PretrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        from apv_hub.io import write_atomic

        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        write_atomic(path, text.encode())

    @classmethod
    def load(cls, path: str | Path) -> PretrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"no run config at {path}") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data)


# Model config from a preset or a checkpoint, with --set overrides ------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["kl_scale=0.2", "encoder_kernels=4,4,4,4"]`` -> typed APVConfig overrides.

    Each value is parsed as the type of the field's default; an unknown field or a value of the
    wrong type raises a ConfigError naming it.
    """
    defaults = APVConfig().to_dict()
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in defaults:
            raise ConfigError(
                f"--set {key}: not an APVConfig field; fields are {', '.join(sorted(defaults))}"
            )
        overrides[key] = _parse_value(key, raw.strip(), defaults[key])
    return overrides


def _parse_value(key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            return [int(v) for v in raw.strip("[]()").split(",")]
        return raw
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        if isinstance(default, list):
            kind = "comma-separated integers"
        raise ConfigError(f"--set {key}={raw}: expected {kind}") from None


def model_config(
    preset: str | None = None, init: str | None = None, overrides: dict[str, Any] | None = None
) -> APVConfig:
    """The model config of a run: a preset's (default ``small``), or the ``init`` checkpoint's,
    with ``overrides`` applied."""
    overrides = overrides or {}
    if init is not None:
        if preset is not None:
            raise ConfigError("--preset and --init exclude each other: --init fixes the model")
        base = json.loads(Path(resolve_file(init, CONFIG_NAME)).read_text())
        return APVConfig.from_dict({**APVConfig.from_json_dict(base).to_dict(), **overrides})
    return APVConfig.preset(preset or "small", **overrides)


# Data ------------------------------------------------------------------------------------------


def resolve_corpus(name: str) -> str:
    """``sample`` -> the shipped sample corpus's folder; anything else is returned as it is."""
    if name != SAMPLE:
        return name
    from apv_hub.data import sample_corpus_path

    path = sample_corpus_path()
    if not (path / "data").is_dir():
        raise FileNotFoundError(f"the sample corpus is missing from this install ({path})")
    return str(path)


def describe_data(config: PretrainConfig) -> list[str]:
    """Corpus names for the model card: repo ids and paths as given, with mixture weights."""
    names = [
        "apv-hub sample corpus (Meta-world scripted policies)" if d == SAMPLE else d
        for d in config.data
    ]
    if config.weights is None:
        return names
    total = sum(config.weights)
    return [f"{n} (weight {w / total:.3g})" for n, w in zip(names, config.weights, strict=True)]


def make_clips(config: PretrainConfig, rank: int, world_size: int, num_clips: int, seed: int):
    """The ClipDataset of one process: its shard of the videos, ``num_clips`` items."""
    from apv_hub.data import ClipDataset

    return ClipDataset(
        [resolve_corpus(d) for d in config.data],
        length=config.seq_len,
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


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of ``step`` on ``rank``: the RNG state is a function of the step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


# The run ---------------------------------------------------------------------------------------


@dataclass
class RunPaths:
    """Where a run writes."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def model(self) -> Path:
        return self.root / "model"


@dataclass
class PretrainResult:
    """What a finished run produced."""

    out: Path
    steps: int
    checkpoint: Path
    model_dir: Path
    video: Path | None
    metrics: dict[str, float]
    seconds: float


@dataclass
class _Window:
    """Sums of the per-step metrics since the last log line."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    data_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1


def make_accelerator(precision: str):
    """An Accelerator on the GPU if there is one (bf16 under ``auto`` where supported), else
    on the CPU in fp32; under torchrun/accelerate launch it joins the process group."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if precision == "auto":
        mixed = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    else:
        mixed = "bf16" if precision == "bf16" else "no"
    return Accelerator(cpu=not cuda, mixed_precision=mixed)


def build_model(config: PretrainConfig) -> APVVideoModel:
    """A fresh model seeded by ``config.seed``, or the ``init`` checkpoint's weights."""
    torch.manual_seed(config.seed)
    model = APVVideoModel(config.model)
    if config.init is not None:
        source = APVVideoModel.from_pretrained(config.init)
        load_into(model, source.state_dict(), source=config.init)
    return model


def peak_memory_mb() -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Pretrainer:
    """One pre-training run: ``Pretrainer(config, out).run()``; see the module docstring."""

    def __init__(
        self,
        config: PretrainConfig,
        out: str | Path,
        resume: bool = False,
        command: str | None = None,
        progress: bool = True,
        debug_dump: str | Path | None = None,
    ) -> None:
        self.config = config
        self.paths = RunPaths(Path(out))
        # Every command that trained this run: the first, then each --resume.
        self.commands = [command or command_line(None)]
        self.progress = progress
        self.debug_dump = Path(debug_dump) if debug_dump else None
        self.accelerator = make_accelerator(config.precision)
        acc = self.accelerator
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        if config.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} does not split over {self.world_size} processes"
            )
        self.local_batch = config.batch_size // self.world_size
        self.step = 0
        self.curve: list[dict[str, Any]] = []
        self.clips_seen: list[list[int]] = []
        self.failed_draws = 0
        self.elapsed = 0.0
        self._start_run(resume)

    # Setup ------------------------------------------------------------------------------------

    def _start_run(self, resume: bool) -> None:
        from apv_hub.training.checkpoint import latest_checkpoint

        paths, cfg = self.paths, self.config
        if not resume and paths.config.exists():
            raise FileExistsError(
                f"{paths.root} already holds a run; continue it with --resume {paths.root} "
                "or choose another --out"
            )
        # Every process has looked before the main one writes the run config.
        self.accelerator.wait_for_everyone()
        if self.is_main:
            paths.root.mkdir(parents=True, exist_ok=True)
            # A resumed run's schedule changes (--steps ...) hold for later resumes too.
            cfg.save(paths.config)
        self.model = build_model(cfg).to(self.accelerator.device)
        self.optimizer = make_adam(
            self.model.parameters(), cfg.model.lr, cfg.model.adam_eps, cfg.model.weight_decay
        )
        self.optimizer = self.accelerator.prepare(self.optimizer)
        self.checkpoint = latest_checkpoint(paths.checkpoints) if resume else None
        if self.checkpoint is not None:
            self._load_checkpoint(self.checkpoint)
        self.loss_fn = torch.compile(self.model.loss) if cfg.compile else self.model.loss
        self._start_logging()

    def _start_logging(self) -> None:
        from apv_hub.training.logging import CurveWriter, ScalarLogger

        self.logger = self.curve_writer = None
        if not self.is_main:
            return
        # Events past the checkpoint a resumed run restarts from are dropped (purge_step).
        self.logger = ScalarLogger(self.paths.logs, purge_step=self.step or None)
        self.curve_writer = CurveWriter(self.paths.root, stem="metrics")
        self.curve_writer.reset(self.curve)
        config = json.dumps(self.config.to_dict(), indent=2)
        self.logger.text("config", f"```json\n{config}\n```", self.step)
        self.logger.text("command", self.commands[-1], self.step)
        self.eval_frames = self._eval_frames()

    def _eval_frames(self) -> Tensor:
        """The fixed clips of the eval video: uint8 [eval_clips, T, 3, H, W] (seed + 1 stream)."""
        cfg = self.config
        clips = make_clips(cfg, 0, 1, num_clips=cfg.eval_clips, seed=cfg.seed + 1)
        return torch.stack([clips[i]["frames"] for i in range(cfg.eval_clips)])

    def _loader(self):
        """Batches of this process's clips from item ``step * local_batch`` to the end."""
        cfg = self.config
        end = cfg.steps * self.local_batch
        clips = make_clips(cfg, self.rank, self.world_size, num_clips=end, seed=cfg.seed)
        return torch.utils.data.DataLoader(
            clips,
            batch_size=self.local_batch,
            # Items are pure functions of their index: resuming is starting at the right one.
            sampler=range(self.step * self.local_batch, end),
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if cfg.num_workers else None,
        )

    # Training ---------------------------------------------------------------------------------

    def run(self) -> PretrainResult:
        """Train to ``config.steps``, then save, evaluate and (if asked) push the model."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="pre-training",
            unit="step",
            disable=not (self.is_main and self.progress),
            dynamic_ncols=True,
        )
        params = list(self.model.parameters())
        window = _Window()
        batches = iter(self._loader()) if self.step < cfg.steps else iter(())
        run_start = time.perf_counter()
        while self.step < cfg.steps:
            fetch = time.perf_counter()
            batch = next(batches)
            frames = batch["frames"].to(acc.device, non_blocking=True)
            window.data_seconds += time.perf_counter() - fetch
            self._note_batch(batch)
            torch.manual_seed(step_seed(cfg.seed, self.rank, self.step))
            with acc.autocast():
                loss, metrics = self.loss_fn(frames)
            norm = apply_gradients(loss, self.optimizer, params, cfg.model.grad_clip, acc)
            self.step += 1
            if not (math.isfinite(norm) and math.isfinite(metrics["loss"])):
                raise NonFiniteLossError(self._non_finite_message(metrics, norm))
            window.add({**metrics, "grad_norm": norm})
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                bar.set_postfix(loss=f"{window.sums['loss'] / window.steps:.1f}")
                self._log(window)
                window = _Window()
            if self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._evaluate()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._save_checkpoint(time.perf_counter() - run_start)
        bar.close()
        return self._finish(time.perf_counter() - run_start)

    def _note_batch(self, batch: dict) -> None:
        self.failed_draws += int(batch["failed_draws"].sum())
        if self.debug_dump is not None:
            ids = torch.stack([batch["corpus"], batch["row"], batch["start"]], 1)
            self.clips_seen += ids.tolist()

    def _non_finite_message(self, metrics: dict[str, float], norm: float) -> str:
        values = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        where = self.checkpoint or "none yet"
        return (
            f"non-finite training step {self.step} (of {self.config.steps}) on process "
            f"{self.rank}: {values}, grad_norm={norm:.4g}. The step was not applied and training "
            f"stopped; the last checkpoint is {where}. Lower the learning rate "
            "(--set lr=...), check the data, or train in fp32 (--precision fp32)."
        )

    def _log(self, window: _Window) -> None:
        """Average the window over steps and processes, then log it (main process)."""
        names = sorted(window.sums)
        local = torch.tensor([window.sums[k] / window.steps for k in names], dtype=torch.float64)
        means = self.accelerator.reduce(local.to(self.accelerator.device), reduction="mean")
        if not self.is_main:
            return
        seconds = time.perf_counter() - window.start
        steps_per_sec = window.steps / seconds
        means = dict(zip(names, means.tolist(), strict=True))
        row = {"step": self.step, **{f"train/{k}": v for k, v in means.items()}}
        row["train/lr"] = self.optimizer.param_groups[0]["lr"]
        row["perf/steps_per_sec"] = steps_per_sec
        row["perf/frames_per_sec"] = steps_per_sec * self.config.batch_size * self.config.seq_len
        row["perf/data_wait_fraction"] = window.data_seconds / seconds
        row["perf/peak_memory_mb"] = peak_memory_mb()
        row["data/failed_draws"] = self.failed_draws
        self.logger.log(self.step, {k: v for k, v in row.items() if k != "step"})
        self.curve.append(row)
        self.curve_writer.append(row)

    def _evaluate(self) -> Path | None:
        """Main process: the open-loop prediction video of the eval clips, saved and logged."""
        from apv_hub.data.video import write_gif, write_video
        from apv_hub.predict import open_loop, prediction_mse, side_by_side

        if not self.is_main:
            return None
        self.model.eval()
        predictions = open_loop(self.model, self.eval_frames, self.config.eval_context)
        self.model.train()
        mse = prediction_mse(self.eval_frames, predictions)
        video = side_by_side(self.eval_frames, predictions)
        path = write_video(self.paths.videos / f"pred-{self.step}.mp4", video, fps=10)
        write_gif(path.with_suffix(".gif"), video, fps=10)
        self.logger.log(self.step, {"eval/open_loop_mse": mse})
        self.logger.video("eval/open_loop_prediction", video, self.step, fps=10)
        self.eval_mse = mse
        return path

    def _save_checkpoint(self, seconds: float) -> None:
        """Main process: write ``checkpoints/ckpt-<step>`` atomically, keep the newest ones."""
        from apv_hub.training.checkpoint import checkpoint_path, save_run_checkpoint

        if self.is_main:
            state = {
                "step": self.step,
                "world_size": self.world_size,
                # Every process's next clip index, and the seed that fixes every draw.
                "data": {"next_item": self.step * self.local_batch, "seed": self.config.seed},
                "rng": {"torch": "re-seeded before each step from (seed, rank, step)"},
                "failed_draws": self.failed_draws,
                "elapsed": self.elapsed + seconds,
                "curve": self.curve,
                "commands": self.commands,
            }
            save_run_checkpoint(
                self.paths.checkpoints,
                self.step,
                lambda folder: self._write_checkpoint(folder, state),
                keep=self.config.keep_checkpoints or None,
            )
        self.accelerator.wait_for_everyone()
        self.checkpoint = checkpoint_path(self.paths.checkpoints, self.step)

    def _write_checkpoint(self, folder: Path, state: dict[str, Any]) -> None:
        from apv_hub.io import json_ready, write_atomic
        from apv_hub.optim import flatten_optimizers

        save_tensors(self.model.state_dict(), folder / MODEL_FILE)
        # Test seam: die here, with the model written and the rest not, as a crash would.
        if os.environ.get(CRASH_ENV) == str(self.step):
            os._exit(CRASH_EXIT_CODE)
        tensors, meta = flatten_optimizers({"optimizer": self.optimizer})
        save_tensors(tensors, folder / OPTIMIZER_FILE)
        write_atomic(folder / OPTIMIZER_META, json.dumps(meta).encode())
        write_atomic(folder / STATE_FILE, json.dumps(json_ready(state)).encode())
        self.config.save(folder / RUN_CONFIG)

    def _load_checkpoint(self, folder: Path) -> None:
        from apv_hub.optim import load_optimizers

        tensors, _ = load_tensors(folder / MODEL_FILE)
        load_into(self.model, tensors, source=str(folder))
        tensors, _ = load_tensors(folder / OPTIMIZER_FILE)
        meta = json.loads((folder / OPTIMIZER_META).read_text())
        load_optimizers({"optimizer": self.optimizer}, tensors, meta, source=str(folder))
        state = json.loads((folder / STATE_FILE).read_text())
        if state["world_size"] != self.world_size:
            raise ConfigError(
                f"{folder} was written by a run of {state['world_size']} process(es); resume "
                f"it with as many (data positions and RNG streams are per process), not "
                f"{self.world_size}"
            )
        self.step, self.curve = state["step"], state["curve"]
        self.failed_draws, self.elapsed = state["failed_draws"], state["elapsed"]
        self.commands = state["commands"] + self.commands

    # Outputs ----------------------------------------------------------------------------------

    def _finish(self, seconds: float) -> PretrainResult:
        from apv_hub.training.checkpoint import checkpoint_path

        video = self._evaluate()
        final = self._final_metrics()
        if self.debug_dump is not None:
            self._write_debug_dump()
        if self.is_main:
            self.model.training_info = self.training_info(final)
            self.model.save_pretrained(self.paths.model)
            if self.config.push_to_hub:
                self.model.push_to_hub(self.config.push_to_hub)
            self.logger.close()
        self.accelerator.wait_for_everyone()
        return PretrainResult(
            self.paths.root,
            self.step,
            checkpoint_path(self.paths.checkpoints, self.step),
            self.paths.model,
            video,
            final,
            seconds,
        )

    def _final_metrics(self) -> dict[str, float]:
        """The last logged loss terms (means over the last log window, all processes)."""
        last = self.curve[-1] if self.curve else {}
        metrics = {k: last[f"train/{k}"] for k in LOSS_TERMS if f"train/{k}" in last}
        if getattr(self, "eval_mse", None) is not None:
            metrics["open_loop_mse"] = self.eval_mse
        return metrics

    def training_info(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What the model card states about this run: data, steps, batch, measured losses."""
        cfg = self.config
        last = self.curve[-1]["step"] if self.curve else self.step
        window = min(cfg.log_every, last)
        return {
            "data": describe_data(cfg),
            "steps": self.step,
            "batch": f"{cfg.batch_size} clips x {cfg.seq_len} frames (stride {cfg.stride})"
            + (f" over {self.world_size} processes" if self.world_size > 1 else ""),
            "metrics": metrics,
            "metrics_note": (
                f"loss terms: means over training steps {last - window + 1}-{last}; "
                f"open_loop_mse: {cfg.eval_clips} clips, {cfg.eval_context} context frames, "
                f"{cfg.seq_len - cfg.eval_context} predicted, pixels in [0, 1]"
            ),
            "init": cfg.init,
            "seed": cfg.seed,
            "precision": "fp32" if self.accelerator.mixed_precision == "no" else "bf16",
            "command": "\n".join(self.commands),
            "card_notes": Path(cfg.card_notes).read_text() if cfg.card_notes else None,
        }

    def _write_debug_dump(self) -> None:
        """Test seam (--debug-dump DIR): what this process saw, one JSON file per rank."""
        self.debug_dump.mkdir(parents=True, exist_ok=True)
        dump = {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_batch": self.local_batch,
            "param_digest": tensor_digest(self.model.state_dict()),
            "clips": self.clips_seen,
        }
        (self.debug_dump / f"rank-{self.rank}.json").write_text(json.dumps(dump))


def pretrain(
    config: PretrainConfig,
    out: str | Path,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
    debug_dump: str | Path | None = None,
) -> PretrainResult:
    """Run (or with ``resume``, continue) pre-training into the run folder ``out``."""
    return Pretrainer(config, out, resume, command, progress, debug_dump).run()


# Command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apv-pretrain",
        description="Action-free pre-training of an APV video model on video corpora. "
        "Run it with python, `accelerate launch` or `torchrun --nproc_per_node N`.",
        argument_default=argparse.SUPPRESS,
    )
    run = p.add_argument_group("run")
    run.add_argument("--out", help="run folder (checkpoints, logs, videos, model)")
    run.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    run.add_argument("--config", help="start a new run from a saved run_config.json")
    data = p.add_argument_group("data")
    data.add_argument("--data", nargs="+", help="corpora: folders, Hub dataset ids, or 'sample'")
    data.add_argument("--weights", nargs="+", type=float, help="mixture weight of each corpus")
    data.add_argument("--stride", type=int, help="take every n-th frame (default 1)")
    data.add_argument("--num-workers", type=int, help="clip decoding workers (default 2)")
    data.add_argument("--short-videos", choices=("skip", "pad"), help="default: skip")
    data.add_argument("--resize", choices=("crop", "stretch"), help="default: crop")
    model = p.add_argument_group("model")
    model.add_argument("--preset", help="model preset: tiny, small (default) or paper")
    model.add_argument("--init", help="start from this checkpoint (folder or repo id)")
    model.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override an APVConfig field, e.g. --set kl_scale=0.2 (repeatable)",
    )
    model.add_argument("--batch-size", type=int, help="global batch (clips per step)")
    model.add_argument("--seq-len", type=int, help="frames per clip")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, help="gradient steps (paper: 600000)")
    train.add_argument("--seed", type=int, help="seeds initialisation, data and latents")
    train.add_argument("--precision", choices=PRECISIONS, help="default: auto")
    train.add_argument("--compile", action="store_true", help="torch.compile the loss")
    train.add_argument("--log-every", type=int, help="steps between log lines (default 100)")
    train.add_argument("--eval-every", type=int, help="steps between eval videos (default 5000)")
    train.add_argument("--eval-clips", type=int, help="clips in the eval video (default 4)")
    train.add_argument("--eval-context", type=int, help="context frames (default 5)")
    train.add_argument("--checkpoint-every", type=int, help="default 5000")
    train.add_argument("--keep-checkpoints", type=int, help="newest to keep, 0: all (default 3)")
    out = p.add_argument_group("output")
    out.add_argument("--push-to-hub", metavar="REPO_ID", help="push the final model there")
    out.add_argument(
        "--card-notes", metavar="FILE", help="markdown to include in the model card (model_cards/)"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument(
        "--debug-dump",
        metavar="DIR",
        help="write per-process parameter digests and clip ids there (for tests and debugging)",
    )
    return p


# Command-line names of PretrainConfig fields that are not spelled like the field.
_CLI_ONLY = ("out", "resume", "config", "preset", "set", "batch_size", "seq_len", "no_progress")


def config_from_args(args: argparse.Namespace) -> tuple[PretrainConfig, Path, bool]:
    """Parsed arguments -> (config, run folder, resume?)."""
    given = {k: v for k, v in vars(args).items() if k not in (*_CLI_ONLY, "debug_dump")}
    overrides = parse_overrides(getattr(args, "set", []))
    for name in ("batch_size", "seq_len"):
        if name in args:
            overrides[name] = getattr(args, name)
    if "resume" in args:
        out = Path(args.resume)
        fixed = sorted(set(given) - set(RESUMABLE_FIELDS))
        fixed += [k for k in ("out", "config", "preset") if k in args] + sorted(overrides)
        if fixed:
            raise ConfigError(
                f"--resume continues a run as configured; it cannot change {', '.join(fixed)} "
                f"(only {', '.join(RESUMABLE_FIELDS)})"
            )
        config = PretrainConfig.load(out / RUN_CONFIG)
        return dataclasses.replace(config, **given), out, True
    if "out" not in args:
        raise ConfigError("--out is required for a new run (or --resume RUN to continue one)")
    if "config" in args:
        if "preset" in args or "init" in args:
            raise ConfigError("--config fixes the model; it excludes --preset and --init")
        base = PretrainConfig.load(args.config)
        model = APVConfig.from_dict({**base.model.to_dict(), **overrides})
        return dataclasses.replace(base, model=model, **given), Path(args.out), False
    if "data" not in args:
        raise ConfigError("--data is required: corpus folders, Hub dataset ids, or 'sample'")
    model = model_config(getattr(args, "preset", None), getattr(args, "init", None), overrides)
    return PretrainConfig(model=model, **given), Path(args.out), False


def command_line(argv: Sequence[str] | None) -> str:
    """The command as a person would type it again, for the model card."""
    if argv is not None:
        return shlex.join(["apv-pretrain", *argv])
    script = Path(sys.argv[0]).name
    prefix = ["python", script] if script.endswith(".py") else [script]
    return shlex.join([*prefix, *sys.argv[1:]])


def print_summary(result: PretrainResult) -> None:
    rate = (result.steps / result.seconds) if result.seconds else float("nan")
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    lines = [
        f"pre-training finished: {result.steps} steps, this session {result.seconds:.0f} s "
        f"({rate:.2f} steps/s)",
        f"  final (measured): {losses}",
        f"  checkpoint:  {result.checkpoint}",
        f"  model+card:  {result.model_dir} (README.md is the model card)",
    ]
    if result.video is not None:
        lines.append(f"  prediction:  {result.video} (+ {result.video.with_suffix('.gif').name})")
    lines.append(f"  TensorBoard: tensorboard --logdir {result.out / 'logs'}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """``apv-pretrain`` / ``python pretrain.py``: see ``--help``."""
    args = build_parser().parse_args(argv)
    try:
        config, out, resume = config_from_args(args)
        result = pretrain(
            config,
            out,
            resume=resume,
            command=command_line(argv),
            progress="no_progress" not in args,
            debug_dump=getattr(args, "debug_dump", None),
        )
    except (ConfigError, FileExistsError, FileNotFoundError, NonFiniteLossError) as e:
        sys.exit(f"apv-pretrain: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(result)


__all__ = [
    "NonFiniteLossError",
    "PretrainConfig",
    "PretrainResult",
    "Pretrainer",
    "main",
    "model_config",
    "parse_overrides",
    "pretrain",
]
