"""Spatial transformer of the LDM UNet: self-attention, cross-attention to the conditioning, GEGLU MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dc_ldm.modules.diffusionmodules.util import GroupNorm32, zero_module


@dataclass
class FixedContext:
    """A context that stays the same over many UNet calls, with what the UNet derives from it alone precomputed.

    A sampler calls the UNet 251 times with the same conditioning; the keys and values every cross-attention
    projects from it (`kv[i]` for the cross-attention with `context_index` i, each (N, heads, M, d)) and its term
    of the timestep embedding (`time_cond`, (N, 4C), None without double conditioning) are computed once
    (`UNetModel.fix_context`) and passed in place of the context tensor.
    """

    tokens: torch.Tensor  # (N, M, D)
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    time_cond: torch.Tensor | None


class CrossAttention(nn.Module):
    """Multi-head attention of queries from x to keys/values from `context` (self-attention when it is None)."""

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.context_index: int | None = None  # its keys/values in a FixedContext (set by the UNet)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(N, L, heads * d) -> (N, heads, L, d)."""
        return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (N, M, context_dim) -> keys and values, each (N, heads, M, d)."""
        return self._heads(self.to_k(context)), self._heads(self.to_v(context))

    def forward(self, x: torch.Tensor, context: torch.Tensor | FixedContext | None = None) -> torch.Tensor:
        """x (N, L, query_dim), context (N, M, context_dim) or fixed -> (N, L, query_dim)."""
        n, length, _ = x.shape
        if isinstance(context, FixedContext):
            k, v = context.kv[self.context_index]
        else:
            k, v = self.keys_values(x if context is None else context)  # (N, heads, M, d)
        q = self._heads(self.to_q(x))  # (N, heads, L, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, d), softmax scale d^-0.5
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class GEGLU(nn.Module):
    """Linear to twice the width, one half gated by GELU of the other."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with hidden width `mult * dim`."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the context, feed-forward, each residual."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | FixedContext | None = None) -> torch.Tensor:
        """x (N, L, dim), context (N, M, context_dim) or fixed -> (N, L, dim)."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, residual around it; `proj_out` starts at zero."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
    ):
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = GroupNorm32(32, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim)
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | FixedContext | None = None) -> torch.Tensor:
        """x (N, C, H, W), context (N, M, context_dim) or fixed -> (N, C, H, W)."""
        n, _, h, w = x.shape
        y = self.proj_in(self.norm(x))  # (N, inner, H, W)
        y = y.flatten(2).transpose(1, 2)  # (N, H*W, inner)
        for block in self.transformer_blocks:
            y = block(y, context=context)
        y = y.transpose(1, 2).reshape(n, -1, h, w)  # (N, inner, H, W)
        return x + self.proj_out(y)
