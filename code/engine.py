"""The training engine both stages share: optimiser, learning-rate schedule, mixed precision, one epoch's loop.

In the spirit of MAE's `engine_pretrain.py`: each stage script owns its epoch loop and calls `train_one_epoch`
with a `step` function that turns a batch into a loss (and per-sample metrics to average). Here: the
per-iteration learning rate, gradient accumulation (no all-reduce on accumulating steps), autocast and the
fp16 gradient scaler, clipping, and bookkeeping on the device, read back once per log line, so the loop never
waits for the host between steps. A non-finite loss is noticed at that read-back and stops the run
(`NonFiniteLossError`) before any checkpoint is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from config_engine import config_to_dict, format_config, save_config
from errors import UserError
from runtime import (
    DistInfo,
    append_jsonl,
    autocast,
    cleanup_distributed,
    eta,
    format_seconds,
    init_wandb,
    is_interactive,
    make_run_dir,
    precision_hint,
    resolve_precision,
    run_folder,
    setup_logging,
)

log = logging.getLogger("mindvis.engine")

# step(model, batch) -> (loss, {metric name: per-sample values (N,)}), computed under autocast
StepFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the run stops and the last checkpoint on disk stays as it was."""


@dataclass(frozen=True)
class Schedule:
    """The per-iteration learning rate: linear warm-up to `lr`, then half-cosine to `min_lr` at `num_epoch`.

    `min_lr == lr` with no warm-up is a constant rate (Stage B).
    """

    lr: float
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    num_epoch: float = 1.0

    def __call__(self, epoch: float) -> float:
        """The learning rate at a fractional epoch."""
        if epoch < self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        progress = (epoch - self.warmup_epochs) / max(self.num_epoch - self.warmup_epochs, 1e-12)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def fused_adam(device: torch.device) -> bool:
    """Whether torch has a fused Adam/AdamW kernel for `device` (CPU and CUDA): one pass over all parameters."""
    return device.type in ("cpu", "cuda")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, no weight decay on biases and 1-D parameters (timm's groups).

    The fused kernel (one pass over all parameters; the same update to float rounding) where the device has it:
    much faster than the for-loop AdamW on a CPU (benchmarks/README.md, "Training recommendations").
    """
    groups = param_groups_weight_decay(model, weight_decay)
    device = next(model.parameters()).device
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused_adam(device))


class AmpScaler:
    """Autocast and gradient scaling for one precision: bf16 / fp32 need no scaler, fp16 uses GradScaler."""

    def __init__(self, precision: str, device: torch.device):
        self.precision = resolve_precision(precision, device)
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def autocast(self) -> torch.autocast:
        return autocast(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` (scaled in fp16)."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list, clip_grad: float | None) -> None:
        """Unscale the accumulated gradients, clip them to `clip_grad` (None: no clipping), step the optimiser
        (skipped by the fp16 scaler after an overflow) and clear the gradients."""
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


def make_loader(
    dataset: Dataset, batch_size: int, seed: int, dist_info: DistInfo, num_workers: int = 0, drop_last: bool = False
) -> DataLoader:
    """Shuffled loader whose order depends only on (seed, epoch) via `loader.sampler.set_epoch`; one share per rank.

    The sampler drops the few samples that do not divide among the ranks (different ones each epoch), so the
    ranks' shares are disjoint; `drop_last` also drops a last batch smaller than `batch_size` (the published Stage A
    keeps it, Stage B drops it).
    """
    if len(dataset) < dist_info.world_size * (batch_size if drop_last else 1):
        raise UserError(
            f"{len(dataset)} training samples are too few for batches of {batch_size} on "
            f"{dist_info.world_size} process(es); use a smaller --batch_size"
        )
    sampler = DistributedSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed, drop_last=True
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=dist_info.device.type == "cuda",
    )


def wrap_ddp(model: nn.Module, dist_info: DistInfo) -> nn.Module:
    """`model` under DistributedDataParallel when the run is distributed (save and evaluate the unwrapped one)."""
    if not dist_info.distributed:
        return model
    device = dist_info.device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    amp: AmpScaler,
    *,
    epoch: int,
    step: StepFn,
    schedule: Schedule,
    accum_iter: int = 1,
    clip_grad: float | None = None,
    log_every: int = 20,
) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's sample-weighted means of the loss and the step's metrics,
    the last lr, samples/s and seconds. `model` may be wrapped in DistributedDataParallel."""
    model.train()
    device, num_steps = amp.device, len(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    sums = None  # on the device: loss * n, n, non-finite steps, then one sum per metric; since the last line
    totals = None
    first_bad = torch.full((), num_steps, device=device)  # the first non-finite step and its loss
    bad_loss = torch.zeros((), device=device)
    step_t = torch.zeros((), dtype=torch.long, device=device)
    lr, updates, start = schedule(epoch), 0, time.time()
    window_start = start
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=not is_interactive())
    for i, batch in enumerate(bar):
        if i % accum_iter == 0:
            lr = schedule(epoch + i / num_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        update = (i + 1) % accum_iter == 0 or i + 1 == num_steps
        no_sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not update else nullcontext()
        with no_sync:
            with amp.autocast():
                loss, metrics = step(model, batch)
            amp.backward(loss / accum_iter)
            if update:
                amp.step(optimizer, params, clip_grad)

        with torch.no_grad():  # bookkeeping on the device, read back once per log line
            loss = loss.detach().float()
            finite = torch.isfinite(loss)
            n = len(next(iter(metrics.values()))) if metrics else len(next(iter(batch.values())))
            row = [torch.where(finite, loss, 0.0) * n, torch.tensor(float(n), device=device), (~finite).float()]
            row += [m.detach().float().nan_to_num(0.0).sum() for m in metrics.values()]
            sums = torch.stack(row) if sums is None else sums + torch.stack(row)
            newly_bad = ~finite & (first_bad == num_steps)
            first_bad = torch.where(newly_bad, step_t, first_bad)
            bad_loss = torch.where(newly_bad, loss, bad_loss)
            step_t += 1
        updates += int(update)

        if (update and updates % log_every == 0) or i + 1 == num_steps:
            values = _all_reduce(sums).tolist()  # the one host sync per log line
            if values[2] > 0:  # every rank sees the summed count, so all of them stop here
                bad_step = int(_all_reduce(first_bad.clone(), dist.ReduceOp.MIN))
                value = f"{bad_loss.item():.4g}" if int(first_bad) == bad_step else "on another rank"
                raise NonFiniteLossError(
                    f"non-finite loss ({value}) at epoch {epoch}, step {bad_step} of {num_steps}: stopping, the last "
                    "checkpoint written is kept unchanged. Inputs and starting weights were checked to be finite, "
                    "so the training diverged: try a lower --lr or --clip_grad, or --precision fp32"
                )
            now = time.time()
            means = "  ".join(f"{k} {v / values[1]:.4f}" for k, v in zip(metrics, values[3:], strict=True))
            log.info(
                "epoch %d step %d/%d  loss %.4f  lr %.3e  %s  samples/s %.1f  epoch ETA %s",
                epoch,
                i + 1,
                num_steps,
                values[0] / values[1],
                lr,
                means,
                values[1] / max(now - window_start, 1e-9),
                eta(i + 1, num_steps, now - start),
            )
            totals = sums if totals is None else totals + sums
            sums, window_start = None, now

    values = totals.tolist()
    elapsed = time.time() - start
    out = {"loss": values[0] / values[1]}
    out.update({k: v / values[1] for k, v in zip(metrics, values[3:], strict=True)})
    return out | {"lr": lr, "samples_per_s": values[1] / elapsed, "time_s": elapsed}


@dataclass
class TrainingRun:
    """The folder a stage's training writes into, and its wandb run (None unless --use_wandb)."""

    folder: Path
    wandb: Any


@contextmanager
def training_run(
    cfg: Any, stage: str, dist_info: DistInfo, amp: AmpScaler, resume: Path | None, start_epoch: int
) -> Iterator[TrainingRun]:
    """What every training stage does around its loop: the run folder (`<output_path>/<stage>/<time>`, or the resumed
    run's), its log, `config.yaml` and the resolved config in the log, the precision hint, wandb; on the way out
    wandb finished and the process group torn down, and a folder the run wrote no result into removed."""
    folder = resume.parent if resume else make_run_dir(cfg.output_path, stage, dist_info)
    try:
        with run_folder(folder, dist_info.is_main):
            setup_logging(folder, dist_info.is_main)
            if dist_info.is_main:
                save_config(cfg, folder)
                title = stage.replace("stage", "Stage ")  # stageA1 -> Stage A1
                how = f"resumed at epoch {start_epoch}" if resume else "config"
                log.info("%s %s:\n%s", title, how, format_config(cfg))
                if hint := precision_hint(cfg.precision, amp.precision, dist_info.device):
                    log.info(hint)
            run = TrainingRun(
                folder, init_wandb(cfg.use_wandb, cfg.wandb_project, folder, config_to_dict(cfg), dist_info.is_main)
            )
            yield run
            if run.wandb is not None:
                run.wandb.finish()
    finally:
        cleanup_distributed()


def record_epoch(
    run_dir: Path,
    epoch: int,
    stats: dict[str, Any],
    start_epoch: int,
    num_epoch: int,
    started: float,
    wandb_run: Any = None,
) -> None:
    """After an epoch (rank 0): a JSON line in metrics.jsonl, wandb when on, and a log line with the run's ETA."""
    append_jsonl(run_dir / "metrics.jsonl", {"epoch": epoch, **stats})
    if wandb_run is not None:
        wandb_run.log({f"epoch/{k}": v for k, v in stats.items()} | {"epoch": epoch})
    elapsed = time.time() - started
    numbers = "  ".join(f"{k} {v:.4g}" for k, v in stats.items() if isinstance(v, int | float))
    log.info(
        "epoch %d/%d done: %s  (%s elapsed, run ETA %s)",
        epoch + 1,
        num_epoch,
        numbers,
        format_seconds(elapsed),
        eta(epoch + 1 - start_epoch, num_epoch - start_epoch, elapsed),
    )
