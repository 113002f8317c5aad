"""Readers for the published HCP, GOD (Kamitani) and BOLD5000 data, and the image/fMRI transforms of the method.

The on-disk layouts are those of the MinD-Vis data release (`data/README.md` shows them and says where to
get them or how to simulate them; `docs/formats.md` is the specification):

    HCP/npz/<subject>/HCP_visual_voxel.npz          V1..V4 (T, n) resting-state series -> 8 s window means
    Kamitani/npz/sbj_<k>.npz, images_256.npz, ...   arr_0 train trials, arr_1 / arr_2 single / averaged test
                                                    trials, arr_3 train trial -> image, bool ROI masks
    BOLD5000/BOLD5000_GLMsingle_ROI_betas/py/*.npy  per hemisphere and ROI (n_trials, n); stimuli and
    BOLD5000/BOLD5000_Stimuli/...                   presentation lists; the repeated images are the test set

Every array is wrap-padded on the voxel axis by `patch - V % patch` and z-scored with scalar statistics;
several subjects are wrap-padded to the longest. Readers return datasets of dicts with `fmri` (1, V)
float32, and for GOD/BOLD5000 the `image` seen, `label` and `naive_label`. All of it is vectorised numpy at
load time; only the transforms run per item. Bad input raises `DataFormatError` naming the file and key.

Deliberate differences from the published readers (`docs/defects.md`): HCP subjects are read
in sorted order (#10); BOLD5000 subjects with different voxel counts are padded to the longest (#11); with
`include_nonavg_test` every test fMRI row has its own image (#12); `RandomVoxelDropout` really drops (#2).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from errors import UserError
from safe_pickle import load_pickled_npy

if TYPE_CHECKING:
    from config import TargetData

log = logging.getLogger("mindvis.dataset")

HCP_ROIS = ("V1", "V2", "V3", "V4")  # ROI "VC" = all four, concatenated in this order
GOD_ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC")
BOLD5000_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
HCP_FILE = "HCP_visual_voxel.npz"
HCP_TR = 0.75  # seconds per HCP frame
HCP_WINDOW = 8.0  # seconds averaged into one pre-training sample


class DataFormatError(UserError, ValueError):
    """A data file is missing or does not hold what the published layout specifies."""


SUBJECT_NAME = re.compile(r"[A-Za-z0-9_-]+")  # subject names become file and folder names


def check_subjects(subjects: Sequence[str], source: object) -> list[str]:
    """`subjects` as a list of plain names (letters, digits, `_`, `-`); DataFormatError naming `source` otherwise."""
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    for name in subjects:
        if not (isinstance(name, str) and SUBJECT_NAME.fullmatch(name)):
            raise DataFormatError(f"{source}: subject {name!r} is not a subject name (letters, digits, '_' and '-' "
                                  "only: names become file paths)")  # fmt: skip
    return subjects


def _missing(path: Path, what: str = "file") -> DataFormatError:
    return DataFormatError(
        f"{what} not found: {path}. See data/README.md for the expected layout and where to download it "
        "(or simulate one: python code/make_synthetic_data.py --out data/synthetic/tiny --size tiny)"
    )


def _require(path: Path, folder: bool = False) -> Path:
    if not (path.is_dir() if folder else path.is_file()):
        raise _missing(path, "folder" if folder else "file")
    return path


SIMULATION_MARKER = "simulation.json"  # written by make_synthetic_data.py beside HCP/, Kamitani/, BOLD5000/


def _data_root(path: Path) -> Path:
    """A data folder that exists and is not part of a simulation left incomplete (its marker says so)."""
    root = _require(path, folder=True)
    for folder in [root, *root.resolve().parents][:4]:  # e.g. <sim>/Kamitani/npz -> <sim>/simulation.json
        marker = folder / SIMULATION_MARKER
        if marker.is_file():
            try:
                complete = json.loads(marker.read_text()).get("complete", False)
            except (json.JSONDecodeError, AttributeError):
                complete = False
            if not complete:
                raise DataFormatError(
                    f"{marker}: the simulated data set is incomplete (interrupted?); simulate it again with "
                    f"python code/make_synthetic_data.py --out {folder} --overwrite"
                )
            break
    return root


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file; a missing, truncated or foreign file is one error naming it."""
    _require(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataFormatError(f"{path}: expected an .npz archive (numpy.savez), got a single array")
            absent = [k for k in keys if k not in npz.files]
            if absent:
                raise DataFormatError(f"{path}: missing key(s) {absent}; found {sorted(npz.files)}")
            return {k: npz[k] for k in keys}
    except DataFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, garbage, object arrays
        raise DataFormatError(f"{path}: not a readable .npz archive of arrays (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None  # fmt: skip


def _check_fmri(x: np.ndarray, path: Path, key: str | None = None, rows: int | None = None) -> np.ndarray:
    where = f"{path}: key '{key}'" if key else f"{path}:"
    if x.ndim != 2 or x.dtype.kind != "f" or (rows is not None and len(x) != rows):
        want = f"({rows}, n_voxels)" if rows is not None else "(n, n_voxels)"
        raise DataFormatError(f"{where} must be a float array {want}, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise DataFormatError(f"{where} holds {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
    return x


def _check_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataFormatError(f"{path}: key '{key}' must be uint8 (n, H, W, 3), got {x.dtype} {x.shape}")
    return x


# ---- Array operations shared by the readers -------------------------------------------------------------------------


def pad_to_length(x: np.ndarray, length: int) -> np.ndarray:
    """Wrap-pad the voxel (last) axis up to `length`: (..., V) -> (..., length)."""
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])], mode="wrap")


