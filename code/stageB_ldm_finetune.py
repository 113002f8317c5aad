"""Stage B (DC-LDM): finetune the label-conditioned LDM to be conditioned on fMRI.

    python code/stageB_ldm_finetune.py --dataset GOD                       # sbj_3, the published defaults
    python code/stageB_ldm_finetune.py --dataset BOLD5000 --bold5000_subs CSI1 CSI2
    torchrun --nproc_per_node=8 code/stageB_ldm_finetune.py --dataset GOD  # DDP, one process per GPU
    python code/stageB_ldm_finetune.py --resume results/stageB/<run>       # continue the run in its folder
    python code/stageB_ldm_finetune.py --dataset GOD --select_on test     # select on test items (published)

Starts from `pretrains/ldm/label2img` (config.yaml + model.ckpt) and the Stage A encoder (`--pretrain_mbm_path`,
default `pretrains/<dataset>/fmri_encoder.pth`) and trains only the conditioning path: the fMRI conditioner, the
UNet's cross-attention, the norms before it and the context projection into the timestep embedding (see
docs/method.md). Every `val_every` epochs it decodes `num_val_items` fMRI of the validation set, writes
`val_epoch<N>.png` and the scores, keeps the best model by n-way top-1 accuracy as `finetuned.pth` (the published
layout) and writes `checkpoint.pth`, which `--resume` continues from. The validation set is `val_split` training
images held out of training (the default), or with `--select_on test` the first test items, as the original chose
its model (docs/defects.md #14).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import eval_metrics
from checkpoint import save_checkpoint
from checkpoint_layouts import (
    CHECKPOINT,
    ENCODER_FIELDS,
    finetuned_checkpoint,
    read_selection,
    read_stage_a,
    stage_b_training_checkpoint,
)
from classifier_file import load_classifier_file
from config import StageBConfig
from config_engine import parse_config
from dataset import LatentViews
from dc_ldm.ldm_for_fmri import build_ldm_for_fmri
from dc_ldm.sampling import generate
from engine import AmpScaler, Schedule, fused_adam, make_loader, record_epoch, train_one_epoch, training_run, wrap_ddp
from errors import CheckpointError, UserError, run_main
from figures import image_grid
from resume import resume_checkpoint_path, resume_training
from runtime import (
    attention_kind,
    barrier,
    check_output_folder,
    init_distributed,
    log,
    seed_everything,
    use_attention,
)
from targets import stage_b_data


def conditioning_optimizer(model: torch.nn.Module, cfg: StageBConfig) -> torch.optim.AdamW:
    """Make the conditioning path trainable (less the conditioner's groups that `freeze_encoder` / `freeze_mapper`
    keep fixed) and return the AdamW over it: the published optimiser (its defaults, weight decay 0.01 on every
    parameter), fused."""
    frozen = ("encoder",) * cfg.freeze_encoder + ("mapper",) * cfg.freeze_mapper
    params = model.set_trainable(cond_path_only=True, frozen=frozen)
    return torch.optim.AdamW(params, lr=cfg.lr, fused=fused_adam(next(model.parameters()).device))


def ldm_step(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """The engine's step: the ε-prediction loss of a batch of {image, fmri} (the latents come from the frozen VQ)."""
    ldm = getattr(model, "module", model)  # DDP calls go through the wrapper, the frozen encoding need not
    if "latent" in batch:  # encoded once (LatentViews)
        return model(ldm.get_first_stage_encoding(batch["latent"]), batch["fmri"]), {}
    z, fmri = ldm.get_input(batch)  # (N, C, h, w), (N, 1, V)
    return model(z, fmri), {}


# The score that chooses the kept model, and the one used where no classifier gives n-way accuracy
SELECT_BY = ("top-1-class", "ssim")


