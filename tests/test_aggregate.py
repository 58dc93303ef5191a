"""The run-aggregation statistics against values derived by hand and, where it imports, rliable."""

import numpy as np
import pytest

from apv_hub.evaluation.aggregate import (
    average_improvement_probability,
    improvement_probability,
    iqm,
    mean_of_task_means,
    median_of_task_means,
    optimality_gap,
    score_profile,
    stratified_bootstrap,
)
from apv_hub.evaluation.episodes import (
    CI_OVER,
    EpisodeResult,
    bootstrap_ci,
    build_parser,
    summarize,
)


def tasks_of(*runs_per_task):
    """Per-task final scores as the statistics take them: [1 resample, runs, 1 point]."""
    return [np.asarray(t, np.float64)[None, :, None] for t in runs_per_task]


def test_iqm_is_the_pooled_25_percent_trimmed_mean():
    # 8 pooled scores: 2 dropped at each end -> mean(3, 4, 5, 6).
    assert iqm(tasks_of([1, 2, 3, 4], [5, 6, 7, 8]))[0, 0] == pytest.approx(4.5)
    # 6 scores: int(1.5) = 1 dropped at each end -> mean(1, 2, 3, 4); the outlier is gone.
    assert iqm(tasks_of([0, 100, 2], [3, 1, 4]))[0, 0] == pytest.approx(2.5)


def test_means_medians_and_gap_follow_their_definitions():
    # Ragged tasks: task means 2 and 10 (not the pooled mean 14/3).
    assert mean_of_task_means(tasks_of([1, 3], [10]))[0, 0] == pytest.approx(6.0)
    assert median_of_task_means(tasks_of([1, 3], [10], [4, 6]))[0, 0] == pytest.approx(5.0)
    # Scores above the target count as the target: 1 - mean(0.5, 1).
    assert optimality_gap(tasks_of([0.5, 1.2]))[0, 0] == pytest.approx(0.25)


def test_probability_of_improvement_counts_pairs_and_half_ties():
    one = lambda values: np.asarray(values, np.float64)[None, :, None]
    assert improvement_probability(one([3, 4]), one([1, 2]))[0, 0] == 1.0
    assert improvement_probability(one([1, 2]), one([3, 4]))[0, 0] == 0.0
    # Pairs (1,1) tie, (1,2) loss, (2,1) win, (2,2) tie -> (0.5 + 0 + 1 + 0.5) / 4.
    assert improvement_probability(one([1, 2]), one([1, 2]))[0, 0] == 0.5
    assert improvement_probability(one([3]), one([1, 2, 4]))[0, 0] == pytest.approx(2 / 3)
    # Averaged over tasks: 1 on the first, 0 on the second.
    x, y = tasks_of([5, 6], [0]), tasks_of([1, 2], [1])
    assert average_improvement_probability(x, y)[0, 0] == 0.5


