"""Configuration: one dataclass per stage, with the published MinD-Vis defaults and field names.

Field names follow the published config classes (`Config_MBM_fMRI`, `Config_MBM_finetune`,
`Config_Generative_Model`) so that a config pickled in a published checkpoint maps onto ours (`from_dict`), and
ours are written back in that form (`published_configs.published_config`) so the original code reads our
checkpoints; those classes are re-exported here because checkpoints pickle them by reference as `config.Config_*`.
Every field carries its one-line help and its group; `config_engine.parse_config` makes the command line of a
stage from them. The names a field may take come from where they are defined: the data sets from
`targets.TARGETS`, the samplers from `samplers.SAMPLERS`, the metrics from `eval_metrics.METRICS`. The resolved
config is printed, saved as `config.yaml` in every run folder and stored in every checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bounded import short_repr
from config_engine import arg, check
from corpora import CORPORA
from dataset import HELD_OUT_SEED
from dc_ldm.conditioners import CONDITIONERS
from dc_ldm.ldm_for_fmri import TIME_COND_STARTS
from dc_ldm.models.diffusion.samplers import SAMPLERS
from eval_metrics import METRIC_GROUPS, METRICS
from published_configs import (  # noqa: F401 - Config_*: checkpoints pickle them by reference as config.Config_*
    PRECISION_ALIASES,
    Config_Generative_Model,
    Config_MBM_finetune,
    Config_MBM_fMRI,
    stage_b_conditioner,
)
from readers.hcp import HCP_ROIS
from readers.nsd import NSD_LAYOUTS
from sc_mbm.architecture import MAEArchitecture
from targets import BOLD5000, DATASETS, DEFAULT_DATASET, GOD, NSD, TARGETS, Target

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SELECT_ON = ("val_split", "test")  # where Stage B chooses the model it keeps
MIN_SAMPLER_STEPS = 4  # fewer start the sampler where the schedule still assumes signal in the start noise


def _by_dataset(default: str) -> str:
    """A per-dataset default of `targets.Target` for a help text, e.g. '16 for GOD, 4 for BOLD5000'."""
    return ", ".join(f"{getattr(target, default)} for {name}" for name, target in TARGETS.items())


def _under(root: str, value: str | None, default: str) -> str:
    """`value`, or `default` below the project root."""
    return value if value is not None else os.path.join(root, default)


def _precision(value: str) -> str:
    """A precision in our spelling (the published configs' and Lightning's are accepted, `precision = 32`)."""
    value = PRECISION_ALIASES.get(str(value), value)
    check(value in PRECISIONS, f"precision must be one of {PRECISIONS}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# Field groups shared by several stages
# ----------------------------------------------------------------------------------------------------


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
        self.precision = _precision(self.precision)
        check(self.log_every > 0, f"log_every must be positive, got {self.log_every}")
        check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")


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
    allow_new_schedule: bool = arg(
        False,
        "with --resume: accept a changed lr / min_lr / num_epoch / warmup_epochs "
        "(the learning-rate schedule changes mid-run)",
    )

    def _validate_optimisation(self) -> None:
        check(self.lr > 0 and self.min_lr >= 0, f"lr must be positive and min_lr >= 0, got {self.lr}, {self.min_lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.num_epoch > 0 and self.batch_size > 0, "num_epoch and batch_size must be positive")
        check(
            0 <= self.warmup_epochs < self.num_epoch,
            f"warmup_epochs must be in [0, num_epoch={self.num_epoch}): the warm-up must end before the run does "
            f"(the learning rate reaches its peak, then the half-cosine), got {self.warmup_epochs}",
        )
        check(self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be > 0 or None, got {self.clip_grad}")
        check(self.accum_iter >= 1, f"accum_iter must be >= 1, got {self.accum_iter}")
        check(self.ckpt_every >= 1, f"ckpt_every must be >= 1, got {self.ckpt_every}")
        # 0 would learn nothing (no patch to predict), 1 would leave the encoder nothing to see
        check(0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass
class TargetData:
    """The target data set of Stages A2, B and gen_eval (GOD or BOLD5000)."""

    root_path: str = arg(".", "project root: data/, pretrains/ and results/ are looked up below it", "data")
    kam_path: str | None = arg(None, f"GOD folder (default: <root_path>/{GOD.default_path})", "data")
    bold5000_path: str | None = arg(None, f"BOLD5000 folder (default: <root_path>/{BOLD5000.default_path})", "data")
    nsd_path: str | None = arg(None, f"NSD folder (default: <root_path>/{NSD.default_path})", "data")
    dataset: str = arg(DEFAULT_DATASET, f"target data set, one of {DATASETS}", "data")
    kam_subs: list[str] = arg(list(GOD.default_subjects), "GOD subjects", "data")
    bold5000_subs: list[str] = arg(list(BOLD5000.default_subjects), "BOLD5000 subjects", "data")
    nsd_subs: list[str] = arg(list(NSD.default_subjects), "NSD subjects (subj01 ... subj08)", "data")
    roi: str = arg(
        "VC",
        "region of interest (GOD: V1..V4, LOC, FFA, PPA, LVC, HVC, VC; BOLD5000 always all; NSD nsdgeneral)",
        "data",
    )
    test_category: list[int] | None = arg(
        None, "GOD: hold out one training image of each of these categories as the test set", "data"
    )
    nsd_layout: str = arg(
        "auto", f"NSD: which release's files to read, one of {NSD_LAYOUTS} (auto: the one found)", "data"
    )
    nsd_train_average: bool = arg(
        False, "NSD: train on each image's mean over its presentations, not on single trials", "data"
    )
    seed: int = arg(2022, "random seed (each process of a distributed run adds its rank)", "run")

    def _resolve_data(self) -> None:
        check(self.dataset in TARGETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        rois = TARGETS[self.dataset].rois
        check(self.roi in rois, f"roi must be one of {rois}, got {self.roi!r}")
        check(self.nsd_layout in NSD_LAYOUTS, f"nsd_layout must be one of {NSD_LAYOUTS}, got {self.nsd_layout!r}")
        for target in TARGETS.values():
            setattr(
                self, target.path_field, _under(self.root_path, getattr(self, target.path_field), target.default_path)
            )
        check(len(self.subjects) > 0, f"no subjects given for {self.dataset}")

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
class StageA1Config(_Run, _Optimisation, MAEArchitecture):
    """Stage A1: SC-MBM pre-training on HCP (+ GOD training fMRI). Published class `Config_MBM_fMRI`."""

    root_path: str = arg(".", "project root: data/ and results/ are looked up below it", "data")
    hcp_path: str | None = arg(None, "HCP folder (default: <root_path>/data/HCP/npz)", "data")
    kam_path: str | None = arg(None, "GOD folder for include_kam (default: <root_path>/data/Kamitani/npz)", "data")
    include_hcp: bool = arg(True, "pre-train on the HCP resting state", "data")
    include_kam: bool = arg(True, "add the GOD training fMRI of every subject", "data")
    include_nsd: bool = arg(False, "add the NSD training trials of nsd_subs (any MindEye layout)", "data")
    nsd_path: str | None = arg(None, f"NSD folder for include_nsd (default: <root_path>/{NSD.default_path})", "data")
    nsd_subs: list[str] = arg(list(NSD.default_subjects), "NSD subjects for include_nsd", "data")
    fmri_folder: str | None = arg(
        None, "add every .npy array (samples, voxels) in this folder: pre-training fMRI of your own", "data"
    )
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
        self.nsd_path = _under(self.root_path, self.nsd_path, NSD.default_path)
        self.validate()

    def validate(self) -> None:
        self._validate_architecture()
        self._validate_run()
        self._validate_optimisation()
        check(
            any(getattr(self, c.field) for c in CORPORA.values()),
            f"no pre-training corpus: set at least one of {' / '.join(c.field for c in CORPORA.values())}",
        )
        check(not self.include_nsd or len(self.nsd_subs) > 0, "include_nsd needs subjects in nsd_subs")
        check(self.roi in ("VC", *HCP_ROIS), f"roi must be VC, V1, V2, V3 or V4, got {self.roi!r}")
        check(self.aug_times >= 1, f"aug_times must be >= 1, got {self.aug_times}")
        check(self.num_sub_limit is None or self.num_sub_limit >= 1, "num_sub_limit must be None or >= 1")
        focus = self.focus_range
        check(
            focus is None or (len(focus) == 2 and 0 <= focus[0] < focus[1]),
            f"focus_range must be two increasing voxel indices or None, got {focus}",
        )
        check(0.0 <= self.focus_rate <= 1.0, f"focus_rate must be in [0, 1], got {self.focus_rate}")
        check(self.val_kam_subs is None or len(self.val_kam_subs) > 0, "val_kam_subs must name subjects or be None")


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
    batch_size: int | None = arg(
        None, f"samples per step and process (default: {_by_dataset('batch_size_a2')})", "optimisation"
    )
    warmup_epochs: int = arg(2, "epochs of linear warm-up", "optimisation")
    ckpt_every: int = arg(2, "epochs between checkpoints (and reconstruction figures)", "run")
    val_images: int = arg(
        0,
        "test images (all their fMRI: averages and single trials) left out of training and reconstructed with "
        "fixed masks after every epoch (val_test_* in metrics.jsonl): the learning curve on fMRI A2 never saw; the "
        f"same images whatever the seed (drawn with seed {HELD_OUT_SEED}); 0: train on every test image, as published",
        "run",
    )

    def __post_init__(self) -> None:
        self._resolve_data()
        self.output_path = _under(self.root_path, self.output_path, "results")
        self.pretrain_mbm_path = _under(
            self.root_path, self.pretrain_mbm_path, f"pretrains/{self.dataset}/fmri_encoder.pth"
        )
        if self.batch_size is None:
            self.batch_size = self.target.batch_size_a2
        self.validate()

    def validate(self) -> None:
        self._validate_run()
        self._validate_optimisation()
        check(self.val_images >= 0, f"val_images must be >= 0, got {self.val_images}")


@dataclass
class StageBConfig(_Run, TargetData):
    """Stage B: DC-LDM finetuning on fMRI-image pairs. Published class `Config_Generative_Model`."""

    pretrain_gm_path: str | None = arg(
        None,
        "label-conditioned LDM folder, config.yaml + model.ckpt (default: <root_path>/pretrains/ldm/label2img)",
        "model",
    )
    pretrain_mbm_path: str | None = arg(
        None,
        "Stage A checkpoint whose encoder conditions the LDM (default: <root_path>/pretrains/<dataset>/"
        "fmri_encoder.pth)",
        "model",
    )
    conditioner: str = arg(
        "published",
        f"the fMRI conditioner, one of {tuple(CONDITIONERS)}: 'published' (77 tokens mapped from the encoder's), "
        "'global_pool' (the mean token; the published flag of that name), 'linear_pool' (one token, a Linear map "
        "of all; ours), 'patch_tokens' (every encoder token; ours); dc_ldm/conditioners",
        "model",
    )
    use_time_cond: bool = arg(True, "double conditioning: add the context to the timestep embedding too", "model")
    time_cond_start: str = arg(
        "published",
        "how double conditioning's new layers (time_embed_condtion, absent from a label LDM's file) start: "
        "'published' (PyTorch's default initialisation, as the original) or 'zero' (their last Linear zero, so "
        "training starts from cross-attention only; ours, docs/defects.md #16)",
        "model",
    )
    cond_dropout: float = arg(
        0.0,
        "replace the fMRI context by a learned null context with this probability, "
        "for classifier-free guidance (0: the published method)",
        "model",
    )
    ridge_init: bool = arg(
        False,
        "with --conditioner linear_pool or patch_tokens: start its mapper as the ridge regression (penalty by "
        "cross-validation) from the encoder's tokens of the training fMRI to the LDM's class embedding of their "
        "labels (ours; needs class labels)",
        "model",
    )
    freeze_encoder: bool = arg(False, "keep the Stage A encoder fixed (published: trained)", "model")
    freeze_mapper: bool = arg(
        False, "keep the conditioner's mappers fixed, e.g. after ridge_init (published: trained)", "model"
    )
    patch_size: int = arg(16, "taken from the Stage A checkpoint", "model", cli=False)
    model_meta: dict | None = arg(None, "the encoder architecture, stored for gen_eval", "model", cli=False)
    latent_views: int = arg(
        0,
        "> 0: encode every training image (its random crops) this many times once, instead "
        "of at every step (faster; 0: as published)",
        "data",
    )
    img_size: int = arg(256, "image side the LDM sees (a multiple of 8)", "data")
    crop_ratio: float = arg(0.2, "random crop (p = 0.5) removing this share of the side, resized back", "data")
    fmri_dropout: float = arg(
        0.0, "voxel dropout of the training fMRI (0: as published, see docs/defects.md #2)", "data"
    )
    include_nonavg_test: bool = arg(False, "validate on single test trials too", "data")
    lr: float = arg(5.3e-5, "AdamW learning rate (constant)", "optimisation")
    num_epoch: int = arg(500, "epochs", "optimisation")
    batch_size: int | None = arg(
        None, f"pairs per step and process (default: {_by_dataset('batch_size_b')})", "optimisation"
    )
    accum_iter: int = arg(
        1,
        "steps accumulated per optimiser update (as in Stage A; the published Stage B config's accumulate_grad)",
        "optimisation",
    )
    clip_grad: float | None = arg(0.5, "gradient-norm clipping (None: off)", "optimisation")
    allow_new_schedule: bool = arg(
        False, "with --resume: accept a changed lr (the rate changes mid-run)", "optimisation"
    )
    val_every: int = arg(5, "epochs between validations (sampling test items) and checkpoints", "run")
    ckpt_every: int | None = arg(
        None, "also write the training checkpoint (what --resume continues from) every this many epochs", "run"
    )
    num_val_items: int = arg(5, "fMRI decoded at each validation (the first of the validation set)", "run")
    snapshot_epochs: list[int] | None = arg(
        None,
        "also write the model after these epochs (counted from 1) as "
        "snapshot_epoch<N>.pth, each readable by gen_eval: a learning curve",
        "run",
    )
    select_on: str = arg(
        "val_split",
        "where the kept model is chosen: 'val_split', images held out of the training "
        "pairs; 'test', the first test items, as published (the test score is then chosen on the "
        "test set)",
        "run",
    )
    val_split: int = arg(
        50, "with select_on val_split: training images held out (all their fMRI) to validate on", "run"
    )
    num_train_images: int | None = arg(
        None,
        "train on the pairs of this many training images only (after the validation hold-out; GOD: one pair per "
        f"image), the same images whatever the seed (drawn with seed {HELD_OUT_SEED}); None: all",
        "data",
    )
    num_samples: int = arg(5, "images per fMRI (validation here, the default of gen_eval)", "run")
    ddim_steps: int = arg(250, f"PLMS steps per image (at least {MIN_SAMPLER_STEPS})", "run")
    guidance_scale: float = arg(1.0, "classifier-free guidance at validation (needs cond_dropout > 0)", "run")
    classifier: str | None = arg(
        None,
        "n-way classifier file (a torch.export program, see docs/formats.md); "
        "default: ViT-H/14 from the local torchvision cache",
        "run",
    )

    def __post_init__(self) -> None:
        self._resolve_data()
        self.output_path = _under(self.root_path, self.output_path, "results")
        self.pretrain_gm_path = _under(self.root_path, self.pretrain_gm_path, "pretrains/ldm/label2img")
        self.pretrain_mbm_path = _under(
            self.root_path, self.pretrain_mbm_path, f"pretrains/{self.dataset}/fmri_encoder.pth"
        )
        if self.batch_size is None:
            self.batch_size = self.target.batch_size_b
        self.validate()

    @classmethod
    def read_published(cls, values: dict) -> dict:
        """`values` with the published Stage B names replaced by ours: `accumulate_grad` by `accum_iter` (Stage A's
        name), the conditioner's `global_pool` (and our former `linear_pool`, both booleans) by `conditioner`
        (`published_configs.stage_b_conditioner`)."""
        values = dict(values)
        if "accumulate_grad" in values:
            values.setdefault("accum_iter", values.pop("accumulate_grad"))
        names = [k for k in ("global_pool", "linear_pool") if k in values]
        if not names:
            return values
        for key in names:
            check(isinstance(values[key], bool), f"{key} must be true or false, got {short_repr(values[key])}")
        rest = {k: v for k, v in values.items() if k not in names}
        return {"conditioner": stage_b_conditioner(values), **rest}

    def validate(self) -> None:
        self._validate_run()
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.num_epoch > 0 and self.batch_size > 0, "num_epoch and batch_size must be positive")
        check(self.accum_iter >= 1, f"accum_iter must be >= 1, got {self.accum_iter}")
        check(self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be > 0 or None, got {self.clip_grad}")
        check(0.0 <= self.crop_ratio < 1.0, f"crop_ratio must be in [0, 1), got {self.crop_ratio}")
        check(0.0 <= self.fmri_dropout < 1.0, f"fmri_dropout must be in [0, 1), got {self.fmri_dropout}")
        check(0.0 <= self.cond_dropout < 1.0, f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        check(
            self.time_cond_start in TIME_COND_STARTS,
            f"time_cond_start must be one of {', '.join(TIME_COND_STARTS)}, got {self.time_cond_start!r}",
        )
        check(
            self.conditioner in CONDITIONERS,
            f"conditioner must be one of {tuple(CONDITIONERS)}, got {self.conditioner!r}",
        )
        check(
            not self.ridge_init or hasattr(CONDITIONERS[self.conditioner], "start_from_ridge"),
            f"ridge_init starts a conditioner's mapper from the ridge map: the conditioner {self.conditioner!r} has "
            "none (linear_pool and patch_tokens do)",
        )
        check(self.latent_views >= 0, f"latent_views must be >= 0, got {self.latent_views}")
        check(self.img_size > 0 and self.img_size % 8 == 0, f"img_size must be a multiple of 8, got {self.img_size}")
        check(self.val_every >= 1 and self.num_val_items >= 2, "val_every must be >= 1 and num_val_items >= 2")
        check(self.ckpt_every is None or self.ckpt_every >= 1, f"ckpt_every must be >= 1, got {self.ckpt_every}")
        check(
            not self.snapshot_epochs or 1 <= min(self.snapshot_epochs),
            f"snapshot_epochs count from 1, got {self.snapshot_epochs}",
        )
        check(self.select_on in SELECT_ON, f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        check(
            self.num_train_images is None or self.num_train_images >= 2,
            f"num_train_images must be None or >= 2, got {self.num_train_images}",
        )
        check(
            self.select_on != "val_split" or self.val_split >= 2,
            f"val_split must hold out at least 2 images, got {self.val_split}",
        )
        _check_sampling(self.num_samples, self.ddim_steps, self.guidance_scale, self.cond_dropout)


@dataclass
class GenEvalConfig(TargetData):
    """gen_eval: decode every test fMRI into images with a finetuned model and score them.

    The data set, subjects and ROI default to those stored in the checkpoint; every path given here wins over
    the paths stored in it (relative stored paths are resolved against root_path).
    """

    protocol: str | None = arg(
        None,
        "'published': the paper's protocol (5 samples, 250 PLMS steps, mse_uint8, 50- "
        "and 100-way top-1 over 1000 trials, FID), printed beside the paper's numbers; it "
        "sets those flags",
        "run",
    )
    checkpoint: str | None = arg(
        None, "Stage B checkpoint (default: <root_path>/pretrains/<dataset>/finetuned.pth)", "model"
    )
    pretrain_gm_path: str | None = arg(
        None,
        "LDM folder whose config.yaml gives the architecture (default: the "
        "checkpoint's, else <root_path>/pretrains/ldm/label2img)",
        "model",
    )
    pretrain_mbm_path: str | None = arg(
        None,
        "Stage A checkpoint giving the encoder architecture when the Stage B "
        "checkpoint lacks it, as the original reads it (default: <root_path>/"
        "pretrains/<dataset>/fmri_encoder.pth)",
        "model",
    )
    dataset: str | None = arg(None, f"one of {DATASETS} (default: the checkpoint's)", "data")
    kam_subs: list[str] | None = arg(None, "GOD subjects (default: the checkpoint's)", "data")
    bold5000_subs: list[str] | None = arg(None, "BOLD5000 subjects (default: the checkpoint's)", "data")
    nsd_subs: list[str] | None = arg(None, "NSD subjects (default: the checkpoint's)", "data")
    nsd_layout: str | None = arg(None, f"NSD: one of {NSD_LAYOUTS} (default: the checkpoint's)", "data")
    roi: str | None = arg(None, "region of interest (default: the checkpoint's)", "data")
    output_path: str | None = arg(None, "where run folders go (default: <root_path>/results)", "run")
    limit: int | None = arg(None, "decode only the first N test fMRI", "data")
    shuffle_fmri: bool = arg(
        False,
        "control: decode each test image from another image's fMRI (a fixed "
        "derangement); scores should fall to chance",
        "data",
    )
    num_samples: int = arg(5, "images per fMRI", "run")
    ddim_steps: int = arg(250, f"sampler steps per image (at least {MIN_SAMPLER_STEPS})", "run")
    sampler: str = arg("plms", f"one of {tuple(SAMPLERS)} (published: plms)", "run")
    eta: float = arg(0.0, "DDIM eta (0: deterministic)", "run")
    guidance_scale: float | None = arg(
        None,
        "classifier-free guidance (needs a model trained with cond_dropout > 0; "
        "default: the checkpoint's own, 1 for published ones)",
        "run",
    )
    batch_size: int = arg(25, "images per sampler call (test fMRI x samples are batched together)", "run")
    n_way: int = arg(50, "n of the n-way top-1 accuracy", "run")
    num_trials: int = arg(1000, "n-way trials per image", "run")
    metrics: list[str] = arg(
        ["mse", "pcc", "ssim", "lpips", "n_way", "fid"], "metrics to compute (see eval_metrics.METRICS)", "run"
    )
    baselines: bool = arg(False, "also score a ridge regression from the training fMRI to the images", "run")
    precision: str = arg(
        "auto", f"one of {PRECISIONS}; auto: bf16 on GPUs that have it, else fp16, fp32 on CPU", "run"
    )
    device: str = arg("auto", "auto (cuda when available), cpu, cuda, cuda:1, ...", "run")
    compile: bool = arg(
        False,
        "torch.compile the UNet for sampling, weights frozen: faster per sampler step after minutes of compiling "
        "(benchmarks/README.md), for long runs",
        "run",
    )
    classifier: str | None = arg(
        None,
        "n-way classifier file (a torch.export program, see docs/formats.md); "
        "default: ViT-H/14 from the local torchvision cache",
        "run",
    )

    def __post_init__(self) -> None:
        check(
            self.dataset is None or self.dataset in TARGETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}"
        )
        check(self.protocol in (None, "published"), f"protocol must be 'published' or None, got {self.protocol!r}")
        check(
            self.nsd_layout in (None, *NSD_LAYOUTS),
            f"nsd_layout must be one of {NSD_LAYOUTS}, got {self.nsd_layout!r}",
        )
        if self.protocol == "published":
            self.num_samples, self.ddim_steps, self.sampler, self.eta, self.guidance_scale = 5, 250, "plms", 0.0, 1.0
            self.n_way, self.num_trials, self.limit, self.shuffle_fmri = 50, 1000, None, False
            self.metrics = ["mse_uint8", "pcc", "ssim", "lpips", "n_way", "fid"]
        unknown = [m for m in self.metrics if m not in METRICS and m not in METRIC_GROUPS]
        check(not unknown, f"unknown metric(s) {unknown}; expected names from {[*METRICS, *METRIC_GROUPS]}")
        self.output_path = _under(self.root_path, self.output_path, "results")
        check(self.sampler in SAMPLERS, f"sampler must be one of {tuple(SAMPLERS)}, got {self.sampler!r}")
        self.precision = _precision(self.precision)
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.limit is None or self.limit >= 2, f"limit must be at least 2 or None, got {self.limit}")
        check(1 < self.n_way and self.num_trials > 0, "n_way must be > 1 and num_trials positive")
        _check_sampling(self.num_samples, self.ddim_steps, self.guidance_scale or 1.0, None)


def _check_sampling(num_samples: int, ddim_steps: int, guidance_scale: float, cond_dropout: float | None) -> None:
    check(num_samples > 0, f"num_samples must be positive, got {num_samples}")
    check(
        ddim_steps >= MIN_SAMPLER_STEPS,
        f"ddim_steps must be at least {MIN_SAMPLER_STEPS}, got {ddim_steps}: with fewer the first step starts "
        "where the schedule still expects signal in the start noise, and the image stays noise (published: 250)",
    )
    check(guidance_scale >= 1.0, f"guidance_scale must be >= 1 (1: no guidance), got {guidance_scale}")
    check(
        cond_dropout is None or guidance_scale == 1.0 or cond_dropout > 0,
        "guidance_scale > 1 needs a model trained with cond_dropout > 0 (it learns the null context)",
    )
