"""A cortex-shaped brain (`--brain cortex`): visual areas as 2-D sheets whose organisation subjects share in degrees.

Each visual area is a pair of cortical sheets (one per hemisphere), the unit square in the world's template
coordinates. What lies on a sheet is a smooth field of the template, seen by each subject through its own smooth
warp of the sheet:

- the retinotopic map of early areas (V1-V4, EarlyVis): eccentricity grows log-uniformly along one axis (cortical
  magnification of the fovea), polar angle runs across the contralateral hemifield along the other;
- every tuning: the low-level channel weights, the category-embedding weights and the image-level weights. Each is a
  share `shared` of the template's field at the subject's warped position and the rest a field of the subject's own
  (both smooth, correlation length `TUNING_LENGTH` of the sheet, about 1 cm on a V1 of 9 cm), and low-level tuning
  keeps a share `COLUMN_SHARE` of voxel-to-voxel independence (orientation and colour columns are finer than a
  3 mm voxel, so each voxel samples them differently);
- the loadings on spontaneous sources: retinotopic voxels see the visual-field sources through their receptive
  field (so resting-state correlations follow retinotopy across areas, as in human V1-V3), the others load on smooth
  fields over their sheet. Trial noise and intrinsic resting-state fluctuations both come from these sources, so
  both are spatially smooth.

A subject has its own voxel count per area (its area sizes), laid on a grid over the sheet, embedded in a gently
folded volume and listed in volumetric raster order within each ROI, as a real ROI mask lists voxels (`voxel_order`:
`raster`; `template`: a serpentine path over the sheet's own grid, hemisphere by hemisphere, the same path for every
subject with that grid; `random`: a random order).

The resting state of the cortex world is a mixture: a share `rest_evoked` is the same encoding model driven by
random latent visual and semantic states that drift in time (spontaneous activity that resembles evoked activity,
as reported for cat V1 by Kenet et al. 2003 and for human visual cortex by the retinotopic and category-selective
organisation of its resting-state correlations), the rest intrinsic smooth fluctuations of the spontaneous sources.

`SHARING` holds the degree of sharing as one setting (`--sharing`): how far a subject's warp moves the template
(RMS, in sheet units), the share of each tuning that is the template's, and the evoked-like share of the resting
state. Its values and their sources are in data/README.md ("The cortex world").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import lfilter

from demo.simulation import brain


@dataclass(frozen=True)
class Sharing:
    """How much of the cortex's organisation subjects share."""

    warp: float  # RMS displacement of a subject's sheet against the template (sheet units; the sheet is 1 x 1)
    shared: float  # share of each tuning's variance that is the template's field (the rest is the subject's own)
    rest_evoked: float  # share of the spontaneous (non-white) resting-state variance that is evoked-like


SHARING = {
    # the template's organisation, barely moved: an upper end for what pre-training could transfer
    "high": Sharing(warp=0.02, shared=0.95, rest_evoked=0.8),
    # the default: see data/README.md for the facts each number comes from
    "realistic": Sharing(warp=0.06, shared=0.7, rest_evoked=0.5),
    # every subject its own cortex: its own tuning fields, its retinotopic map moved by a quarter of the sheet (so no
    # voxel-scale layout is common), a resting state of intrinsic fluctuations only: the lower end, where only generic
    # structure (smoothness, the retinotopic map's form) is common
    "none": Sharing(warp=0.25, shared=0.0, rest_evoked=0.0),
}
VOXEL_ORDERS = ("raster", "template", "random")
TUNING_LENGTH = 0.12  # correlation length of the tuning fields, in sheet units
WARP_LENGTH = 0.3  # correlation length of a subject's warp
COLUMN_SHARE = 0.3  # share of low-level tuning that is independent from voxel to voxel
FOLDS, FOLD_DEPTH = 1, 1.0  # the sheet folds this often along its long axis, this many voxels deep
FEATURES = 64  # random Fourier features per smooth field
NOISE_FWHM = 1.5  # spatial smoothness of the noise, in voxels (data/README.md)


