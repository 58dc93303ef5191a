"""Synthetic videos with known dynamics, for smoke runs and learning tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def moving_squares(
    num_videos: int, length: int, size: int = 64, square: int = 12, seed: int = 0
) -> Tensor:
    """White squares moving at constant velocity on black, bouncing off the borders.

    Returns uint8 frames [num_videos, length, 3, size, size]. Each video draws its start position
    uniformly and its velocity from 2-4 pixels per frame in each axis, with random signs.
    """
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_videos, length, 3, size, size), np.uint8)
    span = size - square
    pos = rng.uniform(0, span, (num_videos, 2))
    vel = rng.uniform(2, 4, (num_videos, 2)) * rng.choice([-1, 1], (num_videos, 2))
    for t in range(length):
        for v in range(num_videos):
            y, x = np.round(pos[v]).astype(int)
            frames[v, t, :, y : y + square, x : x + square] = 255
        pos += vel
        # Reflect off the borders: position mirrored back inside, velocity flipped.
        low, high = pos < 0, pos > span
        pos[low], pos[high] = -pos[low], 2 * span - pos[high]
        vel[low | high] *= -1
    return torch.from_numpy(frames)
