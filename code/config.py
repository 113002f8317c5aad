"""Configuration: one dataclass per stage, with the published MinD-Vis defaults and field names.

Field names follow the published config classes (`Config_MBM_fMRI`, `Config_MBM_finetune`,
`Config_Generative_Model`) so that a config object pickled in a published checkpoint maps onto
ours (`from_dict`). Fields added here (precision, logging, resume, ...) come after the published
ones. The command line is generated from the fields:

    python code/stageA1_mbm_pretrain.py --mask_ratio 0.65 --num_epoch 800 --no-include_kam
    python code/stageA1_mbm_pretrain.py --config run.yaml --batch_size 64   # the flag wins

Booleans are real `--flag/--no-flag` switches, lists take several values (`--kam_subs sbj_1 sbj_3`),
and `None` is spelled `None`. The resolved config is printed, saved as `config.yaml` in every run
folder and stored as a plain dict in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from errors import UsageError

DATASETS = ("GOD", "BOLD5000")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Lightning's and the published configs' spellings (Stage B used `precision = 32`).
_PRECISION_ALIASES = {"32": "fp32", "32-true": "fp32", "16": "fp16", "16-mixed": "fp16", "bf16-mixed": "bf16"}


class ConfigError(UsageError, ValueError):
    """A configuration value is invalid; the message names the field."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass
class _ModelFields:
    """The masked-autoencoder architecture (Stage A); Stage B reads it back from the Stage A checkpoint."""

    mask_ratio: float = 0.75
    patch_size: int = 16
    embed_dim: int = 1024
    decoder_embed_dim: int = 512
    depth: int = 24
    num_heads: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 1.0

    def _validate_model(self) -> None:
        _check(0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        _check(self.patch_size > 0, f"patch_size must be positive, got {self.patch_size}")
        _check(
            self.embed_dim % self.num_heads == 0,
            f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})",
        )
        _check(
            self.decoder_embed_dim % self.decoder_num_heads == 0,
            f"decoder_embed_dim ({self.decoder_embed_dim}) must be divisible by "
            f"decoder_num_heads ({self.decoder_num_heads})",
        )
        _check(self.depth > 0 and self.mlp_ratio > 0, "depth and mlp_ratio must be positive")


@dataclass
class _TrainFields:
    """Run-time settings shared by the training stages (ours, not in the published configs)."""

    precision: str = "auto"  # auto: bf16 where supported, fp16 + scaler on older GPUs, fp32 on CPU
    log_every: int = 20  # console/log line every N optimiser steps
    num_workers: int = 0  # data live in memory; workers rarely help
    resume: str | None = None  # checkpoint to continue from
    use_wandb: bool = False
    wandb_project: str = "mind-vis"

    def _validate_train(self) -> None:
        self.precision = _PRECISION_ALIASES.get(str(self.precision), self.precision)
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.log_every > 0, f"log_every must be positive, got {self.log_every}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")


def _data_path(root: str, value: str | None, default: str) -> str:
    return value if value is not None else os.path.join(root, default)


