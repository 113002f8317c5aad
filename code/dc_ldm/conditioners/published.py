"""The published conditioner and its one-token variants.

- `published`: the encoder's L patch tokens -> `channel_mapper`, two kernel-1 Conv1d that treat the tokens as
  channels (L -> L // 2 -> 77) -> `dim_mapper` Linear(D -> cond_dim): 77 context tokens.
- `global_pool` (the published flag of that name): the encoder averages its tokens into one, `dim_mapper` maps
  it; one context token.
- `linear_pool` (ours): one token, a Linear map of all L tokens flattened (`dim_mapper`: L * D -> cond_dim),
  which keeps what each token says of its own voxels instead of averaging; it can start as a ridge regression
  onto the label LDM's class embeddings (`start_from_ridge`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from dc_ldm.conditioners.base import Conditioner, check_class_labels
from dc_ldm.modules.diffusionmodules.openaimodel import NUM_CONTEXT_TOKENS
from ridge import fit_ridge


class Published(Conditioner):
    """L patch tokens -> channel_mapper (L -> L // 2 -> 77) -> dim_mapper (D -> cond_dim): (N, 77, cond_dim)."""

    name = "published"

    @classmethod
    def context_tokens(cls, num_patches: int) -> int:
        return NUM_CONTEXT_TOKENS

    def build_read_out(self, num_patches: int, embed_dim: int, cond_dim: int) -> None:
        if num_patches < 2:
            raise ValueError(
                f"the channel mapper needs at least 2 patches (num_voxels >= {2 * self.mae.patch_size}), got "
                f"{num_patches}; use --conditioner global_pool or more voxels"
            )
        self.channel_mapper = nn.Sequential(
            nn.Conv1d(num_patches, num_patches // 2, kernel_size=1),
            nn.Conv1d(num_patches // 2, NUM_CONTEXT_TOKENS, kernel_size=1),
        )
        self.dim_mapper = nn.Linear(embed_dim, cond_dim)

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dim_mapper(self.channel_mapper(tokens))  # (N, L, D) -> (N, 77, D) -> (N, 77, cond_dim)


class GlobalPool(Conditioner):
    """The mean patch token (after the encoder's final norm) -> dim_mapper: (N, 1, cond_dim)."""

    name = "global_pool"
    pooled_encoder = True

    @classmethod
    def context_tokens(cls, num_patches: int) -> int:
        return 1

    def build_read_out(self, num_patches: int, embed_dim: int, cond_dim: int) -> None:
        self.dim_mapper = nn.Linear(embed_dim, cond_dim)

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dim_mapper(tokens)  # (N, 1, D) -> (N, 1, cond_dim)


class LinearPool(Conditioner):
    """All L patch tokens flattened -> dim_mapper (L * D -> cond_dim): one context token, (N, 1, cond_dim)."""

    name = "linear_pool"

    @classmethod
    def context_tokens(cls, num_patches: int) -> int:
        return 1

    def build_read_out(self, num_patches: int, embed_dim: int, cond_dim: int) -> None:
        self.dim_mapper = nn.Linear(num_patches * embed_dim, cond_dim)

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dim_mapper(tokens.flatten(1)[:, None])  # (N, L, D) -> (N, 1, L * D) -> (N, 1, cond_dim)

    @torch.no_grad()
    def start_from_ridge(
        self, fmri: torch.Tensor, labels: np.ndarray, class_table: torch.Tensor, seed: int = 0
    ) -> dict:
        """Start `dim_mapper` as the ridge map from the encoder's tokens of training fMRI (N, 1, V) to the LDM's
        class embedding of each one's label (N,): the context starts where it already means a class to the UNet.

        The penalty is chosen by cross-validation on the training set; test classes, never seen, map to points
        between the known classes' embeddings. Returns the penalty.
        """
        check_class_labels(labels, class_table)
        tokens = self.encoded(fmri).flatten(1)  # (N, L * D)
        weights, bias, alpha = fit_ridge(tokens.double().numpy(), class_table[labels].double().numpy(), seed=seed)
        self.dim_mapper.weight.copy_(torch.from_numpy(weights.T))
        self.dim_mapper.bias.copy_(torch.from_numpy(bias))
        return {"penalty": alpha}
