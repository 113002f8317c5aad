"""Generation for the GOD test protocol (50 fMRI x 5 samples x 250 PLMS steps, VQ-decoded): images/s and the
protocol's total time with the full-size model, ours against the original's way, in the same run.

    python benchmarks/bench_generation.py            # 64^2 latents, batches 5 vs 25, + an end-to-end check (GPU)
    python benchmarks/bench_generation.py --quick    # CPU in minutes: 16^2 latents, batches 2 vs 4
    python benchmarks/bench_generation.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)

Per batch of B images the protocol runs the conditioner on the (repeated) fMRI, the UNet 251 times (250 PLMS
steps, the first Heun-started with a second call) and the VQ decoder. Running all of it for every variant would
take hours, so the protocol is measured on fewer steps and scaled: the UNet call (over 99% of the time) is timed
for every variant, the conditioner and the decoder for the original and ours, and the protocol time is composed
as (250 / B) x (conditioner + 251 x UNet + decode). In full mode one `sample_images` run with 25 steps checks that
composition. The original's way: fp32, explicit-softmax attention, one fMRI's 5 samples per call; ours: SDPA, 25
images per call, then channels-last, bf16 autocast and torch.compile where each helps. Random weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import common
import models
from dc_ldm.ldm_for_fmri import sample_images
from dc_ldm.models.diffusion.sampling_util import make_ddim_timesteps

PROTOCOL = {"fmri": 50, "samples": 5, "steps": 250}
BATCH = {"full": (5, 25), "quick": (2, 4), "tiny": (2, 4)}  # images per sampler call: (original, ours)
LATENT = {"full": 64, "quick": 16, "tiny": 8}
SIDE_BATCH = {"full": None, "quick": 1, "tiny": None}  # conditioner/decoder batch (None: the variant's)
CHECK_STEPS = 25


def plms_unet_calls(steps: int, train_steps: int = 1000) -> int:
    """UNet calls of a PLMS run: one per visited step, plus the second call of its Heun start."""
    return len(make_ddim_timesteps(steps, train_steps)) + 1


def component_flops(model: torch.nn.Module, latent: int) -> dict[str, float]:
    """FLOPs per image of the conditioner, one UNet call and the decoder (incl. the codebook search), on meta."""
    unet, vq = model.model.diffusion_model, model.first_stage_model
    fmri = torch.randn(1, 1, model.cond_stage_model.mae.num_voxels, device="meta")
    z = torch.randn(1, vq.quant_conv.out_channels, latent, latent, device="meta")
    with torch.no_grad():
        cond = common.count_flops(lambda: model.cond_stage_model(fmri))
        ctx = model.cond_stage_model(fmri)
        step = common.count_flops(lambda: unet(z, torch.zeros(1, dtype=torch.long, device="meta"), context=ctx))
        # the quantiser's autocast guard does not run on meta: count the decoder, add the distance matmul
        decode = common.count_flops(lambda: vq.decode(z, force_not_quantize=True))
    decode += 2 * latent * latent * vq.quantize.n_embed * vq.quantize.embed_dim
    return {"cond": cond, "unet": step, "decode": decode}


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv)
    device, (b_orig, b_ours), side = args.device, BATCH[args.mode], LATENT[args.mode]
    info = common.device_info(device)
    print(f"GOD-protocol generation on {info['name']} ({args.mode} mode)")

    model = models.build_ldm(args).eval()
    meta_model = models.build_ldm(args, meta=True).eval()
    flops = component_flops(meta_model, side)
    fmri = torch.randn(b_ours, 1, models.NUM_VOXELS[models.size_name(args)], device=device)
    x = torch.randn(b_ours, model.channels, side, side, device=device)
    t = torch.full((b_ours,), 500, dtype=torch.long, device=device)
    with torch.no_grad():
        context = model.get_learned_conditioning(fmri)  # (B, 77, 512)
    compiled: dict[str, object] = {}

    def fn(name: str, f, v: common.Variant):
        return compiled.setdefault(name, torch.compile(f)) if v.compiled else f

    @torch.no_grad()
    def unet_call(v: common.Variant) -> None:  # what `model.apply_model` runs, compiled as a module when asked
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        fn("unet", model.model, v)(x[: v.batch].contiguous(memory_format=fmt), t[: v.batch], context[: v.batch])

    @torch.no_grad()
    def cond_call(v: common.Variant) -> None:
        fn("cond", model.get_learned_conditioning, v)(fmri[: v.batch])

    @torch.no_grad()
    def decode_call(v: common.Variant) -> None:
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        fn("decode", model.decode_first_stage, v)(x[: v.batch].contiguous(memory_format=fmt))

    def prepare(v: common.Variant) -> None:
        models.set_memory_format(model, v.channels_last)

    levers, notes = common.optional_levers(args, info, conv=True)
    calls = common.original_attention_calls()
    rungs = [common.Variant(b_orig, "fp32", "explicit"), common.Variant(b_orig), common.Variant(b_ours)]
    measured, ours = common.climb(rungs, levers, unet_call, device, args.warmup, args.runs, prepare)
    original = rungs[0]
    side_batch = SIDE_BATCH[args.mode]
    pair = [original, ours] if side_batch is None else [_rebatch(original, side_batch), _rebatch(ours, side_batch)]
    cond = common.measure(pair, cond_call, device, args.warmup, args.runs, prepare)
    decode = common.measure(pair, decode_call, device, args.warmup, args.runs, prepare)
    common.check_patch_reached(calls)

    evals = plms_unet_calls(PROTOCOL["steps"])
    unet_m = {m.variant: m for m in measured}
    per_image = {}
    for k, v in enumerate((original, ours)):
        per_image[v] = cond[k].per_item + evals * unet_m[v].per_item + decode[k].per_item
    ratio = per_image[original] / per_image[ours]
    images = PROTOCOL["fmri"] * PROTOCOL["samples"]
    notes.append(f"protocol time composed from the measured parts: {images} images x (conditioner + {evals} UNet "
                 f"calls + decode) per image; not a timed {evals}-call run")  # fmt: skip
    if side_batch is not None:
        notes.append(f"--quick: {side}^2 latents instead of 64^2, UNet batches {b_orig}/{b_ours} instead of 5/25, "
                     f"conditioner and decoder timed at batch {side_batch} (per image they cost the same on a CPU)")
    unet_record = common.workload_record(
        "Generation: one UNet call (x251 per image)", {"latent": side, "batch_original": b_orig, "batch_ours": b_ours},
        measured, ours, flops["unet"], info, notes,
    )  # fmt: skip
    protocol = {
        "images": images,
        "unet_calls_per_image": evals,
        "flops_per_image": flops["cond"] + evals * flops["unet"] + flops["decode"],
        "component_flops_per_image": flops,
        "conditioner_s_per_image": {"original": cond[0].per_item, "ours": cond[1].per_item},
        "decode_s_per_image": {"original": decode[0].per_item, "ours": decode[1].per_item},
        "unet_s_per_image_call": {"original": unet_m[original].per_item, "ours": unet_m[ours].per_item},
        "images_per_s": {"original": 1 / per_image[original], "ours": 1 / per_image[ours]},
        "protocol_s": {"original": images * per_image[original], "ours": images * per_image[ours]},
        "ratio": ratio,
        "floor": protocol_floor(args, info, meta_model if args.mode == "full" else None, ours),
    }
    if args.mode == "full":
        parts = (cond[1], unet_m[ours], decode[1])
        protocol["end_to_end_check"] = end_to_end_check(model, fmri, ours, prepare, parts, compiled.get("unet"))
    print_protocol(protocol)
    payload = {"device": info, "workloads": [unet_record], "protocol": protocol}
    return common.write_results("bench_generation", args, payload)


def _rebatch(v: common.Variant, batch: int) -> common.Variant:
    return common.Variant(batch, v.dtype, v.attention, v.channels_last, v.compiled)


def protocol_floor(args: argparse.Namespace, info: dict, meta_model, ours: common.Variant) -> dict:
    """FLOPs of the full protocol at the published size and the time the device's peak needs for them."""
    if meta_model is None:  # quick/tiny ran smaller models: count the published one on meta
        meta_model = models.build_ldm(argparse.Namespace(mode="full", device=args.device), meta=True).eval()
    f = component_flops(meta_model, LATENT["full"])
    total = PROTOCOL["fmri"] * PROTOCOL["samples"] * (f["cond"] + plms_unet_calls(PROTOCOL["steps"]) * f["unet"]
                                                      + f["decode"])  # fmt: skip
    peaks = info.get("peak_flops") or {}
    return {
        "size": "published (64^2 latents)",
        "flops": total,
        "floor_s": {dtype: total / rate for dtype, rate in peaks.items()},
        "peak_source": info.get("peak_source"),
        "ours_dtype": ours.dtype,
    }


