"""The SC-MBM training loop (`train_one_epoch`, in the spirit of MAE's engine_pretrain.py) and what it needs.

Per-iteration learning rate (linear warm-up, then half-cosine to `min_lr`), AdamW parameter groups without
decay on biases and 1-D parameters, mixed precision (`AmpScaler`: bf16 autocast, fp16 with a gradient scaler,
or fp32), gradient clipping and accumulation. Loss and reconstruction correlation are accumulated on the
device and read back once per log line, so the loop never waits for the host between steps; a non-finite
loss is noticed at that read-back and stops the run (`NonFiniteLossError`) before any checkpoint is written.

Also here, shared by the two Stage A scripts: the data loader (a seeded `DistributedSampler`, also in one
process, so that a resumed run sees the same order), the Stage A architecture stored in a checkpoint,
checkpoint state and resume, the held-out evaluation, and the debug dump of the two-process test: with
`MINDVIS_DEBUG_DUMP=<folder>` in the environment, every rank writes `rank<r>.json` at the end of a run
(a hash of its weights and the sample indices it drew in each epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from checkpoint import CheckpointError, as_config_dict, get_rng_state, set_rng_state
from config import StageA1Config, from_dict
from dataset import pad_to_length
from runtime import DistInfo, autocast, is_interactive, resolve_precision
from sc_mbm.mae_for_fmri import MAEforFMRI
from sc_mbm.utils import batch_pearson

log = logging.getLogger("mindvis")

ARCH_FIELDS = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_num_heads", "mlp_ratio")
DEBUG_DUMP_ENV = "MINDVIS_DEBUG_DUMP"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and the last checkpoint on disk stays as it was."""


