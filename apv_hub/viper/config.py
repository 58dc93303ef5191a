"""Configuration of VIPER: the frame tokenizer, the video prior and the reward model's scoring.

Three plain dataclasses, each validated on construction (a bad value raises
``apv_hub.config.ConfigError`` naming the field and the value):

- ``TokenizerConfig``: the per-frame VQ autoencoder (VQ-GAN-like; VIPER's ``vqgan/*.yaml``).
- ``PriorConfig``: the causal transformer over the tokens of a window of frames
  (VIPER's ``videogpt/*.yaml``).
- ``VIPERConfig``: both, plus how the reward model scores videos.

Presets (``VIPERConfig.preset(name)``): ``tiny`` for tests (32x32 frames, 4x4 tokens per frame,
seconds on a CPU), ``dmc`` and ``atari`` as in the paper (REFERENCE section 5).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apv_hub.config import ConfigError, section_from_dict

# Keys config.json holds beside the config fields: written by the library, not settings.
METADATA_KEYS = ("model_type", "apv_hub_version", "training")
LIKELIHOODS = ("conditional", "joint")


def _check(owner: object, name: str, ok: bool, requirement: str) -> None:
    if not ok:
        value = getattr(owner, name)
        raise ConfigError(f"{type(owner).__name__}.{name} {requirement}, got {value!r}")


def _positive(owner: object, *names: str) -> None:
    for name in names:
        _check(owner, name, getattr(owner, name) > 0, "must be positive")


@dataclass
class TokenizerConfig:
    """The per-frame VQ autoencoder: uint8 frames [C, H, W] <-> a grid of codebook indices.

    Encoder: 3x3 conv to ``channels``, then per level ``res_blocks`` ResNet blocks (GroupNorm,
    swish, 3x3 convs) at ``channels * channel_mult[level]`` channels, a stride-2 3x3 conv between
    levels, a middle of ResNet block, self-attention (if ``mid_attention``), ResNet block, then
    GroupNorm, swish, 3x3 conv to ``z_channels`` and a 1x1 conv to ``embed_dim``. The decoder
    mirrors it (nearest-neighbour upsampling + 3x3 conv, ``res_blocks + 1`` blocks per level).
    Tokens per frame: (image_size / 2 ** (len(channel_mult) - 1)) ** 2.
    """

    # Frames: [B, T, image_channels, image_size, image_size] uint8 at the edges.
    image_size: int = 64
    image_channels: int = 3
    # Base width of the conv stacks and its multiplier per resolution level.
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    res_blocks: int = 1
    # Self-attention between the two middle ResNet blocks (VQ-GAN has it; optional for tiny).
    mid_attention: bool = True
    # GroupNorm groups: this many, or gcd(norm_groups, channels // 2) when channels are few,
    # so that every group holds at least two channels.
    norm_groups: int = 32
    dropout: float = 0.0
    # Encoder output channels before the 1x1 conv to the codebook space.
    z_channels: int = 64
    # Codebook: codebook_size vectors of embed_dim.
    codebook_size: int = 256
    embed_dim: int = 64
    # VQ loss: ||sg(z) - e||^2 + commitment * ||z - sg(e)||^2, weighted by codebook_weight.
    commitment: float = 0.25
    codebook_weight: float = 1.0
    # Reconstruction: L1 on images in [-1, 1], weighted by l1_weight.
    l1_weight: float = 1.0
    # Codebook initialisation: k-means over encoder outputs (init_codebook); 0 iterations keeps
    # the original's uniform initialisation in [-1/codebook_size, 1/codebook_size].
    kmeans_iters: int = 10
    # Dead-code restart: a code unused for this many training steps (loss() calls in training
    # mode) is re-seeded from recent encoder outputs by restart_dead_codes(); 0 disables it.
    dead_code_steps: int = 100
    # Optional non-saturating GAN loss (0 disables it and builds no discriminator). The
    # perceptual (LPIPS) loss of the original is not offered: its VGG weights need a download.
    gan_weight: float = 0.0
    disc_channels: int = 64
    disc_layers: int = 3
    # Optimiser (AdamW, linear warm-up) and batch of frames.
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    batch_size: int = 128

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        _positive(self, "image_size", "image_channels", "channels", "res_blocks", "norm_groups")
        _positive(self, "z_channels", "codebook_size", "embed_dim", "lr", "batch_size")
        _check(self, "channel_mult", len(self.channel_mult) >= 1, "needs at least one level")
        _check(self, "channel_mult", min(self.channel_mult) > 0, "must be positive multipliers")
        levels = f"must be divisible by 2 ** (len(channel_mult) - 1) = {self.downsample}"
        _check(self, "image_size", self.image_size % self.downsample == 0, levels)
        _check(self, "codebook_size", self.codebook_size >= 2, "must be at least 2")
        _check(self, "dropout", 0.0 <= self.dropout < 1.0, "must lie in [0, 1)")
        for name in ("commitment", "codebook_weight", "l1_weight", "gan_weight", "weight_decay"):
            _check(self, name, getattr(self, name) >= 0, "must not be negative")
        for name in ("kmeans_iters", "dead_code_steps", "warmup_steps"):
            _check(self, name, getattr(self, name) >= 0, "must not be negative")
        if self.gan_weight > 0:
            _positive(self, "disc_channels", "disc_layers")

    @property
    def downsample(self) -> int:
        """Frame size / token grid size."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def token_grid(self) -> int:
        """Token grid side: a frame becomes token_grid x token_grid codebook indices."""
        return self.image_size // self.downsample

    @property
    def tokens_per_frame(self) -> int:
        return self.token_grid**2


