"""Episode replay buffer for fine-tuning: incremental streams, uniform sequences, FIFO, resume.

Steps arrive one at a time per environment stream (``add(step, stream)``, or ``add_batch`` for
the ``[N, ...]`` observations of `apv_hub.envs.EnvPool`). A step is a dict in the
`apv_hub.envs.PixelEnv` convention: ``image`` uint8 ``[3, H, W]``, ``action`` float32 ``[A]`` (the
action that led to this observation; zeros on the first step), ``reward`` float32, ``is_first``,
``is_last``, ``is_terminal`` bool, and optionally other scalars such as ``success``.

Sampling follows the released DreamerV2/APV replay (``replay: {ongoing: False, minlen: T,
maxlen: T, prioritize_ends: True}``): a sequence of ``T`` steps is one slice of one *finished*
episode, so it never crosses an episode boundary, and its first step is marked ``is_first`` (the
world model starts its state there). The episode is drawn uniformly among the finished ones
(not weighted by length); the slice's start index ``i`` is then drawn as
``min(randint(0, L - T + 1 + T), L - T)`` for an episode of ``L`` steps, so the slice that ends
at the episode's last step gets ``T + 1`` of the ``L + 1`` draws (about 10% for Meta-world's
501 steps and T = 50): episode ends, where Meta-world's successes happen, are sampled more
often. ``prioritize_ends=False`` draws the start uniformly in ``[0, L - T]``.

Short episodes: the release drops an episode of fewer than ``T`` transitions (``L - 1 < T``)
when it is added. Here the sequence length is a sampling argument, so such episodes are kept
(they count towards the capacity and are written to ``directory``) but never sampled; episodes
still being collected are never sampled either. `can_sample` says whether a sequence length
can be served yet (a trainer waits for it after prefill).

Capacity is in steps: when exceeded, whole finished episodes are evicted oldest first.

Persistence:

* ``directory``: every finished episode is also written there as
  ``<timestamp>-<uuid>-<length>.npz`` in the released APV layout (REFERENCE section 4: ``image``
  ``[T, H, W, 3]`` uint8 channels last, ``action``, ``reward``, ``is_first``, ``is_last``,
  ``is_terminal``; ``length`` is ``T - 1`` transitions, DreamerV2's naming), so collected
  experience is also a pre-training corpus.
* ``save(path)`` / ``load(path)``: the whole buffer (episodes, ongoing streams, the sampling
  generator's state, counters) for resuming a run. Files are written atomically (temporary name,
  then rename) and the index ``replay.json`` last, so an interrupted save leaves the previous one
  intact; calling ``save`` again only writes what changed.
"""

from __future__ import annotations

import datetime
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apv_hub.errors import ApvHubError
from apv_hub.io import write_atomic

REQUIRED_KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal")
INDEX_FILE = "replay.json"
FORMAT_VERSION = 1


class ReplayError(ApvHubError, ValueError):
    """A step, episode or saved buffer that does not fit the replay buffer's layout."""


