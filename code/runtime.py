"""What every stage script needs around its loop: distributed set-up, seeding, run folder, logging, precision.

The same script runs alone or under `torchrun`: `init_distributed` reads RANK / LOCAL_RANK /
WORLD_SIZE from the environment, picks NCCL on CUDA and gloo on CPU, and the device from
LOCAL_RANK. Only rank 0 writes (log file, JSON lines, figures, checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("mindvis")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the (possibly single-process) job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:<local_rank> when CUDA is available, else cpu; anything else as given."""
    if device != "auto":
        return torch.device(device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world_size, dev)


def barrier() -> None:
    """Synchronise all ranks (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Tear down the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch (all devices); each rank gets its own stream (seed + rank)."""
    seed = int(seed) + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_run_dir(output_path: str | os.PathLike, stage: str, dist_info: DistInfo | None = None) -> Path:
    """Create `<output_path>/<stage>/<timestamp>` on rank 0 and share its name with the other ranks."""
    name = [time.strftime("%Y%m%d-%H%M%S")]
    if dist_info is not None and dist_info.distributed:
        dist.broadcast_object_list(name, src=0)
    run_dir = Path(output_path) / stage / name[0]
    if dist_info is None or dist_info.is_main:
        suffix, candidate = 1, run_dir
        while candidate.exists():  # two runs started within the same second
            candidate, suffix = run_dir.with_name(f"{run_dir.name}-{suffix}"), suffix + 1
        run_dir = candidate
        run_dir.mkdir(parents=True)
    return run_dir


def setup_logging(run_dir: Path | None, is_main: bool = True) -> logging.Logger:
    """Log to the console and `<run_dir>/log.txt` on rank 0; other ranks only report warnings."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    log.addHandler(console)
    if is_main and run_dir is not None:
        file = logging.FileHandler(Path(run_dir) / "log.txt")
        file.setFormatter(fmt)
        log.addHandler(file)
    return log


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (e.g. the per-epoch summary) to `path`."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU; explicit choices are checked."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for a resolved precision ('fp32' gives a disabled context)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def init_wandb(enabled: bool, project: str, run_dir: Path, config: dict, is_main: bool) -> Any:
    """Start a wandb run only when asked for (never by default, never required online); returns it or None."""
    if not (enabled and is_main):
        return None
    try:
        import wandb
    except ImportError as e:
        raise RuntimeError("--use_wandb needs the wandb package: pip install wandb") from e
    return wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config)


def is_interactive() -> bool:
    """Whether to draw tqdm bars (a terminal, not a log file or CI)."""
    return sys.stderr.isatty() and not os.environ.get("CI")
