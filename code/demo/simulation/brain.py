"""The simulated subject: a fixed encoding model from stimulus to voxels, and its spontaneous activity.

- Early visual voxels (V1-V4, BOLD5000 EarlyVis) have Gaussian receptive fields at random positions
  of the visual field (more voxels near the fovea; left hemisphere sees the right hemifield when a
  hemisphere is given), with sizes growing along the hierarchy, and each is tuned to a mix of local
  luminance, red-green, blue-yellow and horizontal/vertical edge energy.
- Higher voxels (LOC, FFA, PPA, the rest of HVC, OPA, RSC) respond to a category embedding (a
  weighted sum of the attributes' embeddings plus a category-specific part, each ROI weighting the
  attributes differently: PPA backgrounds, LOC shape...) and to coarse image-level features.
- Trials add Gaussian noise, part of it spatially structured: the same spontaneous activity that
  the resting-state series show (a smooth random field over the visual field seen through the
  receptive fields, plus a global signal).
Within an early ROI, voxels are ordered along a cortex-like path (strips of polar angle traversed in
log-eccentricity), so neighbouring voxels have neighbouring receptive fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from demo.simulation.numerics import exact_matmul
from demo.simulation.stimuli import ATTRIBUTE_SIZES

FEATURE_GRID = 32  # feature maps the receptive fields pool: FEATURE_GRID x FEATURE_GRID over the image
CHANNELS = ("luminance", "red-green", "blue-yellow", "horizontal edges", "vertical edges")
IMAGE_GRID = 4  # image-level features of higher areas: the channels pooled on a 4x4 grid
SPONT_GRID = 9  # the spontaneous field: Gaussian bumps on a 9x9 grid over the visual field
SPONT_WIDTH = 0.2
GLOBAL_SHARE = 0.1  # variance share of the global signal in spontaneous activity

RF_SIZE = {
    "V1": (0.04, 0.10),
    "V2": (0.06, 0.16),
    "V3": (0.09, 0.24),
    "V4": (0.14, 0.36),
    "EarlyVis": (0.06, 0.17),
}  # sigma = a + b * eccentricity, in image half-widths
CHANNEL_GAIN = {
    "V1": (1.0, 0.6, 0.6, 1.0, 1.0),
    "V2": (1.0, 0.7, 0.7, 0.9, 0.9),
    "V3": (1.0, 0.8, 0.8, 0.8, 0.8),
    "V4": (0.7, 1.0, 1.0, 0.6, 0.6),
    "EarlyVis": (1.0, 0.7, 0.7, 0.9, 0.9),
}
# variance shares of (low-level, category, image-level) drive
MIX = {
    "V1": (1.0, 0.0, 0.0),
    "V2": (1.0, 0.0, 0.0),
    "V3": (0.95, 0.05, 0.0),
    "V4": (0.7, 0.2, 0.1),
    "EarlyVis": (1.0, 0.0, 0.0),
    "LOC": (0.0, 0.65, 0.35),
    "FFA": (0.0, 0.75, 0.25),
    "PPA": (0.0, 0.6, 0.4),
    "HVC": (0.0, 0.5, 0.5),
    "OPA": (0.0, 0.5, 0.5),
    "RSC": (0.0, 0.6, 0.4),
    "other": (0.0, 0.0, 0.0),
}
# weights of (shape, colour, texture, background type, background tint, category's own part) per ROI
CATEGORY_GAIN = {
    "V3": (0.6, 0.8, 0.5, 0.4, 0.5, 0.3),
    "V4": (0.6, 0.8, 0.5, 0.4, 0.5, 0.3),
    "LOC": (1.0, 0.5, 0.7, 0.2, 0.2, 0.5),
    "FFA": (0.9, 0.9, 0.3, 0.1, 0.2, 0.5),
    "PPA": (0.2, 0.3, 0.3, 1.0, 0.9, 0.5),
    "HVC": (0.6, 0.6, 0.6, 0.6, 0.6, 0.5),
    "OPA": (0.4, 0.2, 0.3, 1.0, 0.5, 0.5),
    "RSC": (0.2, 0.2, 0.2, 1.0, 0.6, 0.5),
}
SNR_GAIN = {"HVC": 0.5, "other": 0.0}  # relative to the visual-cortex SNR (HVC: the rest of the HVC region)


def base_roi(label: str) -> str:
    """ROI name without a hemisphere prefix ('LHEarlyVis' -> 'EarlyVis')."""
    return label[2:] if label[:2] in ("LH", "RH") else label


# ----------------------------------------------------------------------------------------------------
# Stimulus features
# ----------------------------------------------------------------------------------------------------


def low_level_features(images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Local feature maps (N, 5, G, G) of uint8 images (N, S, S, 3), S a multiple of 64; channels CHANNELS."""
    n, size = images.shape[:2]
    if size % 64:
        raise ValueError(f"image size must be a multiple of 64, got {size}")
    k = size // 64
    out = np.empty((n, len(CHANNELS), FEATURE_GRID, FEATURE_GRID), dtype=np.float32)
    for s in range(0, n, batch):
        x = images[s : s + batch].astype(np.float32).reshape(-1, 64, k, 64, k, 3).mean(axis=(2, 4)) / 255.0
        lum = x.mean(-1)
        ex = np.abs(np.diff(lum, axis=1, append=lum[:, -1:]))  # change along y: horizontal edges
        ey = np.abs(np.diff(lum, axis=2, append=lum[:, :, -1:]))
        maps = np.stack([lum, x[..., 0] - x[..., 1], x[..., 2] - 0.5 * (x[..., 0] + x[..., 1]), 4 * ex, 4 * ey], 1)
        out[s : s + batch] = maps.reshape(-1, len(CHANNELS), FEATURE_GRID, 2, FEATURE_GRID, 2).mean(axis=(3, 5))
    return out


