"""Reporting a run: the variants' JSON rows and text table, a workload's record, the results file, git's commit."""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from repo import RESULTS_DIR, ROOT
from timing import Measurement, Variant


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
        print(
            f"  max |ours - original| ({label}): {d['max_abs_diff']:.3g}  (|original| up to "
            f"{d['max_abs_original']:.3g})"
        )
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
