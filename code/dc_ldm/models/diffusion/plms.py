"""PLMS sampler: pseudo linear multistep on the DDIM update (Liu et al. 2022, "Pseudo Numerical Methods
for Diffusion Models on Manifolds").

The DDIM update (sampling_util) is the "transfer" part; what changes is the ε fed to it. Each step
still calls the model once at x_{τ_i}, and combines that ε with the ε of the previous steps by an
Adams-Bashforth formula. The first step has no history, so it takes a pseudo improved-Euler (Heun)
step instead, at the price of a second model call.
"""

from __future__ import annotations

import torch

from dc_ldm.models.diffusion.sampling_util import DDIMSchedule, DiffusionSampler, EpsFn


class PLMSSampler(DiffusionSampler):
    """`sample(S, batch_size, shape, conditioning, x_T, ...)` with η = 0 (PLMS is deterministic)."""

    def make_schedule(self, ddim_num_steps: int, ddim_eta: float = 0.0) -> DDIMSchedule:
        """As DDIM's, but only η = 0 is defined for PLMS."""
        if ddim_eta != 0:
            raise ValueError(f"PLMS sampling is deterministic: eta must be 0, got {ddim_eta}")
        return super().make_schedule(ddim_num_steps, ddim_eta)

    def step(
        self,
        x: torch.Tensor,
        index: int,
        eps_fn: EpsFn,
        history: list[torch.Tensor],
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_{τ_i} (N, C, H, W) -> (x_{τ_{i-1}}, x0_pred); `history` holds the ε of up to 3 earlier steps."""
        # (1) ε at the current point
        eps = eps_fn(x, self.timestep(index, x))  # (N, C, H, W)
        # (2) the multistep ε' (history[-1] is the previous step's ε)
        if not history:
            # Heun start: a DDIM step to x_{τ_{i-1}}, ε there, and the average of both slopes
            x_next, _ = self.ddim_update(x, eps, index)
            eps_next = eps_fn(x_next, self.timestep(max(index - 1, 0), x))
            eps_prime = (eps + eps_next) / 2
        elif len(history) == 1:  # Adams-Bashforth, 2nd order
            eps_prime = (3 * eps - history[-1]) / 2
        elif len(history) == 2:  # 3rd order
            eps_prime = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:  # 4th order
            eps_prime = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history.append(eps)
        del history[:-3]
        # (3) the DDIM update from x_{τ_i} with ε'
        return self.ddim_update(x, eps_prime, index)
