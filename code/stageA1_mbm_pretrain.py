"""Stage A1 (SC-MBM): pre-train the fMRI masked autoencoder on HCP resting state (+ GOD training fMRI).

    python code/stageA1_mbm_pretrain.py                                   # published defaults: data/HCP, data/Kamitani
    python code/stageA1_mbm_pretrain.py --no-include_kam --num_epoch 800 --mask_ratio 0.65
    torchrun --nproc_per_node=8 code/stageA1_mbm_pretrain.py              # DDP, one process per GPU
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 code/stageA1_mbm_pretrain.py
    python code/stageA1_mbm_pretrain.py --resume results/stageA1/<run>/checkpoint.pth   # same flags as the run

Writes `<output_path>/stageA1/<timestamp>/`: config.yaml, log.txt, metrics.jsonl (one line per epoch),
recon_epoch<N>.png and checkpoint.pth (every `ckpt_every` epochs and at the end; the published layout
`model, optimizer, epoch, scaler, config` plus `rng`). Stage A2 finetunes checkpoint.pth.
With `--val_hcp_path DIR` (HCP subjects left out of hcp_path) and/or `--val_kam_subs sbj_3` (GOD test fMRI),
held-out fMRI is reconstructed with fixed masks after every epoch; metrics.jsonl then holds
`val_<hcp|god>_{loss,cor,masked_cor}`, the line of epoch -1 being before training.
`MINDVIS_DEBUG_DUMP=<folder>` in the environment makes every rank write a hash of its final weights and the
sample indices it drew (sc_mbm/trainer.py; the two-process test reads them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from checkpoint import load_checkpoint
from config import ConfigError, StageA1Config, config_to_dict, format_config, parse_config, save_config
from dataset import HCP_FILE, create_god_dataset, create_hcp_dataset
from runtime import (
    append_jsonl,
    init_distributed,
    init_wandb,
    make_run_dir,
    seed_everything,
    setup_logging,
)
from sc_mbm.loop import fit, make_optimizer
from sc_mbm.trainer import (
    ARCH_FIELDS,
    AmpScaler,
    build_mae,
    evaluate,
    make_loader,
    match_voxels,
    resume_training,
    stage_a_config_from_checkpoint,
)
from sc_mbm.visualize import pick_examples


def check_same_architecture(cfg: StageA1Config, ckpt: dict, path: str) -> None:
    """A resumed run must build the model it resumes: same architecture and voxel count."""
    saved = stage_a_config_from_checkpoint(ckpt, path)
    fields = (*ARCH_FIELDS, "num_voxels")
    diff = [
        f"{k} {getattr(saved, k)} there, {getattr(cfg, k)} here"
        for k in fields
        if getattr(saved, k) != getattr(cfg, k)
    ]
    if diff:
        raise ConfigError(
            f"--resume {path} was trained with another architecture or data ({'; '.join(diff)}); "
            f"pass the same flags, e.g. --config <its run folder>/config.yaml"
        )


def _hcp_subjects(path: str, limit: int | None = None) -> list[str]:
    return sorted(s for s in os.listdir(path) if (Path(path) / s / HCP_FILE).is_file())[:limit]


def held_out_fmri(cfg: StageA1Config) -> dict[str, torch.Tensor]:
    """The held-out sets scored after every epoch, each (N, 1, num_voxels): wrap-padded or cut like Stage A2."""
    sets: dict[str, np.ndarray] = {}
    if cfg.val_hcp_path:
        trained = _hcp_subjects(cfg.hcp_path, cfg.num_sub_limit) if cfg.include_hcp else []
        shared = set(_hcp_subjects(cfg.val_hcp_path)) & set(trained)
        if shared:
            raise ConfigError(
                f"val_hcp_path shares subjects with hcp_path, so they are not held out: {sorted(shared)}"
            )
        sets["hcp"] = create_hcp_dataset(cfg.val_hcp_path, cfg.roi, cfg.patch_size).fmri
    if cfg.val_kam_subs:  # responses to the GOD test images, which pre-training never sees
        sets["god"] = create_god_dataset(cfg.kam_path, cfg.roi, cfg.patch_size, subjects=cfg.val_kam_subs)[1].fmri
    return {name: torch.from_numpy(match_voxels(fmri, cfg.num_voxels)) for name, fmri in sets.items()}


def score_held_out(model, val_sets: dict, cfg: StageA1Config, amp: AmpScaler) -> dict[str, float]:
    """{'val_<set>_<metric>': value} for every held-out set (fixed masks from the run's seed)."""
    scores = {}
    for name, fmri in val_sets.items():
        for metric, value in evaluate(model, fmri, cfg.mask_ratio, amp, cfg.batch_size, cfg.seed).items():
            scores[f"val_{name}_{metric}"] = value
    return scores


def main(cfg: StageA1Config) -> Path:
    """Pre-train on HCP (+ GOD); returns the run folder."""
    if cfg.use_nature_img_loss:
        raise ConfigError("use_nature_img_loss needs ImageNet image features of the GOD stimuli; not supported here")
    dist_info = init_distributed()
    device = dist_info.device
    seed_everything(cfg.seed, dist_info.rank)
    run_dir = make_run_dir(cfg.output_path, "stageA1", dist_info)
    log = setup_logging(run_dir, dist_info.is_main)
    amp = AmpScaler(cfg.precision, device)

    # ---- data: HCP window means (+ GOD training fMRI), all padded to one voxel count
    dataset = create_hcp_dataset(
        cfg.hcp_path,
        cfg.roi,
        cfg.patch_size,
        aug_times=cfg.aug_times,
        num_sub_limit=cfg.num_sub_limit,
        include_kam=cfg.include_kam,
        kam_path=cfg.kam_path,
        include_hcp=cfg.include_hcp,
        seed=cfg.seed,
    )
    cfg.num_voxels = dataset.num_voxels
    val_sets = held_out_fmri(cfg)
    loader = make_loader(dataset, cfg.batch_size, cfg.seed, dist_info, cfg.num_workers)
    if dist_info.is_main:
        save_config(cfg, run_dir)
        log.info("Stage A1 config:\n%s", format_config(cfg))
        where = f"{dist_info.world_size} process(es), {amp.precision} on {device}"
        log.info("data: %d samples of %d voxels; %s", len(dataset), cfg.num_voxels, where)

    # ---- model and optimiser
    model = build_mae(cfg, cfg.focus_range, cfg.focus_rate).to(device)
    optimizer = make_optimizer(model, cfg)
    log.info("model: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)

    # ---- resume (restores the RNG streams last, just before the loop)
    start_epoch = 0
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        check_same_architecture(cfg, ckpt, cfg.resume)
        start_epoch = resume_training(ckpt, cfg.resume, model, optimizer, amp, dist_info)
        del ckpt
    wandb_run = init_wandb(cfg.use_wandb, cfg.wandb_project, run_dir, config_to_dict(cfg), dist_info.is_main)
    examples = pick_examples(next(iter(val_sets.values())).numpy() if val_sets else dataset.fmri)
    if val_sets and start_epoch == 0 and dist_info.is_main:
        scores = score_held_out(model, val_sets, cfg, amp)
        log.info("held-out fMRI before training: %s", "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        append_jsonl(run_dir / "metrics.jsonl", {"epoch": -1, **scores})

    fit(model, loader, optimizer, amp, cfg, dist_info, run_dir, start_epoch, wandb_run, examples, "Stage A1",
        (config_to_dict(cfg), {}), score=lambda: score_held_out(model, val_sets, cfg, amp))  # fmt: skip
    return run_dir


if __name__ == "__main__":
    main(parse_config(StageA1Config))
