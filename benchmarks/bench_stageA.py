"""Stage A1 (SC-MBM pre-training) throughput in samples/s: ours against the original, in the same run.

    python benchmarks/bench_stageA.py            # published size (batch 100) and a small size (GPU: minutes)
    python benchmarks/bench_stageA.py --quick    # CPU in minutes: batches 4 and 32, 1 + 3 rounds
    python benchmarks/bench_stageA.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)
    python benchmarks/bench_stageA.py --quick --original /path/to/mind-vis   # + the original's own code

One step is one batch of each implementation's own training loop, run as a one-batch epoch: masked forward
(mask ratio 0.75), the MSE on the masked patches, backward, gradient clipping at 0.8, an AdamW update
((0.9, 0.95), no weight decay on biases and norms, lr from the warm-up/cosine schedule) and the training metric,
the reconstruction's Pearson correlation. The baseline: the original's own `sc_mbm.trainer.train_one_epoch` with
its `MAEforFMRI` (`--original`, same weights) and its config's values; its loop computes the metric every step on
the host, sample by sample, and runs under `torch.cuda.amp.autocast` (fp16 with its gradient scaler on a GPU, a
no-op on a CPU). Without a checkout: its way emulated with ours (fp32, explicit-softmax attention and the per-step
host metric, its plain AdamW). Ours, a rung at a time: `engine.train_one_epoch` with `sc_mbm.training.mae_step`
(the metric stays on the device), SDPA, `engine.make_optimizer`'s fused AdamW, then bf16 autocast with the
attention the stages pick for it (`attention_kind`: the explicit softmax on a CPU; that choice is measured
against SDPA in bf16 as a lever of its own) and torch.compile, each kept where it helps.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from timm.optim import param_groups_weight_decay

import attention
import common
import hardware
import report
import timing
from engine import AmpScaler, Schedule, make_optimizer, train_one_epoch
from errors import run_main
from runtime import attention_kind, autocast, use_attention
from sc_mbm.mae_for_fmri import MAEforFMRI
from sc_mbm.training import mae_step

ARCH = {
    "published": dict(
        num_voxels=4656,
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=1.0,
    ),
    "small": dict(
        num_voxels=4656,
        patch_size=16,
        embed_dim=256,
        depth=6,
        num_heads=8,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
        mlp_ratio=1.0,
    ),
    "tiny": dict(
        num_voxels=256,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        mlp_ratio=1.0,
    ),
}
BATCH = {"full": {"published": 100, "small": 100}, "quick": {"published": 4, "small": 32}, "tiny": {"tiny": 4}}
# The published Stage A1 training values (its Config_MBM_fMRI); the step runs at the first epoch after warm-up.
TRAIN = SimpleNamespace(
    lr=2.5e-4, min_lr=0.0, weight_decay=0.05, num_epoch=500, warmup_epochs=40, clip_grad=0.8, mask_ratio=0.75
)


def original_correlation(pred: torch.Tensor, fmri: torch.Tensor) -> float:
    """The original's per-step metric: pred (N, L, p) and fmri (N, 1, V) to the host, corrcoef per sample, mean."""
    pred, fmri = pred.detach().flatten(1).cpu(), fmri.flatten(1).cpu()
    cors = [torch.corrcoef(torch.stack([p, s]))[0, 1] for p, s in zip(pred, fmri, strict=True)]
    return torch.stack(cors).mean().item()


def emulated_original_step(mask_ratio: float):
    """Our step with the original's per-step host metric added (the emulated baseline's loop)."""

    def step(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, pred, _ = model(batch["fmri"], mask_ratio=mask_ratio)
        original_correlation(pred, batch["fmri"])
        return loss, {}

    return step


class OriginalLoop:
    """One batch of the original's own Stage A loop (its train_one_epoch, NativeScaler and optimiser set-up)."""

    def __init__(self, checkout, arch: dict, state: dict, device: torch.device):
        self.model = checkout.mae(arch, state).to(device).train()
        trainer = checkout.module("sc_mbm.trainer")
        with checkout.quiet():
            self.config = checkout.module("config").Config_MBM_fMRI()
            self.scaler = trainer.NativeScalerWithGradNormCount()
        self.config.local_rank = 0
        # its stageA1_mbm_pretrain.py: timm's add_weight_decay groups (now param_groups_weight_decay), AdamW
        groups = param_groups_weight_decay(self.model, self.config.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.95))
        self.train_one_epoch, self.checkout, self.device = trainer.train_one_epoch, checkout, device

    def step(self, fmri: torch.Tensor) -> None:
        with self.checkout.quiet():
            self.train_one_epoch(
                self.model,
                [{"fmri": fmri}],
                self.optimizer,
                self.device,
                self.config.warmup_epochs,
                self.scaler,
                None,
                self.config,
                None,
                self.model,
            )


