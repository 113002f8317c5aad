"""The checks that need a GPU, in one command on one H100/H200 (its run time: benchmarks/README.md): the CUDA tests,
Stage A1 and Stage B at the published size through their command lines on simulated data, the GOD protocol on a
slice, and the largest Stage B batch per dtype. Writes `benchmarks/results/gpu_check-<gpu>.json` and prints its
Markdown table.

    bash benchmarks/gpu_check.sh                  # on a CUDA machine
    bash benchmarks/gpu_check.sh --dry-run        # the same steps at toy sizes on the CPU
    bash benchmarks/gpu_check.sh --work DIR       # keep the simulated data, the LDM folder and the run folders in DIR

Steps and goals:
1. `cuda_tests`: `pytest -m cuda tests/test_cuda.py` (bf16/fp16 autocast against fp32, fused SDPA kernels,
   channels-last, torch.compile of the UNet).
2. `stage_a1`: `torchrun --nproc_per_node=1 code/stageA1_mbm_pretrain.py` at the published size (ViT-1024 x 24,
   batch 100) for a few hundred steps on simulated HCP data at the published voxel counts; achieved TFLOP/s (the
   model's forward + backward FLOPs x samples/s after the first epoch) against the GPU's dense bf16 peak.
   Goal: >= 40%.
3. `stage_b`: `code/stageB_ldm_finetune.py` at the published size (256^2 images, batch 5) for one short epoch, from
   a random-weight published-size label2img folder (config.yaml + model.ckpt, built here) and step 2's encoder.
4. `god_protocol`: 50 fMRI x 5 samples x 250 PLMS steps (the GOD test protocol) timed on a slice: `sample_images`
   at two step counts per batch size, fitted to fixed + per-UNet-call time and extrapolated. Goal: <= 40 s on an
   H100-class GPU.
5. `stage_b_memory`: the largest Stage B training batch that fits in 80 GB (or the card), fp32 and bf16, measured
   by doubling then bisection. Goal: >= 32.

`--dry-run` runs every step on the CPU at toy sizes (the CUDA tests then skip, the batch search is the meta-device
estimate): it checks this script and the stage scripts' flags, not speed. The stage scripts are driven only through
their command lines (flags = config field names); `stage_commands` is the one place that knows them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml

import hardware
import memory
import models
import repo
import report
from checkpoint import load_checkpoint
from dc_ldm.models.diffusion.sampling_util import make_ddim_timesteps
from dc_ldm.sampling import sample_images
from dc_ldm.util import instantiate_from_config
from errors import DEBUG_HELP, UsageError, UserError, run_main
from runtime import autocast
from sc_mbm.architecture import ARCH_FIELDS
from sc_mbm.mae_for_fmri import MAEforFMRI

ROOT = repo.ROOT
GOALS = {"stage_a1": 0.40, "god_protocol_s": 40.0, "stage_b_batch": 32}
PROTOCOL = {"fmri": 50, "samples": 5, "steps": 250}
MEMORY_BUDGET_GIB = 80

# What each mode runs. "gpu": published model sizes on a slice of data; "dry": toy sizes on a CPU.
SIZES = {
    "gpu": SimpleNamespace(
        simulate=["--size", "tiny", "--voxel_scale", "1.0", "--image_size", "256", "--hcp_subjects", "5"],
        arch={},  # the published defaults of StageA1Config
        a1=dict(batch_size=100, num_epoch=5, warmup_epochs=1),
        b=dict(batch_size=5, img_size=256, num_epoch=1),
        ldm="full",
        god=dict(batches=(25, 125), steps=(10, 30), compile=True),
        max_batch=256,
        timeouts=dict(cuda_tests=150, simulate=120, stage_a1=180, stage_b=240),
    ),
    "dry": SimpleNamespace(
        simulate=["--size", "tiny"],
        arch=dict(embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2),
        a1=dict(batch_size=64, num_epoch=2, warmup_epochs=1),
        b=dict(batch_size=8, img_size=16, num_epoch=1),
        ldm="tiny",
        god=dict(batches=(4,), steps=(4, 5), compile=False),
        max_batch=8,
        timeouts=dict(cuda_tests=120, simulate=60, stage_a1=120, stage_b=120),
    ),
}


# ---- the stage scripts: the only place that knows their command lines ---------------------------------------------


def stage_commands(work: Path, size: SimpleNamespace, stage_a_checkpoint: Path | None = None) -> dict[str, list]:
    """The command lines of the simulation and the stage scripts (their flags are the config field names)."""
    py, data = sys.executable, work / "data"
    flags = lambda values: [f"--{k}={v}" for k, v in values.items()]  # noqa: E731
    commands = {
        "cuda_tests": [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"],
        "simulate": [py, "code/make_synthetic_data.py", "--out", data, *size.simulate],
        "stage_a1": [
            py,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "code/stageA1_mbm_pretrain.py",
            "--hcp_path",
            data / "HCP/npz",
            "--no-include_kam",
            "--output_path",
            work / "runs",
            "--ckpt_every",
            size.a1["num_epoch"],
            "--log_every",
            1000,
            *flags(size.a1),
            *flags(size.arch),
        ],
        "stage_b": [
            py,
            "code/stageB_ldm_finetune.py",
            "--dataset",
            "GOD",
            "--kam_path",
            data / "Kamitani/npz",
            "--pretrain_gm_path",
            work / "ldm",
            "--pretrain_mbm_path",
            stage_a_checkpoint,
            "--output_path",
            work / "runs",
            "--val_every",
            1,
            "--num_val_items",
            2,
            "--num_samples",
            1,
            "--ddim_steps",
            4,
            "--log_every",
            1000,
            *flags(size.b),
        ],
    }
    return {name: [str(a) for a in cmd] for name, cmd in commands.items()}


def run_command(cmd: list[str], timeout: float, check: bool = True) -> tuple[int, str]:
    """Run one command from the project root -> (exit code, output); raises with the output's tail when `check`."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    shown = " ".join(Path(a).name if "/" in a else a for a in cmd[1:5])
    print(f"  $ {shown} ... ({time.perf_counter() - start:.1f} s, exit {proc.returncode})")
    if check and proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: ...{out[-2000:]}")
    return proc.returncode, out


