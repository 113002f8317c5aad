"""Stage B (DC-LDM finetuning) training-step time at the published size, and the largest batch per memory budget.

    python benchmarks/bench_stageB.py            # 256^2 images, batch 5, + the measured batch search (GPU)
    python benchmarks/bench_stageB.py --quick    # CPU in minutes: 128^2 images, batch 1, 1 + 2 rounds
    python benchmarks/bench_stageB.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)
    python benchmarks/bench_stageB.py --quick --original /path/to/mind-vis   # + the original's own code

The model is the published label2img LDM (`pretrains/ldm/label2img/config.yaml`: UNet, VQ first stage) with the
fMRI conditioner (ViT-1024 x 24 over 4656 voxels), random weights. One step is what Lightning runs in Stage B:
the loss (VQ-encode the images, noise them, predict the noise conditioned on the fMRI), backward, gradient
clipping at 0.5 and AdamW over the conditioning path only. The baseline: the original's own LatentDiffusion with
its fMRI conditioner (`--original`, same weights), set up as its `fLDM.finetune` does: the whole UNet left
trainable (`unfreeze_whole_model()`; only the optimiser's list is narrowed to the conditioning path, so backward
computes the weight gradients of every UNet layer, which accumulate and are never used) and its transformer
blocks' activation checkpointing (`checkpoint=True`, recomputed in backward); fp32, its config's precision.
Without a checkout its way emulated with ours (fp32, explicit-softmax attention, the whole UNet trainable, a plain
AdamW). Ours: SDPA, then our loop (only the conditioning path requires gradients, Stage B's fused AdamW), then
channels-last, bf16 autocast (the encoder's attention as Stage B picks it, `attention_kind`) and torch.compile
where each helps. All at the same batch (5, the published GOD batch).

Memory: on a GPU, the largest batch that fits in 24 GB and 80 GB for fp32 / bf16, with and without activation
checkpointing (the UNet's `use_checkpoint`), measured; everywhere, an estimate from the meta device (memory.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import attention
import common
import hardware
import memory
import models
import report
import timing
from engine import fused_adam
from errors import run_main
from runtime import attention_kind, autocast, use_attention

BATCH = {"full": 5, "quick": 1, "tiny": 2}
CLIP_GRAD, LR = 0.5, 5.3e-5


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also find the largest batch per memory budget (measured on CUDA, estimated elsewhere)",
    )
    p.add_argument("--max_batch", type=int, default=1024, help="upper end of the measured batch search")


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv, add_options)
    device, batch = args.device, BATCH[args.mode]
    info = hardware.device_info(device)
    print(f"Stage B training step on {info['name']} ({args.mode} mode)")

    model = models.build_ldm(args).train()
    params = models.stage_b_trainable(model)  # freezes all but the conditioning path, as Stage B trains
    optimizers = {  # ours as Stage B builds it; the original's loop: its plain AdamW
        False: torch.optim.AdamW(params, lr=LR, fused=fused_adam(device)),
        True: torch.optim.AdamW(params, lr=LR),
    }
    inputs = models.stage_b_batch(args, batch, device)
    compiled: dict[str, object] = {}
    differences = compare(args, model, inputs) if args.original is not None else None
    theirs = OriginalStep(args, model) if args.original is not None else None

    def step(v: timing.Variant, size: int | None = None) -> None:
        if v.code == "original":
            theirs.step(inputs)
            return
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        n = v.batch if size is None else size
        data = {"image": inputs["image"][:n].contiguous(memory_format=fmt), "fmri": inputs["fmri"][:n]}
        loss = compiled.setdefault("loss", torch.compile(models.stage_b_loss)) if v.compiled else models.stage_b_loss
        loss(model, data).backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_GRAD)
        optimizers[v.original_loop].step()
        optimizers[v.original_loop].zero_grad(set_to_none=True)

    def prepare(v: timing.Variant) -> None:
        if v.code == "original":
            return
        models.set_memory_format(model, v.channels_last)
        use_attention(model, "explicit" if v.attention == "softmax" else "sdpa")  # the fMRI encoder's
        # the original: UNet and conditioner trainable, the optimiser over the cond path only
        models.stage_b_trainable(model, cond_path_only=not v.original_loop)
        if not v.original_loop:
            for p in model.parameters():
                if not p.requires_grad:
                    p.grad = None  # what the original's variant accumulated (its optimiser never clears them)

    meta_model = models.build_ldm(args, meta=True).train()  # FLOPs and the memory estimate without real compute
    models.stage_b_trainable(meta_model)
    meta_batch = models.stage_b_batch(args, 1, "meta")
    flops = hardware.count_flops(lambda: models.stage_b_loss(meta_model, meta_batch).backward())
    levers, notes = common.optional_levers(args, info, conv=True)
    if attention_kind(device, "bf16") == "explicit" and {"dtype": "bf16"} in levers:  # as Stage B runs bf16 here
        levers[levers.index({"dtype": "bf16"})] = {"dtype": "bf16", "attention": "softmax"}
    notes.insert(0, timing.baseline_note(args))
    calls = attention.original_attention_calls()
    original = timing.Variant(batch, "fp32", "explicit", original_loop=True)
    rungs = timing.baseline_rungs(
        args, original, [original, timing.Variant(batch, original_loop=True), timing.Variant(batch)]
    )
    measured, ours = timing.climb(rungs, levers, step, device, args.warmup, args.runs, prepare)
    attention.check_patch_reached(calls)
    side = models.IMAGE_SIZE[args.mode]
    if args.mode == "quick":
        notes.append(
            f"--quick: {side}^2 images (latents {side // 4}^2) and batch {batch} instead of 256^2 and 5, "
            "every model at its published width and depth; times are per step at that size"
        )
    sizes = {
        "image": side,
        "latent": models.latent_side(args),
        "batch": batch,
        "num_voxels": models.NUM_VOXELS[models.size_name(args)],
        "trained_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
    }
    workload = report.workload_record("Stage B training step", sizes, measured, ours, flops, info, notes, differences)
    payload = {"device": info, "workloads": [workload]}

    if args.memory:
        prepare(ours)
        payload["memory"] = memory_section(args, model, meta_model, step, ours)
    return report.write_results("bench_stageB", args, payload)


class OriginalStep:
    """One step of the original's Stage B as its `fLDM.finetune` sets it up and Lightning runs it (fp32)."""

    def __init__(self, args: argparse.Namespace, model: torch.nn.Module, lr: float = LR):
        self.checkout = args.original
        self.model = _original_model(args, model).train()
        with self.checkout.quiet():
            self.model.unfreeze_whole_model()
            self.model.freeze_first_stage()
            self.model.learning_rate, self.model.train_cond_stage_only = lr, True
            self.optimizer = self.model.configure_optimizers()
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self, batch: dict) -> None:
        with self.checkout.quiet():  # its training_step without the logging; Lightning's clip, step and zero_grad
            loss, _ = self.model.shared_step(_original_batch(batch))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, CLIP_GRAD)
            self.optimizer.step()
            self.optimizer.zero_grad()


