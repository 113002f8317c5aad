"""What every benchmark script shares: options, the original's attention, timing, memory, FLOPs, tables, JSON.

Each script measures "variants" of one workload inside the same run: the original's own code when a checkout of
it is given (`--original PATH`, see original.py), the original's way emulated with our code (fp32,
explicit-softmax attention, the original's batch and loop; the baseline when no checkout is given, as in CI) and
the levers of ours, one at a time (SDPA, batching, channels-last, bf16, torch.compile, ...). Variants run
interleaved, round after round (A B C A B C ...), so that a load change on a shared machine hits all of them
alike; the first `warmup` rounds are discarded and the median of the rest is reported (`--stat min`: the fastest
round, a steadier estimate of the unloaded time on a machine shared with other jobs). A lever joins "ours" only
if it made the workload faster here; the JSON and the table show every variant.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "code") not in sys.path:  # scripts run as `python benchmarks/bench_*.py`
    sys.path.insert(0, str(ROOT / "code"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from errors import DEBUG_HELP, UsageError  # noqa: E402
from runtime import autocast, pick_device  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
STATISTICS = ("median", "min")

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


# ---- options ------------------------------------------------------------------------------------------------------


def parse_args(description: str, argv: list[str] | None = None, add: Callable | None = None) -> argparse.Namespace:
    """The options every script takes (`add(parser)` adds its own); `--tiny` / `--quick` pick smaller settings."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes, for a CPU in minutes")
    p.add_argument("--tiny", action="store_true", help="toy model sizes (seconds): checks the script, not speed")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--warmup", type=int, default=None, help="discarded rounds (default 1 quick/tiny, 2 full)")
    p.add_argument("--runs", type=int, default=None, help="measured rounds (default 3 quick/tiny, 5 full)")
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="try torch.compile: auto = on CUDA, not on CPU in --quick/--tiny (compiling takes minutes)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for <script>-<device>.json")
    p.add_argument("--original", type=Path, default=None, metavar="PATH",
                   help="a checkout of the original MinD-Vis (zjc062/mind-vis): its own code becomes the baseline, "
                        "run beside ours on the same inputs and weights (default: its way, emulated with our code)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads; default: PyTorch's, one per core). On a machine shared "
                        "with other jobs 1 is steadier: with one thread per core, every parallel op waits for its "
                        "slowest thread, which another job may have descheduled")
    p.add_argument("--stat", choices=STATISTICS, default="median",
                   help="time of a variant from its measured rounds: the median, or the fastest round (steadier "
                        "when other jobs load the machine)")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)  # fmt: skip
    if add is not None:
        add(p)
    args = p.parse_args(argv)
    if args.original is not None:
        import original  # its import shims stay out of runs without a checkout

        args.original = original.OriginalCheckout(args.original)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    small = args.quick or args.tiny
    args.warmup = (1 if small else 2) if args.warmup is None else args.warmup
    args.runs = (3 if small else 5) if args.runs is None else args.runs
    args.device = pick_device(args.device)
    args.mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    Measurement.statistic = args.stat
    args.commit = git_commit()  # the code that runs, recorded before anything can change it
    return args


def want_compile(args: argparse.Namespace) -> bool:
    """Whether to try torch.compile as a lever in this run."""
    if args.compile != "auto":
        return args.compile == "on"
    return args.device.type == "cuda" or args.mode == "full"


