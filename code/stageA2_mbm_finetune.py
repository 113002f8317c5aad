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

from checkpoint import CheckpointError, load_checkpoint
from config import StageA2Config, config_to_dict, format_config, parse_config, save_config
from dataset import FMRIDataset, load_target_dataset
from runtime import (
    init_distributed,
    init_wandb,
    make_run_dir,
    seed_everything,
    setup_logging,
)
from sc_mbm.loop import fit, make_optimizer
from sc_mbm.trainer import (
    AmpScaler,
    build_mae,
    load_model_state,
    make_loader,
    match_voxels,
    resume_training,
    stage_a_config_from_checkpoint,
)
from sc_mbm.visualize import pick_examples


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
        how = {-1: "padded", 0: "kept", 1: "cut"}[int(np.sign(test_set.num_voxels - arch.num_voxels))]
        data = f"{cfg.dataset} {cfg.subjects}, {len(dataset)} test fMRI of {test_set.num_voxels} voxels"
        where = f"{dist_info.world_size} process(es), {amp.precision} on {device}"
        log.info("data: %s, %s to %d (pre-trained); %s", data, how, arch.num_voxels, where)

    # ---- model and optimiser
    model = build_mae(arch).to(device)
    load_model_state(model, ckpt["model"], source)
    optimizer = make_optimizer(model, cfg)

    # ---- resume (restores the RNG streams last, just before the loop)
    start_epoch = 0
    if cfg.resume:
        start_epoch = resume_training(ckpt, cfg.resume, model, optimizer, amp, dist_info)
    del ckpt
    wandb_run = init_wandb(cfg.use_wandb, cfg.wandb_project, run_dir, config_to_dict(cfg), dist_info.is_main)
    examples = pick_examples(dataset.fmri)

    fit(model, loader, optimizer, amp, cfg, dist_info, run_dir, start_epoch, wandb_run, examples,
        f"Stage A2 ({cfg.dataset})", (config_to_dict(arch), config_to_dict(cfg)))  # fmt: skip
    return run_dir


if __name__ == "__main__":
    main(parse_config(StageA2Config))
