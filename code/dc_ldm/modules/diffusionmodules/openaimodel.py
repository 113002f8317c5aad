"""The LDM denoising UNet with MinD-Vis's double conditioning.

The conditioning context (N, T, context_dim), T = `context_tokens` (77 as published), enters every
SpatialTransformer through cross-attention and, with `use_time_cond`, is also mapped by `time_embed_condtion`
(name as published, typo included, so checkpoints load) to one vector added to the timestep embedding.
Only the paths MinD-Vis takes are built: 2-D, spatial transformers, plain ResBlocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dc_ldm.modules.attention import BasicTransformerBlock, FixedContext, SpatialTransformer
from dc_ldm.modules.diffusionmodules.util import GroupNorm32, checkpoint, timestep_embedding, zero_module

NUM_CONTEXT_TOKENS = 77  # the published context length, which the published time_embed_condtion's Conv1d is sized for


class ResBlock(nn.Module):
    """Two 3x3 convs with the timestep embedding added in between; 1x1 conv skip when the width changes."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W), emb (N, E) -> (N, C_out, H, W)."""
        h = self.in_layers(x)  # (N, C_out, H, W)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """Denoiser eps(x_t, t, context); keyword arguments as in the published LDM config.yaml files.

    `image_size`, `num_heads_upsample`, `use_new_attention_order`, `legacy` and `cond_scale` are accepted for
    config compatibility and change nothing on this path (with spatial transformers the published head arithmetic
    is `heads = num_heads` or `ch // num_head_channels`, `dim_head = ch // heads`, legacy or not; `cond_scale`
    was stored but never used). Options MinD-Vis never sets raise an error.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: list[int],
        dropout: float = 0.0,
        channel_mult: list[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        cond_scale: float = 1.0,
        global_pool: bool = False,
        use_time_cond: bool = False,
        context_tokens: int | None = None,
    ):
        """`context_tokens`: the length of the context (what sizes `time_embed_condtion`); a published config gives
        it as `global_pool` (True: one token, else 77), read here and nowhere else."""
        super().__init__()
        if context_tokens is None:
            context_tokens = 1 if global_pool else NUM_CONTEXT_TOKENS
        elif global_pool and context_tokens != 1:
            raise ValueError(f"UNetModel: global_pool means one context token, got context_tokens={context_tokens}")
        if context_tokens < 1:
            raise ValueError(f"UNetModel: context_tokens must be >= 1, got {context_tokens}")
        unsupported = {
            "conv_resample=False": not conv_resample,
            f"dims={dims}": dims != 2,
            "num_classes": num_classes is not None,
            "use_fp16": use_fp16,
            "use_scale_shift_norm": use_scale_shift_norm,
            "resblock_updown": resblock_updown,
            "use_spatial_transformer=False": not use_spatial_transformer,
            "n_embed": n_embed is not None,
        }
        if any(unsupported.values()):
            raise NotImplementedError(
                f"UNetModel: options not used by MinD-Vis: {[k for k, v in unsupported.items() if v]}"
            )
        if context_dim is None:
            raise ValueError("UNetModel: use_spatial_transformer needs context_dim (the conditioning width)")
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError("UNetModel: set exactly one of num_heads and num_head_channels")
        self.model_channels = model_channels
        self.use_checkpoint = use_checkpoint
        self.use_time_cond = use_time_cond
        time_dim = 4 * model_channels

        def transformer(ch: int) -> SpatialTransformer:
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return SpatialTransformer(ch, heads, ch // heads, depth=transformer_depth, context_dim=context_dim)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if use_time_cond:
            self.time_embed_condtion = (
                nn.Linear(context_dim, time_dim)  # one context token already
                if context_tokens == 1
                else nn.Sequential(
                    nn.Conv1d(context_tokens, context_tokens // 2, 1),
                    nn.Conv1d(context_tokens // 2, 1, 1),
                    nn.Linear(context_dim, time_dim),
                )
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        skip_chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, time_dim, dropout, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_dim, dropout), transformer(ch), ResBlock(ch, time_dim, dropout)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), time_dim, dropout, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(32, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )
        for i, attn in enumerate(self._cross_attentions()):
            attn.context_index = i

    def fix_context(self, context: torch.Tensor) -> FixedContext:
        """Context (N, M, context_dim) -> the same context with its keys/values and time-embedding term computed,
        for many calls with the same conditioning (a sampler's steps); `forward` takes it in place of the tensor."""
        time_cond = self.time_embed_condtion(context).squeeze(1) if self.use_time_cond else None  # (N, 4C)
        kv = [attn.keys_values(context) for attn in self._cross_attentions()]
        return FixedContext(context, kv, time_cond)

    def conditioning_modules(self) -> list[nn.Module]:
        """What Stage B trains of the UNet: each transformer block's cross-attention (`attn2`) and the norm in front
        of it (`norm2`), and the projection of the context into the timestep embedding (`time_embed_condtion`)."""
        blocks = [m for m in self.modules() if isinstance(m, BasicTransformerBlock)]
        time_cond = [self.time_embed_condtion] if self.use_time_cond else []
        return [layer for b in blocks for layer in (b.norm2, b.attn2)] + time_cond

    def _cross_attentions(self) -> list[nn.Module]:
        return [m.attn2 for m in self.modules() if isinstance(m, BasicTransformerBlock)]

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | FixedContext | None = None
    ) -> torch.Tensor:
        """x (N, C_in, H, W), timesteps (N,), context (N, T, context_dim), or the same fixed
        (`fix_context`) -> (N, C_out, H, W)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))  # (N, 4C)
        if self.use_time_cond:
            if context is None:
                raise ValueError("UNetModel with use_time_cond needs a context")
            if isinstance(context, FixedContext):
                emb = emb + context.time_cond
            else:
                emb = emb + self.time_embed_condtion(context).squeeze(1)  # (N, 1, 4C) -> (N, 4C)
        skips = []
        h = x
        for block in self.input_blocks:
            h = checkpoint(block, (h, emb, context), self.use_checkpoint)
            skips.append(h)
        h = checkpoint(self.middle_block, (h, emb, context), self.use_checkpoint)
        for block in self.output_blocks:
            h = checkpoint(block, (torch.cat([h, skips.pop()], dim=1), emb, context), self.use_checkpoint)
        return self.out(h)  # (N, C_out, H, W)
