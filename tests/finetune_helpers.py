"""A small pixel task for the fine-tuning tests, and builders shared by those tests.

``SlideToCenter``: a red bar must be slid onto a green line in the middle of the frame; it
starts at a random place and the reward is minus its distance to the line at every step. The
whole state is visible in the image, so a pixel-based agent can solve it, while a random policy
stays about where it started. Registered with Gymnasium as
``tests.finetune_helpers:SlideToCenter-v0``, so ``apv_hub.envs.make(SLIDE_ENV)`` builds it in
pool worker processes too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from apv_hub import APVConfig, APVVideoModel
from apv_hub.training.configs import FinetuneConfig

ROOT = Path(__file__).resolve().parent.parent

SLIDE_ENV = "gym/tests.finetune_helpers:SlideToCenter-v0"


class SlideToCenter(gym.Env):
    """Slide a red bar onto the green centre line; reward: minus the bar's distance to it.

    The bar is a full-height vertical stripe (a quarter of the frame wide at 32x32), so where it
    is stands out in every frame; actions move it by up to ``speed`` (x lies in [-1, 1]).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        render_mode: str = "rgb_array",
        size: int = 64,
        speed: float = 0.25,
        nan_reward: bool = False,
    ) -> None:
        self.render_mode, self.size, self.speed = render_mode, size, speed
        # A broken reward signal, for the tests of non-finite losses.
        self.nan_reward = nan_reward
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float64)
        self.x = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.0, 1.0))
        return np.array([self.x]), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.x = float(np.clip(self.x + self.speed * float(np.asarray(action)[0]), -1.0, 1.0))
        reward = float("nan") if self.nan_reward else -abs(self.x)
        return np.array([self.x]), reward, False, False, {}

    def render(self) -> np.ndarray:
        frame = np.zeros((self.size, self.size, 3), np.uint8)
        width = self.size // 4
        mid = self.size // 2
        frame[:, mid - 1 : mid + 1, 1] = 255
        left = int(round((self.x + 1) / 2 * (self.size - width)))
        frame[:, left : left + width, 0] = 255
        return frame


gym.register("SlideToCenter-v0", entry_point=SlideToCenter)


def save_tiny_video_model(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised `tiny` APVVideoModel checkpoint (the pre-trained model stand-in)."""
    torch.manual_seed(seed)
    APVVideoModel(APVConfig.preset("tiny")).save_pretrained(folder)
    return folder


def slide_config(variant: str = "dreamerv2", **overrides: Any) -> FinetuneConfig:
    """A `tiny` run on SlideToCenter at 32x32 pixels, with learning rates raised so that a few
    hundred updates learn the task; ``overrides`` are dotted keys (see FinetuneConfig.override),
    ``reward_model`` the reward model of variant viper.
    """
    reward_model = overrides.pop("reward_model", None)
    config = FinetuneConfig.preset("tiny", variant, env=SLIDE_ENV, reward_model=reward_model)
    settings = {
        "env_options.episode_length": 20,
        "env_options.render_size": 32,
        "agent.video.image_size": 32,
        "agent.video.encoder_kernels": [4, 4, 4],
        "agent.video.decoder_kernels": [6, 4, 6],
        "agent.batch_size": 16,
        "agent.seq_len": 16,
        "agent.world_model.free_nats": 1.0,
        "agent.world_model.lr": 1e-3,
        "agent.behavior.actor_lr": 1e-3,
        "agent.behavior.critic_lr": 1e-3,
        "agent.behavior.horizon": 10,
        "prefill": 400,
        "pretrain_updates": 50,
        "train_every": 4,
        "video": False,
    }
    return config.override({**settings, **overrides})


def run_finetune_script(
    config: FinetuneConfig, out: Path, *args: str, launcher: tuple[str, ...] = (sys.executable,)
) -> subprocess.CompletedProcess:
    """``finetune.py --config <config> --out <out> ARGS`` in processes of their own (plain
    Python, or e.g. ``torchrun ...``), on this checkout with one intra-op thread; the config
    is saved beside ``out``."""
    config_file = out.parent / f"{out.name}-config.json"
    config.save(config_file)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [str(ROOT / "finetune.py"), "--config", str(config_file), "--out", str(out)]
    return subprocess.run(
        [*launcher, *command, *args],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