def pad_to_patch_size(x: np.ndarray, patch_size: int, source: object = "fMRI") -> np.ndarray:
    """Wrap-pad the voxel axis by `patch - V % patch`, so a length already divisible gains a full patch (published).

    Data with fewer voxels than one patch would be repeated many times into it: DataFormatError naming `source`.
    """
    if x.shape[-1] < patch_size:
        raise DataFormatError(f"{source}: {x.shape[-1]} voxels, fewer than one patch of {patch_size}; use a larger "
                              "ROI or a smaller patch_size")  # fmt: skip
    return pad_to_length(x, x.shape[-1] + patch_size - x.shape[-1] % patch_size)


def fit_voxels(fmri: np.ndarray, num_voxels: int) -> np.ndarray:
    """Wrap-pad or cut the voxel (last) axis to `num_voxels`, a pre-trained model's count: (..., V) -> (..., n)."""
    return pad_to_length(fmri, num_voxels) if fmri.shape[-1] < num_voxels else fmri[..., :num_voxels]


def pad_all_to_longest(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Wrap-pad every array's voxel axis to the longest among them."""
    longest = max(a.shape[-1] for a in arrays)
    return [pad_to_length(a, longest) for a in arrays]


def zscore(x: np.ndarray, mean: float | None = None, std: float | None = None, source: object = "fMRI") -> np.ndarray:
    """Scalar z-score (one mean and one std for the whole array), by default with the array's own statistics.

    Constant data (std 0) cannot be normalised: DataFormatError naming `source`.
    """
    mean = np.mean(x) if mean is None else mean
    std = np.std(x) if std is None else std
    if not std > 0:
        raise DataFormatError(f"{source}: the fMRI is constant (standard deviation 0), so it holds no signal to "
                              "normalise or learn from")  # fmt: skip
    return ((x - mean) / std).astype(np.float32)


def chunk_mean(v: np.ndarray, num_chunks: int) -> np.ndarray:
    """Means of `num_chunks` consecutive chunks, split as np.array_split does: (T, V) -> (num_chunks, V)."""
    size, extra = divmod(len(v), num_chunks)  # the first `extra` chunks have one frame more
    cut = extra * (size + 1)
    longer = v[:cut].reshape(extra, size + 1, v.shape[1]).mean(1)
    return np.concatenate([longer, v[cut:].reshape(num_chunks - extra, size, v.shape[1]).mean(1)])


def _group_mean(x: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
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


# ---- Datasets -------------------------------------------------------------------------------------------------------


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
        out = [_resize(torch.from_numpy(b).permute(0, 3, 1, 2).float(), size) for b in batches]
        return torch.cat(out).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()

    def subset(self, rows: np.ndarray) -> FMRIImageDataset:
        """The same images and transforms with only the fMRI rows `rows`."""
        return FMRIImageDataset(self.fmri[rows], self.images, self.image_index[rows], self.labels, self.naive_labels,
                                self.class_names, self.transform, self.image_transform)  # fmt: skip

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


def _make_sets(train: list, test: list, views: list, **transforms) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """Train and test sets from per-subject (fMRI, image index) pairs, all wrap-padded to the longest."""
    fmri = pad_all_to_longest([f for f, _ in train + test])
    sets = []
    for part, arrays, (images, labels) in zip(
        (train, test), (fmri[: len(train)], fmri[len(train) :]), views, strict=True
    ):
        index = np.concatenate([i for _, i in part])
        sets.append(FMRIImageDataset(np.concatenate(arrays)[:, None], images, index, *labels, **transforms))
    return sets[0], sets[1]


# ---- HCP (Stage A1) -------------------------------------------------------------------------------------------------


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
    """HCP resting-state window means (N, 1, V) for pre-training, optionally followed by all GOD training fMRI.

    Subjects are read in sorted order (at most `num_sub_limit`); folders without the file are skipped.
    `aug_times` > 1 appends interpolated HCP samples (drawn from `seed`) before GOD is appended, as published.
    """
    if roi != "VC" and roi not in HCP_ROIS:
        raise ValueError(f"HCP roi must be 'VC' or one of {HCP_ROIS}, got {roi!r}")
    if num_sub_limit is not None and num_sub_limit < 1:
        raise ValueError(f"num_sub_limit must be None or at least 1, got {num_sub_limit}")
    keys = HCP_ROIS if roi == "VC" else (roi,)
    arrays = []
    if include_hcp:
        root = _data_root(Path(path))
        files = [root / s / HCP_FILE for s in sorted(os.listdir(root)) if (root / s / HCP_FILE).is_file()]
        if not files:
            raise _missing(root / "<subject>" / HCP_FILE)
        for file in files[:num_sub_limit]:
            npz = _load_npz(file, keys)
            v = np.concatenate([_check_fmri(npz[k], file, k, rows=len(npz[keys[0]])) for k in keys], axis=-1)
            num_windows = len(v) // int(HCP_WINDOW / HCP_TR)
            if num_windows == 0:
                raise DataFormatError(f"{file}: {len(v)} frames, fewer than one {HCP_WINDOW:g} s window")
            arrays.append(zscore(pad_to_patch_size(chunk_mean(v, num_windows), patch_size, file), source=file))
        log.info("HCP: %d subjects from %s", len(arrays), root)
        arrays = pad_all_to_longest(arrays)
        arrays = [interpolate_augment(np.concatenate(arrays), aug_times, np.random.default_rng(seed))]
    if include_kam:
        kam = _data_root(Path(kam_path))
        subjects = sorted((p.stem for p in kam.glob("sbj_*.npz")), key=lambda s: (len(s), s))
        if not subjects:
            raise _missing(kam / "sbj_<k>.npz")
        train, _ = create_god_dataset(kam, roi, patch_size, subjects=subjects)
        arrays.append(train.fmri[:, 0])
    if not arrays:
        raise ValueError("create_hcp_dataset: include_hcp and include_kam are both off")
    return FMRIDataset(np.concatenate(pad_all_to_longest(arrays))[:, None], transform)


# ---- GOD / Kamitani -------------------------------------------------------------------------------------------------


def _read_stimulus_ids(path: Path) -> np.ndarray:
    """WordNet number of every row of a GOD label csv: the integer before the first '.' of the first column."""
    with open(_require(path), newline="") as f:
        first = np.array([row[0].strip() for row in csv.reader(f) if row and row[0].strip()])
    head = np.char.partition(first, ".")[:, 0] if len(first) else first
    bad = ~np.char.isdigit(head)
    if bad.any():
        raise DataFormatError(f"{path}: expected stimulus ids like 1518878.005958, got {first[bad][:3].tolist()}")
    return head.astype(np.int64)


GOD_CLASS_INDEX = "imagenet_class_index.json"


def read_class_index(folder: Path) -> dict[int, list[str]]:
    """A GOD folder's `imagenet_class_index.json`: {class index: [wnid, ..., class name]}."""
    return {int(c): v for c, v in json.loads(_require(folder / GOD_CLASS_INDEX).read_text()).items()}


def read_god_labels(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{'train'|'test': (class index, naive label, class name) per image} from the GOD label files.

    A WordNet id listed under several classes belongs to the first. The naive label numbers the WordNet ids
    in order of first appearance, the test images continuing the numbering of the training images.
    """
    class_file = folder / GOD_CLASS_INDEX
    entries = read_class_index(folder)
    class_index = np.array(list(entries), dtype=np.int64)
    class_name = np.array([v[-1] for v in entries.values()])
    wnids = np.array([int(w[1:]) for v in entries.values() for w in v[:-1]], dtype=np.int64)
    owner = np.repeat(np.arange(len(entries)), [len(v) - 1 for v in entries.values()])  # entry of each wnid
    wnids, first = np.unique(wnids, return_index=True)  # sorted; a shared id keeps its first entry
    owner = owner[first]

    files = {"train": folder / "imagenet_training_label.csv", "test": folder / "imagenet_testing_label.csv"}
    ids = {split: _read_stimulus_ids(f) for split, f in files.items()}
    both = np.concatenate([ids["train"], ids["test"]])
    unique, first_row, inverse = np.unique(both, return_index=True, return_inverse=True)
    naive = np.argsort(np.argsort(first_row))[inverse]  # rank of each id's first appearance
    out, start = {}, 0
    for split, wn in ids.items():
        pos = np.minimum(np.searchsorted(wnids, wn), len(wnids) - 1)
        unknown = wnids[pos] != wn
        if unknown.any():
            missing = [f"n{w:08d}" for w in wn[unknown][:3]]
            raise DataFormatError(f"{files[split]}: WordNet id(s) {missing} are not in {class_file}")
        out[split] = (class_index[owner[pos]], naive[start : start + len(wn)], class_name[owner[pos]].tolist())
        start += len(wn)
    return out


def _read_god_subject(file: Path, roi: str, patch_size: int, n_train: int, n_test: int, test_norm: str):
    """One subject's (train fMRI, test fMRI averaged, test fMRI single trials, train image index)."""
    npz = _load_npz(file, ("arr_0", "arr_1", "arr_2", "arr_3", roi))
    mask, order = npz[roi], npz["arr_3"]
    v_all = _check_fmri(npz["arr_0"], file, "arr_0").shape[1]
    if mask.dtype != bool or mask.shape != (v_all,) or not mask.any():
        raise DataFormatError(
            f"{file}: key '{roi}' must be a non-empty bool mask ({v_all},), got {mask.dtype} {mask.shape}"
        )
    tr = npz["arr_0"][:, mask]
    avg = _check_fmri(npz["arr_2"], file, "arr_2", rows=n_test)[:, mask]
    rep = _check_fmri(npz["arr_1"], file, "arr_1")[:, mask]
    if order.dtype.kind not in "iu" or order.shape != (len(tr),) or order.min() < 0 or order.max() >= n_train:
        raise DataFormatError(
            f"{file}: key 'arr_3' must be ({len(tr)},) ints < {n_train}, got {order.dtype} {order.shape}"
        )
    if len(rep) % n_test or not tr.shape[1] == avg.shape[1] == rep.shape[1]:
        raise DataFormatError(
            f"{file}: key 'arr_1' must be (k * {n_test}, {v_all}) single test trials, got {rep.shape}"
        )
    tr, avg, rep = (pad_to_patch_size(x, patch_size, f"{file} (roi {roi})") for x in (tr, avg, rep))
    # Published: the test fMRI is z-scored with the mean/std of the *normalised* training fMRI (about 0 and 1).
    mean, std = (tr.mean(), tr.std()) if test_norm == "train" else (None, None)
    tr = zscore(tr, source=f"{file}: key 'arr_0'")
    mean, std = (tr.mean(), tr.std()) if mean is None else (mean, std)
    return tr, zscore(avg, mean, std), zscore(rep, mean, std), order.astype(np.int64)


def _pick_held_out(naive: np.ndarray, categories: Sequence[int], seed: int) -> np.ndarray:
    """One training image of each category (naive label), drawn from `seed`: (len(categories),) image indices."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in categories:
        candidates = np.flatnonzero(naive == c)
        if not len(candidates):
            raise ValueError(f"test_category {c} is not a training category (0 .. {naive.max()})")
        picks.append(rng.choice(candidates))
    return np.array(picks, dtype=np.int64)


def create_god_dataset(
    path: str | os.PathLike = "data/Kamitani/npz",
    roi: str = "VC",
    patch_size: int = 16,
    subjects: Sequence[str] = ("sbj_3",),
    fmri_transform: Callable | None = None,
    image_transform: Callable | None = None,
    include_nonavg_test: bool = False,
    test_category: Sequence[int] | None = None,
    test_norm: str = "published",
    seed: int = 0,
) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """GOD train and test sets of the given subjects (wrap-padded to the longest, then concatenated).

    Test rows are the averaged trials, followed with `include_nonavg_test` by all single trials (35 per image).
    `test_norm="published"` z-scores the test fMRI with the statistics of the normalised training fMRI, as
    the published reader and checkpoints do; `"train"` uses the raw training statistics.
    `test_category` (training categories, numbered by naive label): one image of each, drawn from `seed`, is
    held out as the test set; all other training trials and the original test trials form the training set.
    """
    if roi not in GOD_ROIS:
        raise ValueError(f"GOD roi must be one of {GOD_ROIS}, got {roi!r}")
    if test_norm not in ("published", "train"):
        raise ValueError(f"test_norm must be 'published' or 'train', got {test_norm!r}")
    root = _data_root(Path(path))
    labels = read_god_labels(root)
    image_file = root / "images_256.npz"
    images = _load_npz(image_file, ("train_images", "test_images"))
    for split, key in (("train", "train_images"), ("test", "test_images")):
        if len(_check_images(images[key], image_file, key)) != len(labels[split][0]):
            raise DataFormatError(
                f"{image_file}: key '{key}' has {len(images[key])} images, its csv {len(labels[split][0])}"
            )
    n_train, n_test = len(images["train_images"]), len(images["test_images"])
    held = None if test_category is None else _pick_held_out(labels["train"][1], test_category, seed)

    train, test = [], []  # (fMRI, image index) per subject
    for sub in check_subjects(subjects, root):
        tr, avg, rep, order = _read_god_subject(root / f"{sub}.npz", roi, patch_size, n_train, n_test, test_norm)
        tt, tt_index = avg, np.arange(n_test)
        if include_nonavg_test:  # averaged rows pair with the images in order, single trials with each 35 times
            tt = np.concatenate([avg, rep])
            tt_index = np.concatenate([tt_index, np.repeat(tt_index, len(rep) // n_test)])
        if held is None:
            train.append((tr, order))
            test.append((tt, tt_index))
        else:  # indices into the training images followed by the test images
            out = np.isin(order, held)
            train.append((np.concatenate([tr[~out], tt]), np.concatenate([order[~out], n_train + tt_index])))
            test.append((tr[out], order[out]))

    views = [(images["train_images"], labels["train"]), (images["test_images"], labels["test"])]
    if held is not None:  # both sets index the training images followed by the test images
        (tr_img, (tr_cls, tr_naive, tr_names)), (tt_img, (tt_cls, tt_naive, tt_names)) = views
        both = (
            np.concatenate([tr_img, tt_img]),
            (np.r_[tr_cls, tt_cls], np.r_[tr_naive, tt_naive], tr_names + tt_names),
        )
        views = [both, both]
    return _make_sets(train, test, views, fmri_transform=fmri_transform, image_transform=image_transform)


# ---- BOLD5000 -------------------------------------------------------------------------------------------------------


def read_bold5000_presentation(stimuli_root: Path, subject: str) -> np.ndarray:
    """Image names in presentation order (session folders sorted, then run files sorted; `rep_` stripped)."""
    root = _require(stimuli_root / "Stimuli_Presentation_Lists" / subject, folder=True)
    names = []
    for session in sorted(p for p in root.iterdir() if p.is_dir()):  # stray files beside the sessions are no runs
        for run in sorted(session.glob("*.txt")):
            names += run.read_text().split()
    names = np.array(names, dtype=str)
    if len(names):  # np.char.replace fails on empty arrays
        names = np.where(np.char.startswith(names, "rep_"), np.char.replace(names, "rep_", "", count=1), names)
    return names


def _bold5000_subject_fmri(fmri_dir: Path, subject: str) -> np.ndarray:
    """All ROI files of a subject concatenated on the voxel axis, ROI by ROI, files in name order: (n_trials, V)."""
    files = sorted(f for f in os.listdir(fmri_dir) if f.startswith(subject + "_") and f.endswith(".npy"))
    parts = []
    for roi in BOLD5000_ROIS:
        roi_files = [f for f in files if f.removesuffix(".npy").endswith(roi)]
        if not roi_files:
            raise _missing(fmri_dir / f"{subject}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_<LH|RH>{roi}.npy")
        parts += [
            _check_fmri(np.load(fmri_dir / f), fmri_dir / f, rows=len(parts[0]) if parts else None) for f in roi_files
        ]
    return np.concatenate(parts, axis=-1)


def create_bold5000_dataset(
    path: str | os.PathLike = "data/BOLD5000",
    patch_size: int = 16,
    subjects: Sequence[str] = ("CSI1",),
    fmri_transform: Callable | None = None,
    image_transform: Callable | None = None,
    include_nonavg_test: bool = False,
) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """BOLD5000 train/test: the repeated images are the test set (their trials averaged per image), the rest train.

    Test rows are in the order of the repeated-image list (images a subject never saw are left out), followed
    with `include_nonavg_test` by their single trials grouped the same way. Labels are unknown (-1).
    """
    root = _data_root(Path(path))
    subjects = check_subjects(subjects, root)
    fmri_dir = _require(root / "BOLD5000_GLMsingle_ROI_betas" / "py", folder=True)
    stim = root / "BOLD5000_Stimuli"
    dict_file = _require(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy")
    repeated = np.array(_require(stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").read_text().split())
    img_dict = load_pickled_npy(dict_file)  # a pickled dict name -> uint8 image (published), read without code
    if not isinstance(img_dict, dict):
        raise DataFormatError(f"{dict_file}: expected a pickled dict of image name -> uint8 image")

    fmri = [zscore(pad_to_patch_size(_bold5000_subject_fmri(fmri_dir, s), patch_size, f"{fmri_dir} ({s})"),
                   source=f"{fmri_dir} ({s})") for s in subjects]  # fmt: skip
    shown = [read_bold5000_presentation(stim, s) for s in subjects]
    for sub, f, names in zip(subjects, fmri, shown, strict=True):
        if len(f) != len(names):
            lists = stim / "Stimuli_Presentation_Lists" / sub
            raise DataFormatError(f"{fmri_dir}: {sub} has {len(f)} fMRI trials but {lists} lists {len(names)} images")
    names, inverse = np.unique(np.concatenate(shown), return_inverse=True)  # the images any subject saw
    absent = [n for n in names if n not in img_dict]
    if absent:
        raise DataFormatError(f"{dict_file}: no image for {absent[:3]}{' ...' if len(absent) > 3 else ''}")
    kinds = {(np.shape(img_dict[n]), np.asarray(img_dict[n]).dtype) for n in names}
    if len(kinds) != 1:
        raise DataFormatError(f"{dict_file}: images must share one uint8 (H, W, 3) shape, got {sorted(kinds)[:3]}")
    images = _check_images(np.stack([img_dict[n] for n in names]), dict_file, "<image>")
    # rank of every seen image in the repeated list, -1 for training images
    sorter = np.argsort(repeated, kind="stable")
    pos = np.minimum(np.searchsorted(repeated[sorter], names), len(repeated) - 1)
    rank = np.where(repeated[sorter][pos] == names, sorter[pos], -1) if len(repeated) else np.full(len(names), -1)

    train, test = [], []  # (fMRI, image index) per subject
    for sub, f, index in zip(subjects, fmri, np.split(inverse, np.cumsum([len(s) for s in shown])[:-1]), strict=True):
        r = rank[index]
        is_test = r >= 0
        if not is_test.any():
            raise DataFormatError(f"{stim / 'Stimuli_Presentation_Lists' / sub}: none of the repeated (test) images")
        flat = np.flatnonzero(is_test)[np.argsort(r[is_test], kind="stable")]  # grouped per image, in list order
        starts = np.flatnonzero(np.r_[True, np.diff(r[flat]) != 0])
        avg, avg_index = _group_mean(f[flat], starts, np.diff(np.r_[starts, len(flat)])), index[flat[starts]]
        if include_nonavg_test:
            avg, avg_index = np.concatenate([avg, f[flat]]), np.concatenate([avg_index, index[flat]])
        train.append((f[~is_test], index[~is_test]))
        test.append((avg, avg_index))

    views = [(images, ())] * 2  # labels unknown
    # subjects of different sizes are padded to the longest (defect #11)
    return _make_sets(train, test, views, fmri_transform=fmri_transform, image_transform=image_transform)


# ---- Transforms (docs/method.md, Stage B) and the entry point of the target-data stages ----------------------------


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
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
        return x if x.shape[-2:] == (self.size, self.size) else _resize(x, self.size)


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
        return _resize(x[:, top : top + crop, left : left + crop], size)


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


def load_target(data: TargetData, patch_size: int, include_nonavg_test: bool) -> tuple[FMRIImageDataset,
                                                                                          FMRIImageDataset]:
    """The train and test sets of a stage's target data (GOD or BOLD5000), without transforms.

    `data` is the target-data part of a stage config (A2, B, gen_eval); the stage sets the transforms.
    """
    if data.dataset == "GOD":
        return create_god_dataset(data.kam_path, data.roi, patch_size, data.kam_subs,
                                  include_nonavg_test=include_nonavg_test, test_category=data.test_category)
    return create_bold5000_dataset(data.bold5000_path, patch_size, data.bold5000_subs,
                                   include_nonavg_test=include_nonavg_test)  # fmt: skip
