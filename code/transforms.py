"""The image and fMRI transforms of the method (docs/method.md, Stage B), and the two image ranges.

Images on disk are uint8 (H, W, 3); the autoencoders and classifiers take float (3, H, W) in [-1, 1]
(`to_model_range`) and decoded images come back to uint8 (`to_uint8_images`). Model code may import this module:
it depends on torch and numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize (torchvision's default, as published): (..., 3, H, W) -> (..., 3, size, size)."""
    batched = x if x.ndim == 4 else x[None]
    out = F.interpolate(batched, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out if x.ndim == 4 else out[0]


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) images -> float in [-1, 1], the range the autoencoders and classifiers take."""
    return images.float() / 127.5 - 1.0


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Model-range images (B, 3, H, W) in about [-1, 1] -> uint8 (B, H, W, 3) on the host (clamped, rounded)."""
    x = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ImageToTensor:
    """uint8 (H, W, 3) image -> float (3, H, W) in [-1, 1]."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_model_range(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


class ResizeImage:
    """float (3, H, W) -> (3, size, size)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-2:] == (self.size, self.size) else resize(x, self.size)


class RandomCropResize:
    """With probability p, a random square crop of side `s - int(crop_ratio * s)`, resized back to s: (3, s, s)."""

    def __init__(self, crop_ratio: float = 0.2, p: float = 0.5):
        self.crop_ratio, self.p = crop_ratio, p

    def crop_size(self, size: int) -> int:
        return size - int(self.crop_ratio * size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        size = x.shape[-1]
        crop = self.crop_size(size)
        top, left = torch.randint(0, size - crop + 1, (2,)).tolist()
        return resize(x[:, top : top + crop, left : left + crop], size)


class RandomVoxelDropout:
    """Zero each voxel with probability `rate`; rate 0 is the published (no-op) "sparse" augmentation, defect #2."""

    def __init__(self, rate: float = 0.0):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"voxel dropout rate must be in [0, 1), got {rate}")
        self.rate = rate

    def __call__(self, fmri: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0:
            return fmri
        return fmri * (torch.rand_like(fmri) >= self.rate)


class Compose:
    """Apply callables in turn (picklable, for DataLoader workers)."""

    def __init__(self, *fns: Callable):
        self.fns = fns

    def __call__(self, x):
        for fn in self.fns:
            x = fn(x)
        return x


def model_image_transform(img_size: int, crop_ratio: float = 0.0) -> Compose:
    """uint8 (H, W, 3) -> (3, img_size, img_size) in [-1, 1], with the random crop when `crop_ratio` > 0."""
    steps = [ImageToTensor(), ResizeImage(img_size)] + ([RandomCropResize(crop_ratio)] if crop_ratio > 0 else [])
    return Compose(*steps)
