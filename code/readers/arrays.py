"""The array operations the readers share: wrap-padding the voxel axis, scalar z-scoring, window and group means,
interpolation augmentation, and the train/test sets built from per-subject arrays.

Every array is wrap-padded on the voxel axis by `patch - V % patch` and z-scored with scalar statistics; several
subjects are wrap-padded to the longest. All of it is vectorised numpy at load time.
"""

from __future__ import annotations

import numpy as np

from dataset import FMRIImageDataset
from readers.files import DataFormatError


def pad_to_length(x: np.ndarray, length: int) -> np.ndarray:
    """Wrap-pad the voxel (last) axis up to `length`: (..., V) -> (..., length); `x` itself when it has that length."""
    if x.shape[-1] == length:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])], mode="wrap")


def pad_to_patch_size(x: np.ndarray, patch_size: int, source: object = "fMRI") -> np.ndarray:
    """Wrap-pad the voxel axis by `patch - V % patch`, so a length already divisible gains a full patch (published).

    Data with fewer voxels than one patch would be repeated many times into it: DataFormatError naming `source`.
    """
    if x.shape[-1] < patch_size:
        raise DataFormatError(
            f"{source}: {x.shape[-1]} voxels, fewer than one patch of {patch_size}; use a larger "
            "ROI or a smaller patch_size"
        )
    return pad_to_length(x, x.shape[-1] + patch_size - x.shape[-1] % patch_size)


def fit_voxels(fmri: np.ndarray, num_voxels: int) -> np.ndarray:
    """Wrap-pad or cut the voxel (last) axis to `num_voxels`, a pre-trained model's count: (..., V) -> (..., n)."""
    return pad_to_length(fmri, num_voxels) if fmri.shape[-1] < num_voxels else fmri[..., :num_voxels]


def pad_all_to_longest(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Wrap-pad every array's voxel axis to the longest among them."""
    longest = max(a.shape[-1] for a in arrays)
    return [pad_to_length(a, longest) for a in arrays]


def zscore(
    x: np.ndarray, mean: float | None = None, std: float | None = None, source: object = "fMRI", inplace: bool = False
) -> np.ndarray:
    """Scalar z-score (one mean and one std for the whole array), by default with the array's own statistics;
    `inplace` overwrites a float32 `x` (the same numbers, no second copy of a large array).

    Constant data (std 0) cannot be normalised: DataFormatError naming `source`.
    """
    wide = np.float64 if x.dtype.itemsize < 4 else None  # float16 sums overflow; float32 as published
    mean = np.mean(x, dtype=wide) if mean is None else mean
    std = np.std(x, dtype=wide) if std is None else std
    if not (std > 0 and np.isfinite(std)):
        raise DataFormatError(
            f"{source}: the fMRI is constant (standard deviation 0), so it holds no signal to normalise or learn from"
        )
    if inplace and x.dtype == np.float32:
        x -= mean
        x /= std
        return x
    out = x - mean
    out /= std  # in place: one temporary array, not two
    return out.astype(np.float32, copy=False)


def chunk_mean(v: np.ndarray, num_chunks: int) -> np.ndarray:
    """Means of `num_chunks` consecutive chunks, split as np.array_split does: (T, V) -> (num_chunks, V)."""
    size, extra = divmod(len(v), num_chunks)  # the first `extra` chunks have one frame more
    cut = extra * (size + 1)
    longer = v[:cut].reshape(extra, size + 1, v.shape[1]).mean(1)
    return np.concatenate([longer, v[cut:].reshape(num_chunks - extra, size, v.shape[1]).mean(1)])


def group_mean(x: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means of the row groups x[start : start + count], bit for bit as np.mean: (n, V) -> (n_groups, V)."""
    out = np.empty((len(starts), x.shape[1]), x.dtype)
    for k in np.unique(counts):  # one vectorised mean per group size
        out[counts == k] = x[starts[counts == k, None] + np.arange(k)].mean(1)
    return out


def interpolate_augment(data: np.ndarray, aug_times: int, rng: np.random.Generator) -> np.ndarray:
    """Append (aug_times - 1) * N midpoints of two randomly chosen samples: (N, V) -> (aug_times * N, V)."""
    if aug_times <= 1:
        return data
    a, b = rng.integers(0, len(data), size=(2, (aug_times - 1) * len(data)))
    return np.concatenate([data, 0.5 * (data[a] + data[b])]).astype(np.float32)


def make_sets(train: list, test: list, views: list, **transforms) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """Train and test sets from per-subject (fMRI, image index) pairs, all wrap-padded to the longest."""
    fmri = pad_all_to_longest([f for f, _ in train + test])
    sets = []
    for part, arrays, (images, labels) in zip(
        (train, test), (fmri[: len(train)], fmri[len(train) :]), views, strict=True
    ):
        index = np.concatenate([i for _, i in part])
        fmri_part = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # one subject: no copy
        sets.append(FMRIImageDataset(fmri_part[:, None], images, index, *labels, **transforms))
    return sets[0], sets[1]
