"""Resuming a run: which folders may be resumed, what must not change, and restoring the training state.

Every stage resumes the same way (`--resume RUN`): `resume_checkpoint_path` checks the folder is one the stage
wrote, `resume_training` refuses a changed architecture or data, a finished run or a changed learning-rate
schedule (unless `--allow_new_schedule`), then restores weights, optimiser, scaler and this rank's RNG. The
training checkpoint's layout is `checkpoint_layouts.training_state`.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bounded import short_repr
from checkpoint import as_config_dict, check_finite, load_checkpoint, set_rng_state
from checkpoint_layouts import CHECKPOINT, load_weights
from config_engine import ConfigError, load_yaml, with_our_names
from errors import CheckpointError

log = logging.getLogger("mindvis.resume")

SCHEDULE_FIELDS = ("lr", "min_lr", "warmup_epochs", "num_epoch")  # Stage A's schedule (Stage B's rate is constant)


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
        values = with_our_names(type(cfg), load_yaml(folder / "config.yaml"))
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
