"""The Natural Scenes Dataset (NSD) in the two layouts MindEye published: one reader, the layout found on disk.

`mindeye1` (MindEye, Scotti et al. 2023; HuggingFace `pscotti/naturalscenesdataset`):
    <root>/webdataset_avg_split/{train,val,test}/{split}_subjNN_<k>.tar      (shards), or
    <root>/webdataset_avg_split/{train,val,test}/subjNN/<key>.<member>       (the same samples extracted; or to
                                                                       {split}_subjNN_<k>/, a folder per shard)
  one sample per image: `nsdgeneral.npy` (repeats, V) the nsdgeneral voxels of each presentation, `jpg` the
  stimulus, `coco73k.npy` its index among NSD's 73k images, `trial.npy` the trial numbers.
`mindeye2` (MindEye2, Scotti et al. 2024; HuggingFace `pscotti/mindeyev2`):
    <root>/betas_all_subjNN_fp32_renorm.hdf5     'betas' (trials, V): every trial's nsdgeneral betas (the earlier
                                                  releases' betas_all_subjNN_fp32.hdf5 or _subjNN.hdf5 where absent)
    <root>/coco_images_224_float16.hdf5           'images' (73000, 3, H, W) float in [0, 1]
    <root>/wds/subjNN/train/<session>.tar         one sample per trial: `behav.npy` (1, 17) names the image (column
    <root>/wds/subjNN/new_test/0.tar              0, its 73k index) and the trial's row of 'betas' (column 5);
                                                  test/0.tar (the first release's test set) where new_test is absent

Whatever the layout, a subject's data become the same sets: training on single trials (each presentation its own
row, or their mean per image with `nsd_train_average`), testing on the shared images with their presentations
averaged, as MindEye does (`include_nonavg_test` appends the single test trials). MindEye's validation images join
the training images (Stage B holds out its own validation images). fMRI is z-scored with one mean and standard
deviation per subject, those of its training rows, and wrap-padded by `patch - V % patch` as the published readers
do; images larger than `IMAGE_SIZE` are resized to it when read (the model's input size; a subject's 10k stimuli at
425 px would hold 5 GB). Labels are unknown (-1): NSD's images are scenes, not classes.

Betas and images are read from HDF5 with h5py a block of rows at a time (a subject's betas are gigabytes), shards
streamed (`readers.shards`); nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import FMRIImageDataset
from errors import one_line
from readers.arrays import make_sets, pad_to_patch_size, zscore
from readers.files import DataFormatError, check_fmri, check_subjects, data_root, missing, require
from readers.shards import folder_samples, image_member, npy_member, shard_order, shrink, tar_samples

NSD_ROIS = ("VC", "nsdgeneral")  # one region: the nsdgeneral visual-cortex mask both releases hold
NSD_LAYOUTS = ("auto", "mindeye1", "mindeye2")
IMAGE_SIZE = 256  # the published model's input size: larger stimuli are resized to it when read
NSD_IMAGES = 73_000  # NSD's stimulus set (a subset of COCO)

# MindEye1
ME1_FOLDER = "webdataset_avg_split"
ME1_SPLITS = {"train": ("train", "val"), "test": ("test",)}  # our set -> MindEye's splits
ME1_VOXELS, ME1_IMAGE_ID, ME1_REPEATS = "nsdgeneral.npy", "coco73k.npy", "num_uniques.npy"

# MindEye2
# the betas file, newest release first: renormalised (z-scored per voxel on training trials), then the earlier two
ME2_BETAS = ("betas_all_{subject}_fp32_renorm.hdf5", "betas_all_{subject}_fp32.hdf5", "betas_all_{subject}.hdf5")
ME2_IMAGES = "coco_images_224_float16.hdf5"
ME2_SHARDS = {"train": "train", "test": "new_test"}  # our set -> the wds/<subject>/ folder
BEHAV = "behav.npy"
BEHAV_IMAGE, BEHAV_TRIAL = 0, 5  # columns of behav.npy: the 73k image index, the row of the betas file
log = logging.getLogger("mindvis.dataset")
BLOCK_ROWS = 128  # HDF5 rows read at a time (128 images at 224 px: ~60 MB as float32)


@dataclass
class Trials:
    """One subject's presentations in one set: fMRI (n, V) float32 and the 73k index of the image each saw."""

    fmri: np.ndarray
    image_id: np.ndarray


