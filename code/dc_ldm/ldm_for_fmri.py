"""The fMRI-conditioned LDM of Stage B: the conditioner, the model assembly, loading and sampling.

`FMRICondStage` is what `LatentDiffusion.cond_stage_model` holds in a Stage B model; its state-dict keys are the
`cond_stage_model.*` keys of published finetuned checkpoints. `build_ldm_for_fmri` puts it into the
label-conditioned LDM of `pretrains/ldm/label2img`; `load_finetuned` rebuilds a Stage B model from its
checkpoint; `sample_images` decodes fMRI into images and `generate` does so for a whole test set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from checkpoint_layouts import ENCODER_FIELDS, read_architecture, read_finetuned, stage_a_config
from dc_ldm.models.diffusion.ddpm import LatentDiffusion, load_ldm_checkpoint
from dc_ldm.models.diffusion.samplers import SAMPLERS
from dc_ldm.util import instantiate_from_config, load_ldm_config
from errors import CheckpointError, UserError
from ridge import fit_ridge
from runtime import autocast, progress
from sc_mbm.mae_for_fmri import FMRIEncoder
from transforms import to_uint8_images

log = logging.getLogger("mindvis.dc_ldm")

NUM_CONTEXT_TOKENS = 77  # the published conditioner's context length (the UNet's cross-attention sees 77 tokens)


class FMRICondStage(nn.Module):
    """fMRI conditioner: (N, 1, V) -> (N, 77, cond_dim) context for the UNet's cross-attention.

    `mae` (the Stage A token encoder) -> `channel_mapper`, two kernel-1 Conv1d that treat the L patch tokens as
    channels (L -> L // 2 -> 77) -> `dim_mapper` Linear(D -> cond_dim). With `global_pool` the encoder yields
    one pooled token, so, as in the published code, there is no `channel_mapper` and the output is
    (N, 1, cond_dim) (the UNet's `time_embed_condtion` is then a single Linear).

    Options of ours, off in the published method: `linear_pool` (with `global_pool`) makes the one token a Linear
    map of all L encoder tokens flattened (`dim_mapper`: L * D -> cond_dim) instead of their mean, which mixes
    what each token says of its own voxels; `cond_dropout` > 0 adds `null_context`, a learned context that
    replaces a sample's fMRI context with that probability in training, so that sampling can use classifier-free
    guidance (`sample_images(..., guidance_scale=s)`).
    """

    def __init__(
        self,
        num_voxels: int,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 1.0,
        cond_dim: int = 512,
        global_pool: bool = False,
        cond_dropout: float = 0.0,
        linear_pool: bool = False,
    ):
        super().__init__()
        if linear_pool and not global_pool:
            raise ValueError("linear_pool makes one context token: it needs global_pool")
        self.linear_pool = linear_pool
        self.mae = FMRIEncoder(
            num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio, global_pool and not linear_pool
        )
        seq_len = self.mae.num_patches
        if global_pool:
            self.channel_mapper = None
        elif seq_len < 2:
            raise ValueError(
                f"the channel mapper needs at least 2 patches (num_voxels >= {2 * patch_size}), got {seq_len}; "
                "use global_pool or more voxels"
            )
        else:
            self.channel_mapper = nn.Sequential(
                nn.Conv1d(seq_len, seq_len // 2, kernel_size=1),
                nn.Conv1d(seq_len // 2, NUM_CONTEXT_TOKENS, kernel_size=1),
            )
        self.dim_mapper = nn.Linear(seq_len * embed_dim if linear_pool else embed_dim, cond_dim)
        self.cond_dim = cond_dim
        self.num_tokens = 1 if global_pool else NUM_CONTEXT_TOKENS
        self.cond_dropout = cond_dropout
        if cond_dropout > 0:
            self.null_context = nn.Parameter(torch.zeros(1, self.num_tokens, cond_dim))

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, 77, cond_dim), or (N, 1, cond_dim) with `global_pool`."""
        x = self.mae(fmri)  # (N, L, D), or (N, 1, D) pooled
        if self.linear_pool:
            x = x.flatten(1)[:, None]  # (N, 1, L * D)
        elif self.channel_mapper is not None:
            x = self.channel_mapper(x)  # (N, 77, D)
        x = self.dim_mapper(x)  # (N, 77, cond_dim), or (N, 1, cond_dim)
        if self.training and self.cond_dropout > 0:
            dropped = torch.rand(len(x), 1, 1, device=x.device) < self.cond_dropout  # (N, 1, 1)
            x = torch.where(dropped, self.null_context.to(x.dtype), x)
        return x

    def unconditional(self, batch: int) -> torch.Tensor:
        """The null context for classifier-free guidance, (batch, tokens, cond_dim)."""
        if self.cond_dropout <= 0:
            raise UserError(
                "classifier-free guidance needs a model trained with --cond_dropout > 0 (it learns the "
                "null context); sample with --guidance_scale 1"
            )
        return self.null_context.expand(batch, -1, -1)


# ----------------------------------------------------------------------------------------------------
# Assembly: the label-conditioned LDM with the fMRI conditioner in place of its class embedder
# ----------------------------------------------------------------------------------------------------


# How double conditioning's layers start where the label LDM's file has none (every published label2img file, and
# the one-token Linear of global_pool): as constructed (PyTorch's default initialisation; the original loads the
# file non-strictly and keeps it), or with their last Linear zero (ours: training starts from cross-attention only).
TIME_COND_STARTS = ("published", "zero")


def build_ldm_for_fmri(
    ldm_dir: str | Path,
    mae_meta: Mapping,
    num_voxels: int,
    global_pool: bool = False,
    use_time_cond: bool = True,
    load_ldm_weights: bool = True,
    cond_dropout: float = 0.0,
    linear_pool: bool = False,
    time_cond_start: str = "published",
) -> LatentDiffusion:
    """The LDM of `ldm_dir/config.yaml` (+ `model.ckpt` when present) with an fMRI conditioner for `num_voxels`.

    The class embedder is replaced by `FMRICondStage` (encoder -> channel_mapper -> dim_mapper) whose
    output width is the UNet's `context_dim`; double conditioning follows `use_time_cond`. Its layers that the
    file lacks start as `time_cond_start` says (TIME_COND_STARTS).
    """
    if time_cond_start not in TIME_COND_STARTS:
        raise ValueError(f"time_cond_start must be one of {TIME_COND_STARTS}, got {time_cond_start!r}")
    ldm_dir = Path(ldm_dir)
    ckpt_path = ldm_dir / "model.ckpt"
    model_cfg = load_ldm_config(ldm_dir / "config.yaml")  # every target checked against the allow-list
    params = model_cfg["params"]
    params["unet_config"]["params"].update(use_time_cond=use_time_cond, global_pool=global_pool)
    params.update(cond_stage_key="fmri", use_ema=False)  # the YAML's class embedder is replaced below
    model = instantiate_from_config(model_cfg)
    class_table = None
    if load_ldm_weights and ckpt_path.is_file():
        report = load_ldm_checkpoint(model, ckpt_path, ignore_cond_stage=True)
        class_table = report.class_table
        missing = any(k.startswith("model.diffusion_model.time_embed_condtion.") for k in report.missing)
        if use_time_cond and missing and time_cond_start == "zero":
            # double conditioning starts as the pretrained timestep embedding, not a random vector added to it
            last = [m for m in model.model.diffusion_model.time_embed_condtion.modules() if isinstance(m, nn.Linear)]
            nn.init.zeros_(last[-1].weight)
            nn.init.zeros_(last[-1].bias)
    elif load_ldm_weights:
        log.warning(
            "%s not found: the LDM starts from random weights (fine for tests, not for real results)", ckpt_path
        )
    context_dim = params["unet_config"]["params"]["context_dim"]
    model.cond_stage_model = FMRICondStage(
        num_voxels=num_voxels,
        cond_dim=context_dim,
        global_pool=global_pool,
        cond_dropout=cond_dropout,
        linear_pool=linear_pool,
        **{k: mae_meta[k] for k in ENCODER_FIELDS},
    )
    model.class_table = class_table  # the label LDM's class embeddings (N classes + 1 unconditional), or None
    if cond_dropout > 0 and class_table is not None and class_table.shape[1] == context_dim:
        with torch.no_grad():  # the null context starts as the label LDM's own "no class" embedding (its last row)
            model.cond_stage_model.null_context.copy_(class_table[-1].expand_as(model.cond_stage_model.null_context))
    return model


@torch.no_grad()
def ridge_init_pool(
    cond: FMRICondStage, fmri: torch.Tensor, labels: np.ndarray, class_table: torch.Tensor, seed: int = 0
) -> dict:
    """Start a linear pool as the ridge map from the encoder's tokens of training fMRI (N, 1, V) to the LDM's class
    embedding of each one's label (N,): the context starts where it already means a class to the UNet.

    The penalty is chosen by cross-validation on the training set; test classes, never seen, map to points between
    the known classes' embeddings. Returns the penalty.
    """
    if not cond.linear_pool:
        raise ValueError("ridge_init_pool needs a conditioner built with linear_pool")
    if (labels < 0).any() or labels.max() >= len(class_table):
        raise UserError(
            f"ridge_init needs the class of every training image among the LDM's {len(class_table)} "
            "classes (GOD's labels are ImageNet classes; BOLD5000 has none)"
        )
    was_training = cond.training
    cond.eval()
    tokens = torch.cat([cond.mae(b.to(cond.dim_mapper.weight.device)).flatten(1).cpu() for b in fmri.split(100)])
    cond.train(was_training)
    weights, bias, alpha = fit_ridge(tokens.double().numpy(), class_table[labels].double().numpy(), seed=seed)
    cond.dim_mapper.weight.copy_(torch.from_numpy(weights.T))
    cond.dim_mapper.bias.copy_(torch.from_numpy(bias))
    return {"penalty": alpha}


def load_finetuned(
    path: str | Path,
    pretrain_gm_path: str | Path,
    pretrain_mbm_path: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> tuple[LatentDiffusion, dict]:
    """A Stage B checkpoint (published or ours) -> (LatentDiffusion in eval mode on `device`, its stored config)."""
    state, values = read_finetuned(path)
    return model_from_finetuned(state, values, path, pretrain_gm_path, pretrain_mbm_path, device), values


def model_from_finetuned(
    state: Mapping[str, torch.Tensor],
    values: dict,
    path: str | Path,
    pretrain_gm_path: str | Path,
    pretrain_mbm_path: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> LatentDiffusion:
    """The model of a Stage B checkpoint's weights `state` and stored config `values` (`model_meta` is filled in).

    The LDM's architecture comes from `pretrain_gm_path/config.yaml`; the encoder's from the checkpoint's
    `model_meta` (ours) or, as the original reads it, from the config of the Stage A checkpoint
    `pretrain_mbm_path` (published files); what neither gives is read off the weights, and a head count that
    cannot be is an error naming the file to pass. The voxel count comes from `pos_embed`.
    """
    prefix = "cond_stage_model.mae."
    meta = values.get("model_meta")
    if not isinstance(meta, Mapping) and pretrain_mbm_path is not None and Path(pretrain_mbm_path).is_file():
        meta = stage_a_config(pretrain_mbm_path)
    arch = read_architecture(dict(meta) if isinstance(meta, Mapping) else {}, state, path, prefix, ENCODER_FIELDS)
    values["model_meta"] = {k: arch[k] for k in ENCODER_FIELDS}
    model = build_ldm_for_fmri(
        pretrain_gm_path,
        arch,
        arch["num_voxels"],
        bool(values.get("global_pool", False)),
        bool(values.get("use_time_cond", True)),
        load_ldm_weights=False,
        cond_dropout=float(values.get("cond_dropout") or 0.0),
        linear_pool=bool(values.get("linear_pool", False)),
    )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not match the LDM of {pretrain_gm_path}/config.yaml: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(device).eval()


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
