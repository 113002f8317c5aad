"""The target data sets of Stages A2, B and gen_eval: one entry each, holding all that differs between them.

An entry names its reader (`readers/`), the config fields that hold its folder and its subjects (published field
names, so they are the flags too) with their defaults, the `--roi` values it takes, the published batch sizes of
Stages A2 and B, and the paper's numbers per subject (printed beside ours by `gen_eval --protocol published`).
Adding a data set is a reader module and an entry here; config.py declares its two flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataset import FMRIImageDataset, split_images
from errors import UserError
from readers.bold5000 import create_bold5000_dataset
from readers.god import GOD_ROIS, create_god_dataset
from readers.nsd import NSD_ROIS, create_nsd_dataset
from transforms import RandomVoxelDropout, model_image_transform


@dataclass(frozen=True)
class Target:
    """One target data set."""

    name: str
    # read(path, patch_size=, subjects=, include_nonavg_test=, **{option: config value}) -> (train, test)
    read: Callable[..., tuple[FMRIImageDataset, FMRIImageDataset]]
    path_field: str  # the config field of its folder
    default_path: str  # below --root_path
    subjects_field: str  # the config field of its subjects
    default_subjects: tuple[str, ...]
    rois: tuple[str, ...]  # the values --roi takes
    batch_size_a2: int  # the published Stage A2 batch size
    batch_size_b: int  # the published Stage B batch size
    options: tuple[str, ...] = ()  # further config fields its reader takes
    # The paper's numbers (Chen et al. 2023, project-page version; docs/method.md) per subject's model
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


GOD = Target(
    name="GOD",
    read=create_god_dataset,
    path_field="kam_path",
    default_path="data/Kamitani/npz",
    subjects_field="kam_subs",
    default_subjects=("sbj_3",),
    rois=GOD_ROIS,
    batch_size_a2=16,
    batch_size_b=5,
    options=("roi", "test_category"),
    # 50-way top-1 of each subject's model; sbj_3 also 100-way and FID (best sample set / mean of 5)
    paper={
        "sbj_3": {
            "top-1-class (max)": 0.274,
            "top-1-class": 0.2385,
            "100-way top-1-class (max)": 0.212,
            "100-way top-1-class": 0.1736,
            "fid (best set)": 1.67,
            "fid": 2.22,
        },
        **{f"sbj_{k}": {"top-1-class": v} for k, v in ((1, 0.091), (2, 0.139), (4, 0.152), (5, 0.143))},
    },
)
BOLD5000 = Target(
    name="BOLD5000",
    read=create_bold5000_dataset,
    path_field="bold5000_path",
    default_path="data/BOLD5000",
    subjects_field="bold5000_subs",
    default_subjects=("CSI1",),
    batch_size_a2=4,
    batch_size_b=25,
    rois=GOD_ROIS,  # read whole (all five ROIs); --roi takes GOD's names, as the published config, and is unused
    # 50-way top-1 and FID of each subject's model
    paper={
        f"CSI{k}": {"top-1-class": a, "fid": f}
        for k, a, f in ((1, 0.345, 1.2), (2, 0.185, 1.9), (3, 0.210, 1.4), (4, 0.209, 1.3))
    },
)

NSD = Target(
    name="NSD",
    read=create_nsd_dataset,
    path_field="nsd_path",
    default_path="data/NSD",
    subjects_field="nsd_subs",
    default_subjects=("subj01",),
    rois=NSD_ROIS,  # the nsdgeneral mask, as both MindEye releases hold it
    batch_size_a2=16,  # not published for NSD: GOD's, the closer in trials per subject
    batch_size_b=5,
    options=("roi", "nsd_layout", "nsd_train_average"),
)

TARGETS = {target.name: target for target in (GOD, BOLD5000, NSD)}
DATASETS = tuple(TARGETS)
DEFAULT_DATASET = GOD.name  # the published configs' default


def load_target(data: Any, patch_size: int, include_nonavg_test: bool) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """The train and test sets of a stage's target data, without transforms.

    `data` is the target-data part of a stage config (`config.TargetData`: A2, B, gen_eval); the stage sets the
    transforms.
    """
    target = TARGETS[data.dataset]
    options = {name: getattr(data, name) for name in target.options}
    return target.read(
        getattr(data, target.path_field),
        patch_size=patch_size,
        subjects=getattr(data, target.subjects_field),
        include_nonavg_test=include_nonavg_test,
        **options,
    )


def stage_b_data(cfg: Any, patch_size: int) -> tuple[FMRIImageDataset, FMRIImageDataset, FMRIImageDataset]:
    """Stage B's (training pairs, validation items, test items) from its config (`config.StageBConfig`).

    The validation items are `val_split` training images held out of the pairs (drawn with the run's seed), or
    with `select_on test` the test set itself, as published; `num_train_images` keeps that many of the rest. The
    pairs get Stage B's transforms: random crops of the images (`crop_ratio`), voxel dropout (`fmri_dropout`).
    """
    train_set, test_set = load_target(cfg, patch_size, cfg.include_nonavg_test)
    if cfg.select_on == "val_split":
        train_images = len(np.unique(train_set.image_index))
        if cfg.val_split >= train_images:
            raise UserError(
                f"--val_split {cfg.val_split}: the training pairs show only {train_images} images; hold out fewer"
            )
        train_set, val_set = train_set.hold_out(cfg.val_split, cfg.seed)
    else:
        val_set = test_set
    if cfg.num_train_images is not None:
        train_set = split_images(train_set, cfg.num_train_images, "--num_train_images")[1]
    train_set.image_transform = model_image_transform(cfg.img_size, cfg.crop_ratio)
    train_set.transform = RandomVoxelDropout(cfg.fmri_dropout)
    return train_set, val_set, test_set