def detect_layout(root: Path, layout: str = "auto") -> str:
    """'mindeye1' or 'mindeye2': the layout asked for, or the one found in `root` (both found: ask to choose)."""
    if layout not in NSD_LAYOUTS:
        raise DataFormatError(f"{root}: nsd_layout must be one of {NSD_LAYOUTS}, got {layout!r}")
    found = [
        name
        for name, present in (
            ("mindeye1", (root / ME1_FOLDER).is_dir()),
            ("mindeye2", (root / ME2_IMAGES).is_file() or (root / "wds").is_dir()),
        )
        if present
    ]
    if layout != "auto":
        return layout
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataFormatError(
            f"{root}: no NSD layout found: expected {ME1_FOLDER}/ (MindEye) or {ME2_IMAGES} with wds/ (MindEye2); "
            "see data/README.md (or simulate one: python code/make_synthetic_data.py --size tiny --out DIR)"
        )
    raise DataFormatError(f"{root}: holds both MindEye layouts; choose one with --nsd_layout mindeye1|mindeye2")


# ----------------------------------------------------------------------------------------------------
# MindEye1: webdataset_avg_split
# ----------------------------------------------------------------------------------------------------


def _me1_sources(root: Path, split: str, subject: str) -> list[Path]:
    """A split's shards of one subject (numeric order), or the same samples extracted: to `<split>/<subject>/` or
    to one folder per shard (`<split>/<split>_<subject>_<k>/`)."""
    folder = root / ME1_FOLDER / split
    if not folder.is_dir():
        raise missing(folder / f"{split}_{subject}_<k>.tar", "shard")
    named = sorted(folder.glob(f"{split}_{subject}_*"), key=lambda p: shard_order(p.with_suffix(".tar")))
    shards = [p for p in named if p.suffix == ".tar" and p.is_file()]
    shards += sorted((folder / subject).glob("*.tar"), key=shard_order) if (folder / subject).is_dir() else []
    if shards:
        return shards
    extracted = [p for p in named if p.is_dir()] or ([folder / subject] if (folder / subject).is_dir() else [])
    if extracted:
        return extracted
    raise missing(folder / f"{split}_{subject}_<k>.tar", "shard")


