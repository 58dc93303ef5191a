"""Linear probes: ridge regression with the penalty chosen by cross-validation over episodes.

Features and targets are standardised with the statistics of the rows a model is fitted on, so
the penalty means the same for every feature set and every target. Consecutive frames of an
episode are nearly identical, so folds hold whole episodes (``groups``): leave-one-row-out
cross-validation would see the neighbours of every validation frame and pick too small a
penalty. All penalties of the grid are solved from one eigendecomposition per fold (of the
feature Gram matrix, or of the kernel matrix when there are fewer rows than features), which
gives the same solution as ``sklearn.linear_model.Ridge`` on the standardised data
(``tests/test_probe.py`` checks it) at a fraction of the cost of refitting per penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ALPHAS = np.logspace(-2, 6, 17)
# A target column whose training standard deviation is below this (relative to its scale) is
# constant: it carries nothing to predict and would divide by zero when standardised.
CONSTANT_TOL = 1e-6


@dataclass
class Standardizer:
    """Column-wise ``(x - mean) / scale``; constant columns keep scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > CONSTANT_TOL * (1.0 + np.abs(mean)), scale, 1.0)
        return cls(mean, scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def constant_columns(y: np.ndarray) -> np.ndarray:
    """bool [k]: the columns of y [n, k] that do not vary (beyond `CONSTANT_TOL`)."""
    return y.std(axis=0) <= CONSTANT_TOL * (1.0 + np.abs(y.mean(axis=0)))


class RidgePath:
    """Ridge solutions of standardised x [n, d] -> y [n, k] for any penalty, from one
    eigendecomposition."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.primal = x.shape[1] <= x.shape[0]
        if self.primal:  # (X'X + a I)^-1 X'Y with X'X = V diag(lam) V'
            lam, self.basis = np.linalg.eigh(x.T @ x)
            self.projected = self.basis.T @ (x.T @ y)
        else:  # X' (XX' + a I)^-1 Y with XX' = U diag(lam) U'
            lam, self.basis = np.linalg.eigh(x @ x.T)
            self.projected = self.basis.T @ y
            self.x = x
        self.eigenvalues = np.clip(lam, 0.0, None)

    def predictor(self, x_new: np.ndarray) -> Callable[[float], np.ndarray]:
        """alpha -> predictions [m, k] for standardised rows x_new [m, d]."""
        mapped = x_new @ self.basis if self.primal else (x_new @ self.x.T) @ self.basis
        return lambda alpha: (mapped / (self.eigenvalues + alpha)) @ self.projected

    def weights(self, alpha: float) -> np.ndarray:
        """Coefficients [d, k] for penalty alpha."""
        scaled = self.projected / (self.eigenvalues + alpha)[:, None]
        return self.basis @ scaled if self.primal else self.x.T @ (self.basis @ scaled)


@dataclass
class RidgeProbe:
    """A fitted probe: penalty, cross-validated MSE per penalty, standardisers and weights."""

    alpha: float
    alphas: np.ndarray
    cv_mse: np.ndarray
    x_norm: Standardizer
    y_norm: Standardizer
    weights: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Features [m, d] -> targets [m, k] in their own units."""
        return self.y_norm.mean + self.y_norm.scale * (self.x_norm(x) @ self.weights)

    @property
    def at_grid_edge(self) -> bool:
        """The chosen penalty is the smallest or largest of the grid (widen it)."""
        return self.alpha in (self.alphas[0], self.alphas[-1])


def group_folds(groups: np.ndarray, folds: int) -> list[np.ndarray]:
    """Split the distinct groups (episodes) round-robin into ``folds`` validation sets of rows."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("cross-validation needs rows of at least two episodes")
    folds = min(folds, len(unique))
    return [np.isin(groups, unique[i::folds]) for i in range(folds)]


def fit_ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    alphas: np.ndarray = ALPHAS,
    folds: int = 5,
) -> RidgeProbe:
    """Fit x [n, d] -> y [n, k] by ridge regression, the penalty chosen by the mean validation
    MSE (standardised targets) over folds of whole groups (episodes), then refitted on all rows.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    alphas = np.asarray(alphas, np.float64)
    errors = np.zeros(len(alphas))
    for valid in group_folds(np.asarray(groups), folds):
        x_norm, y_norm = Standardizer.fit(x[~valid]), Standardizer.fit(y[~valid])
        path = RidgePath(x_norm(x[~valid]), y_norm(y[~valid]))
        predict, target = path.predictor(x_norm(x[valid])), y_norm(y[valid])
        errors += [((predict(a) - target) ** 2).sum() for a in alphas]
    cv_mse = errors / (len(y) * y.shape[1])
    alpha = float(alphas[int(np.argmin(cv_mse))])
    x_norm, y_norm = Standardizer.fit(x), Standardizer.fit(y)
    weights = RidgePath(x_norm(x), y_norm(y)).weights(alpha)
    return RidgeProbe(alpha, alphas, cv_mse, x_norm, y_norm, weights)


def regression_scores(
    y_true: np.ndarray, y_pred: np.ndarray, norm: Standardizer
) -> dict[str, float]:
    """Held-out fit of a target group in units of the training standardisation ``norm``:
    ``mse`` = mean squared error; ``r2`` = 1 - (sum of squared errors) / (sum of squared
    deviations from the training mean), i.e. the improvement over predicting the training mean
    (out-of-sample R^2). Deviations are measured from the training mean, not the held-out one,
    because targets that stay fixed within an episode (object and goal positions) have almost no
    variance among a few held-out episodes, which would make the usual R^2 explode."""
    error = (y_pred - y_true) / norm.scale
    baseline = float((norm(y_true) ** 2).sum())
    r2 = 1.0 - float((error**2).sum()) / baseline if baseline > 0 else float("nan")
    return {"r2": r2, "mse": float((error**2).mean())}
