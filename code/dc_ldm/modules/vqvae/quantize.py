"""Vector quantiser of the VQ first stage: nearest codebook entry with a straight-through gradient."""

from __future__ import annotations

import torch
from torch import nn


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
            dist = flat.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * flat @ codebook.t()
            indices = dist.argmin(dim=1)  # (N*h*w,)
            z_q = codebook[indices].view(n, h, w, d).permute(0, 3, 1, 2)  # (N, D, h, w)
            loss = (z_q.detach() - z32).square().mean() + self.beta * (z_q - z32.detach()).square().mean()
            z_q = z32 + (z_q - z32).detach()  # straight-through: the decoder's gradient flows to the encoder
        if self.sane_index_shape:
            indices = indices.view(n, h, w)
        return z_q.to(z.dtype), loss, (None, None, indices)