# ---- the original's attention -------------------------------------------------------------------------------------


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as the original code computed it, materialising the (..., L, M) score matrix."""
    if is_causal or enable_gqa:
        raise NotImplementedError("the benchmarked models use neither causal nor grouped-query attention")
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (..., L, M)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = scores.softmax(dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (..., L, d)


class _AttentionPatch:
    """Counts the calls that went through the patch, to prove it reached the model code."""

    calls = 0


@contextlib.contextmanager
def original_attention() -> Iterator[type[_AttentionPatch]]:
    """Route every `F.scaled_dot_product_attention` call to `explicit_attention` inside the block.

    Our attention modules and timm's `Attention` (fused path, its default) both look the function up on
    `torch.nn.functional` at call time, so replacing the module attribute reaches them without touching model
    code. `calls` counts how often the explicit version ran, so a script can check that the patch was effective.
    """
    fused = F.scaled_dot_product_attention

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        _AttentionPatch.calls += 1
        return explicit_attention(*args, **kwargs)

    F.scaled_dot_product_attention = counted
    try:
        yield _AttentionPatch
    finally:
        F.scaled_dot_product_attention = fused


def original_attention_calls() -> int:
    """How many attention calls have gone through `original_attention` so far in this process."""
    return _AttentionPatch.calls


def check_patch_reached(calls_before: int) -> None:
    """Raise if no attention call went through the patch since `calls_before`: the baseline would be wrong."""
    if _AttentionPatch.calls == calls_before:
        raise RuntimeError(
            "the original's explicit-softmax attention never ran: the model no longer calls "
            "torch.nn.functional.scaled_dot_product_attention at run time, so the baseline would measure SDPA"
        )


# ---- variants, timing and the ladder of levers ------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of running a workload; `batch` is the number of items (samples, images) per call."""

    batch: int
    dtype: str = "fp32"  # fp32 | bf16 (autocast)
    # sdpa | explicit (the original's: SDPA patched to materialise the scores) | softmax (ours' explicit path, timm's
    # unfused attention: what the stages run in bf16 on a CPU, sc_mbm.mae_for_fmri.attention_kind)
    attention: str = "sdpa"
    channels_last: bool = False
    compiled: bool = False
    # training: the original's loop around the model (Stage A: the per-step metric on the host; Stage B: the
    # whole UNet trainable, so backward computes unused weight gradients)
    original_loop: bool = False
    code: str = "ours"  # ours | original (the original's own code, imported from --original)
    fixed_context: bool = False  # generation: cross-attention K/V and time-embedding term computed once per run
    optimizer: str = "default"  # training: default (the stage's: fused where the device has it) | plain (AdamW() as
    # the original builds it: a for-loop over the tensors on a CPU, foreach on CUDA)

    @property
    def name(self) -> str:
        if self.code == "original":
            return f"original code, {self.dtype}, batch {self.batch}"
        extra = (", channels-last" if self.channels_last else "") + (", compiled" if self.compiled else "")
        extra += ", original loop" if self.original_loop else ""
        extra += ", fixed context" if self.fixed_context else ""
        extra += f", {self.optimizer} AdamW" if self.optimizer != "default" else ""
        return f"{self.dtype}, {self.attention}, batch {self.batch}{extra}"

    def context(self, device: torch.device) -> contextlib.ExitStack:
        """The attention patch and autocast this variant runs under (the original's code brings its own)."""
        stack = contextlib.ExitStack()
        if self.code == "original":
            return stack
        if self.attention == "explicit":
            stack.enter_context(original_attention())
        stack.enter_context(autocast(self.dtype, device))
        return stack


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    """Times (s per call) of one variant in one phase, its peak memory and its speed-up over the original."""

    variant: Variant
    phase: int
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    speedup: float = 1.0  # per item, chained through the phases' shared reference

    statistic = "median"  # of all measurements in this process (`--stat`)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def time(self) -> float:
        """Seconds per call: the median of the measured rounds, or the fastest one (`--stat min`)."""
        return min(self.times) if self.statistic == "min" else self.median

    @property
    def per_item(self) -> float:
        return self.time / self.variant.batch


def measure(
    variants: list[Variant],
    call: Callable[[Variant], None],
    device: torch.device,
    warmup: int,
    runs: int,
    prepare: Callable[[Variant], None] | None = None,
    phase: int = 1,
) -> list[Measurement]:
    """Run `call(v)` for every variant `warmup + runs` times, interleaved by round; `prepare(v)` before each."""
    results = [Measurement(v, phase) for v in variants]
    for round_ in range(warmup + runs):
        for m in results:
            if prepare is not None:
                prepare(m.variant)
            synchronize(device)
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                with m.variant.context(device):
                    call(m.variant)
                synchronize(device)
                elapsed = time.perf_counter() - start
            if round_ >= warmup:
                m.times.append(elapsed)
                m.peak_bytes = max(m.peak_bytes, mem.peak)
    return results


