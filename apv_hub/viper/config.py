"""Configuration of VIPER: the frame tokenizer, the video prior and the reward model's scoring.

Strict `apv_hub.config_base.Config` classes (a bad value raises `ConfigError` naming the field
and the value):

- ``TokenizerConfig``: the per-frame VQ autoencoder (VQ-GAN-like; VIPER's ``vqgan/*.yaml``).
- ``PriorConfig``: the causal transformer over the tokens of a window of frames
  (VIPER's ``videogpt/*.yaml``).
- ``VIPERConfig``: both, plus how the reward model scores videos.

Presets (``VIPERConfig.preset(name)``): ``tiny`` for tests (32x32 frames, 4x4 tokens per frame,
seconds on a CPU), ``dmc`` and ``atari`` as in the paper (REFERENCE section 5).
"""

from __future__ import annotations

from typing import Any, ClassVar

from apv_hub.config_base import Config, ConfigError, option

LIKELIHOODS = ("conditional", "joint")


def _check(owner: Config, name: str, ok: bool, requirement: str) -> None:
    if not ok:
        value = getattr(owner, name)
        raise ConfigError(f"{type(owner).__name__}.{name} {requirement}, got {value!r}")


def _positive(owner: Config, *names: str) -> None:
    for name in names:
        _check(owner, name, getattr(owner, name) > 0, "must be positive")


class TokenizerConfig(Config):
    """The per-frame VQ autoencoder: uint8 frames [C, H, W] <-> a grid of codebook indices.

    Encoder: 3x3 conv to ``channels``, then per level ``res_blocks`` ResNet blocks (GroupNorm,
    swish, 3x3 convs) at ``channels * channel_mult[level]`` channels, a stride-2 3x3 conv between
    levels, a middle of ResNet block, self-attention (if ``mid_attention``), ResNet block, then
    GroupNorm, swish, 3x3 conv to ``z_channels`` and a 1x1 conv to ``embed_dim``. The decoder
    mirrors it (nearest-neighbour upsampling + 3x3 conv, ``res_blocks + 1`` blocks per level).
    Tokens per frame: (image_size / 2 ** (len(channel_mult) - 1)) ** 2.
    """

    image_size: int = option(64, "frames are [B, T, image_channels, image_size, image_size]")
    image_channels: int = option(3, "colour channels of a frame")
    channels: int = option(128, "base width of the conv stacks")
    channel_mult: tuple[int, ...] = option((1, 2, 2, 2), "width multiplier per resolution level")
    res_blocks: int = option(1, "ResNet blocks per level")
    mid_attention: bool = option(True, "self-attention between the middle ResNet blocks")
    norm_groups: int = option(
        32, "GroupNorm groups, or gcd(norm_groups, channels // 2) when channels are few"
    )
    dropout: float = option(0.0, "dropout in the ResNet blocks")
    z_channels: int = option(64, "encoder output channels before the 1x1 conv to the codebook")
    codebook_size: int = option(256, "codebook vectors")
    embed_dim: int = option(64, "size of a codebook vector")
    commitment: float = option(0.25, "VQ loss ||sg(z) - e||^2 + commitment * ||z - sg(e)||^2")
    codebook_weight: float = option(1.0, "weight of the VQ loss")
    l1_weight: float = option(1.0, "weight of the L1 reconstruction (images in [-1, 1])")
    kmeans_iters: int = option(
        10, "k-means iterations of init_codebook; 0 keeps the original's uniform init"
    )
    dead_code_steps: int = option(
        100, "a code unused for this many training steps is re-seeded (0: never)"
    )
    gan_weight: float = option(0.0, "non-saturating GAN loss weight (0: no discriminator)")
    disc_channels: int = option(64, "discriminator width")
    disc_layers: int = option(3, "discriminator stride-2 layers")
    lr: float = option(1e-4, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(1000, "linear learning-rate warm-up")
    batch_size: int = option(128, "frames per training step")

    def validate(self) -> None:
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


class PriorConfig(Config):
    """The causal transformer (GPT-2 architecture, built from a config, no download).

    A sequence is a start token followed by the tokens of ``frames`` frames, each frame in raster
    order, frame after frame. The frames of a window are ``frame_skip`` environment steps apart.
    With ``num_classes > 0`` the start token is the class token of the task (see prior.py).
    """

    frames: int = option(16, "frames per window")
    frame_skip: int = option(1, "environment steps between consecutive window frames")
    num_classes: int = option(0, "task classes (0: unconditional)")
    layers: int = option(8, "transformer layers")
    heads: int = option(8, "attention heads")
    width: int = option(256, "transformer width")
    mlp_width: int = option(1024, "MLP width")
    dropout: float = option(0.1, "dropout on residuals and embeddings")
    attention_dropout: float = option(0.1, "dropout on attention weights")
    lr: float = option(1e-4, "Adam learning rate")
    batch_size: int = option(64, "windows per training step")
    ema_decay: float = option(0.9999, "decay of the weight EMA used for scoring")

    def validate(self) -> None:
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


class VIPERConfig(Config):
    """Tokenizer + prior + how the reward model scores a video.

    Reward of step t: a log-likelihood of the window of ``context_frames`` frames ending at t,
    ``prior.frame_skip`` steps apart (see reward_model.py for the episode start).
    ``likelihood="conditional"`` (the paper): log p(o_t | earlier frames of the window), summed
    over o_t's tokens. ``"joint"`` (the original code's default): the sum over every frame of
    the window of its conditional term.
    """

    tokenizer: TokenizerConfig = option(factory=TokenizerConfig, help="the frame tokenizer")
    prior: PriorConfig = option(factory=PriorConfig, help="the video prior")
    context_frames: int | None = option(
        None, "frames per scoring window, at most prior.frames (None: prior.frames)"
    )
    likelihood: str = option("conditional", f"which log-likelihood is the reward: {LIKELIHOODS}")
    score_batch_size: int = option(64, "windows per prior forward pass while scoring")
    encode_batch_size: int = option(256, "frames per tokenizer pass while scoring")
    class_names: tuple[str, ...] = option(
        (), "task names of the class-conditional prior: class i = class_names[i]"
    )

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
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
        # The paper's DMC models: 64x64 frames, 8x8 tokens from a 256-code codebook, 16 frames
        # of 64 tokens, class-conditional over 16 tasks.
        "dmc": dict(
            tokenizer=dict(channels=128, channel_mult=(1, 2, 2, 2), codebook_size=256),
            prior=dict(frames=16, frame_skip=1, num_classes=16, width=256, mlp_width=1024),
        ),
        # The paper's Atari models: 16x16 tokens from a 1024-code codebook, 4 frames 4 steps
        # apart, unconditional, width 512, no dropout.
        "atari": dict(
            tokenizer=dict(channels=128, channel_mult=(1, 2, 2), codebook_size=1024),
            prior=dict(
                frames=4, frame_skip=4, num_classes=0, width=512, mlp_width=2048, dropout=0.0,
                attention_dropout=0.0, batch_size=32,
            ),
        ),
    }  # fmt: skip

    def validate(self) -> None:
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
