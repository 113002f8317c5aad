"""A small image classifier over the simulated categories: the demo's stand-in for the ImageNet ViT-H/14.

`eval_metrics.evaluate(..., classifier=load_classifier(path, device))` uses it for the n-way metric: the
loader returns the module (logits over the simulated classes, `num_classes` set) and its preprocessing,
which maps uint8 (B, 3, H, W) images of any size to the classifier's input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU, twice, then a 2x2 max-pool: (N, c_in, H, W) -> (N, c_out, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DemoClassifier(nn.Module):
    """Four conv blocks (widths w, 2w, 4w, 4w) -> global average pool -> linear: (N, 3, S, S) in [-1, 1] -> logits."""

    def __init__(self, num_classes: int, width: int = 32, img_size: int = 64):
        super().__init__()
        self.num_classes, self.width, self.img_size = num_classes, width, img_size
        widths = (width, 2 * width, 4 * width, 4 * width)
        self.features = nn.Sequential(*(_block(a, b) for a, b in zip((3, *widths[:-1]), widths, strict=True)))
        self.head = nn.Linear(widths[-1], num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """He init for the convolutions, a small head (logits start near uniform)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> logits (N, num_classes)."""
        h = self.features(x)  # (N, 4w, S/16, S/16)
        return self.head(h.mean(dim=(2, 3)))  # (N, num_classes)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "width": self.width, "img_size": self.img_size}


def to_model_input(images: torch.Tensor, img_size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, img_size, img_size) in [-1, 1] (antialiased bilinear resize)."""
    x = images.float()
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
    return x / 127.5 - 1.0


def save_classifier(model: DemoClassifier, path: str | Path, **extra) -> Path:
    """Write `{state_dict, config, **extra}` atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint({"state_dict": state, "config": model.config(), **extra}, path)


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[DemoClassifier, Callable[[torch.Tensor], torch.Tensor]]:
    """The classifier of `path` in eval mode on `device`, and its preprocessing (uint8 (B, 3, H, W) -> input)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a demo classifier checkpoint (expected keys 'state_dict' and 'config')")
    model = DemoClassifier(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    img_size = model.img_size

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, img_size)

    return model.to(device).eval(), preprocess
