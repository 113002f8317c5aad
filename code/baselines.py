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
from intervals import bootstrap_interval
from ridge import fit_ridge


def grey_thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float64 (N, size * size) grey images in [0, 1] (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double().mean(1, keepdim=True) / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.flatten(1).numpy()


def ridge_image_baseline(
    train_fmri: np.ndarray,
    train_images: np.ndarray,
    test_fmri: np.ndarray,
    test_images: np.ndarray,
    size: int = 16,
    seed: int = 0,
) -> tuple[dict, np.ndarray]:
    """Ridge from training fMRI (N, V) to grey size x size images; scores on the test set and the predictions.

    Returns ({"ridge_pcc": pair-wise PCC identification of the predictions, "ridge_pcc_interval": its 95% interval
    over the test items, "ridge_pcc_per_item", "ridge_alpha": penalty},
    predicted test images uint8 (M, H, W, 3), blown up to the test images' size for a side-by-side grid).
    """
    weights, bias, alpha = fit_ridge(train_fmri, grey_thumbnails(train_images, size), seed=seed)
    pred = test_fmri @ weights + bias  # (M, size * size)
    truth = grey_thumbnails(test_images, size)
    scores = score_matrix("pcc", torch.from_numpy(pred), torch.from_numpy(truth))  # (M, M)
    per_item = identification_accuracy(scores, lower_is_better=False)  # (M,)
    images = torch.from_numpy(np.clip(pred, 0, 1) * 255).view(len(pred), 1, size, size)
    images = F.interpolate(images, size=test_images.shape[1:3], mode="nearest").round().byte()  # (M, 1, H, W)
    scored = {
        "ridge_pcc": per_item.mean().item(),
        "ridge_pcc_interval": bootstrap_interval(per_item.numpy()),
        "ridge_pcc_per_item": per_item.tolist(),
        "ridge_alpha": alpha,
    }
    return scored, images.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy()