def climb(
    rungs: list[Variant],
    levers: list[dict[str, Any]],
    call: Callable[[Variant], None],
    device: torch.device,
    warmup: int,
    runs: int,
    prepare: Callable[[Variant], None] | None = None,
) -> tuple[list[Measurement], Variant]:
    """Measure the original and ours' fixed levers, then try the optional levers one by one; returns (all, ours).

    `rungs` = [original, ..., the last always-on rung]; `levers` are field changes (e.g. `{"dtype": "bf16"}`).
    Phase 1 runs the rungs together with the first lever applied to the last rung. Each later lever runs in its
    own phase on the best variant so far, which is re-measured there, and is kept only if faster per item.
    Speed-ups are chained through each phase's reference, so a load change between phases does not enter them.
    """
    first = [replace(rungs[-1], **levers[0])] if levers else []
    measured = measure(rungs + first, call, device, warmup, runs, prepare, phase=1)
    for m in measured:
        m.speedup = measured[0].per_item / m.per_item
    best = min(measured[len(rungs) - 1 :], key=lambda m: m.per_item)
    for phase, changes in enumerate(levers[1:], start=2):
        ref, new = measure(
            [best.variant, replace(best.variant, **changes)], call, device, warmup, runs, prepare, phase
        )
        ref.speedup = best.speedup
        new.speedup = best.speedup * ref.per_item / new.per_item
        measured += [ref, new]
        if new.per_item < ref.per_item:
            best = new
    return measured, best.variant


@contextlib.contextmanager
def cast_weights_once(device: torch.device) -> Iterator[None]:
    """Keep autocast's casts of the weights between the calls inside the block, as within one sampling run.

    Autocast caches the bf16 copy of each weight until the outermost autocast region ends; a sampler runs its 251
    UNet calls inside one region (gen_eval's), so it casts the weights once per run. Timing each call in its own
    region would charge every call with casting all weights. Inside this block (an outer, disabled region) the
    cache lives on; leaving it clears it.
    """
    with torch.autocast(device.type, enabled=False):
        yield


# ---- the original's code beside ours ---------------------------------------------------------------------------


def baseline_rungs(args: argparse.Namespace, original: Variant, emulated: list[Variant]) -> list[Variant]:
    """The first rungs of a workload: the original's own code (with --original), then its way emulated with ours."""
    return ([replace(original, code="original")] if args.original is not None else []) + emulated


def baseline_note(args: argparse.Namespace) -> str:
    """What the first row of the table is: the original's code (which checkout), or its way emulated with ours."""
    if args.original is not None:
        return f"baseline: the original's own code, {args.original.root} at commit {args.original.commit[:7]}"
    return ("baseline: the original's way emulated with our code (fp32, explicit-softmax attention, its batch and "
            "loop); pass --original PATH (a checkout of zjc062/mind-vis) to run its own code beside ours")  # fmt: skip


def difference(ours: Any, original: Any) -> dict[str, float]:
    """Largest absolute difference of two tensors (or scalars) in float32, and the largest |original| for scale."""
    a, b = torch.as_tensor(ours).detach().float().cpu(), torch.as_tensor(original).detach().float().cpu()
    return {"max_abs_diff": (a - b).abs().max().item(), "max_abs_original": b.abs().max().item()}


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


def optional_levers(args: argparse.Namespace, info: dict[str, Any], conv: bool) -> tuple[list[dict], list[str]]:
    """The levers of ours kept only where they help (channels-last, bf16, compile), and why any is left out."""
    levers: list[dict[str, Any]] = [{"channels_last": True}] if conv else []
    notes = []
    if info["bf16_try"] or args.mode == "tiny":  # tiny runs it anyway: seconds, and it checks the path
        levers.append({"dtype": "bf16"})
    else:
        peak = info["peak_flops"]
        notes.append(
            f"bf16 not run: a bf16 matmul reaches {peak['bf16'] / 1e9:.3g} GFLOP/s here against "
            f"{peak['fp32'] / 1e9:.3g} GFLOP/s in fp32 (no native bf16 on this CPU), so it cannot help"
        )
    if want_compile(args):
        levers.append({"compiled": True})
    else:
        notes.append(
            f"torch.compile not tried (--compile {args.compile}: on CPU only outside --quick/--tiny, as compiling "
            "these models takes minutes there); --compile on tries it"
        )
    return levers, notes


# ---- reporting ----------------------------------------------------------------------------------------------------


def variant_rows(measured: list[Measurement], flops_per_item: float | None, peak: dict | None) -> list[dict[str, Any]]:
    """One JSON row per measured variant: times, throughput, memory, achieved FLOP/s and the fraction of the peak."""
    out = []
    for m in measured:
        v = m.variant
        row = (
            {"name": v.name, "phase": m.phase}
            | asdict(v)
            | {
                "time_s": m.time,
                "time_s_median": m.median,
                "time_s_min": min(m.times),
                "times_s": m.times,
                "items_per_s": v.batch / m.time,
                "peak_memory_bytes": m.peak_bytes,
                "speedup_vs_original": m.speedup,
            }
        )
        if flops_per_item:
            achieved = flops_per_item * v.batch / m.time
            ref = (peak or {}).get(v.dtype)
            row |= {"achieved_flops": achieved, "fraction_of_peak": achieved / ref if ref else None}
        out.append(row)
    return out


