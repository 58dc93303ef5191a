"""Aggregate scores of many runs with rliable (Agarwal et al., 2021), as the APV paper reports.

Every estimator, bootstrap and profile here is rliable's: ``rliable.metrics`` (interquartile
mean, mean and median of task means, optimality gap, probability of improvement) and
``rliable.library`` (``get_interval_estimates``: the stratified percentile bootstrap that
resamples runs within each task; ``create_performance_profile``). This module fixes the layout,
names the statistics, seeds rliable reproducibly and returns `Interval`s.

Scores use rliable's layout: ``[runs, tasks]`` final scores, or ``[runs, tasks, S]`` scores at
``S`` evaluation points (every task has the same number of runs). rliable draws its resamples
from NumPy's global random generator; `stratified_bootstrap` seeds it for the call and restores
its previous state afterwards, so a report is reproducible and the caller's random stream is
left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rliable import library, metrics

# The aggregate metrics of final scores [runs, tasks] -> a number, in report order.
AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "iqm": metrics.aggregate_iqm,
    "mean": metrics.aggregate_mean,
    "median": metrics.aggregate_median,
    "optimality_gap": metrics.aggregate_optimality_gap,
}


@dataclass
class Interval:
    """A point estimate and its percentile-bootstrap confidence interval, each [K]."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """A one-number interval as JSON: ``{"point": p, "ci": [low, high]}``."""
        if self.point.shape != (1,):
            raise ValueError(f"as_dict takes a one-number interval, got {self.point.shape}")
        return {"point": float(self.point[0]), "ci": [float(self.low[0]), float(self.high[0])]}


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator (rliable's source of resamples) and restore it on exit."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _check(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.ndim < 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(
            f"scores must be [runs, tasks, ...] with runs and tasks, got {scores.shape}"
        )
    return scores


def stratified_bootstrap(
    scores: np.ndarray | Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``statistic(scores)`` with rliable's stratified percentile-bootstrap interval.

    ``scores``: one ``[runs, tasks, ...]`` array (runs resampled within each task), or a
    sequence of them, each resampled on its own (e.g. two algorithms compared); ``statistic``
    maps the array(s) to a 1-D array [K] (or a number). With one run per task every resample
    equals the data and the interval collapses to the point.
    """
    if reps < 1:
        raise ValueError(f"reps must be positive, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    data = _check(scores) if isinstance(scores, np.ndarray) else [_check(s) for s in scores]
    with seeded_global_rng(seed):
        points, intervals = library.get_interval_estimates(
            {"scores": data},
            statistic,
            reps=reps,
            confidence_interval_size=confidence,
        )
    point = np.atleast_1d(np.asarray(points["scores"], np.float64))
    bounds = np.asarray(intervals["scores"], np.float64).reshape(2, -1)
    return Interval(point, bounds[0], bounds[1])


def aggregate_metrics(
    scores: np.ndarray, names: Sequence[str] = tuple(AGGREGATES), **bootstrap
) -> dict[str, Interval]:
    """rliable's aggregate metrics ``names`` of final scores [runs, tasks] -> {name: Interval},
    all from one bootstrap (``bootstrap``: reps, confidence, seed of `stratified_bootstrap`)."""
    functions = [AGGREGATES[name] for name in names]
    both = stratified_bootstrap(scores, lambda s: np.array([f(s) for f in functions]), **bootstrap)
    return {
        name: Interval(both.point[i : i + 1], both.low[i : i + 1], both.high[i : i + 1])
        for i, name in enumerate(names)
    }


def iqm_curve(scores: np.ndarray, **bootstrap) -> Interval:
    """IQM over runs and tasks at each evaluation point: scores [runs, tasks, S] -> [S]."""
    return stratified_bootstrap(
        scores,
        lambda s: np.array([metrics.aggregate_iqm(s[..., j]) for j in range(s.shape[-1])]),
        **bootstrap,
    )


def probability_of_improvement(x: np.ndarray, y: np.ndarray, **bootstrap) -> Interval:
    """P(X > Y) of final scores x [runs_x, tasks], y [runs_y, tasks] (Mann-Whitney U over
    run pairs, ties half, averaged over tasks), each algorithm resampled on its own -> [1]."""
    return stratified_bootstrap([x, y], metrics.probability_of_improvement, **bootstrap)


def performance_profile(
    scores: np.ndarray, taus: np.ndarray, *, reps: int = 2000, confidence: float = 0.95, seed=0
) -> Interval:
    """Fraction of runs (of every task) scoring strictly above each threshold: final scores
    [runs, tasks] -> [len(taus)] (rliable's score distribution)."""
    taus = np.asarray(taus, np.float64)
    with seeded_global_rng(seed):
        profiles, intervals = library.create_performance_profile(
            {"scores": _check(scores)}, taus, reps=reps, confidence_interval_size=confidence
        )
    bounds = np.asarray(intervals["scores"], np.float64)
    return Interval(np.asarray(profiles["scores"], np.float64), bounds[0], bounds[1])


def mean_interval(values: Sequence[float], **bootstrap) -> Interval:
    """The mean of ``values`` [n] with a percentile-bootstrap interval resampling the values
    (one task of n runs) -> [1]."""
    column = np.asarray(values, np.float64)[:, None]
    return stratified_bootstrap(
        column, lambda s: np.array([metrics.aggregate_mean(s)]), **bootstrap
    )
