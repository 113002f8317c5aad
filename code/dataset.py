"""Readers for the published HCP, GOD (Kamitani) and BOLD5000 layouts, and the transforms of the method.

Layouts and semantics: `data/README.md` (and `docs/formats.md` of the project). Every reader
returns torch datasets of dicts with `fmri` (1, V) float32; GOD/BOLD5000 also `image`, `label`
and `naive_label`. The whole set is processed with vectorised numpy at load time; per-item
work happens only in `__getitem__` (transforms).

Deliberate differences from the published readers (each reproducing the published numbers where
the fixtures pin them): HCP subjects are read in sorted order; BOLD5000 subjects with different
voxel counts are wrap-padded to the longest; with `include_nonavg_test` the test images line up
with the test fMRI (averaged trials first, then the 35 repeats of each image).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

HCP_ROIS = ("V1", "V2", "V3", "V4")
GOD_ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC")
BOLD5000_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
HCP_FILE = "HCP_visual_voxel.npz"
HCP_TR = 0.75  # seconds per HCP frame


class DataFormatError(ValueError):
    """A data file is missing or does not hold what the published layout specifies."""


def _missing(path: Path, what: str = "file") -> DataFormatError:
    return DataFormatError(
        f"{what} not found: {path}. See data/README.md for the expected layout and where to download it "
        "(or simulate one: python code/make_synthetic_data.py --out data/synthetic/tiny --size tiny)"
    )


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise _missing(path, "folder")
    return path


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise _missing(path)
    with np.load(path) as npz:
        absent = [k for k in keys if k not in npz.files]
        if absent:
            raise DataFormatError(f"{path}: missing key(s) {absent}; found {sorted(npz.files)}")
        return {k: npz[k] for k in keys}


def _check_fmri(x: np.ndarray, path: Path, key: str, ndim: int = 2) -> np.ndarray:
    if x.ndim != ndim or x.dtype.kind != "f":
        raise DataFormatError(f"{path}: key '{key}' must be a {ndim}-D float array, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataFormatError(f"{path}: key '{key}' holds {bad} NaN/inf value(s)")
    return x


# ----------------------------------------------------------------------------------------------------
# Array operations shared by all readers
# ----------------------------------------------------------------------------------------------------


def pad_to_patch_size(x: np.ndarray, patch_size: int) -> np.ndarray:
    """Wrap-pad the voxel (last) axis by `patch - V % patch`: a length already divisible gains a full patch."""
    return pad_to_length(x, x.shape[-1] + patch_size - x.shape[-1] % patch_size)


def pad_to_length(x: np.ndarray, length: int) -> np.ndarray:
    """Wrap-pad the voxel (last) axis up to `length`."""
    widths = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return np.pad(x, widths, mode="wrap")


def zscore(x: np.ndarray, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """Scalar z-score (one mean and std over the whole array), by default with the array's own statistics."""
    mean = np.mean(x) if mean is None else mean
    std = np.std(x) if std is None else std
    return ((x - mean) / std).astype(np.float32)


def pad_all_to_longest(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Wrap-pad every array's voxel axis to the longest among them."""
    longest = max(a.shape[-1] for a in arrays)
    return [pad_to_length(a, longest) for a in arrays]


def chunk_mean(v: np.ndarray, num_chunks: int) -> np.ndarray:
    """Average consecutive frames in `num_chunks` chunks, split like np.array_split: (T, V) -> (num_chunks, V)."""
    size, extra = divmod(len(v), num_chunks)
    lengths = np.full(num_chunks, size)
    lengths[:extra] += 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.add.reduceat(v, starts, axis=0) / lengths[:, None]


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


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

    Images are stored once (`images`, uint8 (M, H, W, 3)); `image_index` (N,) says which image each
    fMRI row saw. `labels`, `naive_labels`, `class_names` are per image (-1 / '' when unknown).
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

    def resized_images(self, size: int) -> np.ndarray:
        """All images resized to size x size, uint8 (M, size, size, 3) (ground truth for the metrics)."""
        if self.images.shape[1:3] == (size, size):
            return self.images
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2)
        x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return x.permute(0, 2, 3, 1).contiguous().numpy()

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        j = self.image_index[i]
        image = self.images[j]
        item["image"] = self.image_transform(image) if self.image_transform else image
        item["label"] = int(self.labels[j])
        item["naive_label"] = int(self.naive_labels[j])
        return item