def newest_run(work: Path, stage: str) -> Path:
    runs = sorted((work / "runs" / stage).iterdir(), key=lambda p: p.stat().st_mtime)
    return runs[-1]


def epoch_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row.get("epoch", -1) >= 0]


# ---- the steps ----------------------------------------------------------------------------------------------------


def step_cuda_tests(ctx: SimpleNamespace) -> dict:
    code, out = run_command(stage_commands(ctx.work, ctx.size)["cuda_tests"], ctx.size.timeouts["cuda_tests"], False)
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
        counts["errors" if word.startswith("error") else word] += int(number)
    if code not in (0, 1):  # 1: some tests failed (counted); anything else: pytest itself could not run them
        raise RuntimeError(f"pytest exit {code}: ...{out[-2000:]}")
    failures = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    met = counts["failed"] == 0 and counts["errors"] == 0 and counts["passed"] > 0
    return {"summary": summary, **counts, "failures": failures, "met": met if ctx.cuda else None}


def step_stage_a1(ctx: SimpleNamespace) -> dict:
    commands = stage_commands(ctx.work, ctx.size)
    run_command(commands["simulate"], ctx.size.timeouts["simulate"])
    run_command(commands["stage_a1"], ctx.size.timeouts["stage_a1"])
    run = newest_run(ctx.work, "stageA1")
    ctx.stage_a_checkpoint = run / "checkpoint.pth"
    config = load_checkpoint(ctx.stage_a_checkpoint)["config"]
    config = config if isinstance(config, dict) else vars(config)
    fields = ("num_voxels", *ARCH_FIELDS)
    arch = {k: config[k] for k in fields}
    with torch.device("meta"):
        mae = MAEforFMRI(**arch).train()
    fmri = torch.randn(1, 1, arch["num_voxels"], device="meta")
    flops = hardware.count_flops(lambda: mae(fmri, mask_ratio=config.get("mask_ratio", 0.75))[0].backward())
    epochs = epoch_metrics(run)
    timed = epochs[1:] or epochs  # the first epoch warms up (allocator, kernels, compile)
    samples_per_s = sum(e["samples_per_s"] for e in timed) / len(timed)
    steps = round(sum(e["samples_per_s"] * e["time_s"] for e in epochs) / ctx.size.a1["batch_size"])
    achieved = flops * samples_per_s
    peak = (ctx.info.get("peak_flops") or {}).get("bf16")
    fraction = achieved / peak if peak else None
    return {
        "run": str(run),
        "arch": arch,
        "epochs": len(epochs),
        "steps": steps,
        "samples_per_s": samples_per_s,
        "flops_per_sample": flops,
        "achieved_tflops": achieved / 1e12,
        "bf16_peak_tflops": peak / 1e12 if peak else None,
        "fraction_of_bf16_peak": fraction,
        "goal": f">= {GOALS['stage_a1']:.0%} of the bf16 peak",
        "met": fraction >= GOALS["stage_a1"] if ctx.cuda and fraction is not None else None,
    }


