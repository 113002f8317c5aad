"""What the two Stage A scripts share around the engine: the masked-reconstruction step and the epoch's outputs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from checkpoint import save_checkpoint
from checkpoint_layouts import CHECKPOINT, stage_a_checkpoint
from correlation import row_pearson
from engine import AmpScaler
from runtime import DistInfo, barrier, log
from sc_mbm.visualize import save_reconstruction_figure


def mae_step(mask_ratio: float):
    """The engine's step for the masked autoencoder: loss, and each sample's reconstruction correlation."""

    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fmri = batch["fmri"]  # (N, 1, V)
        loss, pred, _ = model(fmri, mask_ratio=mask_ratio)  # pred (N, L, p)
        return loss, {"cor": row_pearson(pred.detach().float().flatten(1), fmri.flatten(1))}

    return step


def pick_examples(fmri: np.ndarray, num: int = 4) -> torch.Tensor:
    """`num` evenly spaced rows of an (N, 1, V) array, the same at every checkpoint: (num, 1, V)."""
    rows = np.unique(np.linspace(0, len(fmri) - 1, num).round().astype(int))
    return torch.from_numpy(np.ascontiguousarray(fmri[rows]))


def save_stage_a(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    amp: AmpScaler,
    *,
    epoch: int,
    stored_config: Mapping,
    examples: torch.Tensor,
    title: str,
    dist_info: DistInfo,
    mask_ratio: float,
    seed: int,
    finetune_config: Mapping | None = None,
) -> None:
    """A reconstruction figure of `examples` (masks drawn from `seed`) and `checkpoint.pth` holding
    `stored_config` as its `config` (A2 also its own run's `finetune_config`); rank 0 writes, every rank joins the
    RNG gathering."""
    if dist_info.is_main:
        save_reconstruction_figure(
            model,
            examples,
            mask_ratio,
            amp.precision,
            run_dir / f"recon_epoch{epoch}.png",
            f"{title}, epoch {epoch}",
            seed=seed,
        )
    state = stage_a_checkpoint(model, optimizer, amp.state_dict(), epoch, stored_config, finetune_config)
    if dist_info.is_main:
        save_checkpoint(state, run_dir / CHECKPOINT)
        log.info("checkpoint written: %s", run_dir / CHECKPOINT)
    barrier()
