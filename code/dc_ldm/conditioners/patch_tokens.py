"""`patch_tokens`: the UNet attends to the encoder's patch tokens themselves.

Each of the L patch tokens is mapped by one Linear (D -> cond_dim), so the context has one token per patch of
voxels rather than 77 channel mixtures of them (`published`) or one summary (`global_pool`, `linear_pool`): the
way a text encoder's tokens condition Stable Diffusion. Cross-attention then weighs voxel groups per image
location; double conditioning reads the L tokens through the published Conv1d pair sized for L.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dc_ldm.conditioners.base import Conditioner


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
