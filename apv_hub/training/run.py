"""The run layer every trainer uses: one run folder, one resume, one checkpoint format.

A trainer builds a `Run` for its config and output folder and keeps only its loop; the run owns
the rest:

- the accelerator and precision (`make_accelerator`), processes and collectives;
- the run folder, its lock (a second writer is refused; a killed writer's lock is released by the
  operating system) and its vocabulary (`RunPaths`)::

      run_config.json          the run's config (``--resume RUN`` continues with it)
      checkpoints/ckpt-<step>/ atomic checkpoints: what the trainer writes (model/, optimisers,
                               replay, ...), rank<r>.safetensors/json (RNG and per-process
                               state), state.json (counters, curves, commands) written last
      logs/                    TensorBoard
      metrics.csv, .json       the training log, one row per log interval
      eval.csv, .json          the evaluation curve, one row per evaluation
      videos/                  evaluation videos
      model/                   the final model (save_pretrained folder with its card)
      summary.json             what the finished run produced

- resume (`resume_config`: only schedule and output fields may change; `Run.restore`: the newest
  checkpoint that loads, falling back to older ones when newer are damaged, and saying so);
- RNG state per process (torch, CUDA and the trainer's numpy generators) in every checkpoint;
- the non-finite policy (`NonFiniteGuard`: non-finite losses and gradient norms skip the step,
  too many in a row stop the run) and divergence (`Run.watch`: huge or non-finite weights,
  checked at every log row and before every checkpoint, stop the run with the step and the last
  checkpoint; no checkpoint is ever written from diverged weights);
- recoveries (`Run.recover`: a damaged checkpoint skipped on resume, a replaced environment
  worker, a skipped corrupt video), printed or logged when they happen and listed in
  ``summary.json``;
- metric windows reduced over steps and processes only at log time (`MetricWindow`), the
  trackers (`apv_hub.training.logging.RunLogger`), the progress bar, the recorded command lines,
  the Hub push.

Every process of a multi-process run builds the Run; only the main one writes shared files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from apv_hub.cli import command_line
from apv_hub.config_base import Config, ConfigError, option
from apv_hub.errors import ApvHubError
from apv_hub.hub import PushError
from apv_hub.io import json_ready, write_json
from apv_hub.seeding import load_rng_state, save_rng_state
from apv_hub.training.checkpoint import (
    begin_checkpoint,
    checkpoint_path,
    commit_checkpoint,
    list_checkpoints,
)
from apv_hub.training.logging import (
    TENSORBOARD,
    CurveWriter,
    RunLogger,
    check_tracker_name,
    tracker_class,
)
from apv_hub.weights import CheckpointError

PRECISIONS = ("auto", "fp32", "bf16")
STATE_FILE = "state.json"
# Test seam: a process whose environment sets CRASH_ENV to a step number exits (os._exit, no
# clean-up) after the trainer's files of that step's checkpoint are written and before the run
# state is, as a killed process would.
CRASH_ENV = "APV_HUB_CRASH_IN_CHECKPOINT"
CRASH_EXIT_CODE = 70


class RunExistsError(ApvHubError, FileExistsError):
    """The output folder already holds a run (continue it with --resume)."""


class RunLockedError(ApvHubError):
    """Another process is writing the run folder."""


class DivergenceError(ApvHubError, FloatingPointError):
    """A run stopped because training diverged: the message names the step and the last
    checkpoint (non-finite steps in a row, huge or non-finite weights)."""


def divergence_advice(checkpoint: Path | None) -> str:
    return (
        f"training stopped; the last checkpoint is {checkpoint or 'none yet'}. Lower the "
        "learning rate (--set ...lr=...), check the data, or train in fp32 (--precision fp32)."
    )


class RunConfig(Config):
    """The fields every run has, whatever it trains."""

    seed: int = option(0, "seeds initialisation, data, exploration and evaluation")
    precision: str = option(
        "auto", "auto (bf16 on GPUs that support it, else fp32), fp32 or bf16 (autocast)"
    )
    log_every: int = option(100, "steps between log rows", resumable=True)
    checkpoint_every: int = option(5000, "steps between checkpoints", resumable=True)
    keep_checkpoints: int = option(3, "newest checkpoints kept (0: all)", resumable=True)
    max_nonfinite_steps: int = option(
        1,
        "consecutive steps with a non-finite loss or gradient (each skipped) before the run stops",
        resumable=True,
    )
    divergence_limit: float = option(
        1e4,
        "largest weight magnitude of a healthy model: a larger or non-finite weight (checked at "
        "every log row and before every checkpoint) stops the run as diverged",
        resumable=True,
    )
    log_with: list[str] = option(
        factory=lambda: [TENSORBOARD],
        help="trackers the logs go to: Accelerate's (tensorboard, wandb, mlflow, ...; each "
        "installed separately) or module:Class of an accelerate GeneralTracker subclass",
        resumable=True,
    )
    push_to_hub: str | None = option(
        None, "Hub repo id the final model is pushed to", resumable=True
    )
    private: bool = option(False, "create that Hub repo as private", resumable=True)
    hub_revision: str | None = option(
        None,
        "branch of the push_to_hub repo to push to (created from main when missing; default main)",
        resumable=True,
    )
    card_notes: str | None = option(
        None, "markdown file whose text the model card includes (model_cards/)", resumable=True
    )

    # Run configs saved before these fields existed.
    LEGACY: ClassVar[dict[str, Any]] = {
        "divergence_limit": 1e4,
        "log_with": [TENSORBOARD],
        "hub_revision": None,
    }

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("log_every", "checkpoint_every", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"keep_checkpoints must not be negative, got {self.keep_checkpoints}")
        if self.divergence_limit <= 0:
            raise ConfigError(f"divergence_limit must be positive, got {self.divergence_limit}")
        for name in self.log_with:
            check_tracker_name(name)
        if self.push_to_hub is not None:
            from huggingface_hub.errors import HFValidationError
            from huggingface_hub.utils import validate_repo_id

            try:
                validate_repo_id(self.push_to_hub)
            except HFValidationError as e:
                raise ConfigError(f"push_to_hub: {e}") from None
        if self.card_notes is not None and not Path(self.card_notes).is_file():
            raise ConfigError(f"card_notes: no file at {self.card_notes}")


@dataclass
class RunResult:
    """What a finished training run produced (what the trainers return)."""

    out: Path
    steps: int
    checkpoint: Path | None
    model_dir: Path
    video: Path | None
    metrics: dict[str, float]
    seconds: float

    def summary(self, title: str) -> str:
        """The lines a command prints at the end of a run."""
        rate = self.steps / self.seconds if self.seconds else float("nan")
        measured = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items())
        lines = [
            f"{title}: {self.steps} steps, this session {self.seconds:.0f} s ({rate:.2f} steps/s)",
            f"  final (measured): {measured}",
            f"  checkpoint:  {self.checkpoint}",
            f"  model+card:  {self.model_dir} (README.md is the model card)",
        ]
        if self.video is not None:
            lines.append(f"  video:       {self.video} (+ {self.video.with_suffix('.gif').name})")
        lines.append(f"  TensorBoard: tensorboard --logdir {self.out / 'logs'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes (see the module doc)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "run_config.json"

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

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def make_accelerator(precision: str = "auto") -> Any:
    """An ``accelerate.Accelerator``: the GPU when there is one (bf16 autocast for ``auto`` where
    supported), else the CPU in fp32 (``bf16`` is honoured there too, slowly); several processes
    when launched by torchrun or accelerate launch."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16: this GPU does not support bfloat16; use fp32")
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if precision == "bf16" else "no")