def image_level_features(feats: np.ndarray) -> np.ndarray:
    """Coarse features (N, 5 * 4 * 4): the feature maps pooled on an IMAGE_GRID grid."""
    n, c, g, _ = feats.shape
    k = g // IMAGE_GRID
    return feats.reshape(n, c, IMAGE_GRID, k, IMAGE_GRID, k).mean(axis=(3, 5)).reshape(n, -1)


@dataclass(frozen=True)
class SemanticSpace:
    """Embeddings of every attribute value, (n_values, D) per attribute, shared by all subjects."""

    tables: tuple[np.ndarray, ...]

    @classmethod
    def sample(cls, rng: np.random.Generator, dim: int) -> SemanticSpace:
        """Independent standard-normal embeddings of dimension `dim`."""
        return cls(tuple(rng.normal(0, 1, (k, dim)) for k in ATTRIBUTE_SIZES))

    def embed(self, attrs: np.ndarray, own: np.ndarray, gains: tuple[float, ...]) -> np.ndarray:
        """Category embeddings (N, D) from attribute indices (N, 5) and category-specific parts (N, D)."""
        e = sum(g * t[attrs[:, a]] for a, (g, t) in enumerate(zip(gains[:-1], self.tables, strict=True)))
        return e + gains[-1] * own


# ----------------------------------------------------------------------------------------------------
# Voxel populations
# ----------------------------------------------------------------------------------------------------


@dataclass
class Population:
    """One subject's voxels, in voxel-axis order: ROI label, receptive field, tuning and noise."""

    roi: np.ndarray  # (V,) str
    centre: np.ndarray  # (V, 2) receptive-field centre (NaN for non-retinotopic voxels)
    sigma: np.ndarray  # (V,)
    tuning: np.ndarray  # (V, 5) weights of the low-level channels
    sem_weights: np.ndarray  # (V, D) weights of the category embedding
    img_weights: np.ndarray  # (V, 5 * 4 * 4) weights of the image-level features
    snr: np.ndarray  # (V,) signal variance / noise variance
    spont: np.ndarray  # (V, K) loadings on the spontaneous sources, unit-norm rows
    # white (T, V) -> spatially smooth unit-variance noise (T, V) (the cortex world's point spread); None: white
    smooth_noise: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def retinotopic(self) -> np.ndarray:
        """(V,) bool: voxels with a receptive field (early visual areas)."""
        return ~np.isnan(self.centre[:, 0])


def _retinotopy(rng: np.random.Generator, n: int, roi: str, hemifield: int) -> tuple[np.ndarray, np.ndarray]:
    """Receptive-field centres (n, 2) and sizes (n,) in cortical order; hemifield +1 right, -1 left, 0 both."""
    ecc = 0.04 * (1.2 / 0.04) ** rng.random(n)  # log-uniform: cortical magnification of the fovea
    half = np.pi / 2 if hemifield else np.pi
    angle = rng.uniform(-half, half, n) + (np.pi if hemifield < 0 else 0.0)
    strips = max(1, int(round(np.sqrt(n / 8))))
    strip = np.minimum((angle - angle.min()) / (np.ptp(angle) + 1e-9) * strips, strips - 1).astype(int)
    order = np.lexsort((np.where(strip % 2, -ecc, ecc), strip))  # serpentine path over the cortical sheet
    ecc, angle = ecc[order], angle[order]
    a, b = RF_SIZE[roi]
    sigma = (a + b * ecc) * np.exp(rng.normal(0, 0.1, n))
    return np.stack([ecc * np.cos(angle), ecc * np.sin(angle)], 1), sigma