class Episode:
    """One episode's steps in growable arrays ``{key: [T, ...]}`` (``len(episode)`` is T)."""

    def __init__(self, step: dict[str, np.ndarray] | None = None, name: str = "") -> None:
        self.data: dict[str, np.ndarray] = {}
        self.length = 0
        self.name = name
        if step is not None:
            self.append(step)

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray], name: str = "") -> Episode:
        episode = cls(name=name)
        episode.data = {key: np.asarray(value) for key, value in data.items()}
        episode.length = len(data["reward"])
        return episode

    def __len__(self) -> int:
        return self.length

    def append(self, step: dict[str, np.ndarray]) -> None:
        if self.data and set(step) != set(self.data):
            raise ReplayError(
                f"step keys {sorted(step)} differ from the episode's {sorted(self.data)}"
            )
        if not self.data:
            # Start small and double: appends stay amortised O(1) without knowing the length.
            self.data = {
                k: np.empty((16, *np.shape(v)), np.asarray(v).dtype) for k, v in step.items()
            }
        elif self.length == len(self.data["reward"]):
            self.data = {k: np.concatenate([v, np.empty_like(v)]) for k, v in self.data.items()}
        for key, value in step.items():
            self.data[key][self.length] = value
        self.length += 1

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored steps, ``{key: [T, ...]}`` (views, no copy)."""
        return {key: value[: self.length] for key, value in self.data.items()}

    def trim(self) -> None:
        """Release the unused capacity (called when the episode is finished)."""
        self.data = {key: value.copy() for key, value in self.arrays().items()}


class ReplayBuffer:
    """Episodes of pixel observations; samples ``[B, T]`` sequences within finished episodes.

    Args:
        capacity: maximum stored steps; the oldest finished episodes are evicted beyond it.
        directory: if given, every finished episode is also written there as an APV npz file.
        seed: seed of the sampling generator (its state is saved with the buffer).
        prioritize_ends: draw slices ending at an episode's last step more often, as the
            release does (module docstring).

    Example:
        >>> replay = ReplayBuffer(capacity=1_000_000, directory="runs/ft/episodes", seed=0)
        >>> obs = pool.reset()
        >>> replay.add_batch(obs)                       # one stream per pool slot
        >>> obs = pool.step(actions); replay.add_batch(obs)
        >>> batch = replay.sample(16, 50)               # batch["image"]: uint8 [16, 50, 3, 64, 64]
    """

    def __init__(
        self,
        capacity: int,
        *,
        directory: str | Path | None = None,
        seed: int = 0,
        prioritize_ends: bool = True,
    ) -> None:
        if capacity < 1:
            raise ReplayError(f"capacity must be >= 1 step, got {capacity}")
        self.capacity = capacity
        self.directory = Path(directory) if directory is not None else None
        self.rng = np.random.default_rng(seed)
        self.prioritize_ends = prioritize_ends
        self.episodes: list[Episode] = []  # Finished, oldest first.
        self.ongoing: dict[int, Episode] = {}  # Per stream, episodes still being collected.
        self.steps_added = 0
        self.episodes_finished = 0
        self.episodes_evicted = 0
        self._keys: tuple[str, ...] | None = None
        self._size = 0

    def __len__(self) -> int:
        """Stored steps (finished and ongoing episodes)."""
        return self._size

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({len(self)}/{self.capacity} steps, {len(self.episodes)} episodes, "
            f"{len(self.ongoing)} ongoing)"
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters for logging."""
        return {
            "replay_steps": len(self),
            "replay_episodes": len(self.episodes),
            "replay_steps_added": self.steps_added,
            "replay_episodes_finished": self.episodes_finished,
            "replay_episodes_evicted": self.episodes_evicted,
        }

    def add(self, step: dict[str, Any], stream: int = 0) -> None:
        """Append one step to ``stream``'s episode; ``is_first`` starts one, ``is_last`` ends it.

        A stream whose episode is interrupted (a new ``is_first`` before ``is_last``) has its
        episode closed as truncated (``is_last=True`` set on its final stored step).
        """
        step = self._check_step(step)
        episode = self.ongoing.get(stream)
        if step["is_first"]:
            if episode is not None:
                episode.data["is_last"][len(episode) - 1] = True
                self._finish(stream)
            self.ongoing[stream] = Episode(step)
        elif episode is None:
            raise ReplayError(f"stream {stream}'s first step must have is_first=True")
        else:
            episode.append(step)
        self.steps_added += 1
        self._size += 1
        if step["is_last"]:
            self._finish(stream)
        self._evict()

    def add_batch(self, steps: dict[str, Any]) -> None:
        """Add ``[N, ...]`` steps (one per `EnvPool` slot); row ``i`` goes to stream ``i``."""
        num = len(steps["reward"])
        for i in range(num):
            self.add({key: value[i] for key, value in steps.items()}, stream=i)

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        """Add a whole finished episode ``{key: [T, ...]}`` (images channels first)."""
        episode = {key: np.asarray(value) for key, value in episode.items()}
        missing = [key for key in REQUIRED_KEYS if key not in episode]
        if missing:
            raise ReplayError(f"episode is missing key(s) {missing}")
        if not episode["is_first"][0]:
            raise ReplayError("an episode's first step must have is_first=True")
        self._check_step({key: value[0] for key, value in episode.items()})
        self.episodes.append(Episode.from_arrays(episode))
        self.steps_added += len(episode["reward"])
        self._size += len(episode["reward"])
        self._on_finished(self.episodes[-1])
        self._evict()

    def can_sample(self, seq_len: int) -> bool:
        """Whether some finished episode holds a ``seq_len``-step sequence (module docstring)."""
        return any(_eligible(episode, seq_len) for episode in self.episodes)

    def sample(
        self, batch_size: int, seq_len: int, device: str | torch.device | None = None
    ) -> dict[str, np.ndarray] | dict[str, torch.Tensor]:
        """``batch_size`` sequences of ``seq_len`` steps, each within one finished episode:
        ``{key: [B, T, ...]}`` with ``is_first[:, 0]`` True and nowhere else.

        ``image`` is uint8 ``[B, T, 3, H, W]``, ``action`` float32 ``[B, T, A]``, ``reward``
        float32 ``[B, T]``, flags bool ``[B, T]``. Numpy arrays, or torch tensors on ``device``.
        """
        episodes = [e.arrays() for e in self.episodes if _eligible(e, seq_len)]
        if not episodes:
            longest = max((len(e) for e in self.episodes), default=0)
            raise ReplayError(
                f"replay holds no finished episode longer than seq_len={seq_len} steps "
                f"({len(self.episodes)} finished, the longest {longest} steps; "
                f"{len(self.ongoing)} still being collected): collect more before sampling"
            )
        batch: dict[str, list[np.ndarray]] = {key: [] for key in episodes[0]}
        for choice in self.rng.integers(0, len(episodes), size=batch_size):
            episode = episodes[choice]
            total = len(episode["reward"])
            upper = total - seq_len + 1 + (seq_len if self.prioritize_ends else 0)
            start = min(int(self.rng.integers(0, upper)), total - seq_len)
            for key, value in episode.items():
                batch[key].append(value[start : start + seq_len])
        out = {key: np.stack(values) for key, values in batch.items()}
        out["is_first"] = np.zeros_like(out["is_first"])
        out["is_first"][:, 0] = True
        if device is None:
            return out
        return {key: torch.from_numpy(value).to(device) for key, value in out.items()}

    def dataset(
        self, batch_size: int, seq_len: int, device: str | torch.device | None = None
    ) -> Iterator[dict[str, np.ndarray] | dict[str, torch.Tensor]]:
        """An endless iterator of `sample` batches (reflecting steps added in between)."""
        while True:
            yield self.sample(batch_size, seq_len, device)

    def save(self, path: str | Path) -> Path:
        """Write the whole buffer under ``path`` for `load` (atomic, incremental); returns path."""
        path = Path(path)
        (path / "episodes").mkdir(parents=True, exist_ok=True)
        finished = []
        for episode in self.episodes:
            if not episode.name:
                episode.name = episode_filename(len(episode))
            target = path / "episodes" / episode.name
            if not target.exists():
                save_episode(target, episode.arrays(), compress=False)
            finished.append(episode.name)
        ongoing = {}
        for stream, episode in self.ongoing.items():
            # Ongoing episodes change between saves: a new name per length keeps files immutable.
            name = f"ongoing-{stream}-{uuid.uuid4().hex}-{len(episode)}.npz"
            save_episode(path / "episodes" / name, episode.arrays(), compress=False)
            ongoing[str(stream)] = name
        index = {
            "format_version": FORMAT_VERSION,
            "capacity": self.capacity,
            "episodes": finished,
            "ongoing": ongoing,
            "rng_state": self.rng.bit_generator.state,
            "steps_added": self.steps_added,
            "episodes_finished": self.episodes_finished,
            "episodes_evicted": self.episodes_evicted,
        }
        write_atomic(path / INDEX_FILE, json.dumps(index, indent=1).encode())
        keep = set(finished) | set(ongoing.values())
        for file in (path / "episodes").iterdir():
            if file.name not in keep:
                file.unlink()  # Evicted episodes, old ongoing snapshots, stale temporaries.
        return path

    def load(self, path: str | Path) -> None:
        """Replace the buffer's contents with what `save` wrote under ``path``.

        The capacity given to the constructor applies (oldest episodes are evicted if the saved
        buffer is larger); the sampling generator continues exactly where it was saved.
        """
        path = Path(path)
        index_file = path / INDEX_FILE
        if not index_file.exists():
            raise ReplayError(f"{path} holds no saved replay buffer ({INDEX_FILE} is missing)")
        index = json.loads(index_file.read_text())
        if index.get("format_version") != FORMAT_VERSION:
            raise ReplayError(
                f"{index_file}: format_version {index.get('format_version')} is not "
                f"{FORMAT_VERSION}"
            )
        folder = path / "episodes"
        self.episodes = [
            Episode.from_arrays(load_episode(folder / name), name) for name in index["episodes"]
        ]
        self.ongoing = {}
        for stream, name in index["ongoing"].items():
            self.ongoing[int(stream)] = Episode.from_arrays(load_episode(folder / name))
        self.rng.bit_generator.state = index["rng_state"]
        self.steps_added = index["steps_added"]
        self.episodes_finished = index["episodes_finished"]
        self.episodes_evicted = index["episodes_evicted"]
        self._size = sum(map(len, self.episodes)) + sum(map(len, self.ongoing.values()))
        self._keys = None
        some = self.episodes[0] if self.episodes else next(iter(self.ongoing.values()), None)
        if some is not None:
            self._keys = tuple(sorted(some.data))
        self._evict()

    def _check_step(self, step: dict[str, Any]) -> dict[str, np.ndarray]:
        missing = [key for key in REQUIRED_KEYS if key not in step]
        if missing:
            raise ReplayError(f"step is missing key(s) {missing}; got {sorted(step)}")
        keys = tuple(sorted(step))
        if self._keys is None:
            self._keys = keys
        elif keys != self._keys:
            raise ReplayError(
                f"step keys {list(keys)} differ from earlier steps' {list(self._keys)}"
            )
        image = np.asarray(step["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ReplayError(f"image must be uint8 [3, H, W], got {image.dtype} {image.shape}")
        out = {key: np.asarray(value) for key, value in step.items()}
        out["action"] = out["action"].astype(np.float32)
        out["reward"] = out["reward"].astype(np.float32)
        for flag in ("is_first", "is_last", "is_terminal"):
            out[flag] = out[flag].astype(bool)
        return out

    def _finish(self, stream: int) -> None:
        episode = self.ongoing.pop(stream)
        episode.trim()
        self.episodes.append(episode)
        self._on_finished(episode)

    def _on_finished(self, episode: Episode) -> None:
        self.episodes_finished += 1
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_episode(self.directory / episode_filename(len(episode)), episode.arrays())

    def _evict(self) -> None:
        while self._size > self.capacity and self.episodes:
            self._size -= len(self.episodes.pop(0))
            self.episodes_evicted += 1


def _eligible(episode: Episode, seq_len: int) -> bool:
    """The release keeps episodes of at least ``seq_len`` transitions (``seq_len + 1`` steps)."""
    return len(episode) - 1 >= seq_len


def episode_filename(length: int) -> str:
    """``<timestamp>-<uuid>-<length>.npz`` for an episode of ``length + 1`` steps (DreamerV2)."""
    timestamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    return f"{timestamp}-{uuid.uuid4().hex}-{length - 1}.npz"


def save_episode(path: str | Path, episode: dict[str, np.ndarray], compress: bool = True) -> Path:
    """Write ``{key: [T, ...]}`` (``image`` ``[T, 3, H, W]``) as an APV npz file, atomically.

    The file stores ``image`` channels last, ``[T, H, W, 3]`` uint8, as the released data does.
    """
    path = Path(path)
    arrays = dict(episode)
    arrays["image"] = np.ascontiguousarray(np.asarray(episode["image"]).transpose(0, 2, 3, 1))
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
    return path


def load_episode(path: str | Path) -> dict[str, np.ndarray]:
    """Read an APV npz episode: ``{key: [T, ...]}`` with ``image`` ``[T, 3, H, W]`` uint8."""
    with np.load(path) as f:
        episode = {key: f[key] for key in f.files}
    image = episode.get("image")
    if image is None or image.ndim != 4 or image.shape[-1] != 3:
        raise ReplayError(
            f"{path}: 'image' must be [T, H, W, 3], got {getattr(image, 'shape', None)}"
        )
    episode["image"] = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    return episode
