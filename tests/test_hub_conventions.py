"""Issue 14 parts 2 and 3: ``from_pretrained`` / ``push_to_hub`` as huggingface_hub and
transformers users expect them, ``--revision`` wherever a repo id is taken, and cards whose YAML
header the Hub understands (licence, pipeline tag, base model, datasets, model-index), checked
by parsing them with huggingface_hub's own card classes, through the local Hub server."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard, hf_hub_download

from apv_hub import APVAgent, APVConfig, APVVideoModel
from apv_hub.hub import PushError
from apv_hub.training.commands import finetune_main, pretrain_main
from tests.finetune_helpers import save_tiny_video_model, slide_config
from tests.pretrain_helpers import assert_same_tensors, build_squares_corpus, tiny_args


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return save_tiny_video_model(tmp_path_factory.mktemp("video") / "model")


def unique(name: str) -> str:
    return f"apv/{name}-{uuid.uuid4().hex[:8]}"


def two_commits(repo_id: str, video: Path) -> tuple[str, APVVideoModel]:
    """Push the model at ``video`` (the first commit, whose id is returned) and then a changed
    copy of it; returns (first commit id, the first model)."""
    first = APVVideoModel.from_pretrained(video)
    commit = first.push_to_hub(repo_id)
    changed = APVVideoModel.from_pretrained(video)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(1.0)
    changed.push_to_hub(repo_id)
    return commit.oid, first


# from_pretrained ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"strict": False}, {"revison": "main"}, {"device_map": "cpu"}, {"torch_dtype": "float16"}],
)
def test_from_pretrained_refuses_unknown_keywords(video, kwargs) -> None:
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        APVVideoModel.from_pretrained(video, **kwargs)


def test_from_pretrained_checks_device_and_dtype_arguments(video) -> None:
    with pytest.raises(TypeError, match="map_location='cpu' and device='meta' disagree"):
        APVVideoModel.from_pretrained(video, map_location="cpu", device="meta")
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        APVVideoModel.from_pretrained(video, dtype=torch.int64)


def test_from_pretrained_returns_an_eval_model_where_and_as_asked(video) -> None:
    saved = APVVideoModel.from_pretrained(video)
    assert not saved.training and not any(m.training for m in saved.modules())
    half = APVVideoModel.from_pretrained(video, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    for name, p in half.named_parameters():
        assert torch.equal(p, saved.get_parameter(name).to(torch.bfloat16)), name
    # The device is honoured (the meta device stands in for an accelerator here).
    for kwargs in ({"device": "meta"}, {"map_location": torch.device("meta")}):
        moved = APVVideoModel.from_pretrained(video, **kwargs)
        assert {p.device.type for p in moved.parameters()} == {"meta"}
    agent_dir = video.parent / "agent"
    agent = APVAgent.from_video_model(video, slide_config("apv").agent, action_dim=1)
    agent.train().save_pretrained(agent_dir)
    assert not APVAgent.from_pretrained(agent_dir).training


# push_to_hub -----------------------------------------------------------------------------------


def test_push_to_hub_honours_private_branch_message_and_pull_requests(video, local_hub) -> None:
    api = HfApi()
    repo_id = unique("push")
    model = APVVideoModel.from_pretrained(video)
    commit = model.push_to_hub(repo_id, private=True, branch="dev", commit_message="first cut")
    assert commit.oid and api.model_info(repo_id).private
    assert "model.safetensors" in api.list_repo_files(repo_id, revision="dev")
    assert "model.safetensors" not in api.list_repo_files(repo_id)  # main untouched
    [latest, *_] = api.list_repo_commits(repo_id, revision="dev")
    assert latest.title == "first cut"
    loaded = APVVideoModel.from_pretrained(repo_id, revision="dev")
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    # transformers' name for the branch is accepted too; the two must agree.
    model.push_to_hub(repo_id, revision="other")
    assert "model.safetensors" in api.list_repo_files(repo_id, revision="other")
    with pytest.raises(TypeError, match="name different branches"):
        model.push_to_hub(repo_id, branch="dev", revision="main")
    with pytest.raises(TypeError, match="unexpected keyword argument 'privat'"):
        model.push_to_hub(repo_id, privat=True)
    # huggingface_hub's save-and-push takes the same arguments.
    other = unique("saved")
    model.save_pretrained(video.parent / "saved", push_to_hub=True, repo_id=other, private=True)
    assert api.model_info(other).private and "README.md" in api.list_repo_files(other)
    # create_pr reaches the Hub: the local server does not do pull requests and says so.
    refused = f"pushing to Hub repository '{repo_id}' failed: .*pull requests are not supported"
    with pytest.raises(PushError, match=refused):
        model.push_to_hub(repo_id, create_pr=True)


# The commands ----------------------------------------------------------------------------------


def test_init_revision_starts_pretraining_from_that_commit(video, local_hub, tmp_path) -> None:
    repo_id = unique("init")
    first_commit, first = two_commits(repo_id, video)
    corpus = build_squares_corpus(tmp_path / "corpus", num_videos=2, length=12)
    out = tmp_path / "run"
    args = tiny_args(corpus, out, 1, "--num-workers", "0")
    args = [a for a in args if a not in ("--preset", "tiny")]
    argv = [*args, "--init", repo_id, "--init-revision", first_commit, "--set", "model.lr=0"]
    assert pretrain_main(argv) == 0
    # With a zero learning rate the one step changes nothing: the weights are the commit's.
    trained = APVVideoModel.from_pretrained(out / "model")
    assert_same_tensors(trained.state_dict(), first.state_dict())


def test_pushed_agent_has_base_model_and_model_index(video, local_hub, tmp_path) -> None:
    """A short fine-tuning run from a Hub video model at a given commit, pushed private to a
    branch: the card's YAML names the video model and the last evaluation as measured."""
    api = HfApi()
    base, agent_repo = unique("base"), unique("agent")
    first_commit, first = two_commits(base, video)
    config = slide_config(
        "apv",
        total_env_steps=60,
        prefill=20,
        pretrain_updates=1,
        eval_every=30,
        eval_episodes=2,
        **{
            "agent.batch_size": 4,
            "agent.seq_len": 8,
            "agent.world_model.freeze_pretrained_updates": 1000,
        },
    )
    # The agent takes the video model's architecture (64x64) whatever the slide preset says.
    config = config.override({"env_options.render_size": 64})
    config.save(tmp_path / "config.json")
    out = tmp_path / "run"
    argv = ["--config", str(tmp_path / "config.json"), "--out", str(out), "--no-progress"]
    argv += ["--pretrained", base, "--pretrained-revision", first_commit]
    argv += ["--push-to-hub", agent_repo, "--private", "--revision", "dev"]
    assert finetune_main(argv) == 0

    # The agent was built on the first commit (its pre-trained part is held for 1000 updates).
    agent = APVAgent.from_pretrained(agent_repo, revision="dev")
    assert_same_tensors(agent.world_model.encoder.state_dict(), first.encoder.state_dict())
    assert api.model_info(agent_repo).private
    files = set(api.list_repo_files(agent_repo, revision="dev"))
    expected = {"model.safetensors", "config.json", "README.md", "run_config.json"}
    assert expected | {"eval.csv", "metrics.csv"} <= files
    card = ModelCard.load(hf_hub_download(agent_repo, "README.md", revision="dev"))
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == (
        "mit",
        "apv-hub",
        "reinforcement-learning",
    )
    assert data.base_model == base
    with open(out / "eval.csv") as f:
        last = list(csv.DictReader(f))[-1]
    [returns] = [r for r in data.eval_results if r.metric_type == "mean_reward"]
    assert returns.task_type == "reinforcement-learning"
    assert returns.dataset_type == returns.dataset_name == config.env
    assert returns.metric_value == pytest.approx(float(last["return_mean"]))
    assert f"after {last['env_steps']} environment steps" in returns.metric_name
    assert data.model_name == agent_repo