class Validation:
    """Decode the first items of the validation set, score them, keep the best model as `finetuned.pth` (rank 0).

    The validation set is the images held out of the training pairs (`select_on val_split`, the default) or, as
    published, the test set (`select_on test`: the test score of the kept model is then chosen on test items)."""

    def __init__(self, cfg: StageBConfig, val_set, classifier: eval_metrics.Classifier | None):
        self.cfg, self.classifier = cfg, classifier
        n = min(cfg.num_val_items, len(val_set))
        self.fmri = torch.from_numpy(val_set.fmri[:n])
        self.gt = val_set.resized_images(cfg.img_size)[val_set.image_index[:n]]
        self.select_by = SELECT_BY[0]
        self.best = -float("inf")

    def resume(self, selection: tuple[float, str] | None) -> None:
        """Carry on the selection a resumed run's checkpoint holds (`checkpoint_layouts.read_selection`)."""
        if selection is not None:
            if selection[1] not in SELECT_BY:
                raise CheckpointError(
                    f"--resume {self.cfg.resume}: it selected by {selection[1]!r}, expected one of {SELECT_BY}"
                )
            self.best, self.select_by = selection

    def __call__(self, model, epoch: int, run_dir: Path, precision: str) -> dict[str, float]:
        cfg = self.cfg
        model.eval()
        samples = generate(
            model,
            self.fmri,
            cfg.num_samples,
            cfg.ddim_steps,
            batch_size=len(self.fmri),
            seed=cfg.seed,
            precision=precision,
            desc=f"validation, epoch {epoch}",
            guidance_scale=cfg.guidance_scale,
        )
        model.train()
        image_grid(self.gt, samples, run_dir / f"val_epoch{epoch:04d}.png")
        n_classes = getattr(self.classifier[0], "num_classes", None) if self.classifier else None
        result = eval_metrics.evaluate(
            self.gt,
            samples,
            metrics=["mse", "pcc", "ssim", "n_way"],
            classifier=self.classifier,
            n_way=min(50, n_classes or 50),
            num_trials=100,
            seed=cfg.seed,
            device=next(model.parameters()).device,
        )
        scores = {f"val/{k}": float(v) for k, v in result["scores"].items()}
        if SELECT_BY[0] not in result["scores"] and self.select_by == SELECT_BY[0]:
            self.select_by = SELECT_BY[1]  # no classifier available: keep the best by pair-wise SSIM instead
            log.info(
                "validation: n-way accuracy skipped (%s); selecting the best model by pair-wise SSIM",
                result["skipped"].get("n_way"),
            )
        if result["scores"][self.select_by] > self.best:
            self.best = result["scores"][self.select_by]
            save_checkpoint(finetuned_checkpoint(model, cfg), run_dir / "finetuned.pth")
            scores["val/best"] = 1.0
        return scores


