"""The knobs of the simulation and the three preset sizes (`tiny`, `demo`, `full`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from demo.simulation.cortex import SHARING, VOXEL_ORDERS
from demo.simulation.stimuli import ATTRIBUTE_SIZES


@dataclass(frozen=True)
class SimSpec:
    """Dimensions and signal settings of one simulated data set (defaults: `full`, the published dimensions)."""

    image_size: int = 256  # stimuli are image_size x image_size RGB (a multiple of 64)
    train_categories: int = 150  # GOD: training categories ...
    images_per_category: int = 8  # ... with this many images each, one trial per image
    test_categories: int = 50  # GOD: test categories (disjoint from training), one image each
    test_repeats: int = 35  # trials per test image
    god_subjects: int = 5  # sbj_1 ... sbj_<n>
    voxel_scale: float = 1.0  # voxel counts relative to the published ones (GOD VC ~4,600, HCP V1-V4 ~3,600)
    hcp_subjects: int = 50  # HCP resting-state subjects (the published release has ~1,200)
    hcp_frames: int = 1200  # frames per HCP series (TR 0.75 s)
    bold_subjects: int = 4  # CSI1 ... CSI<n>; the 4th sees only the first 60% of the sessions, as CSI4 did
    bold_categories: int = 300  # BOLD5000: categories (ImageNet-like objects, COCO-like groups, scenes)
    bold_images: int = 4803  # BOLD5000: images shown once
    bold_repeated: int = 113  # BOLD5000: images shown `bold_repeats` times (the test set)
    bold_repeats: int = 4
    bold_sessions: int = 15
    bold_runs: int = 10  # runs per session
    nsd_subjects: int = 0  # NSD: subj01 ... (0: none written; NSD's own dimensions below hold ~37k stimuli for 4)
    nsd_train_images: int = 9000  # NSD: images each subject alone sees ...
    nsd_test_images: int = 1000  # ... and images every subject sees (the shared 1000: the test set)
    nsd_repeats: int = 3  # NSD: presentations of every image
    nsd_sessions: int = 40  # NSD: sessions the trials are spread over (one MindEye2 training shard each)
    snr: float = 0.3  # median single-trial signal variance / noise variance of visual-cortex voxels
    structured_noise: float = 0.3  # share of the trial noise that is spontaneous, spatially correlated activity
    rest_noise: float = 0.4  # share of white noise in the HCP series (the rest is spontaneous activity)
    embed_dim: int = 48  # dimension of the category embedding space
    category_drive: float = 1.0  # weight of the category code in the drive of V3/V4 and higher areas (0: image only)
    silent_share: float = 0.0  # share of visual-cortex voxels without any stimulus drive (pure noise)
    brain: str = "classic"  # classic: each subject's voxels drawn on their own; cortex: areas as shared 2-D sheets
    sharing: str = "realistic"  # cortex: how much organisation subjects share (cortex.SHARING: high, realistic, none)
    voxel_order: str = "raster"  # cortex: voxels within an ROI in volume raster order, template order or random
    progress: bool = True  # tqdm bars

    def validate(self) -> SimSpec:
        """Raise ValueError naming the first setting that cannot be simulated; return self."""
        n_combos = int(np.prod(ATTRIBUTE_SIZES))
        checks = [
            (self.image_size >= 64 and self.image_size % 64 == 0, "image_size must be a positive multiple of 64"),
            (
                self.train_categories + self.test_categories <= n_combos,
                f"train_categories + test_categories must be at most {n_combos}",
            ),
            (self.bold_categories <= n_combos, f"bold_categories must be at most {n_combos}"),
            (
                min(
                    self.train_categories,
                    self.images_per_category,
                    self.test_categories,
                    self.test_repeats,
                    self.god_subjects,
                    self.bold_subjects,
                    self.bold_categories,
                    self.bold_images,
                    self.bold_repeated,
                    self.bold_sessions,
                    self.bold_runs,
                )
                >= 1,
                "counts must be >= 1",
            ),
            (self.bold_repeats >= 2, "bold_repeats must be >= 2 (the test set averages repeats)"),
            (
                self.nsd_subjects >= 0 and min(self.nsd_train_images, self.nsd_test_images, self.nsd_sessions) >= 1,
                "nsd_subjects >= 0; nsd_train_images, nsd_test_images, nsd_sessions >= 1",
            ),
            (1 <= self.nsd_repeats <= 3, "nsd_repeats must be 1, 2 or 3 (MindEye's samples hold 3 presentations)"),
            (self.hcp_subjects >= 0 and self.hcp_frames >= 10, "hcp_subjects >= 0 and hcp_frames >= 10"),
            (self.voxel_scale > 0 and self.snr > 0 and self.embed_dim >= 1, "voxel_scale, snr, embed_dim > 0"),
            (0 <= self.structured_noise < 1 and 0 < self.rest_noise < 1, "noise shares must lie in [0, 1)"),
            (self.category_drive >= 0 and 0 <= self.silent_share < 1, "category_drive >= 0, silent_share in [0, 1)"),
            (self.brain in ("classic", "cortex"), f"brain must be classic or cortex, got {self.brain!r}"),
            (self.sharing in SHARING, f"sharing must be one of {sorted(SHARING)}, got {self.sharing!r}"),
            (self.voxel_order in VOXEL_ORDERS, f"voxel_order must be one of {VOXEL_ORDERS}, got {self.voxel_order!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"simulation settings: {message} ({self})")
        return self

    def with_overrides(self, **overrides) -> SimSpec:
        """A copy with some fields replaced (unknown names raise TypeError listing the known ones)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown simulation setting(s) {unknown}; known: {sorted(known)}")
        return replace(self, **overrides).validate()


