"""Stage A (SC-MBM): the fMRI masked autoencoder `MAEforFMRI` and the token encoder `FMRIEncoder` of Stage B.

A ViT over 1-D voxel patches (Conv1d patch embedding, fixed sin-cos positions, pre-norm blocks with qkv bias and
a GELU MLP of width `mlp_ratio * D`), with an MAE decoder of 8 blocks predicting the voxels of every patch. The
blocks are timm's `Block` with PyTorch's LayerNorm (eps 1e-5), so state-dict keys equal the published checkpoints'.
Their attention runs through `F.scaled_dot_product_attention` (timm's fused path) except where `use_attention`
says the explicit softmax(q k^T / sqrt(d)) v is faster: bf16 on a CPU.
"""

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from errors import CheckpointError
from sc_mbm.architecture import width_problem
from sc_mbm.utils import get_1d_sincos_pos_embed, interpolate_pos_embed, patchify

log = logging.getLogger("mindvis.sc_mbm")

# Keys of a Stage A checkpoint that the encoder does not use: the decoder, the nature-image head and the
# decoder-width mask token.
_MAE_ONLY_PREFIXES = ("decoder_", "nature_img_", "mask_token")


def _check_sizes(num_voxels: int, patch_size: int, widths: Mapping[str, int]) -> None:
    """Raise a clear ValueError for a voxel count or widths and head counts the model cannot be built with."""
    if patch_size < 1 or num_voxels < patch_size:
        raise ValueError(f"num_voxels ({num_voxels}) is shorter than one patch (patch_size {patch_size})")
    if num_voxels % patch_size != 0:
        padded = -(-num_voxels // patch_size) * patch_size
        raise ValueError(
            f"num_voxels ({num_voxels}) must be a multiple of patch_size ({patch_size}); pad the fMRI (wrap mode) "
            f"to {padded} voxels"
        )
    if problem := width_problem(widths):
        raise ValueError(problem)


def _check_fmri(fmri: torch.Tensor, num_voxels: int, patch_size: int) -> None:
    """Raise a clear ValueError unless `fmri` is (N, 1, num_voxels)."""
    if fmri.ndim != 3 or fmri.shape[1] != 1:
        raise ValueError(f"expected fMRI of shape (N, 1, V), got {tuple(fmri.shape)}")
    voxels = fmri.shape[2]
    if voxels < patch_size:
        raise ValueError(f"fMRI has {voxels} voxels, fewer than one patch ({patch_size})")
    if voxels != num_voxels:
        why = "" if voxels % patch_size == 0 else f", and {voxels} is not a multiple of the patch size {patch_size}"
        raise ValueError(
            f"fMRI has {voxels} voxels but the model was built for {num_voxels}{why}; pad (wrap mode) or cut the "
            f"fMRI to {num_voxels} voxels, or build the model for its voxel count"
        )


def _vit_blocks(width: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(
        [Block(width, num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth)]
    )


class PatchEmbed1D(nn.Module):
    """Non-overlapping voxel patches -> tokens: (N, 1, V) -> (N, V / p, D)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv1d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, L, D)."""
        return self.proj(fmri).transpose(1, 2)  # (N, L, D)


class _FMRIBackbone(nn.Module):
    """The encoder trunk both models share: patch embedding, cls token, fixed positions, ViT blocks, final norm."""

    def __init__(self, num_voxels: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_voxels, self.patch_size, self.embed_dim = num_voxels, patch_size, embed_dim
        self.num_patches = num_voxels // patch_size
        self.patch_embed = PatchEmbed1D(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos positions, stored as frozen parameters because the published state dicts hold them.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim), requires_grad=False)
        self.blocks = _vit_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim)

    def initialize_weights(self) -> None:
        """Sin-cos `*pos_embed`, N(0, 0.02) `*_token`s, xavier-uniform linears (the patch embedding as one)."""
        for name, param in self.named_parameters():
            if name.endswith("pos_embed"):
                param.data.copy_(get_1d_sincos_pos_embed(param.shape[-1], param.shape[1] - 1, cls_token=True))
            elif name.endswith("_token"):
                nn.init.normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))  # (D, p): a Linear from a patch to a token
        nn.init.zeros_(self.patch_embed.proj.bias)

    def embed(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) fMRI -> (N, L, D) patch tokens with their positions (no cls token)."""
        _check_fmri(fmri, self.num_voxels, self.patch_size)
        return self.patch_embed(fmri) + self.pos_embed[:, 1:]  # (N, L, D)


class MAEforFMRI(_FMRIBackbone):
    """SC-MBM masked autoencoder: mask most patches, encode the rest, reconstruct the voxels of every patch.

    `focus_range=(start, end)` (voxel indices, end exclusive) and `focus_rate` in [0, 1] bias the masking as the
    published code did: the L - K masked tokens are drawn without replacement with weight `focus_rate` for patches
    start // p .. end // p - 1 and `1 - focus_rate` elsewhere. It applies to the noise the model draws itself; an
    explicit `noise` argument always decides the masking on its own.

    The published optional "nature image" loss (an image-feature head on the latent, off in every published run)
    is not implemented; its checkpoint keys `nature_img_*` are ignored when an encoder is loaded.
    """

    def __init__(
        self,
        num_voxels: int,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 1.0,
        focus_range: Sequence[int] | None = None,
        focus_rate: float | None = None,
    ):
        widths = dict(
            embed_dim=embed_dim,
            num_heads=num_heads,
            decoder_embed_dim=decoder_embed_dim,
            decoder_num_heads=decoder_num_heads,
        )
        _check_sizes(num_voxels, patch_size, widths)
        if (focus_range is None) != (focus_rate is None):
            raise ValueError("focus_range and focus_rate must be given together")
        if focus_range is not None and (len(focus_range) != 2 or not 0.0 <= focus_rate <= 1.0):
            raise ValueError(
                f"focus_range must be (start, end) and focus_rate in [0, 1], got {focus_range}, {focus_rate}"
            )
        super().__init__(num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio)
        self.focus_range = tuple(focus_range) if focus_range is not None else None
        self.focus_rate = focus_rate

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + self.num_patches, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = _vit_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size)
        self.initialize_weights()

    def masking_noise(self, batch: int, len_keep: int, device: torch.device) -> torch.Tensor:
        """Uniform (N, L) noise deciding the masking; with `focus_range`, the drawn masked tokens get 1.1."""
        noise = torch.rand(batch, self.num_patches, device=device)  # (N, L) in [0, 1)
        if self.focus_range is None:
            return noise
        start, end = (v // self.patch_size for v in self.focus_range)
        weights = torch.full((self.num_patches,), 1.0 - self.focus_rate, device=device)  # (L,)
        weights[start:end] = self.focus_rate
        # A small floor keeps the draw valid when a zero rate leaves fewer candidates than tokens to mask.
        weights = weights.clamp_min(1e-6).expand(batch, -1)  # (N, L)
        ids_mask = torch.multinomial(weights, self.num_patches - len_keep, replacement=False)  # (N, L - K)
        return noise.scatter(1, ids_mask, 1.1)  # above every uniform draw, so exactly these are masked

    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the int(L * (1 - mask_ratio)) tokens of smallest noise, in ascending-noise order.

        (N, L, D) -> kept (N, K, D), mask (N, L) float with 1 = masked, ids_restore (N, L).
        """
        n, length, width = x.shape
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = self.masking_noise(n, len_keep, x.device)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape (N, L) = ({n}, {length}), got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise, dim=1)  # (N, L) ascending: the first K are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L) position of each token in the shuffled order
        ids_keep = ids_shuffle[:, :len_keep]  # (N, K)
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, width))  # (N, K, D)
        mask = torch.ones(n, length, device=x.device)  # (N, L) in shuffled order
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (N, L) in patch order
        return kept, mask, ids_restore

    def forward_encoder(
        self, fmri: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 1, V) -> latent (N, 1 + K, D) (cls first, after the final norm), mask (N, L), ids_restore (N, L)."""
        x = self.embed(fmri)  # (N, L, D)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)  # (N, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent (N, 1 + K, D) and ids_restore (N, L) -> predicted voxels of every patch (N, L, p)."""
        x = self.decoder_embed(latent)  # (N, 1 + K, Dd)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)  # (N, L - K, Dd)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (N, L, Dd) in shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (N, 1 + L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1 + L, p)
        return x[:, 1:]  # (N, L, p): the cls token predicts nothing

    def forward_loss(self, fmri: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE of pred (N, L, p) against fmri (N, 1, V), averaged over the masked patches -> scalar."""
        target = patchify(fmri, self.patch_size)  # (N, L, p)
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (N, L)
        # clamp instead of a branch on mask.sum(): same value (0 when nothing is masked), no host sync
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)

    def forward(
        self,
        fmri: torch.Tensor,
        mask_ratio: float = 0.75,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 1, V) fMRI -> (loss scalar, pred (N, L, p), mask (N, L) with 1 = masked)."""
        latent, mask, ids_restore = self.forward_encoder(fmri, mask_ratio, noise)  # (N, 1 + K, D)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, p)
        return self.forward_loss(fmri, pred, mask), pred, mask


class FMRIEncoder(_FMRIBackbone):
    """Stage B token encoder: no masking, no decoder; (N, 1, V) -> every patch token (N, L, D) after the norm.

    As in the published encoder, the blocks see the patch tokens only: `cls_token` and `mask_token` exist (the
    published `cond_stage_model.mae.*` keys hold them) but are unused, so they are frozen. With `global_pool` the
    patch tokens are averaged to (N, 1, D) and the final `norm` normalises that pooled token; `load_checkpoint`
    then leaves `norm` at its fresh initialisation, since the MAE trained it on single tokens, not averages.
    """

    def __init__(
        self,
        num_voxels: int,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 1.0,
        global_pool: bool = False,
    ):
        _check_sizes(num_voxels, patch_size, {"embed_dim": embed_dim, "num_heads": num_heads})
        super().__init__(num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio)
        self.cls_token.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
        self.global_pool = global_pool
        self.initialize_weights()

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, L, D) patch tokens, or (N, 1, D) with `global_pool`."""
        x = self.embed(fmri)  # (N, L, D)
        for block in self.blocks:
            x = block(x)
        if self.global_pool:
            x = x.mean(dim=1, keepdim=True)  # (N, 1, D)
        return self.norm(x)  # (N, L, D) or (N, 1, D)

    def load_checkpoint(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a Stage A `MAEforFMRI` (or `FMRIEncoder`) state dict, interpolating `pos_embed` to this voxel count.

        Decoder, nature-image and `mask_token` keys are dropped; with `global_pool` the final `norm.*` too (only
        that one: the published loader dropped every block norm as well, docs/defects.md #3). Any other key
        missing, unexpected or of the wrong shape raises `CheckpointError` naming it.
        """
        own = self.state_dict()
        fresh = {"mask_token"} | ({"norm.weight", "norm.bias"} if self.global_pool else set())
        loaded = {k: v for k, v in state_dict.items() if k in own and k not in fresh}
        unexpected = sorted(k for k in state_dict if k not in own and not k.startswith(_MAE_ONLY_PREFIXES))
        missing = sorted(k for k in own if k not in fresh and k not in loaded)
        if missing or unexpected:
            raise CheckpointError(
                f"fMRI encoder checkpoint does not match FMRIEncoder(embed_dim={self.embed_dim}, "
                f"depth={len(self.blocks)}): missing keys {_listing(missing)}; unexpected keys {_listing(unexpected)}"
            )
        pos_embed = loaded["pos_embed"]
        if pos_embed.ndim == 3 and pos_embed.shape[1] != own["pos_embed"].shape[1]:
            log.info("interpolating pos_embed from %d to %d patches", pos_embed.shape[1] - 1, self.num_patches)
            loaded["pos_embed"] = interpolate_pos_embed(pos_embed, self.num_patches)
        wrong = [
            f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
            for k, v in loaded.items()
            if v.shape != own[k].shape
        ]
        if wrong:
            raise CheckpointError(f"fMRI encoder checkpoint has tensors of the wrong shape: {_listing(wrong)}")
        self.load_state_dict({**{k: own[k] for k in fresh}, **loaded}, strict=True)
        log.info("loaded fMRI encoder checkpoint; left at initialisation: %s", sorted(fresh))


