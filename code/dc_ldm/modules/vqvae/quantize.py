"""Vector quantiser of the VQ first stage: nearest codebook entry with a straight-through gradient."""

from __future__ import annotations

import torch
from torch import nn

# Latent vectors whose codebook distances are computed at once: the (rows, n_embed) distance matrix of a whole
# batch would otherwise take rows x n_embed x 4 bytes several times over (25 images of 64^2 latents and 8,192
# codes: 3.4 GB per temporary).
CHUNK_ROWS = 8192


class VectorQuantizer(nn.Module):
    """Replace each latent vector by its nearest (L2) codebook entry; key `embedding.weight` (n_embed, embed_dim).

    The loss keeps the published "legacy" weighting, which puts `beta` on the codebook term rather than on the
    commitment term as the VQ-VAE paper does: ||sg[z_q] - z||^2 + beta * ||z_q - sg[z]||^2 (both means).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, sane_index_shape: bool = False):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.sane_index_shape = sane_index_shape
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Codebook entries uniform in [-1/n_embed, 1/n_embed], as a from-scratch VQ autoencoder starts."""
        nn.init.uniform_(self.embedding.weight, -1.0 / self.n_embed, 1.0 / self.n_embed)

    @staticmethod
    def nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (L2) for each row of flat (R, D), `CHUNK_ROWS` rows at a time -> (R,)."""
        code_sq = codebook.square().sum(1)  # (n_embed,)
        chunks = []
        for rows in flat.split(CHUNK_ROWS):
            # |f|^2 + |c|^2 - 2 f.c, in this order (as published, so near-ties resolve the same), one temporary less
            dist = rows.square().sum(1, keepdim=True) + code_sq  # (rows, n_embed)
            dist.sub_(rows @ codebook.t(), alpha=2)
            chunks.append(dist.argmin(dim=1))
        return torch.cat(chunks)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[None, None, torch.Tensor]]:
        """z (N, D, h, w) -> (z_q (N, D, h, w), loss (), (None, None, indices (N*h*w,) or (N, h, w)))."""
        n, d, h, w = z.shape
        if d != self.embed_dim:
            raise ValueError(f"VectorQuantizer: latent has {d} channels, the codebook has embed_dim {self.embed_dim}")
        # distances and the loss in float32: under bf16 autocast near-ties would pick different codes
        with torch.autocast(z.device.type, enabled=False):
            z32 = z.float()
            flat = z32.permute(0, 2, 3, 1).reshape(-1, d)  # (N*h*w, D), batch-major then row-major
            codebook = self.embedding.weight.float()  # (n_embed, D)
            indices = self.nearest(flat, codebook)  # (N*h*w,)
            z_q = codebook[indices].view(n, h, w, d).permute(0, 3, 1, 2)  # (N, D, h, w)
            loss = (z_q.detach() - z32).square().mean() + self.beta * (z_q - z32.detach()).square().mean()
            z_q = z32 + (z_q - z32).detach()  # straight-through: the decoder's gradient flows to the encoder
        if self.sane_index_shape:
            indices = indices.view(n, h, w)
        return z_q.to(z.dtype), loss, (None, None, indices)