def smooth_field(rng: np.random.Generator, outputs: int, length: float) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth field on the plane: f(points (N, 2)) -> (N, outputs), each output a Gaussian process of unit
    variance with a squared-exponential kernel of correlation length `length` (random Fourier features)."""
    omega = rng.normal(0, 1 / length, (FEATURES, 2))
    phase = rng.uniform(0, 2 * np.pi, FEATURES)
    amp = rng.normal(0, 1, (FEATURES, outputs)) * np.sqrt(2 / FEATURES)
    return lambda p: np.cos(p @ omega.T + phase) @ amp


@dataclass
class Template:
    """The world's cortex: per visual area, fields drawn once (lazily, each from its own seeded stream)."""

    rng_for: Callable[..., np.random.Generator]
    embed_dim: int

    def fields(self, area: str, who: tuple) -> dict[str, Callable]:
        """The tuning fields of `area` (an ROI block's key) for `who` (the template, or a subject's own)."""
        rng = self.rng_for("cortex", *who, area)
        n_img = len(brain.CHANNELS) * brain.IMAGE_GRID**2
        return {
            "tuning": smooth_field(rng, len(brain.CHANNELS), TUNING_LENGTH),
            "sem": smooth_field(rng, self.embed_dim, TUNING_LENGTH),
            "img": smooth_field(rng, n_img, TUNING_LENGTH),
            "spont": smooth_field(rng, brain.SPONT_GRID**2, 2 * TUNING_LENGTH),
        }


def sheet_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n voxels on one sheet: positions (n, 2) in [0, 1]^2 (u along the long axis) and integer cells (n, 2)."""
    rows = max(1, int(round(np.sqrt(n / 2))))
    cols = int(np.ceil(n / rows))
    cell = np.stack(np.divmod(np.arange(n), cols)[::-1], 1)  # (col, row), row-major fill
    return (cell + 0.5) / np.array([cols, rows]), cell


def retinotopic_map(pos: np.ndarray, hemifield: int) -> np.ndarray:
    """Receptive-field centres (n, 2) of sheet positions: u -> log-eccentricity, v -> polar angle (contralateral)."""
    ecc = 0.04 * (1.2 / 0.04) ** np.clip(pos[:, 0], 0, 1)
    angle = (np.clip(pos[:, 1], 0, 1) - 0.5) * np.pi + (np.pi if hemifield < 0 else 0.0)
    return np.stack([ecc * np.cos(angle), ecc * np.sin(angle)], 1)


def _mix(shared: float, template: np.ndarray, own: np.ndarray) -> np.ndarray:
    return np.sqrt(shared) * template + np.sqrt(1 - shared) * own


def population(
    template: Template,
    rng: np.random.Generator,
    subject: tuple,
    blocks: list[tuple[str, int]],
    snr: float,
    sharing: Sharing,
    voxel_order: str,
) -> brain.Population:
    """One subject's voxels in the ROI blocks `blocks` [(label, count), ...], in that order on the voxel axis.

    A label without a hemisphere prefix is split over both hemispheres; `subject` tags the subject's own fields."""
    parts, repeats = [], {}
    for label, n in blocks:
        area = brain.base_roi(label)
        repeats[label] = repeats.get(label, -1) + 1
        key = area if repeats[label] == 0 else f"{area}#{repeats[label]}"  # a label's later blocks: elsewhere
        sides = [label[:2]] if label[:2] in ("LH", "RH") else ["LH", "RH"]
        counts = np.diff(np.linspace(0, n, len(sides) + 1).round().astype(int))
        block = [_sheet(template, rng, subject, area, key, s, k, sharing) for s, k in zip(sides, counts, strict=True)]
        merged = {key: np.concatenate([b[key] for b in block]) for key in block[0]}
        parts.append((label, _ordered(merged, voxel_order, rng)))
    for i, (_, p) in enumerate(parts):
        p["sheet"] = p["sheet"] + 2 * i  # sheets numbered over the ROI blocks
    roi = np.concatenate([[label] * len(p["pos"]) for label, p in parts])
    cat = {key: np.concatenate([p[key] for _, p in parts]) for key in parts[0][1]}
    gain = np.array([brain.CHANNEL_GAIN.get(brain.base_roi(r), (1.0,) * len(brain.CHANNELS)) for r in roi])
    reliability = np.array([brain.SNR_GAIN.get(brain.base_roi(r), 1.0) for r in roi])
    centre, sigma = cat["centre"], cat["sigma"]
    retino = ~np.isnan(centre[:, 0])
    spont = brain.spont_loadings(centre, sigma, rng)  # visual-field sources (non-retinotopic rows: replaced below)
    field = cat["spont"] / np.linalg.norm(cat["spont"], axis=1, keepdims=True)  # smooth over the sheet
    glob = spont[:, -1:]  # each voxel's loading on the global signal
    spont[~retino] = np.concatenate([field[~retino] * np.sqrt(1 - glob[~retino] ** 2), glob[~retino]], 1)
    return brain.Population(
        roi=roi,
        centre=centre,
        sigma=sigma,
        tuning=cat["tuning"] * gain,
        sem_weights=cat["sem"],
        img_weights=cat["img"],
        snr=snr * reliability * np.exp(rng.normal(0, 0.6, len(roi))),
        spont=spont,
        smooth_noise=point_spread(cat["sheet"], cat["cell"]),
    )


