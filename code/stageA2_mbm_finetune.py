"""Stage A2 (SC-MBM): finetune the pre-trained fMRI masked autoencoder on the target data set's test fMRI.

    python code/stageA2_mbm_finetune.py --dataset GOD --pretrain_mbm_path results/stageA1/<run>/checkpoint.pth
    python code/stageA2_mbm_finetune.py --dataset BOLD5000 --bold5000_subs CSI1 --pretrain_mbm_path PATH
    torchrun --nproc_per_node=4 code/stageA2_mbm_finetune.py --dataset GOD --pretrain_mbm_path PATH
    python code/stageA2_mbm_finetune.py --dataset GOD --resume results/stageA2/<run>/checkpoint.pth

Keeps training the masked-reconstruction objective on the test fMRI only (GOD: averaged and, with
`include_nonavg_test`, single test trials of `kam_subs`; BOLD5000 likewise), wrap-padded or truncated to the
pre-trained voxel count `(pos_embed.shape[1] - 1) * patch_size`. The architecture comes from the checkpoint's
config (ours or a published `fmri_encoder.pth`), never from flags. Writes `<output_path>/stageA2/<timestamp>/`
with config.yaml, log.txt, metrics.jsonl, recon_epoch<N>.png and checkpoint.pth, whose `config` is the Stage A
architecture config (as in the published `fmri_encoder.pth`, so Stage B rebuilds the encoder from it) and
`finetune_config` this run's settings. Stage B reads checkpoint.pth as its `--pretrain_mbm_path`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from config import StageA2Config, config_to_dict, format_config, parse_config, save_config
from dataset import FMRIDataset, load_target_dataset
from runtime import (
    append_jsonl,
    barrier,
    cleanup_distributed,
    init_distributed,
    init_wandb,
    make_run_dir,
    seed_everything,
    setup_logging,
)
from sc_mbm.trainer import (
    AmpScaler,
    build_mae,
    load_model_state,
    make_loader,
    match_voxels,
    param_groups_weight_decay,
    resume_training,
    stage_a_config_from_checkpoint,
    train_one_epoch,
    training_state,
    write_debug_dump,
)
from sc_mbm.visualize import pick_examples, save_reconstruction_figure


def main(cfg: StageA2Config) -> Path:
    """Finetune a Stage A checkpoint on GOD or BOLD5000 test fMRI; returns the run folder."""
    source = cfg.resume or cfg.pretrain_mbm_path  # the checkpoint we start from
    if not Path(source).is_file():
        raise CheckpointError(
            f"Stage A checkpoint not found: {source}. Run stageA1_mbm_pretrain.py (or download the published "
            f"pretrains/{cfg.dataset}/fmri_encoder.pth) and pass it with --pretrain_mbm_path"
        )
    dist_info = init_distributed()
    device = dist_info.device
    seed_everything(cfg.seed, dist_info.rank)
    run_dir = make_run_dir(cfg.output_path, "stageA2", dist_info)
    log = setup_logging(run_dir, dist_info.is_main)
    amp = AmpScaler(cfg.precision, device)

    # ---- architecture and voxel count from the checkpoint's config
    ckpt = load_checkpoint(source)
    arch = stage_a_config_from_checkpoint(ckpt, source)
    if cfg.patch_size != arch.patch_size:
        log.warning("patch_size %d from the checkpoint replaces --patch_size %d", arch.patch_size, cfg.patch_size)
        cfg.patch_size = arch.patch_size

    # ---- data: the test fMRI, fitted to the pre-trained voxel count
    _, test_set = load_target_dataset(cfg, include_nonavg_test=cfg.include_nonavg_test)
    dataset = FMRIDataset(match_voxels(test_set.fmri, arch.num_voxels))
    loader = make_loader(dataset, cfg.batch_size, cfg.seed, dist_info, cfg.num_workers)
    if dist_info.is_main:
        save_config(cfg, run_dir)
        log.info("Stage A2 config:\n%s", format_config(cfg))
        fit = {-1: "padded", 0: "kept", 1: "cut"}[int(np.sign(test_set.num_voxels - arch.num_voxels))]
        data = f"{cfg.dataset} {cfg.subjects}, {len(dataset)} test fMRI of {test_set.num_voxels} voxels"
        where = f"{dist_info.world_size} process(es), {amp.precision} on {device}"
        log.info("data: %s, %s to %d (pre-trained); %s", data, fit, arch.num_voxels, where)

    # ---- model and optimiser
    model = build_mae(arch).to(device)
    load_model_state(model, ckpt["model"], source)
    train_model = model  # the unwrapped model is the one saved
    if dist_info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))

    # ---- resume (restores the RNG streams last, just before the loop)
    start_epoch = 0
    if cfg.resume:
        start_epoch = resume_training(ckpt, cfg.resume, model, optimizer, amp, dist_info)
    del ckpt
    wandb_run = init_wandb(cfg.use_wandb, cfg.wandb_project, run_dir, config_to_dict(cfg), dist_info.is_main)
    examples = pick_examples(dataset.fmri)

    # ---- loop
    for epoch in range(start_epoch, cfg.num_epoch):
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, loader, optimizer, amp, epoch, cfg, dist_info.is_main, wandb_run)
        if dist_info.is_main:
            append_jsonl(run_dir / "metrics.jsonl", {"epoch": epoch, **stats})
            log.info("epoch %d done: %s", epoch, "  ".join(f"{k} {v:.4g}" for k, v in stats.items()))
            if wandb_run is not None:
                wandb_run.log({f"epoch/{k}": v for k, v in stats.items()} | {"epoch": epoch})
        if (epoch + 1) % cfg.ckpt_every == 0 or epoch + 1 == cfg.num_epoch:
            if dist_info.is_main:
                figure, title = run_dir / f"recon_epoch{epoch}.png", f"Stage A2 ({cfg.dataset}), epoch {epoch}"
                save_reconstruction_figure(model, examples, cfg.mask_ratio, amp, figure, title, seed=cfg.seed)
            state = training_state(
                model, optimizer, amp, epoch, config_to_dict(arch), finetune_config=config_to_dict(cfg)
            )
            if dist_info.is_main:
                save_checkpoint(state, run_dir / "checkpoint.pth")
                log.info("checkpoint written: %s", run_dir / "checkpoint.pth")
            barrier()

    # ---- final artefacts
    write_debug_dump(model, loader, range(start_epoch, cfg.num_epoch), dist_info)
    if wandb_run is not None:
        wandb_run.finish()
    cleanup_distributed()
    return run_dir


if __name__ == "__main__":
    main(parse_config(StageA2Config))