def write_ldm_folder(folder: Path, tiny: bool) -> None:
    """A label2img LDM folder at the published (or toy) size with random weights: config.yaml + model.ckpt."""
    folder.mkdir(parents=True, exist_ok=True)
    config = models.ldm_config(tiny)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    label2img = instantiate_from_config(config["model"])
    torch.save({"state_dict": models.fill_zero_init(label2img).state_dict()}, folder / "model.ckpt")


def step_stage_b(ctx: SimpleNamespace) -> dict:
    if getattr(ctx, "stage_a_checkpoint", None) is None:
        raise RuntimeError("needs the Stage A1 checkpoint of the stage_a1 step, which failed")
    write_ldm_folder(ctx.work / "ldm", ctx.size.ldm == "tiny")
    start = time.perf_counter()
    run_command(stage_commands(ctx.work, ctx.size, ctx.stage_a_checkpoint)["stage_b"], ctx.size.timeouts["stage_b"])
    wall = time.perf_counter() - start
    run = newest_run(ctx.work, "stageB")
    epochs = epoch_metrics(run)
    rate = [e["samples_per_s"] for e in epochs if "samples_per_s" in e]
    return {
        "run": str(run),
        "wall_s": wall,
        "epochs": len(epochs),
        "batch": ctx.size.b["batch_size"],
        "samples_per_s": rate[-1] if rate else None,
        "met": None,
    }


def step_god_protocol(ctx: SimpleNamespace) -> dict:
    """Time `sample_images` at two step counts per batch; protocol = batches x (fixed + per-call x 251)."""
    args = SimpleNamespace(mode=ctx.size.ldm, device=ctx.device)
    model = models.build_ldm(args).eval()
    model.to(memory_format=torch.channels_last)
    precision = "bf16" if ctx.info.get("bf16_try") else "fp32"
    num_voxels = model.cond_stage_model.mae.num_voxels
    calls = {s: len(make_ddim_timesteps(s, model.num_timesteps)) + 1 for s in ctx.size.god["steps"]}
    full_calls = len(make_ddim_timesteps(PROTOCOL["steps"], model.num_timesteps)) + 1
    images = PROTOCOL["fmri"] * PROTOCOL["samples"]
    results = []
    variants = [(b, False) for b in ctx.size.god["batches"]]
    if ctx.size.god["compile"]:
        variants.append((max(ctx.size.god["batches"]), True))
    unet = model.model
    for batch, compiled in variants:
        fmri = torch.randn(batch, 1, num_voxels, device=ctx.device)
        model.model = torch.compile(unet) if compiled else unet
        times = {}
        try:
            compile_start = time.perf_counter()
            with autocast(precision, ctx.device):
                sample_images(model, fmri, ddim_steps=min(ctx.size.god["steps"]))  # warm-up (and compile)
                warmup_s = time.perf_counter() - compile_start
                for steps in ctx.size.god["steps"]:
                    hardware.synchronize(ctx.device)
                    start = time.perf_counter()
                    sample_images(model, fmri, ddim_steps=steps)
                    hardware.synchronize(ctx.device)
                    times[steps] = time.perf_counter() - start
        finally:
            model.model = unet
        (s1, t1), (s2, t2) = sorted(times.items())
        per_call = (t2 - t1) / (calls[s2] - calls[s1])
        fixed = max(t1 - per_call * calls[s1], 0.0)  # conditioner, decoder, sampler set-up
        fit = "fixed + per-call"
        if per_call <= 0:  # the longer run was not slower: timing noise (a shared machine) swamps the difference
            per_call, fixed, fit = t2 / calls[s2], 0.0, "upper bound: all of the longer run's time per call"
        protocol_s = math.ceil(images / batch) * (fixed + per_call * full_calls)
        results.append(
            {
                "batch": batch,
                "compiled": compiled,
                "precision": precision,
                "warmup_s": warmup_s,
                "times_s": times,
                "per_unet_call_s": per_call,
                "fixed_s": fixed,
                "fit": fit,
                "protocol_s": protocol_s,
            }
        )
        print(
            f"  batch {batch}{', compiled' if compiled else ''}: {per_call * 1e3:.1f} ms per UNet call, "
            f"protocol {protocol_s:.1f} s"
        )
    best = min(results, key=lambda r: r["protocol_s"])
    return {
        "variants": results,
        "protocol_s": best["protocol_s"],
        "best": {k: best[k] for k in ("batch", "compiled")},
        "goal": f"<= {GOALS['god_protocol_s']:.0f} s (H100-class)",
        "met": best["protocol_s"] <= GOALS["god_protocol_s"] if ctx.cuda else None,
    }


