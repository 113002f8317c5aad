"""Reading the published data files: one clear error naming the file and key for anything unexpected.

Every reader checks what it reads through these: a missing file or folder names the expected layout
(`data/README.md`), an .npz archive must hold the keys asked for, fMRI must be finite float arrays and images
uint8 (n, H, W, 3); a simulated data set left incomplete (its `simulation.json` says so) is refused; subject names
become file paths, so they must be plain names.
"""

from __future__ import annotations

import collections
import json
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bounded import npy_header, short_repr
from errors import UserError, one_line


class DataFormatError(UserError, ValueError):
    """A data file is missing or does not hold what the published layout specifies."""


SUBJECT_NAME = re.compile(r"[A-Za-z0-9_-]+")  # subject names become file and folder names


def check_subjects(subjects: Sequence[str], source: object) -> list[str]:
    """`subjects` as a list of plain names (letters, digits, `_`, `-`); DataFormatError naming `source` otherwise."""
    if not isinstance(subjects, str | list | tuple):
        raise DataFormatError(f"{source}: subjects must be a list of names, got {short_repr(subjects)}")
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    for name in subjects:
        if not (isinstance(name, str) and SUBJECT_NAME.fullmatch(name)):
            raise DataFormatError(
                f"{source}: subject {short_repr(name)} is not a subject name (letters, digits, '_' and '-' "
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
                complete = json.loads(marker.read_text()).get("complete", False) is True
            except (ValueError, AttributeError, RecursionError):  # not JSON, not a mapping, nested too deeply
                complete = False
            if not complete:
                raise DataFormatError(
                    f"{marker}: the simulated data set is incomplete (interrupted?); simulate it again with "
                    f"python code/make_synthetic_data.py --out {folder} --overwrite"
                )
            break
    return root


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file; a missing, truncated or foreign file is one error naming it.

    Each member is checked to hold the data its header declares before numpy allocates it, members of one name
    twice (numpy would keep the last) and object arrays (pickles) are refused.
    """
    require(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [i.filename.removesuffix(".npy") for i in infos]
            twice = sorted({n for n, count in collections.Counter(names).items() if count > 1})
            if twice:
                raise DataFormatError(f"{path}: holds two members named {short_repr(twice)}; an .npz names each once")
            members = dict(zip(names, infos, strict=True))
            absent = [k for k in keys if k not in members]
            if absent:
                raise DataFormatError(f"{path}: missing key(s) {absent}; found {short_repr(sorted(members))}")
            arrays = {}
            for key in keys:
                try:
                    with archive.open(members[key]) as member:
                        check_npy_header(member, members[key].file_size)
                    with archive.open(members[key]) as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                except DataFormatError as e:
                    raise DataFormatError(f"{path}: key '{key}' {e}") from None
                except Exception as e:
                    raise DataFormatError(
                        f"{path}: key '{key}' is not a readable array (truncated or corrupt?): {one_line(e)}"
                    ) from None
            return arrays
    except DataFormatError:
        raise
    except Exception as e:  # not a zip: truncated, garbage, or a single .npy
        what = (
            "expected an .npz archive (numpy.savez), got a single array (.npy)"
            if _starts_with(path, NPY_MAGIC)
            else f"not a readable .npz archive of arrays (truncated or corrupt?): {one_line(e)}"
        )
        raise DataFormatError(f"{path}: {what}") from None


def load_npy(path: Path) -> np.ndarray:
    """The array of a .npy file (numpy.save), never a pickle; a missing, truncated or foreign file is one error
    naming it, and a header declaring more data than the file holds is refused before numpy allocates it."""
    if _starts_with(require(path), ZIP_MAGIC):
        raise DataFormatError(f"{path}: an .npz archive, not one array (a .npy file of numpy.save)")
    try:
        with open(path, "rb") as f:
            check_npy_header(f, os.fstat(f.fileno()).st_size)
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except DataFormatError as e:
        raise DataFormatError(f"{path}: {e}") from None
    except Exception as e:  # truncated or damaged past its header
        raise DataFormatError(f"{path}: not a readable .npy array (numpy.save): {one_line(e)}") from None


def check_npy_header(f: BinaryIO, nbytes: int) -> None:
    try:
        dtype = npy_header(f, nbytes)[2]
    except ValueError as e:  # the header's own error, or a declared size the data does not have
        raise DataFormatError(str(e)) from None
    if dtype.hasobject:
        raise DataFormatError("holds Python objects (a pickle), not an array of numbers")


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


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
