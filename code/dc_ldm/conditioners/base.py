"""What every fMRI conditioner is: the Stage A encoder, a read-out into the UNet's context, the null context.

A conditioning scheme is a subclass of `Conditioner` that states

- `name`: its entry in `CONDITIONERS` (what `--conditioner` names and a checkpoint stores);
- `context_tokens(num_patches)`: how many context tokens it emits (the UNet sizes the projection of the context
  into its timestep embedding from this number: one Linear for one token, as published for `global_pool`,
  otherwise the published two kernel-1 Conv1d over the tokens and a Linear);
- `pooled_encoder`: whether the encoder averages its patch tokens into one (then the encoder's final norm is not
  loaded from Stage A, which trained it on single tokens);
- `build_read_out` and `read_out`: its own layers and how they map the encoder's tokens to the context.

Its trainable groups follow from its modules: `encoder` is the encoder, `mapper` every other layer it holds; what
Stage B's `--freeze_encoder` / `--freeze_mapper` fix. The encoder is held as `mae`, the published state-dict name
(`cond_stage_model.mae.*` in every finetuned checkpoint).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from errors import UserError
from sc_mbm.mae_for_fmri import FMRIEncoder


def check_class_labels(labels: np.ndarray, class_table: torch.Tensor) -> None:
    """A ridge start needs each training image's class among the label LDM's classes (the rows of `class_table`)."""
    if (labels < 0).any() or labels.max() >= len(class_table):
        raise UserError(
            f"ridge_init needs the class of every training image among the LDM's {len(class_table)} "
            "classes (GOD's labels are ImageNet classes; BOLD5000 has none)"
        )


class Conditioner(nn.Module):
    """fMRI (N, 1, V) -> context (N, T, cond_dim) for the UNet's cross-attention (and double conditioning).

    `cond_dropout` > 0 adds `null_context`, a learned context that replaces a sample's fMRI context with that
    probability in training, so that sampling can use classifier-free guidance (ours; 0 as published).
    """

    name: ClassVar[str]
    pooled_encoder: ClassVar[bool] = False

    def __init__(
        self,
        num_voxels: int,
        cond_dim: int,
        *,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 1.0,
        cond_dropout: float = 0.0,
    ):
        super().__init__()
        self.mae = FMRIEncoder(num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio, self.pooled_encoder)
        self.num_tokens = self.context_tokens(self.mae.num_patches)
        self.cond_dim = cond_dim
        self.build_read_out(self.mae.num_patches, embed_dim, cond_dim)
        self.cond_dropout = cond_dropout
        if cond_dropout > 0:
            self.null_context = nn.Parameter(torch.zeros(1, self.num_tokens, cond_dim))

    @classmethod
    def context_tokens(cls, num_patches: int) -> int:
        """The number of context tokens for an encoder of `num_patches` patch tokens."""
        raise NotImplementedError

    def build_read_out(self, num_patches: int, embed_dim: int, cond_dim: int) -> None:
        """Create the read-out's layers (as attributes: their names are the state-dict keys)."""
        raise NotImplementedError

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens (N, L, D), or (N, 1, D) pooled -> the context (N, T, cond_dim)."""
        raise NotImplementedError

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, T, cond_dim)."""
        x = self.read_out(self.mae(fmri))
        if self.training and self.cond_dropout > 0:
            dropped = torch.rand(len(x), 1, 1, device=x.device) < self.cond_dropout  # (N, 1, 1)
            x = torch.where(dropped, self.null_context.to(x.dtype), x)
        return x

    @torch.no_grad()
    def encoded(self, fmri: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens of many fMRI (N, 1, V) in eval mode, in batches: (N, L, D) on the CPU."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        tokens = torch.cat([self.mae(b.to(device)).cpu() for b in fmri.split(100)])
        self.train(was_training)
        return tokens

    def groups(self) -> dict[str, list[nn.Module]]:
        """Its layers by job: `encoder` (the Stage A encoder) and `mapper` (the read-out's layers)."""
        return {"encoder": [self.mae], "mapper": [m for name, m in self.named_children() if name != "mae"]}

    def unconditional(self, batch: int) -> torch.Tensor:
        """The null context for classifier-free guidance, (batch, tokens, cond_dim)."""
        if self.cond_dropout <= 0:
            raise UserError(
                "classifier-free guidance needs a model trained with --cond_dropout > 0 (it learns the "
                "null context); sample with --guidance_scale 1"
            )
        return self.null_context.expand(batch, -1, -1)
