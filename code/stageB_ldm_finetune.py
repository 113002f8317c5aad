"""Stage B (DC-LDM): finetune the label-conditioned LDM to be conditioned on fMRI.

    python code/stageB_ldm_finetune.py --dataset GOD                       # sbj_3, the published defaults
    python code/stageB_ldm_finetune.py --dataset BOLD5000 --bold5000_subs CSI1 CSI2
    torchrun --nproc_per_node=8 code/stageB_ldm_finetune.py --dataset GOD  # DDP, one process per GPU
    python code/stageB_ldm_finetune.py --resume results/stageB/<run>/last.ckpt

Starts from `pretrains/ldm/label2img` (config.yaml + model.ckpt) and the Stage A encoder
(`--pretrain_mbm_path`, default `pretrains/<dataset>/fmri_encoder.pth`); trains only the conditioning
path (the fMRI conditioner, and the UNet's cross-attention, the norms before it and the context
projection into the time embedding). Every `val_every` epochs it decodes `num_val_items` test fMRI,
writes a grid and the metrics, and keeps the best model by 50-way top-1 accuracy as `finetuned.pth`
(the published layout: `model_state_dict`, `config`, `state`). `last.ckpt` resumes training.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

import eval_metrics
from checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from config import StageBConfig, config_to_dict, format_config, parse_config, save_config
from dataset import load_target_dataset
from dc_ldm.ldm_for_fmri import build_ldm_for_fmri, mae_meta_from_checkpoint, sample_images
from demo_classifier import load_classifier
from gen_eval import save_grid
from runtime import (
    append_jsonl,
    init_wandb,
    is_interactive,
    make_run_dir,
    pick_device,
    resolve_precision,
    setup_logging,
)

LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


class ValidateAndCheckpoint(pl.Callback):
    """Sample test items, score them, keep the best model as `finetuned.pth`, and write `last.ckpt`.

    Only rank 0 samples and writes; Lightning's `save_checkpoint` is called on every rank (it is collective).
    """

    def __init__(self, cfg: StageBConfig, run_dir: Path, test_set, classifier=None):
        self.cfg, self.run_dir, self.test_set, self.classifier = cfg, run_dir, test_set, classifier
        n = min(cfg.num_val_items, len(test_set.fmri))
        self.fmri = torch.from_numpy(test_set.fmri[:n])
        self.gt = test_set.resized_images(cfg.img_size)[test_set.image_index[:n]]
        self.best = -float("inf")
        self.select_by = "top-1-class"
        self.epoch_start = time.time()

    def state_dict(self) -> dict:
        return {"best": self.best, "select_by": self.select_by}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.select_by = state["best"], state["select_by"]

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.epoch_start = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        record = {"epoch": epoch, "time_s": round(time.time() - self.epoch_start, 2)}
        record.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train")})
        validate = (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.num_epoch
        if trainer.is_global_zero and validate:
            record.update(self.validate(module, epoch))
        if trainer.is_global_zero:
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            module.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        tmp = self.run_dir / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state: --resume continues exactly
        if trainer.is_global_zero:
            os.replace(tmp, self.run_dir / "last.ckpt")

    @torch.no_grad()
    def validate(self, module: pl.LightningModule, epoch: int) -> dict:
        """Decode the validation items, write `val_epoch<N>.png`, score; save finetuned.pth when best so far."""
        was_training = module.training
        module.eval()
        fmri = self.fmri.to(module.device).repeat(self.cfg.num_samples, 1, 1)  # (S * n, 1, V)
        images = sample_images(module, fmri, self.cfg.ddim_steps, generator=torch.Generator(module.device)
                               .manual_seed(self.cfg.seed))
        module.train(was_training)
        samples = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        samples = samples.reshape(self.cfg.num_samples, len(self.fmri), *samples.shape[1:])
        save_grid(self.gt, samples, self.run_dir / f"val_epoch{epoch:04d}.png")
        n_classes = self.classifier_classes()
        result = eval_metrics.evaluate(
            self.gt, samples, metrics=["mse", "pcc", "ssim", "n_way"], classifier=self.classifier,
            n_way=min(50, n_classes) if n_classes else 50, num_trials=100, seed=self.cfg.seed, device=module.device,
        )
        scores = {f"val/{k}": float(v) for k, v in result["scores"].items()}
        if "top-1-class" not in result["scores"] and self.select_by == "top-1-class":
            self.select_by = "ssim"  # no classifier available: keep the best by pair-wise SSIM instead
            module.print(f"validation: n-way accuracy skipped ({result['skipped'].get('n_way')}); "
                         "selecting the best model by pair-wise SSIM")
        score = result["scores"][self.select_by]
        if score > self.best:
            self.best = score
            save_finetuned(module, self.cfg, self.run_dir / "finetuned.pth")
            scores["val/best"] = 1.0
        return scores

    def classifier_classes(self) -> int | None:
        if self.classifier is None:
            return None
        out = getattr(self.classifier[0], "num_classes", None)
        return int(out) if out is not None else None


def save_finetuned(model: pl.LightningModule, cfg: StageBConfig, path: Path) -> None:
    """Write the published Stage B layout: model_state_dict, config (a dict here), state (torch RNG)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint({"model_state_dict": state, "config": config_to_dict(cfg), "state": torch.get_rng_state()}, path)