def step_stage_b_memory(ctx: SimpleNamespace) -> dict:
    """Largest Stage B batch per dtype within the budget: measured on CUDA, the meta-device estimate elsewhere."""
    args = SimpleNamespace(mode=ctx.size.ldm if ctx.size.ldm == "tiny" else "full", device=ctx.device)
    if not ctx.cuda:
        meta = models.build_ldm(args, meta=True).train()
        rows = memory.estimate(meta, lambda b, dt: models.stage_b_batch(args, b, "meta", dt))
        best = {r["dtype"]: r[f"max_batch_{MEMORY_BUDGET_GIB}gib"] for r in rows if not r["checkpointing"]}
        return {"method": "estimate (meta device)", "max_batch": best, "met": None}
    model = models.build_ldm(args).train()
    params = models.stage_b_trainable(model)
    optimizer = torch.optim.AdamW(params, lr=5.3e-5)
    model.to(memory_format=torch.channels_last)
    budget = min(MEMORY_BUDGET_GIB * 2**30, torch.cuda.get_device_properties(ctx.device).total_memory)
    best, peaks = {}, {}
    for dtype in ("fp32", "bf16"):

        def step(batch: int, dtype: str = dtype) -> None:
            data = models.stage_b_batch(args, batch, ctx.device)
            data["image"] = data["image"].contiguous(memory_format=torch.channels_last)
            with autocast(dtype, ctx.device):
                loss = models.stage_b_loss(model, data)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        best[dtype], seen = memory.largest_fitting(step, ctx.device, budget, ctx.size.max_batch)
        peaks[dtype] = {b: p for b, p in seen.items() if math.isfinite(p)}
        print(f"  {dtype}: largest batch {best[dtype]} within {budget / 2**30:.0f} GiB")
    return {
        "method": "measured",
        "budget_gib": budget / 2**30,
        "max_batch": best,
        "peak_bytes": peaks,
        "goal": f">= {GOALS['stage_b_batch']} in {MEMORY_BUDGET_GIB} GB",
        "met": min(best.values()) >= GOALS["stage_b_batch"],
    }


STEPS: dict[str, Callable[[SimpleNamespace], dict]] = {
    "cuda_tests": step_cuda_tests,
    "stage_a1": step_stage_a1,
    "stage_b": step_stage_b,
    "god_protocol": step_god_protocol,
    "stage_b_memory": step_stage_b_memory,
}


# ---- driver -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step at toy sizes on the CPU (checks the script)")
    p.add_argument("--work", type=Path, default=None, help="folder for data, LDM and runs (default: a temporary one)")
    p.add_argument("--out", type=Path, default=repo.RESULTS_DIR, help="folder for gpu_check-<device>.json")
    p.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="run only these steps")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise UsageError("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); use --dry-run on a CPU")
    return args


def write_record(path: Path, args: argparse.Namespace, info: dict, started: float, results: dict) -> None:
    record = {
        "script": "gpu_check",
        "mode": "dry-run" if args.dry_run else "gpu",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": report.git_commit(),
        "torch": torch.__version__,
        "device": info,
        "total_s": time.perf_counter() - started,
        "steps": results,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> Path:
    """Run the checks; returns the path of the JSON written. A failed step raises after all ran (exit 1); a missed
    goal does not."""
    args = parse_args(argv)
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    info = hardware.device_info(device)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    ctx = SimpleNamespace(
        work=work,
        size=SIZES["dry" if args.dry_run else "gpu"],
        device=device,
        info=info,
        cuda=device.type == "cuda",
        stage_a_checkpoint=None,
    )
    print(f"gpu_check on {info['name']} ({'dry run, toy sizes' if args.dry_run else 'published sizes'}), work {work}")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    suffix = "-dry" if args.dry_run else ""
    path = args.out / f"gpu_check-{report.device_slug(device)}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in args.steps:
        print(f"\n[{name}]")
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **STEPS[name](ctx)}
        except Exception as err:  # a failed step is reported; the others still run
            if "--debug" in sys.argv:
                traceback.print_exc()
            message = " ".join(f"{type(err).__name__}: {err}".split())
            results[name] = {"ok": False, "error": message[-3000:], "met": None}
            print(f"  failed: {results[name]['error'][:500]}")
        results[name]["seconds"] = time.perf_counter() - start
        write_record(path, args, info, started, results)  # after every step: a run killed later keeps these
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    record = json.loads(path.read_text())
    import table

    print()
    print(table.gpu_check_table([path]))
    print(f"\nwrote {path} ({record['total_s']:.0f} s)")
    failed = [name for name, r in results.items() if not r["ok"]]
    if failed:
        raise UserError(f"gpu_check: step(s) {', '.join(failed)} failed (their errors are in the table and in {path})")
    return path


if __name__ == "__main__":
    run_main(main)
