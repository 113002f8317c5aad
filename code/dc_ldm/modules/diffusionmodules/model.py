"""Convolutional encoder and decoder of the first-stage autoencoders (VQ and KL), key-compatible with the LDM release.

Both are ResNet pyramids: the encoder halves the resolution `len(ch_mult) - 1` times, the decoder doubles it back.
The middle of each always holds ResBlock -> single-head spatial attention -> ResBlock, whatever `attn_resolutions`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dc_ldm.modules.diffusionmodules.util import GroupNorm32


def normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, computed in float32 under autocast."""
    return GroupNorm32(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv, twice, plus a (1x1-projected when the width changes) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        n, c, hgt, wid = x.shape
        h = self.norm(x)
        # (N, 1, HW, C): one head of width C, so SDPA's default scale C^-0.5 is the published one
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (N, 1, HW, C)
        h = h.squeeze(1).transpose(1, 2).reshape(n, c, hgt, wid)  # (N, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv after zero-padding only the right and bottom edges."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Middle(nn.Module):
    """ResBlock -> attention -> ResBlock at the lowest resolution (keys `mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """The ResBlocks of one resolution, each followed by attention when the resolution is in `attn_resolutions`.

    The owning encoder/decoder sets `downsample`/`upsample` (nn.Identity, without keys, where there is none).
    """

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, use_attn: bool, dropout: float):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout) for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_blocks) if use_attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return x


class Encoder(nn.Module):
    """Images (N, in_channels, R, R) -> latents (N, z_channels (x2 if double_z), r, r), r = R / 2^(len(ch_mult)-1)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...] | list[int],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...] | list[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_res_blocks < 1:
            raise ValueError(
                f"ddconfig num_res_blocks must be >= 1 (each level changes width in a ResBlock), got {num_res_blocks}"
            )
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        res = resolution
        self.down = nn.ModuleList()
        for i in range(len(ch_mult)):
            level = _Level(widths[i], widths[i + 1], num_res_blocks, res in attn_resolutions, dropout)
            level.downsample = Downsample(widths[i + 1]) if i != len(ch_mult) - 1 else nn.Identity()
            res //= 2
            self.down.append(level)
        self.mid = _Middle(widths[-1], dropout)
        self.norm_out = normalize(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, R, R) -> (N, C_z, r, r)."""
        h = self.conv_in(x)  # (N, ch, R, R)
        for level in self.down:
            h = level.downsample(level(h))  # (N, ch * mult, R / 2^(i+1), ...), not halved at the last level
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, C_z, r, r)


class Decoder(nn.Module):
    """Latents (N, z_channels, r, r) -> images (N, out_ch, R, R), R = r * 2^(len(ch_mult) - 1)."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: tuple[int, ...] | list[int],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...] | list[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        give_pre_end: bool = False,
        tanh_out: bool = False,
    ):
        super().__init__()
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _Middle(width, dropout)
        res = resolution // 2 ** (len(ch_mult) - 1)
        levels = []  # built from the lowest resolution up; stored by level index like the encoder's `down`
        for i in reversed(range(len(ch_mult))):
            level = _Level(width, ch * ch_mult[i], num_res_blocks + 1, res in attn_resolutions, dropout)
            width = ch * ch_mult[i]
            level.upsample = Upsample(width) if i != 0 else nn.Identity()
            res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C_z, r, r) -> (N, out_ch, R, R) (before norm_out when give_pre_end)."""
        h = self.mid(self.conv_in(z))  # (N, ch * ch_mult[-1], r, r)
        for level in reversed(self.up):
            h = level.upsample(level(h))  # (N, ch * mult, ...), doubled except at level 0
        if self.give_pre_end:
            return h
        h = self.conv_out(F.silu(self.norm_out(h)))  # (N, out_ch, R, R)
        return torch.tanh(h) if self.tanh_out else h
