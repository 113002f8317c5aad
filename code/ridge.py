"""Ridge regression with its penalty chosen by k-fold cross-validation: the linear read-out every baseline, the
demo's read-outs and Stage B's `ridge_init` fit.

The penalty is the one of the best mean held-out correlation (per row of the targets) over the folds; x is
standardised per voxel with the training statistics, so the penalties are relative to its scale.
"""

from __future__ import annotations

import numpy as np
import torch

from correlation import row_pearson

ALPHAS = tuple(10.0 ** np.arange(-1, 6))  # relative to the mean squared singular value of the training fMRI


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    alphas: tuple[float, ...] = ALPHAS,
    folds: int = 5,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge from x (N, V) to y (N, P), the penalty of the best mean held-out correlation over `folds` folds.
    `groups` (N,): rows of one group stay in one fold (e.g. the tokens of one trial).

    Returns the map in the original units, weights (V, P) and bias (P,) with y ~ x @ weights + bias, and the
    chosen penalty.
    """
    mean, std = x.mean(0), x.std(0) + 1e-8
    xs = (x - mean) / std
    scale = np.mean(xs**2) * x.shape[1]
    rng = np.random.default_rng(seed)
    if groups is None:
        held_out = np.array_split(rng.permutation(len(x)), folds)
    else:
        held_out = [
            np.flatnonzero(np.isin(groups, g)) for g in np.array_split(rng.permutation(np.unique(groups)), folds)
        ]
    scores = np.zeros(len(alphas))
    for held in held_out:
        fit = np.setdiff1d(np.arange(len(x)), held)
        y_fit = y[fit].mean(0)
        truth = torch.from_numpy(y[held])
        for i, pred in enumerate(_solve(xs[fit], y[fit] - y_fit, [a * scale for a in alphas], xs[held])):
            scores[i] += row_pearson(torch.from_numpy(pred + y_fit), truth, eps=1e-12).mean().item()
    alpha = alphas[int(np.argmax(scores))]
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    weights = vt.T @ ((s / (s**2 + alpha * scale))[:, None] * (u.T @ (y - y.mean(0)))) / std[:, None]  # (V, P)
    return weights, y.mean(0) - mean @ weights, alpha


def _solve(x: np.ndarray, y: np.ndarray, alphas: list[float], x_new: np.ndarray) -> list[np.ndarray]:
    """Ridge predictions for x_new under each penalty, from one SVD of x."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    projected = x_new @ vt.T  # (M, k)
    return [projected @ ((s / (s**2 + a))[:, None] * uty) for a in alphas]