@dataclass
class PriorConfig:
    """The causal transformer (GPT-2 architecture, built from a config, no download).

    A sequence is a start token followed by the tokens of ``frames`` frames, each frame in raster
    order, frame after frame. The frames of a window are ``frame_skip`` environment steps apart.
    With ``num_classes > 0`` the start token is the class token of the task (see prior.py).
    """

    # Frames per window and environment steps between consecutive window frames.
    frames: int = 16
    frame_skip: int = 1
    # Task classes (0: unconditional).
    num_classes: int = 0
    # Transformer: layers, heads, width, MLP width, dropout on residuals/embeddings/attention.
    layers: int = 8
    heads: int = 8
    width: int = 256
    mlp_width: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.1
    # Optimiser (Adam), batch of windows, and the decay of the weight EMA used for scoring.
    lr: float = 1e-4
    batch_size: int = 64
    ema_decay: float = 0.9999

    def __post_init__(self) -> None:
        _positive(self, "frames", "frame_skip", "layers", "heads", "width", "mlp_width", "lr")
        _positive(self, "batch_size")
        _check(self, "num_classes", self.num_classes >= 0, "must not be negative")
        _check(
            self, "width", self.width % self.heads == 0, f"must be divisible by heads={self.heads}"
        )
        for name in ("dropout", "attention_dropout"):
            _check(self, name, 0.0 <= getattr(self, name) < 1.0, "must lie in [0, 1)")
        _check(self, "ema_decay", 0.0 <= self.ema_decay < 1.0, "must lie in [0, 1)")

    @property
    def span(self) -> int:
        """Environment steps a full window covers: (frames - 1) * frame_skip + 1."""
        return (self.frames - 1) * self.frame_skip + 1


