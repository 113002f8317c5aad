"""What the two Stage A scripts share around the engine: the masked-reconstruction step and the examples its
figures show (the checkpoint is `checkpoint_layouts.save_stage_a`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from correlation import row_pearson


def mae_step(mask_ratio: float):
    """The engine's step for the masked autoencoder: loss, and each sample's reconstruction correlation."""

    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fmri = batch["fmri"]  # (N, 1, V)
        loss, pred, _ = model(fmri, mask_ratio=mask_ratio)  # pred (N, L, p)
        return loss, {"cor": row_pearson(pred.detach().float().flatten(1), fmri.flatten(1))}

    return step


def pick_examples(fmri: np.ndarray, num: int = 4) -> torch.Tensor:
    """`num` evenly spaced rows of an (N, 1, V) array, the same at every checkpoint: (num, 1, V)."""
    rows = np.unique(np.linspace(0, len(fmri) - 1, num).round().astype(int))
    return torch.from_numpy(np.ascontiguousarray(fmri[rows]))