def point_spread(sheet: np.ndarray, cell: np.ndarray, fwhm: float = NOISE_FWHM) -> Callable[[np.ndarray], np.ndarray]:
    """white (T, V) -> noise smoothed on each sheet's voxel grid by a Gaussian of `fwhm` voxels, unit variance per
    voxel (the exact variance of each voxel, edges included, divided out)."""
    sigma = fwhm / np.sqrt(8 * np.log(2))
    groups = []
    for s in np.unique(sheet):
        idx = np.flatnonzero(sheet == s)
        shape = tuple(cell[idx].max(0)[::-1] + 1)  # (rows, cols)
        impulses = np.zeros((len(idx), *shape))
        impulses[np.arange(len(idx)), cell[idx, 1], cell[idx, 0]] = 1.0
        spread = gaussian_filter(impulses, (0, sigma, sigma), mode="constant")[:, cell[idx, 1], cell[idx, 0]]
        groups.append((idx, cell[idx], shape, np.sqrt((spread**2).sum(0))))

    def smooth(white: np.ndarray) -> np.ndarray:
        out = np.empty_like(white)
        for idx, c, shape, sd in groups:
            grid = np.zeros((len(white), *shape), dtype=white.dtype)
            grid[:, c[:, 1], c[:, 0]] = white[:, idx]
            out[:, idx] = gaussian_filter(grid, (0, sigma, sigma), mode="constant")[:, c[:, 1], c[:, 0]] / sd
        return out

    return smooth


