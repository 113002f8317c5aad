"""What each checkpoint file holds, written and read in one place (docs/formats.md describes them).

- Stage A, `checkpoint.pth` of A1 and A2 and the published `fmri_encoder.pth`: `model`, `optimizer`, `epoch`,
  `scaler`, `config` (a `config.Config_MBM_fMRI` object: the Stage A architecture and pre-training settings);
  ours add `rng` (every rank's RNG state) and, after A2, `finetune_config` (`config.Config_MBM_finetune`).
- Stage B, the published `finetuned.pth`: `model_state_dict`, `config` (`config.Config_Generative_Model`, with the
  encoder architecture in `model_meta`) and `state` (the torch RNG state the original seeds sampling with).
- Stage B, `checkpoint.pth` of a run: the `finetuned.pth` layout plus `optimizer`, `epoch`, `scaler`, `rng` and
  `best` (the validation score of the kept `finetuned.pth`): what `--resume` continues from.

Config objects are written as the original's classes so that its code reads our files; every read goes through
the restricted loader (`checkpoint.load_checkpoint`), which returns them as plain attribute containers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bounded import short_repr
from checkpoint import as_config_dict, check_finite, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from config_engine import ConfigError, load_yaml
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
SCHEDULE_FIELDS = ("lr", "min_lr", "warmup_epochs", "num_epoch")


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


def linked_entries(folder: Path) -> list[str]:
    """The entries under `folder` that are symbolic links, or files with more than one hard link (names relative)."""
    found = []
    for entry in folder.rglob("*"):  # rglob does not descend into linked folders
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink > 1):
            found.append(entry.relative_to(folder).as_posix())
    return sorted(found)


def resume_checkpoint_path(cfg: Any) -> Path:
    """The checkpoint of the run `cfg.resume` names: a run folder of this stage, or its checkpoint.pth.

    Resuming writes into that folder again (config.yaml, the log, checkpoint.pth), so it must be one this project
    wrote: its config.yaml holds settings of the stage (`cfg`'s fields) beside checkpoint.pth, and nothing in it is a
    link or a file hard-linked from elsewhere (`linked_entries`); the training checkpoint's own entries are checked
    when it is loaded.
    """
    path = Path(cfg.resume)
    folder = path if path.is_dir() else path.parent
    if not (folder / CHECKPOINT if path.is_dir() else path).is_file():
        raise CheckpointError(f"--resume {path}: no {CHECKPOINT} there (a run writes it with its first checkpoint)")
    if path.name != CHECKPOINT and not path.is_dir():
        raise CheckpointError(
            f"--resume {path}: name a run folder or its {CHECKPOINT}; resuming writes into the "
            "folder of the file named, so another file is refused"
        )
    linked = linked_entries(folder)
    if linked:
        raise CheckpointError(
            f"--resume {path}: {short_repr(linked)} in {folder}: a link, or a file linked from elsewhere (more than "
            "one hard link), which a run folder of this project never holds (resuming would write through it)"
        )
    try:
        values = load_yaml(folder / "config.yaml")
    except ConfigError:
        values = {}
    if not values or not set(values) <= {f.name for f in dataclasses.fields(cfg)}:
        raise CheckpointError(
            f"--resume {path}: {folder} is not a run folder of this stage (no config.yaml of its "
            f"settings beside {CHECKPOINT}); resume only a folder the stage wrote"
        )
    return folder / CHECKPOINT


def resume_training(
    path: Path,
    cfg: Any,
    model: nn.Module,
    *,
    model_key: str,
    optimizer: torch.optim.Optimizer,
    amp: Any,
    dist_info: Any,
    schedule_fields: Sequence[str],
    config_key: str = "config",
    same_fields: Sequence[str] = (),
    ckpt: Mapping | None = None,
) -> tuple[int, Mapping]:
    """Continue a run from its training checkpoint `path` (already loaded: `ckpt`): refuse one whose stored config
    (`config_key`) differs from `cfg` in `same_fields` (architecture, data), a finished one, or one whose
    learning-rate schedule would change; restore weights, optimiser, scaler and this rank's RNG.

    Returns the next epoch and the checkpoint's entries (for what a stage carries on beside them)."""
    if ckpt is None:  # (a reader that loaded it, `read_stage_a`, checked its weights)
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, Mapping):
            raise CheckpointError(f"{path}: not a training checkpoint of this project's stages")
        if isinstance(ckpt.get(model_key), Mapping):
            check_finite(dict(ckpt[model_key]), path)
    saved = as_config_dict(ckpt.get(config_key, {}))
    changed = [
        f"{k} {saved[k]} there, {getattr(cfg, k)} here"
        for k in same_fields
        if k in saved and saved[k] != getattr(cfg, k)
    ]
    if changed:
        raise ConfigError(
            f"--resume {path} was trained with another architecture or data ({'; '.join(changed)}); "
            "resume with the run's own flags (its config.yaml)"
        )
    epoch = ckpt.get("epoch", -1)
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise CheckpointError(f"{path}: its 'epoch' must be a whole number, got {epoch!r}")
    check_resumable(saved, cfg, path, epoch, schedule_fields)
    start = restore_training_state(ckpt, path, model, model_key, optimizer, amp, dist_info.rank, dist_info.world_size)
    return start, ckpt


def check_resumable(saved: Mapping, cfg: Any, path: Path, epoch: int, schedule_fields: Sequence[str] = ()) -> None:
    """Refuse to resume a finished run, or one whose learning-rate schedule would change, unless asked to.

    `saved` is the run's stored config, `epoch` the last epoch its checkpoint holds.
    """
    if epoch + 1 >= cfg.num_epoch:
        also = " and --allow_new_schedule" if "num_epoch" in schedule_fields else ""  # a longer cosine, Stage A
        raise ConfigError(
            f"--resume {path}: the run already finished its {epoch + 1} epochs; to train longer pass a "
            f"larger --num_epoch{also}"
        )
    changed = [
        f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in schedule_fields if k in saved and saved[k] != getattr(cfg, k)
    ]
    if changed and not getattr(cfg, "allow_new_schedule", False):
        raise ConfigError(
            f"--resume {path}: the learning-rate schedule would change ({'; '.join(changed)}); pass "
            "--allow_new_schedule to accept that, or resume with the run's own values"
        )


def restore_training_state(
    ckpt: Mapping,
    path: Path,
    model: nn.Module,
    model_key: str,
    optimizer: torch.optim.Optimizer,
    amp: Any,
    rank: int,
    world_size: int,
) -> int:
    """Load weights, optimiser, scaler and this rank's RNG from a training checkpoint; returns the next epoch."""
    absent = [k for k in (model_key, "optimizer", "epoch", "rng") if k not in ckpt]
    if absent:
        raise CheckpointError(
            f"{path}: cannot resume, no {absent} entry (not a training checkpoint of this project's stages)"
        )
    load_weights(model, ckpt[model_key], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimiser state does not fit this model: {e}") from None
    amp.load_state_dict(ckpt.get("scaler"))
    states = ckpt.get("rng")
    if isinstance(states, list) and len(states) == world_size:
        set_rng_state(states[rank])
    else:
        log.warning(
            "%s: no RNG state for %d process(es); the data order is reproduced, the random draws are not",
            path,
            world_size,
        )
    log.info("resumed from %s after epoch %d", path, ckpt["epoch"])
    return int(ckpt["epoch"]) + 1


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
