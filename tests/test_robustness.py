"""Issue 15, case by case: a hostile user's 35 tries at the console commands. Each failure is
one line ``apv-<command>: error: ...`` with the right exit code (2: arguments and configs, 1:
inputs, checkpoints, divergence; 0: success), the run folder is left as it was (or never
created), and every recovery is visible on the console and in ``summary.json``.

The first group holds the 14 cases that failed before (F1-F14), the second the 21 that held
(H1-H21); the report of issue 15 has the table.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from apv_hub import APVAgent, APVConfig, APVVideoModel, CheckpointError
from apv_hub.data.video import VideoError, open_reader
from apv_hub.evaluation.episodes import main as evaluate_main
from apv_hub.predict import main as predict_main
from apv_hub.training.checkpoint import checkpoint_path, list_checkpoints
from apv_hub.training.commands import finetune_main, pretrain_main
from apv_hub.training.run import RunLock, RunLockedError
from tests.finetune_helpers import SLIDE_ENV, save_tiny_video_model, slide_config
from tests.pretrain_helpers import REPO_ROOT, build_squares_corpus, tiny_args
from tests.robust_helpers import CRASH_ENV, damage_videos, stderr_errors

NO_WORKERS = ("--num-workers", "0")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_squares_corpus(tmp_path_factory.mktemp("corpus") / "squares")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return save_tiny_video_model(tmp_path_factory.mktemp("video") / "model")


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory) -> Path:
    """A finished 4-step pre-training run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = tiny_args(corpus, out, 4, *NO_WORKERS, "--checkpoint-every", "2")
    assert pretrain_main([*args, "--keep-checkpoints", "0", "--log-every", "2"]) == 0
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def one_error(capfd: pytest.CaptureFixture, prog: str) -> str:
    """The single error line the command printed (fd-level capture: decoders and worker
    processes included); no traceback anywhere."""
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = stderr_errors(err, prog)
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def slide_args(tmp_path: Path, out: Path, **overrides) -> list[str]:
    """apv-finetune arguments of a seconds-long run on the slide task (dreamerv2, 32x32)."""
    base = dict(total_env_steps=60, prefill=20, pretrain_updates=1, eval_every=60)
    base.update({"eval_episodes": 1, "agent.batch_size": 4, "agent.seq_len": 8})
    config = slide_config(**{**base, **overrides})
    path = tmp_path / f"{out.name}-config.json"
    config.save(path)
    return ["--config", str(path), "--out", str(out), "--no-progress"]


# F: the 14 cases that failed -------------------------------------------------------------------


