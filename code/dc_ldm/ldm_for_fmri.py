"""The fMRI-conditioned LDM of Stage B: the fMRI conditioner that replaces the label2img class embedder.

`FMRICondStage` is what `LatentDiffusion.cond_stage_model` holds in a Stage B model; its state-dict keys are the
`cond_stage_model.*` keys of published finetuned checkpoints.
"""

import torch
import torch.nn as nn

from sc_mbm.mae_for_fmri import FMRIEncoder

NUM_CONTEXT_TOKENS = 77  # the published conditioner's context length (the UNet's cross-attention sees 77 tokens)


class FMRICondStage(nn.Module):
    """fMRI conditioner: (N, 1, V) -> (N, 77, cond_dim) context for the UNet's cross-attention.

    `mae` (the Stage A token encoder) -> `channel_mapper`, two kernel-1 Conv1d that treat the L patch tokens as
    channels (L -> L // 2 -> 77) -> `dim_mapper` Linear(D -> cond_dim). With `global_pool` the encoder yields
    one pooled token, so, as in the published code, there is no `channel_mapper` and the output is
    (N, 1, cond_dim) (the UNet's `time_embed_condtion` is then a single Linear).
    """

    def __init__(
        self,
        num_voxels: int,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 1.0,
        cond_dim: int = 512,
        global_pool: bool = False,
    ):
        super().__init__()
        self.mae = FMRIEncoder(num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio, global_pool)
        seq_len = self.mae.num_patches
        if global_pool:
            self.channel_mapper = None
        elif seq_len < 2:
            raise ValueError(
                f"the channel mapper needs at least 2 patches (num_voxels >= {2 * patch_size}), got {seq_len}; "
                "use global_pool or more voxels"
            )
        else:
            self.channel_mapper = nn.Sequential(
                nn.Conv1d(seq_len, seq_len // 2, kernel_size=1),
                nn.Conv1d(seq_len // 2, NUM_CONTEXT_TOKENS, kernel_size=1),
            )
        self.dim_mapper = nn.Linear(embed_dim, cond_dim)
        self.cond_dim = cond_dim
        self.num_tokens = 1 if global_pool else NUM_CONTEXT_TOKENS

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, 77, cond_dim), or (N, 1, cond_dim) with `global_pool`."""
        x = self.mae(fmri)  # (N, L, D), or (N, 1, D) pooled
        if self.channel_mapper is not None:
            x = self.channel_mapper(x)  # (N, 77, D)
        return self.dim_mapper(x)  # (N, 77, cond_dim)