def main(cfg: StageBConfig, classifier: eval_metrics.Classifier | None = None) -> Path:
    """Finetune the conditioning path; returns the run folder. `classifier` replaces cfg.classifier's file."""
    # ---- checks that need no data: device, precision, output folder, classifier, the Stage A and LDM files
    dist_info = init_distributed()
    device = dist_info.device
    amp = AmpScaler(cfg.precision, device)
    check_output_folder(cfg.output_path)
    resume = resume_checkpoint_path(cfg) if cfg.resume else None
    stage_a = read_stage_a(cfg.pretrain_mbm_path, ENCODER_FIELDS)
    cfg.patch_size, cfg.model_meta = stage_a.arch["patch_size"], {k: stage_a.arch[k] for k in ENCODER_FIELDS}
    if classifier is None and cfg.classifier is not None:
        classifier = load_classifier_file(cfg.classifier, device)
    seed_everything(cfg.seed, dist_info.rank)

    # ---- data: fMRI-image pairs (random crops, voxel dropout), the validation items, the test items
    train_set, val_set, test_set = stage_b_data(cfg, cfg.patch_size)

    # ---- model: the LDM with the fMRI conditioner, the Stage A encoder loaded; optimiser over the cond path
    model = build_ldm_for_fmri(
        cfg.pretrain_gm_path,
        stage_a.arch,
        train_set.num_voxels,
        conditioner=cfg.conditioner,
        use_time_cond=cfg.use_time_cond,
        cond_dropout=cfg.cond_dropout,
        time_cond_start=cfg.time_cond_start,
        encoder_weights=stage_a.model,
    ).to(device)
    use_attention(model, attention_kind(device, amp.precision))
    fit = None
    if cfg.ridge_init and not resume:
        if model.class_table is None:
            raise UserError(
                f"--ridge_init needs the label LDM's class embeddings: {cfg.pretrain_gm_path}/model.ckpt "
                "holds no cond_stage_model.embedding.weight"
            )
        fit = model.cond_stage_model.start_from_ridge(
            torch.from_numpy(train_set.fmri),
            train_set.item_labels(),
            model.class_table.to(device),
            cfg.seed,
        )
    optimizer = conditioning_optimizer(model, cfg)
    pairs = LatentViews(train_set, model, cfg.latent_views) if cfg.latent_views else train_set
    loader = make_loader(
        pairs, cfg.batch_size, cfg.seed, dist_info, cfg.num_workers, drop_last=len(train_set) > cfg.batch_size
    )
    train_model = wrap_ddp(model, dist_info)
    validation = Validation(cfg, val_set, classifier)

    # ---- resume (restores the RNG streams last, just before the loop)
    start_epoch = 0
    if resume:
        # the constant rate is the schedule
        start_epoch, ckpt = resume_training(
            resume,
            cfg,
            model,
            model_key="model_state_dict",
            optimizer=optimizer,
            amp=amp,
            dist_info=dist_info,
            schedule_fields=("lr",),
        )
        validation.resume(read_selection(ckpt, resume))
        del ckpt

    with training_run(cfg, "stageB", dist_info, amp, resume, start_epoch) as run:
        run_dir = run.folder
        if dist_info.is_main:
            log.info(
                "the kept model is chosen on %s",
                f"{len(val_set)} fMRI of {cfg.val_split} training images held out"
                if cfg.select_on == "val_split"
                else "the first test items, as published (the test score is then chosen on the test set)",
            )
            if fit is not None:
                log.info(
                    "the conditioner's mapper started as the ridge map to the LDM's class embeddings (penalty %g)",
                    fit["penalty"],
                )
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info(
                "data: %s %s, %d training pairs, %d test items, %d voxels; %d process(es), %s on %s; "
                "training %.2fM of %.2fM parameters",
                cfg.dataset,
                cfg.subjects,
                len(train_set),
                len(test_set),
                train_set.num_voxels,
                dist_info.world_size,
                amp.precision,
                device,
                trained / 1e6,
                sum(p.numel() for p in model.parameters()) / 1e6,
            )

        # ---- the loop
        schedule = Schedule(cfg.lr, cfg.lr, 0, cfg.num_epoch)  # constant, as published
        started = time.time()
        for epoch in range(start_epoch, cfg.num_epoch):
            loader.sampler.set_epoch(epoch)
            stats = train_one_epoch(
                train_model,
                loader,
                optimizer,
                amp,
                epoch=epoch,
                step=ldm_step,
                schedule=schedule,
                accum_iter=cfg.accum_iter,
                clip_grad=cfg.clip_grad,
                log_every=cfg.log_every,
            )
            last = epoch + 1 == cfg.num_epoch
            if dist_info.is_main and epoch + 1 in (cfg.snapshot_epochs or ()):
                save_checkpoint(finetuned_checkpoint(model, cfg), run_dir / f"snapshot_epoch{epoch + 1:04d}.pth")
            validate = (epoch + 1) % cfg.val_every == 0 or last
            if validate and dist_info.is_main:
                stats |= validation(model, epoch, run_dir, amp.precision)
            if validate or (cfg.ckpt_every is not None and (epoch + 1) % cfg.ckpt_every == 0):
                state = stage_b_training_checkpoint(
                    model, cfg, optimizer, amp.state_dict(), epoch, validation.best, validation.select_by
                )  # a collective
                if dist_info.is_main:
                    save_checkpoint(state, run_dir / CHECKPOINT)
                barrier()
            if dist_info.is_main:
                record_epoch(run_dir, epoch, stats, start_epoch, cfg.num_epoch, started, run.wandb)

        if dist_info.is_main:
            log.info(
                "kept the model with the best validation %s (%.4f): %s",
                validation.select_by,
                validation.best,
                run_dir / "finetuned.pth",
            )
    return run_dir


if __name__ == "__main__":
    run_main(lambda: main(parse_config(StageBConfig, usage=__doc__)))
