"""Fine-tuning: configs and presets, real short runs on Meta-world and DMC, exact resume,
non-finite losses, checkpoint helpers, the learning-curve and video writers, and the evaluate
command on an agent pushed to the local Hub."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import decord
import numpy as np
import pytest
import torch

from apv_hub import APVAgent
from apv_hub.config import ConfigError
from apv_hub.data.video import video_grid, write_video
from apv_hub.evaluation.episodes import EpisodeResult, bootstrap_ci, summarize
from apv_hub.evaluation.episodes import main as evaluate_main
from apv_hub.replay import load_episode
from apv_hub.training.checkpoint import (
    begin_checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    link_files,
    list_checkpoints,
)
from apv_hub.training.commands import finetune_main as main
from apv_hub.training.configs import FinetuneConfig
from apv_hub.training.finetune import finetune
from apv_hub.training.logging import CurveWriter
from apv_hub.training.run import DivergenceError
from apv_hub.weights import load_tensors
from tests.finetune_helpers import SLIDE_ENV, save_tiny_video_model, slide_config

# Configs ---------------------------------------------------------------------------------------


def test_presets_reproduce_the_paper_settings() -> None:
    mw = FinetuneConfig.preset("metaworld", env="metaworld/drawer-open-v3")
    assert (mw.total_env_steps, mw.prefill, mw.train_every, mw.eval_episodes) == (
        256_000,
        5000,
        5,
        10,
    )
    assert (mw.agent.batch_size, mw.agent.seq_len) == (50, 50)
    assert mw.pretrain_updates == mw.agent.world_model.freeze_pretrained_updates == 100
    assert mw.action_repeat == 1 and mw.agent.intrinsic.beta == 1.0
    dmc = FinetuneConfig.preset("dmc", env="dmc/quadruped-walk")
    # The release's 502K steps are policy steps: 1.004M env steps at action repeat 2, with
    # evaluations at 2K, 22K, ..., 982K env steps and 100 "pretrain" updates.
    assert (dmc.total_env_steps, dmc.prefill, dmc.eval_episodes) == (502_000 * 2, 1000, 1)
    assert dmc.pretrain_updates == mw.pretrain_updates == 100
    points = range(dmc.first_eval, dmc.total_env_steps, dmc.eval_every)
    assert points[:3] == range(2000, 60_000, 20_000) and 982_000 in points
    assert range(mw.first_eval, 250_000, mw.eval_every)[-1] == 245_000
    assert (dmc.agent.batch_size, dmc.agent.seq_len, dmc.action_repeat) == (16, 50, 2)
    assert dmc.agent.world_model.free_nats == 1.0
    assert dmc.agent.world_model.ac_input == "embed_af_feat"
    dv2 = FinetuneConfig.preset("metaworld", "DreamerV2", env="metaworld/reach-v3")
    assert dv2.variant == "dreamerv2" and not dv2.agent.world_model.stacked
    assert FinetuneConfig.preset("tiny", "naive-ft").variant == "naive_finetune"
    assert FinetuneConfig.preset("tiny", "apv-no-pretrain").agent.variant() == "apv_scratch"


def test_overrides_are_checked_and_configs_round_trip(tmp_path: Path) -> None:
    config = FinetuneConfig.preset("tiny", env="dmc/walker-walk").override(
        {
            "agent.world_model.free_nats": 1,
            "env_options.episode_length": 30,
            "total_env_steps": 1e3,
            "seed": 3,
        }
    )
    assert config.agent.world_model.free_nats == 1.0 and config.total_env_steps == 1000
    assert config.env_options == {"episode_length": 30} and config.seed == 3
    config.save(tmp_path / "config.json")
    assert FinetuneConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ConfigError, match="agent.world_model.free_natz.*free_nats"):
        config.override({"agent.world_model.free_natz": 1.0})
    with pytest.raises(ConfigError, match="prefill takes an integer"):
        config.override({"prefill": "many"})
    with pytest.raises(ConfigError, match="video takes true or false"):
        config.override({"video": 1})
    with pytest.raises(ConfigError, match="train_every must be positive"):
        config.override({"train_every": 0})
    with pytest.raises(ConfigError, match="unknown variant 'apv2'"):
        FinetuneConfig.preset("tiny", "apv2")


def test_command_line_help_and_resolved_config(capsys: pytest.CaptureFixture, tmp_path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--pretrained", "--variant", "--resume", "--push-to-hub", "--set", "prefill"):
        assert option in text
    code = main(
        ["--env", "dmc/cartpole-swingup", "--out", str(tmp_path), "--variant", "dreamerv2"]
        + ["--seed", "4", "--set", "agent.behavior.horizon=7", "--print-config"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preset_name"] == "dmc" and printed["seed"] == 4
    assert printed["variant"] == "dreamerv2" and printed["agent"]["behavior"]["horizon"] == 7
    assert (
        main(["--env", "dmc/cartpole-swingup", "--out", str(tmp_path), "--set", "horizon=7"]) == 2
    )
    error = capsys.readouterr().err
    assert "unknown config key 'horizon'" in error and "agent.behavior.horizon" in error


# Real short runs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "options", "success"),
    [
        ("metaworld/drawer-open-v3", {"episode_length": 16}, True),
        ("dmc/cartpole-balance", {"episode_length": 24}, False),
    ],
)
def test_short_run_writes_checkpoint_curve_video_and_card(
    tmp_path: Path, env: str, options: dict, success: bool
) -> None:
    pretrained = save_tiny_video_model(tmp_path / "video")
    out = tmp_path / "run"
    code = main(
        ["--env", env, "--preset", "tiny", "--pretrained", str(pretrained), "--out", str(out)]
        + [f"--set=env_options.{k}={v}" for k, v in options.items()]
        + ["--set", "total_env_steps=64", "--set", "prefill=16", "--set", "eval_every=32"]
        + ["--set", "checkpoint_every=32", "--set", "log_every=16", "--no-progress"]
    )
    assert code == 0
    folder = out / "model"
    config = FinetuneConfig.load(out / "run_config.json")
    policy_steps_per_episode = options["episode_length"] // config.action_repeat
    # The curve: evaluations when prefill ends (16 policy steps), every 32 env steps after, and
    # at the end (64).
    rows = json.loads((out / "eval.json").read_text())
    points = set(range(16 * config.action_repeat, 64, 32)) | {64}
    assert [r["env_steps"] for r in rows] == sorted(points)
    assert ("success_rate" in rows[0]) == success
    assert (out / "eval.csv").read_text().splitlines()[0].startswith("env_steps,updates")
    # The evaluation video: the single evaluation episode, every frame of it.
    videos = sorted((out / "videos").glob("eval-*.mp4"))
    assert len(videos) == len(rows)
    reader = decord.VideoReader(str(videos[-1]))
    assert len(reader) == policy_steps_per_episode + 1
    assert reader[0].shape == (64, 64, 3)
    # Checkpoints: complete, with agent, optimisers, replay, RNG, run state.
    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == 2 and ckpts[-1][0] == rows[-1]["env_steps"]
    last = ckpts[-1][1]
    state = json.loads((last / "state.json").read_text())
    assert state["trainer"]["counters"]["env_steps"] == ckpts[-1][0] and state["world_size"] == 1
    assert (last / "optimizers.safetensors").is_file()
    assert APVAgent.from_pretrained(last / "model").num_updates > 0
    assert "rng/torch" in load_tensors(last / "rank0.safetensors")[0]
    episodes = sorted((last / "replay-rank0" / "episodes").glob("*.npz"))
    assert episodes and len(load_episode(episodes[0])["reward"]) == policy_steps_per_episode + 1
    # The final agent: loadable, with a card that says what it is and how it scored.
    agent = APVAgent.from_pretrained(folder)
    assert agent.num_updates == rows[-1]["updates"] > 0
    card = (folder / "README.md").read_text()
    assert f"Environment: `{env}`" in card and "Variant: `apv`" in card
    assert str(pretrained) in card and f"| {rows[-1]['env_steps']} |" in card
    assert agent.training_info["finetune"]["env_steps"] == rows[-1]["env_steps"]
    if success:
        assert "success rate" in card


def test_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """Stopping at a checkpoint and resuming gives bit-identical weights, optimiser states,
    replay and learning curve (CPU: every kernel here is deterministic)."""
    base = {
        "total_env_steps": 560,
        "prefill": 100,
        "pretrain_updates": 3,
        "train_every": 10,
        "eval_every": 280,
        # Evaluations at multiples of 280, where the first run stops (not from prefill's end).
        "eval_from_prefill": False,
        "eval_episodes": 2,
        "checkpoint_every": 280,
        "log_every": 140,
        "agent.batch_size": 4,
        "agent.seq_len": 8,
    }
    whole = finetune(slide_config(**base), tmp_path / "whole")
    first = slide_config(**{**base, "total_env_steps": 280})
    finetune(first, tmp_path / "split")
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(first, tmp_path / "split")
    split = finetune(slide_config(**base), tmp_path / "split", resume=True)

    a, b = APVAgent.from_pretrained(whole), APVAgent.from_pretrained(split)
    assert a.num_updates == b.num_updates > 20
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    ckpt_a = latest_checkpoint(tmp_path / "whole" / "checkpoints")
    ckpt_b = latest_checkpoint(tmp_path / "split" / "checkpoints")
    opt_a, _ = load_tensors(ckpt_a / "optimizers.safetensors")
    opt_b, _ = load_tensors(ckpt_b / "optimizers.safetensors")
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    state_a = json.loads((ckpt_a / "state.json").read_text())
    state_b = json.loads((ckpt_b / "state.json").read_text())
    assert state_a["trainer"] == state_b["trainer"]
    assert state_a["curves"]["eval"] == state_b["curves"]["eval"]

    def learning(rows: list[dict]) -> list[dict]:  # Without the timing columns.
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]

    assert learning(state_a["curves"]["metrics"]) == learning(state_b["curves"]["metrics"])
    curve_a = json.loads((tmp_path / "whole" / "eval.json").read_text())
    assert curve_a == json.loads((tmp_path / "split" / "eval.json").read_text())
    assert [row["env_steps"] for row in curve_a] == [280, 560]
    replay_a = sorted(
        load_episode(p)["image"].sum() for p in (ckpt_a / "replay-rank0/episodes").iterdir()
    )
    replay_b = sorted(
        load_episode(p)["image"].sum() for p in (ckpt_b / "replay-rank0/episodes").iterdir()
    )
    assert replay_a == replay_b
    # A resumed run keeps its config: only schedule and output keys may change.
    assert main(["--resume", str(tmp_path / "split"), "--set", "agent.behavior.horizon=3"]) == 2


def test_non_finite_losses_are_reported_skipped_and_stop_the_run(tmp_path: Path) -> None:
    config = slide_config(
        prefill=40,
        pretrain_updates=4,
        max_nonfinite_steps=3,
        **{"env_options.make_kwargs": {"nan_reward": True}},
    )
    with (
        pytest.warns(UserWarning, match="non-finite .*reward_loss"),
        pytest.raises(DivergenceError, match=r"3 non-finite step\(s\) in a row"),
    ):
        finetune(config, tmp_path / "run")


# Pieces ----------------------------------------------------------------------------------------


def test_checkpoints_are_atomic_pruned_and_share_files(tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        (folder / "data.txt").write_text(folder.name)

    for step in (10, 20, 30):
        tmp = begin_checkpoint(tmp_path, step)
        write(tmp)
        commit_checkpoint(tmp, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    # A save that crashed half-way leaves a temporary folder that is never taken as a checkpoint.
    tmp = begin_checkpoint(tmp_path, 40)
    (tmp / "data.txt").write_text("half")
    assert latest_checkpoint(tmp_path).name.endswith("30")
    # Saving a step again replaces it whole.
    tmp = begin_checkpoint(tmp_path, 30)
    (tmp / "new.txt").write_text("x")
    final = commit_checkpoint(tmp)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    # Hard links: the second checkpoint's file is the first one's, not a copy.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "episode.npz").write_bytes(b"123")
    assert link_files(tmp_path / "a", tmp_path / "b") == 1
    assert os.path.samefile(tmp_path / "a" / "episode.npz", tmp_path / "b" / "episode.npz")


def test_curve_video_and_score_helpers(tmp_path: Path) -> None:
    curve = CurveWriter(tmp_path)
    curve.append({"env_steps": 10, "return_mean": 1.5})
    curve.append({"env_steps": 20, "return_mean": 2.5, "success_rate": 1.0})
    assert (tmp_path / "curve.csv").read_text().splitlines() == [
        "env_steps,return_mean,success_rate",
        "10,1.5,",
        "20,2.5,1.0",
    ]
    curve.reset(curve.rows[:1])
    assert json.loads((tmp_path / "curve.json").read_text()) == [
        {"env_steps": 10, "return_mean": 1.5}
    ]
    rng = np.random.default_rng(0)
    episodes = [rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8) for n in (5, 3, 4)]
    grid = video_grid(episodes, columns=2)
    assert grid.shape == (5, 16, 16, 3)
    assert np.array_equal(grid[4, 0:8, 8:16], episodes[1][-1].transpose(1, 2, 0))
    smooth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], 6, 0)
    frames = np.broadcast_to(smooth, (6, 64, 64, 3)).copy()
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    decoded = decord.VideoReader(str(path)).get_batch(range(6)).asnumpy()
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 3
    results = [EpisodeResult(i, float(r), float(r > 1), 5) for i, r in enumerate([0, 1, 2, 3])]
    score = summarize(results)
    assert score["return"]["mean"] == 1.5 and score["success_rate"]["mean"] == 0.5
    low, high = score["return"]["ci95"]
    assert 0 <= low < 1.5 < high <= 3
    assert bootstrap_ci([2.0, 2.0]) == (2.0, 2.0)


def test_evaluate_command_loads_an_agent_pushed_to_the_local_hub(local_hub, tmp_path: Path) -> None:
    repo_id = f"apv/slide-{uuid.uuid4().hex[:8]}"
    config = slide_config(
        total_env_steps=120, prefill=60, pretrain_updates=2, eval_every=120, eval_episodes=1
    )
    config = config.override({"video": True, "agent.batch_size": 4, "agent.seq_len": 8})
    config.save(tmp_path / "config.json")
    code = main(
        ["--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]
        + ["--push-to-hub", repo_id, "--no-progress"]
    )
    assert code == 0
    from huggingface_hub import HfApi

    files = set(HfApi().list_repo_files(repo_id))
    expected = {"model.safetensors", "config.json", "README.md", "eval.csv", "eval.mp4"}
    assert expected | {"run_config.json"} <= files
    out = tmp_path / "eval"
    code = evaluate_main(
        ["--agent", repo_id, "--episodes", "3", "--num-envs", "2", "--out", str(out)]
    )
    assert code == 0
    score = json.loads((out / "score.json").read_text())
    # The environment and its options come from the agent's own fine-tuning record.
    assert score["env"] == SLIDE_ENV and score["env_options"]["episode_length"] == 20
    saved = json.loads((out / "score.json").read_text())
    assert saved["return"]["per_episode"] == score["return"]["per_episode"]
    assert len(saved["return"]["per_episode"]) == 3 and saved["lengths"] == [20, 20, 20]
    reader = decord.VideoReader(str(out / "eval.mp4"))
    assert len(reader) == 21 and reader[0].shape == (32, 96, 3)


def test_the_command_renders_headless_without_mujoco_gl_set(tmp_path: Path) -> None:
    """On a machine without a display the command picks EGL itself (MUJOCO_GL unset)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.pop("DISPLAY", None)
    env["PYTHONPATH"] = str(root)
    result = subprocess.run(
        [sys.executable, str(root / "finetune.py"), "--env", "dmc/cartpole-balance"]
        + ["--preset", "tiny", "--variant", "dreamerv2", "--out", str(tmp_path / "run")]
        + ["--steps", "48", "--set", "env_options.episode_length=24", "--set", "prefill=16"]
        + ["--set", "eval_every=48", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())[-1]["env_steps"] == 48
