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
