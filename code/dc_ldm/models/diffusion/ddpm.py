"""Latent diffusion as MinD-Vis uses it: ε-prediction on first-stage latents, conditioned by cross-attention.

`LatentDiffusion` reads the published LDM `config.yaml` (keyword names and import path) and the
published `model.ckpt` unchanged: the UNet sits at `model.diffusion_model.*`, the frozen autoencoder at
`first_stage_model.*`, the conditioner at `cond_stage_model.*`, the DDPM schedule as buffers, and the
optional EMA of the UNet at `model_ema.*` (kept for the key layout; updating it is the training loop's
business). Stage B swaps the class embedder for the fMRI conditioner and trains only the conditioning path
(`set_trainable`). A plain `nn.Module`: the training loop is `engine.train_one_epoch`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from checkpoint import load_checkpoint
from dc_ldm.modules.diffusionmodules.util import make_beta_schedule
from dc_ldm.modules.ema import LitEma
from dc_ldm.util import instantiate_from_config
from errors import CheckpointError, UserError

log = logging.getLogger("mindvis.dc_ldm")

# Registered in this order by the published model; every one is part of its state_dict.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


class DiffusionWrapper(nn.Module):
    """Holds the UNet as `diffusion_model` (state-dict keys `model.diffusion_model.*`)."""

    def __init__(self, unet_config: Mapping) -> None:
        super().__init__()
        self.diffusion_model = instantiate_from_config(unet_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x_t (N, C, h, w), t (N,), context (N, L, D) -> ε (N, C, h, w)."""
        return self.diffusion_model(x, t, context=context)


