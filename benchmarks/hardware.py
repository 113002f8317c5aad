"""The device: waiting for it, peak memory of a block, FLOPs of a call, its peak FLOP/s and what it is called."""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from attention import original_attention

# Dense (no sparsity) peak rates from the vendors' data sheets, TFLOP/s: bf16/fp16 tensor cores and plain fp32.
# Matched against torch.cuda.get_device_name() in this order (the first substring that occurs wins).
GPU_PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.5, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp32": 66.9}),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp32": 91.6}),
    ("RTX 4090", {"bf16": 165.2, "fp32": 82.6}),
    ("A10", {"bf16": 125.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- memory -------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakMemory:
    """Peak memory while the block runs: CUDA `max_memory_allocated`; CPU the process's resident set size.

    On CPU it samples /proc/self/statm every 5 ms in a thread (ru_maxrss only grows over the whole process, so it
    cannot separate variants); `peak` is the highest resident size seen, weights and allocator caches included.
    Where /proc is missing it falls back to ru_maxrss.
    """

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/statm").exists():
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---- FLOPs and the device's peak ----------------------------------------------------------------------------------


def count_flops(call: Callable[[], Any]) -> int:
    """FLOPs of one call (forward and backward), counted with attention as explicit matmuls.

    The CPU SDPA kernel is not in torch's FLOP registry, so the count runs under `original_attention`: its two
    batched matmuls are exactly the FLOPs any attention kernel must do.
    """
    with original_attention(), FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul (best of `reps`): a probe of what this device achieves, not its peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(reps + 1):  # the first call warms up
        synchronize(device)
        start = time.perf_counter()
        a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, peak FLOP/s per dtype (GPU data sheet; on CPU measured matmul rates, labelled so) and the bf16 verdict.

    `bf16_try` says whether bf16 is worth measuring on the workloads: on CUDA when the GPU supports it; on CPU only
    when a bf16 matmul reaches at least half the fp32 rate (CPUs without bf16 units emulate it, many times slower,
    and a full-size workload in bf16 would then take hours).
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks = next((p for key, p in GPU_PEAK_TFLOPS if key in name), None)
        return {
            "type": "cuda",
            "name": name,
            "memory_bytes": torch.cuda.get_device_properties(device).total_memory,
            "peak_flops": {k: v * 1e12 for k, v in peaks.items()} if peaks else None,
            "peak_source": "vendor data sheet, dense" if peaks else "unknown GPU: no peak in GPU_PEAK_TFLOPS",
            "bf16_try": torch.cuda.is_bf16_supported(),
        }
    fp32, bf16 = matmul_rate(device, torch.float32), matmul_rate(device, torch.bfloat16, 256)
    return {
        "type": "cpu",
        "name": _cpu_name(),
        "threads": torch.get_num_threads(),
        "peak_flops": {"fp32": fp32, "bf16": bf16},
        "peak_source": "CPU peak unknown: measured matmul rates (fp32 1024^2, bf16 256^2) stand in for it",
        "bf16_try": bf16 >= 0.5 * fp32,
    }


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
