"""VQTokenizer: VIPER's per-frame VQ autoencoder (a VQ-GAN without its default adversarial and
perceptual losses), turning each frame into a grid of codebook indices and back.

    tokenizer = VQTokenizer(VIPERConfig.preset("dmc").tokenizer)
    tokenizer.init_codebook(first_frames)             # once, before training: k-means init
    loss, metrics = tokenizer.loss(frames)            # uint8 [B, T, C, H, W]; L1 + VQ terms
    ... optimiser step ...
    tokenizer.restart_dead_codes()                    # after each step: re-seed dead codes
    tokens = tokenizer.encode(frames)                 # long [B, T, h, w]
    frames_again = tokenizer.decode(tokens)           # uint8 [B, T, C, H, W]

Architecture (TokenizerConfig): as VIPER's VQ-GAN. Frames are scaled to [-1, 1]. Quantisation
is plain nearest-neighbour with the straight-through gradient, codebook loss
||sg(z) - e||^2 + commitment (0.25) * ||z - sg(e)||^2, no EMA.

Against codebook collapse (reported by users of the original: losses exploding, solid-colour
reconstructions) two cheap measures the original lacks:

- ``init_codebook(frames)``: k-means over the encoder outputs of the first batch(es), so every
  code starts where encoder outputs are (the original draws codes uniformly in
  [-1/K, 1/K], far from most outputs, so a few codes win every assignment).
- ``restart_dead_codes()``: a code that no training step has used for ``dead_code_steps`` steps
  is moved onto a random encoder output of the latest training batch.

``loss`` reports codebook usage: ``perplexity`` (exp of the entropy of the batch's code
histogram: K when all codes are used equally, 1 when one code is used), ``usage`` (fraction of
codes used in the batch) and ``dead_codes`` (codes idle for ``dead_code_steps`` steps, or for
100 steps when restarts are off).

GroupNorm uses ``norm_groups`` (32) groups, or gcd(norm_groups, channels // 2) where channels
are few (the tiny preset's 16- and 32-channel maps get 8 and 16 groups of two channels).
The optional GAN loss (``gan_weight > 0``) is non-saturating with a PatchGAN-like
discriminator; the perceptual (LPIPS) loss is left out because its VGG weights would have to be
downloaded at run time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apv_hub.viper.config import TokenizerConfig

# Idle steps after which ``dead_codes`` counts a code when restarts are off (dead_code_steps 0).
DEAD_CODE_REPORT_STEPS = 100


def preprocess(frames: Tensor) -> Tensor:
    """uint8 frames [..., C, H, W] -> float in [-1, 1] (the VQ-GAN's image range)."""
    return frames.float() / 127.5 - 1.0


def postprocess(images: Tensor) -> Tensor:
    """Float images [..., C, H, W] around [-1, 1] -> uint8 frames."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """How often each code occurs in indices (any shape) -> float [K], without a host sync."""
    flat = indices.reshape(-1)
    ones = torch.ones_like(flat, dtype=torch.float32)
    return torch.zeros(codebook_size, device=flat.device).index_add_(0, flat, ones)


def codebook_stats(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Usage of a batch of code indices (any shape) -> ``perplexity`` and ``usage`` (fraction of
    the codebook used), as detached scalar tensors."""
    counts = code_counts(indices, codebook_size)
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


def norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, fewer where channels are few (>= 2 channels a group)."""
    return nn.GroupNorm(math.gcd(groups, max(channels // 2, 1)), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm, swish, 3x3 conv, twice, with a 1x1 shortcut where the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            norm(c_in, groups),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            norm(c_out, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.block(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


def middle(channels: int, cfg: TokenizerConfig) -> nn.Sequential:
    """ResNet block, self-attention (if configured), ResNet block."""
    attention = AttnBlock(channels, cfg.norm_groups) if cfg.mid_attention else nn.Identity()
    return nn.Sequential(
        ResnetBlock(channels, channels, cfg.norm_groups, cfg.dropout),
        attention,
        ResnetBlock(channels, channels, cfg.norm_groups, cfg.dropout),
    )


class Encoder(nn.Module):
    """Float images [N, C, H, W] -> encoder outputs [N, z_channels, h, w]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(cfg.image_channels, cfg.channels, 3, padding=1)]
        c = cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.res_blocks):
                layers.append(ResnetBlock(c, width, cfg.norm_groups, cfg.dropout))
                c = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [
            middle(c, cfg),
            norm(c, cfg.norm_groups),
            nn.SiLU(),
            nn.Conv2d(c, cfg.z_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Quantised vectors after the post-quantisation conv [N, z_channels, h, w] -> images."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.z_channels, c, 3, padding=1), middle(c, cfg)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.res_blocks + 1):
                layers.append(ResnetBlock(c, widths[level], cfg.norm_groups, cfg.dropout))
                c = widths[level]
            if level > 0:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, c, 3, padding=1),
                ]
        layers += [
            norm(c, cfg.norm_groups),
            nn.SiLU(),
            nn.Conv2d(c, cfg.image_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """PatchGAN-like: stride-2 4x4 convs with LeakyReLU -> a map of real/fake logits."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        c = cfg.disc_channels
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.image_channels, c, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        for _ in range(cfg.disc_layers - 1):
            layers += [
                nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),
                norm(2 * c, cfg.norm_groups),
                nn.LeakyReLU(0.2),
            ]
            c *= 2
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation onto ``codebook`` [K, D], straight-through gradient.

    Buffers: ``idle_steps`` (long [K], training steps since each code was last chosen) and
    ``initialized`` (whether init_codebook ran); both are saved with the model, so a resumed run
    continues the restart schedule.
    """

    def __init__(self, codebook_size: int, dim: int, commitment: float) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.commitment = codebook_size, dim, commitment
        bound = 1.0 / codebook_size
        self.codebook = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-bound, bound))
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, vectors: Tensor, chunk: int = 16384) -> Tensor:
        """Vectors [M, D] -> index of the nearest code [M] (squared Euclidean, float32)."""
        codebook = self.codebook.detach().float()
        sq = codebook.pow(2).sum(1)
        out = []
        for part in vectors.detach().float().split(chunk):
            out.append((sq - 2 * part @ codebook.T).argmin(1))
        return torch.cat(out) if out else vectors.new_zeros(0, dtype=torch.long)

    def lookup(self, indices: Tensor) -> Tensor:
        """Indices [N, h, w] -> code vectors [N, D, h, w]."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z [N, D, h, w] -> (straight-through quantised [N, D, h, w], indices [N, h, w],
        codebook loss, commitment loss)."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        indices = self.nearest(flat).reshape(n, h, w)
        quantized = self.lookup(indices).to(z.dtype)
        codebook_loss = F.mse_loss(quantized.float(), z.detach().float())
        commit_loss = F.mse_loss(z.float(), quantized.detach().float())
        quantized = z + (quantized - z).detach()
        return quantized, indices, codebook_loss, commit_loss

    @torch.no_grad()
    def record_usage(self, indices: Tensor) -> None:
        """One training step: codes in ``indices`` become fresh, the others one step older."""
        used = code_counts(indices, self.codebook_size) > 0
        self.idle_steps.copy_(torch.where(used, 0, self.idle_steps + 1))

    @torch.no_grad()
    def kmeans(self, vectors: Tensor, iters: int, generator: torch.Generator | None = None) -> None:
        """Set the codebook to ``iters`` Lloyd iterations of k-means over vectors [M, D] (M >= K),
        seeded by K distinct random vectors; an emptied cluster is re-seeded by a random vector."""
        vectors = vectors.detach().float()
        m = vectors.shape[0]
        if m < self.codebook_size:
            raise ValueError(
                f"k-means needs at least codebook_size={self.codebook_size} encoder outputs, got "
                f"{m}: pass more frames (each gives h x w outputs)"
            )
        pick = torch.randperm(m, generator=generator, device="cpu")[: self.codebook_size]
        centroids = vectors[pick.to(vectors.device)].clone()
        self.codebook.data.copy_(centroids)
        for _ in range(iters):
            assign = self.nearest(vectors)
            sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
            counts = torch.bincount(assign, minlength=self.codebook_size)
            empty = counts == 0
            centroids = sums / counts.clamp_min(1)[:, None].float()
            if empty.any():
                refill = torch.randint(m, (int(empty.sum()),), generator=generator, device="cpu")
                centroids[empty] = vectors[refill.to(vectors.device)]
            self.codebook.data.copy_(centroids)
        self.idle_steps.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def restart(
        self, candidates: Tensor, after_steps: int, generator: torch.Generator | None = None
    ) -> int:
        """Move codes idle for ``after_steps`` steps onto random rows of candidates [M, D]
        (distinct rows where M allows) -> how many codes moved."""
        dead = (self.idle_steps >= after_steps).nonzero().flatten()
        if len(dead) == 0 or len(candidates) == 0:
            return 0
        m = candidates.shape[0]
        if m >= len(dead):
            rows = torch.randperm(m, generator=generator, device="cpu")[: len(dead)]
        else:
            rows = torch.randint(m, (len(dead),), generator=generator, device="cpu")
        self.codebook.data[dead] = candidates[rows.to(candidates.device)].to(self.codebook.dtype)
        self.idle_steps[dead] = 0
        return len(dead)


class VQTokenizer(nn.Module):
    """Per-frame VQ autoencoder: uint8 frames [B, T, C, H, W] <-> long tokens [B, T, h, w].

    Args:
        config: a TokenizerConfig (or a dict of its fields).
    """

    def __init__(self, config: TokenizerConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = TokenizerConfig()
        elif isinstance(config, dict):
            config = TokenizerConfig(**config)
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.commitment)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg) if cfg.gan_weight > 0 else None
        # Encoder outputs [M, D] of the latest training batch: restart_dead_codes draws from them.
        self._recent: Tensor | None = None

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def token_grid(self) -> int:
        return self.config.token_grid

    @property
    def codebook_initialized(self) -> bool:
        """Whether init_codebook has run (saved with the model: a resumed run skips it)."""
        return bool(self.quantizer.initialized)

    def check_frames(self, frames: Tensor) -> None:
        cfg = self.config
        shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != shape:
            raise ValueError(
                f"expected frames [B, T, {', '.join(map(str, shape))}], got {tuple(frames.shape)}"
                f" (resize frames to the tokenizer's image_size {cfg.image_size})"
            )
        if frames.dtype != torch.uint8:
            raise TypeError(f"expected uint8 frames, got {frames.dtype}")

    def check_tokens(self, tokens: Tensor) -> None:
        g = self.token_grid
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (g, g):
            raise ValueError(f"expected tokens [B, T, {g}, {g}], got {tuple(tokens.shape)}")
        if tokens.dtype != torch.long:
            raise TypeError(f"expected long tokens, got {tokens.dtype}")

    def encode_vectors(self, images: Tensor) -> Tensor:
        """Float images [N, C, H, W] in [-1, 1] -> pre-quantisation vectors [N, D, h, w]."""
        return self.quant_conv(self.encoder(images))

    def decode_vectors(self, quantized: Tensor) -> Tensor:
        """Quantised vectors [N, D, h, w] -> float images [N, C, H, W] around [-1, 1]."""
        return self.decoder(self.post_quant_conv(quantized))

    @torch.no_grad()
    def encode(self, frames: Tensor, batch_size: int | None = None) -> Tensor:
        """uint8 frames [B, T, C, H, W] -> long tokens [B, T, h, w], ``batch_size`` frames a pass.

        Frames are encoded independently of each other (tokens of a frame never depend on
        the other frames of the batch). Call ``eval()`` first if the config has dropout.
        """
        self.check_frames(frames)
        b, t = frames.shape[:2]
        flat = frames.reshape(b * t, *frames.shape[2:])
        out = []
        for part in flat.split(batch_size or max(len(flat), 1)):
            z = self.encode_vectors(preprocess(part))
            d = z.shape[1]
            out.append(self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)))
        g = self.token_grid
        return torch.cat(out).reshape(b, t, g, g)

    @torch.no_grad()
    def decode(self, tokens: Tensor, batch_size: int | None = None) -> Tensor:
        """long tokens [B, T, h, w] -> uint8 frames [B, T, C, H, W]."""
        self.check_tokens(tokens)
        b, t = tokens.shape[:2]
        flat = tokens.reshape(b * t, *tokens.shape[2:])
        out = [
            postprocess(self.decode_vectors(self.quantizer.lookup(part)))
            for part in flat.split(batch_size or max(len(flat), 1))
        ]
        return torch.cat(out).reshape(b, t, *out[0].shape[1:])

    def reconstruct(self, frames: Tensor) -> Tensor:
        """uint8 frames [B, T, C, H, W] -> their uint8 reconstructions through the codebook."""
        return self.decode(self.encode(frames))

    def loss(self, frames: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Autoencoder loss of uint8 frames [B, T, C, H, W] -> (scalar loss, metrics).

        loss = l1_weight * L1 + codebook_weight * (codebook + commitment * commit)
        [+ gan_weight * non-saturating generator loss]. In training mode it also records code
        usage and keeps this batch's encoder outputs for restart_dead_codes. Metrics are detached
        scalar tensors (no host sync): loss, l1, mse (frames in [0, 1]), psnr, codebook, commit,
        perplexity, usage, dead_codes [, gan_g].
        """
        cfg = self.config
        self.check_frames(frames)
        images = preprocess(frames.flatten(0, 1))
        z = self.encode_vectors(images)
        quantized, indices, codebook_loss, commit_loss = self.quantizer(z)
        recon = self.decode_vectors(quantized)
        l1 = (recon.float() - images).abs().mean()
        vq = codebook_loss + cfg.commitment * commit_loss
        loss = cfg.l1_weight * l1 + cfg.codebook_weight * vq
        mse = ((recon.detach().float().clamp(-1, 1) - images) / 2).pow(2).mean()
        metrics = {
            "l1": l1.detach(),
            "mse": mse,
            "psnr": -10 * torch.log10(mse.clamp_min(1e-10)),
            "codebook": codebook_loss.detach(),
            "commit": commit_loss.detach(),
            **codebook_stats(indices, cfg.codebook_size),
        }
        if self.discriminator is not None:
            gan_g = F.softplus(-self.discriminator(recon)).mean()
            loss = loss + cfg.gan_weight * gan_g
            metrics["gan_g"] = gan_g.detach()
        if self.training:
            self.quantizer.record_usage(indices)
            self._recent = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idle = cfg.dead_code_steps or DEAD_CODE_REPORT_STEPS
        metrics["dead_codes"] = (self.quantizer.idle_steps >= idle).sum()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def discriminator_loss(self, frames: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Non-saturating discriminator loss on uint8 frames [B, T, C, H, W] against their
        reconstructions (recomputed without gradient, as the original does) -> (loss, metrics).
        Only with ``gan_weight > 0``; optimise ``tokenizer.discriminator.parameters()`` with it."""
        if self.discriminator is None:
            raise RuntimeError("this tokenizer has no discriminator (config gan_weight is 0)")
        self.check_frames(frames)
        images = preprocess(frames.flatten(0, 1))
        with torch.no_grad():
            quantized, _, _, _ = self.quantizer(self.encode_vectors(images))
            recon = self.decode_vectors(quantized)
        real, fake = self.discriminator(images), self.discriminator(recon)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        return loss, {"gan_d": loss.detach(), "d_real": real.detach().mean()}

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminator: what the autoencoder's optimiser updates."""
        skip = set(map(id, self.discriminator.parameters())) if self.discriminator else set()
        return [p for p in self.parameters() if id(p) not in skip]

    @torch.no_grad()
    def init_codebook(
        self,
        frames: Tensor,
        iters: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Tensor]:
        """k-means initialisation of the codebook from the encoder outputs of uint8 frames
        [B, T, C, H, W] (needs B * T * h * w >= codebook_size). Call it once before training;
        ``codebook_initialized`` tells a resumed run it already ran. ``iters`` defaults to the
        config's ``kmeans_iters``. Returns the usage statistics of the new codebook on them."""
        self.check_frames(frames)
        flat = frames.flatten(0, 1)
        parts = [
            self.encode_vectors(preprocess(part)).permute(0, 2, 3, 1)
            for part in flat.split(batch_size or max(len(flat), 1))
        ]
        vectors = torch.cat(parts).reshape(-1, self.config.embed_dim)
        iters = self.config.kmeans_iters if iters is None else iters
        self.quantizer.kmeans(vectors, iters, generator)
        return codebook_stats(self.quantizer.nearest(vectors), self.codebook_size)

    def restart_dead_codes(self, generator: torch.Generator | None = None) -> int:
        """Re-seed every code unused for ``dead_code_steps`` training steps with a random encoder
        output of the latest training batch -> the number of codes moved (0 when disabled).

        Call it after the optimiser step (never between loss and backward), every step or every
        few steps. With several processes every process must end with the same codebook: reduce
        ``quantizer.idle_steps`` (elementwise min) across processes before, and broadcast
        ``quantizer.codebook`` from process 0 after.
        """
        after = self.config.dead_code_steps
        if after <= 0 or self._recent is None:
            return 0
        return self.quantizer.restart(self._recent, after, generator)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of the encoder (with quant conv), codebook, decoder (with post-quant
        conv), discriminator and in total."""

        def count(*modules: nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        counts = {
            "encoder": count(self.encoder, self.quant_conv),
            "codebook": self.quantizer.codebook.numel(),
            "decoder": count(self.post_quant_conv, self.decoder),
            "discriminator": count(self.discriminator),
        }
        counts["total"] = sum(counts.values())
        return counts
