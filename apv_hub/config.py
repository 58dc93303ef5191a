"""Configs of the models: the APV video model, and the agent (world model, actor-critic, bonus).

Every number of the released APV model and agent (REFERENCE section 2) has a field here, with
presets that reproduce the paper. All are strict `apv_hub.config_base.Config` dataclasses: the
same config is written to ``config.json`` next to every checkpoint and read back by
``from_pretrained``. The paper's baselines are `VARIANTS`: switch settings over one agent.
"""

from __future__ import annotations

from typing import Any, ClassVar

from apv_hub.config_base import Config, ConfigError, merge, option

__all__ = [
    "ACTIVATIONS",
    "AGENT_PRESETS",
    "VARIANTS",
    "APVConfig",
    "AgentConfig",
    "BehaviorConfig",
    "ConfigError",
    "IntrinsicConfig",
    "WorldModelConfig",
]

# Keys that a model's config.json holds beside the config fields: written by the library.
METADATA_KEYS = ("model_type", "apv_hub_version", "training")
ACTIVATIONS = ("elu", "relu", "silu", "tanh")
# Initialisation of freshly built models: the release's Keras defaults, or PyTorch's.
INITS = ("keras", "torch")
# What the action-conditional RSSM observes: the action-free features (Meta-world), or the encoder
# embedding concatenated with them (DMC).
AC_INPUTS = ("af_feat", "embed_af_feat")
# Which pre-trained parts APVWorldModel.from_video_model copies.
TRANSFERS = ("all", "encoder_decoder", "none")
ACTOR_GRADS = ("dynamics", "reinforce")
# The exploration bonus: APV's video-based one, or Plan2Explore's ensemble disagreement.
INTRINSIC_KINDS = ("video", "disagreement")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive(config: Config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def check_unit_interval(config: Config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")


class APVConfig(Config):
    """Hyper-parameters of the action-free latent video prediction model and its optimiser.

    Defaults are the released APV model (the ``paper`` preset): 64x64 RGB frames, conv encoder of
    depth 48, RSSM with 1024 deterministic units and 32 categorical latents of 32 classes.
    """

    image_size: int = option(64, "frames are [B, T, image_channels, image_size, image_size]")
    image_channels: int = option(3, "colour channels of a frame")
    cnn_depth: int = option(48, "encoder channels cnn_depth * 2**i (stride-2 'valid' convs)")
    encoder_kernels: tuple[int, ...] = option((4, 4, 4, 4), "kernel of each encoder conv")
    decoder_kernels: tuple[int, ...] = option(
        (5, 5, 6, 6), "kernel of each decoder transposed conv (a linear layer to 1x1 first)"
    )
    deter: int = option(1024, "RSSM deterministic (GRU) state size")
    hidden: int = option(1024, "RSSM hidden layer size")
    stoch: int = option(32, "RSSM categorical latents")
    classes: int = option(32, "classes of each categorical latent")
    act: str = option("elu", f"activation: one of {', '.join(ACTIVATIONS)}")
    gru_layer_norm: bool = option(True, "layer norm over the GRU's gates")
    layer_norm_eps: float = option(
        1e-3,
        "epsilon of the GRU's layer norm: 1e-3 as the release (Keras); apv-hub checkpoints "
        "without this field were trained with PyTorch's 1e-5",
    )
    gru_bias: bool = option(
        True,
        "a bias in the GRU's gate layer although layer norm follows it, as the release's Keras "
        "Dense has (layer norm does not cancel it); apv-hub checkpoints without this field had "
        "none (without layer norm the gate layer always has a bias)",
    )
    init: str = option(
        "keras",
        f"initialisation of a freshly built model: one of {', '.join(INITS)} (keras: the "
        "release's glorot-uniform weights and zero biases; torch: PyTorch's defaults, what "
        "apv-hub models without this field were built with)",
    )
    image_loss_scale: float = option(1.0, "weight of the image log-likelihood")
    kl_scale: float = option(0.1, "weight of the balanced KL(posterior || prior)")
    kl_balance: float = option(0.8, "share of the KL gradient that trains the prior")
    free_nats: float = option(0.0, "KL below this is not penalised")
    free_avg: bool = option(True, "apply free nats to the batch mean (else per step)")
    lr: float = option(3e-4, "Adam learning rate")
    adam_eps: float = option(1e-5, "Adam epsilon")
    weight_decay: float = option(1e-6, "L2 weight decay, added to the gradient")
    grad_clip: float = option(100.0, "gradient-norm clipping")
    batch_size: int = option(16, "clips per pre-training step, over all processes (paper: 16)")
    seq_len: int = option(25, "frames per clip (paper: 25 Meta-world/RLBench, 50 DMC)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Seconds on a CPU: for tests.
        "tiny": dict(
            cnn_depth=8, deter=64, hidden=64, stoch=16, classes=16, batch_size=8, seq_len=16
        ),
        # Minutes on a CPU: the README's main job and quick experiments.
        "small": dict(cnn_depth=16, deter=200, hidden=200, stoch=16, classes=16),
        # The released APV model (about 25.9M parameters).
        "paper": dict(),
        # The released model with the release's DMC pre-training settings (Triped-walk videos,
        # convert's dmc_vision_pretrain): KL scale 1, free nats 1, clips of 50 frames.
        "paper_dmc": dict(kl_scale=1.0, free_nats=1.0, seq_len=50),
    }
    LEGACY: ClassVar[dict[str, Any]] = {"layer_norm_eps": 1e-5, "gru_bias": False, "init": "torch"}

    def validate(self) -> None:
        check_choice("init", self.init, INITS)
        check_positive(self, "image_size", "cnn_depth", "deter", "hidden", "stoch", "classes")
        check_positive(self, "batch_size", "seq_len", "layer_norm_eps")
        check_unit_interval(self, "kl_balance")
        check_choice("act", self.act, ACTIVATIONS)
        for name in ("lr", "weight_decay", "free_nats", "image_loss_scale", "kl_scale"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")

    @property
    def stoch_dim(self) -> int:
        """Size of the flattened one-hot stochastic state."""
        return self.stoch * self.classes

    @property
    def feat_dim(self) -> int:
        """Size of the model state features: flattened stochastic state + deterministic state."""
        return self.stoch_dim + self.deter


class WorldModelConfig(Config):
    """The stacked action-conditional world model of fine-tuning and its optimiser.

    ``stacked=False`` is DreamerV2's world model: a single action-conditional RSSM reading the
    encoder embedding, with no action-free model. ``transfer`` says what ``from_video_model``
    copies from the pre-trained checkpoint. The image encoder/decoder architecture, the RSSM
    activation and GRU layer norm come from the video model's APVConfig.
    """

    stacked: bool = option(True, "action-conditional RSSM on top of the action-free one")
    ac_input: str = option("af_feat", f"what the action-conditional RSSM observes: {AC_INPUTS}")
    transfer: str = option("all", f"what is copied from the video model: {TRANSFERS}")
    deter: int | None = option(None, "action-conditional deter size (None: the video model's)")
    hidden: int | None = option(None, "action-conditional hidden size (None: the video model's)")
    stoch: int | None = option(None, "action-conditional latents (None: the video model's)")
    classes: int | None = option(None, "classes per latent (None: the video model's)")
    head_units: int = option(400, "units of the reward (and discount) head MLPs")
    head_layers: int = option(4, "hidden layers of the head MLPs")
    discount_head: bool = option(False, "predict episode continuation")
    image_loss_scale: float = option(1.0, "weight of the image NLL")
    reward_loss_scale: float = option(1.0, "weight of the reward NLL")
    discount_loss_scale: float = option(1.0, "weight of the continuation NLL")
    kl_scale: float = option(1.0, "weight of the action-conditional KL")
    af_kl_scale: float = option(0.0, "weight of the action-free KL (fine-tuning: 0)")
    kl_balance: float = option(0.8, "share of the KL gradient that trains the prior")
    free_nats: float = option(0.0, "KL below this is not penalised (DMC: 1)")
    free_avg: bool = option(True, "apply free nats to the batch mean")
    lr: float = option(3e-4, "Adam learning rate of the world model")
    adam_eps: float = option(1e-5, "Adam epsilon")
    weight_decay: float = option(1e-6, "L2 weight decay")
    grad_clip: float = option(100.0, "gradient-norm clipping")
    freeze_pretrained_updates: int = option(
        0, "updates during which the encoder and action-free RSSM are held (Meta-world: 100)"
    )

    def validate(self) -> None:
        check_choice("ac_input", self.ac_input, AC_INPUTS)
        check_choice("transfer", self.transfer, TRANSFERS)
        check_positive(self, "deter", "hidden", "stoch", "classes", "head_units", "lr")
        check_unit_interval(self, "kl_balance")
        if self.freeze_pretrained_updates < 0:
            raise ConfigError("freeze_pretrained_updates must not be negative")


class BehaviorConfig(Config):
    """DreamerV2's actor-critic, trained on imagined rollouts of the action-conditional RSSM."""

    horizon: int = option(15, "imagination horizon")
    discount: float = option(0.99, "discount factor")
    discount_lambda: float = option(0.95, "lambda of the TD(lambda) returns")
    actor_grad: str = option(
        "dynamics", "dynamics: back-propagate returns through the model; reinforce"
    )
    actor_entropy: float = option(1e-4, "entropy bonus of the actor")
    actor_min_std: float = option(0.1, "minimum standard deviation of the actor")
    actor_units: int = option(400, "actor MLP units")
    actor_layers: int = option(4, "actor MLP hidden layers")
    critic_units: int = option(400, "critic MLP units")
    critic_layers: int = option(4, "critic MLP hidden layers")
    act: str = option("elu", "activation of the actor and critic")
    slow_target: bool = option(True, "bootstrap the returns with a slow critic")
    slow_target_update: int = option(100, "updates between slow-critic refreshes")
    slow_target_fraction: float = option(1.0, "refresh mix (1: copy)")
    actor_lr: float = option(8e-5, "actor learning rate")
    critic_lr: float = option(8e-5, "critic learning rate")
    adam_eps: float = option(1e-5, "Adam epsilon")
    weight_decay: float = option(1e-6, "L2 weight decay")
    grad_clip: float = option(100.0, "gradient-norm clipping")

    def validate(self) -> None:
        check_choice("actor_grad", self.actor_grad, ACTOR_GRADS)
        check_choice("act", self.act, ACTIVATIONS)
        check_positive(
            self, "horizon", "actor_units", "critic_units", "slow_target_update", "actor_lr"
        )
        check_unit_interval(self, "discount", "discount_lambda", "slow_target_fraction")


class IntrinsicConfig(Config):
    """The exploration bonus: APV's video-based bonus (REFERENCE section 1.3), or Plan2Explore's
    disagreement (VIPER's exploration, REFERENCE section 5).

    ``kind="video"``: k-NN novelty of windowed action-free features, added to the reward head's
    target on replay (needs a stacked world model). ``kind="disagreement"``: an ensemble of
    one-step models predicts the next stochastic state from the features and the action; the
    standard deviation of their predictions, normalised, is added to the rewards of imagined
    rollouts (`apv_hub.intrinsic`).
    """

    enabled: bool = option(True, "use an exploration bonus")
    kind: str = option("video", f"which bonus: one of {INTRINSIC_KINDS}")
    beta: float = option(1.0, "bonus scale (Meta-world 1, DMC 0.1)")
    window: int = option(5, "sliding window over the action-free features")
    proj_dim: int = option(128, "size of the fixed random projection")
    proj_std: float | None = option(None, "std of the projection entries (None: 1 / proj_dim)")
    seed: int = option(0, "seed of the projection")
    queue_size: int = option(4096, "FIFO queue of projected vectors")
    k: int = option(16, "nearest neighbours averaged")
    norm_momentum: float = option(0.99, "momentum of the running mean of |bonus|")
    norm_eps: float = option(1e-8, "added to the running mean before dividing")
    norm_init: float = option(1.0, "initial running mean")
    ensemble: int = option(8, "disagreement: one-step models in the ensemble (VIPER: 8)")
    ensemble_units: int = option(400, "disagreement: units of each one-step model's MLP")
    ensemble_layers: int = option(4, "disagreement: hidden layers of each one-step model")
    ensemble_lr: float = option(3e-4, "disagreement: Adam learning rate of the ensemble")

    LEGACY: ClassVar[dict[str, Any]] = {
        "kind": "video",
        "ensemble": 8,
        "ensemble_units": 400,
        "ensemble_layers": 4,
        "ensemble_lr": 3e-4,
    }

    def validate(self) -> None:
        check_choice("kind", self.kind, INTRINSIC_KINDS)
        check_positive(self, "window", "proj_dim", "proj_std", "queue_size", "k")
        check_positive(self, "ensemble_units", "ensemble_layers", "ensemble_lr")
        check_unit_interval(self, "norm_momentum")
        if self.ensemble < 2:
            raise ConfigError(f"ensemble needs at least 2 models to disagree, got {self.ensemble}")


class AgentConfig(Config):
    """Everything an APVAgent is built from, by section, plus the replay batch shape.

    ``video`` describes the action-free model; when the agent is built from a pre-trained
    checkpoint, the checkpoint's own APVConfig replaces it.
    """

    video: APVConfig = option(factory=APVConfig, help="the action-free video model")
    world_model: WorldModelConfig = option(factory=WorldModelConfig, help="the world model")
    behavior: BehaviorConfig = option(factory=BehaviorConfig, help="the actor-critic")
    intrinsic: IntrinsicConfig = option(factory=IntrinsicConfig, help="the video-based bonus")
    batch_size: int = option(50, "replay sequences per update (Meta-world 50, DMC 16)")
    seq_len: int = option(50, "steps per replay sequence")
    init: str = option(
        "keras",
        f"initialisation of the parts built fresh (action-conditional RSSM, decoder and heads "
        f"where not transferred, actor, critic, ensemble): one of {', '.join(INITS)} (see "
        "video.init)",
    )

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # AGENT_PRESETS, below.
    LEGACY: ClassVar[dict[str, Any]] = {"init": "torch"}

    def validate(self) -> None:
        check_choice("init", self.init, INITS)
        check_positive(self, "batch_size", "seq_len")
        video_bonus = self.intrinsic.enabled and self.intrinsic.kind == "video"
        if video_bonus and not self.world_model.stacked:
            raise ConfigError(
                "the video-based intrinsic bonus reads the action-free model, which a "
                "non-stacked world model (DreamerV2, naive fine-tuning) does not have; "
                "set intrinsic.enabled=false or intrinsic.kind=disagreement"
            )
        if video_bonus and self.seq_len < self.intrinsic.window:
            raise ConfigError(
                f"seq_len {self.seq_len} is shorter than the bonus window {self.intrinsic.window}"
            )

    @classmethod
    def preset(cls, name: str, variant: str = "apv", **overrides: Any) -> AgentConfig:
        """A named preset (``metaworld``, ``dmc``, ``small``, ``tiny``) and variant.

        Variants (see ``VARIANTS``) are switch settings: ``apv``, ``apv_no_bonus``,
        ``apv_scratch``, ``encoder_decoder``, ``naive_finetune``, ``dreamerv2``. Overrides are
        top-level fields or per-section dicts, e.g. ``world_model={"free_nats": 1.0}``.
        """
        if name not in AGENT_PRESETS:
            raise ConfigError(
                f"unknown agent preset {name!r}; choose one of {sorted(AGENT_PRESETS)}"
            )
        if variant not in VARIANTS:
            raise ConfigError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        return cls.from_dict(merge(merge(AGENT_PRESETS[name], VARIANTS[variant]), overrides))

    def variant(self) -> str:
        """The name of the variant whose switches this config has, or ``custom``."""
        for name, switches in VARIANTS.items():
            full = merge(BASE_SWITCHES, switches)
            if all(
                getattr(getattr(self, section), key) == full[section][key]
                for section, fields in BASE_SWITCHES.items()
                for key in fields
            ):
                return name
        return "custom"


# The switches that tell the variants apart, at their APV values.
BASE_SWITCHES: dict[str, dict[str, Any]] = {
    "world_model": {"stacked": True, "transfer": "all"},
    "intrinsic": {"enabled": True, "kind": "video"},
}

# The paper's baselines as switch settings over one implementation (REFERENCE section 1.4).
VARIANTS: dict[str, dict[str, Any]] = {
    "apv": BASE_SWITCHES,
    "apv_no_bonus": {"intrinsic": {"enabled": False}},
    # Same architecture, nothing copied from the checkpoint (and so nothing to freeze).
    "apv_scratch": {"world_model": {"transfer": "none", "freeze_pretrained_updates": 0}},
    # Only the conv encoder and decoder are copied; the action-free RSSM starts fresh.
    "encoder_decoder": {"world_model": {"transfer": "encoder_decoder"}},
    # One action-conditional RSSM initialised from the action-free one (action weights fresh).
    "naive_finetune": {
        "world_model": {"stacked": False, "transfer": "all", "freeze_pretrained_updates": 0},
        "intrinsic": {"enabled": False},
    },
    "dreamerv2": {
        "world_model": {"stacked": False, "transfer": "none", "freeze_pretrained_updates": 0},
        "intrinsic": {"enabled": False},
    },
    # VIPER: rewards from a video reward model (FinetuneConfig.reward_model), a DreamerV2 world
    # model from scratch, Plan2Explore's disagreement weighted like the standardised reward.
    "viper": {
        "world_model": {"stacked": False, "transfer": "none", "freeze_pretrained_updates": 0},
        "intrinsic": {"enabled": True, "kind": "disagreement", "beta": 1.0},
    },
}

AGENT_PRESETS: dict[str, dict[str, Any]] = {
    # REFERENCE section 2, Meta-world column.
    "metaworld": dict(
        video={"preset": "paper"},
        world_model={"ac_input": "af_feat", "free_nats": 0.0, "freeze_pretrained_updates": 100},
        intrinsic={"beta": 1.0},
        batch_size=50,
        seq_len=50,
    ),
    # REFERENCE section 2, DMC column.
    "dmc": dict(
        video={"preset": "paper", "seq_len": 50},
        world_model={"ac_input": "embed_af_feat", "free_nats": 1.0},
        intrinsic={"beta": 0.1},
        batch_size=16,
        seq_len=50,
    ),
    # The Meta-world recipe on the `small` video model: minutes on a CPU.
    "small": dict(
        video={"preset": "small"},
        world_model={"ac_input": "af_feat", "freeze_pretrained_updates": 100},
        intrinsic={"beta": 1.0},
        batch_size=16,
        seq_len=50,
    ),
    # Seconds on a CPU: for tests.
    "tiny": dict(
        video={"preset": "tiny"},
        world_model={"head_units": 32, "head_layers": 2},
        behavior={
            "horizon": 5,
            "actor_units": 32,
            "actor_layers": 2,
            "critic_units": 32,
            "critic_layers": 2,
        },
        intrinsic={
            "proj_dim": 8,
            "queue_size": 64,
            "k": 4,
            "window": 3,
            "ensemble": 4,
            "ensemble_units": 32,
            "ensemble_layers": 2,
        },
        batch_size=4,
        seq_len=8,
    ),
}
AgentConfig.PRESETS = AGENT_PRESETS