def _listing(items: Sequence[str], limit: int = 8) -> str:
    """'[a, b, ...] (+n more)' for error messages about many keys."""
    if not items:
        return "none"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


# ---- construction from a Stage A architecture (a config, or what a checkpoint stores) ----------------------------


def build_mae(arch: Mapping, focus_range: Sequence[int] | None = None, focus_rate: float = 0.6) -> MAEforFMRI:
    """The masked autoencoder of an architecture mapping (sc_mbm.architecture.ARCH_FIELDS and num_voxels)."""
    return MAEforFMRI(
        num_voxels=arch["num_voxels"],
        patch_size=arch["patch_size"],
        embed_dim=arch["embed_dim"],
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        decoder_embed_dim=arch["decoder_embed_dim"],
        decoder_depth=arch["decoder_depth"],
        decoder_num_heads=arch["decoder_num_heads"],
        mlp_ratio=arch["mlp_ratio"],
        focus_range=focus_range,
        focus_rate=focus_rate if focus_range is not None else None,
    )


def architecture_from_weights(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """What a (prefixed) MAE or encoder state dict tells of its architecture, and num_voxels.

    Widths, depths, patch size and the MLP ratio are read off the tensors; the head counts cannot be (attention
    weights have the same shapes for any number of heads), so they are never returned.
    """
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise CheckpointError(f"no encoder weights (patch_embed.proj.weight, pos_embed) under '{prefix}'")
    read = ("patch_embed.proj.weight", "pos_embed", "decoder_embed.weight")  # the tensors the sizes come from
    shapes = {k: list(state[k].shape) for k in read if k in state}
    if len(shapes["patch_embed.proj.weight"]) != 3 or any(0 in shape for shape in shapes.values()):
        raise CheckpointError(f"encoder weights of shapes {shapes}: an architecture is read off weights with values")
    embed_dim, channels, patch_size = state["patch_embed.proj.weight"].shape
    pos = shapes["pos_embed"]
    if len(pos) == 3 and pos[1] < 2:
        raise CheckpointError(f"pos_embed holds no patch positions (shape {pos})")
    if len(pos) != 3 or pos[2] != embed_dim or channels != 1:
        raise CheckpointError(
            f"pos_embed {pos} and patch_embed.proj.weight {shapes['patch_embed.proj.weight']} do not describe one "
            "encoder (expected (1, patches + 1, D) and (D, 1, patch size))"
        )
    arch = {
        "patch_size": int(patch_size),
        "embed_dim": int(embed_dim),
        "depth": len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
        if "blocks.0.mlp.fc1.weight" in state
        else None,
        "num_voxels": (state["pos_embed"].shape[1] - 1) * int(patch_size),
    }
    if "decoder_embed.weight" in state:
        arch["decoder_embed_dim"] = int(state["decoder_embed.weight"].shape[0])
        arch["decoder_depth"] = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    return {k: v for k, v in arch.items() if v is not None}
