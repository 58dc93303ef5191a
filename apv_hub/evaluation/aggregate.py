"""Aggregate scores of many runs the way rliable (Agarwal et al., 2021) and the APV paper report.

The estimators and the bootstrap follow ``rliable.metrics`` and ``rliable.library`` exactly
(interquartile mean = ``scipy.stats.trim_mean(..., 0.25)`` over all runs of all tasks; mean and
median of per-task means; optimality gap; probability of improvement = the Mann-Whitney U
statistic divided by the number of pairs, averaged over tasks; performance profiles = fraction of
runs scoring strictly above a threshold; stratified percentile bootstrap that resamples runs
within each task). They are written here with numpy and scipy because rliable 1.2.0, the latest
release, imports ``arch < 8``, which fails to import with pandas >= 3 (the version the project's
``datasets`` resolves to); ``tests/test_aggregate.py`` checks them against hand-derived values
and, where rliable imports, against rliable itself.

Scores are given per task: a sequence of arrays ``[runs_k, S]`` (``runs_k`` seeds of task k, which
may differ between tasks; ``S`` score points per run, e.g. evaluation steps, or 1 for final
scores). A statistic maps resampled scores ``[R, runs_k, S]`` per task to ``[R, S']``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

TaskScores = Sequence[np.ndarray]  # per task: [runs_k, S]
Statistic = Callable[[list[np.ndarray]], np.ndarray]  # per task [R, runs_k, S] -> [R, S']
# Bootstrap resamples are drawn in chunks of at most this many gathered scores (memory bound).
CHUNK_ELEMENTS = 1 << 24


def iqm(tasks: list[np.ndarray]) -> np.ndarray:
    """Interquartile mean over all runs of all tasks: [R, runs_k, S] per task -> [R, S].

    The 25% trimmed mean of the pooled scores: ``int(0.25 n)`` lowest and highest are dropped.
    """
    return stats.trim_mean(np.concatenate(tasks, axis=1), 0.25, axis=1)


def mean_of_task_means(tasks: list[np.ndarray]) -> np.ndarray:
    """Mean over tasks of each task's mean over runs: [R, runs_k, S] per task -> [R, S]."""
    return np.mean([t.mean(axis=1) for t in tasks], axis=0)


def median_of_task_means(tasks: list[np.ndarray]) -> np.ndarray:
    """Median over tasks of each task's mean over runs: [R, runs_k, S] per task -> [R, S]."""
    return np.median([t.mean(axis=1) for t in tasks], axis=0)


def optimality_gap(tasks: list[np.ndarray], gamma: float = 1.0) -> np.ndarray:
    """``gamma`` minus the pooled mean of scores clipped at ``gamma`` (lower is better): for
    scores normalised so that ``gamma`` is solved."""
    return gamma - np.minimum(np.concatenate(tasks, axis=1), gamma).mean(axis=1)


AGGREGATES: dict[str, Statistic] = {
    "iqm": iqm,
    "mean": mean_of_task_means,
    "median": median_of_task_means,
    "optimality_gap": optimality_gap,
}


def improvement_probability(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) of one task, ties counted half: x [R, nx, S], y [R, ny, S] -> [R, S].

    Equals the Mann-Whitney U statistic of x against y divided by nx * ny.
    """
    greater = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    ties = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
    return greater + 0.5 * ties


def average_improvement_probability(x_tasks: list[np.ndarray], y_tasks: list[np.ndarray]):
    """P(X > Y) averaged over tasks (both lists in the same task order) -> [R, S]."""
    return np.mean(
        [improvement_probability(x, y) for x, y in zip(x_tasks, y_tasks, strict=True)], axis=0
    )


def score_profile(taus: np.ndarray) -> Statistic:
    """The performance profile statistic: fraction of all runs whose score is above each tau.

    Scores must be final scores (S = 1): [R, runs_k, 1] per task -> [R, len(taus)].
    """
    taus = np.asarray(taus, np.float64)

    def profile(tasks: list[np.ndarray]) -> np.ndarray:
        pooled = np.concatenate(tasks, axis=1)[..., 0]  # [R, N]
        return (pooled[:, :, None] > taus).mean(axis=1)

    return profile


@dataclass
class Interval:
    """A point estimate and its percentile-bootstrap confidence interval, each [S]."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


def stratified_bootstrap(
    samples: Sequence[TaskScores],
    statistic: Callable[..., np.ndarray],
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of ``statistic(*samples)`` resampling runs within each task.

    Each entry of ``samples`` is one independent score set (per task ``[runs_k, S]``); each is
    resampled on its own (rliable's ``StratifiedBootstrap`` for one set,
    ``StratifiedIndependentBootstrap`` for several). ``statistic`` receives one list of resampled
    tasks ``[R, runs_k, S]`` per set and returns ``[R, S']``. With one run per task every
    resample equals the data and the interval collapses to the point.
    """
    if reps < 1:
        raise ValueError(f"reps must be positive, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    arrays = [[np.asarray(t, np.float64) for t in tasks] for tasks in samples]
    for tasks in arrays:
        if not tasks or any(t.ndim != 2 or len(t) == 0 for t in tasks):
            raise ValueError("every score set needs at least one task of shape [runs, S]")
    point = statistic(*[[t[None] for t in tasks] for tasks in arrays])[0]
    size = sum(t.size for tasks in arrays for t in tasks)
    chunk = max(1, min(reps, CHUNK_ELEMENTS // max(1, size)))
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        resampled = [[t[rng.integers(0, len(t), (n, len(t)))] for t in tasks] for tasks in arrays]
        draws.append(statistic(*resampled))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.concatenate(draws), [alpha, 1.0 - alpha], axis=0)
    return Interval(point, low, high)
