"""DDIM sampler (Song et al. 2021): the deterministic (η = 0) or stochastic implicit update of eq. 12."""

from __future__ import annotations

import torch

from dc_ldm.models.diffusion.sampling_util import DiffusionSampler, EpsFn


class DDIMSampler(DiffusionSampler):
    """`sample(S, batch_size, shape, conditioning, x_T, eta, ...)`; one model call per step."""

    def step(
        self,
        x: torch.Tensor,
        index: int,
        eps_fn: EpsFn,
        history: list[torch.Tensor],
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_{τ_i} (N, C, H, W) -> (x_{τ_{i-1}}, x0_pred) with ε = model(x_{τ_i}, τ_i)."""
        eps = eps_fn(x, self.timestep(index, x))  # (N, C, H, W)
        return self.ddim_update(x, eps, index, generator)
