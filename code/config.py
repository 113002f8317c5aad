"""Configuration: one dataclass per stage, with the published MinD-Vis defaults and field names.

Field names follow the published config classes (`Config_MBM_fMRI`, `Config_MBM_finetune`,
`Config_Generative_Model`, re-exported here from `published_configs` because checkpoints pickle them by reference
as `config.Config_*`) so that a config pickled in a published checkpoint maps onto ours (`from_dict`), and ours are
written back in that form (`published_configs.published_config`) so the original code reads our checkpoints.
Every field carries its one-line help and its group; the command line is generated from them:

    python code/stageA1_mbm_pretrain.py --mask_ratio 0.65 --num_epoch 800 --no-include_kam
    python code/stageA1_mbm_pretrain.py --config run.yaml --batch_size 64   # the flag wins

Booleans are `--flag/--no-flag` switches, lists take several values (`--kam_subs sbj_1 sbj_3`) and `None` is
spelled `None`. The resolved config is printed, saved as `config.yaml` in every run folder and stored in every
checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from errors import DEBUG_HELP, ArgumentParser, UsageError
from published_configs import (  # noqa: F401 - Config_*: checkpoints pickle them by reference as config.Config_*
    PRECISION_ALIASES,
    Config_Generative_Model,
    Config_MBM_finetune,
    Config_MBM_fMRI,
)
from readers.hcp import HCP_ROIS
from targets import BOLD5000, DATASETS, DEFAULT_DATASET, GOD, TARGETS, Target

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SELECT_ON = ("val_split", "test")  # where Stage B chooses the model it keeps
MIN_SAMPLER_STEPS = 4  # fewer start the sampler where the schedule still assumes signal in the start noise
GROUPS = ("data", "model", "optimisation", "run")


class ConfigError(UsageError, ValueError):
    """A configuration value is invalid; the message names the field."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def arg(default: Any, help: str, group: str = "run", cli: bool = True) -> Any:
    """A config field with its --help line and --help group; `cli=False` keeps it off the command line."""
    meta = {"help": help, "group": group, "cli": cli}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _by_dataset(default: str) -> str:
    """A per-dataset default of `targets.Target` for a help text, e.g. '16 for GOD, 4 for BOLD5000'."""
    return ", ".join(f"{getattr(target, default)} for {name}" for name, target in TARGETS.items())


def _under(root: str, value: str | None, default: str) -> str:
    """`value`, or `default` below the project root."""
    return value if value is not None else os.path.join(root, default)


# ----------------------------------------------------------------------------------------------------
# Field groups shared by several stages
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Architecture:
    """The masked-autoencoder architecture; later stages read it back from the Stage A checkpoint."""

    patch_size: int = arg(16, "voxels per token (the patch embedding's kernel and stride)", "model")
    embed_dim: int = arg(1024, "encoder width D (the paper's 'sparse coding' large embedding)", "model")
    depth: int = arg(24, "encoder blocks", "model")
    num_heads: int = arg(16, "encoder attention heads (must divide embed_dim)", "model")
    decoder_embed_dim: int = arg(512, "decoder width", "model")
    decoder_num_heads: int = arg(16, "decoder attention heads (must divide decoder_embed_dim)", "model")
    decoder_depth: int = arg(8, "decoder blocks (8 in every published checkpoint)", "model")
    mlp_ratio: float = arg(1.0, "MLP width / D in every block", "model")

    def _validate_architecture(self) -> None:
        _check(self.patch_size > 0, f"patch_size must be positive, got {self.patch_size}")
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            _check(h > 0 and w % h == 0, f"{width} ({w}) must be divisible by {heads} ({h})")
            _check(w % 2 == 0, f"{width} ({w}) must be even (sin-cos position embedding)")
        _check(min(self.depth, self.decoder_depth) > 0 and self.mlp_ratio > 0,
               "depth, decoder_depth and mlp_ratio must be positive")  # fmt: skip


ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(_Architecture))


