"""Stage B (DC-LDM finetuning) training-step time at the published size, and the largest batch per memory budget.

    python benchmarks/bench_stageB.py            # 256^2 images, batch 5, + the measured batch search (GPU)
    python benchmarks/bench_stageB.py --quick    # CPU in minutes: 128^2 images, batch 1, 1 + 2 rounds
    python benchmarks/bench_stageB.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)

The model is the published label2img LDM (`pretrains/ldm/label2img/config.yaml`: UNet, VQ first stage) with the
fMRI conditioner (ViT-1024 x 24 over 4656 voxels), random weights. One step is what Lightning runs in
`stageB_ldm_finetune.py`: `shared_step` (VQ-encode the images, noise them, predict the noise conditioned on the
fMRI), backward, gradient clipping at 0.5 and AdamW over the conditioning path only (`configure_optimizers` with
`train_cond_only`). The original's way: fp32 with explicit-softmax attention and its loop, the whole UNet left
trainable (the original calls `unfreeze_whole_model()` before fitting and only narrows the optimiser's parameter
list, so backward computes the weight gradients of every UNet layer and never uses them). Ours: SDPA, then our
loop (only the conditioning path requires gradients), then channels-last, bf16 autocast and torch.compile where
each helps. All at the same batch (5, the published GOD batch).

Memory: on a GPU, the largest batch that fits in 24 GB and 80 GB for fp32 / bf16, with and without activation
checkpointing (the UNet's `use_checkpoint`), measured; everywhere, an estimate from the meta device (memory.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import common
import memory
import models

BATCH = {"full": 5, "quick": 1, "tiny": 2}
CLIP_GRAD = 0.5


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="also find the largest batch per memory budget (measured on CUDA, estimated elsewhere)")
    p.add_argument("--max_batch", type=int, default=1024, help="upper end of the measured batch search")  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv, add_options)
    device, batch = args.device, BATCH[args.mode]
    info = common.device_info(device)
    print(f"Stage B training step on {info['name']} ({args.mode} mode)")

    model = models.build_ldm(args).train()
    optimizer = model.configure_optimizers()  # freezes all but the conditioning path, as Stage B trains
    params = model.cond_path_parameters()
    inputs = models.stage_b_batch(args, batch, device)
    compiled: dict[str, object] = {}

    def step(v: common.Variant, size: int | None = None) -> None:
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        n = v.batch if size is None else size
        data = {"image": inputs["image"][:n].contiguous(memory_format=fmt), "fmri": inputs["fmri"][:n]}
        loss_fn = compiled.setdefault("step", torch.compile(model.shared_step)) if v.compiled else model.shared_step
        loss_fn(data).backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_GRAD)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def prepare(v: common.Variant) -> None:
        models.set_memory_format(model, v.channels_last)
        if v.original_loop:  # the original: UNet and conditioner trainable, the optimiser over the cond path only
            model.unfreeze_whole_model()
        else:
            model.freeze_whole_model()
            for p in params:
                p.requires_grad_(True)
            for p in model.parameters():
                if not p.requires_grad:
                    p.grad = None  # what the original's variant accumulated (its optimiser never clears them)

    meta_model = models.build_ldm(args, meta=True).train()  # FLOPs and the memory estimate without real compute
    meta_model.configure_optimizers()
    flops = common.count_flops(lambda: meta_model.shared_step(models.stage_b_batch(args, 1, "meta")).backward())
    levers, notes = common.optional_levers(args, info, conv=True)
    calls = common.original_attention_calls()
    rungs = [
        common.Variant(batch, "fp32", "explicit", original_loop=True),
        common.Variant(batch, original_loop=True),
        common.Variant(batch),
    ]
    measured, ours = common.climb(rungs, levers, step, device, args.warmup, args.runs, prepare)
    common.check_patch_reached(calls)
    side = models.IMAGE_SIZE[args.mode]
    if args.mode == "quick":
        notes.append(f"--quick: {side}^2 images (latents {side // 4}^2) and batch {batch} instead of 256^2 and 5, "
                     "every model at its published width and depth; times are per step at that size")
    sizes = {"image": side, "latent": models.latent_side(args), "batch": batch,
             "num_voxels": models.NUM_VOXELS[models.size_name(args)], "trained_params": sum(p.numel() for p in params),
             "total_params": sum(p.numel() for p in model.parameters())}  # fmt: skip
    workload = common.workload_record("Stage B training step", sizes, measured, ours, flops, info, notes)
    payload = {"device": info, "workloads": [workload]}

    if args.memory:
        prepare(ours)
        payload["memory"] = memory_section(args, model, meta_model, step, ours)
    return common.write_results("bench_stageB", args, payload)


def memory_section(
    args: argparse.Namespace, model: torch.nn.Module, meta_model: torch.nn.Module, step, ours: common.Variant
) -> dict:
    """Largest batch per budget: measured on CUDA (with the estimate beside it), estimated elsewhere."""
    estimate = memory.estimate(meta_model, lambda b, dt: models.stage_b_batch(args, b, "meta", dt))
    out = {"budgets_gib": list(memory.BUDGETS_GIB), "image": models.IMAGE_SIZE[args.mode], "estimate": estimate}
    if args.mode == "quick":
        out["note"] = "estimate at the --quick image size; run without --quick for 256^2"
    if args.device.type == "cuda":
        unet = model.model.diffusion_model
        state: dict[str, common.Variant] = {}

        def set_config(dtype: str, ckpt: bool) -> None:
            unet.use_checkpoint = ckpt
            state["variant"] = common.Variant(1, dtype, "sdpa", ours.channels_last)

        def run(b: int) -> None:
            v = state["variant"]
            with v.context(args.device):
                step(v, b)

        out["measured"] = memory.measured_search(set_config, run, args.device, args.max_batch)
        unet.use_checkpoint = False
    print_memory(out)
    return out


def print_memory(out: dict) -> None:
    print(f"\nLargest Stage B batch per memory budget ({out['image']}^2 images)")
    print(f"  {'method':<40} {'dtype':>5} {'ckpt':>5} " + " ".join(f"{g:>6} GiB" for g in out["budgets_gib"]))
    for row in out.get("measured", []) + out["estimate"]:
        cells = " ".join(f"{str(row[f'max_batch_{g}gib']):>10}" for g in out["budgets_gib"])
        print(f"  {row['method']:<40} {row['dtype']:>5} {str(row['checkpointing']):>5} {cells}")
    if "note" in out:
        print(f"  note: {out['note']}")


if __name__ == "__main__":
    main(sys.argv[1:])
