"""`patch_tokens`: the UNet attends to the encoder's patch tokens themselves.

Each of the L patch tokens is mapped by one Linear (D -> cond_dim), so the context has one token per patch of
voxels rather than 77 channel mixtures of them (`published`) or one summary (`global_pool`, `linear_pool`): the
way a text encoder's tokens condition Stable Diffusion. Cross-attention then weighs voxel groups per image
location; double conditioning reads the L tokens through the published Conv1d pair sized for L. Its mapper can start
as a ridge map onto the label LDM's class embeddings, as `linear_pool`'s (`--ridge_init`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from dc_ldm.conditioners.base import Conditioner, check_class_labels
from ridge import fit_ridge


class PatchTokens(Conditioner):
    """L patch tokens -> dim_mapper (D -> cond_dim) each: (N, L, cond_dim)."""

    name = "patch_tokens"

    @classmethod
    def context_tokens(cls, num_patches: int) -> int:
        return num_patches

    def build_read_out(self, num_patches: int, embed_dim: int, cond_dim: int) -> None:
        self.dim_mapper = nn.Linear(embed_dim, cond_dim)

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dim_mapper(tokens)  # (N, L, D) -> (N, L, cond_dim)

    @torch.no_grad()
    def start_from_ridge(
        self, fmri: torch.Tensor, labels: np.ndarray, class_table: torch.Tensor, seed: int = 0
    ) -> dict:
        """Start `dim_mapper` as one ridge map from every encoder token of the training fMRI (N, 1, V) to the LDM's
        class embedding of its trial's label (N,): each context token starts as its patch's estimate of the class.
        The penalty by cross-validation over the trials (all tokens of a trial in one fold). Returns it."""
        check_class_labels(labels, class_table)
        tokens = self.encoded(fmri)  # (N, L, D)
        n, length, _ = tokens.shape
        x = tokens.flatten(0, 1).double().numpy()  # (N * L, D), a trial's tokens consecutive
        y = class_table[np.repeat(labels, length)].double().numpy()
        weights, bias, alpha = fit_ridge(x, y, seed=seed, groups=np.repeat(np.arange(n), length))
        self.dim_mapper.weight.copy_(torch.from_numpy(weights.T))
        self.dim_mapper.bias.copy_(torch.from_numpy(bias))
        return {"penalty": alpha}
