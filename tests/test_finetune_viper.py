"""Fine-tuning with VIPER rewards (variant viper): a short real run on SlideToCenter with a tiny
reward model, the rewards stored in replay against the reward model's own scores, the task
reward kept beside them, exact resume, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apv_hub import APVAgent
from apv_hub.config import ConfigError
from apv_hub.replay import load_episode
from apv_hub.training.checkpoint import latest_checkpoint, list_checkpoints
from apv_hub.training.commands import finetune_main as main
from apv_hub.training.configs import FinetuneConfig
from apv_hub.training.finetune import finetune
from apv_hub.viper import VIPERConfig, VIPERRewardModel
from apv_hub.weights import load_tensors
from tests.finetune_helpers import SLIDE_ENV, SlideToCenter, slide_config
from tests.pretrain_helpers import assert_same_tensors, checkpoint_tensors, learning_rows

BAR = 8  # SlideToCenter's bar width at 32x32


def slide_frames(n: int = 24) -> torch.Tensor:
    """SlideToCenter frames with the bar swept across: uint8 [n, 3, 32, 32]."""
    env = SlideToCenter(size=32)
    frames = []
    for x in np.linspace(-1, 1, n):
        env.x = float(x)
        frames.append(env.render().transpose(2, 0, 1))
    return torch.from_numpy(np.stack(frames))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    """A tiny unconditional reward model (windows of 4 frames 2 steps apart) whose prior is
    perturbed so that rewards depend on the context, with codebook and statistics from
    SlideToCenter frames."""
    torch.manual_seed(0)
    model = VIPERRewardModel(VIPERConfig.preset("tiny", prior={"frame_skip": 2}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.prior.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    frames = slide_frames()
    model.tokenizer.init_codebook(frames[None], generator=torch.Generator().manual_seed(0))
    model.update_reward_stats(frames[None])
    model.training_info = {"data": ["SlideToCenter sweeps"]}
    folder = tmp_path_factory.mktemp("viper") / "reward-model"
    model.save_pretrained(folder)
    return folder


def viper_config(reward_model: Path, **overrides) -> FinetuneConfig:
    base = {
        "total_env_steps": 240,
        "prefill": 60,
        "pretrain_updates": 2,
        "train_every": 10,
        "eval_every": 120,
        # At the checkpoints (multiples of 120), not from prefill's end: resumes align.
        "eval_from_prefill": False,
        "eval_episodes": 1,
        "checkpoint_every": 120,
        "log_every": 60,
        "agent.batch_size": 4,
        "agent.seq_len": 8,
        "relabel_segment": 8,
    }
    return slide_config("viper", reward_model=str(reward_model), **{**base, **overrides})


def bar_position(frame: np.ndarray) -> float:
    """The SlideToCenter bar's x in [-1, 1] read off a frame [3, 32, 32]: the environment draws
    at 64x64 and the frame is scaled down, so the bar's edge is known to 2 pixels (x to 1/12)."""
    left = int(np.flatnonzero(frame[0, 0] >= 128)[0])
    return left / (32 - BAR) * 2 - 1


def test_short_viper_run_stores_the_reward_models_scores_and_keeps_the_task_reward(
    reward_model, tmp_path
):
    config = viper_config(reward_model).override({"video": True})
    config.save(tmp_path / "config.json")
    out = tmp_path / "run"
    assert (
        main(["--config", str(tmp_path / "config.json"), "--out", str(out), "--no-progress"]) == 0
    )

    # Curve (task return), video, checkpoints, card naming the reward model and the bonus.
    rows = json.loads((out / "eval.json").read_text())
    assert [r["env_steps"] for r in rows] == [120, 240] and "return_mean" in rows[0]
    assert sorted(p.name for p in (out / "videos").glob("*.mp4")) == [
        "eval-000000120.mp4",
        "eval-000000240.mp4",
    ]
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [120, 240]
    agent = APVAgent.from_pretrained(out / "model")
    assert agent.config.variant() == "viper" and agent.disagreement is not None
    card = (out / "model" / "README.md").read_text()
    assert f"- Reward: VIPER reward model `{reward_model}`" in card
    assert "Plan2Explore disagreement of 4 one-step models" in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[-1]["replay/viper_calls"] > 0 and "train/imag_intrinsic_mean" in metrics[-1]
    assert np.isfinite(metrics[-1]["replay/viper_return"])

    # Every stored episode: rewards are the reward model's standardised scores of its frames
    # (scored in pieces of 8 steps per call, context carried between them), the task reward is
    # the environment's -|x| of the bar's position in each frame.
    model = VIPERRewardModel.from_pretrained(reward_model)
    episodes = sorted((latest_checkpoint(out / "checkpoints") / "replay-rank0/episodes").iterdir())
    assert len(episodes) == 240 // 20
    for path in episodes:
        episode = load_episode(path)
        frames = torch.from_numpy(episode["image"])[None]
        expected = model.score(frames, standardize=True)[0].numpy()
        np.testing.assert_allclose(episode["reward"], expected, rtol=1e-5, atol=1e-4)
        assert episode["reward"].dtype == np.float32 and len(episode["reward"]) == 21
        task = episode["task_reward"][1:]
        bars = np.array([-abs(bar_position(f)) for f in episode["image"][1:]])
        np.testing.assert_allclose(task, bars, atol=1 / 12 + 1e-6)
        assert episode["task_reward"][0] == 0.0


