"""APV's video-based intrinsic bonus: k-NN novelty of windowed action-free features.

For action-free features of replay sequences [B, T, D]:

1. average over a sliding window of ``window`` steps along time -> [B, T - window + 1, D];
2. project with a fixed random matrix D x proj_dim (drawn once from ``seed``, never trained);
3. push the projected vectors into a FIFO queue of ``queue_size`` entries (before searching, so
   the queue includes the current batch, and each vector finds itself at distance 0);
4. bonus = mean L2 distance to the k nearest entries of the queue;
5. divide by a running mean of |bonus| (DreamerV2's StreamNorm: updated first, then applied);
6. scale by beta.

All of it is batched tensor code, in float32 also under a caller's bf16 autocast (distances
between nearby projections would not survive bf16 rounding). The projection, queue and
normaliser are buffers, so they are saved and restored with the module's state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from apv_hub.config import IntrinsicConfig
from apv_hub.nets import autocast_off


class VideoIntrinsicBonus(nn.Module):
    """Action-free features [B, T, feat_dim] -> bonus [B, T - window + 1] (times beta)."""

    def __init__(self, feat_dim: int, config: IntrinsicConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IntrinsicConfig()
        self.feat_dim = feat_dim
        std = config.proj_std if config.proj_std is not None else 1.0 / config.proj_dim
        generator = torch.Generator().manual_seed(config.seed)
        projection = torch.randn(feat_dim, config.proj_dim, generator=generator) * std
        self.register_buffer("projection", projection)
        self.register_buffer("queue", torch.zeros(config.queue_size, config.proj_dim))
        # Ring-buffer write position and number of valid entries.
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        # Running mean of |bonus|, in float64 as in DreamerV2's StreamNorm.
        self.register_buffer("norm_mag", torch.tensor(config.norm_init, dtype=torch.float64))

    def window_average(self, feat: Tensor) -> Tensor:
        """[B, T, D] -> mean over each window of ``window`` consecutive steps [B, T - w + 1, D]."""
        window = self.config.window
        if feat.dim() != 3 or feat.shape[-1] != self.feat_dim:
            raise ValueError(f"expected features [B, T, {self.feat_dim}], got {tuple(feat.shape)}")
        if feat.shape[1] < window:
            raise ValueError(
                f"sequences of {feat.shape[1]} steps are shorter than the bonus window {window}"
            )
        return feat.unfold(1, window, 1).mean(-1)

    def push(self, vectors: Tensor) -> None:
        """Write vectors [N, proj_dim] into the FIFO queue, overwriting the oldest entries."""
        size = self.config.queue_size
        if len(vectors) >= size:
            # Only the newest `size` vectors survive; the ring restarts at 0.
            self.queue.copy_(vectors[-size:])
            self.queue_next.zero_()
            self.queue_count.fill_(size)
            return
        index = (self.queue_next + torch.arange(len(vectors), device=vectors.device)) % size
        self.queue.index_copy_(0, index, vectors.to(self.queue.dtype))
        self.queue_next.copy_((self.queue_next + len(vectors)) % size)
        self.queue_count.copy_(torch.clamp(self.queue_count + len(vectors), max=size))

    def knn_distance(self, vectors: Tensor) -> Tensor:
        """Mean L2 distance of each vector [N, P] to its k nearest queue entries -> [N]."""
        entries = self.queue[: int(self.queue_count)]
        if len(entries) == 0:
            raise RuntimeError("the bonus queue is empty: push() vectors before searching")
        # Direct differences, not the |x|^2 + |y|^2 - 2xy shortcut, which loses the small
        # distances (a vector to itself) to cancellation in float32.
        dist = torch.cdist(vectors, entries, compute_mode="donot_use_mm_for_euclid_dist")
        k = min(self.config.k, len(entries))
        return dist.topk(k, dim=-1, largest=False).values.mean(-1)

    def normalise(self, bonus: Tensor) -> Tensor:
        """Update the running mean of |bonus| with this batch, then divide by it (+ eps)."""
        m = self.config.norm_momentum
        batch_mag = bonus.abs().mean().to(torch.float64)
        self.norm_mag.copy_(m * self.norm_mag + (1 - m) * batch_mag)
        return bonus / (self.norm_mag.to(bonus.dtype) + self.config.norm_eps)

    @torch.no_grad()
    def forward(self, af_feat: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Action-free features [B, T, D] -> (beta * normalised bonus [B, T - w + 1], metrics).

        Mutates the queue and the normaliser: call once per replay batch.
        """
        with autocast_off(af_feat.device):
            af_feat = af_feat.detach().float()
            windows = self.window_average(af_feat)
            batch, steps = windows.shape[:2]
            vectors = (windows @ self.projection).reshape(batch * steps, -1)
            self.push(vectors)
            raw = self.knn_distance(vectors)
            bonus = self.normalise(raw).reshape(batch, steps)
        metrics = {
            "bonus_raw_mean": raw.mean().item(),
            "bonus_mean": bonus.mean().item(),
            "bonus_norm_mag": self.norm_mag.item(),
            "bonus_queue_fill": int(self.queue_count) / self.config.queue_size,
        }
        return self.config.beta * bonus, metrics
