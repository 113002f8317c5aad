"""The options every benchmark script takes (`parse_args`), and the levers of ours they let a run try."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import repo  # first: puts code/ on sys.path
from errors import DEBUG_HELP, UsageError
from report import git_commit
from runtime import pick_device
from timing import Measurement

STATISTICS = ("median", "min")


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
    p.add_argument("--out", type=Path, default=repo.RESULTS_DIR, help="folder for <script>-<device>.json")
    p.add_argument(
        "--original",
        type=Path,
        default=None,
        metavar="PATH",
        help="a checkout of the original MinD-Vis (zjc062/mind-vis): its own code becomes the baseline, "
        "run beside ours on the same inputs and weights (default: its way, emulated with our code)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (torch.set_num_threads; default: PyTorch's, one per core). On a machine shared "
        "with other jobs 1 is steadier: with one thread per core, every parallel op waits for its "
        "slowest thread, which another job may have descheduled",
    )
    p.add_argument(
        "--stat",
        choices=STATISTICS,
        default="median",
        help="time of a variant from its measured rounds: the median, or the fastest round (steadier "
        "when other jobs load the machine)",
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
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