@dataclass
class StageA1Config(_TrainFields, _ModelFields):
    """Stage A1: SC-MBM pre-training on HCP (+ GOD training fMRI). Published class `Config_MBM_fMRI`."""

    lr: float = 2.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    num_epoch: int = 500
    warmup_epochs: int = 40
    batch_size: int = 100
    clip_grad: float = 0.8
    root_path: str = "."
    output_path: str | None = None  # default <root_path>/results
    hcp_path: str | None = None  # default <root_path>/data/HCP/npz
    kam_path: str | None = None  # default <root_path>/data/Kamitani/npz
    seed: int = 2022
    roi: str = "VC"
    aug_times: int = 1
    num_sub_limit: int | None = None
    include_hcp: bool = True
    include_kam: bool = True
    accum_iter: int = 1
    use_nature_img_loss: bool = False
    img_recon_weight: float = 0.5
    focus_range: list[int] | None = None  # e.g. 0 1500; None disables focused masking
    focus_rate: float = 0.6
    local_rank: int = 0  # published field; the rank is read from LOCAL_RANK (torchrun)
    num_voxels: int | None = None  # set after pre-training from the data
    ckpt_every: int = 20
    # Held-out fMRI reconstructed after every epoch (loss, correlation, masked-patch correlation in metrics.jsonl):
    # an HCP folder of subjects not in hcp_path, and/or GOD subjects whose averaged test fMRI (never used in
    # pre-training) is scored. None: no held-out evaluation.
    val_hcp_path: str | None = None
    val_kam_subs: list[str] | None = None

    def __post_init__(self) -> None:
        self.output_path = _data_path(self.root_path, self.output_path, "results")
        self.hcp_path = _data_path(self.root_path, self.hcp_path, "data/HCP/npz")
        self.kam_path = _data_path(self.root_path, self.kam_path, "data/Kamitani/npz")
        self.validate()

    def validate(self) -> None:
        self._validate_model()
        self._validate_train()
        _validate_optim(self)
        _check(self.include_hcp or self.include_kam, "at least one of include_hcp / include_kam must be set")
        _check(self.aug_times >= 1, f"aug_times must be >= 1, got {self.aug_times}")
        _check(
            self.focus_range is None or (len(self.focus_range) == 2 and self.focus_range[0] < self.focus_range[1]),
            f"focus_range must be two increasing voxel indices or None, got {self.focus_range}",
        )
        _check(0.0 <= self.focus_rate <= 1.0, f"focus_rate must be in [0, 1], got {self.focus_rate}")
        _check(self.val_kam_subs is None or len(self.val_kam_subs) > 0, "val_kam_subs must name subjects or be None")


