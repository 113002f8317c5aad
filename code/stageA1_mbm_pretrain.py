"""Stage A1 (SC-MBM): pre-train the fMRI masked autoencoder on HCP resting state and GOD training fMRI (or any
corpus of `corpora.py`: NSD trials, a folder of your own arrays).

    python code/stageA1_mbm_pretrain.py                                   # published defaults: data/HCP, data/Kamitani
    python code/stageA1_mbm_pretrain.py --no-include_kam --num_epoch 800 --mask_ratio 0.65
    python code/stageA1_mbm_pretrain.py --include_nsd --nsd_subs subj01 subj02     # add NSD's training trials
    python code/stageA1_mbm_pretrain.py --no-include_hcp --no-include_kam --fmri_folder my_fmri/   # yours alone
    torchrun --nproc_per_node=8 code/stageA1_mbm_pretrain.py              # DDP, one process per GPU
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 code/stageA1_mbm_pretrain.py
    python code/stageA1_mbm_pretrain.py --resume results/stageA1/<run>   # continue the run in its folder

Writes `<output_path>/stageA1/<timestamp>/`: config.yaml, log.txt, metrics.jsonl (one line per epoch),
recon_epoch<N>.png and checkpoint.pth (every `ckpt_every` epochs and at the end; the published
`fmri_encoder.pth` layout plus every rank's RNG state). Stage A2 finetunes checkpoint.pth. With
`--val_hcp_path DIR` (HCP subjects left out of hcp_path) and/or `--val_kam_subs sbj_3` (GOD test fMRI, which
pre-training never sees) held-out fMRI is reconstructed with fixed masks after every epoch: metrics.jsonl then
holds `val_<hcp|god>_{loss,cor,masked_cor}`, epoch -1 being before training. See docs/method.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from checkpoint_layouts import save_stage_a
from config import StageA1Config
from config_engine import ConfigError, config_to_dict, parse_config
from corpora import pretraining_fmri
from dataset import FMRIDataset
from engine import (
    AmpScaler,
    Schedule,
    make_loader,
    make_optimizer,
    record_epoch,
    train_one_epoch,
    training_run,
    wrap_ddp,
)
from errors import run_main
from readers.arrays import fit_voxels
from readers.god import create_god_dataset
from readers.hcp import HCP_FILE, create_hcp_dataset
from resume import SCHEDULE_FIELDS, resume_checkpoint_path, resume_training
from runtime import (
    append_jsonl,
    attention_kind,
    check_output_folder,
    init_distributed,
    log,
    seed_everything,
    use_attention,
)
from sc_mbm import reconstruction
from sc_mbm.architecture import ARCH_FIELDS
from sc_mbm.mae_for_fmri import build_mae
from sc_mbm.training import mae_step, pick_examples
from sc_mbm.visualize import save_reconstruction_figure


def pretraining_data(cfg: StageA1Config) -> FMRIDataset:
    """The pre-training fMRI (N, 1, V) of the corpora the config switches on (`corpora.CORPORA`)."""
    return FMRIDataset(pretraining_fmri(cfg)[:, None])


def held_out_fmri(cfg: StageA1Config) -> dict[str, torch.Tensor]:
    """The held-out sets scored after every epoch, each (N, 1, num_voxels): wrap-padded or cut like Stage A2."""
    sets = {}
    if cfg.val_hcp_path:
        trained = _hcp_subjects(cfg.hcp_path, cfg.num_sub_limit) if cfg.include_hcp else []
        shared = set(_hcp_subjects(cfg.val_hcp_path)) & set(trained)
        if shared:
            raise ConfigError(
                f"val_hcp_path shares subjects with hcp_path, so they are not held out: {sorted(shared)}"
            )
        sets["hcp"] = create_hcp_dataset(cfg.val_hcp_path, cfg.roi, cfg.patch_size).fmri
    if cfg.val_kam_subs:
        sets["god"] = create_god_dataset(cfg.kam_path, cfg.roi, cfg.patch_size, subjects=cfg.val_kam_subs)[1].fmri
    return {name: torch.from_numpy(fit_voxels(fmri, cfg.num_voxels)) for name, fmri in sets.items()}


def _hcp_subjects(path: str, limit: int | None = None) -> list[str]:
    return sorted(s for s in os.listdir(path) if (Path(path) / s / HCP_FILE).is_file())[:limit]


def score_held_out(model, val_sets: dict, cfg: StageA1Config, amp: AmpScaler) -> dict[str, float]:
    """{'val_<set>_<metric>': value} for every held-out set (fixed masks from the run's seed)."""
    return reconstruction.score_sets(model, val_sets, cfg.mask_ratio, cfg.batch_size, amp.precision, cfg.seed)


def main(cfg: StageA1Config) -> Path:
    """Pre-train on HCP (+ GOD); returns the run folder."""
    # ---- checks that need no data: device, precision, output folder, the run to resume
    dist_info = init_distributed()
    device = dist_info.device
    amp = AmpScaler(cfg.precision, device)
    check_output_folder(cfg.output_path)
    resume = resume_checkpoint_path(cfg) if cfg.resume else None
    seed_everything(cfg.seed, dist_info.rank)

    # ---- data: HCP window means (+ GOD training fMRI, + NSD training trials), all padded to one voxel count
    dataset = pretraining_data(cfg)
    cfg.num_voxels = dataset.num_voxels
    val_sets = held_out_fmri(cfg)
    loader = make_loader(dataset, cfg.batch_size, cfg.seed, dist_info, cfg.num_workers)

    # ---- model and optimiser
    model = build_mae(config_to_dict(cfg), cfg.focus_range, cfg.focus_rate).to(device)
    use_attention(model, attention_kind(device, amp.precision))
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    train_model = wrap_ddp(model, dist_info)
    schedule = Schedule(cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.num_epoch)

    # ---- resume (restores the RNG streams last, just before the loop)
    start_epoch = 0
    if resume:
        start_epoch, _ = resume_training(
            resume,
            cfg,
            model,
            model_key="model",
            optimizer=optimizer,
            amp=amp,
            dist_info=dist_info,
            schedule_fields=SCHEDULE_FIELDS,
            same_fields=(*ARCH_FIELDS, "num_voxels"),
        )

    with training_run(cfg, "stageA1", dist_info, amp, resume, start_epoch) as run:
        run_dir = run.folder
        if dist_info.is_main:
            log.info(
                "data: %d samples of %d voxels; %d process(es), %s on %s (%s attention); model: %.2fM parameters",
                len(dataset),
                cfg.num_voxels,
                dist_info.world_size,
                amp.precision,
                device,
                attention_kind(device, amp.precision),
                sum(p.numel() for p in model.parameters()) / 1e6,
            )
        examples = pick_examples(next(iter(val_sets.values())).numpy() if val_sets else dataset.fmri)
        if val_sets and start_epoch == 0 and dist_info.is_main:
            scores = score_held_out(model, val_sets, cfg, amp)
            append_jsonl(run_dir / "metrics.jsonl", {"epoch": -1, **scores})
            log.info("held-out fMRI before training: %s", "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))

        # ---- the loop
        started = time.time()
        for epoch in range(start_epoch, cfg.num_epoch):
            loader.sampler.set_epoch(epoch)
            stats = train_one_epoch(
                train_model,
                loader,
                optimizer,
                amp,
                epoch=epoch,
                step=mae_step(cfg.mask_ratio),
                schedule=schedule,
                accum_iter=cfg.accum_iter,
                clip_grad=cfg.clip_grad,
                log_every=cfg.log_every,
            )
            if dist_info.is_main:
                stats |= score_held_out(model, val_sets, cfg, amp)
                record_epoch(run_dir, epoch, stats, start_epoch, cfg.num_epoch, started, run.wandb)
            if (epoch + 1) % cfg.ckpt_every == 0 or epoch + 1 == cfg.num_epoch:
                if dist_info.is_main:
                    figure, title = run_dir / f"recon_epoch{epoch}.png", f"Stage A1, epoch {epoch}"
                    save_reconstruction_figure(
                        model, examples, cfg.mask_ratio, amp.precision, figure, title, seed=cfg.seed
                    )
                save_stage_a(
                    run_dir,
                    model,
                    optimizer,
                    amp.state_dict(),
                    epoch=epoch,
                    stored_config=config_to_dict(cfg),
                    dist_info=dist_info,
                )
    return run_dir


if __name__ == "__main__":
    run_main(lambda: main(parse_config(StageA1Config, usage=__doc__)))
