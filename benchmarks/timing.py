"""Variants of a workload, their interleaved timing and the ladder of levers; the original's rungs and differences.

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
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import repo  # noqa: F401  (puts code/ on sys.path)
from attention import original_attention
from hardware import PeakMemory, synchronize
from runtime import autocast


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
    return (
        "baseline: the original's way emulated with our code (fp32, explicit-softmax attention, its batch and "
        "loop); pass --original PATH (a checkout of zjc062/mind-vis) to run its own code beside ours"
    )


def difference(ours: Any, original: Any) -> dict[str, float]:
    """Largest absolute difference of two tensors (or scalars) in float32, and the largest |original| for scale."""
    a, b = torch.as_tensor(ours).detach().float().cpu(), torch.as_tensor(original).detach().float().cpu()
    return {"max_abs_diff": (a - b).abs().max().item(), "max_abs_original": b.abs().max().item()}