def bench_size(name: str, batch: int, args: argparse.Namespace, info: dict) -> dict:
    """Measure one architecture: the baseline's step against ours' levers; returns the workload's JSON record."""
    device = args.device
    torch.manual_seed(0)
    arch = ARCH[name]
    model = MAEforFMRI(**arch).to(device).train()
    fmri = torch.randn(batch, 1, arch["num_voxels"], device=device)
    differences = compare(args.original, model, arch, fmri) if args.original is not None else None
    theirs = OriginalLoop(args.original, arch, model.state_dict(), device) if args.original is not None else None
    schedule = Schedule(TRAIN.lr, TRAIN.min_lr, TRAIN.warmup_epochs, TRAIN.num_epoch)
    optimizers = {
        "default": make_optimizer(model, TRAIN.lr, TRAIN.weight_decay),  # the stages'
        "plain": torch.optim.AdamW(
            param_groups_weight_decay(model, TRAIN.weight_decay), lr=TRAIN.lr, betas=(0.9, 0.95)
        ),
    }  # the original's
    amps = {dtype: AmpScaler(dtype, device) for dtype in ("fp32", "bf16")}
    compiled: dict[str, torch.nn.Module] = {}

    def step(v: timing.Variant) -> None:
        if v.code == "original":
            theirs.step(fmri[: v.batch])
            return
        use_attention(model, "explicit" if v.attention == "softmax" else "sdpa")
        net = compiled.setdefault("model", torch.compile(model)) if v.compiled else model
        fn = emulated_original_step(TRAIN.mask_ratio) if v.original_loop else mae_step(TRAIN.mask_ratio)
        train_one_epoch(
            net,
            [{"fmri": fmri[: v.batch]}],
            optimizers[v.optimizer],
            amps[v.dtype],
            epoch=TRAIN.warmup_epochs,
            step=fn,
            schedule=schedule,
            clip_grad=TRAIN.clip_grad,
        )

    original = timing.Variant(batch, "fp32", "explicit", original_loop=True, optimizer="plain")
    if args.original is not None and device.type == "cuda":
        original = replace(original, dtype="fp16")  # its loop's own torch.cuda.amp.autocast
    with torch.device("meta"):  # FLOPs per sample without real compute
        meta_model = MAEforFMRI(**arch).train()
    flops = hardware.count_flops(lambda: meta_model(fmri[:1].to("meta"), mask_ratio=TRAIN.mask_ratio)[0].backward())
    levers, notes = common.optional_levers(args, info, conv=False)
    if attention_kind(device, "bf16") == "explicit" and {"dtype": "bf16"} in levers:  # as the stages run bf16 here
        at = levers.index({"dtype": "bf16"})
        levers[at : at + 1] = [{"dtype": "bf16", "attention": "softmax"}, {"dtype": "bf16", "attention": "sdpa"}]
    notes.insert(0, timing.baseline_note(args))
    calls_before = attention.original_attention_calls()
    emulated = replace(original, dtype="fp32")
    rungs = [
        emulated,
        replace(emulated, original_loop=False),
        timing.Variant(batch, optimizer="plain"),
        timing.Variant(batch),
    ]  # our loop, then SDPA, then the fused AdamW
    rungs = timing.baseline_rungs(args, original, rungs)
    measured, ours = timing.climb(rungs, levers, step, device, args.warmup, args.runs)
    attention.check_patch_reached(calls_before)
    if args.mode == "quick":
        notes.append(
            f"--quick: batch {batch} instead of {BATCH['full'][name]} (samples/s is per sample either way; "
            "at small batches the optimiser's pass over the weights weighs more)"
        )
    sizes = {k: arch[k] for k in ("num_voxels", "embed_dim", "depth", "num_heads", "decoder_embed_dim")}
    sizes |= {"decoder_depth": arch["decoder_depth"], "mask_ratio": TRAIN.mask_ratio, "batch": batch}
    return report.workload_record(
        f"Stage A1 training, {name} size", sizes, measured, ours, flops, info, notes, differences
    )


def compare(checkout, model: torch.nn.Module, arch: dict, fmri: torch.Tensor) -> dict[str, dict[str, float]]:
    """|ours - original| of one masked forward and backward on the same weights, input and mask (same seed):
    the loss, the reconstruction and every parameter's gradient, ours in fp32 and under bf16 autocast (with the
    attention the stages pick for each)."""
    theirs = checkout.mae(arch, model.state_dict()).to(fmri.device).train()
    torch.manual_seed(1)
    loss_t, pred_t, _ = theirs(fmri, mask_ratio=TRAIN.mask_ratio)
    loss_t.backward()
    grads_t = torch.cat([p.grad.flatten() for p in theirs.parameters() if p.grad is not None])
    out = {}
    for dtype in ("fp32", "bf16"):
        ours = copy.deepcopy(model)
        use_attention(ours, attention_kind(fmri.device, dtype))  # as the stages run it
        torch.manual_seed(1)
        with autocast(dtype, fmri.device):
            loss, pred, _ = ours(fmri, mask_ratio=TRAIN.mask_ratio)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None])
        out[f"loss, {dtype}"] = timing.difference(loss, loss_t)
        out[f"reconstruction, {dtype}"] = timing.difference(pred, pred_t)
        out[f"gradients, {dtype}"] = timing.difference(grads, grads_t)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv)
    info = hardware.device_info(args.device)
    print(f"Stage A1 training throughput on {info['name']} ({args.mode} mode)")
    workloads = [bench_size(name, batch, args, info) for name, batch in BATCH[args.mode].items()]
    return report.write_results("bench_stageA", args, {"device": info, "workloads": workloads})


if __name__ == "__main__":
    run_main(main)
