"""VIPER rewards for fine-tuning: steps enter the replay with the reward a frozen reward model
gives their frames, the task reward kept beside it.

`RewardRelabeller` stands in front of a `ReplayBuffer` (same ``add_batch`` / ``can_sample`` /
``sample`` / ``save`` / ``load`` / ``stats`` / ``len``): the steps of each environment stream
wait in a pending segment; when a segment is full (``segment`` steps), an episode ends, a save
comes or a sample would find too little, the pending steps of every stream are scored in one
batched call and added to the replay, with

- ``reward``: the reward model's reward, standardised with its expert statistics
  (`VIPERRewardModel.score_tokens` with ``standardize=True``): what the world model's reward
  head learns and the agent maximises;
- ``task_reward``: the environment's reward, kept for evaluation only.

A step's window reaches back ``context_span - 1`` steps into its episode, so each stream keeps
the tokens of its episode's latest frames (at most ``context_span - 1``): they are context of
the next call, never re-encoded or re-scored (``score_tokens(..., context=...)``). Episode
starts are the reward model's: a window is cut at ``is_first``. A step is scored once; its
reward never changes afterwards.

Calls happen at the same points in a resumed run as in the uninterrupted one (``save``
flushes, and checkpoints are taken at the same steps), so rewards are identical; after ``load``
the stream contexts are rebuilt from the replay's ongoing episodes. The VIPER returns of the
latest finished training episodes are saved with the replay (``relabel.json``) and reported in
``stats``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from apv_hub.config_base import ConfigError
from apv_hub.io import write_json
from apv_hub.replay import ReplayBuffer

if TYPE_CHECKING:  # The reward model needs transformers: imported when a run has one.
    from apv_hub.viper.reward_model import VIPERRewardModel

STATE_FILE = "relabel.json"
# Finished episodes whose VIPER return `stats` averages.
RECENT_EPISODES = 10


class RewardRelabeller:
    """A replay buffer whose steps get VIPER rewards as they enter it (see the module doc).

    Args:
        replay: the buffer that stores the relabelled steps.
        model: the frozen reward model (on the device it scores on).
        cls: its task class (name or id) for a class-conditional model, else None.
        segment: pending steps per stream that trigger a scoring call.
    """

    def __init__(
        self, replay: ReplayBuffer, model: VIPERRewardModel, cls: str | int | None, segment: int
    ) -> None:
        if segment < 1:
            raise ConfigError(f"the relabelling segment must be at least 1 step, got {segment}")
        self.replay, self.model, self.segment = replay, model.eval().requires_grad_(False), segment
        self.cls = model.class_tensor(cls, 1)
        self.span = model.config.context_span
        self.device = model.reward_mean.device
        self.pending: dict[int, list[dict[str, np.ndarray]]] = {}
        # Per stream: tokens long [c, h, w] of the current episode's latest c <= span - 1 frames,
        # and whether the first of them is the episode's first frame.
        self.context: dict[int, tuple[Tensor, bool]] = {}
        self.returns: dict[int, float] = {}
        self.recent: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.calls = 0
        self.steps_scored = 0

    # The replay interface ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Steps in the replay (scored ones; pending steps are not there yet)."""
        return len(self.replay)

    def add_batch(self, steps: dict[str, Any]) -> None:
        """Queue ``[N, ...]`` steps (one per environment stream, row i to stream i); score and
        store the pending segments when they are full or an episode ended."""
        for i in range(len(steps["reward"])):
            self.pending.setdefault(i, []).append({k: np.asarray(v[i]) for k, v in steps.items()})
        longest = max(len(p) for p in self.pending.values())
        if longest >= self.segment or np.asarray(steps["is_last"]).any():
            self.flush()

    def can_sample(self, seq_len: int) -> bool:
        """`ReplayBuffer.can_sample` (an episode is scored and stored when it ends)."""
        return self.replay.can_sample(seq_len)

    def sample(self, batch_size: int, seq_len: int, device: Any = None) -> Any:
        """`ReplayBuffer.sample`, after scoring the pending steps if the replay holds fewer than
        ``seq_len`` steps without them."""
        if len(self.replay) < seq_len:
            self.flush()
        return self.replay.sample(batch_size, seq_len, device=device)

    def save(self, path: str | Path) -> Path:
        """Score the pending steps, then save the replay and the recent VIPER returns."""
        self.flush()
        path = self.replay.save(path)
        state = {"recent_returns": list(self.recent), "returns": self.returns}
        counts = {"calls": self.calls, "steps_scored": self.steps_scored}
        write_json(Path(path) / STATE_FILE, {**state, **counts})
        return path

    def load(self, path: str | Path) -> None:
        """Load the replay saved by `save` and rebuild every stream's context from its ongoing
        episode."""
        self.replay.load(path)
        state = json.loads((Path(path) / STATE_FILE).read_text())
        self.recent = deque(state["recent_returns"], maxlen=RECENT_EPISODES)
        self.returns = {int(k): v for k, v in state["returns"].items()}
        self.calls, self.steps_scored = state["calls"], state["steps_scored"]
        self.pending, self.context = {}, {}
        c = self.span - 1
        for stream, episode in self.replay.ongoing.items():
            latest = episode.arrays()["image"][max(len(episode) - c, 0) :]
            self.context[stream] = (
                self._encode(torch.from_numpy(latest)[None])[0],
                len(episode) <= c,
            )

    @property
    def stats(self) -> dict[str, float]:
        """The replay's counters, the scoring calls and the mean VIPER return of the latest
        finished training episodes."""
        recent = float(np.mean(self.recent)) if self.recent else float("nan")
        return {
            **self.replay.stats,
            "viper_calls": self.calls,
            "viper_steps_scored": self.steps_scored,
            "viper_pending_steps": sum(len(p) for p in self.pending.values()),
            "viper_return": recent,
        }

    # Scoring -----------------------------------------------------------------------------------

    def _encode(self, frames: Tensor) -> Tensor:
        """uint8 frames [B, T, C, H, W] -> tokens long [B, T, h, w] on the model's device."""
        if frames.shape[1] == 0:
            g = self.model.tokenizer.token_grid
            return torch.zeros(*frames.shape[:2], g, g, dtype=torch.long, device=self.device)
        encode_batch = self.model.config.encode_batch_size
        return self.model.tokenizer.encode(frames.to(self.device), encode_batch)

    @torch.no_grad()
    def flush(self) -> None:
        """Score every stream's pending steps in one call and add them to the replay."""
        streams = sorted(s for s, steps in self.pending.items() if steps)
        if not streams:
            return
        n = len(self.pending[streams[0]])
        if any(len(self.pending[s]) != n for s in streams):
            raise RuntimeError("every stream must get one step in each add_batch")
        pending = [self.pending[s] for s in streams]
        images = np.stack([np.stack([step["image"] for step in steps]) for steps in pending])
        new = self._encode(torch.from_numpy(images))  # [S, n, h, w]
        # Each row: [padding, the stream's context, its n pending steps], the context columns
        # (c = span - 1) only seen by the pending steps' windows, never scored again.
        c = self.span - 1
        tokens = new.new_zeros(len(streams), c + n, *new.shape[2:])
        tokens[:, c:] = new
        firsts = [[bool(step["is_first"]) for step in steps] for steps in pending]
        is_first = torch.zeros(len(streams), c + n, dtype=torch.bool)
        is_first[:, c:] = torch.tensor(firsts)
        for row, s in enumerate(streams):
            context, starts_episode = self.context.get(s, (new[row, :0], True))
            tokens[row, c - len(context) : c] = context
            # Windows are cut where the episode starts, so they never reach the padding.
            is_first[row, c - len(context)] |= starts_episode
        cls = None if self.cls is None else self.cls.expand(len(streams))
        rewards = self.model.score_tokens(
            tokens, cls, is_first.to(self.device), standardize=True, context=c
        )
        rewards = rewards[:, c:].cpu().numpy()
        for row, s in enumerate(streams):
            self._store(s, rewards[row], new[row], firsts[row])
        self.pending = {}
        self.calls += 1
        self.steps_scored += len(streams) * n

    def _store(self, stream: int, rewards: np.ndarray, tokens: Tensor, firsts: list[bool]) -> None:
        """Add a stream's scored steps to the replay and carry its episode's context on."""
        for step, reward in zip(self.pending[stream], rewards, strict=True):
            step = {**step, "task_reward": step["reward"], "reward": np.float32(reward)}
            self.replay.add(step, stream)
            total = 0.0 if step["is_first"] else self.returns.get(stream, 0.0)
            self.returns[stream] = total + float(reward)
            if step["is_last"]:
                self.recent.append(self.returns[stream])
        c = self.span - 1
        starts = [i for i, first in enumerate(firsts) if first]
        if starts:  # The current episode began in this segment.
            episode, starts_episode = tokens[starts[-1] :], True
        else:
            context, starts_episode = self.context.get(stream, (tokens[:0], True))
            episode = torch.cat([context, tokens])
        if len(episode) > c:
            episode, starts_episode = episode[len(episode) - c :], False
        self.context[stream] = (episode, starts_episode)


