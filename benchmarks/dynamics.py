"""Training dynamics against the original: its Stage A1 and Stage B training loops beside ours, step by step.

    python benchmarks/dynamics.py --original /path/to/mind-vis              # both stages, 300 steps each (minutes)
    python benchmarks/dynamics.py --original /path/to/mind-vis --steps 30   # a quick look

The forward-pass fixtures show that one call computes what the original computes; this shows that training does:
the same parameters train, with the same learning rate, weight decay, schedule and gradient clipping, so the loss
curves coincide. Both implementations start from the same weights (ours, copied into the original's models) and
see the same batches in the same order; before every training forward both reseed torch's generator with the same
per-step seed, so the MAE's masks and Stage B's timesteps and noise are the same draws. Everything else is each
one's own code:

- Stage A1: the original's `sc_mbm.trainer.train_one_epoch` with its `NativeScalerWithGradNormCount`, its AdamW
  over timm's weight-decay groups (`optim_factory.add_weight_decay`, betas (0.9, 0.95)) and its per-iteration
  `adjust_learning_rate`; ours: `engine.train_one_epoch` with `mae_step`, `make_optimizer` and `Schedule`, as
  `stageA1_mbm_pretrain.py` runs them. Published values (lr 2.5e-4, weight decay 0.05, clipping 0.8, mask ratio
  0.75) on a small MAE; the schedule compressed to 3 epochs with 1 of warm-up, so that it is exercised.
- Stage B: the original's `LatentDiffusion` with its fMRI conditioner, set up as its `fLDM.finetune` does
  (`unfreeze_whole_model`, `freeze_first_stage`, `train_cond_stage_only`) and trained by a real Lightning
  `Trainer` with the flags its `create_trainer` passes (gradient_clip_val 0.5, precision 32, accumulation 1);
  ours: `engine.train_one_epoch` with `ldm_step` and `conditioning_optimizer`, as `stageB_ldm_finetune.py` runs
  them. Published values (lr 5.3e-5, batch 5, the published conditioning: 77 tokens, encoder trained) on the toy
  label2img LDM of the benchmarks (random weights).
- The data transforms: the original's Stage B image transform (its `normalize`, `random_crop(p=0.5)`, `Resize`)
  and ours (`model_image_transform`) on the same images under the same seeds; its fMRI "sparse" transform and our
  `RandomVoxelDropout(0)`.

Data: a small low-rank world made here (fMRI and images driven by the same latent factors, plus noise), so the
losses fall and the curves say something. fp32 on the CPU. Writes `benchmarks/results/dynamics-<device>.json` and
the figure `docs/dynamics.png`, and prints the table `docs/defects.md` cites. The original's own dependencies are
needed (`pip install pytorch-lightning einops`); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

import models
import repo
import report
from engine import AmpScaler, Schedule, make_optimizer, train_one_epoch
from errors import DEBUG_HELP, UsageError, run_main
from original import OriginalCheckout
from sc_mbm.mae_for_fmri import MAEforFMRI
from sc_mbm.training import mae_step
from stageB_ldm_finetune import conditioning_optimizer, ldm_step
from transforms import RandomVoxelDropout, model_image_transform

ARCH_A1 = dict(
    num_voxels=512,
    patch_size=16,
    embed_dim=64,
    depth=2,
    num_heads=4,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=4,
    mlp_ratio=1.0,
)
# The published Stage A1 values (Config_MBM_fMRI), the schedule compressed to 3 epochs with 1 of warm-up.
TRAIN_A1 = dict(
    lr=2.5e-4, min_lr=0.0, weight_decay=0.05, clip_grad=0.8, mask_ratio=0.75, epochs=3, warmup_epochs=1, batch_size=32
)
# The published Stage B values (Config_Generative_Model): lr 5.3e-5, batch 5, clipping 0.5, fp32.
TRAIN_B = dict(lr=5.3e-5, clip_grad=0.5, batch_size=5)
DEVICE = torch.device("cpu")


# ---- a small world with something to learn --------------------------------------------------------------------


def low_rank_world(n: int, num_voxels: int, image_side: int | None, seed: int) -> dict[str, torch.Tensor]:
    """`n` fMRI (n, 1, V) and, with `image_side`, images (n, 3, s, s) in [-1, 1], both driven by 8 latent factors."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(n, 8, generator=g)
    loadings = torch.randn(8, num_voxels, generator=g).cumsum(1) / num_voxels**0.5  # smooth along the voxels
    fmri = factors @ loadings + 0.5 * torch.randn(n, num_voxels, generator=g)
    world = {"fmri": ((fmri - fmri.mean(1, keepdim=True)) / fmri.std(1, keepdim=True))[:, None]}
    if image_side:
        patterns = torch.randn(8, 3, 4, 4, generator=g)
        coarse = torch.einsum("nk,kchw->nchw", factors, patterns)
        images = nn.functional.interpolate(coarse, size=(image_side, image_side), mode="bilinear")
        world["image"] = torch.tanh(images / 2)
    return world