def _samples(sources: list[Path]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(where, sample) of every sample of shards or extracted folders, `where` naming the shard and the key."""
    for source in sources:
        for key, sample in tar_samples(source) if source.is_file() else folder_samples(source):
            yield (f"{source} sample {key!r}" if source.is_file() else key), sample


def _me1_read(root: Path, subject: str, part: str, images: dict[int, np.ndarray]) -> Trials:
    """A subject's presentations of one of our sets from MindEye's splits; new images are added to `images`."""
    fmri, ids, width = [], [], None
    for split in ME1_SPLITS[part]:
        if part == "train" and split == "val" and not (root / ME1_FOLDER / split).is_dir():
            continue  # a release without its validation split trains on what it has
        for where, sample in _samples(_me1_sources(root, split, subject)):
            voxels = npy_member(sample, ME1_VOXELS, where)
            if voxels.ndim == 1:
                voxels = voxels[None]
            if voxels.ndim != 2 or voxels.dtype.kind != "f" or len(voxels) == 0:
                raise DataFormatError(
                    f"{where}: {ME1_VOXELS!r} must be a float array (repeats, voxels), got {voxels.dtype} "
                    f"{voxels.shape}"
                )
            if width is not None and voxels.shape[1] != width:
                raise DataFormatError(f"{where}: {voxels.shape[1]} voxels, the subject's earlier samples {width}")
            width = voxels.shape[1]
            image_id = _image_id(npy_member(sample, ME1_IMAGE_ID, where), where)
            if image_id not in images:
                images[image_id] = image_member(sample, where, IMAGE_SIZE)
            rows = voxels[: _repeats(sample, len(voxels), where)]
            rows = rows[np.isfinite(rows).any(1)]  # a presentation the sample lacks may be a row of NaN
            if len(rows) == 0 or not np.isfinite(rows).all():
                raise DataFormatError(
                    f"{where}: {ME1_VOXELS!r} holds NaN/inf values in its presentations (or none is finite)"
                )
            fmri.append(rows)  # as stored (MindEye's are float16): the z-score makes them float32
            ids.append(np.full(len(rows), image_id))
    if not fmri:
        raise DataFormatError(f"{root / ME1_FOLDER} ({subject}): no {part} samples")
    if len({f.dtype for f in fmri}) > 1:
        fmri = [f.astype(np.float32) for f in fmri]
    return Trials(np.concatenate(fmri), np.concatenate(ids))


def _repeats(sample: dict[str, bytes], rows: int, where: str) -> int:
    """How many rows of a sample's voxels are presentations: `num_uniques.npy` where the sample has it (images
    seen fewer than 3 times in the released sessions fill the rest), else all."""
    if ME1_REPEATS not in sample:
        return rows
    n = npy_member(sample, ME1_REPEATS, where)
    if n.size != 1 or n.dtype.kind not in "iuf" or not float(n.flat[0]).is_integer() or not 1 <= n.flat[0] <= rows:
        raise DataFormatError(f"{where}: {ME1_REPEATS!r} must hold one count in 1..{rows}, got {n.dtype} {n.shape}")
    return int(n.flat[0])


def _image_id(x: np.ndarray, where: str) -> int:
    if x.size != 1 or x.dtype.kind not in "iuf" or not float(x.flat[0]).is_integer():
        raise DataFormatError(f"{where}: {ME1_IMAGE_ID!r} must hold one image index, got {x.dtype} {x.shape}")
    image_id = int(x.flat[0])
    if not 0 <= image_id < NSD_IMAGES:
        raise DataFormatError(f"{where}: image index {image_id} is outside NSD's 0..{NSD_IMAGES - 1}")
    return image_id


# ----------------------------------------------------------------------------------------------------
# MindEye2: betas in HDF5, trials in per-session shards
# ----------------------------------------------------------------------------------------------------


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is in requirements.txt
        raise DataFormatError("reading MindEye2's HDF5 files needs h5py (pip install h5py)") from None
    return h5py


@contextmanager
def _h5_dataset(path: Path, key: str, kinds: str, ndim: int) -> Iterator:
    """Dataset `key` of an HDF5 file, open while the block runs, checked to be a numeric array of `ndim`
    dimensions; a missing, truncated or foreign file is one DataFormatError naming it."""
    h5py = _h5py()
    try:
        f = h5py.File(require(path), "r")
    except OSError as e:
        raise DataFormatError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {one_line(e)}") from None
    with f:
        try:
            data = f.get(key)
            if not isinstance(data, h5py.Dataset):
                raise DataFormatError(f"{path}: no dataset {key!r} (found {sorted(f.keys())})")
            if data.dtype.kind not in kinds or data.ndim != ndim:
                raise DataFormatError(
                    f"{path}: dataset {key!r} must be a numeric array of {ndim} dimensions, got {data.dtype} "
                    f"{data.shape}"
                )
        except DataFormatError:
            raise
        except Exception as e:  # h5py raises OSError, RuntimeError, KeyError... on damaged metadata
            raise DataFormatError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {one_line(e)}") from None
        yield data


def _h5_rows(path: Path, data, rows: np.ndarray) -> np.ndarray:
    """data[rows] for any row order: each run of consecutive rows read as one slice straight into the output
    (h5py's list indexing is 15-25x slower per row; benchmarks/bench_nsd_reader.py)."""
    if len(rows) and not (0 <= rows.min() and rows.max() < len(data)):
        raise DataFormatError(f"{path}: row {int(rows.max())} asked for, but {data.name!r} holds {len(data)} rows")
    unique, inverse = np.unique(rows, return_inverse=True)
    out = np.empty((len(unique), *data.shape[1:]), data.dtype)
    starts = np.flatnonzero(np.r_[True, np.diff(unique) != 1])  # where each run of consecutive rows begins
    ends = np.r_[starts[1:], len(unique)]
    try:
        for a, b in zip(starts, ends, strict=True):
            for lo in range(a, b, BLOCK_ROWS):  # long runs in blocks
                hi = min(b, lo + BLOCK_ROWS)
                first = int(unique[lo])
                data.read_direct(out, np.s_[first : first + hi - lo], np.s_[lo:hi])
    except Exception as e:  # h5py's errors on damaged chunks are OSError, RuntimeError, ValueError...
        raise DataFormatError(f"{path}: {data.name!r} cannot be read (truncated or corrupt?): {one_line(e)}") from None
    return out if np.array_equal(unique, rows) else out[inverse]  # trials come in increasing rows: no copy


def _me2_behav(root: Path, subject: str, part: str) -> np.ndarray:
    """(image index, betas row) of every trial of a subject's set, in shard order: (n, 2) int64."""
    folder = root / "wds" / subject / ME2_SHARDS[part]
    if part == "test" and not folder.is_dir() and (root / "wds" / subject / "test").is_dir():
        folder = root / "wds" / subject / "test"  # the first release's test set (MindEye's 982 images)
    require(folder, folder=True)
    shards = sorted(folder.glob("*.tar"), key=shard_order)
    per_shard = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: shard_order(p.with_suffix(".tar")))
    rows = []
    for where, sample in _samples(shards or per_shard or [folder]):  # shards, a folder each, or one folder
        behav = npy_member(sample, BEHAV, where)
        if behav.dtype.kind not in "iuf" or behav.ndim not in (1, 2) or behav.shape[-1] <= BEHAV_TRIAL:
            raise DataFormatError(
                f"{where}: {BEHAV!r} must be numeric rows of at least {BEHAV_TRIAL + 1} columns, got "
                f"{behav.dtype} {behav.shape}"
            )
        pairs = np.atleast_2d(behav)[:, [BEHAV_IMAGE, BEHAV_TRIAL]]
        if not (np.isfinite(pairs).all() and (pairs == np.round(pairs)).all() and (pairs >= 0).all()):
            raise DataFormatError(f"{where}: {BEHAV!r} image and trial columns must be non-negative integers")
        rows.append(pairs.astype(np.int64))
    if not rows:
        raise DataFormatError(f"{folder}: no samples (expected .tar shards of behav.npy trials)")
    rows = np.concatenate(rows)
    if (rows[:, 0] >= NSD_IMAGES).any():
        raise DataFormatError(f"{folder}: image index {int(rows[:, 0].max())} is outside NSD's 0..{NSD_IMAGES - 1}")
    return rows