class LatentDiffusion(nn.Module):
    """DDPM in the latent space of a frozen autoencoder, with a cross-attention conditioner."""

    def __init__(
        self,
        first_stage_config: Mapping,
        cond_stage_config: Mapping,
        unet_config: Mapping,
        *,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        num_timesteps_cond: int = 1,
        log_every_t: int = 100,
        first_stage_key: str = "image",
        cond_stage_key: str = "image",
        image_size: int = 256,
        channels: int = 3,
        cond_stage_trainable: bool = False,
        conditioning_key: str = "crossattn",
        monitor: str | None = "val/loss",
        use_ema: bool = True,
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        ckpt_path: str | None = None,
        ignore_keys: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        unsupported = {
            f"conditioning_key={conditioning_key!r} (only 'crossattn')": conditioning_key != "crossattn",
            f"num_timesteps_cond={num_timesteps_cond} (only 1)": num_timesteps_cond != 1,
            "scale_by_std=True (MinD-Vis uses a fixed scale_factor)": scale_by_std,
        }
        if any(unsupported.values()):
            raise NotImplementedError(f"LatentDiffusion: unsupported {[k for k, v in unsupported.items() if v]}")
        self.num_timesteps = timesteps  # log_every_t, monitor: published config fields, taken and unused here
        self.first_stage_key = first_stage_key
        self.cond_stage_key = cond_stage_key
        self.image_size = image_size
        self.channels = channels
        self.use_ema = use_ema
        self.scale_factor = scale_factor

        self.model = DiffusionWrapper(unet_config)
        if use_ema:
            self.model_ema = LitEma(self.model)
        self.register_schedule(beta_schedule, timesteps, linear_start, linear_end)
        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        _set_requires_grad(self.first_stage_model, False)
        _set_requires_grad(self.cond_stage_model, cond_stage_trainable)
        self.first_stage_model.eval()
        # the class embeddings of a label LDM file whose class embedder was replaced (set by its loader), or None
        self.class_table: torch.Tensor | None = None
        if ckpt_path is not None:
            load_ldm_checkpoint(self, ckpt_path, ignore_cond_stage=False, ignore_keys=ignore_keys)

    def register_schedule(self, beta_schedule: str, timesteps: int, linear_start: float, linear_end: float) -> None:
        """The DDPM schedule (Ho et al. 2020) as float32 buffers (T,), computed in float64."""
        with torch.device("cpu"):  # real values even when the model is built on the meta device
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end).double()
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
            # variance of q(x_{t-1} | x_t, x_0); zero at t = 0, hence the clipped log
            posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
            values = {
                "betas": betas,
                "alphas_cumprod": alphas_cumprod,
                "alphas_cumprod_prev": alphas_cumprod_prev,
                "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
                "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
                "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
                "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
                "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
                "posterior_variance": posterior_variance,
                "posterior_log_variance_clipped": posterior_variance.clamp_min(1e-20).log(),
                "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
                "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
            }
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, values[name].float())

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Shape (C, h, w) of one latent, the `shape` argument of the samplers."""
        return (self.channels, self.image_size, self.image_size)

    # ---- first stage and conditioning -------------------------------------------------------------------

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> Any:
        """Images (N, 3, H, W) in [-1, 1] -> the autoencoder's encoding (VQ: pre-quantisation latents)."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoding: Any) -> torch.Tensor:
        """Encoding -> diffusion latent z (N, C, h, w) = scale_factor * latent (KL posteriors are sampled)."""
        z = encoding if isinstance(encoding, torch.Tensor) else encoding.sample()
        return self.scale_factor * z

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents (N, C, h, w) -> images (N, 3, H, W), about [-1, 1] (VQ quantises first)."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def get_learned_conditioning(self, c: Any) -> torch.Tensor:
        """Conditioning input (e.g. fMRI (N, 1, V)) -> context tokens (N, L, D) for cross-attention."""
        return self.cond_stage_model(c)

    # ---- diffusion -------------------------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε; x_start, noise (N, C, h, w), t (N,)."""
        return (
            _per_item(self.sqrt_alphas_cumprod, t) * x_start + _per_item(self.sqrt_one_minus_alphas_cumprod, t) * noise
        )

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε prediction (N, C, h, w) for x_t (N, C, h, w) at t (N,) with context cond (N, L, D)."""
        return self.model(x_noisy, t, context=cond)

    def p_losses(
        self, x_start: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar ε-prediction loss: mean squared error between the noise and its prediction from x_t."""
        noise = torch.randn_like(x_start) if noise is None else noise
        eps = self.apply_model(self.q_sample(x_start, t, noise), t, cond)  # (N, C, h, w)
        return F.mse_loss(eps.float(), noise.float())

    def forward(self, z: torch.Tensor, c: Any) -> torch.Tensor:
        """Training loss for latents z (N, C, h, w) and conditioning input c at uniformly drawn timesteps."""
        t = torch.randint(0, self.num_timesteps, (z.shape[0],), device=z.device)
        return self.p_losses(z, self.get_learned_conditioning(c), t)

    def get_input(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Any]:
        """Batch {image (N, 3, H, W) in [-1, 1], <cond_stage_key>: ...} -> (latents (N, C, h, w), cond input)."""
        z = self.get_first_stage_encoding(self.encode_first_stage(batch[self.first_stage_key]))
        return z, batch[self.cond_stage_key]

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Set train/eval mode; the autoencoder stays in eval mode (it is never trained here)."""
        super().train(mode)
        self.first_stage_model.eval()
        return self

    def cond_path_parameters(self) -> list[nn.Parameter]:
        """The conditioning path: every cond-stage parameter, then the UNet's (`UNetModel.conditioning_modules`)."""
        unet = {id(p) for m in self.model.diffusion_model.conditioning_modules() for p in m.parameters()}
        return list(self.cond_stage_model.parameters()) + [p for p in self.model.parameters() if id(p) in unet]

    def set_trainable(self, cond_path_only: bool = True, frozen: Sequence[str] = ()) -> list[nn.Parameter]:
        """Make trainable what Stage B trains and freeze the rest; returns those parameters (for the optimiser).

        `cond_path_only` (Stage B): the conditioning path, less the conditioner's groups named in `frozen`
        (`Conditioner.groups`: "encoder", "mapper"); a group that holds no parameter is an error, not a silent
        no-op. Otherwise the UNet and the cond stage, as the published code left them (it narrowed only the
        optimiser). The autoencoder is always frozen; frozen parameters also save backward the weight gradients
        that would never be applied.
        """
        _set_requires_grad(self, False)
        if cond_path_only:
            groups = self.cond_stage_model.groups() if frozen else {}
            fixed = set()
            for name in frozen:
                found = {id(p) for m in groups.get(name, ()) for p in m.parameters()}
                if not found:
                    scheme = getattr(self.cond_stage_model, "name", type(self.cond_stage_model).__name__)
                    raise UserError(
                        f"the conditioner {scheme!r} has no {name} to keep fixed (its groups: {list(groups)})"
                    )
                fixed |= found
            params = [p for p in self.cond_path_parameters() if id(p) not in fixed]
        else:
            params = list(self.model.parameters()) + list(self.cond_stage_model.parameters())
        for p in params:
            p.requires_grad_(True)
        return params


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _per_item(buffer: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Schedule values at timesteps t (N,), shaped (N, 1, 1, 1) to broadcast over latents."""
    return buffer[t].view(-1, 1, 1, 1)


# ---- loading the published model.ckpt ---------------------------------------------------------------------

# Why a group of keys may be missing from / skipped in a published checkpoint, shown in the load summary.
_KNOWN_REASONS = (
    ("missing", "model.diffusion_model.time_embed_condtion", "new, trained in Stage B"),
    ("missing", "cond_stage_model.mae", "fMRI encoder, loaded from the Stage A checkpoint"),
    ("missing", "cond_stage_model.", "new, trained in Stage B"),
    ("ignored", "cond_stage_model.", "class-embedding cond stage, replaced by the fMRI conditioner"),
    ("ignored", "model.diffusion_model.time_embed_condtion", "sized for 77 context tokens, started new"),
)


@dataclass
class LoadReport:
    """What `load_ldm_checkpoint` did; `str()` is the one readable summary (key groups with counts)."""

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    class_table: torch.Tensor | None = None  # an ignored class embedder's table (classes + 1 unconditional, D)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.path}"]
        for kind in ("missing", "unexpected", "ignored"):
            for prefix, keys in _group_keys(getattr(self, kind)).items():
                name = keys[0] if len(keys) == 1 else f"{prefix}.* ({len(keys)} keys)"
                why = next((r for k, p, r in _KNOWN_REASONS if k == kind and prefix.startswith(p)), None)
                lines.append(f"  {kind}: {name}" + (f" — {why}" if why else ""))
        return "\n".join(lines)


def _group_keys(keys: list[str]) -> dict[str, list[str]]:
    """Group state-dict keys by module: `model.diffusion_model.<block>`, `model_ema`, else the first two parts."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        depth = 3 if key.startswith("model.diffusion_model.") else 1 if key.startswith("model_ema.") else 2
        groups[".".join(key.split(".")[:depth])].append(key)
    return groups


def load_ldm_checkpoint(
    model: nn.Module, path: str | Path, ignore_cond_stage: bool = True, ignore_keys: tuple[str, ...] = ()
) -> LoadReport:
    """Load the `state_dict` of a Lightning LDM checkpoint (e.g. `model.ckpt`) non-strictly, and log a summary.

    `ignore_cond_stage` skips `cond_stage_model.*` (the class embedder the fMRI conditioner replaces);
    keys starting with any of `ignore_keys` are skipped too. A shape mismatch is an error.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    skip = tuple(ignore_keys) + (("cond_stage_model.",) if ignore_cond_stage else ())
    ignored = [k for k in state if k.startswith(skip)]
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{path}: {len(mismatched)} tensors do not match the model's shapes (built from another config?): "
            + "; ".join(mismatched[:5])
        )
    result = model.load_state_dict(state, strict=False)
    report = LoadReport(
        str(path),
        len(state) - len(result.unexpected_keys),
        result.missing_keys,
        result.unexpected_keys,
        ignored,
        ckpt.get("state_dict", ckpt).get("cond_stage_model.embedding.weight"),
    )
    log.info("%s", report)
    return report
