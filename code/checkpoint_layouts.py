"""What each checkpoint file holds, written and read in one place (docs/formats.md describes them).

- Stage A, `checkpoint.pth` of A1 and A2 and the published `fmri_encoder.pth`: `model`, `optimizer`, `epoch`,
  `scaler`, `config` (a `config.Config_MBM_fMRI` object: the Stage A architecture and pre-training settings);
  ours add `rng` (every rank's RNG state) and, after A2, `finetune_config` (`config.Config_MBM_finetune`).
- Stage B, the published `finetuned.pth`: `model_state_dict`, `config` (`config.Config_Generative_Model`, with the
  encoder architecture in `model_meta`) and `state` (the torch RNG state the original seeds sampling with).
- Stage B, `checkpoint.pth` of a run: the `finetuned.pth` layout plus `optimizer`, `epoch`, `scaler`, `rng` and
  `best` (the validation score of the kept `finetuned.pth`): what `--resume` continues from (`resume.py` holds
  the rules of resuming).

Config objects are written as the original's classes so that its code reads our files; every read goes through
the restricted loader (`checkpoint.load_checkpoint`), which returns them as plain attribute containers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from checkpoint import as_config_dict, check_finite, get_rng_state, load_checkpoint, save_checkpoint
from errors import CheckpointError
from published_configs import Config_Generative_Model, Config_MBM_finetune, Config_MBM_fMRI, published_config
from runtime import barrier
from sc_mbm.architecture import ARCH_FIELDS, width_problem
from sc_mbm.mae_for_fmri import architecture_from_weights

log = logging.getLogger("mindvis.checkpoint_layouts")

ENCODER_FIELDS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")  # what Stage B's encoder needs
DEFAULT_DECODER_DEPTH = 8  # every published checkpoint; older configs do not store it


# ---- the Stage A encoder architecture: the one reader -------------------------------------------------------


def read_architecture(
    config: Mapping,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    prefix: str = "",
    fields: Sequence[str] = ARCH_FIELDS,
) -> dict:
    """`fields` of the architecture and `num_voxels`, from a checkpoint's config and its weights.

    A field stored in the config must agree with the weights; a field the config lacks is read off the weights
    where they tell it (widths, depths, patch size, MLP ratio; logged as such). The head counts cannot be read
    off weights: a checkpoint whose config lacks them is refused rather than built with a guess.
    """
    try:
        weights = architecture_from_weights(state, prefix)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    arch, assumed, unknown = {}, [], []
    for name in fields:
        if name in config and config[name] is not None:
            arch[name] = config[name]
            if name in weights and weights[name] != config[name]:
                raise CheckpointError(
                    f"{path}: its config says {name} = {config[name]} but its weights were built with {weights[name]}"
                )
        elif name in weights:
            arch[name], assumed = weights[name], assumed + [name]
        elif name == "decoder_depth":
            arch[name], assumed = DEFAULT_DECODER_DEPTH, assumed + [name]
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(
            f"{path}: its config does not give {unknown} and the weights cannot tell them; pass the Stage A "
            "checkpoint this model was trained from (--pretrain_mbm_path), whose config holds them"
        )
    if assumed:
        log.info(
            "%s: read off the weights (its config lacks them): %s", path, ", ".join(f"{k}={arch[k]}" for k in assumed)
        )
    arch["num_voxels"] = weights["num_voxels"]
    if problem := width_problem(arch):
        raise CheckpointError(f"{path}: the file is inconsistent: its config and weights say {problem}")
    return arch


# ---- Stage A ------------------------------------------------------------------------------------------------


@dataclass
class StageACheckpoint:
    """A Stage A checkpoint as later stages use it."""

    path: Path
    arch: dict  # sc_mbm.architecture.ARCH_FIELDS and num_voxels
    model: dict  # the masked autoencoder's state dict
    config: dict  # the stored Stage A config (architecture and pre-training settings)
    raw: dict  # everything in the file (optimizer, epoch, rng, finetune_config, ...)


def read_stage_a(path: str | os.PathLike, fields: Sequence[str] = ARCH_FIELDS) -> StageACheckpoint:
    """Load a Stage A checkpoint (ours or published): its architecture, finite weights, and config."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Stage A checkpoint not found: {path}. Run stageA1_mbm_pretrain.py / stageA2_mbm_finetune.py (or "
            "download the published pretrains/<dataset>/fmri_encoder.pth) and pass it with --pretrain_mbm_path"
        )
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(
            f"{path}: not a Stage A checkpoint (expected keys 'model', 'optimizer', 'epoch', 'config')"
        )
    check_finite(ckpt["model"], path)
    config = as_config_dict(ckpt["config"]) if "config" in ckpt else {}
    arch = read_architecture(config, ckpt["model"], path, fields=fields)
    return StageACheckpoint(path, arch, ckpt["model"], config, dict(ckpt))


def save_stage_a(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    amp_state: dict,
    *,
    epoch: int,
    stored_config: Mapping,
    dist_info: Any,
    finetune_config: Mapping | None = None,
) -> None:
    """`run_dir/checkpoint.pth` of a Stage A run holding `stored_config` as its `config` (A2 also its own run's
    `finetune_config`): rank 0 writes, every rank joins the RNG gathering."""
    state = stage_a_checkpoint(model, optimizer, amp_state, epoch, stored_config, finetune_config)
    if dist_info.is_main:
        save_checkpoint(state, run_dir / CHECKPOINT)
        log.info("checkpoint written: %s", run_dir / CHECKPOINT)
    barrier()


