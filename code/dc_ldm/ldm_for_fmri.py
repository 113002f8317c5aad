"""The fMRI-conditioned LDM of Stage B: the conditioner, the model assembly, loading and sampling.

`FMRICondStage` is what `LatentDiffusion.cond_stage_model` holds in a Stage B model; its state-dict keys are the
`cond_stage_model.*` keys of published finetuned checkpoints. `build_ldm_for_fmri` puts it into the
label-conditioned LDM of `pretrains/ldm/label2img`; `load_finetuned` rebuilds a Stage B model from its
checkpoint alone; `sample_images` decodes fMRI into images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from checkpoint import CheckpointError, as_config_dict, load_checkpoint
from dc_ldm.models.diffusion.ddim import DDIMSampler
from dc_ldm.models.diffusion.ddpm import LatentDiffusion, load_ldm_checkpoint
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.util import instantiate_from_config, load_ldm_config
from sc_mbm.mae_for_fmri import FMRIEncoder

log = logging.getLogger("mindvis.dc_ldm")

NUM_CONTEXT_TOKENS = 77  # the published conditioner's context length (the UNet's cross-attention sees 77 tokens)


class FMRICondStage(nn.Module):
    """fMRI conditioner: (N, 1, V) -> (N, 77, cond_dim) context for the UNet's cross-attention.

    `mae` (the Stage A token encoder) -> `channel_mapper`, two kernel-1 Conv1d that treat the L patch tokens as
    channels (L -> L // 2 -> 77) -> `dim_mapper` Linear(D -> cond_dim). With `global_pool` the encoder yields
    one pooled token, so, as in the published code, there is no `channel_mapper` and the output is
    (N, 1, cond_dim) (the UNet's `time_embed_condtion` is then a single Linear).
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
    ):
        super().__init__()
        self.mae = FMRIEncoder(num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio, global_pool)
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
        self.dim_mapper = nn.Linear(embed_dim, cond_dim)
        self.cond_dim = cond_dim
        self.num_tokens = 1 if global_pool else NUM_CONTEXT_TOKENS

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, 77, cond_dim), or (N, 1, cond_dim) with `global_pool`."""
        x = self.mae(fmri)  # (N, L, D), or (N, 1, D) pooled
        if self.channel_mapper is not None:
            x = self.channel_mapper(x)  # (N, 77, D)
        return self.dim_mapper(x)  # (N, 77, cond_dim)


# ----------------------------------------------------------------------------------------------------
# Assembly: the label-conditioned LDM with the fMRI conditioner in place of its class embedder
# ----------------------------------------------------------------------------------------------------

MAE_FIELDS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def mae_meta_from_state_dict(state: Mapping[str, torch.Tensor], prefix: str = "", num_heads: int = 16) -> dict:
    """Encoder architecture read off a state dict (`num_heads` cannot be, and defaults to the published 16)."""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    embed_dim, _, patch_size = state["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    return {"patch_size": int(patch_size), "embed_dim": int(embed_dim), "depth": depth, "num_heads": num_heads,
            "mlp_ratio": hidden / embed_dim}


def mae_meta_from_checkpoint(ckpt: Mapping, path: str | Path) -> dict:
    """The encoder architecture of a Stage A checkpoint (its config, or its tensors when the config lacks it)."""
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: not a Stage A checkpoint (expected keys 'model' and 'config')")
    config = as_config_dict(ckpt["config"]) if "config" in ckpt else {}
    if all(k in config for k in MAE_FIELDS):
        return {k: config[k] for k in MAE_FIELDS}
    log.warning("%s: config lacks the encoder architecture; reading it from the tensors (num_heads=16)", path)
    return mae_meta_from_state_dict(ckpt["model"])


def num_voxels_of(state: Mapping[str, torch.Tensor], prefix: str, patch_size: int) -> int:
    """Voxel count an encoder state dict was built for: (pos_embed length - 1) x patch size."""
    return (state[f"{prefix}pos_embed"].shape[1] - 1) * patch_size


def build_ldm_for_fmri(
    ldm_dir: str | Path,
    mae_meta: Mapping,
    num_voxels: int,
    global_pool: bool = False,
    use_time_cond: bool = True,
    load_ldm_weights: bool = True,
) -> LatentDiffusion:
    """The LDM of `ldm_dir/config.yaml` (+ `model.ckpt` when present) with an fMRI conditioner for `num_voxels`.

    The class embedder is replaced by `FMRICondStage` (encoder -> channel_mapper -> dim_mapper) whose
    output width is the UNet's `context_dim`; double conditioning follows `use_time_cond`.
    """
    ldm_dir = Path(ldm_dir)
    ckpt_path = ldm_dir / "model.ckpt"
    model_cfg = load_ldm_config(ldm_dir / "config.yaml")  # every target checked against the allow-list
    params = model_cfg["params"]
    params["unet_config"]["params"].update(use_time_cond=use_time_cond, global_pool=global_pool)
    params.update(cond_stage_trainable=True, cond_stage_key="fmri", use_ema=False, ckpt_path=None)
    model = instantiate_from_config(model_cfg)
    if load_ldm_weights and ckpt_path.is_file():
        load_ldm_checkpoint(model, ckpt_path, ignore_cond_stage=True)
    elif load_ldm_weights:
        log.warning("%s not found: the LDM starts from random weights (fine for tests, not for real results)",
                    ckpt_path)
    context_dim = params["unet_config"]["params"]["context_dim"]
    model.cond_stage_model = FMRICondStage(num_voxels=num_voxels, cond_dim=context_dim, global_pool=global_pool,
                                           **{k: mae_meta[k] for k in MAE_FIELDS})
    model.train_cond_only = True
    return model


def load_finetuned(path: str | Path, root: str | Path = ".", device: torch.device | str = "cpu"):
    """A Stage B checkpoint (published or ours) -> (LatentDiffusion in eval mode on `device`, StageBConfig).

    The architecture comes from the checkpoint: the LDM config named by its `pretrain_gm_path`, the
    encoder from `model_meta` (ours) or the tensors (published), the voxel count from `pos_embed`.
    """
    from config import StageBConfig, from_dict  # config imports nothing from dc_ldm; kept local for clarity

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, Mapping) or "model_state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a Stage B checkpoint (expected keys 'model_state_dict' and 'config')")
    values = as_config_dict(ckpt["config"])
    values["root_path"] = str(root)
    if not values.get("pretrain_gm_path") or not Path(values["pretrain_gm_path"]).is_dir():
        values["pretrain_gm_path"] = None  # published configs hold the authors' paths; use <root>/pretrains/...
    cfg = from_dict(StageBConfig, values, strict=False)
    state = ckpt["model_state_dict"]
    prefix = "cond_stage_model.mae."
    meta = values.get("model_meta")
    meta = dict(meta) if isinstance(meta, Mapping) and all(k in meta for k in MAE_FIELDS) else \
        mae_meta_from_state_dict(state, prefix)
    num_voxels = num_voxels_of(state, prefix, meta["patch_size"])
    model = build_ldm_for_fmri(cfg.pretrain_gm_path, meta, num_voxels, cfg.global_pool, cfg.use_time_cond,
                               load_ldm_weights=False)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: does not match the model built from its config: missing "
                              f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.to(device).eval(), cfg


@torch.no_grad()
def sample_images(
    model: LatentDiffusion,
    fmri: torch.Tensor,
    ddim_steps: int = 250,
    sampler: str = "plms",
    eta: float = 0.0,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """fMRI (B, 1, V) -> one decoded image each, (B, 3, H, W) in [0, 1] (latents quantised before decoding)."""
    cls = {"plms": PLMSSampler, "ddim": DDIMSampler}[sampler]
    cond = model.get_learned_conditioning(fmri)  # (B, 77, context_dim)
    latents, _ = cls(model).sample(S=ddim_steps, batch_size=fmri.shape[0], shape=model.latent_shape,
                                   conditioning=cond, x_T=x_T, eta=eta, verbose=False, generator=generator)
    images = model.decode_first_stage(latents.float())
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
