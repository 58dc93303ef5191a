"""Exploration bonuses: APV's video-based bonus and Plan2Explore's ensemble disagreement.

``VideoIntrinsicBonus`` (APV, ``IntrinsicConfig.kind="video"``): k-NN novelty of windowed
action-free features. For action-free features of replay sequences [B, T, D]:

1. average over a sliding window of ``window`` steps along time -> [B, T - window + 1, D];
2. project with a fixed random matrix D x proj_dim (drawn once from ``seed``, never trained);
3. push the projected vectors into a FIFO queue of ``queue_size`` entries (before searching, so
   the queue includes the current batch, and each vector finds itself at distance 0);
4. bonus = mean L2 distance to the k nearest entries of the queue;
5. divide by a running mean of |bonus| (DreamerV2's StreamNorm: updated first, then applied);
6. scale by beta.

The world model adds it to the reward head's target on replay. Replay sequences lie within one
episode (`apv_hub.replay`), so no window averages the features of two episodes.

``DisagreementBonus`` (Plan2Explore, Sekar et al. 2020; VIPER's exploration,
``kind="disagreement"``): ``ensemble`` one-step MLPs each predict the next posterior stochastic
state (flattened one-hot [stoch * classes], DreamerV2's ``disag_target: stoch``) from the
action-conditional features of a step and the action taken there; they are trained on replay
(features detached, transitions across an episode start left out). In imagination the bonus of
state t is the disagreement about where the policy's next action leads, the standard deviation
over the ensemble's predictions averaged over the target's dimensions, normalised by the same
StreamNorm, times beta; it is added to the reward head's prediction, so the actor seeks states
the world model cannot predict yet. Gradients reach the actor through the features and actions
(dynamics back-propagation), never the ensemble's weights. VIPER trains a second critic on this
bonus and weights the two critics equally after normalising their returns; here one critic
learns the sum of the standardised VIPER reward and the normalised bonus (beta 1), the same
equal weighting in a single critic.

All of it is batched tensor code, in float32 also under a caller's bf16 autocast (distances
between nearby projections would not survive bf16 rounding). Projections, queues and
normalisers are buffers, so they are saved and restored with the module's state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from apv_hub.config import IntrinsicConfig
from apv_hub.nets import MLP, autocast_off


def stream_normalise(values: Tensor, magnitude: Tensor, config: IntrinsicConfig) -> Tensor:
    """Update the running mean of |values| (float64 buffer ``magnitude``, in place) with this
    batch, then divide ``values`` by it (+ eps): DreamerV2's StreamNorm."""
    m = config.norm_momentum
    batch_mag = values.detach().abs().mean().to(torch.float64)
    # Written through a [1] view: torch.compile (AOTAutograd, torch 2.13) silently drops an
    # in-place write to a 0-dim float64 input (tests/test_compile.py catches it).
    magnitude.view(1).copy_((m * magnitude + (1 - m) * batch_mag).view(1))
    return values / (magnitude.to(values.dtype) + config.norm_eps)


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
        """Mean L2 distance of each vector [N, P] to its k nearest queue entries -> [N]
        (the ``min(k, filled)`` nearest while fewer than k entries are filled).

        The search runs over the whole fixed-size queue with the unfilled entries masked to an
        infinite distance, so its shapes never change and the host never reads the fill count:
        no sync, and a compiled step is not recompiled as the queue fills. Call `push` first.
        """
        # Direct differences, not the |x|^2 + |y|^2 - 2xy shortcut, which loses the small
        # distances (a vector to itself) to cancellation in float32.
        dist = torch.cdist(vectors, self.queue, compute_mode="donot_use_mm_for_euclid_dist")
        filled = torch.arange(len(self.queue), device=dist.device) < self.queue_count
        dist = dist.masked_fill(~filled, torch.inf)
        k = min(self.config.k, len(self.queue))
        nearest = dist.topk(k, dim=-1, largest=False).values
        # The unfilled entries sort last; with fewer than k filled, average the filled ones.
        count = torch.clamp(self.queue_count, max=k).to(nearest.dtype)
        return nearest.where(nearest.isfinite(), 0.0).sum(-1) / count

    def normalise(self, bonus: Tensor) -> Tensor:
        """Update the running mean of |bonus| with this batch, then divide by it (+ eps)."""
        return stream_normalise(bonus, self.norm_mag, self.config)

    @torch.no_grad()
    def forward(self, af_feat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
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
            "bonus_raw_mean": raw.mean(),
            "bonus_mean": bonus.mean(),
            "bonus_norm_mag": self.norm_mag.clone(),
            "bonus_queue_fill": self.queue_count / self.config.queue_size,
        }
        return self.config.beta * bonus, metrics


class DisagreementBonus(nn.Module):
    """Plan2Explore's ensemble: (features [..., F], action [..., A]) -> the next stochastic
    state [..., S], ``ensemble`` times; its disagreement is the exploration bonus (module doc)."""

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        target_dim: int,
        config: IntrinsicConfig | None = None,
        act: str = "elu",
    ) -> None:
        super().__init__()
        self.config = config = config or IntrinsicConfig(kind="disagreement")
        self.heads = nn.ModuleList(
            MLP(
                feat_dim + action_dim,
                target_dim,
                config.ensemble_units,
                config.ensemble_layers,
                act,
            )
            for _ in range(config.ensemble)
        )
        self.register_buffer("norm_mag", torch.tensor(config.norm_init, dtype=torch.float64))

    def predict(self, feat: Tensor, action: Tensor) -> Tensor:
        """Every model's prediction: feat [..., F], action [..., A] -> [K, ..., S]."""
        inputs = torch.cat([feat, action.to(feat.dtype)], -1)
        return torch.stack([head(inputs) for head in self.heads])

    def loss(
        self, feat: Tensor, action: Tensor, stoch: Tensor, is_first: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Squared error of each model on the replay transitions t -> t + 1 of a batch ->
        (loss, metrics). feat [B, T, F] (posterior features), action [B, T, A] (action[t] led
        to step t), stoch [B, T, ...] (posterior samples), is_first bool [B, T]."""
        inputs, nxt = feat[:, :-1].detach(), action[:, 1:]
        target = stoch[:, 1:].flatten(2).detach().float()
        error = (self.predict(inputs, nxt).float() - target).pow(2).mean(-1)  # [K, B, T - 1]
        keep = (~is_first[:, 1:]).float()
        loss = (error * keep).sum() / (keep.sum() * len(self.heads)).clamp_min(1.0)
        return loss, {"ensemble_loss": loss.detach()}

    def imagined_reward(self, seq: dict[str, Tensor]) -> Tensor:
        """Bonus of imagined states: seq["feat"] [N, H + 1, F], seq["action"] [N, H + 1, A]
        (action[t] led to t) -> beta * normalised disagreement [N, H + 1] about step t's next
        state (the last step has no next action: 0, and lambda-returns never read it)."""
        preds = self.predict(seq["feat"][:, :-1], seq["action"][:, 1:])  # [K, N, H, S]
        disagreement = preds.float().std(0).mean(-1)
        bonus = stream_normalise(disagreement, self.norm_mag, self.config)
        bonus = torch.cat([bonus, bonus.new_zeros(len(bonus), 1)], 1)
        return self.config.beta * bonus  # float32, like every reward of imagination