# the settings that make the stimuli (with the seed): worlds that agree on these share their images, and so the
# world models trained on them (the cortex presets use the demo's)
IMAGE_SETTINGS = (
    "image_size",
    "train_categories",
    "images_per_category",
    "test_categories",
    "bold_categories",
    "bold_images",
    "bold_repeated",
)

SIZES = {
    "tiny": SimSpec(
        image_size=64,
        train_categories=30,
        images_per_category=4,
        test_categories=20,
        voxel_scale=0.07,
        hcp_subjects=3,
        bold_categories=12,
        bold_images=48,
        bold_repeated=12,
        bold_sessions=3,
        bold_runs=2,
        nsd_subjects=2,
        nsd_train_images=24,
        nsd_test_images=8,
        nsd_sessions=2,
        progress=False,
    ),
    "demo": SimSpec(
        voxel_scale=0.3,
        hcp_subjects=10,
        bold_categories=60,
        bold_images=480,
        bold_repeated=24,
        bold_sessions=4,
        bold_runs=4,
    ),
    "full": SimSpec(),
}
# `hard`: the demo's dimensions, but no area responds to the category: higher areas see image features pooled over
# large fields (the coarse image-level maps), 40% of the visual voxels carry no signal, and single trials are noisier.
SIZES["hard"] = replace(SIZES["demo"], category_drive=0.0, silent_share=0.4, snr=0.2)
# `cortex`: the demo's dimensions on the cortex-shaped brain (demo/simulation/cortex.py), sharing as realistic as the
# literature allows; `cortex-high` and `cortex-none` the two ends of the sharing setting (data/README.md). 50 HCP
# subjects (6,000 windows), so that resting state is as large a share of pre-training as the GOD training fMRI (in the
# paper it is most of it).
SIZES["cortex"] = replace(SIZES["demo"], brain="cortex", hcp_subjects=50)
SIZES["cortex-high"] = replace(SIZES["cortex"], sharing="high")
SIZES["cortex-none"] = replace(SIZES["cortex"], sharing="none")
SIZES["cortex-tiny"] = replace(SIZES["tiny"], brain="cortex")
# `nsd`: the demo's world with two NSD subjects in both MindEye layouts (NSD/mindeye1, NSD/mindeye2), each seeing 1,200
# images of their own three times and the 50 shared test images three times, over 8 sessions
SIZES["nsd"] = replace(SIZES["demo"], nsd_subjects=2, nsd_train_images=1200, nsd_test_images=50, nsd_sessions=8)
