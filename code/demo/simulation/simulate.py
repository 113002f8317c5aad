"""A simulated brain, written in the published HCP, GOD (Kamitani) and BOLD5000 layouts so the real readers run on it.

    python code/make_synthetic_data.py --out data/synthetic/tiny --size tiny             # for tests
    python code/make_synthetic_data.py --out data/synthetic/demo --size demo --seed 0    # the `make demo` data
    python code/make_synthetic_data.py --out data/synthetic/full --size full --hcp_subjects 1200
    python code/make_synthetic_data.py --out DIR --size demo --snr 0.5 --voxel_scale 0.5  # change a knob

Stimuli are procedural images in categories that compose a shape, colour, texture and background
(`demo/simulation/stimuli.py`); each subject has a fixed encoding model — retinotopic, low-level early
areas and category-driven higher areas — plus per-trial noise; HCP subjects show spontaneous,
spatially and temporally correlated activity on the same retinotopic organisation
(`demo/simulation/brain.py`). The layouts are written by `demo/simulation/writers.py`; data/README.md
describes the files and every knob (`demo/simulation/spec.py`).

`draw_class_images(out, per_class)` draws new images of every GOD class of a simulation (its "ImageNet").
The same seed gives identical arrays. The script refuses to write where data already are unless
`--overwrite`, and even then deletes only the files its `simulation.json` lists, refusing when the folders
hold anything else, when a listed path leads outside its layout folders (absolute, `..`, through a link) or when
a layout folder is a link.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path, PurePosixPath

import numpy as np

from demo.simulation import brain, stimuli, writers
from demo.simulation.spec import SIZES, SimSpec
from errors import DEBUG_HELP, ArgumentParser, UserError

log = logging.getLogger("mindvis.simulation")
LAYOUTS = ("HCP", "Kamitani", "BOLD5000", "NSD")
MARKER = "simulation.json"


def _seeded(seed: int) -> Callable[..., np.random.Generator]:
    """rng_for(*tags): an independent generator per tag tuple, so each part depends only on (seed, tags)."""

    def rng_for(*tags) -> np.random.Generator:
        return np.random.default_rng([seed, *(zlib.crc32(str(t).encode()) for t in tags)])

    return rng_for


STAGING = ".simulating"  # written here first, moved into place when complete


class SimulationExistsError(UserError, FileExistsError):
    """The output folder holds data; replacing it needs --overwrite, and never touches files we did not write."""


def _files_under(out: Path, names: tuple[str, ...]) -> set[str]:
    """Every file and link below out/<name> for the given names, as paths relative to `out` (links not entered)."""
    found = set()
    for name in names:
        top = out / name
        if top.is_symlink():
            found.add(name)
        elif top.is_dir():
            found |= {p.relative_to(out).as_posix() for p in top.rglob("*") if p.is_symlink() or not p.is_dir()}
    return found


def _listed_files(out: Path) -> set[str]:
    """The files `simulation.json` lists, each checked to lie in a layout folder of `out` (relative, no `..`, no
    link on the way); anything else refuses the overwrite before a file is deleted."""
    marker = out / MARKER
    try:
        listed = json.loads(marker.read_text()).get("files", [])
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        listed = None
    if not isinstance(listed, list) or not all(isinstance(rel, str) for rel in listed):
        raise SimulationExistsError(
            f"{marker}: not the simulator's record ('files' must list paths); refusing to "
            "delete anything: remove the data yourself or choose another --out"
        )
    root = out.resolve()
    for rel in listed:
        parts = PurePosixPath(rel).parts
        inside = len(parts) > 1 and parts[0] in LAYOUTS and ".." not in parts and not PurePosixPath(rel).is_absolute()
        if not inside or (out / rel).parent.resolve() != root.joinpath(*parts[:-1]):
            raise SimulationExistsError(
                f"{marker} lists {rel!r}, outside the simulation's folders {LAYOUTS} of {out} "
                "(or through a link); refusing to delete anything: remove the files yourself "
                "or choose another --out"
            )
    return set(listed)


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to write over data unless `overwrite`; then delete only the files the last simulation listed."""
    present = [name for name in (*LAYOUTS, MARKER, STAGING) if (out / name).exists() or (out / name).is_symlink()]
    if not present:
        return
    if not overwrite:
        raise SimulationExistsError(
            f"{out} already holds data ({', '.join(present)}); pass --overwrite to replace a simulation"
        )
    if not (out / MARKER).is_file():
        raise SimulationExistsError(
            f"{out} holds data that make_synthetic_data.py did not write (no {MARKER}); "
            "refusing to delete it even with --overwrite: remove it yourself or choose another --out"
        )
    linked = [name for name in (*LAYOUTS, STAGING) if (out / name).is_symlink()]
    if linked:
        raise SimulationExistsError(
            f"{out}: {', '.join(linked)} is a link, which the simulator never writes; "
            "refusing to replace it even with --overwrite: choose another --out"
        )
    listed = _listed_files(out)
    foreign = sorted(_files_under(out, LAYOUTS) - listed)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise SimulationExistsError(
            f"{out} holds files the simulation did not write: {', '.join(foreign[:5])}{more}; refusing to "
            "replace it even with --overwrite: move them away or choose another --out"
        )
    for rel in listed:
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(out / STAGING, ignore_errors=True)  # an interrupted run's own scratch folder
    for name in LAYOUTS:  # now-empty folders, deepest first
        for folder in sorted((p for p in (out / name).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            folder.rmdir()
        if (out / name).is_dir():
            (out / name).rmdir()
    (out / MARKER).unlink()


def _write_marker(out: Path, size: str, seed: int, spec: SimSpec, files: list[str] | None) -> None:
    """simulation.json: settings, and once every file is in place `"complete": true` and the list of files."""
    tmp = out / (MARKER + ".tmp")
    info = {
        "generator": "code/make_synthetic_data.py",
        "size": size,
        "seed": seed,
        "complete": files is not None,
        "files": files or [],
        "settings": asdict(spec),
    }
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(out / MARKER)


def make_synthetic_data(
    out: str | Path,
    size: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
    hcp_subjects: int | None = None,
    **overrides,
) -> Path:
    """Simulate HCP/, Kamitani/ and BOLD5000/ under `out` at a preset size; returns `out`.

    `overrides` replace settings of the preset (any SimSpec field, e.g. snr=0.5, voxel_scale=0.2).
    `out/simulation.json` records the settings and, once everything is in place, `"complete": true` and the list
    of files written (which is all that `overwrite` ever deletes).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if hcp_subjects is not None:
        overrides["hcp_subjects"] = hcp_subjects
    spec = SIZES[size].with_overrides(**overrides)
    out = Path(out)
    _prepare(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, size, int(seed), spec, files=None)
    rng_for = _seeded(int(seed))
    space = brain.SemanticSpace.sample(rng_for("semantic space"), spec.embed_dim)  # shared by every subject
    start = time.time()
    log.info("simulating the %s data set in %s (seed %d)", size, out, seed)
    staging = out / STAGING  # an interrupted run leaves only this folder and an incomplete marker
    writers.write_god(staging / "Kamitani" / "npz", spec, space, rng_for)
    writers.write_bold5000(staging / "BOLD5000", spec, space, rng_for)
    writers.write_hcp(staging / "HCP" / "npz", spec, rng_for)
    if spec.nsd_subjects:
        writers.write_nsd(staging / "NSD", spec, space, rng_for)
    files = sorted(_files_under(staging, LAYOUTS))
    for name in LAYOUTS:
        if (staging / name).exists():
            (staging / name).replace(out / name)
    staging.rmdir()
    _write_marker(out, size, int(seed), spec, files=files)
    log.info("simulated %s data written to %s in %.1f s", size, out, time.time() - start)
    return out


def write_heldout_hcp(data: str | Path, out: str | Path, subjects: int) -> Path:
    """`subjects` more HCP subjects of the simulation in `data`, never among its own (held out from Stage A1), in the
    HCP layout under `out` (`out/<subject>/HCP_visual_voxel.npz`); returns `out`. Refuses an `out` that holds files."""
    spec, seed = _recorded(data)
    out = Path(out)
    if out.is_symlink() or (out.exists() and any(out.iterdir())):
        raise SimulationExistsError(f"{out} already holds files; held-out subjects go to an empty folder")
    counts = writers.hcp_counts(spec)
    for i in range(spec.hcp_subjects, spec.hcp_subjects + subjects):
        writers.write_hcp_subject(out / writers.hcp_subject_name(i), spec, _seeded(seed), i, counts)
    return out


def _recorded(out: str | Path) -> tuple[SimSpec, int]:
    """The settings and seed a finished simulation in `out` recorded in its simulation.json."""
    marker = Path(out) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} not found: {out} is not a folder written by make_synthetic_data.py")
    info = json.loads(marker.read_text())
    return SimSpec(**{**info["settings"], "progress": False}), int(info["seed"])


def draw_class_images(
    out: str | Path, per_class: int, seed: int = 0, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh images of every GOD class of the simulation in `out`: uint8 (C * per_class, S, S, 3), labels.

    The simulated world's "ImageNet": new draws from each category (class-index order, test classes
    included), never the GOD stimuli themselves, for models that stand in for the ImageNet-trained
    ones (a label-conditioned generator, a classifier). `seed` picks the draw.
    """
    spec, world_seed = _recorded(out)
    rng_for = _seeded(world_seed)
    cats, _ = writers.god_categories(spec, rng_for)
    labels = np.repeat(np.arange(len(cats)), per_class)
    images = stimuli.render(
        cats, stimuli.sample_images(rng_for("god", "class images", seed), cats, labels), image_size or spec.image_size
    )
    return images, labels


def main(argv: list[str] | None = None) -> None:
    """Command line: simulate one preset size, with any knob overridden by a flag."""
    parser = ArgumentParser(
        prog="make_synthetic_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder that receives HCP/, Kamitani/, BOLD5000/, NSD/"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a simulation already in --out")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    knobs = parser.add_argument_group("settings (default: the preset of --size; see data/README.md)")
    for f in fields(SimSpec):
        if f.name != "progress":
            knobs.add_argument(f"--{f.name}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(SimSpec) if getattr(args, f.name, None) is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        make_synthetic_data(args.out, args.size, args.seed, args.overwrite, **overrides)
    except (ValueError, TypeError) as e:  # settings that cannot be simulated
        parser.error(str(e))
