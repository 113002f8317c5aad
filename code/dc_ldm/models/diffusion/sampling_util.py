"""What the DDIM and PLMS samplers share: the DDIM sub-schedule, guided ε, the DDIM update and the loop.

Notation (Song et al. 2021, "Denoising Diffusion Implicit Models"): ᾱ_t = `alphas_cumprod[t]` of the
training schedule; the sampler visits S of the T training steps, τ_S > ... > τ_1, and each update goes
from x_{τ_i} to x_{τ_{i-1}} (eq. 12):

    x_prev = sqrt(ᾱ_prev) * x0_pred  +  sqrt(1 - ᾱ_prev - σ²) * ε  +  σ * z,
    x0_pred = (x_t - sqrt(1 - ᾱ_t) * ε) / sqrt(ᾱ_t),
    σ = η * sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) * sqrt(1 - ᾱ_t / ᾱ_prev)      (eq. 16)

As in the published samplers, the last update lands on ᾱ_{τ_1} of the first visited step, not on 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (N, C, H, W), t (N,)) -> ε (N, C, H, W)


def make_ddim_timesteps(num_steps: int, num_train_steps: int) -> torch.Tensor:
    """Uniform discretisation: every (T // S)-th training step, plus 1 (S=7, T=1000 -> 8 steps) -> (S',) int64."""
    if not 0 < num_steps <= num_train_steps:
        raise ValueError(f"number of sampling steps must be in [1, {num_train_steps}], got {num_steps}")
    steps = torch.arange(0, num_train_steps, num_train_steps // num_steps) + 1
    # When T - 1 is a multiple of T // S (S = 3, 9, 1000, ...) the +1 lands on step T, past the schedule, where the
    # published sampler failed with an index error; visit the last training step there instead.
    return steps.clamp(max=num_train_steps - 1).unique()


@dataclass(frozen=True)
class DDIMSchedule:
    """The visited timesteps (ascending) and, per step, ᾱ_t, ᾱ_prev and σ as Python floats (no device syncs)."""

    timesteps: list[int]
    alphas: list[float]
    alphas_prev: list[float]
    sigmas: list[float]

    @classmethod
    def make(cls, alphas_cumprod: torch.Tensor, num_steps: int, eta: float) -> DDIMSchedule:
        """Build the sub-schedule of `num_steps` steps from the training ᾱ (T,) with stochasticity `eta`."""
        timesteps = make_ddim_timesteps(num_steps, alphas_cumprod.shape[0])
        ac = alphas_cumprod.detach().cpu().double()
        alphas = ac[timesteps]
        alphas_prev = torch.cat([ac[:1], alphas[:-1]])
        sigmas = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
        return cls(timesteps.tolist(), alphas.tolist(), alphas_prev.tolist(), sigmas.tolist())

    def __len__(self) -> int:
        return len(self.timesteps)


def randn(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise on `device`, drawn from `generator` (on its own device) when one is given."""
    if generator is None:
        return torch.randn(shape, device=device)
    # Drawing on the generator's device makes a CPU generator give the same noise for a CPU or a GPU model.
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class DiffusionSampler:
    """Base of the DDIM-family samplers for a model with `alphas_cumprod` (T,) and `apply_model(x, t, cond)`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.schedule: DDIMSchedule | None = None
        self.ddim_timesteps: torch.Tensor | None = None

    def make_schedule(self, ddim_num_steps: int, ddim_eta: float = 0.0) -> DDIMSchedule:
        """Set (and return) the sub-schedule of `ddim_num_steps` steps; `ddim_timesteps` lists them ascending."""
        self.schedule = DDIMSchedule.make(self.model.alphas_cumprod, ddim_num_steps, ddim_eta)
        self.ddim_timesteps = torch.tensor(self.schedule.timesteps)
        return self.schedule

    def step(
        self,
        x: torch.Tensor,
        index: int,
        eps_fn: EpsFn,
        history: list[torch.Tensor],
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from step `index` of the schedule to the one before it -> (x_prev, x0_pred)."""
        raise NotImplementedError

    def timestep(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The training timestep of schedule entry `index`, one per batch item -> (N,) int64."""
        return torch.full((x.shape[0],), self.schedule.timesteps[index], device=x.device, dtype=torch.long)

    def ddim_update(
        self, x: torch.Tensor, eps: torch.Tensor, index: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The DDIM update (eq. 12) of x_t (N, C, H, W) with noise estimate ε at schedule entry `index`."""
        s = self.schedule
        a_t, a_prev, sigma = s.alphas[index], s.alphas_prev[index], s.sigmas[index]
        # (1) predicted x0
        x0_pred = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        # (2) direction pointing to x_t
        dir_xt = math.sqrt(1 - a_prev - sigma**2) * eps
        # (3) x_prev = sqrt(ᾱ_prev) * x0_pred + direction + σ z; the noise is drawn only when σ > 0 (η > 0)
        x_prev = math.sqrt(a_prev) * x0_pred + dir_xt
        if sigma > 0:
            x_prev = x_prev + sigma * randn(tuple(x.shape), x.device, generator).to(x_prev.dtype)
        return x_prev, x0_pred

    def fixed(self, cond: object) -> object:
        """The conditioning with what the UNet derives from it alone computed once for all steps (the cross-
        attention keys/values and the time-embedding term, `UNetModel.fix_context`), when the model's UNet
        (at the published `model.diffusion_model`) offers it; the conditioning itself otherwise."""
        unet = getattr(getattr(self.model, "model", None), "diffusion_model", None)
        if isinstance(cond, torch.Tensor) and hasattr(unet, "fix_context"):
            return unet.fix_context(cond)
        return cond

    def guided_eps_fn(self, cond: object, scale: float, uncond: object) -> EpsFn:
        """ε(x, t) from the model; with classifier-free guidance ε_u + scale (ε_c - ε_u) in one batched call."""
        if scale != 1.0 and uncond is None:
            raise ValueError(f"unconditional_guidance_scale={scale} needs unconditional_conditioning")
        both = self.fixed(cond if scale == 1.0 else torch.cat([uncond, cond]))

        # ε in the dtype of x (float32 under autocast too), so that the multistep sums keep full precision
        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if scale == 1.0:
                return self.model.apply_model(x, t, both).to(x.dtype)
            e_uncond, e_cond = (
                self.model.apply_model(torch.cat([x, x]), torch.cat([t, t]), both).to(x.dtype).chunk(2)
            )  # 2 x (N, C, H, W)
            return e_uncond + scale * (e_cond - e_uncond)

        return eps

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, int, int],
        conditioning: torch.Tensor | None = None,
        x_T: torch.Tensor | None = None,
        eta: float = 0.0,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: torch.Tensor | None = None,
        verbose: bool = True,
        generator: torch.Generator | None = None,
        log_every_t: int = 100,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Sample (batch_size, *shape) latents in `S` steps from x_T (or fresh noise from `generator`).

        Returns the samples and `{"x_inter": [...], "pred_x0": [...]}` logged every `log_every_t` steps;
        `callback(i, x, x0_pred)` is called after step i.
        """
        schedule = self.make_schedule(S, eta)
        device = self.model.alphas_cumprod.device
        size = (batch_size, *shape)
        if x_T is None:
            x = randn(size, device, generator)
        elif tuple(x_T.shape) != size:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {size}")
        else:
            x = x_T.to(device)
        if isinstance(conditioning, torch.Tensor) and conditioning.shape[0] != batch_size:
            raise ValueError(f"conditioning has {conditioning.shape[0]} items, expected batch_size={batch_size}")
        eps_fn = self.guided_eps_fn(conditioning, unconditional_guidance_scale, unconditional_conditioning)
        intermediates = {"x_inter": [x], "pred_x0": [x]}
        history: list[torch.Tensor] = []  # ε of earlier steps, for multistep samplers
        n = len(schedule)
        bar = tqdm(reversed(range(n)), total=n, desc=type(self).__name__, disable=not verbose)
        for i, index in enumerate(bar):
            x, x0_pred = self.step(x, index, eps_fn, history, generator)
            if index % log_every_t == 0 or index == n - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(x0_pred)
            if callback is not None:
                callback(i, x, x0_pred)
        return x, intermediates