def test_performance_profile_is_the_fraction_strictly_above():
    profile = score_profile(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(profile(tasks_of([0.1, 0.5], [0.9]))[0], [1.0, 1 / 3, 0.0])


def test_bootstrap_percentiles_of_a_case_solved_by_hand():
    # The mean of two draws from {0, 1} is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4): its 2.5% and
    # 97.5% quantiles are 0 and 1; its 30% and 70% quantiles are both 0.5.
    mean = lambda tasks: tasks[0].mean(axis=1)
    wide = stratified_bootstrap([[np.array([[0.0], [1.0]])]], mean, reps=4000, seed=1)
    assert (wide.point[0], wide.low[0], wide.high[0]) == (0.5, 0.0, 1.0)
    narrow = stratified_bootstrap(
        [[np.array([[0.0], [1.0]])]], mean, reps=4000, confidence=0.4, seed=1
    )
    assert (narrow.low[0], narrow.high[0]) == (0.5, 0.5)


def test_bootstrap_resamples_runs_within_each_task():
    # Every stratified resample holds four runs of each task, so the pooled IQM is always 0.5;
    # resampling the pooled runs instead would give a wide interval.
    tasks = [np.zeros((4, 1)), np.ones((4, 1))]
    interval = stratified_bootstrap([tasks], iqm, reps=500)
    assert interval.low[0] == interval.high[0] == interval.point[0] == 0.5


def test_bootstrap_intervals_contain_the_point_and_shrink_with_more_seeds():
    rng = np.random.default_rng(0)
    widths = []
    for runs in (4, 16, 64):
        tasks = [rng.normal(task, 1.0, size=(runs, 3)) for task in range(3)]
        interval = stratified_bootstrap([tasks], iqm, reps=1000, seed=0)
        assert np.all(interval.low <= interval.point) and np.all(interval.point <= interval.high)
        widths.append(float(np.mean(interval.high - interval.low)))
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_is_reproducible_and_degenerates_with_one_seed():
    tasks = [np.array([[0.1], [0.7], [0.4]]), np.array([[0.9], [0.2]])]
    a = stratified_bootstrap([tasks], iqm, reps=300, seed=3)
    b = stratified_bootstrap([tasks], iqm, reps=300, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    single = stratified_bootstrap([[np.array([[0.3]]), np.array([[0.8]])]], iqm, reps=300)
    assert single.low[0] == single.point[0] == single.high[0]


def test_bootstrap_chunks_give_the_same_kind_of_answer(monkeypatch):
    import apv_hub.evaluation.aggregate as aggregate

    tasks = [np.arange(10.0)[:, None]]
    whole = stratified_bootstrap([tasks], iqm, reps=2000, seed=0)
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", 25)  # 2 resamples of 10 runs per chunk
    chunked = stratified_bootstrap([tasks], iqm, reps=2000, seed=0)
    assert chunked.point == whole.point
    assert abs(chunked.low[0] - whole.low[0]) <= 0.5 and abs(chunked.high[0] - whole.high[0]) <= 0.5


def test_apv_evaluate_interval_is_said_to_be_over_episodes():
    results = [
        EpisodeResult(seed=i, episode_return=float(i), success=None, length=5) for i in range(4)
    ]
    score = summarize(results)
    assert score["ci95_over"] == CI_OVER and "episodes of this one run" in CI_OVER
    assert score["return"]["ci95"] == list(bootstrap_ci([0.0, 1.0, 2.0, 3.0]))
    assert "not over training seeds" in " ".join(build_parser().description.split())


def rliable_or_skip():
    try:
        from rliable import library, metrics
    except Exception as e:  # rliable 1.2.0 fails at import (not ImportError) on pandas >= 3
        pytest.skip(f"rliable does not import here: {type(e).__name__}: {e}")
    return library, metrics


def test_agrees_with_rliable():
    library, metrics = rliable_or_skip()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 4))  # runs x tasks, rliable's layout
    y = np.clip(x + rng.normal(0.1, 0.2, size=(6, 4)), 0, 1)
    ours = lambda m: [m[:, k : k + 1] for k in range(m.shape[1])]  # per task [runs, 1]
    for name, theirs, statistic in [
        ("iqm", metrics.aggregate_iqm, iqm),
        ("mean", metrics.aggregate_mean, mean_of_task_means),
        ("median", metrics.aggregate_median, median_of_task_means),
        ("gap", metrics.aggregate_optimality_gap, optimality_gap),
    ]:
        np.random.seed(0)
        point, ci = library.get_interval_estimates(
            {"x": x}, lambda s, f=theirs: np.array([f(s)]), reps=5000
        )
        mine = stratified_bootstrap([ours(x)], statistic, reps=5000)
        assert mine.point[0] == pytest.approx(point["x"][0]), name
        assert mine.low[0] == pytest.approx(ci["x"][0, 0], abs=0.03), name
        assert mine.high[0] == pytest.approx(ci["x"][1, 0], abs=0.03), name
    np.random.seed(0)
    point, ci = library.get_interval_estimates(
        {"xy": [x, y]}, metrics.probability_of_improvement, reps=2000
    )
    mine = stratified_bootstrap([ours(x), ours(y)], average_improvement_probability, reps=2000)
    assert mine.point[0] == pytest.approx(point["xy"])
    assert mine.low[0] == pytest.approx(ci["xy"][0], abs=0.04)
    assert mine.high[0] == pytest.approx(ci["xy"][1], abs=0.04)
    taus = np.linspace(0, 1, 11)
    profiles, _ = library.create_performance_profile({"x": x}, taus, reps=10)
    mine = stratified_bootstrap([ours(x)], score_profile(taus), reps=10)
    np.testing.assert_allclose(mine.point, profiles["x"])
