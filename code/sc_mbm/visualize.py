"""The reconstruction figure written with every Stage A checkpoint: ground truth, masked input, reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's global state alone
from torch import nn

from atomic import atomic_write
from correlation import row_pearson
from sc_mbm.reconstruction import masking_noise, reconstruct


def plot_reconstructions(
    truth: np.ndarray, mask: np.ndarray, recon: np.ndarray, cors: np.ndarray, path: Path, title: str = ""
) -> Path:
    """One row per sample: truth (n, V), truth with the masked voxels (mask True) left out, reconstruction.

    `cors` (n, 2): correlation of the reconstruction with the truth over all voxels and over the masked ones.
    """
    fig = Figure(figsize=(15, 2.2 * len(truth)), layout="constrained")
    axes = fig.subplots(len(truth), 3, squeeze=False, sharex=True, sharey="row")
    voxels = np.arange(truth.shape[1])
    for row, (x, m, r, c) in enumerate(zip(truth, mask, recon, cors, strict=True)):
        axes[row, 0].plot(voxels, x, lw=0.6, color="k")
        axes[row, 1].plot(voxels, np.where(m, np.nan, x), lw=0.6, color="k")
        axes[row, 2].plot(voxels, r, lw=0.6, color="tab:blue")
        axes[row, 2].set_title(f"reconstruction: cor {c[0]:.3f}, masked patches {c[1]:.3f}", fontsize=9)
    axes[0, 0].set_title("ground truth", fontsize=9)
    axes[0, 1].set_title("masked input", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("voxel")
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_write(path) as f:  # never through a link at `path`
        fig.savefig(f, format=Path(path).suffix[1:] or "png", dpi=80)
    return Path(path)


def save_reconstruction_figure(
    model: nn.Module, fmri: torch.Tensor, mask_ratio: float, precision: str, path: Path, title: str = "", seed: int = 0
) -> Path:
    """Reconstruct fmri (n, 1, V) with fixed masks (from `seed`) and plot it with its correlations."""
    was_training = model.training
    model.eval()
    x = fmri.to(next(model.parameters()).device)
    _, pred, mask = reconstruct(model, x, mask_ratio, masking_noise(len(x), model, seed), precision)  # (n, V) each
    model.train(was_training)
    target = x.flatten(1)  # (n, V)
    masked = row_pearson(pred[mask].view(len(x), -1), target[mask].view(len(x), -1))  # same count per row
    cors = torch.stack([row_pearson(pred, target), masked], dim=1)  # (n, 2)
    as_np = (t.detach().cpu().numpy() for t in (target, mask, pred, cors))
    return plot_reconstructions(*as_np, path, title)
