"""The masked autoencoder's architecture: its fields and the one check that they fit together.

The fields are Stage A1's model flags; every Stage A checkpoint stores them in its config, and later stages
rebuild the encoder from them (`checkpoint.read_architecture`). `width_problem` is the only place that says which
widths the attention heads and the sin-cos positions can be built with: the config, the model and the checkpoint
reader all ask it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from config_engine import arg, check

WIDTHS = (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads"))  # (width, its attention heads)


def width_problem(arch: Mapping) -> str | None:
    """Why the widths `arch` holds cannot be built, or None: each must be divisible by its number of heads (where
    `arch` gives it) and even (the sin-cos position embedding)."""
    for width, heads in WIDTHS:
        if width not in arch:
            continue
        w = arch[width]
        if heads in arch and not (arch[heads] > 0 and w % arch[heads] == 0):
            return f"{width} ({w}) must be divisible by {heads} ({arch[heads]})"
        if w % 2:
            return f"{width} ({w}) must be even (sin-cos position embedding)"
    return None


@dataclass
class MAEArchitecture:
    """The masked-autoencoder architecture; later stages read it back from the Stage A checkpoint."""

    patch_size: int = arg(16, "voxels per token (the patch embedding's kernel and stride)", "model")
    embed_dim: int = arg(1024, "encoder width D (the paper's 'sparse coding' large embedding)", "model")
    depth: int = arg(24, "encoder blocks", "model")
    num_heads: int = arg(16, "encoder attention heads (must divide embed_dim)", "model")
    decoder_embed_dim: int = arg(512, "decoder width", "model")
    decoder_num_heads: int = arg(16, "decoder attention heads (must divide decoder_embed_dim)", "model")
    decoder_depth: int = arg(8, "decoder blocks (8 in every published checkpoint)", "model")
    mlp_ratio: float = arg(1.0, "MLP width / D in every block", "model")

    def _validate_architecture(self) -> None:
        check(self.patch_size > 0, f"patch_size must be positive, got {self.patch_size}")
        problem = width_problem({name: getattr(self, name) for name in ARCH_FIELDS})
        check(problem is None, str(problem))
        check(
            min(self.depth, self.decoder_depth) > 0 and self.mlp_ratio > 0,
            "depth, decoder_depth and mlp_ratio must be positive",
        )


ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(MAEArchitecture))
