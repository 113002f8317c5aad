"""VQ decode throughput in images/s: the published first stage (64^2 x 3 latents -> 256^2 images), ours against
the original's way, in the same run.

    python benchmarks/bench_vq_decode.py            # batch 5 (original) against 25 (ours), GPU
    python benchmarks/bench_vq_decode.py --quick    # CPU in minutes: 16^2 latents, batches 1 and 2
    python benchmarks/bench_vq_decode.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)
    python benchmarks/bench_vq_decode.py --quick --original /path/to/mind-vis   # + the original's own code

One call is `VQModelInterface.decode` as sampling uses it: snap the latents to the codebook (8192 codes), then
the decoder. The baseline: the original's own `VQModelInterface` (`--original`, same weights), one fMRI's five
samples per call, fp32; without a checkout its way emulated with ours (fp32, explicit-softmax attention in the
decoder's middle block, 5 per call). Ours: SDPA, 25 images per call, then channels-last, bf16 autocast and
torch.compile where each helps. Random weights and latents (the time does not depend on their values).
"""

from __future__ import annotations

from pathlib import Path

import torch

import attention
import common
import hardware
import models
import report
import timing
from errors import run_main
from runtime import compile_for_inference

BATCH = {"full": (5, 25), "quick": (1, 2), "tiny": (2, 4)}  # images per call: (original, ours)
LATENT = {"full": 64, "quick": 16, "tiny": 8}


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv)
    device, (b_orig, b_ours) = args.device, BATCH[args.mode]
    info = hardware.device_info(device)
    print(f"VQ decode throughput on {info['name']} ({args.mode} mode)")

    vq = models.build_vq(args)
    theirs = args.original.vq(models.first_stage_config(args), vq) if args.original is not None else None
    side = LATENT[args.mode]
    torch.manual_seed(0)
    latents = torch.randn(b_ours, vq.quant_conv.out_channels, side, side, device=device)
    compiled: dict[str, object] = {}

    @torch.no_grad()
    def decode(v: timing.Variant) -> torch.Tensor:
        if v.code == "original":
            return theirs.decode(latents[: v.batch])
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        fn = compiled.setdefault("decode", compile_for_inference(vq.decode)) if v.compiled else vq.decode
        return fn(latents[: v.batch].contiguous(memory_format=fmt))

    def prepare(v: timing.Variant) -> None:
        if v.code == "ours":
            models.set_memory_format(vq, v.channels_last)

    flops = hardware.count_flops(lambda: decode(timing.Variant(1)))  # per image
    levers, notes = common.optional_levers(args, info, conv=True)
    notes.insert(0, timing.baseline_note(args))
    calls = attention.original_attention_calls()
    original = timing.Variant(b_orig, "fp32", "explicit")
    rungs = timing.baseline_rungs(args, original, [original, timing.Variant(b_orig), timing.Variant(b_ours)])
    measured, ours = timing.climb(rungs, levers, decode, device, args.warmup, args.runs, prepare)
    attention.check_patch_reached(calls)
    differences = None
    if theirs is not None:
        reference = decode(rungs[0])
        differences = {}
        for v in (timing.Variant(b_orig), ours):
            prepare(v)
            with v.context(device):
                differences["fp32" if v == timing.Variant(b_orig) else f"ours = {v.name}"] = timing.difference(
                    decode(v)[:b_orig], reference
                )
    image = side * 2 ** (len(vq.decoder.up) - 1)  # the decoder doubles the side once per level but the first
    if args.mode == "quick":
        notes.append(
            f"--quick: {side}^2 latents ({image}^2 images) and batches {b_orig}/{b_ours} instead of 64^2 "
            "(256^2) and 5/25; images/s is per image at that size"
        )
    sizes = {
        "latent": side,
        "image": image,
        "batch_original": b_orig,
        "batch_ours": b_ours,
        "n_embed": vq.quantize.n_embed,
    }
    workload = report.workload_record("VQ decode", sizes, measured, ours, flops, info, notes, differences)
    return report.write_results("bench_vq_decode", args, {"device": info, "workloads": [workload]})


if __name__ == "__main__":
    run_main(main)
