"""Randomness: named seed streams, and the random state of a process saved and restored.

Every random number generator of a run gets its seed from the run's seed,
a stream name and indices, so no two generators share a stream and each is reproducible alone.

The stream numbers are fixed once (a new stream gets a new number), so a seed keeps its meaning
across versions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from apv_hub.io import write_json
from apv_hub.weights import load_tensors, save_tensors

STREAMS: dict[str, int] = {
    "train_episodes": 0,  # environment seed of each training episode (rank, slot, episode)
    "eval_episodes": 1,  # environment seed of each evaluation episode (index)
    "actions": 2,  # random actions while prefilling (rank)
    "torch": 3,  # the torch generator of a process (rank)
    "replay": 4,  # replay sampling (rank)
    "eval_pool": 5,  # evaluation environments' own seeds (rank)
    "steps": 6,  # the torch generator re-seeded before a pre-training step (rank, step)
    "eval_clips": 7,  # the fixed clips of the pre-training evaluation video
    "data": 8,  # the clips a pre-training process draws (with rank sharding)
    "codebook_init": 9,  # the frames and k-means draws of a VIPER tokenizer's codebook init
}


def derive_seed(seed: int, stream: str, *indices: int) -> int:
    """A 32-bit seed for ``stream`` (a name of `STREAMS`) at ``indices``, from the run's seed."""
    if stream not in STREAMS:
        raise KeyError(f"unknown seed stream {stream!r}; known: {', '.join(STREAMS)}")
    entropy = [int(seed), STREAMS[stream], *map(int, indices)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def save_rng_state(folder: Path, rank: int, generators: Mapping[str, np.random.Generator]) -> None:
    """This process's random state: torch (and CUDA) generators as tensors, numpy generators'
    bit-generator states as JSON, in ``rank<r>.safetensors`` / ``rank<r>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    save_tensors(tensors, folder / f"rank{rank}.safetensors")
    states = {name: g.bit_generator.state for name, g in generators.items()}
    write_json(folder / f"rank{rank}.json", {"rank": rank, "generators": states})


def load_rng_state(
    folder: Path, rank: int, generators: Mapping[str, np.random.Generator] | None = None
) -> None:
    """Inverse of `save_rng_state` (torch and CUDA always; the named numpy generators if given)."""
    tensors, _ = load_tensors(folder / f"rank{rank}.safetensors")
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if generators:
        saved = json.loads((folder / f"rank{rank}.json").read_text())["generators"]
        for name, generator in generators.items():
            generator.bit_generator.state = saved[name]