def end_to_end_check(model, fmri, ours, prepare, parts, compiled_unet) -> dict:
    """Time one real `sample_images` run of CHECK_STEPS PLMS steps for ours, against the composed prediction.

    A compiled UNet is swapped in for the run (conditioner and decoder then run uncompiled).
    """
    prepare(ours)
    batch = fmri[: ours.batch]
    x_T = torch.randn(ours.batch, model.channels, LATENT["full"], LATENT["full"], device=fmri.device)
    wrapper = model.model
    if ours.compiled and compiled_unet is not None:
        model.model = compiled_unet
    try:
        for _ in range(2):  # the first run warms up
            common.synchronize(fmri.device)
            start = time.perf_counter()
            with ours.context(fmri.device):
                sample_images(model, batch, ddim_steps=CHECK_STEPS, x_T=x_T)
            common.synchronize(fmri.device)
            elapsed = time.perf_counter() - start
    finally:
        model.model = wrapper
    cond, unet, decode = parts
    predicted = cond.median + plms_unet_calls(CHECK_STEPS) * unet.median + decode.median
    return {"steps": CHECK_STEPS, "measured_s": elapsed, "predicted_s": predicted, "ratio": elapsed / predicted}


def print_protocol(p: dict) -> None:
    print(f"\nGOD protocol: {p['images']} images x {p['unet_calls_per_image']} UNet calls, composed from the parts")
    for who in ("original", "ours"):
        print(f"  {who:<9} {p['images_per_s'][who]:.4g} images/s, protocol {p['protocol_s'][who]:.4g} s")
    print(f"  ratio (ours / original throughput): {p['ratio']:.2f}x")
    floor = p["floor"]
    cells = ", ".join(f"{k} {v:.4g} s" for k, v in floor["floor_s"].items())
    print(f"  published-size protocol: {floor['flops'] / 1e15:.4g} PFLOP; floor at the device's peak: {cells}")
    if "end_to_end_check" in p:
        c = p["end_to_end_check"]
        print(f"  check: sample_images with {c['steps']} steps took {c['measured_s']:.4g} s, "
              f"predicted {c['predicted_s']:.4g} s ({c['ratio']:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