def spont_loadings(centre: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Loadings (V, K) on the spontaneous sources: a Gaussian-bump field over the visual field + a global signal.

    Retinotopic voxels see the field through their receptive field; the others load on it at random.
    """
    g = np.linspace(-1.2, 1.2, SPONT_GRID)
    bumps = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)  # (K - 1, 2)
    d2 = ((centre[:, None, :] - bumps[None]) ** 2).sum(-1)
    field = np.exp(-d2 / (2 * (sigma[:, None] ** 2 + SPONT_WIDTH**2)))
    random = ~np.isfinite(field[:, 0])
    field[random] = rng.normal(0, 1, (int(random.sum()), len(bumps)))
    field /= np.linalg.norm(field, axis=1, keepdims=True)
    glob = rng.uniform(0.5, 1.0, (len(centre), 1))
    load = np.concatenate([field * np.sqrt(1 - GLOBAL_SHARE), glob * np.sqrt(GLOBAL_SHARE)], axis=1)
    return load / np.linalg.norm(load, axis=1, keepdims=True)


def build_population(
    rng: np.random.Generator, blocks: list[tuple[str, int]], snr: float, embed_dim: int
) -> Population:
    """Voxels of the ROI blocks `blocks` [(label, count), ...] laid out in that order on the voxel axis."""
    roi, centre, sigma = [], [], []
    for label, n in blocks:
        base = base_roi(label)
        roi += [label] * n
        if base in RF_SIZE:
            hemifield = {"LH": 1, "RH": -1}.get(label[:2], 0)  # each hemisphere sees the opposite hemifield
            c, s = _retinotopy(rng, n, base, hemifield)
        else:
            c, s = np.full((n, 2), np.nan), np.full(n, np.nan)
        centre.append(c)
        sigma.append(s)
    roi, centre, sigma = np.array(roi), np.concatenate(centre), np.concatenate(sigma)
    v = len(roi)
    gain = np.array([CHANNEL_GAIN.get(base_roi(r), (1.0,) * len(CHANNELS)) for r in roi])
    reliability = np.array([SNR_GAIN.get(base_roi(r), 1.0) for r in roi])
    return Population(
        roi=roi,
        centre=centre,
        sigma=sigma,
        tuning=rng.normal(0, 1, (v, len(CHANNELS))) * gain,
        sem_weights=rng.normal(0, 1, (v, embed_dim)),
        img_weights=rng.normal(0, 1, (v, len(CHANNELS) * IMAGE_GRID**2)),
        snr=snr * reliability * np.exp(rng.normal(0, 0.6, v)),  # log-normal spread of voxel quality
        spont=spont_loadings(centre, sigma, rng),
    )


def jittered(pop: Population, rng: np.random.Generator, shift: float = 0.03) -> Population:
    """The same organisation in another brain: receptive fields moved a little, new tuning and loadings."""
    centre = pop.centre + rng.normal(0, shift, pop.centre.shape)
    return Population(
        pop.roi,
        centre,
        pop.sigma,
        pop.tuning,
        pop.sem_weights,
        pop.img_weights,
        pop.snr,
        spont_loadings(centre, pop.sigma, rng),
        pop.smooth_noise,
    )


def rf_weights(centre: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian pooling weights (V, G*G) over the feature grid, each row summing to 1."""
    g = (np.arange(FEATURE_GRID) + 0.5) / FEATURE_GRID * 2 - 1
    s = np.maximum(sigma, 1.0 / FEATURE_GRID)[:, None] ** 2  # at least about one grid cell
    wx = np.exp(-((g[None] - centre[:, :1]) ** 2) / (2 * s))
    wy = np.exp(-((g[None] - centre[:, 1:]) ** 2) / (2 * s))
    w = (wy[:, :, None] * wx[:, None, :]).reshape(len(centre), -1)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Responses
# ----------------------------------------------------------------------------------------------------


def _standardise(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    mu, sd = x[fit].mean(0), x[fit].std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def stimulus_drive(
    pop: Population,
    feats: np.ndarray,
    attrs: np.ndarray,
    own: np.ndarray,
    space: SemanticSpace,
    fit: np.ndarray,
    category_drive: float = 1.0,
    silent: np.ndarray | None = None,
) -> np.ndarray:
    """Noiseless responses (N, V) to N stimuli, each voxel standardised over the stimuli `fit` (bool (N,)).

    feats (N, 5, G, G) low-level maps; attrs (N, 5) attribute indices and own (N, D) category-specific
    embeddings of each stimulus's category. `category_drive` scales the category code's share of each ROI's
    drive before the shares are renormalised (0: every area responds to image features only); voxels marked
    `silent` (bool (V,)) have no drive at all (their trials are pure noise).
    """
    embed = lambda gains: space.embed(attrs, own, gains)  # noqa: E731
    return stimulus_drive_from(pop, feats, embed, fit, category_drive, silent)


def stimulus_drive_from(
    pop: Population,
    feats: np.ndarray,
    embed: Callable[[tuple[float, ...]], np.ndarray],
    fit: np.ndarray,
    category_drive: float = 1.0,
    silent: np.ndarray | None = None,
) -> np.ndarray:
    """`stimulus_drive` with the semantic state given as embed(roi_gains) -> (N, D), the category embedding an ROI
    weighting the attributes by `roi_gains` sees (the cortex world's resting state drives it with random states)."""
    n, v = len(feats), len(pop.roi)
    low, sem = np.zeros((n, v)), np.zeros((n, v))
    ret = np.flatnonzero(pop.retinotopic)
    if len(ret):
        pooled = exact_matmul(feats.reshape(n * len(CHANNELS), -1), rf_weights(pop.centre[ret], pop.sigma[ret]).T)
        low[:, ret] = np.einsum("ncv,vc->nv", pooled.reshape(n, len(CHANNELS), -1), pop.tuning[ret])
    for label in np.unique(pop.roi):
        gains = CATEGORY_GAIN.get(base_roi(label))
        if gains is not None:
            idx = np.flatnonzero(pop.roi == label)
            sem[:, idx] = exact_matmul(embed(gains), pop.sem_weights[idx].T)
    img = exact_matmul(image_level_features(feats), pop.img_weights.T)
    mix = np.array([MIX[base_roi(r)] for r in pop.roi])  # (V, 3)
    if category_drive != 1.0:
        mix[:, 1] *= category_drive
        total = mix.sum(1, keepdims=True)
        mix = np.divide(mix, total, out=np.zeros_like(mix), where=total > 0)
    drive = sum(np.sqrt(mix[:, i]) * _standardise(x, fit) for i, x in enumerate((low, sem, img)))
    drive = _standardise(drive, fit)
    if silent is not None:
        drive[:, silent] = 0.0
    return drive.astype(np.float32)


def silent_voxels(pop: Population, share: float, rng: np.random.Generator) -> np.ndarray | None:
    """bool (V,): a random `share` of the visual voxels (those with any stimulus drive) left without signal."""
    if share <= 0:
        return None
    visual = np.array([sum(MIX[base_roi(r)]) > 0 for r in pop.roi])
    return visual & (rng.random(len(pop.roi)) < share)


def trial_responses(
    pop: Population, drive: np.ndarray, stimulus: np.ndarray, rng: np.random.Generator, structured: float
) -> np.ndarray:
    """Single-trial responses (T, V) to the stimuli `stimulus` (T,) (rows of `drive`).

    Noise has unit variance per voxel, a share `structured` of it spontaneous (spatially correlated).
    """
    t = len(stimulus)
    white = rng.standard_normal((t, len(pop.roi)), dtype=np.float32)
    noise = np.sqrt(1 - structured) * (white if pop.smooth_noise is None else pop.smooth_noise(white))
    noise += np.sqrt(structured) * (
        exact_matmul(rng.standard_normal((t, pop.spont.shape[1]), dtype=np.float32), pop.spont.T).astype(np.float32)
    )
    return np.sqrt(pop.snr).astype(np.float32) * drive[stimulus] + noise


def resting_state(
    pop: Population,
    rng: np.random.Generator,
    frames: int,
    noise: float,
    tr: float = 0.75,
    timescale: float = 8.0,
    burn_in: int = 200,
) -> np.ndarray:
    """Spontaneous activity (frames, V): the sources as AR(1) processes (time constant `timescale` s) + noise.

    The global signal is slower (3x the time constant); `noise` is the variance share of white noise.
    """
    k = pop.spont.shape[1]
    phi = np.exp(-tr / (timescale * np.r_[np.ones(k - 1), 3.0]))
    e = rng.standard_normal((frames + burn_in, k)) * np.sqrt(1 - phi**2)
    z = np.stack([lfilter([1.0], [1.0, -p], e[:, i]) for i, p in enumerate(phi)], 1)[burn_in:]
    white = rng.standard_normal((frames, len(pop.roi)))
    white = white if pop.smooth_noise is None else pop.smooth_noise(white)
    x = np.sqrt(1 - noise) * exact_matmul(z, pop.spont.T) + np.sqrt(noise) * white
    return (x * np.exp(rng.normal(0, 0.2, len(pop.roi)))).astype(np.float32)  # voxels differ in amplitude
