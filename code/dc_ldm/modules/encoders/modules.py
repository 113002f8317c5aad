"""The class-label cond stage of the published ImageNet LDM (replaced by the fMRI conditioner in Stage B)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class ClassEmbedder(nn.Module):
    """Class index -> one context token: (N,) labels -> (N, 1, embed_dim)."""

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class"):
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, batch: Mapping | torch.Tensor, key: str | None = None) -> torch.Tensor:
        """Labels (N,) given directly or as `batch[key]` -> (N, 1, embed_dim)."""
        labels = batch if isinstance(batch, torch.Tensor) else batch[key or self.key]
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        return self.embedding(labels[:, None])  # (N, 1, D)
