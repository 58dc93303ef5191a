"""Pre-training runs end to end: outputs, learning, exact resume, crash safety, two processes,
the Hub round trip, non-finite losses and the run config."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from apv_hub import APVConfig, APVVideoModel, ConfigError
from apv_hub.training.checkpoint import checkpoint_path, list_checkpoints
from apv_hub.training.commands import pretrain_main as main
from apv_hub.training.configs import PretrainConfig
from apv_hub.training.pretrain import LOSS_TERMS
from apv_hub.training.run import CRASH_ENV, CRASH_EXIT_CODE
from apv_hub.weights import load_tensors, tensor_digest
from tests.pretrain_helpers import (
    REPO_ROOT,
    assert_same_tensors,
    build_squares_corpus,
    checkpoint_tensors,
    frames_of,
    learning_rows,
    run_cli,
    tiny_args,
)

# Resume and crash runs: 8 steps, a checkpoint every 4, no worker processes.
EXACT = ("--checkpoint-every", "4", "--log-every", "2", "--eval-every", "4")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_squares_corpus(tmp_path_factory.mktemp("corpus") / "squares")


@pytest.fixture(scope="module")
def straight_run(corpus, tmp_path_factory):
    """8 steps in one go: the reference for the resume and crash tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert (
        main(tiny_args(corpus, out, 8, *EXACT, "--num-workers", "0", "--keep-checkpoints", "0"))
        == 0
    )
    return out