def _me2_read(root: Path, subject: str, part: str) -> Trials:
    behav = _me2_behav(root, subject, part)
    names = [root / name.format(subject=subject) for name in ME2_BETAS]
    path = next((p for p in names if p.is_file()), names[0])
    with _h5_dataset(path, "betas", "f", 2) as betas:
        fmri = _h5_rows(path, betas, behav[:, 1]).astype(np.float32, copy=False)
    return Trials(check_fmri(fmri, path, "betas"), behav[:, 0])


def _me2_images(root: Path, ids: np.ndarray) -> np.ndarray:
    """uint8 (len(ids), H, W, 3) of the 73k indices `ids` from the image file: float in [0, 1] or uint8, (n, 3, H, W)
    as published (or (n, H, W, 3))."""
    path = root / ME2_IMAGES
    with _h5_dataset(path, "images", "fu", 4) as images:
        channels_first = images.shape[1] == 3
        if not (channels_first or images.shape[3] == 3):
            raise DataFormatError(f"{path}: 'images' must be (n, 3, H, W), got {images.shape}")
        out = np.empty((len(ids), *(images.shape[2:] if channels_first else images.shape[1:3]), 3), np.uint8)
        for start in range(0, len(ids), BLOCK_ROWS):
            block = _h5_rows(path, images, ids[start : start + BLOCK_ROWS]).astype(np.float32)
            if images.dtype.kind == "f":
                if not np.isfinite(block).all():
                    raise DataFormatError(f"{path}: 'images' holds NaN/inf values")
                block = np.clip(block * 255.0, 0, 255).round()
            out[start : start + BLOCK_ROWS] = (block.transpose(0, 2, 3, 1) if channels_first else block).astype(
                np.uint8
            )
    return shrink(out, IMAGE_SIZE)


# ----------------------------------------------------------------------------------------------------
# The sets
# ----------------------------------------------------------------------------------------------------


def _per_image(trials: Trials) -> tuple[np.ndarray, np.ndarray]:
    """The mean fMRI of every image's presentations, images in increasing 73k index: ((n_images, V), ids)."""
    ids, inverse = np.unique(trials.image_id, return_inverse=True)
    sums = np.zeros((len(ids), trials.fmri.shape[1]), np.float64)
    np.add.at(sums, inverse, trials.fmri)
    return (sums / np.bincount(inverse)[:, None]).astype(np.float32), ids


