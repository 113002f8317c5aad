"""A folder of fMRI arrays, for pre-training on data of one's own: every `*.npy` file in it is one float array
(N, V) of samples (a subject, a session, a run), V voxels of the same ROI order within the file.

Files are read in name order, never as pickles (`load_npy`); each is z-scored with its own statistics (as HCP's
and GOD's subjects are) and wrap-padded to whole patches; files of different voxel counts are wrap-padded to the
longest, as HCP and GOD are.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from readers.arrays import pad_all_to_longest, pad_to_patch_size, zscore
from readers.files import DataFormatError, check_fmri, load_npy, require

log = logging.getLogger("mindvis.dataset")


def read_fmri_folder(path: str | os.PathLike, patch_size: int = 16) -> np.ndarray:
    """The samples (N, V) of every `*.npy` in `path`, in name order; one error naming a file that is not one."""
    root = require(Path(path), folder=True)
    files = sorted(root.glob("*.npy"))
    if not files:
        raise DataFormatError(f"{root}: no .npy file; expected one float array (samples, voxels) per file")
    arrays = []
    for file in files:
        x = check_fmri(load_npy(file), file)
        arrays.append(zscore(pad_to_patch_size(x, patch_size, file), source=file))
    log.info("fMRI folder: %d files, %d samples from %s", len(files), sum(len(a) for a in arrays), root)
    return np.concatenate(pad_all_to_longest(arrays))
