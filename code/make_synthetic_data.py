"""A simulated brain, written in the published HCP, GOD and BOLD5000 layouts so the real readers run on it.

    python code/make_synthetic_data.py --out data/synthetic/demo --size demo --seed 0
    python code/make_synthetic_data.py --out data/synthetic/full --size full --hcp_subjects 100

The world: images are compositions of a shape, an object colour, a texture and a background colour;
a category is one such composition (so unseen test categories are new combinations of known parts,
as ImageNet test classes share parts with training classes). Each subject has a fixed encoding model:

- early visual areas V1 -> V4: voxels with Gaussian receptive fields at random positions of the
  visual field, sizes growing along the hierarchy, each tuned to a mix of local luminance,
  red-green, blue-yellow and edge energy;
- higher areas LOC, FFA, PPA: random projections of the category's attributes (shape, colour,
  texture, background) plus a category-specific component and some large-field low-level input;
- per-trial Gaussian noise with signal-to-noise ratio `SNR` (signal variance / noise variance), so
  single trials are noisy and the 35-repeat test averages are clean.

HCP resting state: spatially smooth, temporally autocorrelated activity over the visual field seen
through the same kind of receptive fields (V1-V4), plus noise. See data/README.md for the knobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import lfilter

log = logging.getLogger("mindvis.simulation")

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "bar", "star")
HUES = np.array([[230, 40, 40], [40, 170, 60], [50, 80, 230], [235, 200, 40], [200, 60, 210], [40, 200, 210]])
BACKGROUNDS = np.array([[25, 25, 30], [200, 200, 195], [120, 90, 60]])
TEXTURES = ("flat", "stripes", "checker", "dots")
EARLY_ROIS = ("V1", "V2", "V3", "V4")
HIGH_ROIS = ("LOC", "FFA", "PPA")
RF_SIZE = {"V1": 0.05, "V2": 0.08, "V3": 0.12, "V4": 0.18, "EarlyVis": 0.08}  # fraction of the image side
ROI_SHARE = {"V1": 0.22, "V2": 0.19, "V3": 0.16, "V4": 0.10, "LOC": 0.16, "FFA": 0.09, "PPA": 0.08}
SNR = 0.6  # single-trial signal variance / noise variance in visual cortex
FEATURE_GRID = 32  # resolution of the low-level feature maps the voxels pool


@dataclass(frozen=True)
class Size:
    """Dimensions of one simulated data set."""

    image_size: int
    train_categories: int
    images_per_category: int
    test_categories: int
    test_repeats: int
    vc_voxels: int  # approximate visual-cortex voxels per GOD subject
    hcp_subjects: int
    hcp_voxels: int  # approximate V1-V4 voxels per HCP subject
    bold_images: int
    bold_repeated: int


SIZES = {
    "tiny": Size(64, 12, 4, 6, 35, 220, 2, 150, 40, 6),
    "demo": Size(256, 150, 8, 50, 35, 1100, 12, 900, 400, 40),
    "full": Size(256, 150, 8, 50, 35, 4500, 20, 4000, 4800, 113),
}


# ----------------------------------------------------------------------------------------------------
# Stimuli
# ----------------------------------------------------------------------------------------------------


def make_categories(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct (shape, hue, texture, background) index tuples, (n, 4)."""
    grid = np.stack(np.meshgrid(*(np.arange(k) for k in (len(SHAPES), len(HUES), len(TEXTURES), len(BACKGROUNDS))),
                                indexing="ij"), -1).reshape(-1, 4)
    if n > len(grid):
        raise ValueError(f"at most {len(grid)} distinct categories, asked for {n}")
    return grid[rng.choice(len(grid), n, replace=False)]