def peak_memory_mb() -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_batch(accelerator: Any, batch_size: int, key: str) -> int:
    """This process's share of a global batch, which must split evenly over the processes."""
    world = accelerator.num_processes
    if batch_size % world:
        raise ConfigError(f"{key} {batch_size} does not split evenly over {world} processes")
    return batch_size // world


def prepare_optimizers(accelerator: Any, optimizers: Mapping[str, Any]) -> dict[str, Any]:
    """``accelerator.prepare`` on named optimisers (mixed precision, gradient scaling)."""
    prepared = accelerator.prepare(*optimizers.values()) if optimizers else ()
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    return dict(zip(optimizers, prepared, strict=True))


def resume_config(saved: Config, assignments: Mapping[str, Any], run: Path) -> Config:
    """The saved config of ``run`` with command-line ``assignments`` applied, refusing any that
    change a field that is not resumable (schedule and outputs may change, the learning not)."""
    config = saved.override(assignments, from_text=True)
    before, after = saved.flat(), config.flat()
    allowed = saved.resumable_keys()
    changed = sorted(k for k in before if before[k] != after[k] and k not in allowed)
    if changed:
        raise ConfigError(
            f"--resume {run} continues the run as configured; it cannot change "
            f"{', '.join(changed)} (only {', '.join(sorted(allowed))})"
        )
    return config


