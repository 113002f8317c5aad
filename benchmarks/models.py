"""The models the Stage B, generation and VQ-decode benchmarks run: the published label2img LDM with the fMRI
conditioner, at the published size (random weights) or at toy sizes for --tiny, and the sizes each mode uses."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import OmegaConf

import repo
from dc_ldm.ldm_for_fmri import build_ldm_for_fmri
from dc_ldm.models.diffusion.ddpm import LatentDiffusion
from dc_ldm.util import instantiate_from_config, load_ldm_config

LDM_DIR = repo.ROOT / "pretrains" / "ldm" / "label2img"

# The Stage A encoder inside the conditioner (published: ViT-1024 x 24 over GOD sbj_3's 4656 voxels).
MAE_META = {
    "published": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=1.0),
    "tiny": dict(patch_size=16, embed_dim=32, depth=2, num_heads=4, mlp_ratio=1.0),
}
NUM_VOXELS = {"published": 4656, "tiny": 256}

# Toy overrides of the published config.yaml for --tiny (GroupNorm needs widths divisible by 32).
TINY_UNET = dict(
    model_channels=32, channel_mult=[1, 2], attention_resolutions=[2], num_res_blocks=1, context_dim=32, image_size=8
)
TINY_VQ = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, resolution=16)
TINY_N_EMBED = 64

# Image side per mode: the published 256 (64^2 latents); --quick halves it (the CPU budget, see README);
# --tiny uses the toy first stage's 16 (8^2 latents).
IMAGE_SIZE = {"full": 256, "quick": 128, "tiny": 16}


def size_name(args: Any) -> str:
    return "tiny" if args.mode == "tiny" else "published"


def ldm_config(tiny: bool) -> dict:
    """The published label2img config.yaml as a dict, with toy sizes when `tiny`."""
    config = {"model": load_ldm_config(LDM_DIR / "config.yaml")}  # read and checked as every stage reads it
    if tiny:
        params = config["model"]["params"]
        params["unet_config"]["params"].update(TINY_UNET)
        params["first_stage_config"]["params"]["ddconfig"].update(TINY_VQ)
        params["first_stage_config"]["params"]["n_embed"] = TINY_N_EMBED
        params["cond_stage_config"]["params"]["embed_dim"] = TINY_UNET["context_dim"]
        params["image_size"] = TINY_UNET["image_size"]
    return config


def build_ldm(args: Any, meta: bool = False) -> LatentDiffusion:
    """The Stage B model (published or toy size, random weights) on `args.device`, or on the meta device."""
    name = size_name(args)
    with tempfile.TemporaryDirectory() as folder:
        ldm_dir = LDM_DIR
        if name == "tiny":
            ldm_dir = Path(folder)
            OmegaConf.save(OmegaConf.create(ldm_config(True)), ldm_dir / "config.yaml")
        torch.manual_seed(0)
        device = torch.device("meta") if meta else args.device
        with device:  # built in place, no host copy of 600M weights; the schedule buffers are made on the CPU
            model = build_ldm_for_fmri(ldm_dir, MAE_META[name], NUM_VOXELS[name], load_ldm_weights=False)
        return fill_zero_init(model.to(device))


def fill_zero_init(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Give the zero-initialised parameters (the UNet's output convs, `proj_out`s, ...) small random values.

    A fresh UNet predicts exactly 0 whatever its input; with these filled in, its outputs depend on every layer,
    so comparing two implementations' outputs means something.
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.device.type != "meta" and p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def tiny_stage_b_world(root: Path) -> SimpleNamespace:
    """What Stage B reads, at toy size, in `root`: the tiny simulated GOD data (`data/`), a label2img folder of the
    reference test architecture (`ldm/`: 32x32 images, 8x8 latents; random weights, zero-initialised layers filled
    in as a trained model's would be) and a random-weight Stage A file sized to sbj_3 (`fmri_encoder.pth`). Shared
    by the Stage B tests and `stage_b_path.py`."""
    import json

    import yaml

    from checkpoint import save_checkpoint
    from demo.simulation.simulate import make_synthetic_data
    from readers.god import create_god_dataset
    from sc_mbm.mae_for_fmri import MAEforFMRI

    data = make_synthetic_data(root / "data", size="tiny", seed=0)
    ldm_dir = root / "ldm"
    ldm_dir.mkdir()
    model_cfg = json.loads((repo.ROOT / "tests" / "reference" / "ldm.json").read_text())["model"]
    (ldm_dir / "config.yaml").write_text(yaml.safe_dump({"model": model_cfg}))
    torch.manual_seed(0)
    label2img = fill_zero_init(instantiate_from_config(model_cfg))
    torch.save({"state_dict": label2img.state_dict(), "epoch": 3}, ldm_dir / "model.ckpt")
    num_voxels = create_god_dataset(data / "Kamitani" / "npz", subjects=["sbj_3"])[0].num_voxels
    decoder = {"decoder_embed_dim": 16, "decoder_num_heads": 4}
    mae = MAEforFMRI(num_voxels=num_voxels, **decoder, **MAE_META["tiny"])
    stage_a = root / "fmri_encoder.pth"
    config = {**MAE_META["tiny"], **decoder, "num_voxels": num_voxels}
    save_checkpoint({"model": mae.state_dict(), "config": config, "epoch": 0}, stage_a)
    return SimpleNamespace(root=root, data=data, ldm_dir=ldm_dir, stage_a=stage_a, label2img=label2img.state_dict())


def first_stage_config(args: Any) -> dict:
    """The `first_stage_config` section of the label2img config (toy sizes for --tiny)."""
    return copy.deepcopy(ldm_config(size_name(args) == "tiny")["model"]["params"]["first_stage_config"])


def build_vq(args: Any) -> torch.nn.Module:
    """The VQ first stage (`VQModelInterface`, random weights) in eval mode on `args.device`."""
    torch.manual_seed(0)
    return instantiate_from_config(first_stage_config(args)).to(args.device).eval()


def latent_side(args: Any) -> int:
    """Side of the diffusion latents: the image side over the first stage's downsampling (4 published, 2 toy)."""
    ddconfig = ldm_config(size_name(args) == "tiny")["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    return IMAGE_SIZE[args.mode] // 2 ** (len(ddconfig["ch_mult"]) - 1)


def set_memory_format(model: torch.nn.Module, channels_last: bool) -> None:
    """Convert the 4-D weights in place (the optimiser keeps its references); a no-op when already there."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)


def stage_b_batch(args: Any, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict:
    """Random Stage B inputs: images (B, 3, H, W) in [-1, 1] and fMRI (B, 1, V)."""
    side = IMAGE_SIZE[args.mode]
    image = torch.rand(batch, 3, side, side, device=device, dtype=dtype) * 2 - 1
    fmri = torch.randn(batch, 1, NUM_VOXELS[size_name(args)], device=device, dtype=dtype)
    return {"image": image, "fmri": fmri}


def stage_b_trainable(model: torch.nn.Module, cond_path_only: bool = True) -> list[torch.nn.Parameter]:
    """Make trainable what Stage B trains (the conditioning path; with `cond_path_only=False` the UNet and the
    conditioner, as the original left them) and return the conditioning path, the parameters its AdamW updates.

    `LatentDiffusion.set_trainable` does it; a model of the Lightning era does it with `configure_optimizers` and
    `unfreeze_whole_model`.
    """
    if hasattr(model, "set_trainable"):
        model.set_trainable(cond_path_only)
    else:
        model.configure_optimizers()
        if not cond_path_only:
            model.unfreeze_whole_model()
    return model.cond_path_parameters()


def stage_b_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The Stage B training loss of one batch (images VQ-encoded, noised at random timesteps, ε predicted)."""
    return model(*model.get_input(batch))
