"""Sampling a Stage B model: fMRI -> images, one batch (`sample_images`) or a whole test set (`generate`)."""

from __future__ import annotations

import numpy as np
import torch

from dc_ldm.models.diffusion.ddpm import LatentDiffusion
from dc_ldm.models.diffusion.samplers import SAMPLERS
from runtime import autocast, progress
from transforms import to_uint8_images


@torch.no_grad()
def sample_images(
    model: LatentDiffusion,
    fmri: torch.Tensor,
    ddim_steps: int = 250,
    sampler: str = "plms",
    eta: float = 0.0,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """fMRI (B, 1, V) -> one decoded image each, (B, 3, H, W) about [-1, 1] (latents quantised before decoding).

    `sampler` names one of `samplers.SAMPLERS`; `guidance_scale` s > 1: classifier-free guidance against the
    learned null context, ε_u + s (ε_c - ε_u).
    """
    cls = SAMPLERS[sampler]
    cond = model.get_learned_conditioning(fmri)  # (B, 77, context_dim)
    uncond = model.cond_stage_model.unconditional(len(fmri)) if guidance_scale != 1.0 else None
    latents, _ = cls(model).sample(
        S=ddim_steps,
        batch_size=fmri.shape[0],
        shape=model.latent_shape,
        conditioning=cond,
        x_T=x_T,
        eta=eta,
        verbose=False,
        generator=generator,
        unconditional_guidance_scale=guidance_scale,
        unconditional_conditioning=uncond,
    )
    return model.decode_first_stage(latents.float()).float()  # (B, 3, H, W), about [-1, 1]


@torch.no_grad()
def generate(
    model: LatentDiffusion,
    fmri: torch.Tensor,
    num_samples: int,
    ddim_steps: int,
    sampler: str = "plms",
    eta: float = 0.0,
    batch_size: int = 25,
    seed: int = 0,
    precision: str = "fp32",
    desc: str = "sampling",
    guidance_scale: float = 1.0,
) -> np.ndarray:
    """Sample `num_samples` images per fMRI (N, 1, V) -> uint8 (S, N, H, W, 3), batched over items x samples.

    Each (item, sample) pair draws its start noise from its own generator, seeded from `seed`, so the images do
    not depend on `batch_size` or on the device. Progress (with an ETA) goes to the log.
    """
    device = next(model.parameters()).device
    jobs = [(i, s) for s in range(num_samples) for i in range(len(fmri))]
    out = None
    starts = range(0, len(jobs), batch_size)
    for start in progress(starts, len(starts), desc):
        chunk = jobs[start : start + batch_size]
        items = torch.tensor([i for i, _ in chunk])
        x_T = torch.stack([start_noise(seed, i, s, model.latent_shape) for i, s in chunk]).to(device)
        with autocast(precision, device):
            images = sample_images(
                model,
                fmri[items].to(device),
                ddim_steps,
                sampler,
                eta,
                x_T=x_T,
                generator=torch.Generator(device).manual_seed(seed + start),
                guidance_scale=guidance_scale,
            )  # (B, 3, H, W)
        images = to_uint8_images(images)  # (B, H, W, 3)
        if out is None:
            out = np.zeros((num_samples, len(fmri), *images.shape[1:]), dtype=np.uint8)
        for (i, s), img in zip(chunk, images, strict=True):
            out[s, i] = img
    return out


def start_noise(seed: int, item: int, sample: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The sampler's start latent for one (item, sample): its own CPU generator, the same on any device."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + item * 1009 + sample)
    return torch.randn(shape, generator=g)
