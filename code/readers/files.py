"""Reading the published data files: one clear error naming the file and key for anything unexpected.

Every reader checks what it reads through these: a missing file or folder names the expected layout
(`data/README.md`), an .npz archive must hold the keys asked for, fMRI must be finite float arrays and images
uint8 (n, H, W, 3); a simulated data set left incomplete (its `simulation.json` says so) is refused; subject names
become file paths, so they must be plain names.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from errors import UserError


class DataFormatError(UserError, ValueError):
    """A data file is missing or does not hold what the published layout specifies."""


SUBJECT_NAME = re.compile(r"[A-Za-z0-9_-]+")  # subject names become file and folder names


def check_subjects(subjects: Sequence[str], source: object) -> list[str]:
    """`subjects` as a list of plain names (letters, digits, `_`, `-`); DataFormatError naming `source` otherwise."""
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    for name in subjects:
        if not (isinstance(name, str) and SUBJECT_NAME.fullmatch(name)):
            raise DataFormatError(
                f"{source}: subject {name!r} is not a subject name (letters, digits, '_' and '-' "
                "only: names become file paths)"
            )
    return subjects


def missing(path: Path, what: str = "file") -> DataFormatError:
    return DataFormatError(
        f"{what} not found: {path}. See data/README.md for the expected layout and where to download it "
        "(or simulate one: python code/make_synthetic_data.py --out data/synthetic/tiny --size tiny)"
    )


def require(path: Path, folder: bool = False) -> Path:
    if not (path.is_dir() if folder else path.is_file()):
        raise missing(path, "folder" if folder else "file")
    return path


SIMULATION_MARKER = "simulation.json"  # written by make_synthetic_data.py beside HCP/, Kamitani/, BOLD5000/


def data_root(path: Path) -> Path:
    """A data folder that exists and is not part of a simulation left incomplete (its marker says so)."""
    root = require(path, folder=True)
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


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file; a missing, truncated or foreign file is one error naming it."""
    require(path)
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
        raise DataFormatError(
            f"{path}: not a readable .npz archive of arrays (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None


def check_fmri(x: np.ndarray, path: Path, key: str | None = None, rows: int | None = None) -> np.ndarray:
    where = f"{path}: key '{key}'" if key else f"{path}:"
    if x.ndim != 2 or x.dtype.kind != "f" or (rows is not None and len(x) != rows):
        want = f"({rows}, n_voxels)" if rows is not None else "(n, n_voxels)"
        raise DataFormatError(f"{where} must be a float array {want}, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise DataFormatError(f"{where} holds {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
    return x


def check_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataFormatError(f"{path}: key '{key}' must be uint8 (n, H, W, 3), got {x.dtype} {x.shape}")
    return x
