"""The epoch loop Stage A1 and A2 share: train, log, score, figure, checkpoint, and the run's last artefacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from checkpoint import save_checkpoint
from runtime import DistInfo, append_jsonl, barrier, cleanup_distributed, log
from sc_mbm.trainer import AmpScaler, param_groups_weight_decay, train_one_epoch, training_state, write_debug_dump
from sc_mbm.visualize import save_reconstruction_figure


def wrap_for_training(model: nn.Module, dist_info: DistInfo) -> nn.Module:
    """`model` under DistributedDataParallel when the run is distributed (the unwrapped one is saved/evaluated)."""
    if not dist_info.distributed:
        return model
    device = dist_info.device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95), no weight decay on biases and 1-D parameters."""
    return torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))


def fit(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    amp: AmpScaler,
    cfg: Any,
    dist_info: DistInfo,
    run_dir: Path,
    start_epoch: int,
    wandb_run: Any,
    examples: np.ndarray,
    title: str,
    state_configs: tuple[dict, dict],
    score: Callable[[], dict[str, float]] | None = None,
) -> None:
    """Epochs `start_epoch`..`cfg.num_epoch - 1`, then the debug dump, wandb's finish and the process group's end.

    Each epoch: one pass, a JSON line and a log line (plus `score()` on rank 0 when given); every `ckpt_every`
    epochs and at the end a reconstruction figure and `checkpoint.pth` (rank 0 writes). `state_configs` =
    (config, finetune_config) stored in the checkpoint (`finetune_config` empty for pre-training).
    """
    train_model = wrap_for_training(model, dist_info)
    config, finetune_config = state_configs
    extra = {"finetune_config": finetune_config} if finetune_config else {}
    for epoch in range(start_epoch, cfg.num_epoch):
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, loader, optimizer, amp, epoch, cfg, dist_info.is_main, wandb_run)
        if dist_info.is_main:
            if score is not None:
                stats.update(score())
            append_jsonl(run_dir / "metrics.jsonl", {"epoch": epoch, **stats})
            log.info("epoch %d done: %s", epoch, "  ".join(f"{k} {v:.4g}" for k, v in stats.items()))
            if wandb_run is not None:
                wandb_run.log({f"epoch/{k}": v for k, v in stats.items()} | {"epoch": epoch})
        if (epoch + 1) % cfg.ckpt_every == 0 or epoch + 1 == cfg.num_epoch:
            if dist_info.is_main:
                figure = run_dir / f"recon_epoch{epoch}.png"
                save_reconstruction_figure(model, examples, cfg.mask_ratio, amp, figure, f"{title}, epoch {epoch}",
                                           seed=cfg.seed)  # fmt: skip
            state = training_state(model, optimizer, amp, epoch, config, **extra)
            if dist_info.is_main:
                save_checkpoint(state, run_dir / "checkpoint.pth")
                log.info("checkpoint written: %s", run_dir / "checkpoint.pth")
            barrier()

    write_debug_dump(model, loader, range(start_epoch, cfg.num_epoch), dist_info)
    if wandb_run is not None:
        wandb_run.finish()
    cleanup_distributed()