def relabelling_replay(
    make_replay: Callable[[int, int], ReplayBuffer],
    reward_model: str | None,
    reward_class: str | None,
    env: str,
    segment: int,
    image_shape: tuple[int, ...],
    device: torch.device | str,
) -> Callable[[int, int], ReplayBuffer | RewardRelabeller]:
    """The replay factory of a fine-tuning run: ``make_replay`` itself without a reward model;
    with one (folder or Hub repo id), a factory of `RewardRelabeller` in front of its buffers.

    The model is loaded and checked here, before a run starts: its frames must be the
    environment's (``image_shape`` [C, H, W]); a class-conditional model scores as
    ``reward_class``, by default the environment's task (``dmc/walker-walk`` -> ``walker-walk``)
    when it is one of the model's classes; the class needs reward statistics.
    """
    if reward_model is None:
        return make_replay
    from apv_hub.viper.reward_model import VIPERRewardModel

    model = VIPERRewardModel.from_pretrained(reward_model).to(device)
    tok = model.config.tokenizer
    expected = (tok.image_channels, tok.image_size, tok.image_size)
    if tuple(image_shape) != expected:
        raise ConfigError(
            f"reward model {reward_model} scores frames {list(expected)}, the environment "
            f"renders {list(image_shape)}: set env_options.render_size={tok.image_size}"
        )
    names = model.config.class_names
    cls: str | int | None = reward_class
    if cls is None and model.config.prior.num_classes:
        task = env.partition("/")[2]
        if task not in names:
            raise ConfigError(
                f"reward model {reward_model} is class-conditional and {task!r} is not one of its "
                f"classes ({', '.join(names) or 'unnamed'}): set reward_class"
            )
        cls = task
    if isinstance(cls, str) and cls.isdigit() and cls not in names:
        cls = int(cls)
    try:
        ids = model.class_tensor(cls, 1)
    except ValueError as e:
        raise ConfigError(f"reward_class: {e}") from None
    slot = 0 if ids is None else int(ids[0])
    if model.reward_stats()["count"][slot] == 0:
        raise ConfigError(
            f"reward model {reward_model} has no reward statistics for class {cls!r}: "
            "train it with apv-viper-train (or call update_reward_stats on expert videos)"
        )
    return lambda capacity, seed: RewardRelabeller(make_replay(capacity, seed), model, cls, segment)
