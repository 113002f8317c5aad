"""Stage A2 (SC-MBM): finetune the pre-trained fMRI masked autoencoder on the target data set's test fMRI.

    python code/stageA2_mbm_finetune.py --dataset GOD --pretrain_mbm_path results/stageA1/<run>/checkpoint.pth
    python code/stageA2_mbm_finetune.py --dataset BOLD5000 --bold5000_subs CSI1 --pretrain_mbm_path PATH
    torchrun --nproc_per_node=4 code/stageA2_mbm_finetune.py --dataset GOD --pretrain_mbm_path PATH
    python code/stageA2_mbm_finetune.py --resume results/stageA2/<run>     # continue the run in its folder

Keeps training the masked-reconstruction objective on the test fMRI only (GOD: averaged and, with
`include_nonavg_test`, single test trials of `kam_subs`; BOLD5000 likewise), wrap-padded or cut to the
pre-trained voxel count `(pos_embed.shape[1] - 1) * patch_size`. The architecture and patch size come from the
checkpoint's config (ours or a published `fmri_encoder.pth`), never from flags. Writes
`<output_path>/stageA2/<timestamp>/` with config.yaml, log.txt, metrics.jsonl, recon_epoch<N>.png and
checkpoint.pth, whose `config` is the Stage A architecture (as in the published `fmri_encoder.pth`, so Stage B
rebuilds the encoder from it) and `finetune_config` this run's settings. Stage B reads checkpoint.pth as its
`--pretrain_mbm_path`. With `--val_images N`, N test images (all their fMRI) are left out of training and
reconstructed with fixed masks before training and after every epoch: metrics.jsonl then holds
`val_test_{loss,cor,masked_cor}`, the learning curve on fMRI the stage never saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from checkpoint_layouts import load_weights, read_stage_a, save_stage_a
from config import StageA2Config
from config_engine import config_to_dict, parse_config
from dataset import FMRIDataset, split_images
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
from errors import UserError, run_main
from readers.arrays import fit_voxels
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
from sc_mbm.mae_for_fmri import build_mae
from sc_mbm.reconstruction import score_sets
from sc_mbm.training import mae_step, pick_examples
from sc_mbm.visualize import save_reconstruction_figure
from targets import load_target


def main(cfg: StageA2Config) -> Path:
    """Finetune a Stage A checkpoint on GOD or BOLD5000 test fMRI; returns the run folder."""
    # ---- checks that need no data: device, precision, output folder, the checkpoint we start from
    dist_info = init_distributed()
    device = dist_info.device
    amp = AmpScaler(cfg.precision, device)
    check_output_folder(cfg.output_path)
    resume = resume_checkpoint_path(cfg) if cfg.resume else None
    source = read_stage_a(resume or cfg.pretrain_mbm_path)  # architecture, weights (and, resuming, its state)
    cfg.patch_size = source.arch["patch_size"]
    seed_everything(cfg.seed, dist_info.rank)

    # ---- data: the test fMRI, fitted to the pre-trained voxel count
    num_voxels = source.arch["num_voxels"]
    _, test_set = load_target(cfg, cfg.patch_size, cfg.include_nonavg_test)
    val_sets = {}
    if cfg.val_images:
        test_set, held = split_images(test_set, cfg.val_images, "--val_images")
        if len(test_set) == 0:
            raise UserError(f"--val_images {cfg.val_images} leaves no test image to train on; hold out fewer")
        val_sets["test"] = torch.from_numpy(fit_voxels(held.fmri, num_voxels))
    dataset = FMRIDataset(fit_voxels(test_set.fmri, num_voxels))
    loader = make_loader(dataset, cfg.batch_size, cfg.seed, dist_info, cfg.num_workers)

    # ---- model and optimiser
    model = build_mae(source.arch).to(device)
    use_attention(model, attention_kind(device, amp.precision))
    load_weights(model, source.model, source.path)
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
            config_key="finetune_config",
            ckpt=source.raw,
        )
    architecture = {**source.config, **source.arch}  # what Stage B rebuilds the encoder from

    with training_run(cfg, "stageA2", dist_info, amp, resume, start_epoch) as run:
        run_dir = run.folder
        if dist_info.is_main:
            how = {-1: "padded", 0: "kept", 1: "cut"}[int(np.sign(test_set.num_voxels - num_voxels))]
            log.info(
                "data: %s %s, %d test fMRI of %d voxels, %s to %d (pre-trained); %d process(es), %s on %s "
                "(%s attention)",
                cfg.dataset,
                cfg.subjects,
                len(dataset),
                test_set.num_voxels,
                how,
                num_voxels,
                dist_info.world_size,
                amp.precision,
                device,
                attention_kind(device, amp.precision),
            )
        examples = pick_examples(dataset.fmri)
        if val_sets and start_epoch == 0 and dist_info.is_main:
            scores = score_sets(model, val_sets, cfg.mask_ratio, cfg.batch_size, amp.precision, cfg.seed)
            append_jsonl(run_dir / "metrics.jsonl", {"epoch": -1, **scores})
            log.info("held-out test fMRI before training: %s", "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))

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
                stats |= score_sets(model, val_sets, cfg.mask_ratio, cfg.batch_size, amp.precision, cfg.seed)
                record_epoch(run_dir, epoch, stats, start_epoch, cfg.num_epoch, started, run.wandb)
            if (epoch + 1) % cfg.ckpt_every == 0 or epoch + 1 == cfg.num_epoch:
                if dist_info.is_main:
                    figure, title = run_dir / f"recon_epoch{epoch}.png", f"Stage A2 ({cfg.dataset}), epoch {epoch}"
                    save_reconstruction_figure(
                        model, examples, cfg.mask_ratio, amp.precision, figure, title, seed=cfg.seed
                    )
                save_stage_a(
                    run_dir,
                    model,
                    optimizer,
                    amp.state_dict(),
                    epoch=epoch,
                    stored_config=architecture,
                    finetune_config=config_to_dict(cfg),
                    dist_info=dist_info,
                )
    return run_dir


if __name__ == "__main__":
    run_main(lambda: main(parse_config(StageA2Config, usage=__doc__)))