def print_table(title: str, table: list[dict[str, Any]], ours: str, original: str) -> None:
    """The variants as an aligned text table; the original is marked `o`, ours `*`."""
    print(f"\n{title}")
    print(
        f"  {'ph':>2} {'variant':<46} {'s/call':>9} {'items/s':>9} {'peak MiB':>9} {'GFLOP/s':>9} {'%peak':>6} "
        f"{'vs orig':>8}"
    )
    for r in table:
        frac = r.get("fraction_of_peak")
        mark = "*" if r["name"] == ours else "o" if r["name"] == original and r["phase"] == 1 else " "
        print(
            f"{mark} {r['phase']:>2} {r['name']:<46} {r['time_s']:>9.4g} {r['items_per_s']:>9.4g} "
            f"{r['peak_memory_bytes'] / 2**20:>9.0f} {r.get('achieved_flops', 0) / 1e9:>9.4g} "
            f"{'' if frac is None else f'{100 * frac:.1f}':>6} {r['speedup_vs_original']:>7.2f}x"
        )


def workload_record(
    name: str,
    sizes: dict[str, Any],
    measured: list[Measurement],
    ours: Variant,
    flops_per_item: float | None,
    info: dict[str, Any],
    notes: list[str],
    differences: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Print the workload's table and return its JSON record; `ratio` = ours' throughput / the baseline's.

    The baseline is the first variant: the original's own code when it ran, else its way emulated with ours.
    `differences` are `difference(ours, original)` of outputs on the same inputs, by what was compared.
    """
    original = measured[0].variant
    table = variant_rows(measured, flops_per_item, info.get("peak_flops"))
    print_table(f"{name}  ({', '.join(f'{k}={v}' for k, v in sizes.items())})", table, ours.name, original.name)
    ratio = next(m.speedup for m in reversed(measured) if m.variant == ours)
    who = "the original code's" if original.code == "original" else "the original's way (emulated)"
    print(f"  ours = {ours.name}: {ratio:.2f}x {who} throughput")
    for label, d in (differences or {}).items():
        print(f"  max |ours - original| ({label}): {d['max_abs_diff']:.3g}  (|original| up to "
              f"{d['max_abs_original']:.3g})")  # fmt: skip
    for note in notes:
        print(f"  note: {note}")
    return {
        "name": name,
        "sizes": sizes,
        "flops_per_item": flops_per_item,
        "variants": table,
        "original": original.name,
        "baseline": "original code" if original.code == "original" else "emulated",
        "ours": ours.name,
        "ours_dtype": ours.dtype,
        "ratio": ratio,
        "max_abs_diff_vs_original": differences or {},
        "notes": notes,
    }


def git_commit() -> str:
    """HEAD's hash, with `-dirty` when the code differs from it ("unknown" outside a git checkout).

    The results folder does not count: the scripts of one session each rewrite a file there.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        code = [".", f":(exclude){RESULTS_DIR.relative_to(ROOT)}"]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *code], cwd=ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_slug(device: torch.device) -> str:
    """`cpu`, or `cuda-<gpu name>` in lower case with dashes (e.g. cuda-nvidia-h100-80gb-hbm3)."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + "-".join("".join(c if c.isalnum() else " " for c in name).split())


def write_results(script: str, args: argparse.Namespace, payload: dict[str, Any]) -> Path:
    """Write `<out>/<script>-<device>.json` (`-tiny` added in --tiny mode) with the run's context; returns the path."""
    suffix = "-tiny" if args.mode == "tiny" else ""
    path = Path(args.out) / f"{script}-{device_slug(args.device)}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "script": script,
        "mode": args.mode,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": getattr(args, "commit", None) or git_commit(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else script,
        "statistic": args.stat,
        "threads": torch.get_num_threads(),
        "warmup_rounds": args.warmup,
        "measured_rounds": args.runs,
        "original_checkout": (
            {"path": str(args.original.root), "commit": args.original.commit} if args.original is not None else None
        ),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return path
