"""The configs of the trainers: `PretrainConfig`, `FinetuneConfig` and `VIPERTrainConfig`, on
`RunConfig` (the two that read video corpora through `CorpusRunConfig`).

Each is saved as ``run_config.json`` in its run folder; every field is reachable from the
command line with ``--set KEY=VALUE`` (dotted keys for sections: ``model.lr``,
``agent.world_model.free_nats``) and the common ones have flags (`apv_hub.training.commands`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from apv_hub.compilation import COMPILE_MODES
from apv_hub.config import VARIANTS, AgentConfig, APVConfig
from apv_hub.config_base import ConfigError, merge, option
from apv_hub.training.run import RunConfig
from apv_hub.viper.config import VIPERConfig

SAMPLE = "sample"
# The paper's names for some variants of `apv_hub.config.VARIANTS`.
VARIANT_ALIASES = {
    "naive_ft": "naive_finetune",
    "apv_no_pretrain": "apv_scratch",
    "apv_encoder_decoder": "encoder_decoder",
}


def canonical_variant(name: str) -> str:
    """``"naive-ft" -> "naive_finetune"``; names every known variant when ``name`` is not one."""
    key = name.strip().lower().replace("-", "_")
    key = VARIANT_ALIASES.get(key, key)
    if key not in VARIANTS:
        known = sorted({*VARIANTS, *VARIANT_ALIASES})
        raise ConfigError(f"unknown variant {name!r}; choose one of {known}")
    return key


class CorpusRunConfig(RunConfig):
    """The fields of a run that trains on video corpora (pre-training, VIPER)."""

    data: list[str] = option(
        factory=list, help="corpora: folders, Hub dataset repo ids, or 'sample' (shipped)"
    )
    weights: list[float] | None = option(None, "mixture weight of each corpus (None: per video)")
    num_workers: int = option(
        2, "clip-decoding worker processes per training process", resumable=True
    )
    short_videos: str = option("skip", "videos shorter than a clip: skip or pad")
    resize: str = option("crop", "frames to the model's size: crop (keeps aspect) or stretch")

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise ConfigError("data: name at least one corpus (a folder, a Hub repo id, 'sample')")
        if self.weights is not None:
            if len(self.weights) != len(self.data):
                raise ConfigError(
                    f"weights: {len(self.weights)} weight(s) for {len(self.data)} corpora"
                )
            if min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ConfigError(f"weights must be non-negative, not all 0: {self.weights}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must not be negative, got {self.num_workers}")
        if self.short_videos not in ("skip", "pad") or self.resize not in ("crop", "stretch"):
            raise ConfigError(
                f"short_videos takes skip or pad, resize crop or stretch; got "
                f"{self.short_videos!r}, {self.resize!r}"
            )

    def corpora(self) -> list[str]:
        """The corpora to load: ``sample`` resolved to the shipped sample corpus's folder."""
        return [resolve_corpus(d) for d in self.data]

    def describe_data(self) -> list[str]:
        """Corpus names for the model card, with mixture weights."""
        names = [
            "apv-hub sample corpus (Meta-world scripted policies)" if d == SAMPLE else d
            for d in self.data
        ]
        if self.weights is None:
            return names
        total = sum(self.weights)
        return [f"{n} (weight {w / total:.3g})" for n, w in zip(names, self.weights, strict=True)]


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")


