"""Issue 14 part 5: ``--log-with`` sends a run's logs through Accelerate's trackers.

TensorBoard (the default, offline) is read back with TensorBoard's own event reader; wandb and
the other hosted trackers cannot reach their servers here and are not installed, so a second
tracker is tested through Accelerate's generic interface: `RecordingTracker`, a
``GeneralTracker`` subclass named by ``module:Class``, which writes what it receives to a file.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from apv_hub.training.commands import pretrain_main
from tests.pretrain_helpers import build_squares_corpus, tiny_args
from tests.robust_helpers import stderr_errors

RECORDING = "tests.robust_helpers:RecordingTracker"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_squares_corpus(tmp_path_factory.mktemp("corpus") / "squares")


def test_tensorboard_and_a_generic_tracker_get_scalars_text_config_and_videos(
    corpus, tmp_path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = tiny_args(corpus, out, 4, "--num-workers", "0", "--log-every", "2", "--eval-every", "2")
    assert pretrain_main([*args, "--log-with", "tensorboard", RECORDING]) == 0

    events = EventAccumulator(str(out / "logs"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("eval/open_loop_mse")] == [2, 4]
    assert {"config/text_summary", "command/text_summary"} <= set(events.Tags()["tensors"])
    videos = events.Images("eval/open_loop_prediction")
    assert [e.step for e in videos] == [2, 4]
    assert all(e.encoded_image_string.startswith(b"GIF89a") for e in videos)  # animated

    calls = [json.loads(line) for line in (out / "logs" / "record.jsonl").read_text().splitlines()]
    assert calls[0]["call"] == "start" and calls[-1]["call"] == "finish"
    [config] = [c["values"] for c in calls if c["call"] == "config"]
    assert config["model.deter"] == 64 and config["log_with"] == json.dumps(
        ["tensorboard", RECORDING]
    )
    logs = [c for c in calls if c["call"] == "log"]
    assert [c["step"] for c in logs if "train/loss" in c["values"]] == [2, 4]
    rows = json.loads((out / "metrics.json").read_text())
    assert [c["values"]["train/loss"] for c in logs if "train/loss" in c["values"]] == [
        row["train/loss"] for row in rows
    ]
    assert any(c["values"].get("command", "").startswith("apv-pretrain --data") for c in logs)
    images = [c for c in calls if c["call"] == "images"]
    # The prediction video: 8 frames of 2 clips, truth above prediction, 68-pixel tiles.
    assert [c["step"] for c in images] == [2, 4]
    assert images[0]["shapes"]["eval/open_loop_prediction"] == [[136, 136, 3]] * 8


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuch", "log_with: unknown tracker 'nosuch'; choose from aim, clearml, comet_ml, "),
        ("tests.robust_helpers:damage_videos", "is not an accelerate.tracking.GeneralTracker"),
        ("tests.nowhere:Tracker", "log_with: cannot import tracker 'tests.nowhere:Tracker'"),
    ],
)
def test_unknown_trackers_are_refused_before_the_run_folder(
    name, message, corpus, tmp_path, capfd
) -> None:
    out = tmp_path / "run"
    args = [*tiny_args(corpus, out, 2, "--num-workers", "0"), "--log-with", name]
    assert pretrain_main(args) == 2
    [line] = stderr_errors(capfd.readouterr().err, "apv-pretrain")
    assert message in line
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_tracker_that_is_not_installed_is_refused_before_the_run_folder(
    corpus, tmp_path, capfd
) -> None:
    out = tmp_path / "run"
    args = [*tiny_args(corpus, out, 2, "--num-workers", "0"), "--log-with", "wandb"]
    assert pretrain_main(args) == 2
    assert stderr_errors(capfd.readouterr().err, "apv-pretrain") == [
        "apv-pretrain: error: log_with: the wandb tracker is not installed (pip install wandb)"
    ]
    assert not out.exists()