def subject_name(subject: str) -> str:
    """NSD's subject folder name: `subj01` as given, or from MindEye's number (`1` -> `subj01`)."""
    return f"subj{int(subject):02d}" if subject.isdigit() else subject


def _mean_std(x: np.ndarray, block: int = 1024) -> tuple[np.float32, np.float32]:
    """The mean and (population) standard deviation of all of `x`, two passes in float64 over blocks of rows
    (np.std would hold a float64 copy of the whole array: twice the betas' size)."""
    total = sum(float(np.sum(x[i : i + block], dtype=np.float64)) for i in range(0, len(x), block))
    mean = total / x.size
    squares = sum(
        float(np.sum(np.square(x[i : i + block].astype(np.float64) - mean))) for i in range(0, len(x), block)
    )
    return np.float32(mean), np.float32(np.sqrt(squares / x.size))


def create_nsd_dataset(
    path: str | os.PathLike = "data/NSD",
    patch_size: int = 16,
    subjects: Sequence[str] = ("subj01",),
    fmri_transform: Callable | None = None,
    image_transform: Callable | None = None,
    include_nonavg_test: bool = False,
    roi: str = "VC",
    nsd_layout: str = "auto",
    nsd_train_average: bool = False,
) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """NSD train/test sets of `subjects` (see the module doc); subjects of different voxel counts are wrap-padded to
    the longest, as the published readers do for several subjects."""
    if roi not in NSD_ROIS:
        raise ValueError(f"NSD roi must be one of {NSD_ROIS} (the nsdgeneral mask), got {roi!r}")
    root = data_root(Path(path))
    subjects = [subject_name(s) for s in check_subjects(subjects, root)]
    layout = detect_layout(root, nsd_layout)
    per_subject, images = [], {}
    for subject in subjects:
        if layout == "mindeye1":
            train, test = (_me1_read(root, subject, part, images) for part in ("train", "test"))
        else:
            train, test = (_me2_read(root, subject, part) for part in ("train", "test"))
        leaked = np.isin(train.image_id, test.image_id)
        if leaked.any():  # the releases split by image; files that do not are kept from leaking the test set
            log.warning(
                "%s (%s): %d training trial(s) show test images (e.g. %d): left out of training",
                root,
                subject,
                int(leaked.sum()),
                int(train.image_id[leaked][0]),
            )
            train = Trials(train.fmri[~leaked], train.image_id[~leaked])
        per_subject.append((subject, train, test))

    ids = np.unique(np.concatenate([t.image_id for _, train, test in per_subject for t in (train, test)]))
    if layout == "mindeye1":
        sizes = {images[int(i)].shape for i in ids}
        if len(sizes) > 1:
            raise DataFormatError(f"{root / ME1_FOLDER}: the stimuli differ in size ({sorted(sizes)}); expected one")
    if layout == "mindeye2":
        stack = _me2_images(root, ids)
    else:  # filled while the decoded images are let go: one copy of them at a time
        stack = np.empty((len(ids), *images[int(ids[0])].shape), np.uint8)
        for n, i in enumerate(ids):
            stack[n] = images.pop(int(i))
    train_sets, test_sets = [], []
    while per_subject:  # each subject's raw trials are let go as soon as its sets are made (betas are gigabytes)
        subject, train, test = per_subject.pop(0)
        source = f"{root} ({subject})"
        padded = (pad_to_patch_size(t.fmri, patch_size, source).astype(np.float32, copy=False) for t in (train, test))
        train_x, test_x = padded
        train.fmri = test.fmri = None
        mean, std = _mean_std(train_x)  # applied in place in float32: no second copy of the betas
        train_x, test_x = (zscore(x, mean, std, source, inplace=True) for x in (train_x, test_x))
        train_ids = train.image_id
        if nsd_train_average:
            train_x, train_ids = _per_image(Trials(train_x, train_ids))
        avg, avg_ids = _per_image(Trials(test_x, test.image_id))
        if include_nonavg_test:
            order = np.argsort(test.image_id, kind="stable")
            avg, avg_ids = np.concatenate([avg, test_x[order]]), np.concatenate([avg_ids, test.image_id[order]])
        train_sets.append((train_x, np.searchsorted(ids, train_ids)))
        test_sets.append((avg, np.searchsorted(ids, avg_ids)))
    views = [(stack, ())] * 2  # labels unknown
    return make_sets(train_sets, test_sets, views, fmri_transform=fmri_transform, image_transform=image_transform)
