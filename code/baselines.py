"""What a linear read-out gets from the same fMRI: the baseline beside every decoding result.

A ridge regression from the training fMRI to small grey versions of the images it saw, its penalty chosen by
k-fold cross-validation on the training set only, predicts the test images; they are scored by pair-wise
correlation identification as the decoded images are (chance 0.5). It tells a reader how much of the image the
fMRI holds linearly, and how much of that the pipeline carries through.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from eval_metrics import identification_accuracy, score_matrix

ALPHAS = tuple(10.0 ** np.arange(-1, 6))  # relative to the mean squared singular value of the training fMRI


def grey_thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float64 (N, size * size) grey images in [0, 1] (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double().mean(1, keepdim=True) / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.flatten(1).numpy()


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = ALPHAS, folds: int = 5,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """Ridge from x (N, V) to y (N, P), the penalty of the best mean held-out correlation over `folds` folds.

    x is standardised per voxel with the training statistics (penalties are relative to its scale); returns the
    map in the original units, weights (V, P) and bias (P,) with y ~ x @ weights + bias, and the chosen penalty.
    """
    mean, std = x.mean(0), x.std(0) + 1e-8
    xs = (x - mean) / std
    scale = np.mean(xs**2) * x.shape[1]
    order = np.random.default_rng(seed).permutation(len(x))
    scores = np.zeros(len(alphas))
    for held in np.array_split(order, folds):
        fit = np.setdiff1d(order, held)
        y_fit = y[fit].mean(0)
        for i, pred in enumerate(_solve(xs[fit], y[fit] - y_fit, [a * scale for a in alphas], xs[held])):
            scores[i] += _mean_row_correlation(pred + y_fit, y[held])
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


def _mean_row_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def ridge_image_baseline(train_fmri: np.ndarray, train_images: np.ndarray, test_fmri: np.ndarray,
                         test_images: np.ndarray, size: int = 16, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Ridge from training fMRI (N, V) to grey size x size images; scores on the test set and the predictions.

    Returns ({"ridge_pcc": pair-wise PCC identification of the predictions, "ridge_alpha": penalty},
    predicted test images uint8 (M, H, W, 3), blown up to the test images' size for a side-by-side grid).
    """
    weights, bias, alpha = fit_ridge(train_fmri, grey_thumbnails(train_images, size), seed=seed)
    pred = test_fmri @ weights + bias  # (M, size * size)
    truth = grey_thumbnails(test_images, size)
    scores = score_matrix("pcc", torch.from_numpy(pred), torch.from_numpy(truth))  # (M, M)
    accuracy = identification_accuracy(scores, lower_is_better=False).mean().item()
    images = torch.from_numpy(np.clip(pred, 0, 1) * 255).view(len(pred), 1, size, size)
    images = F.interpolate(images, size=test_images.shape[1:3], mode="nearest").round().byte()  # (M, 1, H, W)
    return {"ridge_pcc": accuracy, "ridge_alpha": alpha}, images.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy()
