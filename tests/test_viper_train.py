"""VIPER reward-model training runs end to end on the shipped sample corpus (outputs, card,
statistics, exact resume, crash safety, refusals) and the apv-viper-score command."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from apv_hub.data import load_video_corpus, sample_corpus_path
from apv_hub.predict import read_clip
from apv_hub.training.checkpoint import checkpoint_path, list_checkpoints
from apv_hub.training.commands import viper_train_main as main
from apv_hub.training.configs import VIPERTrainConfig
from apv_hub.training.run import CRASH_ENV, CRASH_EXIT_CODE
from apv_hub.training.viper import EMA_FILE
from apv_hub.viper import VIPERRewardModel
from apv_hub.viper.score import main as score_main
from apv_hub.weights import load_tensors
from tests.pretrain_helpers import assert_same_tensors, learning_rows

TASKS = ["button-press-topdown-v3", "door-open-v3", "drawer-open-v3", "reach-v3"]


def tiny_args(out: Path, tokenizer_steps: int, prior_steps: int, *extra: str) -> list[str]:
    """A seconds-long run on the sample corpus: tiny preset, one class per Meta-world task."""
    return [
        "--data", "sample", "--out", str(out), "--preset", "tiny", "--classes", "task",
        "--tokenizer-steps", str(tokenizer_steps), "--prior-steps", str(prior_steps),
        "--eval-clips", "2", "--stats-videos", "1", "--num-workers", "0", "--no-progress",
        *extra,
    ]  # fmt: skip


# Exact-resume runs: 4 tokenizer + 4 prior steps, a checkpoint every 3 (and at each phase end).
EXACT = ("--checkpoint-every", "3", "--log-every", "1", "--eval-every", "3")


def mp4_shape(path: Path) -> tuple[int, int, int, int]:
    """Decode an mp4 with PyAV -> (frames, height, width, 3). (decord mis-sizes some widths.)"""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return (len(frames), *frames[0].shape)


def checkpoint_files(folder: Path) -> dict[str, torch.Tensor]:
    """Model, EMA prior and optimiser tensors of a checkpoint, prefixed by file."""
    out = {}
    for name in ("model/model.safetensors", EMA_FILE, "optimizers.safetensors"):
        tensors, _ = load_tensors(folder / name)
        out.update({f"{name}/{k}": v for k, v in tensors.items()})
    return out


PUSHED = "viper/sample-run"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, local_hub) -> Path:
    """6 tokenizer + 6 prior steps, the final model pushed to the local Hub as PUSHED."""
    out = tmp_path_factory.mktemp("viper") / "run"
    args = tiny_args(out, 6, 6, "--log-every", "3", "--eval-every", "3", "--push-to-hub", PUSHED)
    assert main([*args, "--checkpoint-every", "4", "--set", "num_workers=1"]) == 0
    return out


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(tiny_args(out, 4, 4, *EXACT, "--keep-checkpoints", "0")) == 0
    return out


def test_short_run_writes_checkpoints_logs_videos_and_a_model_whose_card_states_it(sample_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = sample_run
    # Checkpoints every 4 steps and at the end of each phase; the run state names the phase.
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [6, 8, 12]
    state = json.loads((checkpoint_path(out / "checkpoints", 8) / "state.json").read_text())
    assert state["trainer"]["step"] == 8 and state["trainer"]["phase"] == "prior"

    # The training log: each phase's terms in its own rows, the codebook's usage included.
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    assert {"tokenizer/perplexity", "tokenizer/dead_codes", "tokenizer/usage"} <= set(rows[0])
    assert "prior/loss" not in rows[1] and "prior/bits_per_token" in rows[2]
    assert rows[-1]["prior/loss"] < rows[2]["prior/loss"]
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"tokenizer/loss", "tokenizer/perplexity", "tokenizer/dead_codes", "prior/loss"}
    expected |= {"prior/bits_per_token", "eval/tokenizer/recon_mse", "eval/prior/bits_per_token"}
    assert expected <= scalars
    assert [e.step for e in events.Images("eval/reconstruction")] == [3, 6]
    assert [e.step for e in events.Images("eval/prediction")] == [9, 12]

    # Videos: ground truth above reconstruction / context + sampled prediction, 2 clips of the
    # prior's 4 frames side by side, each 32x32 frame inside a 2-pixel border.
    names = sorted(p.name for p in (out / "videos").glob("*.mp4"))
    assert names == ["pred-12.mp4", "pred-9.mp4", "recon-3.mp4", "recon-6.mp4"]
    for name in names:
        assert mp4_shape(out / "videos" / name) == (4, 2 * 36, 2 * 36, 3)

    # The model: the sample's four tasks as classes, the EMA prior of the last checkpoint.
    model = VIPERRewardModel.from_pretrained(out / "model")
    assert list(model.config.class_names) == TASKS and model.config.prior.num_classes == 4
    ema, _ = load_tensors(checkpoint_path(out / "checkpoints", 12) / EMA_FILE)
    assert_same_tensors(model.prior.state_dict(), ema)
    config = VIPERTrainConfig.load(out / "run_config.json")
    assert list(config.model.class_names) == TASKS

    # Its reward statistics are those of the first video of each task, scored whole with it.
    corpus = load_video_corpus(sample_corpus_path())
    stats = model.reward_stats()
    for cls, task in enumerate(TASKS):
        row = list(corpus["task"]).index(task)
        path = out.parent / f"{task}.mp4"
        path.write_bytes(corpus[row]["video"])
        raw = model.score(read_clip(path, 32)[None], cls=task)[0].double()
        assert stats["count"][cls] == len(raw) == 151
        assert stats["mean"][cls].item() == pytest.approx(raw.mean().item(), rel=1e-6)
        assert stats["std"][cls].item() == pytest.approx(raw.std(unbiased=False).item(), rel=1e-5)

    # The card states the run as measured.
    card = (out / "model" / "README.md").read_text()
    assert "- Gradient steps: 6 tokenizer + 6 prior" in card
    assert f"Final prior/loss (measured): {rows[-1]['prior/loss']:.4g}" in card
    assert "class-conditional over 4 tasks (button-press-topdown-v3" in card
    assert "- Data: apv-hub sample corpus (Meta-world scripted policies)" in card
    assert "apv-viper-train --data sample" in card and "reward statistics: 4 whole" in card
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["classes"] == TASKS and summary["pushed_to"]


def test_resume_mid_prior_equals_the_uninterrupted_run(straight_run, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_args(out, 4, 2, *EXACT, "--keep-checkpoints", "0")) == 0
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3, 4, 6]
    assert main(["--resume", str(out), "--prior-steps", "4", "--no-progress"]) == 0

    for step in (6, 8):
        assert_same_tensors(
            checkpoint_files(checkpoint_path(out / "checkpoints", step)),
            checkpoint_files(checkpoint_path(straight_run / "checkpoints", step)),
        )
    assert learning_rows(out) == learning_rows(straight_run)
    final, _ = load_tensors(out / "model" / "model.safetensors")
    expected, _ = load_tensors(straight_run / "model" / "model.safetensors")
    assert_same_tensors(final, expected)
    command = VIPERRewardModel.from_pretrained(out / "model").training_info["command"]
    assert (
        command.splitlines()[1] == f"apv-viper-train --resume {out} --prior-steps 4 --no-progress"
    )
    # Only schedule and output keys may change on resume.
    assert main(["--resume", str(out), "--tokenizer-steps", "5"]) == 2


def test_crash_in_a_checkpoint_resumes_from_the_tokenizer_phase_exactly(
    straight_run, tmp_path, run_python, capfd
):
    out = tmp_path / "run"
    args = tiny_args(out, 4, 4, *EXACT, "--keep-checkpoints", "0")
    code = "import sys\nfrom apv_hub.training.commands import viper_train_main\n"
    code += f"sys.exit(viper_train_main({args!r}))"
    killed = run_python(code, env={CRASH_ENV: "6", "OMP_NUM_THREADS": "1"})
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    # Checkpoint 6 never became one; the run resumes from step 4 (the tokenizer phase's end)...
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3, 4]
    # ... and from step 3 when 4 is damaged: the codebook, its idle counts and the tokenizer's
    # optimiser come back from inside the tokenizer phase.
    (checkpoint_path(out / "checkpoints", 4) / EMA_FILE).write_bytes(b"damaged")
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert "cannot be loaded" in capfd.readouterr().err
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3, 4, 6, 8]
    for step in (4, 6, 8):
        assert_same_tensors(
            checkpoint_files(checkpoint_path(out / "checkpoints", step)),
            checkpoint_files(checkpoint_path(straight_run / "checkpoints", step)),
        )
    assert learning_rows(out) == learning_rows(straight_run)


def test_refusals_name_what_to_do(straight_run, tmp_path, capsys):
    # A folder that holds a run is not overwritten (exit 1: not an argument error).
    assert main(tiny_args(straight_run, 4, 4)) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "new", 4, 4, "--set", "tokenizer_clip_frames=5")) == 2
    assert "not a multiple of tokenizer_clip_frames 5" in capsys.readouterr().err
    names = ["--set", 'model.class_names=["a","b"]', "--set", "model.prior.num_classes=2"]
    args = tiny_args(tmp_path / "new", 4, 4, *names)
    assert main(args) == 2
    assert "are not the classes of the data" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


# apv-viper-score -------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_score_writes_a_plot_and_the_rewards_of_model_score(sample_run, tmp_path, capsys):
    corpus = load_video_corpus(sample_corpus_path())
    video = tmp_path / "drawer.mp4"
    video.write_bytes(corpus[4]["video"])  # a drawer-open episode, 151 frames at 64x64
    assert score_main([str(sample_run / "model"), str(video), "--class", "drawer-open-v3"]) == 0
    assert "151 steps scored" in capsys.readouterr().out
    width, height = png_size(tmp_path / "drawer.viper.png")
    assert width > 400 and height > 200
    record = json.loads((tmp_path / "drawer.viper.json").read_text())

    model = VIPERRewardModel.from_pretrained(sample_run / "model")
    frames = read_clip(video, 32)[None]
    raw = model.score(frames, cls="drawer-open-v3")[0]
    standardized = model.score(frames, cls="drawer-open-v3", standardize=True)[0]
    np.testing.assert_array_equal(np.float32(record["raw"]), raw.numpy())
    np.testing.assert_allclose(np.float32(record["standardized"]), standardized.numpy(), rtol=1e-6)
    assert record["frames"] == 151 and record["plotted"] == "standardised reward"
    assert record["raw_sum"] == pytest.approx(float(raw.sum()), rel=1e-6)

    # --out puts both elsewhere; a class-conditional model needs its class, and names them.
    assert score_main([str(sample_run / "model"), str(video), "--class", "2", "--raw", "--out",
                       str(tmp_path / "plots" / "d.png")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "plots" / "d.json").read_text())
    assert again["raw"] == record["raw"] and again["plotted"] == "raw log-likelihood"
    assert score_main([str(sample_run / "model"), str(video)]) == 2
    assert "class-conditional" in capsys.readouterr().err
    assert (
        score_main([str(sample_run / "model"), str(tmp_path / "missing.mp4"), "--class", "2"]) == 2
    )
    assert "no video file" in capsys.readouterr().err


def test_score_loads_the_pushed_run_by_repo_id(sample_run, tmp_path):
    corpus = load_video_corpus(sample_corpus_path())
    video = tmp_path / "reach.mp4"
    video.write_bytes(corpus[0]["video"])
    assert score_main([PUSHED, str(video), "--class", "reach-v3"]) == 0
    local = tmp_path / "local.png"
    assert score_main([str(sample_run / "model"), str(video), "--class", "reach-v3", "--out",
                       str(local)]) == 0  # fmt: skip
    by_id = json.loads((tmp_path / "reach.viper.json").read_text())
    assert by_id["raw"] == json.loads(local.with_suffix(".json").read_text())["raw"]