class RunLock:
    """An exclusive lock on a run folder held while a process writes it.

    ``flock`` locks die with their process, so the lock of a killed run never blocks its
    resume; the file names the holder for the message a second writer gets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Any = None

    def acquire(self) -> None:
        self.file = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise RunLockedError(
                f"{self.path.parent} is being written by {holder}; wait for that run to finish "
                "or stop it (a killed run's lock is released), or choose another --out"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


class MetricWindow:
    """Per-step metrics (floats or 0-dim tensors, kept on their device: no host sync per step)
    since the last log row; `Run.reduce` averages the finite ones over steps and processes."""

    def __init__(self) -> None:
        self.values: dict[str, list[float | Tensor]] = {}
        self.steps = 0
        self.start = time.perf_counter()
        self.data_seconds = 0.0

    def add(self, metrics: Mapping[str, float | Tensor]) -> None:
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(value)
        self.steps += 1

    def local_sums(self) -> tuple[list[str], Tensor]:
        """(keys, float64 [K, 2] on the CPU: sum of the finite values, how many were finite).

        The sums are formed where the values live and read back in one transfer."""
        keys = sorted(self.values)
        if not keys:
            return keys, torch.zeros(0, 2, dtype=torch.float64)
        device = next(
            (v.device for vs in self.values.values() for v in vs if isinstance(v, Tensor)),
            torch.device("cpu"),
        )
        rows = []
        for key in keys:
            values = torch.stack(
                [torch.as_tensor(v).detach().to(device, torch.float64) for v in self.values[key]]
            )
            finite = torch.isfinite(values)
            rows.append(torch.stack([values.where(finite, 0.0).sum(), finite.sum().double()]))
        return keys, torch.stack(rows).cpu()


class NonFiniteGuard:
    """Counts consecutive non-finite steps (each one skipped by the optimiser step) and stops the
    run when there are more than ``limit`` in a row, naming the step and the last checkpoint.

    A trainer either decides per step on the host (`observe`) or, to keep the device busy,
    `defer`s each step's device-side verdict and `flush`es at its log rows, checkpoints and end:
    one read for all the steps since the last flush, then the same decisions in step order (a
    run that must stop stops at the flush, with the message of the step that tripped it; the
    skipped steps in between left the weights untouched).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.total = 0
        self.pending: list[tuple[Tensor, str, Mapping[str, Tensor | float]]] = []

    def observe(self, finite: bool, where: str, detail: str, checkpoint: Path | None) -> None:
        if finite:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        message = f"non-finite {where}: {detail}; the step was skipped"
        if self.consecutive >= self.limit:
            self.pending = []
            raise DivergenceError(
                f"{message}. {self.consecutive} non-finite step(s) in a row "
                f"(max_nonfinite_steps={self.limit}): {divergence_advice(checkpoint)}"
            )
        warnings.warn(message, stacklevel=3)

    def defer(self, finite: Tensor, where: str, metrics: Mapping[str, Tensor | float]) -> None:
        """Queue one step: ``finite`` a bool tensor [] (on the device), ``metrics`` its values
        (named in the message when non-finite)."""
        self.pending.append((finite.detach(), where, dict(metrics)))

    def flush(self, checkpoint: Path | None) -> None:
        """Decide every deferred step, in order (`observe`); one host read for all of them."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        verdicts = torch.stack([finite.reshape(()) for finite, _, _ in pending]).tolist()
        for finite, (_, where, metrics) in zip(verdicts, pending, strict=True):
            detail = ""
            if not finite:
                values = {k: float(v) for k, v in metrics.items()}
                bad = [f"{k}={v:.4g}" for k, v in values.items() if not math.isfinite(v)]
                detail = ", ".join(bad) or "no metric non-finite"
            self.observe(finite, where, detail, checkpoint)


class Run:
    """One run folder being trained (see the module doc).

    Args:
        config: the run's config (a `RunConfig`), saved as ``run_config.json``.
        out: the run folder.
        resume: continue the run in ``out`` (its config must be the one saved there, see
            `resume_config`); else ``out`` must not hold a run yet.
        command: the command line, recorded with every command that trained the run.
        accelerator: an ``accelerate.Accelerator`` (default: `make_accelerator`).
        progress: show a progress bar (main process).
        step_name: the name of the trainer's x axis in the curves (``step``, ``env_steps``).
    """

    def __init__(
        self,
        config: RunConfig,
        out: str | Path,
        *,
        resume: bool = False,
        command: str | None = None,
        accelerator: Any = None,
        progress: bool = True,
        step_name: str = "step",
    ) -> None:
        self.config, self.paths, self.progress = config, RunPaths(Path(out)), progress
        self.step_name = step_name
        self.accelerator = accelerator or make_accelerator(config.precision)
        acc = self.accelerator
        self.rank, self.world_size, self.is_main = (
            acc.process_index,
            acc.num_processes,
            acc.is_main_process,
        )
        self.commands = [command or command_line("apv-hub", None)]
        self.elapsed = 0.0
        self.checkpoint: Path | None = None
        self.logger: RunLogger | None = None
        self.metrics = CurveWriter(self.paths.root, stem="metrics") if self.is_main else None
        self.evals = CurveWriter(self.paths.root, stem="eval") if self.is_main else None
        self.lock = RunLock(self.paths.lock)
        self.session_start = time.perf_counter()
        self.watched: list[nn.Module] = []
        # {kind: [item, ...]}: what went wrong and was recovered from (summary.json).
        self.recoveries: dict[str, list[str]] = {}
        if self.is_main:
            # An unknown or missing tracker is refused before the folder is created.
            for name in config.log_with:
                tracker_class(name)
        self._open_folder(resume)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _open_folder(self, resume: bool) -> None:
        """Lock the folder (main process), then check it holds a run exactly when resuming;
        a folder this call created is removed again when the check fails."""
        paths = self.paths
        created = False
        if self.is_main:
            created = not paths.root.exists()
            try:
                paths.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ApvHubError(f"cannot create the run folder {paths.root}: {e}") from None
            self.lock.acquire()
        try:
            exists = paths.config.exists()
            if resume and not exists:
                raise ConfigError(f"--resume {paths.root}: no run there (no {paths.config.name})")
            if not resume and exists:
                raise RunExistsError(
                    f"{paths.root} already holds a run; continue it with --resume "
                    f"{paths.root} or choose another --out"
                )
        except ApvHubError:
            self.lock.release()
            if created:
                paths.lock.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    paths.root.rmdir()
            raise
        # Every process has looked before the main one writes.
        self.accelerator.wait_for_everyone()
        if self.is_main:
            # A resumed run's schedule changes (--steps ...) hold for later resumes too.
            self.config.save(paths.config)

    # Resume and checkpoints --------------------------------------------------------------------

    def restore(
        self,
        load: Callable[[Path, dict[str, Any]], None],
        generators: Mapping[str, np.random.Generator] | None = None,
    ) -> dict[str, Any] | None:
        """Load the newest checkpoint that loads with ``load(folder, trainer_state)`` and restore
        the random state (``generators`` too); a damaged checkpoint is reported and the previous
        one tried. Returns the trainer state saved with it, or None for a fresh run; opens the
        logs either way."""
        try:
            state = self._load_newest(load, generators)
        except ApvHubError:
            self.close()
            raise
        if self.is_main:
            curves = state["curves"] if state else {"metrics": [], "eval": []}
            self.metrics.reset(curves["metrics"])
            self.evals.reset(curves["eval"])
            self.logger = RunLogger(
                self.paths.logs,
                self.config.log_with,
                run_name=self.paths.root.name,
                purge_step=state["step"] if state else None,
                config=self.config.flat(),
            )
            self.logger.text(
                "config", f"```json\n{json.dumps(self.config.to_dict(), indent=2)}\n```"
            )
            self.logger.text("command", self.commands[-1], state["step"] if state else 0)
        return state["trainer"] if state else None

    def _load_newest(
        self,
        load: Callable[[Path, dict[str, Any]], None],
        generators: Mapping[str, np.random.Generator] | None,
    ) -> dict[str, Any] | None:
        """`restore`'s search: the saved run state of the newest checkpoint that loads."""
        state = None
        damaged = []
        for step, folder in reversed(list_checkpoints(self.paths.checkpoints)):
            try:
                saved = json.loads((folder / STATE_FILE).read_text())
                self._check_world_size(folder, saved)
                load(folder, saved["trainer"])
                load_rng_state(folder, self.rank, generators)
            except ConfigError:
                raise
            except (CheckpointError, OSError, ValueError, KeyError) as e:
                damaged.append(f"{folder.name}: {e}")
                self.warn(f"checkpoint {folder} cannot be loaded ({e}); trying the one before it")
                continue
            state, self.checkpoint = saved, folder
            self.commands = saved["commands"] + self.commands
            self.elapsed = saved["elapsed"]
            self.recoveries = {k: list(v) for k, v in saved.get("recoveries", {}).items()}
            self._print(f"resuming {self.paths.root} from step {step} ({folder.name})")
            break
        else:
            if list_checkpoints(self.paths.checkpoints):
                raise CheckpointError(
                    f"no checkpoint of {self.paths.root} can be loaded (see the warnings above)"
                )
        for item in damaged:
            self.recover("damaged_checkpoints", item)
        return state

    def _check_world_size(self, folder: Path, saved: dict[str, Any]) -> None:
        if saved["world_size"] != self.world_size:
            raise ConfigError(
                f"{folder} was written by a run of {saved['world_size']} process(es); resume it "
                f"with as many (data positions, replay and RNG streams are per process), not "
                f"{self.world_size}"
            )

    def save_checkpoint(
        self,
        step: int,
        write: Callable[[Path], None],
        trainer_state: dict[str, Any],
        generators: Mapping[str, np.random.Generator] | None = None,
    ) -> Path:
        """Write checkpoint ``step`` atomically; every process calls this.

        The watched modules are checked first (`check_divergence`): diverged weights stop the
        run instead of being saved. ``write(folder)`` writes this process's files (the main
        process the model and optimisers, every process its own per-process files); the run
        adds each process's RNG state (torch, CUDA, ``generators``) and, last, ``state.json``
        with ``trainer_state``."""
        self.check_divergence(step)
        if self.is_main:
            begin_checkpoint(self.paths.checkpoints, step)
        self.accelerator.wait_for_everyone()
        final = checkpoint_path(self.paths.checkpoints, step)
        tmp = final.with_name(f".{final.name}.tmp")
        write(tmp)
        save_rng_state(tmp, self.rank, generators or {})
        self.accelerator.wait_for_everyone()
        if os.environ.get(CRASH_ENV) == str(step):
            os._exit(CRASH_EXIT_CODE)
        if self.is_main:
            state = {
                "step": step,
                "world_size": self.world_size,
                "commands": self.commands,
                "elapsed": self.elapsed + self.session_seconds(),
                "curves": {"metrics": self.metrics.rows, "eval": self.evals.rows},
                "recoveries": self.recoveries,
                "trainer": trainer_state,
            }
            write_json(tmp / STATE_FILE, state)
            self.config.save(tmp / self.paths.config.name)
            commit_checkpoint(tmp, keep=self.config.keep_checkpoints or None)
        self.accelerator.wait_for_everyone()
        self.checkpoint = final
        return final

    def session_seconds(self) -> float:
        return time.perf_counter() - self.session_start

    # Divergence --------------------------------------------------------------------------------

    def watch(self, module: nn.Module) -> None:
        """Check ``module``'s weights for divergence at every log row, checkpoint and the end."""
        self.watched.append(module)

    def check_divergence(self, step: int) -> None:
        """Stop the run (`DivergenceError`) if a watched weight is non-finite or larger than
        ``divergence_limit``: one reduction on the device and one read by the host, so it is
        done per log row and checkpoint, not per step. Every process decides alike (the weights
        are the same everywhere)."""
        params = [p.detach() for m in self.watched for p in m.parameters() if p.numel()]
        if not params:
            return
        with torch.no_grad():
            peak = torch.stack([torch.linalg.vector_norm(p.float(), math.inf) for p in params])
            largest = float(peak.max())
        limit = self.config.divergence_limit
        if math.isfinite(largest) and largest <= limit:
            return
        detail = (
            f"a weight is {largest}"
            if not math.isfinite(largest)
            else f"the largest weight magnitude is {largest:.3g} (divergence_limit {limit:.3g})"
        )
        raise DivergenceError(
            f"training diverged at {self.step_name} {step}: {detail}; no checkpoint was written "
            f"from these weights; {divergence_advice(self.checkpoint)}"
        )

    # Records -----------------------------------------------------------------------------------

    def reduce(self, window: MetricWindow) -> dict[str, float]:
        """Means of the finite per-step values of ``window`` over steps and processes."""
        keys, sums = window.local_sums()
        if self.world_size > 1:
            sums = self.accelerator.reduce(sums.to(self.device), reduction="sum").cpu()
        return {
            k: float(s / n) if n else float("nan")
            for k, (s, n) in zip(keys, sums.tolist(), strict=True)
        }

    def log(self, step: int, row: Mapping[str, Any], curve: str = "metrics") -> None:
        """One row of the ``metrics`` (training log; every process calls it, and the watched
        weights are checked for divergence first) or ``eval`` curve (main process), also to the
        trackers (each numeric value under its key)."""
        if curve == "metrics":
            self.check_divergence(step)
        if not self.is_main:
            return
        row = json_ready(dict(row))
        (self.metrics if curve == "metrics" else self.evals).append({self.step_name: step, **row})
        numbers = {
            k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        self.logger.log(step, numbers, prefix="" if curve == "metrics" else curve)

    def log_video(self, tag: str, frames: np.ndarray, step: int, fps: int = 10) -> None:
        """Main process: uint8 frames [T, H, W, 3] to every tracker that shows videos."""
        if self.is_main:
            self.logger.video(tag, frames, step, fps=fps)

    def recover(self, kind: str, item: str, echo: bool = False) -> None:
        """Record a recovery of ``kind`` (``skipped_videos``, ``env_worker_restarts``, ...):
        listed in ``summary.json`` and saved with the checkpoints; ``echo`` also prints it
        (for recoveries nothing else reported)."""
        items = self.recoveries.setdefault(kind, [])
        if item not in items:
            items.append(item)
            if echo:
                self.warn(item)

    def warn(self, message: str) -> None:
        """Main process: one line on the console, also above a progress bar."""
        if self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"apv-hub: warning: {message}", file=sys.stderr)

    def progress_bar(self, total: int, initial: int, desc: str, unit: str = "step") -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            disable=not (self.is_main and self.progress),
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def _print(self, message: str) -> None:
        if self.is_main:
            print(f"apv-hub: {message}", flush=True)

    # Collectives (no-ops in one process) -------------------------------------------------------

    def all_sum(self, values: list[int]) -> list[int]:
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.long, device=self.device)
        return [int(v) for v in self.accelerator.reduce(tensor, reduction="sum")]

    def gather(self, items: list[Any]) -> list[Any]:
        if self.world_size == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def broadcast_module(self, module: nn.Module) -> None:
        """Start every process from the main process's weights and buffers."""
        if self.world_size > 1:
            for tensor in module.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    # The end -----------------------------------------------------------------------------------

    def finish(
        self,
        model: Any,
        summary: Mapping[str, Any],
        extra_files: Mapping[str, Path] | None = None,
    ) -> Path:
        """Save ``model`` to ``model/`` (save_pretrained, with its card), push it with the run's
        records (run config, training log, evaluation curve) and ``extra_files`` ({name in the
        repo: local file}) if ``push_to_hub`` is set, write ``summary.json`` with every process's
        recoveries (main process); every process: close the logs and the lock. (The weights were
        checked for divergence by the last checkpoint, which trainers take at the end.)"""
        recoveries: dict[str, list[str]] = {}
        for kind, item in self.gather(
            [(k, v) for k, items in self.recoveries.items() for v in items]
        ):
            if item not in recoveries.setdefault(kind, []):
                recoveries[kind].append(item)
        failed: PushError | None = None
        if self.is_main:
            model.save_pretrained(self.paths.model)
            record = {
                **summary,
                "model": str(self.paths.model),
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "seconds_this_session": self.session_seconds(),
                "commands": self.commands,
                "recoveries": {k: {"count": len(v), "items": v} for k, v in recoveries.items()},
            }
            if recoveries:
                counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in recoveries.items())
                self._print(f"recovered from: {counts} (listed in {self.paths.summary})")
            if self.config.push_to_hub:
                records = {
                    self.paths.config.name: self.paths.config,
                    **{p.name: p for p in (self.metrics.csv_path, self.evals.csv_path)},
                }
                try:
                    record["pushed_to"] = push_model(
                        model,
                        self.config.push_to_hub,
                        private=self.config.private,
                        revision=self.config.hub_revision,
                        extra_files={**records, **(extra_files or {})},
                    )
                except PushError as e:
                    record["push_error"] = str(e)
                    failed = PushError(
                        f"{e}; the model is saved in {self.paths.model}: push it with "
                        "from_pretrained(...).push_to_hub(...)"
                    )
            write_json(self.paths.summary, record)
        # A failed push ends the run like a finished one (records written, lock released).
        self.barrier()
        self.close()
        if failed is not None:
            raise failed
        return self.paths.model

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        self.lock.release()


def push_model(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> str:
    """Push a trained model with ``extra_files`` (``{name in the repo: local file}``) to the Hub
    repo ``repo_id`` in one commit (``model.push_to_hub``; a repo it creates is ``private`` if
    asked, ``revision`` is the branch); returns the commit URL. The one place trainers push."""
    return model.push_to_hub(
        repo_id,
        private=private or None,
        branch=revision,
        commit_message=f"Upload {type(model).__name__} trained with apv-hub",
        extra_files=extra_files,
    )
