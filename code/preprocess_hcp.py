"""Turn HCP resting-state fMRI plus a visual-area atlas into the published `HCP_visual_voxel.npz` files.

    python code/preprocess_hcp.py --out data/HCP/npz --atlas visual_areas_2mm.nii.gz \\
        --fmri_glob "HCP_1200/*/MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR.nii.gz"
    python code/preprocess_hcp.py --out data/HCP/npz --atlas visual_areas.dlabel.nii \\
        --labels V1=1,2 V2=3,4 V3=5,6 V4=7 \\
        --fmri_glob "HCP_1200/*/MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii"

Inputs (read with nibabel): one resting-state series per subject, either a 4-D NIfTI volume (x, y, z, time) or
a CIFTI dense time series (`.dtseries.nii`, time x grayordinates); and an atlas of integer labels on the same
grid: a 3-D NIfTI volume with the fMRI's shape and affine (resample it first, nearest neighbour, if it is not),
or for CIFTI a `.dlabel.nii` / `.dscalar.nii` over the same grayordinates. `--labels` gives the label values of
each area, several values separated by commas; the default V1=1 V2=2 V3=3 V4=4 fits an atlas labelled that way.
Check your atlas's lookup table: e.g. the Wang et al. (2015) maximum-probability atlas numbers V1v, V1d, V2v,
V2d, V3v, V3d, hV4 as 1..7, hence the second example.

Output, as `docs/formats.md` describes: `<out>/<subject>/HCP_visual_voxel.npz` with keys V1, V2, V3, V4, each
float32 (T, n_voxels of that area), voxels in the atlas's order (C order of the volume, or grayordinate order).
No filtering or normalisation: the reader averages 8 s windows and z-scores each subject. The subject id is the
first match of `--subject_pattern` (default: the six-digit HCP ids) in the file's path. Existing files are kept
unless `--overwrite`; every file is written atomically.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from errors import DEBUG_HELP, ArgumentParser, UserError, run_main

log = logging.getLogger("mindvis.preprocess_hcp")

ROIS = ("V1", "V2", "V3", "V4")
DEFAULT_LABELS = {"V1": (1,), "V2": (2,), "V3": (3,), "V4": (4,)}
HCP_FILE = "HCP_visual_voxel.npz"
MIN_FRAMES = 10  # one 8 s window at TR 0.75 s, the least the HCP reader accepts
CHUNK_FRAMES = 64  # frames read at once from a volume series (bounded memory for 1,200-frame files)


class PreprocessError(UserError, ValueError):
    """An input file does not hold what the preprocessing needs; the message names the file."""


@dataclass
class Atlas:
    """Integer labels over the fMRI's spatial grid (a volume) or its grayordinates (CIFTI)."""

    path: Path
    values: np.ndarray  # (x, y, z) for a volume, (G,) for CIFTI
    affine: np.ndarray | None = None  # volume only
    brain_models: object = None  # CIFTI only: the BrainModelAxis the labels are defined on

    @property
    def is_cifti(self) -> bool:
        return self.affine is None


