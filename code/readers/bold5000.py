"""BOLD5000: `BOLD5000_GLMsingle_ROI_betas/py/*.npy` per hemisphere and ROI, stimuli and presentation lists.

The repeated images are the test set (their trials averaged per image), the rest train; subjects with different
voxel counts are wrap-padded to the longest (docs/defects.md #11). `img_dict.npy`, a pickled dict, is read without
running code (`safe_pickle.load_pickled_npy`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bounded import short_repr
from dataset import FMRIImageDataset
from readers.arrays import group_mean, make_sets, pad_to_patch_size, zscore
from readers.files import (
    DataFormatError,
    check_fmri,
    check_images,
    check_subjects,
    data_root,
    load_npy,
    missing,
    require,
)
from safe_pickle import load_pickled_npy

BOLD5000_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")


def read_bold5000_presentation(stimuli_root: Path, subject: str) -> np.ndarray:
    """Image names in presentation order (session folders sorted, then run files sorted; `rep_` stripped)."""
    root = require(stimuli_root / "Stimuli_Presentation_Lists" / subject, folder=True)
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
            raise missing(fmri_dir / f"{subject}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_<LH|RH>{roi}.npy")
        parts += [
            check_fmri(load_npy(fmri_dir / f), fmri_dir / f, rows=len(parts[0]) if parts else None) for f in roi_files
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
    root = data_root(Path(path))
    subjects = check_subjects(subjects, root)
    fmri_dir = require(root / "BOLD5000_GLMsingle_ROI_betas" / "py", folder=True)
    stim = root / "BOLD5000_Stimuli"
    dict_file = require(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy")
    repeated = np.array(require(stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").read_text().split())
    img_dict = load_pickled_npy(dict_file)  # a pickled dict name -> uint8 image (published), read without code
    if not isinstance(img_dict, dict):
        raise DataFormatError(f"{dict_file}: expected a pickled dict of image name -> uint8 image")

    fmri = [
        zscore(
            pad_to_patch_size(_bold5000_subject_fmri(fmri_dir, s), patch_size, f"{fmri_dir} ({s})"),
            source=f"{fmri_dir} ({s})",
        )
        for s in subjects
    ]
    shown = [read_bold5000_presentation(stim, s) for s in subjects]
    for sub, f, names in zip(subjects, fmri, shown, strict=True):
        if len(f) != len(names):
            lists = stim / "Stimuli_Presentation_Lists" / sub
            raise DataFormatError(f"{fmri_dir}: {sub} has {len(f)} fMRI trials but {lists} lists {len(names)} images")
    names, inverse = np.unique(np.concatenate(shown), return_inverse=True)  # the images any subject saw
    absent = [n for n in names if n not in img_dict]
    if absent:
        raise DataFormatError(f"{dict_file}: no image for {short_repr([str(n) for n in absent])}")
    kinds = {(img.shape, img.dtype.str) if isinstance(img := img_dict[n], np.ndarray) else type(img) for n in names}
    if len(kinds) != 1 or not isinstance(next(iter(kinds)), tuple):
        raise DataFormatError(
            f"{dict_file}: images must be arrays of one uint8 (H, W, 3) shape, got {short_repr(list(kinds))}"
        )
    images = check_images(np.stack([img_dict[n] for n in names]), dict_file, "<image>")
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
        avg, avg_index = group_mean(f[flat], starts, np.diff(np.r_[starts, len(flat)])), index[flat[starts]]
        if include_nonavg_test:
            avg, avg_index = np.concatenate([avg, f[flat]]), np.concatenate([avg_index, index[flat]])
        train.append((f[~is_test], index[~is_test]))
        test.append((avg, avg_index))

    views = [(images, ())] * 2  # labels unknown
    # subjects of different sizes are padded to the longest (defect #11)
    return make_sets(train, test, views, fmri_transform=fmri_transform, image_transform=image_transform)
