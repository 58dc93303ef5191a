"""apv-report over run folders whose curves are built so that the statistics are known."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apv_hub.evaluation.report import PLOTS, ReportError, build_report, fmt, main

STEPS = [5000, 15000, 25000]
MW = ("metaworld/drawer-open-v3", "metaworld/reach-v3")


def write_run(
    root: Path,
    name: str,
    variant: str,
    env: str,
    seed: int,
    scores,
    steps=STEPS,
    success: bool = True,
    pretrained: str | None = "runs/pre",
) -> Path:
    """A run folder in the trainer's layout: run_config.json + eval.json (+ eval.csv)."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {
        "env": env,
        "variant": variant,
        "seed": seed,
        "preset_name": "tiny",
        "pretrained": pretrained,
        "total_env_steps": steps[-1],
        "agent": {},
    }
    (folder / "run_config.json").write_text(json.dumps(config))
    rows = []
    for step, score in zip(steps, scores, strict=True):
        row = {
            "env_steps": step,
            "updates": step // 5,
            "episodes": step // 500,
            "return_mean": None if score is None else 100.0 * score,
            "return_ci_low": 0.0,
            "return_ci_high": 0.0,
            "eval_episodes": 10,
        }
        if success:
            row["success_rate"] = score
        rows.append(row)
    (folder / "eval.json").write_text(json.dumps(rows))
    (folder / "eval.csv").write_text("env_steps\n" + "\n".join(map(str, steps)) + "\n")
    return folder


def sweep(root: Path, seeds: int = 4) -> dict:
    """apv above dreamerv2 on every task and seed; score of seed s at point i: known numbers."""
    known = {}
    for env_index, env in enumerate(MW):
        for s in range(seeds):
            low = [0.05 * s + 0.01 * env_index + 0.1 * i for i in range(3)]
            high = [0.6 + v for v in low]
            write_run(root, f"dv2-{env_index}-{s}", "dreamerv2", env, s, low)
            write_run(root, f"apv-{env_index}-{s}", "apv", env, s, high)
            known[("dreamerv2", env, s)], known[("apv", env, s)] = low, high
    return known


def trimmed_mean(values) -> float:
    """The 25% trimmed mean by hand: drop floor(n / 4) values at each end."""
    values = sorted(values)
    cut = len(values) // 4
    return float(np.mean(values[cut : len(values) - cut]))


def test_known_sweep_gives_known_statistics(tmp_path):
    known = sweep(tmp_path / "runs")
    report = build_report([tmp_path / "runs"], tmp_path / "out", reps=500, figures=False)
    assert report["metric"] == "success_rate" and report["labels"] == ["apv", "dreamerv2"]
    assert report["tasks"] == list(MW) and report["final_env_steps"] == STEPS[-1]
    for label in ("apv", "dreamerv2"):
        finals = [v[-1] for (lab, _, _), v in known.items() if lab == label]
        assert report["aggregates"][label]["iqm"]["point"] == pytest.approx(trimmed_mean(finals))
        for i in range(len(STEPS)):
            at_i = [v[i] for (lab, _, _), v in known.items() if lab == label]
            assert report["curves"][label]["iqm"][i] == pytest.approx(trimmed_mean(at_i))
        for name, entry in report["aggregates"][label].items():
            low, high = entry["ci"]
            assert low <= entry["point"] <= high, name
        for env in MW:
            seeds = [known[(label, env, s)][-1] for s in range(4)]
            assert report["per_task"][label][env]["point"] == pytest.approx(np.mean(seeds))
    # apv beats dreamerv2 on every seed of every task: probability 1, and so in every resample.
    poi = report["probability_of_improvement"]
    assert poi["baseline"] == "dreamerv2"
    assert poi["results"]["apv"] == {"point": 1.0, "ci": [1.0, 1.0]}
    # Success rates: the profile runs over [0, 1]; every apv run is above 0.6.
    profile = report["performance_profile"]
    assert profile["taus"][0] == 0.0 and profile["taus"][-1] == 1.0
    at = profile["taus"].index(0.6)
    assert profile["fraction_above"]["apv"]["point"][at] == 1.0
    assert profile["fraction_above"]["dreamerv2"]["point"][at] == 0.0