def test_f01_successful_commands_exit_0(video, tmp_path) -> None:
    """`apv-finetune ... && apv-evaluate ...` works: both console entry points exit 0."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    finetune = subprocess.run(
        [sys.executable, str(REPO_ROOT / "finetune.py"), *slide_args(tmp_path, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    assert f"fine-tuning finished: the agent and its card are in {out / 'model'}" in (
        finetune.stdout
    )
    evaluate = subprocess.run(
        [sys.executable, "-m", "apv_hub.evaluation.episodes", "--agent", str(out / "model")]
        + ["--episodes", "1", "--no-video", "--out", str(tmp_path / "eval")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert (tmp_path / "eval" / "score.json").is_file()


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ("dmc/nope-nope", "ValueError: unknown DMC task nope-nope; known: acrobot-swingup"),
        ("nosuchsuite/foo", "ValueError: environment name 'nosuchsuite/foo' must look like"),
        ("gym/NoSuchEnv-v0", "NameNotFound: Environment `NoSuchEnv` doesn't exist."),
    ],
)
def test_f02_unknown_env_is_one_line(env, reason, video, tmp_path, capfd) -> None:
    out = tmp_path / "run"
    argv = ["--env", env, "--preset", "tiny", "--pretrained", str(video), "--out", str(out)]
    assert finetune_main(argv) == 1
    line = one_error(capfd, "apv-finetune")
    assert line.startswith(
        f"apv-finetune: error: environment {env!r} cannot be built (worker 0 failed 3 times in "
        "a row): "
    )
    assert reason in line
    assert not out.exists()


def test_f03_missing_pretrained_path_is_one_line(tmp_path, capfd) -> None:
    out, missing = tmp_path / "run", tmp_path / "no" / "model"
    argv = ["--env", SLIDE_ENV, "--preset", "tiny", "--pretrained", str(missing)]
    assert finetune_main([*argv, "--out", str(out)]) == 1
    assert one_error(capfd, "apv-finetune") == (
        f"apv-finetune: error: no checkpoint folder at {missing}"
    )
    assert not out.exists()


def test_f04_corpus_of_corrupt_videos_is_one_line_before_the_run_folder(
    corpus, tmp_path, capfd
) -> None:
    bad = shutil.copytree(corpus, tmp_path / "bad")
    assert len(damage_videos(bad)) == 6
    out = tmp_path / "run"
    assert pretrain_main(tiny_args(bad, out, 3, *NO_WORKERS)) == 1
    err = capfd.readouterr().err
    # decord's own log of a failed open (the file's bytes as its "name") is not printed.
    assert "ERROR opening" not in err and "Traceback" not in err
    [line] = stderr_errors(err, "apv-pretrain")
    assert line.startswith(f"apv-pretrain: error: no video of {bad} can be decoded (6 of 6 failed:")
    assert f"{bad}:squares-" in line and "(cannot open: " in line
    assert line.endswith("; and 3 more); rebuild the corpus with its dataset script")
    assert not out.exists()


def test_f05_damaged_newest_checkpoint_falls_back_and_says_so(finished, tmp_path, capfd) -> None:
    run = copy_run(finished, tmp_path)
    newest = checkpoint_path(run / "checkpoints", 4)
    weights = newest / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's data
    weights.write_bytes(bytes(data))

    assert pretrain_main(["--resume", str(run), "--steps", "6", "--no-progress"]) == 0
    captured = capfd.readouterr()
    [warning] = [line for line in captured.err.splitlines() if line.startswith("apv-hub:")]
    assert warning == (
        f"apv-hub: warning: checkpoint {newest} cannot be loaded ({weights} failed its integrity "
        "check: the tensor data does not match the digest recorded when it was saved (the file "
        "was modified or damaged after saving)); trying the one before it"
    )
    assert f"apv-hub: resuming {run} from step 2 (ckpt-000000002)" in captured.out
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4, 6]
    recoveries = json.loads((run / "summary.json").read_text())["recoveries"]
    assert recoveries["damaged_checkpoints"]["count"] == 1
    assert recoveries["damaged_checkpoints"]["items"][0].startswith("ckpt-000000004: ")

    # When no checkpoint loads, the resume stops with one line.
    for _, folder in list_checkpoints(run / "checkpoints"):
        (folder / "state.json").write_text("{")
    assert pretrain_main(["--resume", str(run), "--steps", "8", "--no-progress"]) == 1
    err = capfd.readouterr().err
    assert stderr_errors(err, "apv-pretrain") == [
        f"apv-pretrain: error: no checkpoint of {run} can be loaded (see the warnings above)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NaN", "model.lr must be a finite number, got nan"),
        ("Infinity", "model.lr must be a finite number, got inf"),
        ("nan", "model.lr takes a number, got 'nan' (str)"),
    ],
)
def test_f06_non_finite_set_value_is_one_line(value, message, corpus, tmp_path, capfd) -> None:
    out = tmp_path / "run"
    assert pretrain_main(tiny_args(corpus, out, 2, "--set", f"model.lr={value}")) == 2
    assert one_error(capfd, "apv-pretrain") == f"apv-pretrain: error: {message}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes: "),
        ("[1, 2]", "holds a JSON list, expected a checkpoint config"),
    ],
)
def test_f07_checkpoint_config_that_is_not_a_json_object(
    text, message, corpus, video, tmp_path, capfd
) -> None:
    broken = shutil.copytree(video, tmp_path / "broken")
    (broken / "config.json").write_text(text)
    for prog, main, argv in [
        ("apv-predict", predict_main, [str(broken), str(tmp_path / "clip.mp4")]),
        ("apv-pretrain", pretrain_main, ["--data", str(corpus), "--init", str(broken)]),
    ]:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 1
        line = one_error(capfd, prog)
        assert line.startswith(f"{prog}: error: {broken / 'config.json'} {message}"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("deter", "200", "deter takes an integer, got '200' (str)"),
        ("lr", "0.0003", "lr takes a number, got '0.0003' (str)"),
        ("gru_layer_norm", "false", "gru_layer_norm takes true or false, got 'false' (str)"),
    ],
)
def test_f08_wrongly_typed_checkpoint_config(key, value, message, video, tmp_path, capfd) -> None:
    broken = shutil.copytree(video, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(CheckpointError) as error:
        APVVideoModel.from_pretrained(broken)
    assert str(error.value) == f"{broken / 'config.json'}: {message}"
    assert predict_main([str(broken), str(tmp_path / "clip.mp4")]) == 1
    assert one_error(capfd, "apv-predict") == f"apv-predict: error: {error.value}"


def test_f09_bad_inputs_leave_no_folder_and_the_corrected_run_starts(
    corpus, tmp_path, capfd
) -> None:
    out = tmp_path / "run"
    assert pretrain_main(tiny_args(tmp_path / "no-such-corpus", out, 2, *NO_WORKERS)) == 1
    assert one_error(capfd, "apv-pretrain") == (
        f"apv-pretrain: error: {tmp_path / 'no-such-corpus'} is neither a corpus folder nor a "
        "repo id"
    )
    assert not out.exists()
    # (Bad --env and --pretrained: F2 and F3 check that no folder is left either.)
    assert pretrain_main(tiny_args(corpus, out, 2, *NO_WORKERS)) == 0
    assert (out / "summary.json").is_file()


def test_f10_diverging_pretraining_stops_with_the_step(corpus, tmp_path, capfd) -> None:
    out = tmp_path / "run"
    # Adam's first step moves every weight by about the learning rate: after step 1 the
    # weights are ~1e10, and the forward pass of step 2 overflows (the Gumbel-max sampler takes
    # the non-finite logits without complaint; the loss is non-finite).
    args = tiny_args(corpus, out, 6, *NO_WORKERS, "--set", "model.lr=1e10")
    assert pretrain_main(args) == 1
    advice = (
        "training stopped; the last checkpoint is none yet. Lower the learning rate (--set "
        "...lr=...), check the data, or train in fp32 (--precision fp32)."
    )
    error = one_error(capfd, "apv-pretrain")
    assert error.startswith("apv-pretrain: error: non-finite training step 2 (of 6)")
    assert "loss=nan" in error and error.endswith(advice)
    assert not list_checkpoints(out / "checkpoints")
    # With a log row after step 1, the weight check finds those huge but finite weights first.
    shutil.rmtree(out)
    assert pretrain_main([*args, "--log-every", "1", "--checkpoint-every", "1"]) == 1
    assert one_error(capfd, "apv-pretrain") == (
        "apv-pretrain: error: training diverged at step 1: the largest weight magnitude is "
        "1e+10 (divergence_limit 1e+04); no checkpoint was written from these weights; "
        f"{advice}"
    )
    assert not list_checkpoints(out / "checkpoints")


def test_f10_huge_but_finite_weights_stop_the_run_at_the_last_good_checkpoint(
    finished, tmp_path, capfd
) -> None:
    run = copy_run(finished, tmp_path)
    # A layer norm's gain starts at 1 and moves by about lr per step: a limit of 0.5 makes
    # the (healthy) weights of step 5 count as diverged.
    argv = ["--resume", str(run), "--steps", "6", "--set", "divergence_limit=0.5"]
    assert pretrain_main([*argv, "--checkpoint-every", "1", "--no-progress"]) == 1
    line = one_error(capfd, "apv-pretrain")
    last = checkpoint_path(run / "checkpoints", 4)
    assert line.startswith(
        "apv-pretrain: error: training diverged at step 5: the largest weight magnitude is "
    )
    assert line.endswith(
        "(divergence_limit 0.5); no checkpoint was written from these weights; training "
        f"stopped; the last checkpoint is {last}. Lower the learning rate (--set ...lr=...), "
        "check the data, or train in fp32 (--precision fp32)."
    )
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_f10_diverging_finetuning_stops_with_the_step(tmp_path, capfd) -> None:
    out = tmp_path / "run"
    args = slide_args(tmp_path, out, **{"agent.world_model.lr": 1e10, "checkpoint_every": 20})
    assert finetune_main(args) == 1
    line = one_error(capfd, "apv-finetune")
    # The first update's model step makes the weights huge; the weight check of the first log
    # row stops the run.
    assert line.startswith(
        "apv-finetune: error: training diverged at env_steps 20: the largest weight magnitude is "
    )
    assert "no checkpoint was written from these weights" in line
    assert "the last checkpoint is none yet" in line
    assert not list_checkpoints(out / "checkpoints")


def test_f11_a_second_writer_is_refused_and_a_killed_writers_lock_does_not_block(
    finished, tmp_path, capfd
) -> None:
    run = copy_run(finished, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "pretrain.py"), "--resume", str(run)]
        + ["--steps", "100000", "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_lock(run / ".lock", writer)
        assert pretrain_main(["--resume", str(run), "--steps", "6", "--no-progress"]) == 1
        assert one_error(capfd, "apv-pretrain") == (
            f"apv-pretrain: error: {run} is being written by process {writer.pid} on "
            f"{os.uname().nodename}; wait for that run to finish or stop it (a killed run's lock "
            "is released), or choose another --out"
        )
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    assert pretrain_main(["--resume", str(run), "--steps", "6", "--no-progress"]) == 0
    assert [s for s, _ in list_checkpoints(run / "checkpoints")][-1] == 6


def test_f11_a_second_finetuning_on_the_same_out_is_refused_before_any_checkpoint(
    tmp_path, capfd
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "finetune.py")]
        + slide_args(tmp_path, out, total_env_steps=10**6, checkpoint_every=10**6),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_lock(out / ".lock", first)
        assert finetune_main(slide_args(tmp_path, out)) == 1
        line = one_error(capfd, "apv-finetune")
        holder = f"{out} is being written by process {first.pid} on"
        assert line.startswith(f"apv-finetune: error: {holder}")
        assert not list_checkpoints(out / "checkpoints")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)


def wait_for_lock(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``process`` holds the run lock at ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first writer exited early"
        if path.is_file():
            with path.open("a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    return
        time.sleep(0.2)
    raise AssertionError(f"no lock on {path} after {timeout} s")


def test_f11_run_lock_refuses_a_second_holder_in_one_process(tmp_path) -> None:
    first, second = RunLock(tmp_path / ".lock"), RunLock(tmp_path / ".lock")
    first.acquire()
    with pytest.raises(RunLockedError, match=f"process {os.getpid()} on"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_f12_an_oversized_config_is_refused_from_the_header(video, tmp_path, run_python) -> None:
    huge = shutil.copytree(video, tmp_path / "huge")
    config = json.loads((huge / "config.json").read_text())
    (huge / "config.json").write_text(json.dumps({**config, "deter": 30000}))
    # Allocating that model would take 3 * 30000 * (30000 + 64) * 4 bytes (10.8 GB) for the
    # GRU alone; the header check refuses it first.
    result = run_python(
        "import resource\n"
        "from apv_hub import APVVideoModel, CheckpointError\n"
        "try:\n"
        f"    APVVideoModel.from_pretrained({str(huge)!r})\n"
        "except CheckpointError as e:\n"
        "    print(str(e).replace(chr(10), ' | '))\n"
        "print('peak MiB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    message, peak = result.stdout.strip().splitlines()
    assert message.startswith(
        f"{huge}: model.safetensors does not match the APVVideoModel its config.json describes "
        "(7 difference(s)): | "  # Six weights and the GRU's gate bias.
    )
    assert "shape of rssm.gru.linear.weight: checkpoint (192, 128), model (90000, 30064)" in (
        message
    )
    assert int(peak.split()[-1]) < 2048


def test_f13_every_file_a_run_writes_follows_the_umask(corpus, tmp_path) -> None:
    pretrained, finetuned = tmp_path / "pretrain", tmp_path / "finetune"
    previous = os.umask(0o007)
    try:
        args = tiny_args(corpus, pretrained, 2, *NO_WORKERS, "--checkpoint-every", "1")
        assert pretrain_main(args) == 0
        args = slide_args(tmp_path, finetuned, total_env_steps=40, eval_every=20, video=True)
        assert finetune_main([*args, "--set", "checkpoint_every=20"]) == 0
    finally:
        os.umask(previous)
    files = [p for run in (pretrained, finetuned) for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    for expected in ("model.safetensors", "optimizers.safetensors", "rank0.safetensors"):
        assert expected in names
    for suffix in (".json", ".csv", ".mp4", ".gif", ".md", ".npz"):
        assert any(name.endswith(suffix) for name in names), suffix
    assert any(name.startswith("events.out.tfevents") for name in names)
    modes = {str(p): oct(p.stat().st_mode & 0o777) for p in files}
    assert {path: mode for path, mode in modes.items() if mode != "0o660"} == {}


def test_f14_a_replaced_environment_worker_is_reported(tmp_path) -> None:
    out, marker = tmp_path / "run", tmp_path / "crashed"
    config = slide_config(total_env_steps=60, prefill=20, pretrain_updates=1, eval_every=60)
    config = config.override(
        {
            "env": CRASH_ENV,
            "env_options.make_kwargs": {"marker": str(marker)},
            "eval_episodes": 1,
            "agent.batch_size": 4,
            "agent.seq_len": 8,
        }
    )
    config.save(tmp_path / "config.json")
    argv = ["--config", str(tmp_path / "config.json"), "--out", str(out), "--no-progress"]
    # A real console: the pool's warning goes through logging's default handler to stderr.
    result = run_script("finetune.py", argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.is_file()
    assert (
        f"environment {CRASH_ENV!r}: worker 0 failed (RuntimeError: simulated simulator crash) "
        "and was replaced (1 restart(s) so far)"
    ) in result.stderr
    assert f"apv-hub: recovered from: 1 env worker restarts (listed in {out / 'summary.json'})" in (
        result.stdout
    )
    summary = json.loads((out / "summary.json").read_text())
    [item] = summary["recoveries"]["env_worker_restarts"]["items"]
    assert item.startswith(f"{CRASH_ENV} worker 0 at ")
    assert item.endswith(": RuntimeError: simulated simulator crash")
    assert summary["pool_restarts"] == 1


def run_script(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``python <script> ARGV`` from the repository root in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_f14_skipped_corrupt_videos_are_named_and_summarised(
    workers, corpus, tmp_path, caplog
) -> None:
    from apv_hub.seeding import derive_seed
    from apv_hub.training.configs import PretrainConfig
    from apv_hub.training.pretrain import make_clips

    bad = shutil.copytree(corpus, tmp_path / "partly-bad")
    damaged = set(damage_videos(bad, {"squares-1", "squares-4"}))
    out, steps = tmp_path / "run", 6
    args = tiny_args(bad, out, steps, "--num-workers", str(workers))
    if workers:  # A DataLoader worker decodes: its warnings reach the console of a real run.
        result = run_script("pretrain.py", args)
        assert result.returncode == 0, result.stderr[-3000:]
        console = result.stderr
    else:
        assert pretrain_main(args) == 0
        console = "\n".join(record.getMessage() for record in caplog.records)
    assert "ERROR opening" not in console
    # The videos the training draws met before a decodable one: draws are pure functions of
    # (seed, rank, item, attempt), so they can be walked here without decoding anything.
    config = PretrainConfig.load(out / "run_config.json")
    clips = make_clips(config, 0, 1, steps * 4, derive_seed(config.seed, "data"))
    keys = clips.corpora[0]["key"]
    expected = set()
    for index in range(steps * 4):
        attempt = 0
        while keys[(row := clips.draw(index, attempt)[1])] in damaged:
            expected.add(f"{bad}:{keys[row]}")
            attempt += 1
    assert expected, "the draws of this seed never met a damaged video"
    summary = json.loads((out / "summary.json").read_text())
    skipped = summary["recoveries"]["skipped_videos"]
    assert set(skipped["items"]) == expected and skipped["count"] == len(expected)
    for name in expected:
        assert f"skipping undecodable video {name} (cannot open: " in console


def test_f14_decord_prints_nothing_for_an_invalid_file(capfd) -> None:
    data = np.random.default_rng(0).bytes(3000)
    with pytest.raises(VideoError, match="^cannot open: Invalid data found when processing input"):
        open_reader(data)
    assert capfd.readouterr().err == ""


# H: the 21 cases that held ---------------------------------------------------------------------

# (case, argv after the corpus/run arguments, exit code, the message after "error: ").
PRETRAIN_REFUSALS = [
    ("h01", ["--set", "deter=3"], 2, "unknown config key 'deter'; keys at the top level: "),
    ("h02", ["--set", "model.deter=big"], 2, "model.deter takes an integer, got 'big' (str)"),
    ("h03", ["--preset", "huge"], 2, "unknown APVConfig preset 'huge'; choose one of "),
    ("h09", ["--eval-context", "8"], 2, "eval_context must lie in [1, seq_len - 1] = [1, 7], "),
    ("h10", ["--weights", "0.5", "0.5"], 2, "weights: 2 weight(s) for 1 corpora"),
]


@pytest.mark.parametrize(("case", "extra", "code", "message"), PRETRAIN_REFUSALS)
def test_h01_h10_pretraining_arguments_refused_in_one_line(
    case, extra, code, message, corpus, tmp_path, capfd
) -> None:
    out = tmp_path / "run"
    args = [a for a in tiny_args(corpus, out, 2) if a not in ("--preset", "tiny")]
    preset = [] if "--preset" in extra else ["--preset", "tiny"]
    assert pretrain_main([*args, *preset, *extra]) == code
    assert one_error(capfd, "apv-pretrain").startswith(f"apv-pretrain: error: {message}")
    assert not out.exists()


def test_h04_unknown_variant(video, tmp_path, capfd) -> None:
    out = tmp_path / "run"
    argv = ["--env", SLIDE_ENV, "--variant", "apv2", "--pretrained", str(video)]
    assert finetune_main([*argv, "--out", str(out)]) == 2
    assert one_error(capfd, "apv-finetune").startswith(
        "apv-finetune: error: unknown variant 'apv2'; choose one of "
    )
    assert not out.exists()


def test_h05_h06_h07_resume_and_out_rules(finished, tmp_path, capfd) -> None:
    before = (finished / "run_config.json").read_bytes(), sorted(finished.rglob("*"))
    assert pretrain_main(["--resume", str(finished), "--seed", "1"]) == 2
    assert "cannot change seed (only " in one_error(capfd, "apv-pretrain")
    assert pretrain_main(["--resume", str(tmp_path / "nothing")]) == 2
    assert one_error(capfd, "apv-pretrain") == (
        f"apv-pretrain: error: --resume {tmp_path / 'nothing'}: no run there (no run_config.json)"
    )
    # The folder that holds a run is refused as --out (exit 1), and left as it was.
    corpus_args = tiny_args(REPO_ROOT / "apv_hub" / "data" / "sample", finished, 2, *NO_WORKERS)
    assert pretrain_main(corpus_args) == 1
    assert one_error(capfd, "apv-pretrain") == (
        f"apv-pretrain: error: {finished} already holds a run; continue it with --resume "
        f"{finished} or choose another --out"
    )
    assert ((finished / "run_config.json").read_bytes(), sorted(finished.rglob("*"))) == before


def test_h08_h11_h12_config_conflicts(finished, corpus, tmp_path, capfd) -> None:
    out = tmp_path / "run"
    args = tiny_args(corpus, out, 2, "--init", str(finished / "model"))
    assert pretrain_main(args) == 2
    assert one_error(capfd, "apv-pretrain") == (
        "apv-pretrain: error: --preset and --init exclude each other: --init fixes the model"
    )
    broken = tmp_path / "config.json"
    broken.write_text("{")
    assert pretrain_main(["--config", str(broken), "--out", str(out)]) == 2
    assert one_error(capfd, "apv-pretrain").startswith(
        f"apv-pretrain: error: {broken} is not valid JSON ("
    )
    argv = ["--env", SLIDE_ENV, "--preset", "tiny", "--variant", "apv", "--out", str(out)]
    assert finetune_main(argv) == 2
    assert one_error(capfd, "apv-finetune").startswith(
        "apv-finetune: error: variant 'apv' copies weights from a pre-trained video model: pass "
        "--pretrained"
    )
    assert not out.exists()


def test_h13_h14_h15_hub_lookups_fail_in_one_line(
    video, local_hub, tmp_path, capfd, run_python
) -> None:
    from huggingface_hub import constants

    clip = tmp_path / "clip.mp4"
    assert predict_main(["apv/does-not-exist", str(clip)]) == 1
    assert one_error(capfd, "apv-predict") == (
        "apv-predict: error: no Hub repository 'apv/does-not-exist' (revision 'main') at "
        f"{constants.ENDPOINT}; is the name right?"
    )
    APVVideoModel.from_pretrained(video).push_to_hub("apv/robust-h14")
    assert predict_main(["apv/robust-h14", str(clip), "--revision", "nope"]) == 1
    assert one_error(capfd, "apv-predict") == (
        "apv-predict: error: no revision 'nope' in Hub repository 'apv/robust-h14'"
    )
    offline = run_python(
        "from apv_hub.predict import main\n"
        f"raise SystemExit(main(['apv/robust-h14', {str(clip)!r}]))\n",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-home")},
    )
    assert offline.returncode == 1
    assert stderr_errors(offline.stderr, "apv-predict") == [
        "apv-predict: error: config.json of 'apv/robust-h14' (revision 'main') at "
        f"{constants.ENDPOINT} is not in the local cache and the Hub cannot be reached (offline "
        "mode or no network)"
    ]


def test_h16_h17_h18_h19_damaged_or_foreign_checkpoints(video, tmp_path, capfd) -> None:
    clip = tmp_path / "clip.mp4"

    def refused(folder: Path) -> str:
        assert predict_main([str(folder), str(clip)]) == 1
        return one_error(capfd, "apv-predict")

    truncated = shutil.copytree(video, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert refused(truncated).startswith(
        f"apv-predict: error: {weights} is not a readable safetensors file (truncated or corrupt?)"
    )
    tampered = shutil.copytree(video, tmp_path / "tampered")
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    assert "failed its integrity check" in refused(tampered)
    other = tmp_path / "other"
    APVVideoModel(APVConfig.preset("tiny", deter=48)).save_pretrained(other)
    swapped = shutil.copytree(video, tmp_path / "swapped")
    shutil.copy(other / "model.safetensors", swapped / "model.safetensors")
    line = refused(swapped)
    assert "shape of rssm.gru.linear.weight: checkpoint (144, 112), model (192, 128)" in line
    agent = APVAgent.from_video_model(video, slide_config().agent, action_dim=1)
    agent.save_pretrained(tmp_path / "agent")
    assert refused(tmp_path / "agent") == (
        f"apv-predict: error: {tmp_path / 'agent'} holds a 'apv-agent' checkpoint, not a "
        "'apv-video' (APVVideoModel)"
    )


# H20, a kill while a checkpoint is written, is test_pretrain.py's
# test_crash_during_checkpoint_write_resumes_from_previous.


def test_h21_predict_and_evaluate_arguments(video, tmp_path, capfd) -> None:
    missing = tmp_path / "clip.mp4"
    assert predict_main([str(video), str(missing)]) == 2
    assert one_error(capfd, "apv-predict") == f"apv-predict: error: no video file at {missing}"
    from apv_hub.data.video import write_video

    frames = np.zeros((6, 64, 64, 3), np.uint8)
    clip = write_video(tmp_path / "short.mp4", frames, fps=10)
    assert predict_main([str(video), str(clip), "--context", "6"]) == 2
    assert one_error(capfd, "apv-predict") == (
        "apv-predict: error: context must lie in [1, 5] for clips of 6 frames"
    )
    assert evaluate_main(["--agent", str(video), "--episodes", "0"]) == 2
    assert one_error(capfd, "apv-evaluate") == (
        "apv-evaluate: error: --episodes must be positive, got 0"
    )
