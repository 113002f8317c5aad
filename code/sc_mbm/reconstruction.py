"""Masked reconstruction of held-out fMRI with fixed masks: the Stage A scores and figures compare epochs on it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from correlation import row_pearson
from ridge import fit_ridge
from runtime import autocast


def masking_noise(num_samples: int, model: nn.Module, seed: int) -> torch.Tensor:
    """Fixed masking noise (num_samples, L), drawn from its own generator so the run's RNG streams are untouched."""
    num_patches = model.pos_embed.shape[1] - 1
    return torch.rand(num_samples, num_patches, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reconstruct(
    model: nn.Module, fmri: torch.Tensor, mask_ratio: float, noise: torch.Tensor, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked reconstruction of fmri (N, 1, V) on its device, under `precision` (a resolved one: fp32, bf16, fp16):
    (loss, pred (N, V) float32, mask (N, V) bool, True = masked)."""
    with autocast(precision, fmri.device):
        loss, pred, mask = model(fmri, mask_ratio=mask_ratio, noise=noise.to(fmri.device))  # (N, L, p), (N, L)
    patch_size = pred.shape[-1]
    return loss.float(), pred.float().flatten(1), mask.bool().repeat_interleave(patch_size, dim=1)


@torch.no_grad()
def score(
    model: nn.Module,
    fmri: torch.Tensor,
    mask_ratio: float,
    batch_size: int,
    precision: str = "fp32",
    seed: int = 0,
    per_item: bool = False,
) -> dict:
    """Loss, full-reconstruction and masked-patch Pearson correlation on fmri (N, 1, V), with fixed masks, on the
    model's device; with `per_item` also each sample's masked-patch correlation (`masked_cor_per_item`, N floats)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    noise = masking_noise(len(fmri), model, seed)
    sums = torch.zeros(3, device=device)  # loss * n, correlation, masked-patch correlation
    masked = []
    for start in range(0, len(fmri), batch_size):
        x = fmri[start : start + batch_size].to(device)  # (n, 1, V)
        loss, pred, mask = reconstruct(model, x, mask_ratio, noise[start : start + batch_size], precision)
        target = x.flatten(1)  # (n, V)
        sums[0] += loss * len(x)
        sums[1] += row_pearson(pred, target).sum()
        # every sample has the same number of masked patches, so the masked voxels form an (n, V_masked) block
        masked.append(row_pearson(pred[mask].view(len(x), -1), target[mask].view(len(x), -1)))  # (n,)
        sums[2] += masked[-1].sum()
    model.train(was_training)
    loss, cor, masked_cor = (sums / len(fmri)).tolist()
    result = {"loss": loss, "cor": cor, "masked_cor": masked_cor}
    return result | ({"masked_cor_per_item": torch.cat(masked).tolist()} if per_item else {})


def score_sets(
    model: nn.Module, sets: dict[str, torch.Tensor], mask_ratio: float, batch_size: int, precision: str, seed: int
) -> dict[str, float]:
    """{'val_<set>_<metric>': value} for every held-out set {name: fmri (N, 1, V)}, with fixed masks from `seed`."""
    scores = {}
    for name, fmri in sets.items():
        result = score(model, fmri, mask_ratio, batch_size, precision, seed)
        scores |= {f"val_{name}_{metric}": value for metric, value in result.items()}
    return scores


def ridge_reference(
    fit: np.ndarray, test: np.ndarray, mask_ratio: float, masks: int, seed: int, patch_size: int = 16
) -> np.ndarray:
    """The linear reference of `score`'s masked_cor: for each of `masks` random patch masks (drawn from `seed`), a
    ridge map from the visible to the masked voxels (penalty by cross-validation) fitted on `fit` (N, V) and applied
    to `test` (M, V); each test sample's Pearson correlation of prediction and truth on the masked voxels, averaged
    over the masks (M,)."""
    rng, scores = np.random.default_rng(seed), []
    patches = fit.shape[1] // patch_size
    for _ in range(masks):
        keep = np.sort(rng.permutation(patches)[: int(round(patches * (1 - mask_ratio)))])
        visible = (keep[:, None] * patch_size + np.arange(patch_size)).ravel()
        masked = np.setdiff1d(np.arange(patches * patch_size), visible)
        weights, bias, _ = fit_ridge(fit[:, visible].astype(np.float64), fit[:, masked].astype(np.float64), seed=seed)
        pred = torch.from_numpy(test[:, visible].astype(np.float64) @ weights + bias).float()
        scores.append(row_pearson(pred, torch.from_numpy(test[:, masked]).float()).numpy())
    return np.mean(scores, axis=0)