def test_intervals_shrink_with_more_seeds(tmp_path):
    rng = np.random.default_rng(0)
    widths = []
    for seeds in (3, 12, 48):
        root = tmp_path / f"runs{seeds}"
        for s in range(seeds):
            write_run(root, f"r{s}", "apv", MW[0], s, list(rng.uniform(0, 1, size=3)))
        report = build_report([root], tmp_path / f"out{seeds}", reps=300, figures=False)
        low, high = report["aggregates"]["apv"]["iqm"]["ci"]
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_markdown_holds_the_numbers_of_the_json(tmp_path):
    sweep(tmp_path / "runs", seeds=3)
    report = build_report([tmp_path / "runs"], tmp_path / "out", reps=200, figures=False)
    text = (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["labels"] == report["labels"]
    lines = text.splitlines()
    for label, entries in report["aggregates"].items():
        row = next(line for line in lines if line.startswith(f"| {label} | 6 |"))
        for entry in entries.values():
            assert f"{fmt(entry['point'])} [{fmt(entry['ci'][0])}, {fmt(entry['ci'][1])}]" in row
    poi = report["probability_of_improvement"]["results"]["apv"]
    assert f"| apv | {fmt(poi['point'])} [{fmt(poi['ci'][0])}, {fmt(poi['ci'][1])}] |" in text
    for label, tasks in report["per_task"].items():
        for env, entry in tasks.items():
            per_seed = ", ".join(fmt(v) for v in entry["final"])
            assert any(
                line.startswith(f"| {env} | {label} | 3 |") and per_seed in line for line in lines
            )
    for i, step in enumerate(report["env_steps"]):
        row = next(line for line in lines if line.startswith(f"| {step} |"))
        assert all(fmt(report["curves"][lab]["iqm"][i]) in row for lab in report["labels"])


def test_figures_are_valid_pngs(tmp_path):
    sweep(tmp_path / "runs", seeds=2)
    report = build_report([tmp_path / "runs"], tmp_path / "out", reps=100)
    assert set(report["plots"]) == set(PLOTS)
    for name in PLOTS.values():
        with Image.open(tmp_path / "out" / name) as image:
            image.verify()
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 150


def test_one_seed_is_reported_with_a_degenerate_interval(tmp_path):
    write_run(tmp_path, "a", "apv", MW[0], 0, [0.1, 0.2, 0.3])
    report = build_report([tmp_path / "a"], tmp_path / "out", reps=100, figures=False)
    assert report["aggregates"]["apv"]["iqm"] == {"point": 0.3, "ci": [0.3, 0.3]}
    assert any("one seed" in note for note in report["notes"])
    assert report["probability_of_improvement"] is None


def test_variant_missing_on_a_task_is_left_out_of_the_aggregates(tmp_path):
    for s in range(2):
        write_run(tmp_path, f"apv0-{s}", "apv", MW[0], s, [0.5, 0.6, 0.9])
        write_run(tmp_path, f"apv1-{s}", "apv", MW[1], s, [0.0, 0.0, 0.1])
        write_run(tmp_path, f"dv2-{s}", "dreamerv2", MW[0], s, [0.1, 0.2, 0.3])
    report = build_report([tmp_path], tmp_path / "out", reps=100, figures=False)
    assert report["tasks"] == [MW[0]]
    assert report["aggregates"]["apv"]["iqm"]["point"] == pytest.approx(0.9)
    assert MW[1] in report["per_task"]["apv"] and MW[1] not in report["per_task"]["dreamerv2"]
    assert any(MW[1] in note and "dreamerv2" in note for note in report["notes"])


def test_runs_of_different_lengths_align_at_common_points(tmp_path):
    write_run(tmp_path, "long", "apv", MW[0], 0, [0.1, 0.2, 0.3, 0.9], steps=STEPS + [35000])
    write_run(tmp_path, "short", "apv", MW[0], 1, [0.1, 0.4, 0.5])
    report = build_report([tmp_path], tmp_path / "out", reps=100, figures=False)
    assert report["env_steps"] == STEPS and report["final_env_steps"] == 25000
    assert report["per_task"]["apv"][MW[0]]["final"] == [0.3, 0.5]
    assert any("aligned at the 3 points all 2 runs reached" in note for note in report["notes"])
    write_run(tmp_path / "b", "later", "apv", MW[0], 2, [0.2], steps=[7000])
    with pytest.raises(ReportError, match="share no evaluation point"):
        build_report([tmp_path, tmp_path / "b"], tmp_path / "out2")


def test_non_finite_scores_drop_their_evaluation_point(tmp_path):
    write_run(tmp_path, "a", "apv", MW[0], 0, [0.1, 0.2, 0.3])
    write_run(tmp_path, "b", "apv", MW[0], 1, [0.1, 0.2, None])
    report = build_report([tmp_path], tmp_path / "out", reps=100, figures=False)
    assert report["env_steps"] == STEPS[:2] and report["final_env_steps"] == STEPS[1]
    assert any("non-finite" in note and str(tmp_path / "b") in note for note in report["notes"])


def test_duplicate_runs(tmp_path):
    a = write_run(tmp_path, "a", "apv", MW[0], 0, [0.1, 0.2, 0.3])
    report = build_report(
        [a, tmp_path, str(tmp_path / "*")], tmp_path / "out", reps=50, figures=False
    )
    assert len(report["runs"]) == 1  # one folder named three ways counts once
    write_run(tmp_path, "copy", "apv", MW[0], 0, [0.1, 0.2, 0.3])
    with pytest.raises(ReportError, match="duplicate runs: .* seed 0"):
        build_report([tmp_path], tmp_path / "out")


def test_returns_normalised_per_task(tmp_path):
    for s, score in enumerate([0.2, 0.4, 0.6, 0.8]):
        write_run(
            tmp_path / "runs", f"w{s}", "apv", "dmc/walker-walk", s, [0, 0, score], success=False
        )
    report = build_report(
        [tmp_path / "runs"],
        tmp_path / "out",
        reps=100,
        normalize=["0:1000", "dmc/walker-walk=0:100"],
        figures=False,
    )
    assert report["metric"] == "return_mean"
    # Returns are 100 x score; the task's own bounds (0, 100) win over the global (0, 1000).
    assert report["aggregates"]["apv"]["iqm"]["point"] == pytest.approx(0.5)
    assert report["aggregates"]["apv"]["optimality_gap"]["point"] == pytest.approx(0.5)
    with pytest.raises(ReportError, match="MIN:MAX"):
        build_report([tmp_path / "runs"], tmp_path / "out", normalize=["1000"])
    with pytest.raises(ReportError, match="success_rate is missing"):
        build_report([tmp_path / "runs"], tmp_path / "out", metric="success")


def test_folders_that_are_not_runs_get_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match=f"{empty} is not a fine-tuning run folder: .*run_config"):
        build_report([empty], tmp_path / "out")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    with pytest.raises(ReportError, match="rename it to run_config.json"):
        build_report([legacy], tmp_path / "out")
    run = write_run(tmp_path, "noeval", "apv", MW[0], 0, [0.1, 0.2, 0.3])
    (run / "eval.json").unlink()
    with pytest.raises(ReportError, match=f"{run / 'eval.json'} is missing"):
        build_report([run], tmp_path / "out")
    with pytest.raises(ReportError, match="no folder matches"):
        build_report([str(tmp_path / "nothing-*")], tmp_path / "out")
    assert main([str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"apv-report: error: {empty} is not a fine-tuning run folder: " + (
        f"{empty / 'run_config.json'} is missing\n"
    )


def test_command_line(tmp_path, capsys):
    sweep(tmp_path / "runs", seeds=2)
    args = [str(tmp_path / "runs" / "apv-*"), str(tmp_path / "runs" / "dv2-*")]
    assert (
        main(
            [*args, "--out", str(tmp_path / "out"), "--reps", "100", "--seed", "1", "--no-figures"]
        )
        == 0
    )
    assert "apv: final IQM success_rate" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["seed"] == 1 and report["reps"] == 100 and len(report["runs"]) == 8
    assert report["plots"] == {} and not list((tmp_path / "out").glob("*.png"))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--metric", "score"])
    capsys.readouterr()
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--baseline", "x"]) == 2
    assert capsys.readouterr().err == (
        "apv-report: error: --baseline 'x' has no runs; labels: apv, dreamerv2\n"
    )
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--reps", "0"]) == 2
    assert "apv-report: error: --reps must be a positive" in capsys.readouterr().err


def test_unequal_seed_counts_use_the_seeds_every_task_has(tmp_path):
    # rliable needs as many runs on every task: apv has seeds 0-2 on MW[0] and 0-1 on MW[1].
    for s, final in enumerate([0.2, 0.4, 0.9]):
        write_run(tmp_path, f"a0-{s}", "apv", MW[0], s, [0.0, 0.1, final])
    for s, final in enumerate([0.6, 0.8]):
        write_run(tmp_path, f"a1-{s}", "apv", MW[1], s, [0.0, 0.1, final])
    report = build_report([tmp_path], tmp_path / "out", reps=50, figures=False)
    # Aggregates over seeds 0 and 1 of both tasks: mean of (0.2, 0.4, 0.6, 0.8).
    assert report["aggregates"]["apv"]["mean"]["point"] == pytest.approx(0.5)
    assert report["per_task"]["apv"][MW[0]]["final"] == [0.2, 0.4, 0.9]
    assert any(f"{MW[0]} seed 2" in note and "per-task rows" in note for note in report["notes"])


def test_report_over_real_finetuning_runs(tmp_path, capsys):
    """Four real short runs of `apv_hub.training.finetune` (2 variants x 2 seeds, tiny agents on
    the SlideToCenter pixel task), then apv-report over their folders."""
    from apv_hub.training.finetune import finetune
    from tests.finetune_helpers import SLIDE_ENV, slide_config

    schedule = {
        "total_env_steps": 120,
        "prefill": 40,
        "pretrain_updates": 1,
        "train_every": 20,
        "eval_every": 40,
        "eval_episodes": 2,
        "checkpoint_every": 120,
        "log_every": 40,
        "agent.batch_size": 2,
        "agent.seq_len": 8,
    }
    for variant in ("dreamerv2", "apv_scratch"):
        for seed in (0, 1):
            config = slide_config(variant, seed=seed, **schedule)
            finetune(config, tmp_path / "runs" / f"{variant}-{seed}", progress=False)
    code = main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--reps", "100"])
    assert code == 0 and "wrote" in capsys.readouterr().err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["metric"] == "return_mean" and report["tasks"] == [SLIDE_ENV]
    assert report["labels"] == ["apv_scratch", "dreamerv2"] and len(report["runs"]) == 4
    for label in report["labels"]:
        entry = report["per_task"][label][SLIDE_ENV]
        assert entry["seeds"] == [0, 1]
        for seed, final in zip(entry["seeds"], entry["final"], strict=True):
            rows = json.loads((tmp_path / "runs" / f"{label}-{seed}" / "eval.json").read_text())
            assert [r["env_steps"] for r in rows] == report["env_steps"] == [40, 80, 120]
            assert final == rows[-1]["return_mean"]
    assert report["probability_of_improvement"]["baseline"] == "dreamerv2"
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert written == {"report.json", "report.md", *PLOTS.values()}
