"""Exponential moving average of a module's trainable parameters, stored as buffers.

The buffer layout is the one CompVis `LitEma` checkpoints carry under `model_ema.*`: `decay`
(float32 scalar), `num_updates` (int32 scalar; -1 when the warm-up is off) and one shadow per
trainable parameter, named after the parameter with the dots removed
(`diffusion_model.out.2.weight` -> `diffusion_modelout2weight`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LitEma(nn.Module):
    """EMA shadows of `model`'s trainable parameters; call it with the model after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int32))
        self.shadow_names: dict[str, str] = {}  # parameter name -> buffer name
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.shadow_names[name] = name.replace(".", "")
                self.register_buffer(self.shadow_names[name], p.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """shadow <- shadow + (1 - decay) * (param - shadow) for every parameter that is still trainable."""
        # Warm-up as in CompVis: decay = min(decay, (1 + n) / (10 + n)) while num_updates counts (>= 0).
        # Kept on the device so that an update never waits for the host.
        counting = self.num_updates >= 0
        self.num_updates.add_(counting.to(self.num_updates.dtype))
        n = self.num_updates.float()
        decay = torch.where(counting, torch.minimum(self.decay, (1 + n) / (10 + n)), self.decay)
        weight = 1.0 - decay
        shadows = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad and name in self.shadow_names:
                shadow = shadows[self.shadow_names[name]]
                shadow.lerp_(p.detach().to(shadow.dtype), weight.to(shadow.dtype))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s tracked parameters with their EMA shadows."""
        shadows = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.shadow_names:
                p.copy_(shadows[self.shadow_names[name]])

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of `parameters` so that `restore` can undo a `copy_to`."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by `store`."""
        for saved, p in zip(self.collected_params, parameters, strict=True):
            p.copy_(saved)
        self.collected_params = []