def parse_labels(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """['V1=1,2', 'V2=3', ...] -> {'V1': (1, 2), 'V2': (3,), ...}; must name V1..V4 once each, no value twice."""
    labels = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or name not in ROIS or name in labels:
            raise PreprocessError(f"--labels: expected each of {ROIS} once as NAME=v[,v...], got {spec!r}")
        try:
            labels[name] = tuple(int(v) for v in values.split(","))
        except ValueError:
            raise PreprocessError(f"--labels: label values must be integers, got {spec!r}") from None
    if sorted(labels) != sorted(ROIS):
        raise PreprocessError(f"--labels must give all of {ROIS}, got {sorted(labels)}")
    flat = [v for vals in labels.values() for v in vals]
    if len(flat) != len(set(flat)):
        raise PreprocessError(f"--labels: a label value belongs to two areas: {specs}")
    return labels


def _nib_load(path: Path, **kwargs):
    """nibabel's image of `path`, or PreprocessError naming the file when it is not a readable NIfTI/CIFTI."""
    try:
        return nib.load(path, **kwargs)
    except (nib.filebasedimages.ImageFileError, OSError, ValueError, EOFError) as e:
        raise PreprocessError(f"{path}: not a readable NIfTI/CIFTI file: {e}") from None


def load_atlas(path: str | os.PathLike) -> Atlas:
    """Read a NIfTI label volume (3-D, or 4-D with one volume) or a CIFTI dlabel/dscalar map."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"atlas not found: {path}")
    img = _nib_load(path)
    if isinstance(img, nib.Cifti2Image):
        data = np.asarray(img.dataobj)
        if data.ndim != 2 or data.shape[0] != 1:
            raise PreprocessError(f"{path}: a CIFTI atlas must hold one map (1, grayordinates), got {data.shape}")
        values, axes = data[0], img.header.get_axis(1)
    else:
        data = np.asarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise PreprocessError(f"{path}: an atlas volume must be 3-D (x, y, z), got shape {data.shape}")
        values, axes = data, None
    if not np.allclose(values, np.round(values), atol=1e-3):
        raise PreprocessError(f"{path}: atlas values must be integer labels (threshold a probabilistic atlas first)")
    return Atlas(path, np.round(values).astype(np.int64), None if axes is not None else img.affine, axes)


def roi_indices(atlas: Atlas, labels: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Flat indices (atlas order) of each area's voxels; an area without any voxel is an error."""
    flat = atlas.values.ravel()
    out = {}
    for roi in ROIS:
        out[roi] = np.flatnonzero(np.isin(flat, labels[roi]))
        if not len(out[roi]):
            present = np.unique(flat)
            raise PreprocessError(
                f"{atlas.path}: no voxel carries the {roi} label(s) {list(labels[roi])}; the atlas holds labels "
                f"{present[:20].tolist()}{' ...' if len(present) > 20 else ''} (set them with --labels)"
            )
    return out


def _read_volume(img: nib.Nifti1Image, path: Path, atlas: Atlas, rows: np.ndarray) -> np.ndarray:
    """The series of the given voxels (flat C-order indices) of a 4-D volume: (T, len(rows)) float32."""
    if img.ndim != 4:
        raise PreprocessError(
            f"{path}: expected a 4-D (x, y, z, time) fMRI series, got a {img.ndim}-D image {img.shape}"
        )
    if img.shape[:3] != atlas.values.shape:
        raise PreprocessError(
            f"{path}: fMRI grid {img.shape[:3]} does not match the atlas grid {atlas.values.shape} ({atlas.path}); "
            "resample the atlas to the fMRI (nearest neighbour)"
        )
    if not np.allclose(img.affine, atlas.affine, atol=1e-3):
        raise PreprocessError(
            f"{path}: its affine differs from the atlas's ({atlas.path}), so the grids are not aligned:\n"
            f"{img.affine}\nvs\n{atlas.affine}\nresample the atlas to the fMRI (nearest neighbour)"
        )
    frames = img.shape[3]
    out = np.empty((frames, len(rows)), dtype=np.float32)
    for start in range(0, frames, CHUNK_FRAMES):  # bounded memory: a chunk of whole volumes at a time
        block = np.asarray(img.dataobj[..., start : start + CHUNK_FRAMES], dtype=np.float32)  # (x, y, z, c)
        out[start : start + block.shape[3]] = block.reshape(-1, block.shape[3])[rows].T
    return out


def _read_cifti(img: nib.Cifti2Image, path: Path, atlas: Atlas, rows: np.ndarray) -> np.ndarray:
    """The series of the given grayordinates of a CIFTI dense time series: (T, len(rows)) float32."""
    if not atlas.is_cifti:
        raise PreprocessError(
            f"{path}: a CIFTI fMRI needs a CIFTI atlas (.dlabel.nii / .dscalar.nii), got {atlas.path}"
        )
    data = np.asarray(img.dataobj, dtype=np.float32)
    axis = img.header.get_axis(1)
    if data.ndim != 2 or data.shape[1] != len(atlas.values) or axis != atlas.brain_models:
        raise PreprocessError(
            f"{path}: its {data.shape[-1]} grayordinates are not those of the atlas ({len(atlas.values)}, "
            f"{atlas.path}); use an atlas defined on the same CIFTI space"
        )
    return data[:, rows]


def extract_rois(fmri_path: str | os.PathLike, atlas: Atlas, labels: dict[str, tuple[int, ...]]) -> dict:
    """{'V1'..'V4': float32 (T, n_area_voxels)} from one subject's series."""
    path = Path(fmri_path)
    index = roi_indices(atlas, labels)
    rows = np.concatenate([index[roi] for roi in ROIS])
    img = _nib_load(path, keep_file_open=True)  # chunks read forward through one open (gzip) stream
    if isinstance(img, nib.Cifti2Image):
        series = _read_cifti(img, path, atlas, rows)
    elif atlas.is_cifti:
        raise PreprocessError(f"{path}: a volume fMRI needs a NIfTI atlas volume, got the CIFTI atlas {atlas.path}")
    else:
        series = _read_volume(img, path, atlas, rows)
    if len(series) < MIN_FRAMES:
        raise PreprocessError(f"{path}: {len(series)} frames, fewer than one 8 s window ({MIN_FRAMES} frames)")
    bad = ~np.isfinite(series)
    if bad.any():
        raise PreprocessError(f"{path}: {int(bad.sum())} NaN/inf values inside the visual areas")
    bounds = np.cumsum([len(index[roi]) for roi in ROIS])[:-1]
    return dict(zip(ROIS, np.split(series, bounds, axis=1), strict=True))


def subject_id(path: str | os.PathLike, pattern: str) -> str:
    """The first match of `pattern` in the path (its first group if it has one)."""
    match = re.search(pattern, str(path))
    if not match:
        raise PreprocessError(f"{path}: no subject id matching --subject_pattern {pattern!r} in the path")
    return match.group(1) if match.groups() else match.group(0)


def _save_npz(arrays: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def preprocess(
    fmri_paths: list[str | os.PathLike],
    atlas_path: str | os.PathLike,
    out: str | os.PathLike,
    labels: dict[str, tuple[int, ...]] | None = None,
    subject_pattern: str = r"\d{6}",
    overwrite: bool = False,
) -> list[Path]:
    """Write `<out>/<subject>/HCP_visual_voxel.npz` for every fMRI file; returns the files written."""
    if not fmri_paths:
        raise PreprocessError("--fmri_glob: no fMRI files match it (quote the pattern so the shell leaves it alone)")
    atlas = load_atlas(atlas_path)
    labels = labels or DEFAULT_LABELS
    subjects = {}
    for path in sorted(map(Path, fmri_paths)):
        sub = subject_id(path, subject_pattern)
        if sub in subjects:
            raise PreprocessError(f"two files for subject {sub}: {subjects[sub]} and {path}; narrow --fmri_glob")
        subjects[sub] = path
    written = []
    for sub, path in subjects.items():
        target = Path(out) / sub / HCP_FILE
        if target.exists() and not overwrite:
            log.info("%s exists, skipped (--overwrite replaces it)", target)
            continue
        rois = extract_rois(path, atlas, labels)
        _save_npz(rois, target)
        log.info("%s: %s -> %s", sub, ", ".join(f"{k} {v.shape}" for k, v in rois.items()), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    """Command line: see the module docstring."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fmri_glob", required=True, help="glob of the per-subject fMRI files (quote it)")
    parser.add_argument("--atlas", required=True, help="integer label atlas on the fMRI's grid")
    parser.add_argument("--out", default="data/HCP/npz", help="output folder, one subfolder per subject")
    parser.add_argument("--labels", nargs=4, metavar="ROI=v[,v]", default=None, help="default: V1=1 V2=2 V3=3 V4=4")
    parser.add_argument("--subject_pattern", default=r"\d{6}", help="regex finding the subject id in a path")
    parser.add_argument("--overwrite", action="store_true", help="replace existing npz files")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        labels = parse_labels(args.labels) if args.labels else None
        return preprocess(
            sorted(glob.glob(args.fmri_glob, recursive=True)),
            args.atlas,
            args.out,
            labels,
            args.subject_pattern,
            args.overwrite,
        )
    except PreprocessError as e:
        if str(e).startswith("--"):  # a flag's value: a usage error
            parser.error(str(e))
        raise


if __name__ == "__main__":
    run_main(main)