def load_stage_a(cfg: StageBConfig) -> tuple[dict, dict]:
    """The Stage A checkpoint: (encoder architecture, model state dict); a clear error when it is missing."""
    path = Path(cfg.pretrain_mbm_path)
    if not path.is_file():
        raise CheckpointError(
            f"Stage A checkpoint not found: {path}. Run stageA2_mbm_finetune.py (or download the published "
            f"pretrains/{cfg.dataset}/fmri_encoder.pth) and pass it with --pretrain_mbm_path"
        )
    ckpt = load_checkpoint(path)
    return mae_meta_from_checkpoint(ckpt, path), ckpt["model"]


def main(cfg: StageBConfig, classifier=None) -> Path:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    is_main = int(os.environ.get("RANK", "0")) == 0
    device = pick_device("auto", int(os.environ.get("LOCAL_RANK", "0")))
    precision = resolve_precision(cfg.precision, device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    run_dir = make_run_dir(cfg.output_path, "stageB") if is_main else Path(cfg.output_path) / "stageB" / "_"
    log = setup_logging(run_dir if is_main else None, is_main)
    train_set, test_set = load_target_dataset(cfg, img_size=cfg.img_size, train_augment=True)
    mae_meta, mae_state = load_stage_a(cfg)
    cfg.model_meta = mae_meta  # our checkpoints carry the encoder architecture (published field name)
    if is_main:
        save_config(cfg, run_dir)
        log.info("Stage B config:\n%s", format_config(cfg))
        log.info("data: %s %s, %d training pairs, %d test items, %d voxels", cfg.dataset, cfg.subjects,
                 len(train_set), len(test_set), train_set.num_voxels)

    model = build_ldm_for_fmri(cfg.pretrain_gm_path, mae_meta, train_set.num_voxels, cfg.global_pool,
                               cfg.use_time_cond)
    model.cond_stage_model.mae.load_checkpoint(mae_state)
    model.learning_rate = cfg.lr

    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                              drop_last=len(train_set) > cfg.batch_size)
    val_loader = DataLoader(test_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    if classifier is None and cfg.classifier is not None:
        classifier = load_classifier(cfg.classifier, device)
    callback = ValidateAndCheckpoint(cfg, run_dir, test_set, classifier)
    wandb = init_wandb(cfg.use_wandb, cfg.wandb_project, run_dir, config_to_dict(cfg), is_main)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=local_world,
        num_nodes=max(1, world // local_world),
        strategy="ddp" if world > 1 else "auto",
        precision=LIGHTNING_PRECISION[precision],
        max_epochs=cfg.num_epoch,
        gradient_clip_val=cfg.clip_grad,
        accumulate_grad_batches=cfg.accumulate_grad,
        check_val_every_n_epoch=cfg.val_every,
        num_sanity_val_steps=0,
        logger=pl.loggers.WandbLogger(experiment=wandb) if wandb else False,
        enable_checkpointing=False,
        enable_progress_bar=is_interactive(),
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every,
        default_root_dir=run_dir,
        callbacks=[callback],
    )
    trainer.fit(model, train_loader, val_loader, ckpt_path=cfg.resume)
    if is_main and not (run_dir / "finetuned.pth").exists():
        save_finetuned(model, cfg, run_dir / "finetuned.pth")
    if is_main:
        log.info("best %s %.4f; wrote %s", callback.select_by, callback.best, run_dir / "finetuned.pth")
    return run_dir


if __name__ == "__main__":
    main(parse_config(StageBConfig))
