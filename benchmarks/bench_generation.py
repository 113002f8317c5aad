"""Generation for the GOD test protocol (50 fMRI x 5 samples x 250 PLMS steps, VQ-decoded): images/s and the
protocol's total time with the full-size model, ours against the original, in the same run.

    python benchmarks/bench_generation.py            # 64^2 latents, batches 5 vs 25, + an end-to-end check (GPU)
    python benchmarks/bench_generation.py --quick    # CPU in minutes: 32^2 latents, batches 2 vs 4
    python benchmarks/bench_generation.py --tiny     # toy sizes in seconds (what tests/test_benchmarks.py runs)
    python benchmarks/bench_generation.py --quick --original /path/to/mind-vis   # + the original's own code

Per batch of B images the protocol runs the conditioner on the (repeated) fMRI, the UNet 251 times (250 PLMS
steps, the first Heun-started with a second call) and the VQ decoder. Running all of it for every variant would
take hours, so the protocol is measured on fewer steps and scaled: the UNet call (most of the time; its share in
each run is in benchmarks/README.md) is timed for every variant, the conditioner and the decoder for the baseline
and ours, and the protocol time is composed as (250 / B) x (conditioner + 251 x UNet + decode). In full mode one
`sample_images` run with 25 steps checks that composition. The baseline: the original's own code (`--original`),
one fMRI's 5 samples per call, fp32; without a checkout its way emulated with ours (fp32, explicit-softmax
attention, 5 per call). Ours: SDPA, 25 images per call, then channels-last, the fixed context (cross-attention
keys/values and the time-embedding term computed once per run), bf16 autocast and torch.compile (with inductor's
freezing: inference only) where each helps. Random weights (the zero-initialised layers filled in, so the outputs
depend on every layer); with `--original` both implementations hold the same weights, and the largest difference
of their outputs is printed (UNet ε, conditioner, decoder, a short PLMS run).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

import attention
import common
import hardware
import models
import report
import timing
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.models.diffusion.sampling_util import make_ddim_timesteps
from dc_ldm.sampling import sample_images
from errors import run_main
from runtime import compile_for_inference

PROTOCOL = {"fmri": 50, "samples": 5, "steps": 250}
BATCH = {"full": (5, 25), "quick": (2, 4), "tiny": (2, 4)}  # images per sampler call: (original, ours)
LATENT = {"full": 64, "quick": 32, "tiny": 8}
SIDE_BATCH = {"full": None, "quick": 1, "tiny": None}  # conditioner/decoder batch (None: the variant's)
CHECK_STEPS = 25  # full mode: one timed sample_images run of ours, against the composed prediction
SAME_STEPS = {"full": 25, "quick": 5, "tiny": 5}  # PLMS steps of the run both implementations sample (--original)


def plms_unet_calls(steps: int, train_steps: int = 1000) -> int:
    """UNet calls of a PLMS run: one per visited step, plus the second call of its Heun start."""
    return len(make_ddim_timesteps(steps, train_steps)) + 1


def component_flops(model: torch.nn.Module, latent: int) -> dict[str, float]:
    """FLOPs per image of the conditioner, one UNet call and the decoder (incl. the codebook search), on meta."""
    unet, vq = model.model.diffusion_model, model.first_stage_model
    fmri = torch.randn(1, 1, model.cond_stage_model.mae.num_voxels, device="meta")
    z = torch.randn(1, vq.quant_conv.out_channels, latent, latent, device="meta")
    with torch.no_grad():
        cond = hardware.count_flops(lambda: model.cond_stage_model(fmri))
        ctx = model.cond_stage_model(fmri)
        step = hardware.count_flops(lambda: unet(z, torch.zeros(1, dtype=torch.long, device="meta"), context=ctx))
        # the quantiser's autocast guard does not run on meta: count the decoder, add the distance matmul
        decode = hardware.count_flops(lambda: vq.decode(z, force_not_quantize=True))
    decode += 2 * latent * latent * vq.quantize.n_embed * vq.quantize.embed_dim
    return {"cond": cond, "unet": step, "decode": decode}


class Parts:
    """Ours and the original's model, with what each variant calls: the UNet, the conditioner and the decoder.

    Channels-last variants run their own copy of the UNet and first stage (converted once): switching one model's
    weights back and forth would also drop autocast's cached bf16 weights at every switch.
    """

    def __init__(self, args: argparse.Namespace, model: torch.nn.Module):
        self.model = model
        self.checkout, self.theirs = args.original, None
        if self.checkout is not None:
            name = models.size_name(args)
            self.theirs = self.checkout.ldm(models.ldm_config(name == "tiny"), model, models.MAE_META[name]).eval()
        self._unet = {False: model.model}
        self._vq = {False: model.first_stage_model}
        self._fixed: dict[tuple, object] = {}
        self.compiled: dict[str, object] = {}

    def unet(self, v: timing.Variant) -> torch.nn.Module:
        """What `model.apply_model` runs (the DiffusionWrapper), in the variant's memory format."""
        if v.channels_last not in self._unet:
            self._unet[True] = copy.deepcopy(self._unet[False]).to(memory_format=torch.channels_last)
        net = self._unet[v.channels_last]
        if not v.compiled:
            return net
        return self.compiled.setdefault(f"unet{v.channels_last}", compile_for_inference(net))

    def vq(self, v: timing.Variant) -> torch.nn.Module:
        if v.channels_last not in self._vq:
            self._vq[True] = copy.deepcopy(self._vq[False]).to(memory_format=torch.channels_last)
        return self._vq[v.channels_last]

    def context(self, v: timing.Variant, context: torch.Tensor) -> object:
        """The variant's context for `v.batch` items: the tensor, or fixed once (under the variant's autocast)."""
        if not v.fixed_context:
            return context[: v.batch]
        key = (v.batch, v.dtype)
        if key not in self._fixed:
            with torch.no_grad(), v.context(context.device):
                self._fixed[key] = self.model.model.diffusion_model.fix_context(context[: v.batch])
        return self._fixed[key]

    def run_unet(self, v: timing.Variant, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if v.code == "original":
            return self.theirs.apply_model(x[: v.batch], t[: v.batch], context[: v.batch])
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        return self.unet(v)(x[: v.batch].contiguous(memory_format=fmt), t[: v.batch], self.context(v, context))

    def run_cond(self, v: timing.Variant, fmri: torch.Tensor) -> object:
        if v.code == "original":
            return self.theirs.get_learned_conditioning(fmri[: v.batch])
        context = self.model.get_learned_conditioning(fmri[: v.batch])
        return self.model.model.diffusion_model.fix_context(context) if v.fixed_context else context

    def run_decode(self, v: timing.Variant, z: torch.Tensor) -> torch.Tensor:
        if v.code == "original":
            return self.theirs.decode_first_stage(z[: v.batch])
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        return self.vq(v).decode(z[: v.batch].contiguous(memory_format=fmt) / self.model.scale_factor)


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = common.parse_args(__doc__, argv)
    device, (b_orig, b_ours), side = args.device, BATCH[args.mode], LATENT[args.mode]
    info = hardware.device_info(device)
    print(f"GOD-protocol generation on {info['name']} ({args.mode} mode)")

    model = models.build_ldm(args).eval()
    parts = Parts(args, model)
    meta_model = models.build_ldm(args, meta=True).eval()
    flops = component_flops(meta_model, side)
    torch.manual_seed(0)
    fmri = torch.randn(b_ours, 1, models.NUM_VOXELS[models.size_name(args)], device=device)
    x = torch.randn(b_ours, model.channels, side, side, device=device)
    t = torch.full((b_ours,), 500, dtype=torch.long, device=device)
    with torch.no_grad():
        context = model.get_learned_conditioning(fmri)  # (B, 77, 512)

    def unet_call(v: timing.Variant) -> None:
        with torch.no_grad():
            parts.run_unet(v, x, t, context)

    def prepare(v: timing.Variant) -> None:  # outside the timed call: what a sampling run does once
        if v.code == "ours":
            parts.unet(v)
            parts.context(v, context)

    levers, notes = common.optional_levers(args, info, conv=True)
    levers.insert(1, {"fixed_context": True})
    notes.insert(0, timing.baseline_note(args))
    calls = attention.original_attention_calls()
    original = timing.Variant(b_orig, "fp32", "explicit")
    rungs = timing.baseline_rungs(args, original, [original, timing.Variant(b_orig), timing.Variant(b_ours)])
    with timing.cast_weights_once(device):
        measured, ours = timing.climb(rungs, levers, unet_call, device, args.warmup, args.runs, prepare)
        # ours with every lever kept, at the original's batch (one fMRI's samples per call): a phase of its own
        ref, theirs_batch = timing.measure(
            [ours, replace(ours, batch=b_orig)],
            unet_call,
            device,
            args.warmup,
            args.runs,
            prepare,
            phase=measured[-1].phase + 1,
        )
    ref.speedup = next(m.speedup for m in reversed(measured) if m.variant == ours)
    theirs_batch.speedup = ref.speedup * ref.per_item / theirs_batch.per_item
    measured += [ref, theirs_batch]
    baseline = rungs[0]
    side_batch = SIDE_BATCH[args.mode]
    pair = [baseline, ours] if side_batch is None else [_rebatch(baseline, side_batch), _rebatch(ours, side_batch)]

    def cond_call(v: timing.Variant) -> None:
        with torch.no_grad():
            parts.run_cond(v, fmri)

    def decode_call(v: timing.Variant) -> None:
        with torch.no_grad():
            parts.run_decode(v, x)

    cond = timing.measure(pair, cond_call, device, args.warmup, args.runs, lambda v: parts.vq(v))
    decode = timing.measure(pair, decode_call, device, args.warmup, args.runs, lambda v: parts.vq(v))
    attention.check_patch_reached(calls)
    differences = compare(args, parts, ours, fmri, x, t, context) if parts.theirs is not None else None

    evals = plms_unet_calls(PROTOCOL["steps"])
    unet_m = {m.variant: m for m in measured}
    # ours' UNet time in the baseline's phase: its chained speed-up, so that load changes between phases stay out
    unet_speedup = ref.speedup
    unet_call = {baseline: measured[0].per_item, ours: measured[0].per_item / unet_speedup}
    per_image = {}
    for k, v in enumerate((baseline, ours)):
        per_image[v] = cond[k].per_item + evals * unet_call[v] + decode[k].per_item
    ratio = per_image[baseline] / per_image[ours]
    images = PROTOCOL["fmri"] * PROTOCOL["samples"]
    notes.append(
        f"protocol time composed from the measured parts: {images} images x (conditioner + {evals} UNet "
        f"calls + decode) per image, ours' UNet call as the baseline's over the chained speed-up; not a "
        f"timed {evals}-call run"
    )
    notes.append("bf16 weights are cast once per sampling run (autocast's cache, as in gen_eval), not per UNet call")
    if side_batch is not None:
        notes.append(
            f"--quick: {side}^2 latents instead of 64^2, UNet batches {b_orig}/{b_ours} instead of 5/25, "
            f"conditioner and decoder timed at batch {side_batch} (per image they cost the same on a CPU)"
        )
    unet_record = report.workload_record(
        "Generation: one UNet call (x251 per image)",
        {"latent": side, "batch_original": b_orig, "batch_ours": b_ours},
        measured,
        ours,
        flops["unet"],
        info,
        notes,
        differences,
    )
    unet_record["ratio_at_original_batch"] = theirs_batch.speedup
    print(f"  ours at the original's batch ({theirs_batch.variant.name}): {theirs_batch.speedup:.2f}x")
    protocol = {
        "images": images,
        "unet_calls_per_image": evals,
        "baseline": unet_record["baseline"],
        "flops_per_image": flops["cond"] + evals * flops["unet"] + flops["decode"],
        "component_flops_per_image": flops,
        "conditioner_s_per_image": {"original": cond[0].per_item, "ours": cond[1].per_item},
        "decode_s_per_image": {"original": decode[0].per_item, "ours": decode[1].per_item},
        "unet_s_per_image_call": {"original": unet_call[baseline], "ours": unet_call[ours]},
        "images_per_s": {"original": 1 / per_image[baseline], "ours": 1 / per_image[ours]},
        "protocol_s": {"original": images * per_image[baseline], "ours": images * per_image[ours]},
        "ratio": ratio,
        "floor": protocol_floor(args, info, meta_model if args.mode == "full" else None, ours),
    }
    if args.mode == "full":
        protocol["end_to_end_check"] = end_to_end_check(parts, fmri, ours, (cond[1], unet_m[ours], decode[1]))
    print_protocol(protocol)
    payload = {"device": info, "workloads": [unet_record], "protocol": protocol}
    return report.write_results("bench_generation", args, payload)


def _rebatch(v: timing.Variant, batch: int) -> timing.Variant:
    return replace(v, batch=batch)


def compare(args, parts: Parts, ours: timing.Variant, fmri, x, t, context) -> dict[str, dict[str, float]]:
    """|ours - original| on the same inputs and weights: the UNet's ε (ours in fp32 and as chosen), the conditioner,
    the decoder, and the latents of a short PLMS run from the same noise (ours in fp32 and as chosen).

    The images of that run are not compared: with random weights the latents grow large and the codebook search
    becomes a near-tie between codes, so a last-bit difference can pick another code.
    """
    b = BATCH[args.mode][0]
    fp32 = timing.Variant(ours.batch)
    with torch.no_grad():
        with parts.checkout.quiet():
            eps_theirs = parts.theirs.apply_model(x[:b], t[:b], context[:b])
            cond_theirs = parts.theirs.get_learned_conditioning(fmri[:b])
            image_theirs = parts.theirs.decode_first_stage(x[:b])
        out = {"UNet eps, ours fp32": timing.difference(parts.run_unet(fp32, x, t, context)[:b], eps_theirs)}
        with ours.context(x.device):
            eps_ours = parts.run_unet(ours, x, t, context)[:b]
        out[f"UNet eps, ours = {ours.name}"] = timing.difference(eps_ours, eps_theirs)
        out["conditioner, fp32"] = timing.difference(parts.model.get_learned_conditioning(fmri[:b]), cond_theirs)
        out["VQ decode, fp32"] = timing.difference(parts.model.decode_first_stage(x[:b]), image_theirs)
        steps = SAME_STEPS[args.mode]
        theirs_latents = original_latents(parts, fmri[:b], steps)
        for v in (fp32, ours):
            with v.context(x.device):
                cond = parts.model.get_learned_conditioning(fmri[:b])
                mine, _ = PLMSSampler(parts.model).sample(
                    S=steps,
                    batch_size=b,
                    shape=parts.model.latent_shape,
                    conditioning=cond,
                    x_T=_noise(parts.model, b, x.device),
                    verbose=False,
                )
            label = "fp32" if v.dtype == "fp32" else f"ours = {v.dtype}"
            out[f"latents of a {steps}-step PLMS run, {label}"] = timing.difference(mine, theirs_latents)
    return out


def _noise(model: torch.nn.Module, batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(batch, *model.latent_shape, generator=generator).to(device)


def original_latents(parts: Parts, fmri: torch.Tensor, steps: int) -> torch.Tensor:
    """Latents from the original's own PLMS sampler, as its `fLDM.generate` calls it."""
    sampler = parts.checkout.plms_sampler(parts.theirs)
    with parts.checkout.quiet():
        c = parts.theirs.get_learned_conditioning(fmri)
        samples, _ = sampler.sample(
            S=steps,
            conditioning=c,
            batch_size=fmri.shape[0],
            shape=parts.model.latent_shape,
            verbose=False,
            x_T=_noise(parts.model, fmri.shape[0], fmri.device),
        )
    return samples


def protocol_floor(args: argparse.Namespace, info: dict, meta_model, ours: timing.Variant) -> dict:
    """FLOPs of the full protocol at the published size and the time the device's peak needs for them."""
    if meta_model is None:  # quick/tiny ran smaller models: count the published one on meta
        meta_model = models.build_ldm(argparse.Namespace(mode="full", device=args.device), meta=True).eval()
    f = component_flops(meta_model, LATENT["full"])
    total = (
        PROTOCOL["fmri"]
        * PROTOCOL["samples"]
        * (f["cond"] + plms_unet_calls(PROTOCOL["steps"]) * f["unet"] + f["decode"])
    )
    peaks = info.get("peak_flops") or {}
    return {
        "size": "published (64^2 latents)",
        "flops": total,
        "floor_s": {dtype: total / rate for dtype, rate in peaks.items()},
        "peak_source": info.get("peak_source"),
        "ours_dtype": ours.dtype,
    }


def end_to_end_check(parts: Parts, fmri: torch.Tensor, ours: timing.Variant, measured_parts) -> dict:
    """Time one real `sample_images` run of CHECK_STEPS PLMS steps for ours, against the composed prediction.

    The variant's UNet (its memory format, compiled when chosen) is swapped in for the run.
    """
    model = parts.model
    batch = fmri[: ours.batch]
    x_T = _noise(model, ours.batch, fmri.device)
    wrapper, first_stage = model.model, model.first_stage_model
    model.model, model.first_stage_model = parts.unet(ours), parts.vq(ours)
    try:
        for _ in range(2):  # the first run warms up
            hardware.synchronize(fmri.device)
            start = time.perf_counter()
            with ours.context(fmri.device):
                sample_images(model, batch, ddim_steps=CHECK_STEPS, x_T=x_T)
            hardware.synchronize(fmri.device)
            elapsed = time.perf_counter() - start
    finally:
        model.model, model.first_stage_model = wrapper, first_stage
    cond, unet, decode = measured_parts
    predicted = cond.time + plms_unet_calls(CHECK_STEPS) * unet.time + decode.time
    return {"steps": CHECK_STEPS, "measured_s": elapsed, "predicted_s": predicted, "ratio": elapsed / predicted}


def print_protocol(p: dict) -> None:
    print(f"\nGOD protocol: {p['images']} images x {p['unet_calls_per_image']} UNet calls, composed from the parts")
    for who in ("original", "ours"):
        label = "original" if who == "ours" or p["baseline"] == "original code" else "original's way"
        print(
            f"  {label if who == 'original' else 'ours':<15} {p['images_per_s'][who]:.4g} images/s, "
            f"protocol {p['protocol_s'][who]:.4g} s"
        )
    print(f"  ratio (ours / baseline throughput): {p['ratio']:.2f}x")
    floor = p["floor"]
    cells = ", ".join(f"{k} {v:.4g} s" for k, v in floor["floor_s"].items())
    print(f"  published-size protocol: {floor['flops'] / 1e15:.4g} PFLOP; floor at the device's peak: {cells}")
    if "end_to_end_check" in p:
        c = p["end_to_end_check"]
        print(
            f"  check: sample_images with {c['steps']} steps took {c['measured_s']:.4g} s, "
            f"predicted {c['predicted_s']:.4g} s ({c['ratio']:.2f}x)"
        )


if __name__ == "__main__":
    run_main(main)
