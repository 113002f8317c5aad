"""HCP resting state (Stage A1): `HCP/npz/<subject>/HCP_visual_voxel.npz`, V1..V4 (T, n) series -> 8 s window means.

Subjects are read in sorted order (docs/defects.md #10); `include_kam` appends the GOD training fMRI of every
subject, as the published pre-training does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dataset import FMRIDataset
from readers.arrays import chunk_mean, interpolate_augment, pad_all_to_longest, pad_to_patch_size, zscore
from readers.files import DataFormatError, check_fmri, data_root, load_npz, missing

log = logging.getLogger("mindvis.dataset")

HCP_ROIS = ("V1", "V2", "V3", "V4")  # ROI "VC" = all four, concatenated in this order
HCP_FILE = "HCP_visual_voxel.npz"
HCP_TR = 0.75  # seconds per HCP frame
HCP_WINDOW = 8.0  # seconds averaged into one pre-training sample


def hcp_subjects(
    path: str | os.PathLike = "data/HCP/npz", roi: str = "VC", patch_size: int = 16, num_sub_limit: int | None = None
) -> list[np.ndarray]:
    """Each HCP subject's resting-state window means (windows, V), z-scored per subject and padded to the patch size,
    in sorted subject order (at most `num_sub_limit`); folders without the file are skipped."""
    if roi != "VC" and roi not in HCP_ROIS:
        raise ValueError(f"HCP roi must be 'VC' or one of {HCP_ROIS}, got {roi!r}")
    if num_sub_limit is not None and num_sub_limit < 1:
        raise ValueError(f"num_sub_limit must be None or at least 1, got {num_sub_limit}")
    keys = HCP_ROIS if roi == "VC" else (roi,)
    root = data_root(Path(path))
    files = [root / s / HCP_FILE for s in sorted(os.listdir(root)) if (root / s / HCP_FILE).is_file()]
    if not files:
        raise missing(root / "<subject>" / HCP_FILE)
    arrays = []
    for file in files[:num_sub_limit]:
        npz = load_npz(file, keys)
        v = np.concatenate([check_fmri(npz[k], file, k, rows=len(npz[keys[0]])) for k in keys], axis=-1)
        num_windows = len(v) // int(HCP_WINDOW / HCP_TR)
        if num_windows == 0:
            raise DataFormatError(f"{file}: {len(v)} frames, fewer than one {HCP_WINDOW:g} s window")
        arrays.append(zscore(pad_to_patch_size(chunk_mean(v, num_windows), patch_size, file), source=file))
    log.info("HCP: %d subjects from %s", len(arrays), root)
    return arrays


def create_hcp_dataset(
    path: str | os.PathLike = "data/HCP/npz",
    roi: str = "VC",
    patch_size: int = 16,
    transform: Callable | None = None,
    aug_times: int = 1,
    num_sub_limit: int | None = None,
    seed: int = 0,
) -> FMRIDataset:
    """HCP resting-state window means (N, 1, V) for pre-training (`corpora.py` adds the other corpora).

    Subjects are read in sorted order (at most `num_sub_limit`; `hcp_subjects`), and subjects of different voxel
    counts are wrap-padded to the longest. `aug_times` > 1 appends interpolated samples (drawn from `seed`), as
    published.
    """
    arrays = hcp_subjects(path, roi, patch_size, num_sub_limit)
    fmri = interpolate_augment(np.concatenate(pad_all_to_longest(arrays)), aug_times, np.random.default_rng(seed))
    return FMRIDataset(fmri[:, None], transform)