# ----------------------------------------------------------------------------------------------------
# HCP (Stage A1)
# ----------------------------------------------------------------------------------------------------


def hcp_subject_samples(v: np.ndarray, patch_size: int, window_s: float = 8.0) -> np.ndarray:
    """One subject's (T, V) series -> (T // frames_per_window, V') window means, wrap-padded and z-scored."""
    samples = chunk_mean(v, len(v) // int(window_s / HCP_TR))
    return zscore(pad_to_patch_size(samples, patch_size))


def interpolate_augment(data: np.ndarray, aug_times: int, rng: np.random.Generator) -> np.ndarray:
    """Append (aug_times - 1) * N samples, each the midpoint of two randomly chosen samples."""
    if aug_times <= 1:
        return data
    n = len(data)
    a, b = rng.integers(0, n, size=(2, (aug_times - 1) * n))
    return np.concatenate([data, 0.5 * (data[a] + data[b])], axis=0).astype(np.float32)


def create_hcp_dataset(
    path: str | os.PathLike = "data/HCP/npz",
    roi: str = "VC",
    patch_size: int = 16,
    transform: Callable | None = None,
    aug_times: int = 1,
    num_sub_limit: int | None = None,
    include_kam: bool = False,
    kam_path: str | os.PathLike = "data/Kamitani/npz",
    include_hcp: bool = True,
    seed: int = 0,
) -> FMRIDataset:
    """HCP resting-state samples (N, 1, V) for pre-training, optionally with the GOD training fMRI appended."""
    if roi != "VC" and roi not in HCP_ROIS:
        raise ValueError(f"HCP roi must be 'VC' or one of {HCP_ROIS}, got {roi!r}")
    arrays = []
    if include_hcp:
        root = _require_dir(Path(path))
        files = [root / s / HCP_FILE for s in sorted(os.listdir(root)) if (root / s / HCP_FILE).is_file()]
        if not files:
            raise _missing(root / "<subject>" / HCP_FILE)
        for file in files[:num_sub_limit]:
            keys = HCP_ROIS if roi == "VC" else (roi,)
            npz = _load_npz(file, keys)
            v = np.concatenate([_check_fmri(npz[k], file, k) for k in keys], axis=-1)
            arrays.append(hcp_subject_samples(v, patch_size))
    if include_kam:
        subjects = sorted(p.stem for p in _require_dir(Path(kam_path)).glob("sbj_*.npz"))
        train, _ = create_god_dataset(kam_path, roi, patch_size, subjects=subjects)
        arrays.append(train.fmri[:, 0])
    if not arrays:
        raise ValueError("create_hcp_dataset: include_hcp and include_kam are both off")
    fmri = np.concatenate(pad_all_to_longest(arrays), axis=0)
    fmri = interpolate_augment(fmri, aug_times, np.random.default_rng(seed))
    return FMRIDataset(fmri[:, None, :], transform)


# ----------------------------------------------------------------------------------------------------
# GOD / Kamitani
# ----------------------------------------------------------------------------------------------------


def read_god_labels(path: Path, class_index: dict, naive: dict[int, int]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(class index, class name, order-of-first-appearance label) per row of a GOD label csv.

    `naive` maps WordNet numbers to their order of first appearance and is extended in place, so
    test labels continue the numbering of the training labels (as published).
    """
    if not path.is_file():
        raise _missing(path)
    wnid_to_class = {int(w[1:]): (int(c), v[-1]) for c, v in class_index.items() for w in v[:-1]}
    classes, names, naive_labels = [], [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip():
                continue
            try:
                wnid = int(row[0].split(".")[0])
            except ValueError:
                msg = f"{path}:{line}: expected a stimulus id like 1518878.005958, got {row[0]!r}"
                raise DataFormatError(msg) from None
            if wnid not in wnid_to_class:
                raise DataFormatError(f"{path}:{line}: WordNet id n{wnid:08d} is not in imagenet_class_index.json")
            naive.setdefault(wnid, len(naive))
            c, name = wnid_to_class[wnid]
            classes.append(c)
            names.append(name)
            naive_labels.append(naive[wnid])
    return np.array(classes, dtype=np.int64), names, np.array(naive_labels, dtype=np.int64)


def create_god_dataset(
    path: str | os.PathLike = "data/Kamitani/npz",
    roi: str = "VC",
    patch_size: int = 16,
    subjects: Sequence[str] = ("sbj_3",),
    fmri_transform: Callable | None = None,
    image_transform: Callable | None = None,
    include_nonavg_test: bool = False,
    test_norm: str = "published",
) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """GOD train and test sets of the given subjects (fMRI wrap-padded to the longest, then concatenated).

    `test_norm="published"` z-scores the test fMRI with the mean/std of the *normalised* training fMRI
    (about 0 and 1), i.e. keeps its scale, exactly as the published reader and checkpoints do;
    `"train"` uses the raw training statistics instead.
    """
    if roi not in GOD_ROIS:
        raise ValueError(f"GOD roi must be one of {GOD_ROIS}, got {roi!r}")
    if test_norm not in ("published", "train"):
        raise ValueError(f"test_norm must be 'published' or 'train', got {test_norm!r}")
    root = _require_dir(Path(path))
    class_file = root / "imagenet_class_index.json"
    if not class_file.is_file():
        raise _missing(class_file)
    class_index = json.loads(class_file.read_text())
    naive: dict[int, int] = {}
    train_cls, train_names, train_naive = read_god_labels(root / "imagenet_training_label.csv", class_index, naive)
    test_cls, test_names, test_naive = read_god_labels(root / "imagenet_testing_label.csv", class_index, naive)
    images = _load_npz(root / "images_256.npz", ("train_images", "test_images"))
    n_train_img, n_test_img = len(images["train_images"]), len(images["test_images"])
    for key, n_labels in (("train_images", len(train_cls)), ("test_images", len(test_cls))):
        if len(images[key]) != n_labels:
            raise DataFormatError(f"{root / 'images_256.npz'}: '{key}' has {len(images[key])} images "
                                  f"but its label csv has {n_labels} rows")

    train_fmri, test_fmri, train_idx, test_idx = [], [], [], []
    for sub in subjects:
        file = root / f"{sub}.npz"
        npz = _load_npz(file, ("arr_0", "arr_1", "arr_2", "arr_3", roi))
        mask = npz[roi]
        if mask.dtype != bool or mask.shape != (npz["arr_0"].shape[-1],):
            raise DataFormatError(f"{file}: ROI mask '{roi}' must be bool of shape ({npz['arr_0'].shape[-1]},), "
                                  f"got {mask.dtype} {mask.shape}")
        tr = _check_fmri(npz["arr_0"], file, "arr_0")[:, mask]
        avg = _check_fmri(npz["arr_2"], file, "arr_2")[:, mask]
        rep = _check_fmri(npz["arr_1"], file, "arr_1")[:, mask]
        order = npz["arr_3"].astype(np.int64)
        if len(order) != len(tr) or order.min() < 0 or order.max() >= n_train_img:
            raise DataFormatError(f"{file}: 'arr_3' must index the {n_train_img} training images, one per arr_0 row")
        if len(avg) != n_test_img or len(rep) % n_test_img:
            raise DataFormatError(f"{file}: 'arr_2' must hold one row per test image ({n_test_img}) and 'arr_1' "
                                  f"a whole number of repeats of them, got {len(avg)} and {len(rep)} rows")
        tr = pad_to_patch_size(tr, patch_size)
        tr_mean, tr_std = tr.mean(), tr.std()
        tr = zscore(tr)
        tt = np.concatenate([avg, rep]) if include_nonavg_test else avg
        tt = pad_to_patch_size(tt, patch_size)
        tt = zscore(tt, tr.mean(), tr.std()) if test_norm == "published" else zscore(tt, tr_mean, tr_std)
        train_fmri.append(tr)
        test_fmri.append(tt)
        train_idx.append(order)
        index = np.arange(n_test_img)
        # averaged trials pair with the test images in order; the repeats with each image repeated in turn
        test_idx.append(np.concatenate([index, np.repeat(index, len(rep) // n_test_img)]) if include_nonavg_test
                        else index)

    fmri = pad_all_to_longest(train_fmri + test_fmri)
    train = FMRIImageDataset(
        np.concatenate(fmri[: len(subjects)])[:, None], images["train_images"], np.concatenate(train_idx),
        train_cls, train_naive, train_names, fmri_transform, image_transform,
    )
    test = FMRIImageDataset(
        np.concatenate(fmri[len(subjects):])[:, None], images["test_images"], np.concatenate(test_idx),
        test_cls, test_naive, test_names, fmri_transform, image_transform,
    )
    return train, test


# ----------------------------------------------------------------------------------------------------
# BOLD5000
# ----------------------------------------------------------------------------------------------------


def read_bold5000_presentation(stimuli_root: Path, subject: str) -> list[str]:
    """Image names in presentation order (session folders sorted, then run files sorted; `rep_` stripped)."""
    root = _require_dir(stimuli_root / "Stimuli_Presentation_Lists" / subject)
    names = []
    for session in sorted(p for p in root.iterdir() if p.is_dir()):
        for run in sorted(session.glob("*.txt")):
            names += [n.strip() for n in run.read_text().split() if n.strip()]
    return [n.removeprefix("rep_") for n in names]


def _bold5000_subject_fmri(fmri_dir: Path, subject: str) -> np.ndarray:
    files = sorted(f for f in os.listdir(fmri_dir) if f.endswith(".npy") and f.startswith(subject + "_"))
    parts = []
    for roi in BOLD5000_ROIS:
        roi_files = [f for f in files if f.removesuffix(".npy").endswith(roi)]
        if not roi_files:
            raise _missing(fmri_dir / f"{subject}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_<LH|RH>{roi}.npy")
        parts += [_check_fmri(np.load(fmri_dir / f), fmri_dir / f, "array") for f in roi_files]
    lengths = {len(p) for p in parts}
    if len(lengths) != 1:
        raise DataFormatError(f"{fmri_dir}: {subject}'s ROI files have different trial counts {sorted(lengths)}")
    return np.concatenate(parts, axis=-1)


def create_bold5000_dataset(
    path: str | os.PathLike = "data/BOLD5000",
    patch_size: int = 16,
    subjects: Sequence[str] = ("CSI1",),
    fmri_transform: Callable | None = None,
    image_transform: Callable | None = None,
    include_nonavg_test: bool = False,
) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """BOLD5000 train/test: the repeated images form the test set (trials averaged per image)."""
    root = _require_dir(Path(path))
    fmri_dir = _require_dir(root / "BOLD5000_GLMsingle_ROI_betas" / "py")
    stim = root / "BOLD5000_Stimuli"
    dict_file = stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy"
    list_file = stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt"
    for f in (dict_file, list_file):
        if not f.is_file():
            raise _missing(f)
    img_dict = np.load(dict_file, allow_pickle=True).item()  # a pickled dict of name -> uint8 image (published)
    repeated = list_file.read_text().split()

    names = sorted(img_dict)
    name_to_image = {n: i for i, n in enumerate(names)}
    images = np.stack([img_dict[n] for n in names])
    train_fmri, test_fmri, train_idx, test_idx = [], [], [], []
    for sub in subjects:
        fmri = zscore(pad_to_patch_size(_bold5000_subject_fmri(fmri_dir, sub), patch_size))
        shown = read_bold5000_presentation(stim, sub)
        if len(shown) != len(fmri):
            raise DataFormatError(f"{fmri_dir}: {sub} has {len(fmri)} fMRI trials but its presentation lists "
                                  f"name {len(shown)} images")
        absent = sorted(set(shown) - set(name_to_image))
        if absent:
            raise DataFormatError(f"{dict_file}: no image for {absent[:3]}{'...' if len(absent) > 3 else ''}")
        shown_idx = np.array([name_to_image[n] for n in shown])
        trials = [np.flatnonzero(np.asarray(shown) == n) for n in repeated]
        trials = [t for t in trials if len(t)]  # some subjects (CSI4) lack some repeated images
        avg = np.stack([fmri[t].mean(axis=0) for t in trials])
        is_test = np.zeros(len(fmri), dtype=bool)
        flat = np.concatenate(trials)
        is_test[flat] = True
        first = shown_idx[[t[0] for t in trials]]
        if include_nonavg_test:
            test_fmri.append(np.concatenate([avg, fmri[flat]]))
            test_idx.append(np.concatenate([first, shown_idx[flat]]))
        else:
            test_fmri.append(avg)
            test_idx.append(first)
        train_fmri.append(fmri[~is_test])
        train_idx.append(shown_idx[~is_test])

    fmri = pad_all_to_longest(train_fmri + test_fmri)
    n = len(subjects)
    train = FMRIImageDataset(np.concatenate(fmri[:n])[:, None], images, np.concatenate(train_idx),
                             fmri_transform=fmri_transform, image_transform=image_transform)
    test = FMRIImageDataset(np.concatenate(fmri[n:])[:, None], images, np.concatenate(test_idx),
                            fmri_transform=fmri_transform, image_transform=image_transform)
    return train, test


# ----------------------------------------------------------------------------------------------------
# Transforms (method.md) and the per-stage entry point
# ----------------------------------------------------------------------------------------------------


class ToModelImage:
    """uint8 (H, W, 3) -> float (3, size, size) in [-1, 1]."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
        if x.shape[1:] != (self.size, self.size):
            x = TF.resize(x, [self.size, self.size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return x.float() / 127.5 - 1.0


class RandomCropResize:
    """With probability p, a random square crop of side `size - crop_ratio * size`, resized back to `size`."""

    def __init__(self, size: int, crop_ratio: float = 0.2, p: float = 0.5):
        self.size, self.crop, self.p = size, int(size - crop_ratio * size), p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (3, size, size)
        if torch.rand(()) >= self.p:
            return x
        top, left = (int(v) for v in torch.randint(0, self.size - self.crop + 1, (2,)))
        x = x[:, top : top + self.crop, left : left + self.crop]
        return TF.resize(x, [self.size, self.size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)


class Compose:
    """Apply callables in turn."""

    def __init__(self, *fns: Callable):
        self.fns = fns

    def __call__(self, x):
        for fn in self.fns:
            x = fn(x)
        return x


class RandomVoxelDropout:
    """Zero each voxel with probability `rate` (rate 0 = the published, no-op "sparse" augmentation)."""

    def __init__(self, rate: float = 0.0):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"voxel dropout rate must be in [0, 1), got {rate}")
        self.rate = rate

    def __call__(self, fmri: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0:
            return fmri
        return fmri * (torch.rand_like(fmri) >= self.rate)


def load_target_dataset(cfg, img_size: int | None = None, train_augment: bool = False, include_nonavg_test=None):
    """GOD or BOLD5000 train/test sets as a stage config (A2, B, a published B config) describes them.

    Images become (3, img_size, img_size) in [-1, 1]; with `train_augment`, training images get the
    random crop and training fMRI the voxel dropout of `cfg.fmri_dropout`.
    """
    img_size = img_size or getattr(cfg, "img_size", 256)
    to_model = ToModelImage(img_size)
    train_image = Compose(to_model, RandomCropResize(img_size, cfg.crop_ratio)) if train_augment else to_model
    train_fmri = RandomVoxelDropout(getattr(cfg, "fmri_dropout", 0.0)) if train_augment else None
    nonavg = getattr(cfg, "include_nonavg_test", False) if include_nonavg_test is None else include_nonavg_test
    if cfg.dataset == "GOD":
        train, test = create_god_dataset(cfg.kam_path, cfg.roi, cfg.patch_size, cfg.kam_subs,
                                         include_nonavg_test=nonavg)
    elif cfg.dataset == "BOLD5000":
        train, test = create_bold5000_dataset(cfg.bold5000_path, cfg.patch_size, cfg.bold5000_subs,
                                              include_nonavg_test=nonavg)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}: expected 'GOD' or 'BOLD5000'")
    train.image_transform, train.transform = train_image, train_fmri
    test.image_transform = to_model
    return train, test
