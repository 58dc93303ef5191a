"""The run-aggregation statistics (rliable, through apv_hub.evaluation.aggregate) against values
derived by hand, and the wrapper against rliable called directly."""

import numpy as np
import pytest
from rliable import library, metrics

from apv_hub.evaluation.aggregate import (
    aggregate_metrics,
    iqm_curve,
    mean_interval,
    performance_profile,
    probability_of_improvement,
    stratified_bootstrap,
)
from apv_hub.evaluation.episodes import (
    CI_OVER,
    EpisodeResult,
    bootstrap_ci,
    build_parser,
    summarize,
)

FEW = dict(reps=50)  # point estimates do not depend on the resamples


def points(scores, names=("iqm", "mean", "median", "optimality_gap")) -> dict[str, float]:
    """Point estimates of the aggregate metrics of final scores [runs, tasks]."""
    found = aggregate_metrics(np.asarray(scores, np.float64), names, **FEW)
    return {name: float(interval.point[0]) for name, interval in found.items()}


def test_iqm_is_the_pooled_25_percent_trimmed_mean():
    # 8 pooled scores (4 runs x 2 tasks): 2 dropped at each end -> mean(3, 4, 5, 6).
    assert points([[1, 5], [2, 6], [3, 7], [4, 8]])["iqm"] == pytest.approx(4.5)
    # 6 scores: int(1.5) = 1 dropped at each end -> mean(1, 2, 3, 4); the outlier is gone.
    assert points([[0, 3], [100, 1], [2, 4]])["iqm"] == pytest.approx(2.5)


def test_means_medians_and_gap_follow_their_definitions():
    # Task means 2, 10 and 5: their mean and median.
    found = points([[1, 10, 4], [3, 10, 6]])
    assert found["mean"] == pytest.approx(17 / 3) and found["median"] == pytest.approx(5.0)
    # Scores above the target count as the target: 1 - mean(0.5, 1).
    assert points([[0.5], [1.2]])["optimality_gap"] == pytest.approx(0.25)


def test_probability_of_improvement_counts_pairs_and_half_ties():
    column = lambda values: np.asarray(values, np.float64)[:, None]  # one task: [runs, 1]
    poi = lambda x, y: float(probability_of_improvement(x, y, **FEW).point[0])
    assert poi(column([3, 4]), column([1, 2])) == 1.0
    assert poi(column([1, 2]), column([3, 4])) == 0.0
    # Pairs (1,1) tie, (1,3) loss, (2,1) win, (2,3) loss -> (0.5 + 0 + 1 + 0) / 4.
    assert poi(column([1, 2]), column([1, 3])) == pytest.approx(0.375)
    assert poi(column([3]), column([1, 2, 4])) == pytest.approx(2 / 3)
    # Averaged over tasks: 1 on the first, 0 on the second.
    assert poi(np.array([[5.0, 0.0], [6.0, 0.0]]), np.array([[1.0, 1.0], [2.0, 1.0]])) == 0.5


def test_performance_profile_is_the_fraction_strictly_above():
    profile = performance_profile(np.array([[0.1, 0.9], [0.5, 0.2]]), np.array([0, 0.5, 1]), **FEW)
    np.testing.assert_allclose(profile.point, [1.0, 0.25, 0.0])
    assert np.all(profile.low <= profile.point) and np.all(profile.point <= profile.high)


def test_iqm_curve_is_the_iqm_at_every_point():
    # [4 runs, 1 task, 2 points]: point 0 holds 0..3 (IQM of the middle two: 1.5), point 1 holds
    # 10 x those.
    scores = np.stack([np.arange(4.0), 10 * np.arange(4.0)], axis=-1)[:, None, :]
    np.testing.assert_allclose(iqm_curve(scores, **FEW).point, [1.5, 15.0])


def test_bootstrap_percentiles_of_a_case_solved_by_hand():
    # The mean of two draws from {0, 1} is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4): its 2.5% and
    # 97.5% quantiles are 0 and 1; its 30% and 70% quantiles are both 0.5.
    wide = mean_interval([0.0, 1.0], reps=4000, seed=1)
    assert wide.as_dict() == {"point": 0.5, "ci": [0.0, 1.0]}
    narrow = mean_interval([0.0, 1.0], reps=4000, confidence=0.4, seed=1)
    assert (narrow.low[0], narrow.high[0]) == (0.5, 0.5)