@dataclass
class _TargetDataFields:
    """The target data set of Stages A2, B and gen_eval (GOD or BOLD5000)."""

    root_path: str = "."
    output_path: str | None = None
    kam_path: str | None = None
    bold5000_path: str | None = None
    dataset: str = "GOD"
    kam_subs: list[str] = field(default_factory=lambda: ["sbj_3"])
    bold5000_subs: list[str] = field(default_factory=lambda: ["CSI1"])
    roi: str = "VC"
    seed: int = 2022

    def _resolve_data(self) -> None:
        _check(self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        self.output_path = _data_path(self.root_path, self.output_path, "results")
        self.kam_path = _data_path(self.root_path, self.kam_path, "data/Kamitani/npz")
        self.bold5000_path = _data_path(self.root_path, self.bold5000_path, "data/BOLD5000")
        subs = self.kam_subs if self.dataset == "GOD" else self.bold5000_subs
        _check(len(subs) > 0, f"no subjects given for {self.dataset}")

    @property
    def subjects(self) -> list[str]:
        return self.kam_subs if self.dataset == "GOD" else self.bold5000_subs

    @property
    def data_path(self) -> str:
        return self.kam_path if self.dataset == "GOD" else self.bold5000_path


@dataclass
class StageA2Config(_TrainFields, _TargetDataFields):
    """Stage A2: SC-MBM finetuning on the target data's test fMRI. Published class `Config_MBM_finetune`."""

    pretrain_mbm_path: str | None = None  # default <root_path>/pretrains/<dataset>/fmri_encoder.pth
    include_nonavg_test: bool = True
    patch_size: int = 16
    lr: float = 5.3e-5
    weight_decay: float = 0.05
    num_epoch: int = 15
    batch_size: int | None = None  # default 16 (GOD) / 4 (BOLD5000)
    mask_ratio: float = 0.75
    accum_iter: int = 1
    clip_grad: float = 0.8
    warmup_epochs: int = 2
    min_lr: float = 0.0
    local_rank: int = 0
    ckpt_every: int = 2

    def __post_init__(self) -> None:
        self._resolve_data()
        self.pretrain_mbm_path = _data_path(
            self.root_path, self.pretrain_mbm_path, f"pretrains/{self.dataset}/fmri_encoder.pth"
        )
        if self.batch_size is None:
            self.batch_size = 16 if self.dataset == "GOD" else 4
        self.validate()

    def validate(self) -> None:
        self._validate_train()
        _validate_optim(self)
        _check(0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")


@dataclass
class StageBConfig(_TrainFields, _TargetDataFields):
    """Stage B: DC-LDM finetuning on fMRI-image pairs. Published class `Config_Generative_Model`."""

    patch_size: int = 16
    pretrain_gm_path: str | None = None  # default <root_path>/pretrains/ldm/label2img
    pretrain_mbm_path: str | None = None  # default <root_path>/pretrains/<dataset>/fmri_encoder.pth
    img_size: int = 256
    batch_size: int | None = None  # default 5 (GOD) / 25 (BOLD5000)
    lr: float = 5.3e-5
    num_epoch: int = 500
    accumulate_grad: int = 1
    crop_ratio: float = 0.2
    global_pool: bool = False
    use_time_cond: bool = True
    eval_avg: bool = True
    num_samples: int = 5
    ddim_steps: int = 250
    HW: list[int] | None = None
    model_meta: dict | None = None  # the Stage A encoder architecture, stored so gen_eval can rebuild it
    clip_grad: float = 0.5
    val_every: int = 5  # epochs between validation runs that sample images
    num_val_items: int = 5  # test fMRI sampled at each validation
    fmri_dropout: float = 0.0  # voxel dropout rate; 0 reproduces the published training (defect #2)
    include_nonavg_test: bool = False
    classifier: str | None = None  # n-way classifier checkpoint (demo_classifier); None: ViT-H/14 from the cache

    def __post_init__(self) -> None:
        self._resolve_data()
        self.pretrain_gm_path = _data_path(self.root_path, self.pretrain_gm_path, "pretrains/ldm/label2img")
        self.pretrain_mbm_path = _data_path(
            self.root_path, self.pretrain_mbm_path, f"pretrains/{self.dataset}/fmri_encoder.pth"
        )
        if self.batch_size is None:
            self.batch_size = 5 if self.dataset == "GOD" else 25
        self.validate()

    def validate(self) -> None:
        self._validate_train()
        _check(self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(self.num_epoch > 0 and self.batch_size > 0, "num_epoch and batch_size must be positive")
        _check(0.0 <= self.crop_ratio < 1.0, f"crop_ratio must be in [0, 1), got {self.crop_ratio}")
        _check(0.0 <= self.fmri_dropout < 1.0, f"fmri_dropout must be in [0, 1), got {self.fmri_dropout}")
        _check(self.img_size > 0 and self.img_size % 8 == 0, f"img_size must be a multiple of 8, got {self.img_size}")
        _check(self.num_samples > 0 and self.ddim_steps > 0, "num_samples and ddim_steps must be positive")


@dataclass
class GenEvalConfig:
    """gen_eval: decode every test fMRI into images with a finetuned model and score them."""

    dataset: str = "GOD"
    root: str = "."
    checkpoint: str | None = None  # default <root>/pretrains/<dataset>/finetuned.pth
    output_path: str | None = None  # default <root>/results
    num_samples: int = 5
    ddim_steps: int = 250
    sampler: str = "plms"
    eta: float = 0.0
    batch_size: int = 25  # images per sampler call (test fMRI x samples are batched together)
    seed: int = 2022
    limit: int | None = None  # only the first N test fMRI
    n_way: int = 50
    num_trials: int = 1000
    metrics: list[str] = field(default_factory=lambda: ["mse", "pcc", "ssim", "lpips", "n_way", "fid"])
    precision: str = "auto"
    device: str = "auto"
    classifier: str | None = None  # n-way classifier checkpoint (demo_classifier); None: ViT-H/14 from the cache

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        self.checkpoint = _data_path(self.root, self.checkpoint, f"pretrains/{self.dataset}/finetuned.pth")
        self.output_path = _data_path(self.root, self.output_path, "results")
        _check(self.sampler in ("plms", "ddim"), f"sampler must be 'plms' or 'ddim', got {self.sampler!r}")
        self.precision = _PRECISION_ALIASES.get(str(self.precision), self.precision)
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.num_samples > 0 and self.ddim_steps > 0, "num_samples and ddim_steps must be positive")
        _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        _check(self.limit is None or self.limit > 0, f"limit must be positive or None, got {self.limit}")
        _check(1 < self.n_way and self.num_trials > 0, "n_way must be > 1 and num_trials positive")


def _validate_optim(cfg: Any) -> None:
    _check(cfg.lr > 0 and cfg.min_lr >= 0, f"lr must be positive and min_lr >= 0, got {cfg.lr}, {cfg.min_lr}")
    _check(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    _check(cfg.num_epoch > 0 and cfg.batch_size > 0, "num_epoch and batch_size must be positive")
    _check(0 <= cfg.warmup_epochs <= cfg.num_epoch, f"warmup_epochs must be in [0, {cfg.num_epoch}]")
    _check(cfg.clip_grad is None or cfg.clip_grad > 0, f"clip_grad must be positive, got {cfg.clip_grad}")
    _check(cfg.accum_iter >= 1, f"accum_iter must be >= 1, got {cfg.accum_iter}")
    _check(cfg.ckpt_every >= 1, f"ckpt_every must be >= 1, got {cfg.ckpt_every}")


# ----------------------------------------------------------------------------------------------------
# Command line, YAML files and published config objects
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


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass `cls`, plus `--config FILE.yaml`."""
    parser = argparse.ArgumentParser(
        description=description or cls.__doc__,
        argument_default=argparse.SUPPRESS,  # only flags the user gives override the defaults / YAML
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of field values; flags override it")
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for name, (tp, is_list, optional) in _field_types(cls).items():
        if tp is dict:  # structured values (e.g. model_meta) come from files and checkpoints, not flags
            continue
        help_text = f"default: {defaults.get(name, 'see docs')}"
        if tp is bool and not is_list:
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=help_text)
        elif is_list:
            parser.add_argument(f"--{name}", nargs="*", type=_parse_scalar(tp, False), help=help_text + " (list)")
        else:
            parser.add_argument(f"--{name}", type=_parse_scalar(tp, optional), help=help_text)
    return parser


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping of config fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def from_dict(cls: type, values: dict, strict: bool = True):
    """Build `cls` from a dict of field values (ours, a YAML file, or a published config's attributes).

    With `strict`, unknown keys are an error; otherwise they are ignored (published configs carry
    fields such as `logger` or `model_meta` that have no meaning here).
    """
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if strict and unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        if name not in types_:
            continue
        tp, is_list, optional = types_[name]
        kwargs[name] = _coerce(name, value, tp, is_list, optional)
    return cls(**kwargs)


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
    if tp is str and isinstance(value, int | float):  # e.g. the published `precision: 32`
        return str(value)
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be of type {tp.__name__}, got {value!r}") from None


def parse_config(cls: type, argv: list[str] | None = None, description: str | None = None):
    """Defaults, then `--config FILE.yaml`, then command-line flags; validated. Exits with a message on error."""
    parser = build_parser(cls, description)
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    values = load_yaml(args.pop("config")) if "config" in args else {}
    values.update(args)
    try:
        return from_dict(cls, values)
    except ConfigError as e:
        parser.error(str(e))


def config_to_dict(cfg: Any) -> dict:
    """The config as a plain dict (what checkpoints store)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, folder: str | os.PathLike) -> Path:
    """Write the resolved config as `config.yaml` into `folder`."""
    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def format_config(cfg: Any) -> str:
    """A readable multi-line listing of the config, for the log."""
    width = max(len(k) for k in config_to_dict(cfg))
    return "\n".join(f"  {k:<{width}} {v}" for k, v in config_to_dict(cfg).items())


# The published class names, so that code written against the original still reads naturally.
Config_MBM_fMRI = StageA1Config
Config_MBM_finetune = StageA2Config
Config_Generative_Model = StageBConfig
