"""VIPERRewardModel: video prediction likelihoods as rewards (VIPER, Escontrela et al. 2023).

A frozen tokenizer and video prior trained on expert videos score an agent's own frames:

    from apv_hub.viper import VIPERRewardModel

    model = VIPERRewardModel.from_pretrained("me/viper-dmc")    # Hub repo id or a folder
    rewards = model.score(frames, cls="walker-walk")             # uint8 [B, T, C, H, W] -> [B, T]
    rewards = model.score(frames, cls="walker-walk", standardize=True)   # (r - mean) / std
    model.push_to_hub("me/viper-dmc")                            # safetensors + config + card

**The reward of step t.** The window of step t holds the frames t - (L-1)k, ..., t - k, t
(L = ``context_frames``, k = the prior's ``frame_skip``), each frame tokenized on its own.
``likelihood="conditional"`` (default, the paper's definition) gives
r_t = log p(o_t | the earlier frames of the window), the sum over o_t's tokens of
log p(token | all earlier tokens). ``likelihood="joint"`` (the original code's default) gives the
sum of that conditional term over every frame of the window.

**The first steps of an episode.** Where the window would reach before the episode's first
frame (t - (L-1)k < start), it is cut to the m frames that exist, t - (m-1)k >= start, and placed
at the start of the prior's context (positions 0, 1, ...): r_t is then the conditional term of a
frame that has m - 1 earlier frames in its window, which is exactly a conditional the prior was
trained on (every training window predicts its frame j from j earlier frames), so early rewards
are the same quantity with a shorter context rather than a different one. In particular
r_start = log p(o_start), the unconditional likelihood of the first frame. Nothing is padded or
repeated (a repeated frame would look like a stationary video, which the prior scores as likely).
For ``joint``, a cut window's sum over its m frames is rescaled by L / m, so that every step's
reward is on the scale of an L-frame sum (the original instead gives the first steps a running
mean, a scale L times smaller). ``is_first`` [B, T] marks episode starts inside a row; a row's
first frame always starts one (nothing earlier is visible).

**Properties.** Rewards are causal (r_t depends on frames <= t of its episode only) and each
window is scored on its own, so rewards do not depend on the batch's other rows or their order
(up to float rounding of differently sized matrix products). The windows of an episode's first
steps are prefixes of each other (one chain per phase of the frame skip); ``share_prefixes``
scores each chain with one pass and reads every step's term from it, like a KV cache over a
growing prefix (the plain path, one pass per window, is kept for tests).

**Standardisation.** Raw rewards are log-likelihoods (large negative numbers with a large spread).
``update_reward_stats`` accumulates mean and standard deviation of the rewards of expert videos
(per task class for a class-conditional prior); they are saved with the model and applied by
``score(..., standardize=True)``, for a reward head trained with a squared error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from huggingface_hub import ModelCard
from torch import Tensor, nn

from apv_hub.cards import VIPER_METADATA, viper_model_card
from apv_hub.hub import SafetensorsHubMixin
from apv_hub.viper.config import VIPERConfig
from apv_hub.viper.prior import VideoPrior, evaluating
from apv_hub.viper.tokenizer import VQTokenizer

ClassArg = int | str | Sequence[int | str] | Tensor | None


def episode_starts(is_first: Tensor) -> Tensor:
    """bool [B, T] episode-start marks -> long [B, T]: the index of the latest start <= t (a row's
    first frame always counts as one)."""
    steps = torch.arange(is_first.shape[1], device=is_first.device).expand_as(is_first)
    marks = torch.where(is_first, steps, torch.zeros_like(steps))
    return marks.cummax(dim=1).values


def window_indices(is_first: Tensor, frames: int, skip: int) -> tuple[Tensor, Tensor]:
    """The scoring windows of every step -> (index long [B, T, frames], length long [B, T]).

    Window (b, t) holds frames index[b, t, :length[b, t]], oldest first, ``skip`` steps apart and
    ending at t; length = min(frames, (t - start) // skip + 1) with start the episode's first
    step. Entries past the length repeat t and are never read.
    """
    t = torch.arange(is_first.shape[1], device=is_first.device)
    length = torch.clamp((t - episode_starts(is_first)) // skip + 1, max=frames)
    i = torch.arange(frames, device=is_first.device)
    index = t[:, None] - (length[..., None] - 1 - i) * skip
    index = torch.where(i < length[..., None], index, t[:, None].expand_as(index))
    return index, length


class VIPERRewardModel(nn.Module, SafetensorsHubMixin, **VIPER_METADATA):
    """Tokenizer + prior + scoring settings + reward standardisation statistics.

    Buffers ``reward_count``, ``reward_mean``, ``reward_m2`` (float64 [S], S = number of classes
    or 1) hold the statistics of ``update_reward_stats``; they travel with the weights.
    """

    MODEL_TYPE = "viper-reward"
    CONFIG_CLASS = VIPERConfig
    LOAD_HINTS = {"apv-video": "load it with apv_hub.APVVideoModel.from_pretrained"}

    def __init__(self, config: VIPERConfig | dict | None = None, training: dict | None = None):
        super().__init__()
        if config is None:
            config = VIPERConfig()
        elif isinstance(config, dict):
            config = VIPERConfig.from_dict(config)
        self.config = config
        # What the checkpoint was trained on (data, steps, command, final metrics) for its card.
        self.training_info: dict[str, Any] = dict(training or {})
        self.tokenizer = VQTokenizer(config.tokenizer)
        self.prior = VideoPrior(
            config.prior, config.tokenizer.codebook_size, config.tokenizer.token_grid
        )
        slots = max(config.prior.num_classes, 1)
        for name in ("reward_count", "reward_mean", "reward_m2"):
            self.register_buffer(name, torch.zeros(slots, dtype=torch.float64))

    # Classes ----------------------------------------------------------------------------------

    def class_id(self, name: str) -> int:
        """The class id of a task name of ``config.class_names``."""
        names = self.config.class_names
        if name not in names:
            known = ", ".join(names) if names else "none (this model's classes are unnamed)"
            raise ValueError(f"unknown task class {name!r}; known: {known}")
        return names.index(name)

    def class_tensor(self, cls: ClassArg, batch: int) -> Tensor | None:
        """A class argument (None, an id, a name, one per row, or a tensor) -> long [B] or None."""
        classes = self.config.prior.num_classes
        if cls is None:
            if classes:
                names = list(self.config.class_names)
                raise ValueError(
                    f"this reward model is class-conditional ({classes} classes): pass cls, "
                    f"a class id{f' or one of {names}' if names else ''}"
                )
            return None
        if classes == 0:
            raise ValueError("this reward model is unconditional: pass cls=None")
        if isinstance(cls, Tensor):
            ids = cls.to(torch.long).reshape(-1)
        else:
            items = [cls] if isinstance(cls, (int, str)) else list(cls)
            ids = torch.tensor([self.class_id(c) if isinstance(c, str) else int(c) for c in items])
        if ids.numel() == 1:
            ids = ids.expand(batch)
        if ids.shape != (batch,) or int(ids.min()) < 0 or int(ids.max()) >= classes:
            raise ValueError(f"cls must give {batch} class ids in [0, {classes}), got {cls!r}")
        return ids.to(self.reward_mean.device)

    # Scoring ----------------------------------------------------------------------------------

    def windows(self, is_first: Tensor) -> tuple[Tensor, Tensor]:
        """The scoring windows of every step (see ``window_indices``) with this model's context
        frames and frame skip -> (index [B, T, context_frames], length [B, T])."""
        return window_indices(is_first, self.config.context_frames, self.config.prior.frame_skip)

    @torch.no_grad()
    def score(
        self,
        frames: Tensor,
        cls: ClassArg = None,
        is_first: Tensor | None = None,
        standardize: bool = False,
    ) -> Tensor:
        """Rewards of uint8 frames [B, T, C, H, W] -> float32 [B, T] (on the frames' device).

        ``cls``: the task class (id, name of ``config.class_names``, one per row, or a tensor),
        required iff the prior is class-conditional. ``is_first``: bool [B, T] episode starts
        (default: each row is one episode from t = 0). ``standardize``: (r - mean) / std with the
        statistics of ``update_reward_stats``. Runs in eval mode without gradients.
        """
        self.tokenizer.check_frames(frames)
        with evaluating(self):
            device = self.reward_mean.device
            tokens = self.tokenizer.encode(frames.to(device), self.config.encode_batch_size)
            rewards = self.score_tokens(tokens, cls, is_first, standardize)
        return rewards.to(frames.device)

    @torch.no_grad()
    def score_tokens(
        self,
        tokens: Tensor,
        cls: ClassArg = None,
        is_first: Tensor | None = None,
        standardize: bool = False,
        share_prefixes: bool = True,
        context: int = 0,
    ) -> Tensor:
        """Rewards of tokenized frames long [B, T, h, w] -> float32 [B, T] (see ``score``).

        ``share_prefixes=False`` scores every cut window at an episode start with its own pass
        (the plain path); the default scores each chain of prefixes once. ``context``: the first
        ``context`` steps of every row are only seen by the windows of later steps, not scored
        themselves (their rewards are NaN), e.g. frames already scored in an earlier call.
        """
        self.tokenizer.check_tokens(tokens)
        b, t = tokens.shape[:2]
        cls_ids = self.class_tensor(cls, b)
        if is_first is None:
            is_first = torch.zeros(b, t, dtype=torch.bool)
        if is_first.shape != (b, t):
            raise ValueError(f"is_first must be bool [{b}, {t}], got {tuple(is_first.shape)}")
        is_first = is_first.to(device=tokens.device, dtype=torch.bool)
        index, length = self.windows(is_first)
        full_length = self.config.context_frames
        rewards = torch.zeros(b, t, dtype=torch.float32, device=tokens.device)
        scored = (torch.arange(t, device=tokens.device) >= context).expand(b, t)
        with evaluating(self):
            rows = ((length == full_length) & scored).nonzero()
            self._score_windows(tokens, cls_ids, index, rows, full_length, rewards)
            cut = length < full_length
            if share_prefixes:
                self._score_prefix_chains(tokens, cls_ids, index, length, cut, scored, rewards)
            else:
                for m in range(1, full_length):
                    rows = (cut & (length == m) & scored).nonzero()
                    self._score_windows(tokens, cls_ids, index, rows, m, rewards)
        rewards[:, :context] = float("nan")
        if standardize:
            rewards = self.standardize(rewards, cls_ids)
        return rewards

    def _window_batches(self, tokens, cls_ids, index, rows, m):
        """Yield (rows chunk [n, 2], window tokens [n, m, h, w], cls [n] | None), n >= 1."""
        if len(rows) == 0:
            return
        for chunk in rows.split(self.config.score_batch_size):
            bs, ts = chunk[:, 0], chunk[:, 1]
            windows = tokens[bs[:, None], index[bs, ts, :m]]
            yield chunk, windows, None if cls_ids is None else cls_ids[bs]

    def _score_windows(self, tokens, cls_ids, index, rows, m, rewards) -> None:
        """Score the m-frame windows of steps ``rows`` [n, 2] into ``rewards``."""
        conditional = self.config.likelihood == "conditional"
        for chunk, windows, cls in self._window_batches(tokens, cls_ids, index, rows, m):
            ll = self.prior.frame_log_probs(windows, cls, last_frames=1 if conditional else m)
            value = ll[:, -1] if conditional else ll.sum(1) * (self.config.context_frames / m)
            rewards[chunk[:, 0], chunk[:, 1]] = value

    def _score_prefix_chains(self, tokens, cls_ids, index, length, cut, scored, rewards) -> None:
        """Score the cut windows of episode starts: one pass per chain of prefixes.

        The window of step t - skip is the window of step t without its last frame whenever the
        latter is cut, so a chain ends at a cut step whose successor t + skip is not a cut step of
        the same episode; the chain's steps t - j * skip (j < m) read term m - 1 - j. Only chains
        that end at a ``scored`` step are computed (scored steps are a suffix of each row).
        """
        skip, full_length = self.config.prior.frame_skip, self.config.context_frames
        b, t = cut.shape
        successor_cut = torch.zeros_like(cut)
        if skip < t:
            # t + skip belongs to the same episode exactly when its window is one frame longer.
            same = length[:, skip:] == length[:, :-skip] + 1
            successor_cut[:, :-skip] = cut[:, skip:] & same
        ends = cut & ~successor_cut & scored
        for m in range(1, full_length):
            rows = (ends & (length == m)).nonzero()
            for chunk, windows, cls in self._window_batches(tokens, cls_ids, index, rows, m):
                ll = self.prior.frame_log_probs(windows, cls)  # [n, m]
                if self.config.likelihood == "joint":
                    ll = ll.cumsum(1) * (full_length / torch.arange(1, m + 1, device=ll.device))
                bs, ts = chunk[:, 0], chunk[:, 1]
                for j in range(m):
                    rewards[bs, ts - j * skip] = ll[:, m - 1 - j]

    # Standardisation statistics ---------------------------------------------------------------

    def reset_reward_stats(self) -> None:
        """Forget the reward statistics (before accumulating them on new expert data)."""
        for buf in (self.reward_count, self.reward_mean, self.reward_m2):
            buf.zero_()

    @torch.no_grad()
    def update_reward_stats(
        self, frames: Tensor, cls: ClassArg = None, is_first: Tensor | None = None
    ) -> Tensor:
        """Score expert frames uint8 [B, T, C, H, W] and merge every step's raw reward into the
        statistics of its class -> the raw rewards [B, T].

        Call it on every expert episode (whole episodes, so that episode starts are included as
        the agent will see them) after the prior's final (EMA) weights are in place.
        """
        rewards = self.score(frames, cls, is_first)
        cls_ids = self.class_tensor(cls, frames.shape[0])
        slots = torch.zeros(frames.shape[0], dtype=torch.long) if cls_ids is None else cls_ids
        values = rewards.to(self.reward_mean.device, torch.float64)
        for slot in slots.unique().tolist():
            batch = values[slots.to(values.device) == slot].reshape(-1)
            n, mean = float(batch.numel()), batch.mean()
            m2 = (batch - mean).pow(2).sum()
            count = self.reward_count[slot]
            delta = mean - self.reward_mean[slot]
            total = count + n
            # Chan et al.'s pairwise merge of (count, mean, M2).
            self.reward_mean[slot] += delta * n / total
            self.reward_m2[slot] += m2 + delta.pow(2) * count * n / total
            self.reward_count[slot] = total
        return rewards

    def reward_stats(self) -> dict[str, Tensor]:
        """{"count", "mean", "std"} per class slot (float64 [S]); std is the population std."""
        std = (self.reward_m2 / self.reward_count.clamp_min(1)).sqrt()
        return {"count": self.reward_count.clone(), "mean": self.reward_mean.clone(), "std": std}

    def standardize(self, rewards: Tensor, cls_ids: Tensor | None) -> Tensor:
        """Raw rewards [B, T] -> (r - mean) / std of each row's class."""
        slots = (
            torch.zeros(rewards.shape[0], dtype=torch.long, device=rewards.device)
            if cls_ids is None
            else cls_ids.to(rewards.device)
        )
        stats = self.reward_stats()
        missing = sorted(set(slots.tolist()) - set(stats["count"].nonzero().flatten().tolist()))
        if missing:
            raise RuntimeError(
                f"no reward statistics for class(es) {missing}: call update_reward_stats on "
                "expert videos of those tasks first (or score with standardize=False)"
            )
        mean = stats["mean"].to(rewards.device)[slots].float()
        std = stats["std"].to(rewards.device)[slots].float().clamp_min(1e-6)
        return (rewards - mean[:, None]) / std[:, None]

    # Sizes and Hub integration ----------------------------------------------------------------

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: tokenizer (without the discriminator), prior, total."""
        tokenizer = self.tokenizer.num_parameters()
        counts = {
            "tokenizer": tokenizer["total"] - tokenizer["discriminator"],
            "prior": self.prior.num_parameters(),
        }
        counts["total"] = counts["tokenizer"] + counts["prior"]
        return counts

    def model_card(self, repo_id: str | None = None) -> ModelCard:
        return viper_model_card(self, repo_id=repo_id)
