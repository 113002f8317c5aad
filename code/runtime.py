"""What every stage script needs around its loop: distributed set-up, seeding, run folder, logging, precision.

The same script runs alone or under `torchrun`: `init_distributed` reads RANK / LOCAL_RANK /
WORLD_SIZE from the environment, picks NCCL on CUDA and gloo on CPU, and the device from
LOCAL_RANK. Only rank 0 writes (log file, JSON lines, figures, checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from errors import UsageError, UserError

log = logging.getLogger("mindvis")
T = TypeVar("T")


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
    """`auto` -> cuda:<local_rank> when CUDA is available, else cpu; anything else is checked to exist."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible here; use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


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


def check_output_folder(output_path: str | os.PathLike) -> Path:
    """The folder run folders go into: created if needed, and checked to be a writable folder (before any work)."""
    path = Path(output_path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_path {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"--output_path {path} is not a writable folder: {e.strerror or e}") from None
    return path


def make_run_dir(output_path: str | os.PathLike, stage: str, dist_info: DistInfo | None = None) -> Path:
    """Create `<output_path>/<stage>/<timestamp>` on rank 0 and share its name with the other ranks."""
    name = [time.strftime("%Y%m%d-%H%M%S")]
    if dist_info is not None and dist_info.distributed:
        dist.broadcast_object_list(name, src=0)
    run_dir = Path(output_path) / stage / name[0]
    if run_dir.parent.is_symlink():
        raise UserError(f"{run_dir.parent} is a link; run folders are never made through a link (remove it)")
    if dist_info is None or dist_info.is_main:
        suffix, candidate = 1, run_dir
        while candidate.exists():  # two runs started within the same second
            candidate, suffix = run_dir.with_name(f"{run_dir.name}-{suffix}"), suffix + 1
        run_dir = candidate
        run_dir.mkdir(parents=True)
    return run_dir


# What a run folder holds before it has produced anything; a run that fails leaves no folder of only these.
_NO_RESULT = {"config.yaml", "log.txt", "metrics.jsonl"}


@contextmanager
def run_folder(run_dir: Path, is_main: bool = True) -> Iterator[Path]:
    """Yield `run_dir`; if the run fails before writing a result (a checkpoint, figure, image), remove the folder."""
    try:
        yield run_dir
    except BaseException:
        if is_main and run_dir.is_dir() and all(p.name in _NO_RESULT for p in run_dir.iterdir()):
            for handler in list(log.handlers):  # release log.txt before deleting it
                if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
                    log.removeHandler(handler)
                    handler.close()
            shutil.rmtree(run_dir)
        raise


def setup_logging(run_dir: Path | None, is_main: bool = True) -> logging.Logger:
    """Log to the console and `<run_dir>/log.txt` on rank 0 (appending, so a resumed run continues its log);
    other ranks only report warnings. Every module logs under "mindvis.*", so all of it reaches both."""
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
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
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # never through a link
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU; explicit choices are checked."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device (its gradient scaler); use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32")
    return precision


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_hint(requested: str, resolved: str, device: torch.device) -> str | None:
    """A log line when `auto` stayed fp32 on a CPU that computes bf16 natively, where bf16 may train much faster.

    `auto` keeps fp32 on every CPU so that a run's numbers do not depend on the CPU it ran on."""
    if requested != "auto" or resolved != "fp32" or device.type != "cpu" or not cpu_has_native_bf16():
        return None
    return (
        "this CPU computes bf16 natively: --precision bf16 may train much faster (benchmarks/README.md has the "
        "ratios); auto keeps fp32 on CPUs so results do not depend on the CPU"
    )


def attention_kind(device: torch.device, precision: str) -> str:
    """The attention path of the fMRI transformers for a device and precision: "sdpa" or "explicit".

    Explicit for bf16 on a CPU: PyTorch's CPU SDPA kernels run these short sequences of 32- and 64-wide heads
    several times slower in bf16 than three plain ops (forward and backward), and the bf16 Stage A1 step on an AMX
    CPU runs faster with them (benchmarks/README.md has the numbers). SDPA everywhere else (its fused kernels win
    on GPUs and in fp32). Both compute the same attention.
    """
    return "explicit" if device.type == "cpu" and precision == "bf16" else "sdpa"


def use_attention(model: torch.nn.Module, kind: str) -> None:
    """Run every timm attention layer in `model` (the fMRI transformers) through SDPA ("sdpa") or the explicit
    softmax ("explicit")."""
    from timm.models.vision_transformer import Attention

    if kind not in ("sdpa", "explicit"):
        raise ValueError(f"attention must be 'sdpa' or 'explicit', got {kind!r}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = kind == "sdpa"


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for a resolved precision ('fp32' gives a disabled context)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def compile_for_inference(fn: T) -> T:
    """`torch.compile` with inductor's freezing: the weights become constants, so their casts and layouts are folded
    in once (on a CPU, convolution weights prepacked). Only for models whose weights stay fixed while it runs;
    freezing is inductor's process-wide setting, read when a graph compiles. Static shapes: each new batch size
    compiles its own graph rather than one slower dynamic-shape graph for all."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(fn, dynamic=False)


def init_wandb(enabled: bool, project: str, run_dir: Path, config: dict, is_main: bool) -> Any:
    """Start a wandb run only when asked for (never by default, never required online); returns it or None."""
    if not (enabled and is_main):
        return None
    try:
        import wandb
    except ImportError:
        raise UsageError("--use_wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config)


def machine() -> dict[str, Any]:
    """What a timing was measured on: CPU model, cores, torch threads, native bf16, GPU, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "gpu": gpu,
        "torch": torch.__version__,
    }


def is_interactive() -> bool:
    """Whether to draw tqdm bars (a terminal, not a log file, sbatch, nohup or CI)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def format_seconds(seconds: float) -> str:
    """'1h02m', '3m05s' or '12s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def eta(done: float, total: float, elapsed: float) -> str:
    """Time left at the rate so far, e.g. '3m05s' ('?' before any progress)."""
    return format_seconds(elapsed / done * (total - done)) if done > 0 else "?"


def progress(items: Iterable[T], total: int, desc: str, every_s: float = 30.0) -> Iterator[T]:
    """Iterate `items` with progress: a tqdm bar on a terminal; otherwise a log line with the count, elapsed time
    and ETA at most every `every_s` seconds, and at the end (readable in a log file, no carriage returns)."""
    if is_interactive():
        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = last = time.time()
    for i, item in enumerate(items, 1):
        yield item
        now = time.time()
        if now - last >= every_s or i == total:
            log.info(
                "%s: %d/%d (%d%%), %s elapsed, ETA %s",
                desc,
                i,
                total,
                100 * i // max(total, 1),
                format_seconds(now - start),
                eta(i, total, now - start),
            )
            last = now