def test_resume_of_a_viper_run_equals_the_uninterrupted_run(reward_model, tmp_path):
    whole = finetune(viper_config(reward_model), tmp_path / "whole", progress=False)
    finetune(viper_config(reward_model, total_env_steps=120), tmp_path / "split", progress=False)
    split = finetune(viper_config(reward_model), tmp_path / "split", resume=True, progress=False)

    assert APVAgent.from_pretrained(split).num_updates > 10
    ckpt_a = latest_checkpoint(tmp_path / "whole" / "checkpoints")
    ckpt_b = latest_checkpoint(tmp_path / "split" / "checkpoints")
    # Agent (with the ensemble and its normaliser), optimisers (with the ensemble's) and the
    # final model, bit for bit.
    tensors = checkpoint_tensors(ckpt_a)
    assert "opt/intrinsic/0/exp_avg" in tensors and "model/disagreement.norm_mag" in tensors
    assert_same_tensors(tensors, checkpoint_tensors(ckpt_b))
    assert_same_tensors(
        load_tensors(whole / "model.safetensors")[0], load_tensors(split / "model.safetensors")[0]
    )

    def rewards(ckpt: Path) -> list[list[float]]:
        files = sorted((ckpt / "replay-rank0" / "episodes").iterdir())
        return sorted(load_episode(p)["reward"].tolist() for p in files)

    assert rewards(ckpt_a) == rewards(ckpt_b)
    relabel_a = json.loads((ckpt_a / "replay-rank0" / "relabel.json").read_text())
    assert relabel_a == json.loads((ckpt_b / "replay-rank0" / "relabel.json").read_text())

    assert learning_rows(tmp_path / "whole") == learning_rows(tmp_path / "split")
    assert json.loads((tmp_path / "whole" / "eval.json").read_text()) == json.loads(
        (tmp_path / "split" / "eval.json").read_text()
    )


def test_viper_settings_are_checked_before_a_run_starts(reward_model, tmp_path, capsys):
    args = ["--env", "dmc/walker-walk", "--variant", "viper", "--out", str(tmp_path / "run")]
    assert main([*args, "--reward-model", str(reward_model), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["reward_model"] == str(reward_model) and printed["preset_name"] == "dmc"
    assert printed["agent"]["intrinsic"]["kind"] == "disagreement"
    assert not printed["agent"]["world_model"]["stacked"]
    assert main(args) == 2
    assert "pass --reward-model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="pass --reward-model"):
        FinetuneConfig.preset("tiny", "viper", env=SLIDE_ENV)
    with pytest.raises(ConfigError, match="variant apv learns from the task reward"):
        FinetuneConfig.preset("tiny", "apv", env=SLIDE_ENV, reward_model=str(reward_model))
    # The environment renders 64x64 frames, the reward model scores 32x32 ones.
    config = viper_config(reward_model).override({"env_options.render_size": 64})
    config = config.override({"agent.video.image_size": 64, "agent.video.encoder_kernels": [4] * 4})
    config = config.override({"agent.video.decoder_kernels": [5, 5, 6, 6]})
    with pytest.raises(ConfigError, match="set env_options.render_size=32"):
        finetune(config, tmp_path / "run", progress=False)
    # An unconditional model takes no class.
    with pytest.raises(ConfigError, match="reward_class: this reward model is unconditional"):
        finetune(viper_config(reward_model, reward_class="walk"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
