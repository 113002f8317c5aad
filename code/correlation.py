"""Pearson correlation, written once: the centred unit-norm rows it is made of, per row and for every pair of rows.

Stage A's reconstruction scores, the pair-wise PCC and the feature correlations of the metrics, and the ridge
regressions' cross-validation all correlate through these. float64 inputs stay float64; anything else (bf16
under autocast, uint8 images) is computed in float32.
"""

from __future__ import annotations

import torch


def unit_rows(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """(N, ...) -> (N, M): each sample flattened, centred and scaled to unit norm.

    A constant sample has no direction: with `eps` > 0 it gives zeros, with `eps` = 0 NaN (as np.corrcoef does).
    """
    x = x.flatten(1)
    x = x if x.dtype == torch.float64 else x.float()
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def row_pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample Pearson correlation of (N, ...) and (N, ...) -> (N,), on their device without host syncs.

    Each sample is flattened; with `eps` > 0 a constant sample gives 0 rather than NaN.
    """
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(f"row_pearson needs two tensors of the same shape (N, ...), got {a.shape} and {b.shape}")
    return (unit_rows(a, eps) * unit_rows(b, eps)).sum(dim=1)


def pearson_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every sample of a (M, ...) with every sample of b (N, ...) -> (M, N)."""
    return unit_rows(a) @ unit_rows(b).T