@dataclass
class VIPERConfig:
    """Tokenizer + prior + how the reward model scores a video.

    Reward of step t: a log-likelihood of the window of ``context_frames`` frames ending at t,
    ``prior.frame_skip`` steps apart (see reward_model.py for the episode start).
    ``likelihood="conditional"`` (the paper): log p(o_t | earlier frames of the window), summed
    over o_t's tokens. ``"joint"`` (the original code's default): the sum over every frame of
    the window of its conditional term.
    """

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    # Frames per scoring window (at most prior.frames; None: prior.frames).
    context_frames: int | None = None
    likelihood: str = "conditional"
    # Windows per prior forward pass and frames per tokenizer pass while scoring (memory bound).
    score_batch_size: int = 64
    encode_batch_size: int = 256
    # Task names of the class-conditional prior, class i = class_names[i] (empty: unnamed).
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, dict):
            self.tokenizer = section_from_dict(TokenizerConfig, self.tokenizer)
        if isinstance(self.prior, dict):
            self.prior = section_from_dict(PriorConfig, self.prior)
        self.class_names = tuple(str(n) for n in self.class_names)
        if self.context_frames is None:
            self.context_frames = self.prior.frames
        within = f"must lie in [1, prior.frames={self.prior.frames}]"
        _check(self, "context_frames", 1 <= self.context_frames <= self.prior.frames, within)
        _check(self, "likelihood", self.likelihood in LIKELIHOODS, f"must be one of {LIKELIHOODS}")
        _positive(self, "score_batch_size", "encode_batch_size")
        names, classes = self.class_names, self.prior.num_classes
        named = not names or (len(names) == classes and len(set(names)) == len(names))
        _check(self, "class_names", named, f"must be empty or {classes} distinct names")

    @property
    def context_span(self) -> int:
        """Environment steps a full scoring window covers."""
        return (self.context_frames - 1) * self.prior.frame_skip + 1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VIPERConfig:
        """A named preset (``tiny``, ``dmc``, ``atari``); ``tokenizer``/``prior`` overrides are
        dicts of fields merged into the preset's."""
        if name not in PRESETS:
            raise ConfigError(f"unknown VIPER preset {name!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name]
        data = {**base, **overrides}
        for part in ("tokenizer", "prior"):
            data[part] = {**base.get(part, {}), **overrides.get(part, {})}
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tokenizer"]["channel_mult"] = list(self.tokenizer.channel_mult)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], require_all: bool = False) -> VIPERConfig:
        """Build a config, naming unknown fields (and missing ones with ``require_all``, as for a
        saved config.json, so a checkpoint never silently picks up a changed default)."""
        data = {k: v for k, v in data.items() if k not in METADATA_KEYS}
        for name, part in (("tokenizer", TokenizerConfig), ("prior", PriorConfig)):
            if isinstance(data.get(name, {}), dict):
                data[name] = section_from_dict(part, data.get(name, {}), require_all)
        return section_from_dict(cls, data, require_all)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> VIPERConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data, require_all=True)


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: 32x32 frames, 4x4 tokens per frame, 4-frame windows.
    "tiny": dict(
        tokenizer=dict(
            image_size=32, channels=8, channel_mult=(1, 2, 4, 4), mid_attention=False,
            z_channels=16, codebook_size=64, embed_dim=16, dead_code_steps=20,
            lr=1e-3, warmup_steps=0, batch_size=16,
        ),
        prior=dict(
            frames=4, layers=2, heads=2, width=64, mlp_width=256, dropout=0.0,
            attention_dropout=0.0, lr=1e-3, batch_size=16, ema_decay=0.99,
        ),
        score_batch_size=64,
    ),
    # The paper's DMC models: 64x64 frames, 8x8 tokens from a 256-code codebook, 16 frames of
    # 64 tokens, class-conditional over 16 tasks.
    "dmc": dict(
        tokenizer=dict(channels=128, channel_mult=(1, 2, 2, 2), codebook_size=256),
        prior=dict(frames=16, frame_skip=1, num_classes=16, width=256, mlp_width=1024),
    ),
    # The paper's Atari models: 16x16 tokens from a 1024-code codebook, 4 frames 4 steps apart,
    # unconditional, width 512, no dropout.
    "atari": dict(
        tokenizer=dict(channels=128, channel_mult=(1, 2, 2), codebook_size=1024),
        prior=dict(
            frames=4, frame_skip=4, num_classes=0, width=512, mlp_width=2048, dropout=0.0,
            attention_dropout=0.0, batch_size=32,
        ),
    ),
}  # fmt: skip