@dataclass
class _Run:
    """Run-time settings of the training stages (ours; not in the published configs)."""

    output_path: str | None = arg(None, "where run folders go (default: <root_path>/results)")
    precision: str = arg("auto", f"one of {PRECISIONS}; auto: bf16 on GPUs that have it, else fp16, fp32 on CPU")
    log_every: int = arg(20, "a log line every N optimiser steps")
    num_workers: int = arg(0, "DataLoader workers (the data live in memory; workers rarely help)")
    resume: str | None = arg(None, "continue a run: its run folder or its checkpoint.pth (same flags as the run)")
    use_wandb: bool = arg(False, "log to Weights & Biases (never required, never by default)")
    wandb_project: str = arg("mind-vis", "wandb project name")

    def _validate_run(self) -> None:
        self.precision = PRECISION_ALIASES.get(str(self.precision), self.precision)
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.log_every > 0, f"log_every must be positive, got {self.log_every}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class _Optimisation:
    """AdamW with a per-iteration schedule: linear warm-up, then half-cosine to min_lr (Stage A)."""

    lr: float = arg(2.5e-4, "peak learning rate", "optimisation")
    min_lr: float = arg(0.0, "learning rate at the end of the half-cosine", "optimisation")
    weight_decay: float = arg(0.05, "AdamW weight decay (not on biases and 1-D parameters)", "optimisation")
    num_epoch: int = arg(500, "epochs", "optimisation")
    warmup_epochs: int = arg(40, "epochs of linear warm-up", "optimisation")
    batch_size: int = arg(100, "samples per step and process", "optimisation")
    clip_grad: float | None = arg(0.8, "gradient-norm clipping (None: off)", "optimisation")
    accum_iter: int = arg(1, "steps accumulated per optimiser update", "optimisation")
    mask_ratio: float = arg(0.75, "share of patches masked, in (0, 1)", "optimisation")
    ckpt_every: int = arg(20, "epochs between checkpoints (and reconstruction figures)", "run")
    allow_new_schedule: bool = arg(False, "with --resume: accept a changed lr / min_lr / num_epoch / warmup_epochs "
                                   "(the learning-rate schedule changes mid-run)")  # fmt: skip

    def _validate_optimisation(self) -> None:
        _check(self.lr > 0 and self.min_lr >= 0, f"lr must be positive and min_lr >= 0, got {self.lr}, {self.min_lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.num_epoch > 0 and self.batch_size > 0, "num_epoch and batch_size must be positive")
        _check(0 <= self.warmup_epochs <= self.num_epoch, f"warmup_epochs must be in [0, num_epoch={self.num_epoch}]")
        _check(self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be > 0 or None, got {self.clip_grad}")
        _check(self.accum_iter >= 1, f"accum_iter must be >= 1, got {self.accum_iter}")
        _check(self.ckpt_every >= 1, f"ckpt_every must be >= 1, got {self.ckpt_every}")
        # 0 would learn nothing (no patch to predict), 1 would leave the encoder nothing to see
        _check(0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass
class TargetData:
    """The target data set of Stages A2, B and gen_eval (GOD or BOLD5000)."""

    root_path: str = arg(".", "project root: data/, pretrains/ and results/ are looked up below it", "data")
    kam_path: str | None = arg(None, f"GOD folder (default: <root_path>/{GOD.default_path})", "data")
    bold5000_path: str | None = arg(None, f"BOLD5000 folder (default: <root_path>/{BOLD5000.default_path})", "data")
    dataset: str = arg(DEFAULT_DATASET, f"target data set, one of {DATASETS}", "data")
    kam_subs: list[str] = arg(list(GOD.default_subjects), "GOD subjects", "data")
    bold5000_subs: list[str] = arg(list(BOLD5000.default_subjects), "BOLD5000 subjects", "data")
    roi: str = arg("VC", "region of interest (GOD: V1..V4, LOC, FFA, PPA, LVC, HVC, VC; BOLD5000 always all)", "data")
    test_category: list[int] | None = arg(None, "GOD: hold out one training image of each of these categories "
                                          "as the test set", "data")  # fmt: skip
    seed: int = arg(2022, "random seed (each process of a distributed run adds its rank)", "run")

    def _resolve_data(self) -> None:
        _check(self.dataset in TARGETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        rois = TARGETS[self.dataset].rois
        _check(self.roi in rois, f"roi must be one of {rois}, got {self.roi!r}")
        for target in TARGETS.values():
            setattr(self, target.path_field, _under(self.root_path, getattr(self, target.path_field),
                                                    target.default_path))  # fmt: skip
        _check(len(self.subjects) > 0, f"no subjects given for {self.dataset}")

    @property
    def target(self) -> Target:
        """The entry of the target data set (`targets.TARGETS`)."""
        return TARGETS[self.dataset]

    @property
    def subjects(self) -> list[str]:
        return getattr(self, self.target.subjects_field)


# ----------------------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------------------


@dataclass
class StageA1Config(_Run, _Optimisation, _Architecture):
    """Stage A1: SC-MBM pre-training on HCP (+ GOD training fMRI). Published class `Config_MBM_fMRI`."""

    root_path: str = arg(".", "project root: data/ and results/ are looked up below it", "data")
    hcp_path: str | None = arg(None, "HCP folder (default: <root_path>/data/HCP/npz)", "data")
    kam_path: str | None = arg(None, "GOD folder for include_kam (default: <root_path>/data/Kamitani/npz)", "data")
    include_hcp: bool = arg(True, "pre-train on the HCP resting state", "data")
    include_kam: bool = arg(True, "add the GOD training fMRI of every subject", "data")
    roi: str = arg("VC", "HCP region: V1, V2, V3, V4 or VC (all four)", "data")
    num_sub_limit: int | None = arg(None, "read at most this many HCP subjects (sorted)", "data")
    aug_times: int = arg(1, "> 1 adds (aug_times - 1) x N interpolated HCP samples", "data")
    val_hcp_path: str | None = arg(None, "held-out HCP subjects scored after every epoch", "data")
    val_kam_subs: list[str] | None = arg(None, "GOD subjects whose test fMRI is scored after every epoch", "data")
    focus_range: list[int] | None = arg(None, "two voxel indices: mask patches in this range more often", "model")
    focus_rate: float = arg(0.6, "with focus_range: masking weight inside the range (1 - rate outside)", "model")
    num_voxels: int | None = arg(None, "set from the data (stored in checkpoints)", "model", cli=False)
    seed: int = arg(2022, "random seed (each process of a distributed run adds its rank)", "run")

    def __post_init__(self) -> None:
        self.output_path = _under(self.root_path, self.output_path, "results")
        self.hcp_path = _under(self.root_path, self.hcp_path, "data/HCP/npz")
        self.kam_path = _under(self.root_path, self.kam_path, "data/Kamitani/npz")
        self.validate()

    def validate(self) -> None:
        self._validate_architecture()
        self._validate_run()
        self._validate_optimisation()
        _check(self.include_hcp or self.include_kam, "at least one of include_hcp / include_kam must be set")
        _check(self.roi in ("VC", *HCP_ROIS), f"roi must be VC, V1, V2, V3 or V4, got {self.roi!r}")
        _check(self.aug_times >= 1, f"aug_times must be >= 1, got {self.aug_times}")
        _check(self.num_sub_limit is None or self.num_sub_limit >= 1, "num_sub_limit must be None or >= 1")
        focus = self.focus_range
        _check(focus is None or (len(focus) == 2 and 0 <= focus[0] < focus[1]),
               f"focus_range must be two increasing voxel indices or None, got {focus}")  # fmt: skip
        _check(0.0 <= self.focus_rate <= 1.0, f"focus_rate must be in [0, 1], got {self.focus_rate}")
        _check(self.val_kam_subs is None or len(self.val_kam_subs) > 0, "val_kam_subs must name subjects or be None")


@dataclass
class StageA2Config(_Run, _Optimisation, TargetData):
    """Stage A2: SC-MBM finetuning on the target data's test fMRI. Published class `Config_MBM_finetune`."""

    pretrain_mbm_path: str | None = arg(
        None, "Stage A checkpoint to finetune (default: <root_path>/pretrains/<dataset>/fmri_encoder.pth)", "model"
    )
    include_nonavg_test: bool = arg(True, "train on the single test trials too, not only their averages", "data")
    patch_size: int = arg(16, "taken from the Stage A checkpoint", "model", cli=False)
    lr: float = arg(5.3e-5, "peak learning rate", "optimisation")
    num_epoch: int = arg(15, "epochs", "optimisation")
    batch_size: int | None = arg(None, f"samples per step and process (default: {_by_dataset('batch_size_a2')})",
                                 "optimisation")  # fmt: skip
    warmup_epochs: int = arg(2, "epochs of linear warm-up", "optimisation")
    ckpt_every: int = arg(2, "epochs between checkpoints (and reconstruction figures)", "run")

    def __post_init__(self) -> None:
        self._resolve_data()
        self.output_path = _under(self.root_path, self.output_path, "results")
        self.pretrain_mbm_path = _under(self.root_path, self.pretrain_mbm_path,
                                        f"pretrains/{self.dataset}/fmri_encoder.pth")  # fmt: skip
        if self.batch_size is None:
            self.batch_size = self.target.batch_size_a2
        self.validate()

    def validate(self) -> None:
        self._validate_run()
        self._validate_optimisation()


@dataclass
class StageBConfig(_Run, TargetData):
    """Stage B: DC-LDM finetuning on fMRI-image pairs. Published class `Config_Generative_Model`."""

    pretrain_gm_path: str | None = arg(
        None, "label-conditioned LDM folder, config.yaml + model.ckpt (default: <root_path>/pretrains/ldm/label2img)",
        "model",
    )
    pretrain_mbm_path: str | None = arg(
        None, "Stage A checkpoint whose encoder conditions the LDM (default: <root_path>/pretrains/<dataset>/"
        "fmri_encoder.pth)", "model",
    )
    global_pool: bool = arg(False, "condition on the mean encoder token instead of 77 mapped tokens", "model")
    use_time_cond: bool = arg(True, "double conditioning: add the context to the timestep embedding too", "model")
    cond_dropout: float = arg(0.0, "replace the fMRI context by a learned null context with this probability, "
                              "for classifier-free guidance (0: the published method)", "model")  # fmt: skip
    linear_pool: bool = arg(False, "with global_pool: the one context token is a Linear map of all encoder tokens, "
                            "not their mean (ours)", "model")  # fmt: skip
    ridge_init: bool = arg(False, "with linear_pool: start it as the ridge regression (penalty by cross-validation) "
                           "from the encoder's tokens of the training fMRI to the LDM's class embedding of their "
                           "labels (ours; needs class labels)", "model")  # fmt: skip
    freeze_encoder: bool = arg(False, "keep the Stage A encoder fixed (published: trained)", "model")
    freeze_mapper: bool = arg(False, "keep the conditioner's mappers fixed, e.g. after ridge_init (published: "
                              "trained)", "model")  # fmt: skip
    patch_size: int = arg(16, "taken from the Stage A checkpoint", "model", cli=False)
    model_meta: dict | None = arg(None, "the encoder architecture, stored for gen_eval", "model", cli=False)
    latent_views: int = arg(0, "> 0: encode every training image (its random crops) this many times once, instead "
                            "of at every step (faster; 0: as published)", "data")  # fmt: skip
    img_size: int = arg(256, "image side the LDM sees (a multiple of 8)", "data")
    crop_ratio: float = arg(0.2, "random crop (p = 0.5) removing this share of the side, resized back", "data")
    fmri_dropout: float = arg(0.0, "voxel dropout of the training fMRI (0: as published, see docs/defects.md #2)",
                              "data")  # fmt: skip
    include_nonavg_test: bool = arg(False, "validate on single test trials too", "data")
    lr: float = arg(5.3e-5, "AdamW learning rate (constant)", "optimisation")
    num_epoch: int = arg(500, "epochs", "optimisation")
    batch_size: int | None = arg(None, f"pairs per step and process (default: {_by_dataset('batch_size_b')})",
                                 "optimisation")  # fmt: skip
    accumulate_grad: int = arg(1, "steps accumulated per optimiser update", "optimisation")
    clip_grad: float | None = arg(0.5, "gradient-norm clipping (None: off)", "optimisation")
    allow_new_schedule: bool = arg(False, "with --resume: accept a changed lr (the rate changes mid-run)",
                                   "optimisation")  # fmt: skip
    val_every: int = arg(5, "epochs between validations (sampling test items) and checkpoints", "run")
    num_val_items: int = arg(5, "fMRI decoded at each validation (the first of the validation set)", "run")
    snapshot_epochs: list[int] | None = arg(None, "also write the model after these epochs (counted from 1) as "
                                            "snapshot_epoch<N>.pth, each readable by gen_eval: a learning curve",
                                            "run")  # fmt: skip
    select_on: str = arg("val_split", "where the kept model is chosen: 'val_split', images held out of the training "
                         "pairs; 'test', the first test items, as published (the test score is then chosen on the "
                         "test set)", "run")  # fmt: skip
    val_split: int = arg(50, "with select_on val_split: training images held out (all their fMRI) to validate on",
                         "run")  # fmt: skip
    num_samples: int = arg(5, "images per fMRI (validation here, the default of gen_eval)", "run")
    ddim_steps: int = arg(250, f"PLMS steps per image (at least {MIN_SAMPLER_STEPS})", "run")
    guidance_scale: float = arg(1.0, "classifier-free guidance at validation (needs cond_dropout > 0)", "run")
    classifier: str | None = arg(None, "n-way classifier file (a torch.export program, see docs/formats.md); "
                                 "default: ViT-H/14 from the local torchvision cache", "run")  # fmt: skip

    def __post_init__(self) -> None:
        self._resolve_data()
        self.output_path = _under(self.root_path, self.output_path, "results")
        self.pretrain_gm_path = _under(self.root_path, self.pretrain_gm_path, "pretrains/ldm/label2img")
        self.pretrain_mbm_path = _under(self.root_path, self.pretrain_mbm_path,
                                        f"pretrains/{self.dataset}/fmri_encoder.pth")  # fmt: skip
        if self.batch_size is None:
            self.batch_size = self.target.batch_size_b
        self.validate()

    def validate(self) -> None:
        self._validate_run()
        _check(self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(self.num_epoch > 0 and self.batch_size > 0, "num_epoch and batch_size must be positive")
        _check(self.accumulate_grad >= 1, f"accumulate_grad must be >= 1, got {self.accumulate_grad}")
        _check(self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be > 0 or None, got {self.clip_grad}")
        _check(0.0 <= self.crop_ratio < 1.0, f"crop_ratio must be in [0, 1), got {self.crop_ratio}")
        _check(0.0 <= self.fmri_dropout < 1.0, f"fmri_dropout must be in [0, 1), got {self.fmri_dropout}")
        _check(0.0 <= self.cond_dropout < 1.0, f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        _check(not self.linear_pool or self.global_pool, "linear_pool makes one context token: it needs --global_pool")
        _check(not self.ridge_init or self.linear_pool, "ridge_init starts the linear pool: it needs --linear_pool")
        _check(self.latent_views >= 0, f"latent_views must be >= 0, got {self.latent_views}")
        _check(self.img_size > 0 and self.img_size % 8 == 0, f"img_size must be a multiple of 8, got {self.img_size}")
        _check(self.val_every >= 1 and self.num_val_items >= 2, "val_every must be >= 1 and num_val_items >= 2")
        _check(not self.snapshot_epochs or 1 <= min(self.snapshot_epochs), f"snapshot_epochs count from 1, got "
               f"{self.snapshot_epochs}")  # fmt: skip
        _check(self.select_on in SELECT_ON, f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        _check(self.select_on != "val_split" or self.val_split >= 2,
               f"val_split must hold out at least 2 images, got {self.val_split}")  # fmt: skip
        _check_sampling(self.num_samples, self.ddim_steps, self.guidance_scale, self.cond_dropout)


@dataclass
class GenEvalConfig(TargetData):
    """gen_eval: decode every test fMRI into images with a finetuned model and score them.

    The data set, subjects and ROI default to those stored in the checkpoint; every path given here wins over
    the paths stored in it (relative stored paths are resolved against root_path).
    """

    protocol: str | None = arg(None, "'published': the paper's protocol (5 samples, 250 PLMS steps, mse_uint8, 50- "
                               "and 100-way top-1 over 1000 trials, FID), printed beside the paper's numbers; it "
                               "sets those flags", "run")  # fmt: skip
    checkpoint: str | None = arg(None, "Stage B checkpoint (default: <root_path>/pretrains/<dataset>/finetuned.pth)",
                                 "model")  # fmt: skip
    pretrain_gm_path: str | None = arg(None, "LDM folder whose config.yaml gives the architecture (default: the "
                                       "checkpoint's, else <root_path>/pretrains/ldm/label2img)", "model")  # fmt: skip
    pretrain_mbm_path: str | None = arg(None, "Stage A checkpoint giving the encoder architecture when the Stage B "
                                        "checkpoint lacks it, as the original reads it (default: <root_path>/"
                                        "pretrains/<dataset>/fmri_encoder.pth)", "model")  # fmt: skip
    dataset: str | None = arg(None, f"one of {DATASETS} (default: the checkpoint's)", "data")
    kam_subs: list[str] | None = arg(None, "GOD subjects (default: the checkpoint's)", "data")
    bold5000_subs: list[str] | None = arg(None, "BOLD5000 subjects (default: the checkpoint's)", "data")
    roi: str | None = arg(None, "region of interest (default: the checkpoint's)", "data")
    output_path: str | None = arg(None, "where run folders go (default: <root_path>/results)", "run")
    limit: int | None = arg(None, "decode only the first N test fMRI", "data")
    shuffle_fmri: bool = arg(False, "control: decode each test image from another image's fMRI (a fixed "
                             "derangement); scores should fall to chance", "data")  # fmt: skip
    num_samples: int = arg(5, "images per fMRI", "run")
    ddim_steps: int = arg(250, f"sampler steps per image (at least {MIN_SAMPLER_STEPS})", "run")
    sampler: str = arg("plms", "plms (published) or ddim", "run")
    eta: float = arg(0.0, "DDIM eta (0: deterministic)", "run")
    guidance_scale: float | None = arg(None, "classifier-free guidance (needs a model trained with cond_dropout > 0; "
                                       "default: the checkpoint's own, 1 for published ones)", "run")  # fmt: skip
    batch_size: int = arg(25, "images per sampler call (test fMRI x samples are batched together)", "run")
    n_way: int = arg(50, "n of the n-way top-1 accuracy", "run")
    num_trials: int = arg(1000, "n-way trials per image", "run")
    metrics: list[str] = arg(["mse", "pcc", "ssim", "lpips", "n_way", "fid"], "metrics to compute (see "
                             "eval_metrics.METRICS)", "run")  # fmt: skip
    baselines: bool = arg(False, "also score a ridge regression from the training fMRI to the images", "run")
    precision: str = arg("auto", f"one of {PRECISIONS}; auto: bf16 on GPUs that have it, else fp16, fp32 on CPU",
                         "run")  # fmt: skip
    device: str = arg("auto", "auto (cuda when available), cpu, cuda, cuda:1, ...", "run")
    compile: bool = arg(False, "torch.compile the UNet for sampling, weights frozen (benchmarks/README.md: 1.45-1.7x "
                        "a UNet call on a CPU after 2-3 minutes of compiling): for long runs", "run")  # fmt: skip
    classifier: str | None = arg(None, "n-way classifier file (a torch.export program, see docs/formats.md); "
                                 "default: ViT-H/14 from the local torchvision cache", "run")  # fmt: skip

    def __post_init__(self) -> None:
        _check(self.dataset is None or self.dataset in TARGETS,
               f"dataset must be one of {DATASETS}, got {self.dataset!r}")  # fmt: skip
        _check(self.protocol in (None, "published"), f"protocol must be 'published' or None, got {self.protocol!r}")
        if self.protocol == "published":
            self.num_samples, self.ddim_steps, self.sampler, self.eta, self.guidance_scale = 5, 250, "plms", 0.0, 1.0
            self.n_way, self.num_trials, self.limit, self.shuffle_fmri = 50, 1000, None, False
            self.metrics = ["mse_uint8", "pcc", "ssim", "lpips", "n_way", "fid"]
        from eval_metrics import METRIC_GROUPS, METRICS  # the metric names are eval_metrics' to define

        unknown = [m for m in self.metrics if m not in METRICS and m not in METRIC_GROUPS]
        _check(not unknown, f"unknown metric(s) {unknown}; expected names from {[*METRICS, *METRIC_GROUPS]}")
        self.output_path = _under(self.root_path, self.output_path, "results")
        _check(self.sampler in ("plms", "ddim"), f"sampler must be 'plms' or 'ddim', got {self.sampler!r}")
        self.precision = PRECISION_ALIASES.get(str(self.precision), self.precision)
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        _check(self.limit is None or self.limit >= 2, f"limit must be at least 2 or None, got {self.limit}")
        _check(1 < self.n_way and self.num_trials > 0, "n_way must be > 1 and num_trials positive")
        _check_sampling(self.num_samples, self.ddim_steps, self.guidance_scale or 1.0, None)


def _check_sampling(num_samples: int, ddim_steps: int, guidance_scale: float, cond_dropout: float | None) -> None:
    _check(num_samples > 0, f"num_samples must be positive, got {num_samples}")
    _check(ddim_steps >= MIN_SAMPLER_STEPS,
           f"ddim_steps must be at least {MIN_SAMPLER_STEPS}, got {ddim_steps}: with fewer the first step starts "
           "where the schedule still expects signal in the start noise, and the image stays noise (published: 250)")
    _check(guidance_scale >= 1.0, f"guidance_scale must be >= 1 (1: no guidance), got {guidance_scale}")
    _check(cond_dropout is None or guidance_scale == 1.0 or cond_dropout > 0,
           "guidance_scale > 1 needs a model trained with cond_dropout > 0 (it learns the null context)")


# ----------------------------------------------------------------------------------------------------
# Command line and YAML files
# ----------------------------------------------------------------------------------------------------

_NONE = ("none", "null")


def _field_types(cls: type) -> dict[str, tuple[type, bool, bool]]:
    """name -> (scalar type, is_list, is_optional) for every dataclass field."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        args = typing.get_args(tp)
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            optional = type(None) in args
            tp = next(a for a in args if a is not type(None))
        is_list = typing.get_origin(tp) is list
        out[f.name] = (typing.get_args(tp)[0] if is_list else tp, is_list, optional)
    return out


def _parse_scalar(tp: type, optional: bool):
    def parse(text: str):
        if optional and text.lower() in _NONE:
            return None
        return tp(text)

    parse.__name__ = tp.__name__  # argparse names the type in its error messages
    return parse


def build_parser(cls: type, usage: str | None = None) -> argparse.ArgumentParser:
    """One option per command-line field of `cls`, grouped, each with its help; `--config FILE.yaml`, `--debug`.

    `usage` (the script's docstring: what it does and example commands) opens the help text.
    """
    parser = ArgumentParser(
        description=usage or cls.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags the user gives override the defaults / YAML
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of field values; flags override it")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp, is_list, optional = types_[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default})" if default is not None else f.metadata["help"]
        group = groups[f.metadata.get("group", "run")]
        if tp is bool and not is_list:
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_text)
        elif is_list:
            group.add_argument(f"--{f.name}", nargs="*", type=_parse_scalar(tp, False), metavar=tp.__name__.upper(),
                               help=help_text)  # fmt: skip
        else:
            group.add_argument(f"--{f.name}", type=_parse_scalar(tp, optional), metavar=tp.__name__.upper(),
                               help=help_text)  # fmt: skip
    return parser


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping of config fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def from_dict(cls: type, values: dict, strict: bool = True):
    """Build `cls` from a dict of field values (ours, a YAML file, or a published config's attributes).

    With `strict`, unknown keys are an error; otherwise they are ignored (published configs carry fields such as
    `logger` or `HW` that have no meaning here).
    """
    return cls(**typed_fields(cls, values, strict))


def typed_fields(cls: type, values: dict, strict: bool = True, source: object = None) -> dict:
    """The values of `cls`'s fields in `values`, each checked to be of its field's type (an error names `source`,
    e.g. a YAML file, and the field): a boolean is no number, a list or mapping no text; ints do for floats, and so
    does text that reads as a number (PyYAML reads `1e-4` as text)."""
    types_ = _field_types(cls)
    try:
        unknown = sorted(set(values) - set(types_))
        if strict and unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return {name: _coerce(name, value, *types_[name]) for name, value in values.items() if name in types_}
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source is not None else str(e)) from None


def _coerce(name: str, value: Any, tp: type, is_list: bool, optional: bool) -> Any:
    if value is None:
        _check(optional, f"{name} must not be None")
        return None
    if is_list:
        _check(isinstance(value, list | tuple), f"{name} must be a list, got {value!r}")
        return [_coerce(name, v, tp, False, False) for v in value]
    if tp is bool:
        _check(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        what = "a whole number" if tp is int else "a number"
        _check(isinstance(value, int | float | str) and not isinstance(value, bool), f"{name} must be {what}, got "
               f"{value!r}")  # fmt: skip
        try:
            number = int(value) if tp is int and isinstance(value, str) else float(value)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got {value!r}") from None
        _check(math.isfinite(number), f"{name} must be a finite number, got {value!r}")
        if tp is int:  # a float that is not a whole number would be truncated silently
            _check(float(number).is_integer(), f"{name} must be a whole number, got {value!r}")
            return int(number)
        return number
    if tp is str:  # numbers become text (the published `precision: 32`); a list, mapping or boolean does not
        _check(isinstance(value, str | int | float) and not isinstance(value, bool), f"{name} must be text, got "
               f"{value!r}")  # fmt: skip
        return str(value)
    if tp is dict:
        _check(isinstance(value, dict), f"{name} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{name}: a field of type {tp.__name__} cannot be read from a file")


def parse_config(cls: type, argv: list[str] | None = None, usage: str | None = None):
    """Defaults, then `--config FILE.yaml`, then command-line flags; validated. Exits with a message on error."""
    parser = build_parser(cls, usage)
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    args.pop("debug", None)
    try:
        values = _run_config(cls, args["resume"]) if args.get("resume") else {}
        if "config" in args:
            path = args.pop("config")
            values.update(typed_fields(cls, load_yaml(path), source=path))
        values.update(args)
        return from_dict(cls, values)
    except ConfigError as e:
        parser.error(str(e))


def _run_config(cls: type, resume: str) -> dict:
    """With `--resume RUN`: the run's own config.yaml, so that resuming needs no other flag (flags still win)."""
    run = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    path = run / "config.yaml"
    return typed_fields(cls, load_yaml(path), source=path) if path.is_file() else {}


def config_to_dict(cfg: Any) -> dict:
    """The config as a plain dict (config.yaml, wandb)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, folder: str | os.PathLike) -> Path:
    """Write the resolved config as `config.yaml` into `folder`."""
    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def format_config(cfg: Any) -> str:
    """A readable multi-line listing of the config, for the log."""
    values = config_to_dict(cfg)
    width = max(len(k) for k in values)
    return "\n".join(f"  {k:<{width}} {v}" for k, v in values.items())