def stage_a_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler_state: dict,
    epoch: int,
    config: Mapping,
    finetune_config: Mapping | None = None,
) -> dict:
    """The published Stage A layout (model, optimizer, epoch, scaler, config) plus, after A2, `finetune_config`, and
    every rank's RNG state (a collective: every rank must call it)."""
    configs = {"config": published_config(dict(config), Config_MBM_fMRI)}
    if finetune_config is not None:
        configs["finetune_config"] = published_config(dict(finetune_config), Config_MBM_finetune)
    return {"model": model.state_dict(), **training_state(optimizer, scaler_state, epoch, **configs)}


def stage_a_config(path: str | os.PathLike) -> dict | None:
    """The stored config of a Stage A checkpoint (its architecture and pre-training settings), or None when the
    file holds none; the weights are not checked (`read_stage_a` does, for a file whose weights are used)."""
    ckpt = load_checkpoint(path)
    return as_config_dict(ckpt["config"]) if isinstance(ckpt, Mapping) and "config" in ckpt else None


# ---- Stage B ------------------------------------------------------------------------------------------------


def finetuned_checkpoint(model: nn.Module, cfg: Any) -> dict:
    """The published Stage B layout: model_state_dict, config (the original's class), state (torch RNG)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "model_state_dict": weights,
        "config": published_config(cfg, Config_Generative_Model),
        "state": torch.get_rng_state(),
    }


def stage_b_training_checkpoint(
    model: nn.Module,
    cfg: Any,
    optimizer: torch.optim.Optimizer,
    scaler_state: dict,
    epoch: int,
    best: float,
    select_by: str,
) -> dict:
    """A Stage B run's `checkpoint.pth`: the `finetuned.pth` layout, the training state and the model selection so
    far (`best`: the validation score of the kept `finetuned.pth`; `select_by`: the score's name) (a collective)."""
    return {
        **finetuned_checkpoint(model, cfg),
        **training_state(optimizer, scaler_state, epoch, best=best, select_by=select_by),
    }


def read_selection(ckpt: Mapping, path: str | os.PathLike) -> tuple[float, str] | None:
    """The model selection a Stage B `checkpoint.pth` carries on: (best score, its name), None for a file without."""
    if "best" not in ckpt:
        return None
    best, select_by = ckpt["best"], ckpt.get("select_by", "top-1-class")
    if isinstance(best, bool) or not isinstance(best, int | float) or not isinstance(select_by, str):
        raise CheckpointError(
            f"{path}: its 'best' ({best!r}) and 'select_by' ({select_by!r}) must be a number and a score's name"
        )
    return float(best), select_by


def read_finetuned(path: str | os.PathLike) -> tuple[dict, dict]:
    """A Stage B checkpoint (published or ours) -> (model state dict, stored config as a dict); weights finite."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Stage B checkpoint not found: {path}; run stageB_ldm_finetune.py or download "
            "the published pretrains/<dataset>/finetuned.pth; pass it with --checkpoint"
        )
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, Mapping) or "model_state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a Stage B checkpoint (expected keys 'model_state_dict' and 'config')")
    check_finite(ckpt["model_state_dict"], path)
    return ckpt["model_state_dict"], as_config_dict(ckpt["config"])


def resolve_stored_path(
    flag: str | None, stored: Mapping, key: str, default: str, root_path: str | os.PathLike, source: str | os.PathLike
) -> str:
    """Where to find a file a checkpoint's config names under `key`: the flag if given; else the stored path if it
    exists (a relative one below root_path, never the working folder, and refused when it leads out of root_path:
    `source` is the checkpoint, named in the error); else `default` below root_path."""
    if flag:
        return str(flag)
    value = stored.get(key)
    if isinstance(value, str) and value:
        if not Path(value).is_absolute() and os.path.normpath(value).split(os.sep)[0] == os.pardir:
            raise CheckpointError(
                f"{source}: its stored {key} {value!r} leads outside --root_path {root_path}; pass "
                f"--{key} to say where it is"
            )
        path = Path(value) if Path(value).is_absolute() else Path(root_path) / value
        if path.exists():
            return str(path)
    return str(Path(root_path) / default)


# ---- resuming a run -----------------------------------------------------------------------------------------

CHECKPOINT = "checkpoint.pth"  # every stage's training state in its run folder


def gather_rng_states() -> list[dict]:
    """Every rank's RNG states (index = rank); a collective under torchrun, so every rank must call it."""
    state = get_rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def training_state(optimizer: torch.optim.Optimizer, scaler_state: dict, epoch: int, **extra: Any) -> dict:
    """What a resume needs beside the weights: optimiser, scaler, epoch, every rank's RNG (a collective)."""
    return {
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "scaler": scaler_state,
        **extra,
        "rng": gather_rng_states(),
    }


def load_weights(model: nn.Module, state: Mapping, path: str | os.PathLike) -> None:
    """Load a state dict; every model key must be present (extra keys are reported and ignored). The weights' values
    are the reader's to check (`read_stage_a`, `read_finetuned`, `resume_training`): each file once."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(
            f"{path}: weights do not fit the model built from its config: {' '.join(str(e).split())[:500]}"
        ) from None
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: model state lacks {len(missing)} key(s): {missing[:5]}{more}")
    if unexpected:
        log.warning("%s: ignoring %d unexpected key(s): %s", path, len(unexpected), unexpected[:5])
