"""The n-way classifier of the simulated world: a small CNN over its categories, standing in for ViT-H/14.

It is written as a generic classifier file (`classifier_file`: its layers as data, no code), which Stage B and
gen_eval read with `--classifier`, exactly as they would read a user's own classifier.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from classifier_file import build_sequential, save_classifier_file
from engine import Schedule, fused_adam
from runtime import progress
from transforms import to_model_range

MEAN = STD = (0.5, 0.5, 0.5)  # x / 255 -> [-1, 1], the range of the LDM's images


def classifier_layers(num_classes: int, width: int = 32) -> list:
    """Four blocks (conv3x3-BN-ReLU twice, 2x2 max-pool) of widths w, 2w, 4w, 4w, global average pool, linear."""
    widths = (width, 2 * width, 4 * width, 4 * width)
    layers = []
    for c_in, c_out in zip((3, *widths[:-1]), widths, strict=True):
        for a, b in ((c_in, c_out), (c_out, c_out)):
            conv = {"in_channels": a, "out_channels": b, "kernel_size": 3, "padding": 1, "bias": False}
            layers += [["Conv2d", conv], ["BatchNorm2d", {"num_features": b}], ["ReLU", {"inplace": True}]]
        layers.append(["MaxPool2d", {"kernel_size": 2}])
    return layers + [
        ["AdaptiveAvgPool2d", {"output_size": 1}],
        ["Flatten", {}],
        ["Linear", {"in_features": widths[-1], "out_features": num_classes}],
    ]


def build_classifier(num_classes: int, width: int = 32) -> tuple[nn.Sequential, list]:
    """The classifier (He-initialised convolutions, a small head so the logits start near uniform) and its layers."""
    layers = classifier_layers(num_classes, width)
    model = build_sequential(layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    nn.init.normal_(model[-1].weight, std=0.01)
    nn.init.zeros_(model[-1].bias)
    return model, layers


def train_classifier(
    images: torch.Tensor,
    degraded: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int,
    batch: int,
    lr: float,
    width: int,
    device: torch.device,
) -> nn.Sequential:
    """Cross-entropy on clean and degraded pictures, uint8 (N, 3, S, S): shifts and pixel noise on all, Gaussian
    blur on half of each batch, and a third of the images replaced by `degraded` (the same images after a VQ
    round trip).

    ViT-H/14, which this classifier stands in for, recognises an object in a blurry, noisy or slightly off-colour
    picture; a small CNN trained on clean renders alone does not (it puts VQ round trips of the stimuli at
    chance), so it would judge every decoded image by its compression artefacts, not its content.
    """
    img_size = images.shape[-1]
    model, _ = build_classifier(num_classes, width)
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, fused=fused_adam(device))
    schedule = Schedule(lr, 0.1 * lr, warmup_epochs=10, num_epoch=steps)  # in steps
    pad = img_size // 16
    for step in progress(range(steps), steps, "classifier"):
        idx = torch.randint(len(images), (batch,))
        swap = torch.rand(len(idx)) < 1 / 3
        x = to_model_range(torch.where(swap[:, None, None, None], degraded[idx], images[idx]).to(device))
        dx, dy = torch.randint(-pad, pad + 1, (2,)).tolist()
        x = torch.roll(F.pad(x, (pad,) * 4, mode="replicate"), (dy, dx), dims=(2, 3))[..., pad:-pad, pad:-pad]
        half = len(x) // 2
        sigma = float(torch.empty(()).uniform_(0.3, 1.5)) * img_size / 32
        x[:half] = gaussian_blur(x[:half], kernel_size=2 * math.ceil(2 * sigma) + 1, sigma=sigma)
        x = x + 0.1 * torch.rand(len(x), 1, 1, 1, device=device) * torch.randn_like(x)
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), labels[idx].to(device))
        for group in opt.param_groups:
            group["lr"] = schedule(step + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def save_classifier(model: nn.Sequential, width: int, img_size: int, class_names: list[str], path: Path) -> Path:
    """The classifier as a generic classifier file (input: the image side it was trained at)."""
    layers = classifier_layers(len(class_names), width)
    return save_classifier_file(path, layers, model, img_size, MEAN, STD, class_names)