def batches(world: dict[str, torch.Tensor], batch_size: int, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`steps` batches drawn epoch by epoch as a shuffling loader would, the same list for both implementations."""
    g, n, out = torch.Generator().manual_seed(seed), len(world["fmri"]), []
    while len(out) < steps:
        order = torch.randperm(n, generator=g)
        out += [
            {k: v[order[i : i + batch_size]] for k, v in world.items()}
            for i in range(0, n - batch_size + 1, batch_size)
        ]
    return out[:steps]


# ---- lock-step randomness and recording -----------------------------------------------------------------------


@contextlib.contextmanager
def recorded(model: nn.Module, optimizer: Callable[[], torch.optim.Optimizer | None], seed: int) -> Iterator[dict]:
    """Before every training forward of `model`: reseed torch with seed + step; after it: record the loss and lr.

    `optimizer()` returns the optimiser once it exists (Lightning builds the original's inside `fit`)."""
    record: dict[str, list[float]] = {"loss": [], "lr": []}

    def before(module: nn.Module, args: tuple) -> None:
        if module.training:
            torch.manual_seed(seed + len(record["loss"]))

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if module.training:
            loss = output[0] if isinstance(output, tuple) else output
            record["loss"].append(float(loss.detach()))
            opt = optimizer()
            record["lr"].append(float(opt.param_groups[0]["lr"]) if opt is not None else float("nan"))

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def optimiser_view(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """{parameter name: its group's lr, weight decay, betas, eps} for every parameter the optimiser updates."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: {k: g[k] for k in ("weight_decay", "betas", "eps")}
        for g in optimizer.param_groups
        for p in g["params"]
    }


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def compare_runs(
    ours: dict,
    theirs: dict,
    ours_model: nn.Module,
    their_model: nn.Module,
    start: dict,
    ours_opt: dict,
    their_opt: dict,
) -> dict[str, Any]:
    """Loss and lr step by step, where the weights ended (`start`: both models' weights before training), and the
    optimisers' parameter sets and hyper-parameters."""
    loss_o, loss_t = np.array(ours["loss"]), np.array(theirs["loss"])
    rel = np.abs(loss_o - loss_t) / np.abs(loss_t)
    end_o, end_t = weights(ours_model), weights(their_model)
    trained = [n for n in ours_opt if n in end_t]
    # how far apart the two ended, against how far training moved them: 0 = the same trajectory
    apart = sum(((end_o[n] - end_t[n]) ** 2).sum() for n in trained).sqrt()
    moved = sum(((end_t[n] - start[n]) ** 2).sum() for n in trained).sqrt()
    untouched = [n for n in their_opt if n not in ours_opt and not torch.equal(end_t[n], start[n])]
    hyper = sorted(n for n in set(ours_opt) & set(their_opt) if ours_opt[n] != their_opt[n])
    return {
        "steps": len(loss_o),
        "loss_ours": loss_o.tolist(),
        "loss_original": loss_t.tolist(),
        "lr_ours": ours["lr"],
        "lr_original": theirs["lr"],
        "max_rel_loss_difference": float(rel.max()),
        "rel_loss_difference_by_step": rel.tolist(),
        "first_step_rel_loss_difference": float(rel[0]),
        "max_lr_difference": float(np.max(np.abs(np.array(ours["lr"]) - np.array(theirs["lr"])))),
        "weights_apart_over_update": float(apart / moved.clamp_min(1e-30)),
        "update_norm": float(moved),
        "changed_outside_ours": untouched,
        "trained_only_by_ours": sorted(set(ours_opt) - set(their_opt)),
        "trained_only_by_original": sorted(set(their_opt) - set(ours_opt)),
        "trained_parameters": len(set(ours_opt) & set(their_opt)),
        "hyper_parameters_differ": {n: {"ours": ours_opt[n], "original": their_opt[n]} for n in hyper[:10]},
        "loss_start_end_ours": [float(loss_o[:10].mean()), float(loss_o[-10:].mean())],
    }


# ---- Stage A1 -------------------------------------------------------------------------------------------------


def stage_a1(checkout: OriginalCheckout, steps: int, seed: int) -> dict[str, Any]:
    """Its Stage A1 loop and ours on the same batches from the same weights."""
    per_epoch = max(steps // TRAIN_A1["epochs"], 1)
    world = low_rank_world(2000, ARCH_A1["num_voxels"], None, seed)
    data = batches(world, TRAIN_A1["batch_size"], per_epoch * TRAIN_A1["epochs"], seed)
    torch.manual_seed(seed)
    ours = MAEforFMRI(**ARCH_A1).to(DEVICE)
    theirs = checkout.mae(ARCH_A1, copy.deepcopy(ours.state_dict()))  # a copy: the two train apart
    start = weights(ours)

    # ours, as stageA1_mbm_pretrain.py runs it
    optimizer = make_optimizer(ours, TRAIN_A1["lr"], TRAIN_A1["weight_decay"])
    schedule = Schedule(TRAIN_A1["lr"], TRAIN_A1["min_lr"], TRAIN_A1["warmup_epochs"], TRAIN_A1["epochs"])
    amp = AmpScaler("fp32", DEVICE)
    with recorded(ours, lambda: optimizer, seed) as record_ours:
        for epoch in range(TRAIN_A1["epochs"]):
            epoch_batches = data[epoch * per_epoch : (epoch + 1) * per_epoch]
            train_one_epoch(
                ours,
                epoch_batches,
                optimizer,
                amp,
                epoch=epoch,
                step=mae_step(TRAIN_A1["mask_ratio"]),
                schedule=schedule,
                clip_grad=TRAIN_A1["clip_grad"],
                log_every=10**9,
            )

    # the original, as its stageA1_mbm_pretrain.py runs it
    trainer = checkout.module("sc_mbm.trainer")
    config = checkout.module("config").Config_MBM_fMRI()
    for key, value in {**TRAIN_A1, "num_epoch": TRAIN_A1["epochs"], "accum_iter": 1, "local_rank": 0}.items():
        setattr(config, key, value)
    with checkout.quiet():
        import timm.optim.optim_factory as optim_factory  # what its script imports

        # timm 0.5.4's add_weight_decay is param_groups_weight_decay in timm >= 0.9 (the same two groups)
        groups = getattr(optim_factory, "add_weight_decay", None) or optim_factory.param_groups_weight_decay
        their_opt = torch.optim.AdamW(groups(theirs, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
        scaler = trainer.NativeScalerWithGradNormCount()
    with recorded(theirs, lambda: their_opt, seed) as record_theirs, checkout.quiet():
        for epoch in range(TRAIN_A1["epochs"]):
            epoch_batches = data[epoch * per_epoch : (epoch + 1) * per_epoch]
            trainer.train_one_epoch(
                theirs, epoch_batches, their_opt, DEVICE, epoch, scaler, None, config, model_without_ddp=theirs
            )
    return compare_runs(
        record_ours,
        record_theirs,
        ours,
        theirs,
        start,
        optimiser_view(ours, optimizer),
        optimiser_view(theirs, their_opt),
    )


# ---- Stage B --------------------------------------------------------------------------------------------------


def stage_b(checkout: OriginalCheckout, steps: int, seed: int, duplicates: bool = False) -> dict[str, Any]:
    """Its Stage B (a Lightning Trainer over its LatentDiffusion) and ours on the same batches and weights.

    The original's optimiser lists the encoder's `norm2` LayerNorms twice (once as conditioner parameters, once
    because their names hold "norm2"), so AdamW steps them twice per batch (docs/defects.md). `duplicates` gives
    ours' optimiser the same duplicated list, to show that this is the only difference of the two trajectories."""
    args = SimpleNamespace(mode="tiny", device=DEVICE)
    side = models.IMAGE_SIZE["tiny"]
    world = low_rank_world(600, models.NUM_VOXELS["tiny"], side, seed)
    data = batches(world, TRAIN_B["batch_size"], steps, seed)
    ours = models.build_ldm(args)
    theirs = checkout.ldm(models.ldm_config(True), copy.deepcopy(ours), models.MAE_META["tiny"])
    start = weights(ours)

    # ours, as stageB_ldm_finetune.py runs it (the published conditioning: nothing frozen, no options of ours)
    cfg = SimpleNamespace(lr=TRAIN_B["lr"], freeze_encoder=False, freeze_mapper=False)
    optimizer = conditioning_optimizer(ours, cfg)
    if duplicates:  # the original's list: the encoder's norm2 tensors a second time (plain AdamW takes them twice)
        twice = [p for n, p in ours.cond_stage_model.named_parameters() if "norm2" in n]
        optimizer = torch.optim.AdamW(optimizer.param_groups[0]["params"] + twice, lr=cfg.lr)
    schedule = Schedule(cfg.lr, cfg.lr, 0, 1)  # constant, as published
    with recorded(ours, lambda: optimizer, seed) as record_ours:
        train_one_epoch(
            ours,
            data,
            optimizer,
            AmpScaler("fp32", DEVICE),
            epoch=0,
            step=ldm_step,
            schedule=schedule,
            clip_grad=TRAIN_B["clip_grad"],
            log_every=10**9,
        )

    # the original: fLDM.finetune's set-up, then Lightning's Trainer with create_trainer's flags
    import pytorch_lightning as pl

    their_batches = [{"image": b["image"].permute(0, 2, 3, 1), "fmri": b["fmri"]} for b in data]  # (N, H, W, 3)
    with checkout.quiet():
        theirs.unfreeze_whole_model()
        theirs.freeze_first_stage()
        theirs.learning_rate, theirs.train_cond_stage_only = cfg.lr, True
        # Lightning >= 2 calls on_train_batch_start(batch, batch_idx); the original's takes a third argument
        hook = theirs.on_train_batch_start
        theirs.on_train_batch_start = lambda batch, batch_idx, *rest: hook(batch, batch_idx, 0)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            precision=32,
            accumulate_grad_batches=1,
            gradient_clip_val=TRAIN_B["clip_grad"],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        loader = torch.utils.data.DataLoader(their_batches, batch_size=None, shuffle=False)
        their_optimizer = lambda: trainer.optimizers[0] if trainer.optimizers else None  # noqa: E731
        with recorded(theirs, their_optimizer, seed) as record_theirs:
            trainer.fit(theirs, loader)
    result = compare_runs(
        record_ours,
        record_theirs,
        ours,
        theirs,
        start,
        optimiser_view(ours, optimizer),
        optimiser_view(theirs, trainer.optimizers[0]),
    )
    # what the original leaves trainable but never updates (gradients computed for nothing, see bench_stageB.py)
    updated = set(optimiser_view(theirs, trainer.optimizers[0]))
    result["original_requires_grad_not_updated"] = sum(
        p.numel() for n, p in theirs.named_parameters() if p.requires_grad and n not in updated
    )
    return result


# ---- where double conditioning starts ------------------------------------------------------------------------

DEMO_LDM = repo.ROOT / "pretrains" / "demo" / "demo" / "label2img"  # a trained label LDM in the published layout
TEC = "model.diffusion_model.time_embed_condtion"


def conditioning_start(checkout: OriginalCheckout, ldm_dir: Path | None, seed: int) -> dict[str, Any]:
    """Double conditioning's start where the label LDM's file lacks `time_embed_condtion` (the one-token Linear of
    `global_pool` is never in a file; a label LDM trained without double conditioning may lack the 77-token one):
    the original as its `fLDM.__init__` builds it (the YAML's model, the file loaded non-strictly) and ours by
    `build_ldm_for_fmri` under each `--time_cond_start`, each from the same seed and the same file.

    Compares the new layers' values and how far they move the timestep embedding at the start: the norm of
    `time_embed_condtion(context)` over that of `time_embed(t)`, for the context the untrained conditioner gives
    random fMRI, at 8 timesteps across the schedule. The file: `ldm_dir` (default: the demo's label LDM when
    `make demo` made it, else a toy one with random weights) with its `time_embed_condtion` tensors left out."""
    from dc_ldm.ldm_for_fmri import TIME_COND_STARTS, build_ldm_for_fmri
    from dc_ldm.modules.diffusionmodules.util import timestep_embedding

    with tempfile.TemporaryDirectory() as scratch:
        folder, source = Path(scratch), "given"
        if ldm_dir is None and (DEMO_LDM / "model.ckpt").is_file():
            ldm_dir, source = DEMO_LDM, "the demo's label LDM"
        if ldm_dir is None:
            source = "a toy label LDM (random weights)"
            OmegaConf.save(OmegaConf.create(models.ldm_config(True)), folder / "config.yaml")
            torch.manual_seed(seed + 1)
            state = build_ldm_for_fmri(folder, models.MAE_META["tiny"], 256, load_ldm_weights=False).state_dict()
        else:
            (folder / "config.yaml").write_text((ldm_dir / "config.yaml").read_text())
            state = torch.load(ldm_dir / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith(("cond_stage_model.", f"{TEC}."))}
        torch.save({"state_dict": state}, folder / "model.ckpt")
        config = OmegaConf.load(folder / "config.yaml")
        unet = config.model.params.unet_config.params
        mae_meta = models.MAE_META["tiny"]

        ours = {}
        for start in TIME_COND_STARTS:
            torch.manual_seed(seed)
            ours[start] = build_ldm_for_fmri(
                folder, mae_meta, 256, conditioner="published", use_time_cond=True, time_cond_start=start
            ).eval()
        util = checkout.module("dc_ldm.util")
        with checkout.active(), contextlib.redirect_stdout(io.StringIO()):
            unet.use_time_cond, unet.global_pool = True, False
            torch.manual_seed(seed)
            theirs = util.instantiate_from_config(config.model)  # as fLDM.__init__: then the file, non-strictly
            missing, _ = theirs.load_state_dict(state, strict=False)
        theirs.eval()

    def layers(model: nn.Module) -> dict[str, torch.Tensor]:
        return dict(model.model.diffusion_model.time_embed_condtion.named_parameters())

    def ratio(model: nn.Module, context: torch.Tensor) -> float:
        unet_model = model.model.diffusion_model
        t = torch.linspace(0, 999, 8).long()
        with torch.no_grad():
            emb = unet_model.time_embed(timestep_embedding(t, unet_model.model_channels))
            added = unet_model.time_embed_condtion(context.expand(len(t), -1, -1)).squeeze(1)
        return float((added.norm(dim=1) / emb.norm(dim=1)).mean())

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the untrained conditioner's context for random fMRI (its encoder random too)
        context = ours["published"].cond_stage_model(torch.randn(1, 1, 256, generator=generator))
    theirs_layers = layers(theirs)
    result = {"ldm": source, "left_out_of_the_file": sorted(k for k in missing if k.startswith(TEC))}
    for start, model in ours.items():
        mine = layers(model)
        result[start] = {
            "identical_to_original": all(torch.equal(mine[n], theirs_layers[n]) for n in theirs_layers),
            "max_abs_difference": max(float((mine[n] - theirs_layers[n]).abs().max().detach()) for n in theirs_layers),
            "std": {n: float(p.std()) for n, p in mine.items() if p.numel() > 1},
            "added_over_timestep_embedding": ratio(model, context),
        }
    result["original"] = {
        "std": {n: float(p.std()) for n, p in theirs_layers.items() if p.numel() > 1},
        "added_over_timestep_embedding": ratio(theirs, context),
    }
    return result


# ---- the data transforms --------------------------------------------------------------------------------------


def transforms(checkout: OriginalCheckout, seeds: int = 200) -> dict[str, Any]:
    """Its Stage B image and fMRI transforms and ours on the same inputs under the same seeds."""
    stage_b_script = checkout.module("stageB_ldm_finetune")
    from torchvision import transforms as T

    size, crop_ratio = 256, 0.2
    theirs = T.Compose(
        [
            stage_b_script.normalize,
            stage_b_script.random_crop(size - int(crop_ratio * size), p=0.5),
            T.Resize((size, size)),
        ]
    )
    ours = model_image_transform(size, crop_ratio)
    g = np.random.default_rng(0)
    image = g.integers(0, 256, (size, size, 3), dtype=np.uint8)
    worst, cropped = 0.0, 0
    for s in range(seeds):
        torch.manual_seed(s)
        with checkout.quiet():
            a = theirs(image.astype(np.float32) / 255.0)
        torch.manual_seed(s)
        b = ours(image)
        worst = max(worst, (a - b).abs().max().item())
        cropped += int(not torch.allclose(b, ours.fns[0](image)))
    fmri = torch.randn(1, 4656)
    np.random.seed(0)
    with checkout.quiet():
        sparse = stage_b_script.fmri_transform(fmri.numpy())
    return {
        "seeds": seeds,
        "image_max_abs_difference": worst,
        "cropped_share": cropped / seeds,
        "fmri_sparse_changed_voxels": int((sparse != fmri).sum()),
        "fmri_dropout0_changed_voxels": int((RandomVoxelDropout(0.0)(fmri) != fmri).sum()),
    }


# ---- report ---------------------------------------------------------------------------------------------------


def figure(results: dict[str, Any], path: Path) -> None:
    """Loss per step, ours and the original's, and their relative difference, for each stage."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, stage in enumerate(("stage_a1", "stage_b")):
        r = results[stage]
        top, bottom = axes[0, col], axes[1, col]
        top.plot(r["loss_original"], lw=2.5, alpha=0.5, label="original (its loop)")
        top.plot(r["loss_ours"], lw=0.9, label="ours")
        top.set(
            title=f"{'Stage A1 (MAE)' if stage == 'stage_a1' else 'Stage B (DC-LDM)'}: training loss per step",
            xlabel="step",
            ylabel="loss",
        )
        top.legend(fontsize=8)
        bottom.semilogy(np.maximum(r["rel_loss_difference_by_step"], 1e-12))
        bottom.set(title="|ours - original| / original", xlabel="step", ylim=(1e-10, 1))
    fig.savefig(path, dpi=100)


PARTS = ("transforms", "start", "training")


def start_table(r: dict[str, Any]) -> str:
    """The start of double conditioning, ours under each `--time_cond_start` against the original's."""
    rows = [
        f"Double conditioning's start ({r['ldm']}, its {len(r['left_out_of_the_file'])} time_embed_condtion tensors "
        "left out of the file; the original then keeps them at PyTorch's initialisation):",
        "",
        "| built by | time_embed_condtion equal to the original's | max abs. difference | "
        "norm added to the timestep embedding (ratio) |",
        "| --- | --- | --- | --- |",
        f"| the original (`fLDM`) | | | {r['original']['added_over_timestep_embedding']:.3f} |",
    ]
    for start in ("published", "zero"):
        s = r[start]
        rows.append(
            f"| ours, `--time_cond_start {start}` | {'yes' if s['identical_to_original'] else 'no'} | "
            f"{s['max_abs_difference']:.1e} | {s['added_over_timestep_embedding']:.3f} |"
        )
    return "\n".join(rows)


def table(results: dict[str, Any]) -> str:
    rows = [
        "| stage | steps | trained tensors (both) | only ours / only original | hyper-parameters differ | "
        "first step: rel. loss diff. | max rel. loss diff. | max lr diff. | weights apart / update at the end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage in ("stage_a1", "stage_b", "stage_b_duplicates_emulated"):
        r = results[stage]
        rows.append(
            f"| {stage} | {r['steps']} | {r['trained_parameters']} | {len(r['trained_only_by_ours'])} / "
            f"{len(r['trained_only_by_original'])} | {len(r['hyper_parameters_differ'])} | "
            f"{r['first_step_rel_loss_difference']:.1e} | {r['max_rel_loss_difference']:.1e} | "
            f"{r['max_lr_difference']:.1e} | {r['weights_apart_over_update']:.1e} |"
        )
    t = results["transforms"]
    rows += [
        "",
        f"Image transform (crop ratio 0.2, p 0.5) over {t['seeds']} seeds: max |ours - original| "
        f"{t['image_max_abs_difference']:.1e} ({t['cropped_share']:.0%} cropped); fMRI: the original's sparse "
        f"transform changed {t['fmri_sparse_changed_voxels']} voxels, ours at rate 0 "
        f"{t['fmri_dropout0_changed_voxels']}.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=Path, required=True, metavar="PATH", help="a checkout of zjc062/mind-vis")
    p.add_argument("--steps", type=int, default=300, help="training steps per stage")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to compare (default: all): the transforms, double conditioning's start, the training runs",
    )
    p.add_argument(
        "--start_ldm",
        type=Path,
        default=None,
        help="label LDM folder (config.yaml, model.ckpt) for the start (default: the demo's, else a toy one)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=repo.RESULTS_DIR, help="folder for dynamics-cpu.json")
    p.add_argument("--figure", type=Path, default=repo.ROOT / "docs" / "dynamics.png")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = p.parse_args(argv)
    if args.steps < 3:
        raise UsageError(f"--steps must be at least 3, got {args.steps}")
    checkout = OriginalCheckout(args.original)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    started = time.time()
    results: dict[str, Any] = {}
    if "transforms" in args.parts:
        results["transforms"] = transforms(checkout)
    if "start" in args.parts:
        results["conditioning_start"] = conditioning_start(checkout, args.start_ldm, args.seed)
        print(start_table(results["conditioning_start"]))
    runs = {
        "stage_a1": stage_a1,
        "stage_b": stage_b,
        "stage_b_duplicates_emulated": lambda *a: stage_b(*a, duplicates=True),
    }
    for name, run in runs.items() if "training" in args.parts else ():
        start = time.time()
        with contextlib.redirect_stderr(io.StringIO()):  # Lightning's and the original's chatter
            results[name] = run(checkout, args.steps, args.seed)
        results[name]["seconds"] = round(time.time() - start, 1)
        print(f"{name}: {args.steps} steps in {results[name]['seconds']} s")
    record = {
        "script": "dynamics",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": report.git_commit(),
        "original": checkout.commit,
        "torch": torch.__version__,
        "seed": args.seed,
        "total_s": round(time.time() - started, 1),
        **results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    complete = set(args.parts) == set(PARTS)
    path = args.out / ("dynamics-cpu.json" if complete else f"dynamics-{'-'.join(sorted(args.parts))}-cpu.json")
    path.write_text(json.dumps(record, indent=1) + "\n")
    if complete:  # the figure and the table need the training runs and the transforms
        figure(results, args.figure)
        print(table(results))
    print(f"\nwrote {path}" + (f" and {args.figure}" if complete else ""))
    return path


if __name__ == "__main__":
    run_main(main)
