"""`make demo` (= `PYTHONPATH=code python -m demo`): the whole method on the simulated brain, on a laptop CPU.

    make demo                                         # the demo brain: simulate, world models, stages, results
    PYTHONPATH=code python -m demo --size tiny        # the same pipeline at test size (the tests run it)
    PYTHONPATH=code python -m demo --seed 1           # a whole second pipeline (its own world, models, stages),
                                                      # in <folder>/<size>-seed1 beside seed 0's
    PYTHONPATH=code python -m demo --train_seed 1     # the same world, the stages trained again with seed 1
                                                      # (results/demo/<size>-train1): training's own variance
    PYTHONPATH=code python -m demo --train_seed 0 1 2 # three training runs of one world, and each score over
                                                      # them with its interval -> results/demo/<size>-seeds.md
                                                      # (with --curve / --ablations: their tables over the seeds
                                                      # too -> <size>-curve-seeds.md, <size>-ablations-seeds.md)
    PYTHONPATH=code python -m demo --size hard        # the harder brain (no category code, silent voxels)
    PYTHONPATH=code python -m demo --snr 0.1 0.3 1.0  # a sweep of single-trial SNR, plotted against the ridge line
    PYTHONPATH=code python -m demo --levers           # also each one-change variant of the recipe -> levers.md
    PYTHONPATH=code python -m demo --curve            # also the published Stage B's learning curve -> curve.md,
                                                      # and <size>-curve-seeds.md (each point minus its control)
    PYTHONPATH=code python -m demo --ablations        # also the paper's ablations in miniature -> ablations.md,
                                                      # and <size>-ablations-seeds.md (each row minus the full one)
    PYTHONPATH=code python -m demo --size cortex --stage_a_curve   # Stage A's learning curve on held-out fMRI
    PYTHONPATH=code python -m demo --pretraining_study             # does pre-training help? (hours: resumable)

What each step does: `demo/pipeline.py` (the demo; its presets in `demo/presets.py`), `demo/studies.py` (--curve,
--ablations) and `demo/pretraining.py` (--stage_a_curve, --pretraining_study). Every step is
cached beside its result with a hash of its recipe, so a second run reuses what is done.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from demo import pretraining, studies
from demo.pipeline import prepare, run, run_world, world_name
from demo.presets import PRESETS
from demo.reports import seeds_table, sweep
from demo.simulation.spec import SIZES
from demo.steps import ROOT
from errors import DEBUG_HELP, ArgumentParser


def main(argv: list[str] | None = None) -> Path:
    """Command line: see the module docstring."""
    parser = ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(PRESETS), default="demo", help="preset (default: demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and its models (and of every stage)")
    parser.add_argument(
        "--train_seed",
        type=int,
        nargs="+",
        default=None,
        help="seed of the stages alone (Stage A, Stage B, gen_eval) over the same world (default: --seed); "
        "results in results/demo/<size>-train<T>; several: each run, then every score over them "
        "(results/demo/<size>-seeds.md)",
    )
    parser.add_argument(
        "--snr",
        type=float,
        nargs="+",
        default=None,
        help="the simulation's single-trial SNR "
        "instead of the preset's (results/demo/<size>-snr<x>; the world models are shared); "
        "several values: a sweep, plotted with the ridge baselines in results/demo/<size>-sweep.png (and .md)",
    )
    parser.add_argument(
        "--levers",
        action="store_true",
        help="also run each change of the recipe in LEVERS (Stage B retrained or only re-sampled) -> levers.md",
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="also the published Stage B's learning curve "
        "(10,120 optimiser steps, 8 points each decoded) -> curve.md, curve.png",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also the paper's ablations in miniature (Stage A and Stage B retrained per row) -> ablations.md",
    )
    parser.add_argument(
        "--stage_a_curve",
        action="store_true",
        help="Stage A's learning curve on fMRI it never saw, against a ridge map (a cortex world: --size cortex) "
        "-> stage_a_curve.md, .png, .json",
    )
    parser.add_argument(
        "--pretraining_study",
        action="store_true",
        help="does SC-MBM pre-training help Stage B? Linear probes and Stage B per encoder, number of pairs, "
        "sharing and training seed on the cortex worlds; prints its plan, reuses every row made "
        "-> results/demo/pretraining_study.md, .png, .json",
    )
    parser.add_argument(
        "--study_kinds",
        nargs="+",
        choices=pretraining.KINDS,
        default=list(pretraining.KINDS),
        help="with --pretraining_study: only these kinds of rows (default: all; probes and recipe are the cheap ones)",
    )
    parser.add_argument("--root_path", type=Path, default=ROOT, help="project root: data/, pretrains/, results/")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    train_seeds = args.train_seed or [None]
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if any(t is not None and t < 0 for t in train_seeds):
        parser.error(f"--train_seed must be >= 0, got {args.train_seed}")
    if len(train_seeds) > 1 and args.snr is not None and len(args.snr) > 1:
        parser.error("several --train_seed values and an --snr sweep: give one of them several values")
    if args.snr is not None and min(args.snr) <= 0:
        parser.error(f"--snr must be positive, got {args.snr}")
    if (args.curve or args.ablations) and args.snr is not None and len(args.snr) > 1:
        parser.error("--curve and --ablations run on one brain: give at most one --snr")
    if args.stage_a_curve and SIZES[PRESETS[args.size].simulation].brain != "cortex":
        parser.error("--stage_a_curve runs on a cortex world: --size cortex, cortex-high or cortex-none")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    if args.pretraining_study:
        return pretraining.pretraining_study(args.root_path, kinds=tuple(args.study_kinds))
    if args.stage_a_curve:
        world = prepare(args.size, args.seed, args.root_path, train_seed=train_seeds[0], stage_a=False)
        return pretraining.stage_a_curve(world)
    if args.snr is not None and len(args.snr) > 1:
        outs = [run(args.size, args.seed, args.root_path, snr, args.levers, train_seeds[0]) for snr in args.snr]
        return sweep(outs, args.root_path / "results" / "demo" / f"{args.size}-sweep.png")
    snr = args.snr[0] if args.snr else None
    worlds = []
    for t in train_seeds:  # the curve and the ablations of each run right after it: whole seeds first
        worlds.append(run_world(args.size, args.seed, args.root_path, snr, args.levers, t))
        if args.curve:
            studies.curve(worlds[-1])
        if args.ablations:
            studies.ablations(worlds[-1])
    name = world_name(args.size, args.seed, snr)
    if len(worlds) > 1:
        seeds_table([w.out for w in worlds], worlds[0].out.parent / f"{name}-seeds.md")
    # the curve and the ablations over the seeds asked for (one seed too: each row paired with its control or
    # with the full method over the test items)
    if args.curve:
        studies.curve_over_seeds(worlds, worlds[0].out.parent / f"{name}-curve-seeds.md")
    if args.ablations:
        studies.ablations_over_seeds(worlds, worlds[0].out.parent / f"{name}-ablations-seeds.md")
    return worlds[0].out if len(worlds) == 1 else worlds[0].out.parent