def _sheet(
    template: Template,
    rng: np.random.Generator,
    subject: tuple,
    area: str,
    key: str,
    side: str,
    n: int,
    sharing: Sharing,
) -> dict[str, np.ndarray]:
    """One hemisphere's sheet of `area` (its fields drawn under `key`) with n voxels: positions, volume cells,
    receptive fields and tunings."""
    pos, cell = sheet_grid(n)
    warp = smooth_field(rng, 2, WARP_LENGTH)(pos) * sharing.warp  # unit-variance field: RMS `warp` along each axis
    seen = pos + warp
    own = template.fields(key, ("subject", *subject, side))
    shared = template.fields(key, ("template", side)) if sharing.shared > 0 else own
    mixed = {k: _mix(sharing.shared, shared[k](seen), own[k](pos)) for k in ("tuning", "sem", "img", "spont")}
    column = rng.normal(0, 1, mixed["tuning"].shape)
    mixed["tuning"] = np.sqrt(1 - COLUMN_SHARE) * mixed["tuning"] + np.sqrt(COLUMN_SHARE) * column
    if area in brain.RF_SIZE:
        hemifield = 1 if side == "LH" else -1
        centre = retinotopic_map(seen, hemifield)
        a, b = brain.RF_SIZE[area]
        sigma = (a + b * np.linalg.norm(centre, axis=1)) * np.exp(rng.normal(0, 0.1, n))
    else:
        centre, sigma = np.full((n, 2), np.nan), np.full(n, np.nan)
    # the volume: hemispheres side by side along x, the sheet folded in depth along its long axis
    x = cell[:, 0] if side == "RH" else -1 - cell[:, 0]
    z = np.round(FOLD_DEPTH * np.sin(2 * np.pi * FOLDS * pos[:, 0])).astype(int)
    volume = np.stack([z, cell[:, 1], x], 1)
    sheet = np.full(n, 0 if side == "LH" else 1)
    return {"pos": pos, "volume": volume, "cell": cell, "sheet": sheet, "centre": centre, "sigma": sigma, **mixed}


def _ordered(part: dict[str, np.ndarray], voxel_order: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The ROI's voxels in `voxel_order`: volumetric raster (z, y, x), a serpentine over the template sheet, random."""
    if voxel_order == "raster":
        z, y, x = part["volume"].T
        order = np.lexsort((x, y, z))
    elif voxel_order == "template":
        (u, v), side = part["pos"].T, part["sheet"]
        strip = np.minimum((v * 8).astype(int), 7)
        order = np.lexsort((np.where(strip % 2, -u, u), strip, side))
    else:
        order = rng.permutation(len(part["pos"]))
    return {k: v[order] for k, v in part.items()}


def resting_state(
    pop: brain.Population,
    rng: np.random.Generator,
    frames: int,
    noise: float,
    evoked: float,
    embed_dim: int,
    tr: float = 0.75,
    timescale: float = 8.0,
) -> np.ndarray:
    """Resting state (frames, V): a share `evoked` of the non-white variance is the encoding model driven by drifting
    random visual and semantic states; the rest the intrinsic fluctuations (`brain.resting_state` without white
    noise); `noise` the white share of the whole."""
    intrinsic = brain.resting_state(pop, rng, frames, noise=0.0, tr=tr, timescale=timescale)
    intrinsic /= intrinsic.std(0, keepdims=True)
    mix = intrinsic
    if evoked > 0:
        phi = np.exp(-tr / timescale)
        coarse = _drift(rng, (frames, len(brain.CHANNELS) * 8 * 8), phi).reshape(frames, len(brain.CHANNELS), 8, 8)
        up = brain.FEATURE_GRID // 8
        feats = np.kron(coarse, np.ones((up, up))).astype(np.float32)  # coarse random feature maps (8 x 8 blocks)
        semantic = _drift(rng, (frames, embed_dim), phi)  # one random semantic state for every ROI (no ROI gains)
        drive = brain.stimulus_drive_from(pop, feats, lambda gains: semantic, np.ones(frames, dtype=bool))
        mix = np.sqrt(evoked) * drive + np.sqrt(1 - evoked) * intrinsic
    x = np.sqrt(1 - noise) * mix + np.sqrt(noise) * pop.smooth_noise(rng.standard_normal(mix.shape))
    return (x * np.exp(rng.normal(0, 0.2, len(pop.roi)))).astype(np.float32)


def _drift(rng: np.random.Generator, shape: tuple[int, int], phi: float, burn_in: int = 200) -> np.ndarray:
    """Unit-variance AR(1) series (shape[0] frames of shape[1] independent processes) with coefficient phi."""
    e = rng.standard_normal((shape[0] + burn_in, shape[1])) * np.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], e, axis=0)[burn_in:]
