"""Stage A1 (SC-MBM pre-training) throughput in samples/s: ours against the original's way, in the same run.

    python benchmarks/bench_stageA.py            # published size (batch 100) and a small size (GPU: minutes)
    python benchmarks/bench_stageA.py --quick    # CPU in minutes: batches 4 and 32, 1 + 3 rounds
    python benchmarks/bench_stageA.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)

One step is what `sc_mbm.trainer.train_one_epoch` does per batch: masked forward (mask ratio 0.75), the MSE on
the masked patches, backward, gradient clipping at 0.8, an AdamW update (through the trainer's `AmpScaler`) and
the reconstruction's Pearson correlation, the training metric. The original's way: fp32, explicit-softmax
attention and its loop, which computed the metric every step (prediction and input copied to the host,
`torch.corrcoef` sample by sample, `.item()`), at the same batch (the original trained in batches of 100 too).
Ours: the trainer's loop (one batched correlation on the device, read back once per log line, so not inside a
step), SDPA, then bf16 autocast and torch.compile where each helps. Both update with `sc_mbm.loop.make_optimizer`'s
AdamW. Random fMRI and weights.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

import common
from sc_mbm.loop import make_optimizer
from sc_mbm.mae_for_fmri import MAEforFMRI
from sc_mbm.trainer import AmpScaler
from sc_mbm.utils import batch_pearson

ARCH = {
    "published": dict(num_voxels=4656, patch_size=16, embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512,
                      decoder_depth=8, decoder_num_heads=16, mlp_ratio=1.0),
    "small": dict(num_voxels=4656, patch_size=16, embed_dim=256, depth=6, num_heads=8, decoder_embed_dim=128,
                  decoder_depth=2, decoder_num_heads=4, mlp_ratio=1.0),
    "tiny": dict(num_voxels=256, patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
                 decoder_depth=1, decoder_num_heads=2, mlp_ratio=1.0),
}  # fmt: skip
BATCH = {"full": {"published": 100, "small": 100}, "quick": {"published": 4, "small": 32}, "tiny": {"tiny": 4}}
MASK_RATIO, CLIP_GRAD = 0.75, 0.8


def original_correlation(pred: torch.Tensor, fmri: torch.Tensor) -> float:
    """The original's per-step metric: pred (N, L, p) and fmri (N, 1, V) to the host, corrcoef per sample, mean."""
    pred, fmri = pred.detach().flatten(1).cpu(), fmri.flatten(1).cpu()
    cors = [torch.corrcoef(torch.stack([p, s]))[0, 1] for p, s in zip(pred, fmri, strict=True)]
    return torch.stack(cors).mean().item()


def bench_size(name: str, batch: int, args: argparse.Namespace, info: dict) -> dict:
    """Measure one architecture: the original's step against ours' levers; returns the workload's JSON record."""
    device = args.device
    torch.manual_seed(0)
    arch = ARCH[name]
    model = MAEforFMRI(**arch).to(device).train()
    fmri = torch.randn(batch, 1, arch["num_voxels"], device=device)
    optimizer = make_optimizer(model, SimpleNamespace(weight_decay=0.05, lr=2.5e-4))
    params = [p for p in model.parameters() if p.requires_grad]
    amp = AmpScaler("fp32", device)  # autocast comes from the variant; the scaler is off for fp32 and bf16
    compiled: dict[str, torch.nn.Module] = {}
    cor_sum = torch.zeros((), device=device)  # ours: summed on the device, as the trainer reads it once per log line

    def step(v: common.Variant) -> None:
        net = compiled.setdefault("model", torch.compile(model)) if v.compiled else model
        x = fmri[: v.batch]
        loss, pred, _ = net(x, mask_ratio=MASK_RATIO)
        amp.backward(loss, optimizer, params, CLIP_GRAD, update=True)
        if v.original_loop:
            original_correlation(pred, x)
        else:
            with torch.no_grad():
                cor_sum.add_(batch_pearson(pred.detach().float().flatten(1), x.flatten(1)).sum())

    original = common.Variant(batch, "fp32", "explicit", original_loop=True)
    with torch.device("meta"):  # FLOPs per sample without real compute
        meta_model = MAEforFMRI(**arch).train()
    flops = common.count_flops(lambda: meta_model(fmri[:1].to("meta"), mask_ratio=MASK_RATIO)[0].backward())
    levers, notes = common.optional_levers(args, info, conv=False)
    calls_before = common.original_attention_calls()
    rungs = [original, replace(original, original_loop=False), common.Variant(batch)]  # the loop, then attention
    measured, ours = common.climb(rungs, levers, step, device, args.warmup, args.runs)
    common.check_patch_reached(calls_before)
    if args.mode == "quick":
        notes.append(f"--quick: batch {batch} instead of {BATCH['full'][name]} (samples/s is per sample either way)")
    sizes = {k: arch[k] for k in ("num_voxels", "embed_dim", "depth", "num_heads", "decoder_embed_dim")}
    sizes |= {"decoder_depth": arch["decoder_depth"], "mask_ratio": MASK_RATIO, "batch": batch}
    return common.workload_record(f"Stage A1 training, {name} size", sizes, measured, ours, flops, info, notes)


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv)
    info = common.device_info(args.device)
    print(f"Stage A1 training throughput on {info['name']} ({args.mode} mode)")
    workloads = [bench_size(name, batch, args, info) for name, batch in BATCH[args.mode].items()]
    return common.write_results("bench_stageA", args, {"device": info, "workloads": workloads})


if __name__ == "__main__":
    main(sys.argv[1:])
