"""VQ decode throughput in images/s: the published first stage (64^2 x 3 latents -> 256^2 images), ours against
the original's way, in the same run.

    python benchmarks/bench_vq_decode.py            # batch 5 (original) against 25 (ours), GPU
    python benchmarks/bench_vq_decode.py --quick    # CPU in minutes: 16^2 latents, batches 1 and 2
    python benchmarks/bench_vq_decode.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)

One call is `VQModelInterface.decode` as sampling uses it: snap the latents to the codebook (8192 codes), then
the decoder. The original's way: fp32, explicit-softmax attention in the decoder's middle block, one fMRI's five
samples per call. Ours: SDPA, 25 images per call, then channels-last, bf16 autocast and torch.compile where each
helps. Random weights and latents (the time does not depend on their values).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import common
import models

BATCH = {"full": (5, 25), "quick": (1, 2), "tiny": (2, 4)}  # images per call: (original, ours)
LATENT = {"full": 64, "quick": 16, "tiny": 8}


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv)
    device, (b_orig, b_ours) = args.device, BATCH[args.mode]
    info = common.device_info(device)
    print(f"VQ decode throughput on {info['name']} ({args.mode} mode)")

    vq = models.build_vq(args)
    side = LATENT[args.mode]
    latents = torch.randn(b_ours, vq.quant_conv.out_channels, side, side, device=device)
    compiled: dict[str, object] = {}

    @torch.no_grad()
    def decode(v: common.Variant) -> None:
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        fn = compiled.setdefault("decode", torch.compile(vq.decode)) if v.compiled else vq.decode
        fn(latents[: v.batch].contiguous(memory_format=fmt))

    flops = common.count_flops(lambda: decode(common.Variant(1)))  # per image
    levers, notes = common.optional_levers(args, info, conv=True)
    calls = common.original_attention_calls()
    rungs = [common.Variant(b_orig, "fp32", "explicit"), common.Variant(b_orig), common.Variant(b_ours)]
    measured, ours = common.climb(
        rungs, levers, decode, device, args.warmup, args.runs, lambda v: models.set_memory_format(vq, v.channels_last)
    )
    common.check_patch_reached(calls)
    image = side * 2 ** (len(vq.decoder.up) - 1)  # the decoder doubles the side once per level but the first
    if args.mode == "quick":
        notes.append(f"--quick: {side}^2 latents ({image}^2 images) and batches {b_orig}/{b_ours} instead of 64^2 "
                     "(256^2) and 5/25; images/s is per image at that size")  # fmt: skip
    sizes = {"latent": side, "image": image, "batch_original": b_orig, "batch_ours": b_ours,
             "n_embed": vq.quantize.n_embed}  # fmt: skip
    workload = common.workload_record("VQ decode", sizes, measured, ours, flops, info, notes)
    return common.write_results("bench_vq_decode", args, {"device": info, "workloads": [workload]})


if __name__ == "__main__":
    main(sys.argv[1:])
