"""The datasets the stages train and evaluate on: fMRI alone (Stage A), fMRI paired with the image seen (Stages A2,
B, gen_eval), and those pairs with their images encoded once (`LatentViews`, Stage B).

The readers (`readers/`) build them; the stages set their transforms (`transforms.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from errors import UserError
from transforms import resize

HELD_OUT_SEED = 0  # draws the images a subset option keeps or leaves out: the same for every training seed


class FMRIDataset(Dataset):
    """fMRI samples only (Stage A1 pre-training): items {'fmri': (1, V) float32}."""

    def __init__(self, fmri: np.ndarray, transform: Callable | None = None):
        self.fmri = np.ascontiguousarray(fmri, dtype=np.float32)  # (N, 1, V)
        self.transform = transform

    @property
    def num_voxels(self) -> int:
        return self.fmri.shape[-1]

    def __len__(self) -> int:
        return len(self.fmri)

    def __getitem__(self, i: int) -> dict:
        fmri = torch.from_numpy(self.fmri[i])
        return {"fmri": self.transform(fmri) if self.transform else fmri}


class FMRIImageDataset(FMRIDataset):
    """fMRI paired with the image seen: items {'fmri', 'image', 'label', 'naive_label'}.

    Images are stored once (`images`, uint8 (M, H, W, 3)) and `image_index` (N,) says which one each fMRI row
    saw. `labels`, `naive_labels` and `class_names` are per image (-1 / '' where unknown, as for BOLD5000);
    `item_labels()` and `item_class_names()` give them per fMRI row.
    """

    def __init__(
        self,
        fmri: np.ndarray,
        images: np.ndarray,
        image_index: np.ndarray,
        labels: np.ndarray | None = None,
        naive_labels: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        fmri_transform: Callable | None = None,
        image_transform: Callable | None = None,
    ):
        super().__init__(fmri, fmri_transform)
        self.images = images
        self.image_index = np.asarray(image_index, dtype=np.int64)
        if len(self.image_index) != len(self.fmri):
            raise ValueError(f"{len(self.fmri)} fMRI rows but {len(self.image_index)} image indices")
        unknown = np.full(len(images), -1, dtype=np.int64)
        self.labels = unknown if labels is None else np.asarray(labels, dtype=np.int64)
        self.naive_labels = unknown if naive_labels is None else np.asarray(naive_labels, dtype=np.int64)
        self.class_names = list(class_names) if class_names is not None else [""] * len(images)
        self.image_transform = image_transform

    def item_labels(self) -> np.ndarray:
        """Class index of every fMRI row, (N,)."""
        return self.labels[self.image_index]

    def item_class_names(self) -> list[str]:
        """Class name of every fMRI row."""
        return np.asarray(self.class_names)[self.image_index].tolist()

    def resized_images(self, size: int) -> np.ndarray:
        """All images resized like the model input, uint8 (M, size, size, 3) (the ground truth of the metrics)."""
        if self.images.shape[1:3] == (size, size):
            return self.images
        batches = np.split(self.images, np.arange(64, len(self.images), 64))  # bounded float memory
        out = [resize(torch.from_numpy(b).permute(0, 3, 1, 2).float(), size) for b in batches]
        return torch.cat(out).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()

    def subset(self, rows: np.ndarray) -> FMRIImageDataset:
        """The same images and transforms with only the fMRI rows `rows`."""
        return FMRIImageDataset(
            self.fmri[rows],
            self.images,
            self.image_index[rows],
            self.labels,
            self.naive_labels,
            self.class_names,
            self.transform,
            self.image_transform,
        )

    def hold_out(self, num_images: int, seed: int) -> tuple[FMRIImageDataset, FMRIImageDataset]:
        """(rest, held out): every fMRI row of `num_images` images drawn at random (seeded) goes to the second set.

        Whole images, so that no held-out image was seen in training through another trial of it."""
        seen = np.unique(self.image_index)
        if not 0 < num_images < len(seen):
            raise ValueError(f"cannot hold out {num_images} of {len(seen)} images")
        held = np.random.default_rng(seed).choice(seen, num_images, replace=False)
        mask = np.isin(self.image_index, held)
        return self.subset(np.flatnonzero(~mask)), self.subset(np.flatnonzero(mask))

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        j = self.image_index[i]
        item["image"] = self.image_transform(self.images[j]) if self.image_transform else self.images[j]
        item["label"] = int(self.labels[j])
        item["naive_label"] = int(self.naive_labels[j])
        return item


def split_images(data: FMRIImageDataset, num_images: int, option: str) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """(the rest, the chosen): every fMRI row of the first `num_images` of the data's images in one fixed random order
    (drawn with `HELD_OUT_SEED` over all image indices, whatever the data hold) goes to the second set. So the
    chosen images do not depend on the training seed beyond what the data already lack, and a smaller number
    chooses a subset of a larger one. All the images: (an empty rest, `data`). A number the data cannot give is a
    UserError naming `option`."""
    shown = np.unique(data.image_index)
    if num_images > len(shown):
        raise UserError(f"{option} {num_images}: the data show only {len(shown)} images")
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(data.images))
    chosen = order[np.isin(order, shown)][:num_images]
    mask = np.isin(data.image_index, chosen)
    return data.subset(np.flatnonzero(~mask)), data.subset(np.flatnonzero(mask))


class LatentViews(torch.utils.data.Dataset):
    """Training pairs whose images come as first-stage encodings made once: `views` random crops of each image.

    The autoencoder never changes in Stage B, so encoding every batch's images at every step is repeated work;
    here each training image goes through the training image transform (its random crop) `views` times and is
    encoded once, and every item picks one of its views at random. Items: {'fmri', 'latent' (C, h, w)}.
    """

    def __init__(self, base, model, views: int, batch_size: int = 100):
        self.base, self.views = base, views
        device = next(model.parameters()).device
        with torch.no_grad():
            self.latents = torch.stack(
                [
                    torch.cat(
                        [
                            model.encode_first_stage(b.to(device)).cpu()
                            for b in torch.stack([base.image_transform(img) for img in base.images]).split(batch_size)
                        ]
                    )
                    for _ in range(views)
                ],
                1,
            )  # (M, views, C, h, w)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        fmri = torch.from_numpy(self.base.fmri[i])
        view = int(torch.randint(self.views, ()))
        return {
            "fmri": self.base.transform(fmri) if self.base.transform else fmri,
            "latent": self.latents[self.base.image_index[i], view],
        }