# ---- Optimiser, schedule, precision ---------------------------------------------------------------------------------


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on weight matrices only, none on biases and 1-D parameters (norms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:  # the fixed sin-cos position embeddings
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, num_epoch: float) -> float:
    """The lr at a fractional epoch: linear warm-up to `lr`, then half-cosine down to `min_lr` at `num_epoch`."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(num_epoch - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, cfg: Any) -> float:
    """Set every group's lr for the fractional `epoch` of the run's schedule (cfg.num_epoch); returns it."""
    lr = lr_at(epoch, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.num_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class AmpScaler:
    """Autocast and gradient scaling for one precision: bf16 / fp32 need no scaler, fp16 uses GradScaler."""

    def __init__(self, precision: str, device: torch.device):
        self.precision = resolve_precision(precision, device)
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def autocast(self) -> torch.autocast:
        return autocast(self.precision, self.device)

    def backward(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list, clip_grad: float | None, update: bool
    ) -> None:
        """Accumulate the gradient of `loss`; with `update`, unscale, clip, step and clear the gradients."""
        self.scaler.scale(loss).backward()
        if not update:
            return
        if clip_grad:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)  # stays on the device: no sync
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state and self.scaler.is_enabled():  # published fp32 runs and our bf16/fp32 runs store {}
            self.scaler.load_state_dict(state)


# ---- The loop -------------------------------------------------------------------------------------------------------


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    amp: AmpScaler,
    epoch: int,
    cfg: Any,
    is_main: bool = True,
    wandb_run: Any = None,
) -> dict[str, float]:
    """One pass over `loader` (items {'fmri': (N, 1, V)}); returns the epoch means: loss, cor, lr, samples/s.

    `cfg` supplies lr, min_lr, warmup_epochs, num_epoch, accum_iter, clip_grad, mask_ratio and log_every.
    `model` may be wrapped in DistributedDataParallel; gradients are only all-reduced on update steps.
    """
    model.train()
    device, num_steps, accum = amp.device, len(loader), cfg.accum_iter
    params = [p for p in model.parameters() if p.requires_grad]
    window = torch.zeros(4, device=device)  # loss * n, sum of correlations, n, non-finite steps; since the last line
    totals = torch.zeros(4, device=device)
    no_bad = torch.tensor(num_steps, device=device)
    first_bad, bad_loss = no_bad.clone(), torch.zeros((), device=device)  # the first non-finite step, its loss
    step_t = torch.zeros((), dtype=torch.long, device=device)
    lr, updates, start = cfg.lr, 0, time.time()
    window_start = start

    bar = tqdm(
        loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=not (is_main and is_interactive())
    )
    for step, batch in enumerate(bar):
        if step % accum == 0:
            lr = adjust_learning_rate(optimizer, epoch + step / num_steps, cfg)
        fmri = batch["fmri"].to(device, non_blocking=True)  # (N, 1, V)
        update = (step + 1) % accum == 0 or step + 1 == num_steps
        no_sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not update else nullcontext()
        with no_sync:
            with amp.autocast():
                loss, pred, _ = model(fmri, mask_ratio=cfg.mask_ratio)  # pred (N, L, p)
            amp.backward(loss / accum, optimizer, params, cfg.clip_grad, update)

        with torch.no_grad():  # bookkeeping on the device, read back once per log line
            loss = loss.detach().float()
            finite = torch.isfinite(loss)
            cor = batch_pearson(pred.detach().float().flatten(1), fmri.flatten(1)).nan_to_num_(0.0)  # (N,)
            window[0] += torch.where(finite, loss, 0.0) * len(fmri)
            window[1] += cor.sum()
            window[2] += len(fmri)
            window[3] += (~finite).float()
            newly_bad = ~finite & (first_bad == no_bad)
            first_bad = torch.where(newly_bad, step_t, first_bad)
            bad_loss = torch.where(newly_bad, loss, bad_loss)
            step_t += 1
        updates += int(update)

        if (update and updates % cfg.log_every == 0) or step + 1 == num_steps:
            loss_sum, cor_sum, n, num_bad = _all_reduce(window).tolist()  # the one host sync per log line
            if num_bad > 0:  # every rank sees the summed count, so all of them stop here
                bad_step = int(_all_reduce(first_bad.clone(), dist.ReduceOp.MIN))
                value = f"{bad_loss.item():.4g}" if int(first_bad) == bad_step else "on another rank"
                raise NonFiniteLossError(
                    f"non-finite loss ({value}) at epoch {epoch}, step {bad_step} of {num_steps}: stopping. The last "
                    "checkpoint written is kept unchanged; try a lower --lr, --clip_grad or --precision fp32"
                )
            now = time.time()
            log.info(
                "epoch %d step %d/%d  loss %.4f  lr %.3e  cor %.4f  samples/s %.1f",
                epoch,
                step + 1,
                num_steps,
                loss_sum / n,
                lr,
                cor_sum / n,
                n / max(now - window_start, 1e-9),
            )
            if wandb_run is not None:
                wandb_run.log({"train/loss": loss_sum / n, "train/cor": cor_sum / n, "train/lr": lr})
            totals += window
            window.zero_()
            window_start = now

    loss_sum, cor_sum, n, _ = totals.tolist()
    elapsed = time.time() - start
    return {"loss": loss_sum / n, "cor": cor_sum / n, "lr": lr, "samples_per_s": n / elapsed, "time_s": elapsed}


# ---- Held-out evaluation --------------------------------------------------------------------------------------------


def masking_noise(num_samples: int, model: nn.Module, seed: int) -> torch.Tensor:
    """Fixed masking noise (num_samples, L), drawn from its own generator so the run's RNG streams are untouched."""
    num_patches = model.pos_embed.shape[1] - 1
    return torch.rand(num_samples, num_patches, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reconstruct(
    model: nn.Module, fmri: torch.Tensor, mask_ratio: float, noise: torch.Tensor, amp: AmpScaler
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked reconstruction of fmri (N, 1, V): (loss, pred (N, V) float32, mask (N, V) bool, True = masked)."""
    with amp.autocast():
        loss, pred, mask = model(fmri, mask_ratio=mask_ratio, noise=noise.to(fmri.device))  # (N, L, p), (N, L)
    patch_size = pred.shape[-1]
    return loss.float(), pred.float().flatten(1), mask.bool().repeat_interleave(patch_size, dim=1)


@torch.no_grad()
def evaluate(
    model: nn.Module, fmri: torch.Tensor, mask_ratio: float, amp: AmpScaler, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """Loss, full-reconstruction and masked-patch Pearson correlation on fmri (N, 1, V), with fixed masks."""
    was_training = model.training
    model.eval()
    noise = masking_noise(len(fmri), model, seed)
    sums = torch.zeros(3, device=amp.device)  # loss * n, correlation, masked-patch correlation
    for start in range(0, len(fmri), batch_size):
        x = fmri[start : start + batch_size].to(amp.device)  # (n, 1, V)
        loss, pred, mask = reconstruct(model, x, mask_ratio, noise[start : start + batch_size], amp)
        target = x.flatten(1)  # (n, V)
        sums[0] += loss * len(x)
        sums[1] += batch_pearson(pred, target).sum()
        # every sample has the same number of masked patches, so the masked voxels form an (n, V_masked) block
        sums[2] += batch_pearson(pred[mask].view(len(x), -1), target[mask].view(len(x), -1)).sum()
    model.train(was_training)
    loss, cor, masked_cor = (sums / len(fmri)).tolist()
    return {"loss": loss, "cor": cor, "masked_cor": masked_cor}


# ---- Data -----------------------------------------------------------------------------------------------------------


def match_voxels(fmri: np.ndarray, num_voxels: int) -> np.ndarray:
    """Wrap-pad or truncate the voxel (last) axis to `num_voxels`: (..., V) -> (..., num_voxels)."""
    return pad_to_length(fmri, num_voxels) if fmri.shape[-1] < num_voxels else fmri[..., :num_voxels]


def make_loader(dataset: Dataset, batch_size: int, seed: int, dist_info: DistInfo, num_workers: int = 0) -> DataLoader:
    """Shuffled loader whose order depends only on (seed, epoch) via `loader.sampler.set_epoch`; one share per rank.

    The sampler drops the few samples that do not divide among the ranks (different ones each epoch), so the
    ranks' shares are disjoint.
    """
    if len(dataset) < dist_info.world_size:
        raise ValueError(f"{len(dataset)} training samples cannot be shared among {dist_info.world_size} processes")
    sampler = DistributedSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed, drop_last=True
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=dist_info.device.type == "cuda",
    )


# ---- Models and checkpoints -----------------------------------------------------------------------------------------


def build_mae(cfg: StageA1Config, focus_range: list[int] | None = None, focus_rate: float = 0.6) -> MAEforFMRI:
    """The masked autoencoder of a Stage A architecture config (cfg.num_voxels set); optional focused masking."""
    return MAEforFMRI(
        num_voxels=cfg.num_voxels,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        decoder_embed_dim=cfg.decoder_embed_dim,
        decoder_num_heads=cfg.decoder_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        focus_range=focus_range,
        focus_rate=focus_rate if focus_range is not None else None,
    )


def stage_a_config_from_checkpoint(ckpt: dict, path: str | os.PathLike) -> StageA1Config:
    """The Stage A config in a checkpoint (ours or a published `Config_MBM_fMRI`), num_voxels from `pos_embed`."""
    absent = [key for key in ("model", "config") if key not in ckpt]
    if absent:
        raise CheckpointError(f"{path}: no {absent} entry; a Stage A checkpoint holds model, optimizer, epoch, config")
    values = as_config_dict(ckpt["config"])
    absent = [f for f in ARCH_FIELDS if f not in values]
    if absent:
        raise CheckpointError(f"{path}: its config lacks the architecture field(s) {absent}")
    if "pos_embed" not in ckpt["model"]:
        raise CheckpointError(f"{path}: its model state lacks 'pos_embed', so the voxel count is unknown")
    num_patches = ckpt["model"]["pos_embed"].shape[1] - 1
    if num_patches < 1:
        raise CheckpointError(
            f"{path}: pos_embed holds no patch positions (shape {list(ckpt['model']['pos_embed'].shape)})"
        )
    values["num_voxels"] = num_patches * int(values["patch_size"])
    return from_dict(StageA1Config, values, strict=False)  # validates, e.g. embed_dim divisible by num_heads


def load_model_state(model: nn.Module, state: dict, path: str | os.PathLike) -> None:
    """Load a state dict; every model key must be present (extra keys are reported and ignored)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: model weights do not fit the model built from its config: {e}") from None
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: model state lacks {len(missing)} key(s): {missing[:5]}{more}")
    if unexpected:
        log.warning("%s: ignoring %d unexpected key(s): %s", path, len(unexpected), unexpected[:5])


def gather_rng_states() -> list[dict]:
    """Every rank's RNG states (index = rank); a collective under torchrun, so every rank must call it."""
    state = get_rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, amp: AmpScaler, epoch: int, config: dict, **extra
) -> dict:
    """The published checkpoint layout (model, optimizer, epoch, scaler, config) plus every rank's RNG state.

    Gathers the RNG states, so every rank must call it, after everything else in the epoch has run.
    """
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "scaler": amp.state_dict(),
        "config": config,
        **extra,
        "rng": gather_rng_states(),
    }