def _original_model(args: argparse.Namespace, model: torch.nn.Module) -> torch.nn.Module:
    name = models.size_name(args)
    return args.original.ldm(models.ldm_config(name == "tiny"), model, models.MAE_META[name])


def _original_batch(batch: dict) -> dict:
    """Its batches hold images channels-last as arrays are: (N, H, W, 3)."""
    return {"image": batch["image"].permute(0, 2, 3, 1), "fmri": batch["fmri"]}


def compare(args: argparse.Namespace, model: torch.nn.Module, batch: dict) -> dict[str, dict[str, float]]:
    """|ours - original| of one training loss and its gradients on the conditioning path (same weights, inputs,
    timesteps and noise), ours in fp32 and under bf16 autocast."""
    theirs = _original_model(args, model).train()
    with args.original.quiet():
        theirs.unfreeze_whole_model()
        torch.manual_seed(3)
        loss_t, _ = theirs.shared_step(_original_batch(batch))
    loss_t.backward()
    out, trained = {}, None
    for dtype in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        with autocast(dtype, batch["fmri"].device):
            loss = models.stage_b_loss(model, batch)
        loss.backward()
        # the conditioning path's parameters the loss reaches (the encoder's unused cls/mask tokens get none)
        trained = trained or [n for n, p in model.named_parameters() if p.grad is not None]
        grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n in trained])
        grads_t = torch.cat([p.grad.flatten() for n, p in theirs.named_parameters() if n in trained])
        out[f"loss, {dtype}"] = timing.difference(loss, loss_t)
        out[f"conditioning-path gradients, {dtype}"] = timing.difference(grads, grads_t)
    model.zero_grad(set_to_none=True)
    return out


def memory_section(
    args: argparse.Namespace, model: torch.nn.Module, meta_model: torch.nn.Module, step, ours: timing.Variant
) -> dict:
    """Largest batch per budget: measured on CUDA (with the estimate beside it), estimated elsewhere."""
    estimate = memory.estimate(meta_model, lambda b, dt: models.stage_b_batch(args, b, "meta", dt))
    out = {"budgets_gib": list(memory.BUDGETS_GIB), "image": models.IMAGE_SIZE[args.mode], "estimate": estimate}
    if args.mode == "quick":
        out["note"] = "estimate at the --quick image size; run without --quick for 256^2"
    if args.device.type == "cuda":
        unet = model.model.diffusion_model
        state: dict[str, timing.Variant] = {}

        def set_config(dtype: str, ckpt: bool) -> None:
            unet.use_checkpoint = ckpt
            state["variant"] = timing.Variant(1, dtype, "sdpa", ours.channels_last)

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
    run_main(main)
