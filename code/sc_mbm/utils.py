"""Helpers for the fMRI masked autoencoder: 1-D sin-cos positions, their interpolation, patching."""

import torch
import torch.nn.functional as F


def get_1d_sincos_pos_embed(embed_dim: int, length: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 1-D sin-cos position embedding -> (length, D), or (1 + length, D) with a zero row for the cls token.

    Position m and channel i < D/2 get sin(m * w_i) and channel D/2 + i gets cos(m * w_i), w_i = 1 / 10000^(2i/D).
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"sin-cos position embedding needs an even embed_dim, got {embed_dim}")
    # float64 then float32, so the values do not depend on the default dtype or the device
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))  # (D/2,)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None, :]  # (length, D/2)
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)  # (length, D)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)  # (1 + length, D)
    return emb.float()


def interpolate_pos_embed(pos_embed: torch.Tensor, new_num_patches: int, mode: str = "linear") -> torch.Tensor:
    """Resample a (1, 1 + L, D) position embedding to (1, 1 + new_num_patches, D); the cls position is kept.

    `mode="linear"` (align_corners=False) is our default; the published code used F.interpolate's default "nearest".
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] < 2:
        raise ValueError(f"pos_embed must have shape (1, 1 + L, D) with L >= 1, got {tuple(pos_embed.shape)}")
    if new_num_patches < 1:
        raise ValueError(f"new_num_patches must be >= 1, got {new_num_patches}")
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]  # (1, 1, D), (1, L, D)
    if patch_pos.shape[1] == new_num_patches:
        return pos_embed
    kwargs = {"align_corners": False} if mode == "linear" else {}
    resized = F.interpolate(patch_pos.transpose(1, 2).float(), size=new_num_patches, mode=mode, **kwargs)
    resized = resized.transpose(1, 2).to(pos_embed.dtype)  # (1, new_num_patches, D)
    return torch.cat([cls_pos, resized], dim=1)  # (1, 1 + new_num_patches, D)


def patchify(fmri: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, 1, V) fMRI -> (N, L, patch_size) patches, L = V / patch_size."""
    if fmri.ndim != 3 or fmri.shape[1] != 1 or fmri.shape[2] % patch_size != 0:
        raise ValueError(
            f"expected fMRI of shape (N, 1, V) with V a multiple of {patch_size}, got {tuple(fmri.shape)}"
        )
    return fmri.reshape(fmri.shape[0], fmri.shape[2] // patch_size, patch_size)
