"""apv-probe: the regression statistics on features whose content is known, and the real pipeline
(Meta-world rendering, a tiny video model, random-init comparison, tables and figures)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from apv_hub.config import APVConfig
from apv_hub.envs import make
from apv_hub.evaluation.probe import (
    PLOTS,
    ProbeEpisode,
    collect_episodes,
    main,
    run_probe,
    score_features,
    target_groups,
    train_head_over_time,
)
from apv_hub.evaluation.ridge import RidgePath, Standardizer, regression_scores
from apv_hub.video_model import APVVideoModel

ENVS = ("metaworld/drawer-open-v3", "metaworld/reach-v3")


def tiny_config() -> APVConfig:
    return APVConfig.preset(
        "tiny", image_size=32, encoder_kernels=[4, 4, 4], decoder_kernels=[6, 4, 6]
    )


def test_ridge_path_solves_sklearn_ridge():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    for rows, cols in ((60, 8), (8, 60)):  # the primal (Gram) and dual (kernel) solutions
        x = Standardizer.fit(raw := rng.normal(size=(rows, cols)))(raw)
        y = rng.normal(size=(rows, 3))
        y -= y.mean(axis=0)
        path = RidgePath(x, y)
        for alpha in (0.1, 10.0):
            expected = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky").fit(x, y)
            np.testing.assert_allclose(path.weights(alpha), expected.coef_.T, atol=1e-8)
            np.testing.assert_allclose(
                path.predictor(x[:5])(alpha), expected.predict(x[:5]), atol=1e-8
            )


def test_regression_scores_by_hand():
    # Training mean 2, std 1: errors (0, 0, 1) -> MSE 1/3; deviations from the training mean
    # (-1, 0, 1) -> R^2 = 1 - 1 / 2.
    norm = Standardizer(np.array([2.0]), np.array([1.0]))
    scores = regression_scores(
        np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [4.0]]), norm
    )
    assert scores == {"r2": pytest.approx(0.5), "mse": pytest.approx(1 / 3)}


def synthetic_episodes(episodes=8, length=60, dim=6, seed=0):
    """Episodes of a random-walk state; the reward is a fixed linear function of the state."""
    rng = np.random.default_rng(seed)
    reward_weights = rng.normal(size=dim)
    out = []
    for i in range(episodes):
        states = np.cumsum(rng.normal(size=(length, dim)), axis=0) + rng.normal(size=dim)
        rewards = (states @ reward_weights).astype(np.float32)
        rewards[0] = 0.0  # the reset frame, as the environments report it
        out.append(
            ProbeEpisode("synthetic", i, np.zeros((length, 3, 1, 1), np.uint8), states, rewards)
        )
    return out


def test_probe_finds_a_linearly_encoded_state_and_not_noise():
    episodes = synthetic_episodes()
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(6, 40))
    # Features that hold the state linearly (mixed into 40 dims, plus noise), and pure noise.
    encoded = [e.states @ mixing + 0.1 * rng.normal(size=(len(e.states), 40)) for e in episodes]
    noise = [rng.normal(size=(len(e.states), 40)) for e in episodes]
    groups, constant = target_groups(
        {"first": slice(0, 3), "rest": slice(3, 6)}, episodes[0].states
    )
    assert constant == [] and groups == {
        "state": list(range(6)),
        "first": [0, 1, 2],
        "rest": [3, 4, 5],
    }
    good = score_features(encoded[:6], encoded[6:], episodes[:6], episodes[6:], groups, folds=3)
    bad = score_features(noise[:6], noise[6:], episodes[:6], episodes[6:], groups, folds=3)
    for target in ("state", "first", "rest", "reward"):
        assert good[target]["r2"] > 0.97, target
        assert -0.3 < bad[target]["r2"] < 0.1, target
        assert good[target]["mse"] < bad[target]["mse"]
    # Cross-validation chooses a heavy penalty for noise and a light one for the encoded state.
    assert bad["state"]["alpha"] > good["state"]["alpha"]


def test_head_over_time_learns_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    y = x @ rng.normal(size=(10, 2))
    curve = train_head_over_time(x[:300], y[:300], x[300:], y[300:], steps=200, eval_every=50)
    assert curve["steps"] == [0, 50, 100, 150, 200]
    assert curve["test_mse"][-1] < 0.2 * curve["test_mse"][0]


def test_state_layouts_cover_the_state_vector():
    for name in ("metaworld/drawer-open-v3", "dmc/walker-walk"):
        with make(name, seed=0, render_size=32) as env:
            _, info = env.reset()
            layout = env.state_layout()
            covered = sorted(i for part in layout.values() for i in range(len(info["state"]))[part])
            assert covered == list(range(len(info["state"]))), name
    assert list(layout) == ["orientations", "height", "velocity"]


@pytest.fixture(scope="module")
def expert_episodes():
    """Three scripted-expert episodes of drawer-open (15 steps, 32x32), rendered once."""
    return collect_episodes(ENVS[0], 3, seed=0, render_size=32, episode_length=15, progress=False)


def test_collect_episodes_runs_the_scripted_expert(expert_episodes):
    episodes, layout = expert_episodes
    assert layout["hand"] == slice(0, 3)
    for episode in episodes:
        assert episode.frames.shape == (16, 3, 32, 32) and episode.frames.dtype == np.uint8
        assert episode.states.shape == (16, 39) and episode.rewards.shape == (16,)
        assert episode.rewards[0] == 0.0 and np.all(episode.rewards[1:] > 0)
        assert episode.actions.shape == (16, 4) and not episode.actions[0].any()
        assert np.abs(episode.actions).max() <= 1.0 and episode.actions[1:].any()
    # The expert moves the hand: its position changes along the episode.
    assert np.abs(np.diff(episodes[0].states[:, :3], axis=0)).sum() > 0.01
    # Episodes depend on the seed only: the same seed renders the same first episode.
    again, _ = collect_episodes(
        ENVS[0], 1, seed=0, render_size=32, episode_length=3, progress=False
    )
    np.testing.assert_array_equal(again[0].frames, episodes[0].frames[:4])


def test_real_pipeline_writes_table_and_figures(tmp_path):
    torch.manual_seed(0)
    model = APVVideoModel(tiny_config())
    report = run_probe(
        model,
        ENVS,
        tmp_path / "probe",
        episodes=3,
        test_episodes=1,
        episode_length=12,
        random_init_seeds=2,
        folds=2,
        over_time=True,
        over_time_steps=20,
        clip_length=4,
        progress=False,
    )
    out = tmp_path / "probe"
    saved = json.loads((out / "probe.json").read_text())
    assert saved["random_init_seeds"] == [0, 1] and saved["envs"] == list(ENVS)
    kinds = {(r["env"], r["features"], r["init_seed"]) for r in saved["rows"]}
    assert kinds == {
        (env, k, s)
        for env in ENVS
        for k, s in [("pretrained", None), ("random_init", 0), ("random_init", 1)]
    }
    assert {r["target"] for r in saved["rows"]} >= {"state", "hand", "reward"}
    assert all(np.isfinite(r["mse"]) for r in saved["rows"])
    text = (out / "probe.md").read_text()
    for entry in report["summary"]:
        r2 = entry["pretrained"]["r2"]
        assert f"| {entry['env']} | {entry['target']} | {entry['dims']} | {r2:.3f} |" in text
    assert set(report["plots"]) == set(PLOTS)
    for name in PLOTS.values():
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200
    sets = saved["embedding"]["sets"]
    assert (
        set(sets) == {"pretrained", "random_init"}
        and len(sets["pretrained"]["points"]) == 2 * 3 * 3
    )


def test_pretrained_against_random_init_from_the_command_line(tmp_path, capsys):
    # A tiny model trained briefly on the task's own frames, saved and loaded back by the CLI.
    episodes, _ = collect_episodes(
        ENVS[0], 3, seed=5, render_size=32, episode_length=24, progress=False
    )
    torch.manual_seed(0)
    model = APVVideoModel(tiny_config())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    clips = torch.from_numpy(np.stack([e.frames[:16] for e in episodes]))
    for _ in range(10):
        loss, _ = model.loss(clips)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "model")
    args = [str(tmp_path / "model"), "--env", ENVS[0], "--episodes", "3", "--test-episodes", "1"]
    args += ["--episode-length", "10", "--random-init-seeds", "2", "--folds", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "R^2 pre-trained" in err and "wrote" in err
    report = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert report["model"] == str(tmp_path / "model") and report["embedding"] is None
    # Errors: one line each, 2 for a probe that cannot run as asked, 1 for a missing model.
    assert main([*args[:3], "--episodes", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apv-probe: error: 2 episodes with 1 held out leave fewer than 2")
    assert err.count("\n") == 1
    assert main([args[0], "--env", "metaworld/no-such-task-v3", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apv-probe: error: cannot probe metaworld/no-such-task-v3: unknown")
    assert err.count("\n") == 1
    assert main([args[0], "--env", "walker", "--out", str(tmp_path / "o")]) == 2
    assert "must look like '<family>/<task>'" in capsys.readouterr().err
    missing = tmp_path / "no-model"
    assert main([str(missing), "--env", ENVS[0], "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("apv-probe: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