def _shape_mask(shape: np.ndarray, x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Soft masks (N, R, R) of each image's shape; x, y centred coordinates (N, R, R), r radius (N, 1, 1)."""
    ax, ay, d = np.abs(x), np.abs(y), np.hypot(x, y)
    theta = np.arctan2(y, x)
    dist = np.stack([
        d - r,                                                    # disc
        np.maximum(ax, ay) - 0.85 * r,                            # square
        np.maximum(0.87 * ax + 0.5 * y, -y) - 0.5 * r,            # triangle
        np.abs(d - 0.75 * r) - 0.25 * r,                          # ring
        np.minimum(np.maximum(ax, ay / 3), np.maximum(ay, ax / 3)) - 0.3 * r,  # cross
        ax + ay - r,                                              # diamond
        np.maximum(ax / 1.2, ay / 0.35) - r,                      # bar
        d - r * (0.65 + 0.3 * np.cos(5 * theta)),                 # star
    ])  # (S, N, R, R)
    picked = np.take_along_axis(dist, shape[None, :, None, None], axis=0)[0]
    return 1.0 / (1.0 + np.exp(picked / (0.01 + 0.004 * r)))  # anti-aliased edge


def draw_images(categories: np.ndarray, size: int, rng: np.random.Generator, batch: int = 64) -> np.ndarray:
    """Draw one image per row of `categories` (N, 4) with jittered position, scale, colour and texture."""
    n = len(categories)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    coords = (np.arange(size) + 0.5) / size - 0.5
    for s in range(0, n, batch):
        cat = categories[s : s + batch]
        b = len(cat)
        cx, cy = rng.uniform(-0.12, 0.12, (2, b, 1, 1))
        r = rng.uniform(0.22, 0.32, (b, 1, 1))
        x, y = np.broadcast_arrays(coords[None, None, :] - cx, coords[None, :, None] - cy)  # (b, R, R)
        mask = _shape_mask(cat[:, 0], x, y, r)[..., None]  # (b, R, R, 1)
        freq, phase = rng.uniform(14, 22, (b, 1, 1)), rng.uniform(0, 2 * np.pi, (b, 1, 1))
        tex = np.stack([
            np.ones_like(x),
            0.5 + 0.5 * (np.sin(freq * (x + y) + phase) > 0),
            0.5 + 0.5 * ((np.sin(freq * x + phase) > 0) ^ (np.sin(freq * y) > 0)),
            0.5 + 0.5 * ((np.sin(freq * x + phase) * np.sin(freq * y + phase)) < 0.35),
        ])
        tex = np.take_along_axis(tex, cat[None, :, 2, None, None], axis=0)[0][..., None]
        obj = np.clip(HUES[cat[:, 1]] + rng.normal(0, 12, (b, 3)), 0, 255)[:, None, None, :] * tex
        bg = np.clip(BACKGROUNDS[cat[:, 3]] + rng.normal(0, 10, (b, 3)), 0, 255)[:, None, None, :]
        shade = 1.0 + 0.15 * y[..., None]  # a soft vertical light gradient
        img = (mask * obj + (1 - mask) * bg * shade) + rng.normal(0, 4, (b, size, size, 3))
        out[s : s + b] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def low_level_features(images: np.ndarray, batch: int = 100) -> np.ndarray:
    """Luminance, red-green, blue-yellow and edge-energy maps on a FEATURE_GRID grid, (N, 4, G*G)."""
    n, size = len(images), images.shape[1]
    k = size // FEATURE_GRID
    x = np.concatenate([
        images[s : s + batch].astype(np.float32).reshape(-1, FEATURE_GRID, k, FEATURE_GRID, k, 3).mean(axis=(2, 4))
        for s in range(0, n, batch)
    ]) / 255.0
    lum = x.mean(-1)
    rg = x[..., 0] - x[..., 1]
    by = x[..., 2] - 0.5 * (x[..., 0] + x[..., 1])
    gy, gx = np.gradient(lum, axis=(1, 2))
    edge = np.hypot(gx, gy) * 4
    return np.stack([lum, rg, by, edge], 1).reshape(n, 4, -1)


def attribute_codes(categories: np.ndarray) -> np.ndarray:
    """One-hot codes of the category attributes, (N, 8 + 6 + 4 + 3)."""
    parts = [np.eye(k)[categories[:, i]] for i, k in enumerate((len(SHAPES), len(HUES), len(TEXTURES),
                                                                 len(BACKGROUNDS)))]
    return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------------------------------------------
# Encoding model
# ----------------------------------------------------------------------------------------------------


def receptive_fields(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian pooling weights (n, G*G) at random visual-field positions, width `sigma` (image fractions)."""
    g = (np.arange(FEATURE_GRID) + 0.5) / FEATURE_GRID
    centre = rng.uniform(0.05, 0.95, (n, 2))
    s = sigma * rng.uniform(0.8, 1.25, (n, 1))
    wx = np.exp(-((g[None] - centre[:, :1]) ** 2) / (2 * s**2))
    wy = np.exp(-((g[None] - centre[:, 1:]) ** 2) / (2 * s**2))
    w = (wy[:, :, None] * wx[:, None, :]).reshape(n, -1)
    return w / w.sum(1, keepdims=True)


def roi_counts(total: int, rois: dict[str, float], rng: np.random.Generator) -> dict[str, int]:
    """Voxels per ROI: shares of `total` with a little per-subject variation."""
    return {roi: max(3, int(total * share * rng.uniform(0.85, 1.15))) for roi, share in rois.items()}


def _early_rf_size(roi: str) -> float | None:
    """Receptive-field size of an early visual ROI (hemisphere prefixes allowed), None for higher areas."""
    return next((v for k, v in RF_SIZE.items() if roi.endswith(k)), None)


class Subject:
    """A fixed encoding model: stimulus (image features + category) -> noiseless voxel responses."""

    def __init__(self, counts: dict[str, int], n_categories: int, rng: np.random.Generator):
        self.counts = counts
        self.high = {roi: _early_rf_size(roi) is None for roi in counts}
        self.rfs, self.tuning = {}, {}
        for roi, n in counts.items():
            sigma = 0.3 if self.high[roi] else _early_rf_size(roi)  # higher areas pool large fields
            self.rfs[roi] = receptive_fields(n, sigma, rng)
            self.tuning[roi] = rng.normal(0, 1, (n, 4))
        self.attr = {roi: rng.normal(0, 1, (n, 21)) for roi, n in counts.items()}
        self.cat = {roi: rng.normal(0, 1, (n, n_categories)) for roi, n in counts.items()}

    def responses(self, feats: np.ndarray, codes: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
        """Noiseless responses (N, V) to stimuli with low-level features (N, 4, G*G) and attribute codes (N, 21).

        ROIs in `counts` order; each voxel z-scored over these stimuli.
        """
        out = []
        for roi in self.counts:
            pooled = np.einsum("vg,ncg->nvc", self.rfs[roi], feats)  # (N, V, 4)
            low = (pooled * self.tuning[roi][None]).sum(-1)
            low = (low - low.mean(0)) / (low.std(0) + 1e-6)
            if self.high[roi]:
                sem = codes @ self.attr[roi].T + 0.5 * self.cat[roi][:, cat_ids].T
                sem = (sem - sem.mean(0)) / (sem.std(0) + 1e-6)
                low = 0.85 * sem + 0.3 * low
            out.append(low)
        r = np.concatenate(out, axis=1)
        return ((r - r.mean(0)) / (r.std(0) + 1e-6)).astype(np.float32)


def noisy(signal: np.ndarray, rng: np.random.Generator, snr: float = SNR) -> np.ndarray:
    """Add per-trial Gaussian noise at the given signal-to-noise (variance) ratio."""
    return (signal + rng.normal(0, 1 / np.sqrt(snr), signal.shape)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Writers of the published layouts
# ----------------------------------------------------------------------------------------------------


def write_god(out: Path, size: Size, rng: np.random.Generator) -> None:
    """GOD/Kamitani layout: sbj_1..5.npz, images_256.npz, class index and label csv files."""
    root = out / "Kamitani" / "npz"
    root.mkdir(parents=True)
    n_cat = size.train_categories + size.test_categories
    cats = make_categories(n_cat, rng)
    wnids = np.sort(rng.choice(np.arange(1_000_000, 9_999_999), n_cat, replace=False))
    train_cat = np.repeat(np.arange(size.train_categories), size.images_per_category)
    test_cat = np.arange(size.train_categories, n_cat)
    train_images = draw_images(cats[train_cat], size.image_size, rng)
    test_images = draw_images(cats[test_cat], size.image_size, rng)
    np.savez(root / "images_256.npz", train_images=train_images, test_images=test_images)
    names = [f"{SHAPES[s]} {['red', 'green', 'blue', 'yellow', 'magenta', 'cyan'][h]} {TEXTURES[t]} "
             f"on {['dark', 'light', 'brown'][b]}" for s, h, t, b in cats]
    index = {str(i): [f"n{w:08d}", names[i]] for i, w in enumerate(wnids)}
    (root / "imagenet_class_index.json").write_text(json.dumps(index))
    for fname, cat_ids in (("imagenet_training_label.csv", train_cat), ("imagenet_testing_label.csv", test_cat)):
        counter = np.zeros(n_cat, dtype=int)
        lines = []
        for c in cat_ids:
            lines.append(f"{wnids[c]}.{counter[c]:06d}.JPEG")
            counter[c] += 1
        (root / fname).write_text("\n".join(lines) + "\n")

    all_cat = np.r_[train_cat, test_cat]
    feats = low_level_features(np.concatenate([train_images, test_images]))
    codes = attribute_codes(cats[all_cat])
    used: set[int] = set()
    for k in range(1, 6):
        counts = roi_counts(size.vc_voxels, ROI_SHARE, rng)
        while sum(counts.values()) in used or sum(counts.values()) % 16 == 0:  # distinct, never patch-aligned
            counts["V1"] += 1
        used.add(sum(counts.values()))
        both = Subject(counts, n_cat, rng).responses(feats, codes, all_cat)
        signal_train, signal_test = both[: len(train_cat)], both[len(train_cat):]
        n_vc = signal_train.shape[1]
        n_other = max(1, n_vc // 30) + int(rng.integers(0, 7))  # voxels outside visual cortex: noise only
        if (n_vc + n_other) % 16 == 0:
            n_other += 1
        order = rng.permutation(len(train_cat))
        arr0, arr1 = (
            np.concatenate([noisy(sig, rng), rng.normal(0, 1.3, (len(sig), n_other)).astype(np.float32)], axis=1)
            for sig in (signal_train[order], np.repeat(signal_test, size.test_repeats, axis=0))
        )
        arr2 = arr1.reshape(len(test_cat), size.test_repeats, -1).mean(1)
        masks, start = {}, 0
        v_all = n_vc + n_other
        for roi, n in counts.items():
            masks[roi] = np.zeros(v_all, bool)
            masks[roi][start : start + n] = True
            start += n
        masks["LVC"] = masks["V1"] | masks["V2"] | masks["V3"]
        masks["HVC"] = masks["LOC"] | masks["FFA"] | masks["PPA"]
        masks["VC"] = masks["LVC"] | masks["V4"] | masks["HVC"]
        np.savez(root / f"sbj_{k}.npz", arr_0=arr0, arr_1=arr1, arr_2=arr2.astype(np.float32),
                 arr_3=order.astype(np.int64), **masks)


def write_hcp(out: Path, size: Size, n_subjects: int, rng: np.random.Generator, frames: int = 1200) -> None:
    """HCP layout: <subject>/HCP_visual_voxel.npz with V1..V4 resting-state series (frames, n_roi_voxels)."""
    shares = {roi: ROI_SHARE[roi] / sum(ROI_SHARE[r] for r in EARLY_ROIS) for roi in EARLY_ROIS}
    for s in range(n_subjects):
        folder = out / "HCP" / "npz" / f"{100000 + 1111 * s}"
        folder.mkdir(parents=True)
        counts = roi_counts(size.hcp_voxels, shares, rng)
        # spontaneous activity: white noise over the visual field, smoothed in space, AR(1) in time
        field = rng.normal(0, 1, (frames, FEATURE_GRID, FEATURE_GRID)).astype(np.float32)
        field = gaussian_filter(field, sigma=(0, 2.5, 2.5))
        field = lfilter([1.0], [1.0, -0.9], field, axis=0).reshape(frames, -1)
        global_signal = lfilter([1.0], [1.0, -0.97], rng.normal(0, 0.3, frames))[:, None]
        data = {}
        for roi, n in counts.items():
            x = field @ receptive_fields(n, RF_SIZE[roi], rng).T + global_signal  # (T, n)
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
            data[roi] = noisy(x, rng, snr=1.5)
        np.savez(folder / "HCP_visual_voxel.npz", **data)


def write_bold5000(out: Path, size: Size, rng: np.random.Generator) -> None:
    """BOLD5000 layout: ROI beta files per subject and hemisphere, stimuli dict, presentation lists."""
    root = out / "BOLD5000"
    betas = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    stim = root / "BOLD5000_Stimuli"
    for d in (betas, stim / "Scene_Stimuli" / "Presented_Stimuli", stim / "Image_Labels"):
        d.mkdir(parents=True)
    n_cat = 60
    cats = make_categories(n_cat, rng)
    cat_of = rng.integers(0, n_cat, size.bold_images)
    images = draw_images(cats[cat_of], size.image_size, rng)
    names = [f"COCO_train2014_{i:012d}.jpg" if i % 3 else f"n{1000000 + i:08d}_{i}.JPEG"
             for i in range(size.bold_images)]
    np.save(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy", dict(zip(names, images, strict=True)),
            allow_pickle=True)
    repeated = rng.choice(size.bold_images, size.bold_repeated, replace=False)
    (stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").write_text("\n".join(names[i] for i in repeated))
    (stim / "Image_Labels" / "image_categories.txt").write_text(
        "\n".join(f"{n} {c}" for n, c in zip(names, cat_of, strict=True)))

    feats, codes = low_level_features(images), attribute_codes(cats[cat_of])
    bold_share = {"EarlyVis": 0.35, "LOC": 0.2, "OPA": 0.15, "PPA": 0.15, "RSC": 0.15}
    for k in range(1, 5):
        sub = f"CSI{k}"
        shown_rep = repeated if k < 4 else repeated[: int(0.7 * len(repeated))]  # CSI4 lacks some repeats
        shown = np.concatenate([rng.permutation(size.bold_images), np.repeat(shown_rep, 3)])
        shown = shown[rng.permutation(len(shown))]
        seen = set()
        labels = []
        for i in shown:
            labels.append(("rep_" if i in seen and i in set(repeated) else "") + names[i])
            seen.add(i)
        sessions, per_run = stim / "Stimuli_Presentation_Lists" / sub, 20
        for r, start in enumerate(range(0, len(labels), per_run)):
            folder = sessions / f"{sub}_sess{r // 4 + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{sub}_sess{r // 4 + 1:02d}_run{r % 4 + 1:02d}.txt").write_text(
                "\n".join(labels[start : start + per_run]))
        counts = roi_counts(int(size.vc_voxels * 0.8), bold_share, rng)
        hemi = {f"{h}{roi}": max(3, n // 2 + int(rng.integers(-3, 4))) for roi, n in counts.items() for h in
                ("LH", "RH")}
        resp = noisy(Subject(hemi, n_cat, rng).responses(feats, codes, cat_of)[shown], rng)
        start = 0
        for name, n in hemi.items():
            np.save(betas / f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{name}.npy", resp[:, start : start + n])
            start += n


def make_synthetic_data(out: str | Path, size: str = "tiny", seed: int = 0, overwrite: bool = False,
                        hcp_subjects: int | None = None) -> Path:
    """Write the simulated HCP, GOD and BOLD5000 data sets under `out`; returns `out`."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already holds data; pass --overwrite to replace it")
        for sub in ("HCP", "Kamitani", "BOLD5000"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    dims = SIZES[size]
    rng = np.random.default_rng(seed)
    log.info("simulating %s data in %s (seed %d)", size, out, seed)
    write_god(out, dims, np.random.default_rng(rng.integers(2**63)))
    write_hcp(out, dims, hcp_subjects or dims.hcp_subjects, np.random.default_rng(rng.integers(2**63)))
    write_bold5000(out, dims, np.random.default_rng(rng.integers(2**63)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write HCP/, Kamitani/ and BOLD5000/ into")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hcp_subjects", type=int, default=None, help="number of HCP subjects (default per size)")
    parser.add_argument("--overwrite", action="store_true", help="replace data already in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        make_synthetic_data(args.out, args.size, args.seed, args.overwrite, args.hcp_subjects)
    except FileExistsError as e:
        parser.error(str(e))
    log.info("done: %s", args.out)


if __name__ == "__main__":
    main()
