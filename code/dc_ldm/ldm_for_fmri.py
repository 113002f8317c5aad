"""The fMRI-conditioned LDM of Stage B, assembled: from the label LDM's files, or rebuilt from a Stage B checkpoint.

`build_ldm_for_fmri` puts a conditioner of `conditioners.CONDITIONERS` into the label-conditioned LDM of
`pretrains/ldm/label2img` in place of its class embedder, the UNet sized for the conditioner's context;
`load_finetuned` / `model_from_finetuned` rebuild a Stage B model from its checkpoint (published or ours), the
conditioner named by the checkpoint. Sampling is in `dc_ldm.sampling`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from checkpoint_layouts import ENCODER_FIELDS, read_architecture, read_finetuned, stage_a_config
from dc_ldm.conditioners import CONDITIONERS
from dc_ldm.models.diffusion.ddpm import LatentDiffusion, load_ldm_checkpoint
from dc_ldm.modules.diffusionmodules.openaimodel import NUM_CONTEXT_TOKENS
from dc_ldm.util import instantiate_from_config, load_ldm_config
from errors import CheckpointError
from published_configs import stage_b_conditioner

log = logging.getLogger("mindvis.dc_ldm")

# How double conditioning's layers start where the label LDM's file has none (every published label2img file, and
# the one-token Linear of global_pool): as constructed (PyTorch's default initialisation; the original loads the
# file non-strictly and keeps it), or with their last Linear zero (ours: training starts from cross-attention only).
TIME_COND_STARTS = ("published", "zero")
TIME_COND = "model.diffusion_model.time_embed_condtion"  # double conditioning's layers (the published typo)


def build_ldm_for_fmri(
    ldm_dir: str | Path,
    encoder: Mapping,
    num_voxels: int,
    *,
    conditioner: str = "published",
    use_time_cond: bool = True,
    load_ldm_weights: bool = True,
    cond_dropout: float = 0.0,
    time_cond_start: str = "published",
    encoder_weights: Mapping[str, torch.Tensor] | None = None,
) -> LatentDiffusion:
    """The LDM of `ldm_dir/config.yaml` (+ `model.ckpt` when present) with an fMRI conditioner for `num_voxels`.

    The class embedder is replaced by `CONDITIONERS[conditioner]` over an encoder of the architecture `encoder`
    (ENCODER_FIELDS), its output width the UNet's `context_dim` and its token count the UNet's context length;
    double conditioning follows `use_time_cond`. Its layers that the file lacks start as `time_cond_start` says
    (TIME_COND_STARTS). `encoder_weights`: a Stage A state dict the encoder is loaded from
    (`FMRIEncoder.load_checkpoint`). `model.class_table` holds the label LDM's class embeddings (None without weights).
    """
    if time_cond_start not in TIME_COND_STARTS:
        raise ValueError(f"time_cond_start must be one of {TIME_COND_STARTS}, got {time_cond_start!r}")
    if conditioner not in CONDITIONERS:
        raise ValueError(f"conditioner must be one of {tuple(CONDITIONERS)}, got {conditioner!r}")
    scheme = CONDITIONERS[conditioner]
    ldm_dir = Path(ldm_dir)
    ckpt_path = ldm_dir / "model.ckpt"
    model_cfg = load_ldm_config(ldm_dir / "config.yaml")  # every target checked against the allow-list
    params = model_cfg["params"]
    unet = params["unet_config"]["params"]
    unet.pop("global_pool", None)  # the published key for one context token: the conditioner says how many
    unet.update(use_time_cond=use_time_cond, context_tokens=scheme.context_tokens(num_voxels // encoder["patch_size"]))
    params.update(cond_stage_key="fmri", use_ema=False)  # the YAML's class embedder is replaced below
    model = instantiate_from_config(model_cfg)
    if load_ldm_weights and ckpt_path.is_file():
        # a label LDM's own double conditioning, if it has one, reads the published 77 tokens: another count
        # (patch_tokens) starts those layers new, as the file has none for it
        other = unet["context_tokens"] not in (1, NUM_CONTEXT_TOKENS)
        report = load_ldm_checkpoint(model, ckpt_path, ignore_cond_stage=True, ignore_keys=(f"{TIME_COND}.",) * other)
        model.class_table = report.class_table
        missing = any(k.startswith(f"{TIME_COND}.") for k in report.missing)
        if use_time_cond and missing and time_cond_start == "zero":
            # double conditioning starts as the pretrained timestep embedding, not a random vector added to it
            last = [m for m in model.model.diffusion_model.time_embed_condtion.modules() if isinstance(m, nn.Linear)]
            nn.init.zeros_(last[-1].weight)
            nn.init.zeros_(last[-1].bias)
    elif load_ldm_weights:
        log.warning(
            "%s not found: the LDM starts from random weights (fine for tests, not for real results)", ckpt_path
        )
    context_dim = unet["context_dim"]
    cond = scheme(num_voxels, context_dim, cond_dropout=cond_dropout, **{k: encoder[k] for k in ENCODER_FIELDS})
    if encoder_weights is not None:
        cond.mae.load_checkpoint(encoder_weights)
    model.cond_stage_model = cond
    table = model.class_table
    if cond_dropout > 0 and table is not None and table.shape[1] == context_dim:
        with torch.no_grad():  # the null context starts as the label LDM's own "no class" embedding (its last row)
            cond.null_context.copy_(table[-1].expand_as(cond.null_context))
    return model


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

    The LDM's architecture comes from `pretrain_gm_path/config.yaml`; the conditioner is the one the checkpoint
    names (`published_configs.stage_b_conditioner`: published files by their `global_pool`); the encoder's
    architecture from the checkpoint's `model_meta` (ours) or, as the original reads it, from the config of the
    Stage A checkpoint `pretrain_mbm_path` (published files); what neither gives is read off the weights, and a
    head count that cannot be is an error naming the file to pass. The voxel count comes from `pos_embed`.
    """
    prefix = "cond_stage_model.mae."
    meta = values.get("model_meta")
    if not isinstance(meta, Mapping) and pretrain_mbm_path is not None and Path(pretrain_mbm_path).is_file():
        meta = stage_a_config(pretrain_mbm_path)
    arch = read_architecture(dict(meta) if isinstance(meta, Mapping) else {}, state, path, prefix, ENCODER_FIELDS)
    values["model_meta"] = {k: arch[k] for k in ENCODER_FIELDS}
    conditioner = stage_b_conditioner(values)
    if conditioner not in CONDITIONERS:
        raise CheckpointError(f"{path}: its conditioner {conditioner!r} is not one of {tuple(CONDITIONERS)}")
    model = build_ldm_for_fmri(
        pretrain_gm_path,
        arch,
        arch["num_voxels"],
        conditioner=conditioner,
        use_time_cond=bool(values.get("use_time_cond", True)),
        load_ldm_weights=False,
        cond_dropout=float(values.get("cond_dropout") or 0.0),
    )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not match the LDM of {pretrain_gm_path}/config.yaml: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(device).eval()