def test_video_model_card_names_its_hub_data_and_base(tmp_path) -> None:
    model = APVVideoModel(APVConfig.preset("tiny"))
    model.training_info = {"data": ["apv/some-corpus", str(tmp_path)], "init": "apv/rlbench-99"}
    data = ModelCard(str(model.model_card("me/mine"))).data
    assert data.datasets == ["apv/some-corpus"]  # a local folder is not a Hub dataset
    assert (data.base_model, data.license, data.pipeline_tag) == (
        "apv/rlbench-99",
        "mit",
        "video-to-video",
    )
    model.training_info = {"data": [str(tmp_path)], "init": str(tmp_path)}
    data = ModelCard(str(model.model_card())).data
    assert data.datasets is None and data.base_model is None


def test_dataset_card_names_task_categories(tmp_path) -> None:
    root = build_squares_corpus(tmp_path / "corpus", num_videos=1, length=4)
    data = DatasetCard.load(root / "README.md").data
    assert data.task_categories == ["reinforcement-learning", "robotics"]
    assert data.license


def test_a_failed_push_ends_the_run_in_one_line_with_the_model_saved(tmp_path, run_python) -> None:
    corpus = build_squares_corpus(tmp_path / "corpus", num_videos=2, length=12)
    out = tmp_path / "run"
    # An invalid repo id is refused before anything runs.
    bad = tiny_args(corpus, out, 1, "--num-workers", "0", "--push-to-hub", "not a/valid id!")
    assert pretrain_main(bad) == 2 and not out.exists()
    # Offline, the push fails after training: one line, the model and the summary are kept.
    args = tiny_args(corpus, out, 1, "--num-workers", "0", "--push-to-hub", "apv/offline")
    result = run_python(
        "from apv_hub.training.commands import pretrain_main\n"
        f"raise SystemExit(pretrain_main({args!r}))",
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("apv-pretrain: error:")]
    assert line.startswith("apv-pretrain: error: pushing to Hub repository 'apv/offline' failed: ")
    assert line.endswith(
        f"; the model is saved in {out / 'model'}: push it with "
        "from_pretrained(...).push_to_hub(...)"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["push_error"] in line and (out / "model" / "model.safetensors").is_file()
