"""Configuration of the APV video model, with named presets and a strict JSON round trip.

Every number of the released APV model (REFERENCE section 2) has a field here. The same config is
written to ``config.json`` next to every checkpoint and read back by ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys that config.json may hold beside the config fields: written by the library, not settings.
METADATA_KEYS = ("model_type", "apv_hub_version", "training")
# Fields added after checkpoints were first published, with the value that files written
# before them meant (what the code did then).
LEGACY_DEFAULTS: dict[str, object] = {"layer_norm_eps": 1e-5, "gru_bias": False}


class ConfigError(ValueError):
    """A config dict or file that does not describe a valid APVConfig."""


@dataclass
class APVConfig:
    """Hyper-parameters of the action-free latent video prediction model and its optimiser.

    Defaults are the released APV model (the ``paper`` preset): 64x64 RGB frames, conv encoder of
    depth 48, RSSM with 1024 deterministic units and 32 categorical latents of 32 classes.
    """

    # Frames: [B, T, image_channels, image_size, image_size] uint8 at the model's edges.
    image_size: int = 64
    image_channels: int = 3
    # Conv encoder: stride-2 'valid' convs, channels cnn_depth * 2**i.
    cnn_depth: int = 48
    encoder_kernels: tuple[int, ...] = (4, 4, 4, 4)
    # Conv decoder: a linear layer to 32 * cnn_depth, then stride-2 transposed convs from 1x1.
    decoder_kernels: tuple[int, ...] = (5, 5, 6, 6)
    # RSSM.
    deter: int = 1024
    hidden: int = 1024
    stoch: int = 32
    classes: int = 32
    act: str = "elu"
    gru_layer_norm: bool = True
    # Epsilon of the GRU's layer norm. The release (Keras) uses 1e-3; PyTorch's default 1e-5 is
    # what apv-hub checkpoints without this field were trained with.
    layer_norm_eps: float = 1e-5
    # A bias in the GRU's gate layer although layer norm follows it: the release (Keras Dense)
    # has one, which layer norm does not cancel. Without layer norm the gate layer always has a
    # bias. apv-hub checkpoints without this field had none.
    gru_bias: bool = False
    # Loss: image log-likelihood + kl_scale * balanced KL(post || prior).
    image_loss_scale: float = 1.0
    kl_scale: float = 0.1
    kl_balance: float = 0.8
    free_nats: float = 0.0
    free_avg: bool = True
    # Optimiser: Adam with L2 weight decay (not decoupled), gradient-norm clipping.
    lr: float = 3e-4
    adam_eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 100.0
    # Pre-training batches (REFERENCE section 2: 16 x 25 for Meta-world/RLBench, 50 for DMC).
    batch_size: int = 16
    seq_len: int = 25

    def __post_init__(self) -> None:
        self.encoder_kernels = tuple(self.encoder_kernels)
        self.decoder_kernels = tuple(self.decoder_kernels)
        for name in ("image_size", "cnn_depth", "deter", "hidden", "stoch", "classes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.kl_balance <= 1.0:
            raise ConfigError(f"kl_balance must lie in [0, 1], got {self.kl_balance}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")

    @property
    def stoch_dim(self) -> int:
        """Size of the flattened one-hot stochastic state."""
        return self.stoch * self.classes

    @property
    def feat_dim(self) -> int:
        """Size of the model state features: flattened stochastic state + deterministic state."""
        return self.stoch_dim + self.deter

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> APVConfig:
        """A named preset (``tiny``, ``small``, ``paper``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder_kernels"] = list(self.encoder_kernels)
        d["decoder_kernels"] = list(self.decoder_kernels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> APVConfig:
        """Build a config, failing loudly on unknown or missing fields.

        A dict read from ``config.json`` must name every field, so that a checkpoint never silently
        picks up a default that differs from what it was trained with. Library metadata keys
        (``model_type``, ``apv_hub_version``, ``training``) are ignored.
        """
        data = {k: v for k, v in data.items() if k not in METADATA_KEYS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown APVConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> APVConfig:
        """Like from_dict, but every field must be present (what a saved config.json holds)."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k in names}, **data}
        missing = sorted(names - set(data))
        if missing:
            raise ConfigError(f"config is missing APVConfig field(s): {', '.join(missing)}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> APVConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_json_dict(data)


ACTIVATIONS = ("elu", "relu", "silu", "tanh")

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: for tests.
    "tiny": dict(cnn_depth=8, deter=64, hidden=64, stoch=16, classes=16, batch_size=8, seq_len=16),
    # Minutes on a CPU: the README's main job and quick experiments.
    "small": dict(cnn_depth=16, deter=200, hidden=200, stoch=16, classes=16),
    # The released APV model (about 25.9M parameters).
    "paper": dict(),
}


# Fine-tuning: the stacked world model, the intrinsic bonus, the actor-critic and the agent ------


def section_from_dict(cls: type, data: dict[str, Any], require_all: bool = False) -> Any:
    """Build config dataclass ``cls`` from a dict, naming unknown (and, if asked, missing) keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    if require_all:
        missing = sorted(names - set(data))
        if missing:
            raise ConfigError(f"config is missing {cls.__name__} field(s): {', '.join(missing)}")
    return cls(**data)


def _check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(owner: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{type(owner).__name__}.{name} must be positive, got {value}")


# What the action-conditional RSSM observes: the action-free features (Meta-world), or the encoder
# embedding concatenated with them (DMC).
AC_INPUTS = ("af_feat", "embed_af_feat")
# Which pre-trained parts APVWorldModel.from_video_model copies.
TRANSFERS = ("all", "encoder_decoder", "none")
ACTOR_GRADS = ("dynamics", "reinforce")


@dataclass
class WorldModelConfig:
    """The stacked action-conditional world model of fine-tuning and its optimiser.

    ``stacked=False`` is DreamerV2's world model: a single action-conditional RSSM reading the
    encoder embedding, with no action-free model. ``transfer`` says what ``from_video_model``
    copies from the pre-trained checkpoint. The image encoder/decoder architecture, the RSSM
    activation and GRU layer norm come from the video model's APVConfig.
    """

    stacked: bool = True
    ac_input: str = "af_feat"
    transfer: str = "all"
    # Action-conditional RSSM sizes; None takes the action-free RSSM's size.
    deter: int | None = None
    hidden: int | None = None
    stoch: int | None = None
    classes: int | None = None
    # Reward (and optional discount) heads: MLPs on the action-conditional features.
    head_units: int = 400
    head_layers: int = 4
    discount_head: bool = False
    # Loss: image NLL + reward NLL (+ discount NLL) + kl_scale * KL + af_kl_scale * action-free KL.
    image_loss_scale: float = 1.0
    reward_loss_scale: float = 1.0
    discount_loss_scale: float = 1.0
    kl_scale: float = 1.0
    af_kl_scale: float = 0.0
    kl_balance: float = 0.8
    free_nats: float = 0.0
    free_avg: bool = True
    # Optimiser (Adam, L2 weight decay, gradient-norm clipping).
    lr: float = 3e-4
    adam_eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 100.0
    # Updates during which the encoder and action-free RSSM are not changed (Meta-world: 100).
    freeze_pretrained_updates: int = 0

    def __post_init__(self) -> None:
        _check_choice("world_model", "ac_input", self.ac_input, AC_INPUTS)
        _check_choice("world_model", "transfer", self.transfer, TRANSFERS)
        _check_positive(self, ("deter", "hidden", "stoch", "classes", "head_units", "lr"))
        if not 0.0 <= self.kl_balance <= 1.0:
            raise ConfigError(f"world_model.kl_balance must lie in [0, 1], got {self.kl_balance}")
        if self.freeze_pretrained_updates < 0:
            raise ConfigError("world_model.freeze_pretrained_updates must not be negative")


@dataclass
class BehaviorConfig:
    """DreamerV2's actor-critic, trained on imagined rollouts of the action-conditional RSSM."""

    horizon: int = 15
    discount: float = 0.99
    discount_lambda: float = 0.95
    # "dynamics": back-propagate returns through the model (continuous actions); "reinforce".
    actor_grad: str = "dynamics"
    actor_entropy: float = 1e-4
    actor_min_std: float = 0.1
    actor_units: int = 400
    actor_layers: int = 4
    critic_units: int = 400
    critic_layers: int = 4
    act: str = "elu"
    # Slow critic for the targets: copied (fraction 1) every `slow_target_update` updates.
    slow_target: bool = True
    slow_target_update: int = 100
    slow_target_fraction: float = 1.0
    actor_lr: float = 8e-5
    critic_lr: float = 8e-5
    adam_eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 100.0

    def __post_init__(self) -> None:
        _check_choice("behavior", "actor_grad", self.actor_grad, ACTOR_GRADS)
        _check_choice("behavior", "act", self.act, ACTIVATIONS)
        _check_positive(
            self, ("horizon", "actor_units", "critic_units", "slow_target_update", "actor_lr")
        )
        for name in ("discount", "discount_lambda", "slow_target_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"behavior.{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass
class IntrinsicConfig:
    """APV's video-based intrinsic bonus (REFERENCE section 1.3)."""

    enabled: bool = True
    beta: float = 1.0
    # Sliding window over the action-free features, then a fixed random projection.
    window: int = 5
    proj_dim: int = 128
    # Standard deviation of the projection entries; None means 1 / proj_dim (the release's).
    proj_std: float | None = None
    seed: int = 0
    # FIFO queue of projected vectors and the k nearest neighbours searched in it.
    queue_size: int = 4096
    k: int = 16
    # Running mean of |bonus|: mag <- momentum * mag + (1 - momentum) * mean|bonus|, from init.
    norm_momentum: float = 0.99
    norm_eps: float = 1e-8
    norm_init: float = 1.0

    def __post_init__(self) -> None:
        _check_positive(self, ("window", "proj_dim", "proj_std", "queue_size", "k"))
        if not 0.0 <= self.norm_momentum <= 1.0:
            raise ConfigError(
                f"intrinsic.norm_momentum must lie in [0, 1], got {self.norm_momentum}"
            )


SECTIONS: dict[str, type] = {
    "video": APVConfig,
    "world_model": WorldModelConfig,
    "behavior": BehaviorConfig,
    "intrinsic": IntrinsicConfig,
}


@dataclass
class AgentConfig:
    """Everything an APVAgent is built from, by section, plus the replay batch shape.

    ``video`` describes the action-free model; when the agent is built from a pre-trained
    checkpoint, the checkpoint's own APVConfig replaces it.
    """

    video: APVConfig = dataclasses.field(default_factory=APVConfig)
    world_model: WorldModelConfig = dataclasses.field(default_factory=WorldModelConfig)
    behavior: BehaviorConfig = dataclasses.field(default_factory=BehaviorConfig)
    intrinsic: IntrinsicConfig = dataclasses.field(default_factory=IntrinsicConfig)
    # Replay batches: batch_size sequences of seq_len steps (Meta-world 50 x 50, DMC 16 x 50).
    batch_size: int = 50
    seq_len: int = 50

    def __post_init__(self) -> None:
        _check_positive(self, ("batch_size", "seq_len"))
        if self.intrinsic.enabled and not self.world_model.stacked:
            raise ConfigError(
                "the video-based intrinsic bonus reads the action-free model, which a "
                "non-stacked world model (DreamerV2, naive fine-tuning) does not have; "
                "set intrinsic.enabled=False"
            )
        if self.intrinsic.enabled and self.seq_len < self.intrinsic.window:
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
        data = _merge(_merge(AGENT_PRESETS[name], VARIANTS[variant]), overrides)
        return cls.from_dict(data)

    def variant(self) -> str:
        """The name of the variant whose switches this config has, or ``custom``."""
        for name, switches in VARIANTS.items():
            full = _merge(BASE_SWITCHES, switches)
            if all(
                getattr(getattr(self, section), key) == full[section][key]
                for section, fields in BASE_SWITCHES.items()
                for key in fields
            ):
                return name
        return "custom"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"video": self.video.to_dict()}
        for name in ("world_model", "behavior", "intrinsic"):
            data[name] = dataclasses.asdict(getattr(self, name))
        data.update(batch_size=self.batch_size, seq_len=self.seq_len)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], require_all: bool = False) -> AgentConfig:
        """Build from a (possibly partial) nested dict; a section may be a preset name (video)."""
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - top)
        if unknown:
            raise ConfigError(f"unknown AgentConfig field(s): {', '.join(unknown)}")
        if require_all:
            missing = sorted(top - set(data))
            if missing:
                raise ConfigError(f"config is missing AgentConfig field(s): {', '.join(missing)}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in SECTIONS}
        for name, section in SECTIONS.items():
            value = data.get(name, {})
            if isinstance(value, section):
                kwargs[name] = value
            elif name == "video" and isinstance(value, str):
                kwargs[name] = APVConfig.preset(value)
            elif name == "video":
                video_fields = dict(value)
                base = video_fields.pop("preset", "paper")
                kwargs[name] = (
                    APVConfig.from_json_dict(video_fields)
                    if require_all
                    else APVConfig.preset(base, **video_fields)
                )
            else:
                kwargs[name] = section_from_dict(section, dict(value), require_all)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AgentConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data, require_all=True)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge two nested override dicts; section dicts are merged key by key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# The switches that tell the variants apart, at their APV values.
BASE_SWITCHES: dict[str, dict[str, Any]] = {
    "world_model": {"stacked": True, "transfer": "all"},
    "intrinsic": {"enabled": True},
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
        intrinsic={"proj_dim": 8, "queue_size": 64, "k": 4, "window": 3},
        batch_size=4,
        seq_len=8,
    ),
}