class PretrainConfig(CorpusRunConfig):
    """Everything a pre-training run is built from.

    The model's APVConfig holds the architecture, the loss and optimiser settings and the batch
    shape (``batch_size`` clips of ``seq_len`` frames over all processes; REFERENCE section 2:
    16 x 25). Steps are gradient steps.
    """

    model: APVConfig = option(factory=lambda: APVConfig.preset("small"), help="the video model")
    init: str | None = option(
        None, "checkpoint (folder or repo id) whose weights the run starts from"
    )
    init_revision: str | None = option(None, "Hub revision (branch, tag, commit) of init")
    stride: int = option(1, "clips take every stride-th frame")
    steps: int = option(600_000, "gradient steps (paper: 600K)", resumable=True)
    eval_every: int = option(5000, "steps between open-loop prediction videos", resumable=True)
    eval_clips: int = option(4, "clips in the prediction video", resumable=True)
    eval_context: int = option(5, "context frames the model sees before predicting", resumable=True)
    compile: bool = option(False, "torch.compile the loss computation (static shapes)")
    compile_mode: str = option(
        "default", "torch.compile mode: default, reduce-overhead (CUDA graphs) or max-autotune"
    )
    clip_cache: str | None = option(
        None,
        "folder of a decoded uint8 clip cache (built there on first use, one shard per process, "
        "rebuilt when the corpora or clip settings change): no video decoding during training",
        resumable=True,
    )

    LEGACY: ClassVar[dict[str, Any]] = {
        **RunConfig.LEGACY,
        "init_revision": None,
        "compile_mode": "default",
        "clip_cache": None,
    }

    def validate(self) -> None:
        super().validate()
        check_compile_mode(self.compile_mode)
        for name in ("stride", "steps", "eval_every", "eval_clips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.model.seq_len < 2:
            raise ConfigError(f"model.seq_len must be at least 2, got {self.model.seq_len}")
        if not 0 < self.eval_context < self.model.seq_len:
            raise ConfigError(
                f"eval_context must lie in [1, seq_len - 1] = [1, {self.model.seq_len - 1}], "
                f"got {self.eval_context}"
            )


CLASS_MODES = ("none", "task", "corpus")


class VIPERTrainConfig(CorpusRunConfig):
    """Everything a VIPER reward-model run is built from: the tokenizer phase, then the prior.

    Steps count from 0 over both phases: ``tokenizer_steps`` steps of the tokenizer (a batch is
    ``model.tokenizer.batch_size`` frames from clips of ``tokenizer_clip_frames`` frames), then
    ``prior_steps`` steps of the prior (a batch is ``model.prior.batch_size`` windows of
    ``model.prior.frames`` frames, ``model.prior.frame_skip`` frames apart, tokenized by the
    trained tokenizer). Batches are global (split over processes).

    Task classes (``classes``): ``task`` gives one class per distinct ``task`` value of the
    videos, ``corpus`` one class per corpus (named by ``corpus_classes`` or the ``data`` entry),
    ``none`` an unconditional prior. The trainer writes the classes it finds into
    ``model.prior.num_classes`` and ``model.class_names``.
    """

    model: VIPERConfig = option(
        factory=lambda: VIPERConfig.preset("dmc"), help="the tokenizer, prior and scoring"
    )
    classes: str = option("none", f"task conditioning of the prior: one of {CLASS_MODES}")
    corpus_classes: dict[str, str] = option(
        factory=dict, help="classes=corpus: class name of a data entry (default: the entry)"
    )
    tokenizer_steps: int = option(100_000, "gradient steps of the tokenizer phase")
    prior_steps: int = option(
        100_000, "gradient steps of the prior phase (after the tokenizer's)", resumable=True
    )
    tokenizer_clip_frames: int = option(
        8, "frames per clip in the tokenizer phase (neighbouring frames decode together)"
    )
    tokenizer_stride: int = option(4, "tokenizer clips take every stride-th frame")
    kmeans_frames: int = option(256, "frames whose encoder outputs initialise the codebook")
    grad_clip: float = option(100.0, "gradient-norm clipping of both phases")
    eval_every: int = option(
        5000, "steps between reconstruction / prediction videos", resumable=True
    )
    eval_clips: int = option(4, "clips in each video", resumable=True)
    eval_context: int | None = option(
        None,
        "context frames the prior sees before sampling (None: half its window)",
        resumable=True,
    )
    stats_videos: int = option(
        32,
        "videos per class (all of a class with 0) scored whole for the reward statistics",
        resumable=True,
    )

    def validate(self) -> None:
        super().validate()
        if self.classes not in CLASS_MODES:
            raise ConfigError(f"classes must be one of {CLASS_MODES}, got {self.classes!r}")
        unknown = sorted(set(self.corpus_classes) - set(self.data))
        if unknown:
            raise ConfigError(f"corpus_classes names corpora not in data: {unknown}")
        for name in ("tokenizer_steps", "tokenizer_clip_frames", "tokenizer_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prior_steps", "stats_videos"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("eval_every", "eval_clips", "grad_clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        batch = self.model.tokenizer.batch_size
        if batch % self.tokenizer_clip_frames:
            raise ConfigError(
                f"model.tokenizer.batch_size {batch} is not a multiple of tokenizer_clip_frames "
                f"{self.tokenizer_clip_frames}"
            )
        tokens = self.kmeans_frames * self.model.tokenizer.tokens_per_frame
        if tokens < self.model.tokenizer.codebook_size:
            raise ConfigError(
                f"kmeans_frames {self.kmeans_frames} give {tokens} encoder outputs, fewer than "
                f"model.tokenizer.codebook_size {self.model.tokenizer.codebook_size}"
            )
        frames = self.model.prior.frames
        if self.eval_context is None:
            self.eval_context = max(frames // 2, 1)
        if not 0 < self.eval_context < frames:
            raise ConfigError(
                f"eval_context must lie in [1, model.prior.frames - 1] = [1, {frames - 1}], "
                f"got {self.eval_context}"
            )

    @property
    def total_steps(self) -> int:
        return self.tokenizer_steps + self.prior_steps


def resolve_corpus(name: str) -> str:
    """``sample`` -> the shipped sample corpus's folder; anything else is returned as it is."""
    if name != SAMPLE:
        return name
    from apv_hub.data import sample_corpus_path

    path = sample_corpus_path()
    if not (path / "data").is_dir():
        raise ConfigError(f"the sample corpus is missing from this install ({path})")
    return str(path)


class FinetuneConfig(RunConfig):
    """Everything a fine-tuning run is made of.

    Units: ``total_env_steps``, ``eval_every``, ``log_every`` and ``checkpoint_every`` count
    environment steps (action repeats included, the paper's x axis); ``prefill`` and
    ``train_every`` count policy steps (one action each), as DreamerV2 does. Presets
    (`FinetuneConfig.preset`): ``metaworld`` and ``dmc`` reproduce REFERENCE section 2,
    ``small`` is the Meta-world recipe at CPU scale, ``tiny`` is for tests.
    """

    env: str = option("", "environment for apv_hub.envs.make, e.g. metaworld/drawer-open-v3")
    env_options: dict[str, Any] = option(
        factory=dict, help="environment options (episode_length, action_repeat, camera, ...)"
    )
    variant: str = option("apv", f"the agent: one of {', '.join(VARIANTS)} (or an alias)")
    pretrained: str | None = option(None, "pre-trained APVVideoModel: folder or Hub repo id")
    pretrained_revision: str | None = option(
        None, "Hub revision (branch, tag, commit) of pretrained"
    )
    preset_name: str = option("metaworld", "the preset this config started from (a record)")
    total_env_steps: int = option(256_000, "environment steps to train for", resumable=True)
    prefill: int = option(5000, "policy steps of uniformly random actions before training")
    pretrain_updates: int = option(100, "updates done at once when prefill ends")
    train_every: int = option(5, "policy steps between trainings ...")
    train_steps: int = option(1, "... of this many updates")
    num_envs: int = option(1, "training environments per process")
    replay_capacity: int = option(1_000_000, "replay steps over all processes")
    eval_every: int = option(10_000, "environment steps between evaluations", resumable=True)
    eval_from_prefill: bool = option(
        True,
        "evaluate when prefill ends and every eval_every env steps after it, as the release "
        "does (DMC: 2K, 22K, ..., Meta-world: 5K, 15K, ...); false: at multiples of eval_every",
        resumable=True,
    )
    eval_episodes: int = option(10, "episodes per evaluation", resumable=True)
    eval_envs: int = option(1, "evaluation environments per process", resumable=True)
    video: bool = option(True, "write a video of each evaluation", resumable=True)
    video_fps: int = option(20, "frame rate of the evaluation videos", resumable=True)
    log_every: int = option(1000, "environment steps between log rows", resumable=True)
    checkpoint_every: int = option(10_000, "environment steps between checkpoints", resumable=True)
    keep_checkpoints: int = option(2, "newest checkpoints kept (0: all)", resumable=True)
    max_nonfinite_steps: int = option(
        10,
        "consecutive updates with non-finite gradients (skipped) before the run stops",
        resumable=True,
    )
    step_timeout: float = option(
        120.0, "seconds before a silent environment worker is replaced", resumable=True
    )
    agent: AgentConfig = option(
        factory=lambda: AgentConfig.preset("metaworld"), help="the agent's sections"
    )
    reward_model: str | None = option(
        None, "variant viper: the VIPERRewardModel (folder or Hub repo id) whose rewards train it"
    )
    reward_class: str | None = option(
        None, "variant viper: the reward model's task class (default: the environment's task)"
    )
    relabel_segment: int = option(
        64, "variant viper: steps per environment scored in one reward-model call"
    )
    compile: bool = option(False, "torch.compile the update's loss computations (static shapes)")
    compile_mode: str = option(
        "default", "torch.compile mode: default, reduce-overhead (CUDA graphs) or max-autotune"
    )

    # Runs saved before a field existed keep what they did then.
    LEGACY: ClassVar[dict[str, Any]] = {
        **RunConfig.LEGACY,
        "pretrained_revision": None,
        "eval_from_prefill": False,
        "compile": False,
        "compile_mode": "default",
    }
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # REFERENCE section 2, Meta-world: 256K steps, prefill 5000, 100 pretrain updates, 10
        # eval episodes (success rate).
        "metaworld": dict(
            total_env_steps=256_000,
            prefill=5000,
            pretrain_updates=100,
            eval_every=10_000,
            eval_episodes=10,
            checkpoint_every=10_000,
        ),
        # REFERENCE sections 2 and 2b, DMC: the release's `steps: 502000` counts policy steps,
        # 1.004M env steps with action repeat 2; prefill 1000 policy steps; evaluation every
        # 10K policy steps from the end of prefill (2K, 22K, ..., env steps); one eval episode.
        "dmc": dict(
            total_env_steps=1_004_000,
            prefill=1000,
            pretrain_updates=100,
            eval_every=20_000,
            eval_episodes=1,
            checkpoint_every=20_000,
        ),
        # The Meta-world recipe on the `small` agent: hours on a 2-core CPU; shorten with
        # --steps for a look.
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

    def validate(self) -> None:
        super().validate()
        check_compile_mode(self.compile_mode)
        self.variant = canonical_variant(self.variant)
        for name in (
            "total_env_steps", "train_every", "train_steps", "num_envs", "replay_capacity",
            "eval_every", "eval_episodes", "eval_envs", "video_fps", "step_timeout",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("prefill", "pretrain_updates"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.relabel_segment < 1:
            raise ConfigError(f"relabel_segment must be positive, got {self.relabel_segment}")
        if self.variant == "viper" and self.reward_model is None:
            raise ConfigError(
                "variant viper learns from a video reward model's rewards: pass --reward-model "
                "(a VIPERRewardModel folder or Hub repo id, e.g. from apv-viper-train)"
            )
        if self.variant != "viper" and (self.reward_model or self.reward_class):
            raise ConfigError(
                f"reward_model / reward_class replace the task reward of variant viper only; "
                f"variant {self.variant} learns from the task reward"
            )

    @property
    def first_eval(self) -> int:
        """Env steps of the first periodic evaluation: the end of prefill (``eval_from_prefill``,
        the release's schedule) or ``eval_every``; later ones follow every ``eval_every``."""
        return self.prefill * self.action_repeat if self.eval_from_prefill else self.eval_every

    @property
    def action_repeat(self) -> int:
        """Environment steps per policy step."""
        from apv_hub.envs import default_options

        return int({**default_options(self.env), **self.env_options}["action_repeat"])

    @classmethod
    def preset(cls, name: str, variant: str = "apv", **overrides: Any) -> FinetuneConfig:
        """Preset ``name`` (``metaworld``, ``dmc``, ``small``, ``tiny``) for ``variant``, with
        top-level field overrides (``agent=`` a dict of agent overrides or an AgentConfig)."""
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        variant = canonical_variant(variant)
        agent = overrides.pop("agent", {})
        if not isinstance(agent, AgentConfig):
            agent = AgentConfig.preset(name, variant, **agent)
        data = merge(cls.PRESETS[name], {"preset_name": name, "variant": variant, **overrides})
        return cls.from_dict({**data, "agent": agent})


def default_preset(env: str) -> str:
    """The paper's preset of an environment family: metaworld for metaworld/, dmc otherwise."""
    return "metaworld" if env.startswith("metaworld/") else "dmc"