def test_short_run_on_the_sample_writes_checkpoint_logs_video_card_and_learns(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = tiny_args("sample", out, 30, "--log-every", "5", "--eval-every", "15")
    assert (
        main([*args, "--checkpoint-every", "15", "--num-workers", "2", "--set", "model.lr=1e-3"])
        == 0
    )
    printed = capsys.readouterr().out

    # Checkpoints every 15 steps, complete; the printed summary says where everything is.
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [15, 30]
    assert str(checkpoint_path(out / "checkpoints", 30)) in printed
    assert str(out / "model") in printed and str(out / "videos" / "pred-30.mp4") in printed

    # It learned: the loss and the reconstruction error fell between the first and last window.
    rows = json.loads((out / "metrics.json").read_text())
    assert [row["step"] for row in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert rows[-1]["train/image_mse"] < 0.8 * rows[0]["train/image_mse"]

    # TensorBoard holds every loss term, KL, grad norm, lr, throughput and the videos.
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {f"train/{k}" for k in (*LOSS_TERMS, "grad_norm", "lr")}
    assert expected | {"perf/steps_per_sec", "eval/open_loop_mse"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]
    assert [e.step for e in events.Images("eval/open_loop_prediction")] == [15, 30]

    # Videos: ground truth above context + prediction, 2 clips side by side, 8 frames.
    for step in (15, 30):
        video = frames_of(out / "videos" / f"pred-{step}.mp4")
        assert video.shape == (8, 2 * 68, 2 * 68, 3)
        assert (out / "videos" / f"pred-{step}.gif").stat().st_size > 0

    # The model folder loads back and its card states the run as measured.
    model = APVVideoModel.from_pretrained(out / "model")
    assert model.config == APVConfig.preset("tiny", batch_size=4, seq_len=8, lr=1e-3)
    card = (out / "model" / "README.md").read_text()
    assert "Gradient steps: 30" in card
    assert f"Final loss (measured): {rows[-1]['train/loss']:.4g}" in card
    assert "--data sample" in card and "--set model.lr=1e-3" in card
    assert "- Data: apv-hub sample corpus (Meta-world scripted policies)" in card
    assert model.training_info["metrics"]["loss"] == rows[-1]["train/loss"]


def test_resume_continues_exactly(straight_run, corpus, tmp_path):
    out = tmp_path / "run"
    assert (
        main(tiny_args(corpus, out, 4, *EXACT, "--num-workers", "0", "--keep-checkpoints", "0"))
        == 0
    )
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [4]
    assert main(["--resume", str(out), "--steps", "8", "--no-progress"]) == 0

    for step in (4, 8):
        assert_same_tensors(
            checkpoint_tensors(checkpoint_path(out / "checkpoints", step)),
            checkpoint_tensors(checkpoint_path(straight_run / "checkpoints", step)),
        )
    assert learning_rows(out) == learning_rows(straight_run)
    # The card names both commands that trained the model.
    command = APVVideoModel.from_pretrained(out / "model").training_info["command"]
    first, again = command.splitlines()
    assert first.startswith("apv-pretrain --data") and "--steps 4" in first
    assert again == f"apv-pretrain --resume {out} --steps 8 --no-progress"
    resumed, _ = load_tensors(out / "model" / "model.safetensors")
    straight, _ = load_tensors(straight_run / "model" / "model.safetensors")
    assert_same_tensors(resumed, straight)


def test_crash_during_checkpoint_write_resumes_from_previous(straight_run, corpus, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(corpus, out, 8, *EXACT, "--num-workers", "0", "--keep-checkpoints", "0")
    killed = run_cli(args, env={CRASH_ENV: "8"})
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]

    # The half-written checkpoint 8 never became one (the run state was not written yet);
    # checkpoint 4 is intact.
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [4]
    partial = checkpoint_path(out / "checkpoints", 8)
    partial = partial.with_name(f".{partial.name}.tmp")
    written = sorted(p.name for p in partial.iterdir())
    assert "model" in written and "optimizers.safetensors" in written
    assert "state.json" not in written

    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [4, 8]
    assert not partial.exists()
    assert_same_tensors(
        checkpoint_tensors(checkpoint_path(out / "checkpoints", 8)),
        checkpoint_tensors(checkpoint_path(straight_run / "checkpoints", 8)),
    )
    assert learning_rows(out) == learning_rows(straight_run)


def test_two_processes_share_the_work(corpus, tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    args = tiny_args(corpus, out, 6, "--checkpoint-every", "3", "--log-every", "3")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = run_cli(
        [*args, "--num-workers", "0", "--debug-dump", str(dump)],
        launcher=[*launcher, "--nproc_per_node", "2"],
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((dump / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(d["rank"], d["world_size"], d["local_batch"]) for d in ranks] == [(0, 2, 2), (1, 2, 2)]
    # Gradients were averaged: both processes end with the same parameters, the saved ones.
    saved, _ = load_tensors(out / "model" / "model.safetensors")
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"] == tensor_digest(saved)
    # Each process drew 6 steps x 2 clips from its own videos.
    videos = [{(c, row) for c, row, _ in d["clips"]} for d in ranks]
    assert [len(d["clips"]) for d in ranks] == [12, 12]
    assert videos[0] and videos[1] and not videos[0] & videos[1]

    # One set of files, written by the main process only.
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [3, 6]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    assert [row["step"] for row in json.loads((out / "metrics.json").read_text())] == [3, 6]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["pred-6.gif", "pred-6.mp4"]
    assert result.stdout.count("pre-training finished") == 1
    model = APVVideoModel.from_pretrained(out / "model")
    assert "over 2 processes" in model.training_info["batch"]


def test_pushed_model_loads_back_by_repo_id(corpus, local_hub, tmp_path):
    from huggingface_hub import hf_hub_download

    out, notes = tmp_path / "run", tmp_path / "notes.md"
    notes.write_text("Pre-trained on moving squares for the tests.\n")
    args = tiny_args(corpus, out, 2, "--num-workers", "0", "--card-notes", str(notes))
    assert main([*args, "--push-to-hub", "apv/pretrain-test"]) == 0
    loaded = APVVideoModel.from_pretrained("apv/pretrain-test", cache_dir=tmp_path / "cache")
    local, _ = load_tensors(out / "model" / "model.safetensors")
    assert_same_tensors(loaded.state_dict(), local)
    assert loaded.training_info["steps"] == 2
    card = Path(hf_hub_download("apv/pretrain-test", "README.md", cache_dir=tmp_path / "c2"))
    card = card.read_text()
    assert "Gradient steps: 2" in card and "--push-to-hub apv/pretrain-test" in card
    assert 'from_pretrained("apv/pretrain-test")' in card
    assert "## About this checkpoint\n\nPre-trained on moving squares for the tests." in card


def test_non_finite_loss_stops_with_the_step(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    # A finite weight so large that the loss overflows float32.
    args = tiny_args(corpus, out, 3, "--num-workers", "0", "--set", "model.image_loss_scale=1e38")
    assert main(args) == 1
    message = capsys.readouterr().err
    assert "non-finite training step 1 (of 3)" in message and "skipped" in message
    assert "the last checkpoint is none yet" in message
    assert not list_checkpoints(out / "checkpoints")


def test_init_starts_from_a_checkpoint(straight_run, corpus, tmp_path):
    out = tmp_path / "run"
    # With a zero learning rate the one step changes nothing: the result is the init weights.
    code = main(
        [
            "--data", str(corpus), "--out", str(out), "--init", str(straight_run / "model"),
            "--steps", "1", "--set", "model.lr=0", "--eval-context", "3", "--eval-clips", "1",
            "--num-workers", "0", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    start, _ = load_tensors(straight_run / "model" / "model.safetensors")
    after, _ = load_tensors(out / "model" / "model.safetensors")
    assert_same_tensors(after, start)
    info = APVVideoModel.from_pretrained(out / "model").training_info
    assert info["init"] == str(straight_run / "model")
    assert PretrainConfig.load(out / "run_config.json").model.deter == 64  # tiny, from the init


def test_run_config_round_trip_and_clear_errors(straight_run, corpus, tmp_path, capsys):
    config = PretrainConfig.load(straight_run / "run_config.json")
    assert config.model == APVConfig.preset("tiny", batch_size=4, seq_len=8)
    assert (config.data, config.steps, config.checkpoint_every) == ([str(corpus)], 8, 4)
    assert PretrainConfig.from_dict(config.to_dict(), complete=True) == config
    copy = tmp_path / "copy.json"
    config.save(copy)
    assert PretrainConfig.load(copy) == config
    with pytest.raises(ConfigError, match="unknown PretrainConfig field"):
        PretrainConfig.from_dict({**config.to_dict(), "stpes": 3})

    def refused(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "cannot change seed" in refused(["--resume", str(straight_run), "--seed", "1"])
    assert "eval_context must lie in [1, seq_len - 1] = [1, 7]" in refused(
        tiny_args(corpus, tmp_path / "new", 8, "--eval-context", "8")
    )
    assert "--preset and --init" in refused(
        tiny_args(corpus, tmp_path / "new", 8, "--init", str(straight_run / "model"))
    )
    assert "no run there" in refused(["--resume", str(tmp_path / "nothing")])
    assert "did you mean model.deter?" in refused(
        tiny_args(corpus, tmp_path / "new", 8, "--set", "deter=3")
    )
    assert "model.deter takes an integer, got 'big'" in refused(
        tiny_args(corpus, tmp_path / "new", 8, "--set", "model.deter=big")
    )
    # A folder that holds a run is not overwritten (exit 1: not an argument error).
    assert main(tiny_args(corpus, straight_run, 8)) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_model_card_sources_train_what_they_describe(monkeypatch):
    from apv_hub.cards import KNOWN_CHECKPOINTS
    from apv_hub.training.commands import new_pretrain_config, pretrain_parser, resolve_run

    monkeypatch.chdir(REPO_ROOT)  # the commands run from the repository root
    cards = REPO_ROOT / "model_cards"
    for repo_id in KNOWN_CHECKPOINTS:
        source = cards / f"{repo_id.split('/')[1]}.md"
        blocks = re.findall(r"```bash\n(.*?)```", source.read_text(), re.S)
        commands = [shlex.split(b.replace("\\\n", " ")) for b in blocks]
        builds = [c for c in commands if any(a.startswith("dataset_scripts/") for a in c)]
        assert builds, f"{source.name} has no data-building command"
        [train] = [c for c in commands if "pretrain.py" in c]
        args = pretrain_parser().parse_args(train[train.index("pretrain.py") + 1 :])
        config, _, resume = resolve_run(args, PretrainConfig, new_pretrain_config(args.preset))
        assert not resume and config.push_to_hub == repo_id
        assert Path(config.card_notes) == Path("model_cards") / source.name
        assert "not yet" in source.read_text() or repo_id == "apv/sample"