def resume_training(
    ckpt: dict,
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    amp: AmpScaler,
    dist_info: DistInfo,
) -> int:
    """Restore model, optimiser, scaler and this rank's RNG from a checkpoint; returns the first epoch to run."""
    absent = [key for key in ("model", "optimizer", "epoch") if key not in ckpt]
    if absent:
        raise CheckpointError(f"{path}: cannot resume, no {absent} entry")
    load_model_state(model, ckpt["model"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimiser state does not fit this model: {e}") from None
    amp.load_state_dict(ckpt.get("scaler"))
    states = ckpt.get("rng")
    if isinstance(states, list) and len(states) == dist_info.world_size:
        set_rng_state(states[dist_info.rank])
    else:
        log.warning(
            "%s: no RNG state for %d process(es); the data order is reproduced, the masks are not",
            path,
            dist_info.world_size,
        )
    log.info("resumed from %s after epoch %d", path, ckpt["epoch"])
    return int(ckpt["epoch"]) + 1


def write_debug_dump(model: nn.Module, loader: DataLoader, epochs: range, dist_info: DistInfo) -> None:
    """With MINDVIS_DEBUG_DUMP=<folder>: write rank<r>.json (weights hash, sample indices drawn per epoch)."""
    folder = os.environ.get(DEBUG_DUMP_ENV)
    if not folder:
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    indices = {}
    for epoch in epochs:  # the sampler's order is a function of (seed, epoch): replay what this rank drew
        loader.sampler.set_epoch(epoch)
        indices[epoch] = list(loader.sampler)
    record = {"rank": dist_info.rank, "world_size": dist_info.world_size, "weights_sha256": digest.hexdigest()}
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{dist_info.rank}.json").write_text(json.dumps({**record, "indices": indices}))