def test_bootstrap_resamples_runs_within_each_task():
    # Every stratified resample holds four runs of each task, so the pooled IQM is always 0.5;
    # resampling the pooled runs instead would give a wide interval.
    interval = aggregate_metrics(np.tile([0.0, 1.0], (4, 1)), ["iqm"], reps=300)["iqm"]
    assert interval.low[0] == interval.high[0] == interval.point[0] == 0.5


def test_bootstrap_intervals_contain_the_point_and_shrink_with_more_seeds():
    rng = np.random.default_rng(0)
    widths = []
    for runs in (4, 16, 64):
        scores = rng.normal(np.arange(3.0), 1.0, size=(runs, 3))
        intervals = aggregate_metrics(scores, reps=300)
        for interval in intervals.values():
            assert interval.low[0] <= interval.point[0] <= interval.high[0]
        widths.append(float(intervals["iqm"].high[0] - intervals["iqm"].low[0]))
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_is_reproducible_and_leaves_the_global_generator_alone():
    scores = np.array([[0.1, 0.9], [0.7, 0.2], [0.4, 0.5]])
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    a = aggregate_metrics(scores, ["iqm"], reps=300, seed=3)["iqm"]
    assert np.random.random() == expected_next  # rliable draws from it; we restored it
    b = aggregate_metrics(scores, ["iqm"], reps=300, seed=3)["iqm"]
    c = aggregate_metrics(scores, ["iqm"], reps=300, seed=4)["iqm"]
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)
    single = aggregate_metrics(np.array([[0.3, 0.8]]), ["iqm"], reps=300)["iqm"]
    assert single.low[0] == single.point[0] == single.high[0]


def test_the_wrapper_is_rliable_called_directly():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 4))  # runs x tasks
    y = np.clip(x + rng.normal(0.1, 0.2, size=(6, 4)), 0, 1)
    theirs = lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s)])
    np.random.seed(7)
    point, ci = library.get_interval_estimates(
        {"x": x}, theirs, reps=300, confidence_interval_size=0.9
    )
    mine = aggregate_metrics(x, ["iqm", "mean"], reps=300, confidence=0.9, seed=7)
    np.testing.assert_array_equal([mine["iqm"].point[0], mine["mean"].point[0]], point["x"])
    np.testing.assert_array_equal([mine["iqm"].low[0], mine["mean"].low[0]], ci["x"][0])
    np.testing.assert_array_equal([mine["iqm"].high[0], mine["mean"].high[0]], ci["x"][1])
    np.random.seed(0)
    point, ci = library.get_interval_estimates(
        {"xy": [x, y]}, metrics.probability_of_improvement, reps=100
    )
    mine = probability_of_improvement(x, y, reps=100)
    assert (mine.point[0], mine.low[0], mine.high[0]) == (point["xy"], *ci["xy"].ravel())
    taus = np.linspace(0, 1, 11)
    np.random.seed(0)
    profiles, cis = library.create_performance_profile({"x": x}, taus, reps=50)
    mine = performance_profile(x, taus, reps=50)
    np.testing.assert_array_equal(mine.point, profiles["x"])
    np.testing.assert_array_equal(np.stack([mine.low, mine.high]), cis["x"])
    with pytest.raises(ValueError, match="reps must be positive"):
        stratified_bootstrap(x, theirs, reps=0)
    with pytest.raises(ValueError, match=r"\[runs, tasks"):
        stratified_bootstrap(np.zeros(3), theirs)


def test_apv_evaluate_interval_is_said_to_be_over_episodes():
    results = [
        EpisodeResult(seed=i, episode_return=float(i), success=None, length=5) for i in range(4)
    ]
    score = summarize(results)
    assert score["ci95_over"] == CI_OVER and "episodes of this one run" in CI_OVER
    assert score["return"]["ci95"] == list(bootstrap_ci([0.0, 1.0, 2.0, 3.0]))
    low, high = score["return"]["ci95"]
    assert 0.0 <= low < 1.5 < high <= 3.0
    assert "not over training seeds" in " ".join(build_parser().description.split())
