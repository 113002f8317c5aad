"""Small building blocks shared by the diffusion UNet and the LatentDiffusion model."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint


def make_beta_schedule(
    schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2
) -> torch.Tensor:
    """Noise schedule betas (n_timestep,) float64; 'linear' squares a linspace of the square roots as the LDM does."""
    if schedule != "linear":
        raise ValueError(f"beta schedule {schedule!r} is not supported; MinD-Vis configs use 'linear'")
    return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of timesteps (N,): cosines first, then sines; zero-padded for odd dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of `module` and return it (residual branches start as the identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, cast back to it (stable under fp16/bf16).

    A bf16 input on the CPU goes to the kernel as it is: the CPU kernel accumulates bf16 in float32 and takes the
    float32 affine parameters (CPU autocast keeps group_norm in bf16), so the result is the same without the two
    full-size copies of the round trip.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            return super().forward(x)
        return super().forward(x.float()).type(x.dtype)


def checkpoint(func: Callable, inputs: tuple, flag: bool) -> torch.Tensor:
    """`func(*inputs)`, recomputing activations in the backward pass when `flag` (saves memory in training)."""
    if flag and torch.is_grad_enabled():
        return _checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
