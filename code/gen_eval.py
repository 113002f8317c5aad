"""Decode every test fMRI into images with a finetuned DC-LDM and score them as the paper does.

    python code/gen_eval.py --dataset GOD                        # pretrains/GOD/finetuned.pth
    python code/gen_eval.py --dataset BOLD5000 --root .
    python code/gen_eval.py --dataset GOD --checkpoint results/stageB/<run>/finetuned.pth
    python code/gen_eval.py --dataset GOD --ddim_steps 50 --limit 10   # a quick look

The checkpoint may be a published `finetuned.pth` (its pickled `config.Config_Generative_Model`
is read safely and mapped onto ours) or one of ours. All test fMRI x `num_samples` go through
the sampler in batches of `batch_size` images; the same `--seed` gives the same images.

Writes `<output_path>/gen_eval/<timestamp>/`: `grid.png` (ground truth first in each row),
`samples/<item>_<sample>.png`, `metrics.json` (every metric, or the reason it was skipped),
and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import eval_metrics
from config import GenEvalConfig, format_config, parse_config, save_config
from dataset import load_target_dataset
from dc_ldm.ldm_for_fmri import load_finetuned, num_voxels_of, sample_images
from demo_classifier import load_classifier
from runtime import autocast, is_interactive, make_run_dir, pick_device, resolve_precision, setup_logging


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    fmri: torch.Tensor,
    num_samples: int,
    ddim_steps: int,
    sampler: str = "plms",
    eta: float = 0.0,
    batch_size: int = 25,
    seed: int = 0,
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """Sample `num_samples` images per fMRI (N, 1, V) -> uint8 (S, N, H, W, 3), batched over items x samples.

    Each (item, sample) pair draws its starting noise from its own generator, seeded from `seed`, so the
    images do not depend on `batch_size` or on the device's batching.
    """
    device = next(model.parameters()).device
    n = fmri.shape[0]
    jobs = [(i, s) for s in range(num_samples) for i in range(n)]
    shape = model.latent_shape  # (C, h, w)
    out = None
    steps = range(0, len(jobs), batch_size)
    for start in tqdm(steps, desc="generating", disable=not progress):
        chunk = jobs[start : start + batch_size]
        items = torch.tensor([i for i, _ in chunk])
        x_T = torch.stack([_start_noise(seed, i, s, shape) for i, s in chunk]).to(device)
        with autocast(precision, device):
            images = sample_images(model, fmri[items].to(device), ddim_steps, sampler, eta, x_T=x_T,
                                   generator=torch.Generator(device).manual_seed(seed + start))  # (B, 3, H, W)
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if out is None:
            out = np.zeros((num_samples, n, *images.shape[1:]), dtype=np.uint8)
        for (i, s), img in zip(chunk, images, strict=True):
            out[s, i] = img
    return out


def _start_noise(seed: int, item: int, sample: int, shape: tuple[int, ...]) -> torch.Tensor:
    # one CPU generator per (item, sample): the same images on any device and for any batch size
    g = torch.Generator().manual_seed(seed * 1_000_003 + item * 1009 + sample)
    return torch.randn(shape, generator=g)


def save_grid(gt: np.ndarray, samples: np.ndarray, path: Path, max_rows: int = 50) -> None:
    """One row per test item: ground truth, then its samples; uint8 (N, H, W, 3) and (S, N, H, W, 3)."""
    rows = [np.concatenate([gt[i], *samples[:, i]], axis=1) for i in range(min(len(gt), max_rows))]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def save_samples(samples: np.ndarray, folder: Path) -> None:
    """Every sample as `<item>_<sample>.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, i in np.ndindex(samples.shape[:2]):
        Image.fromarray(samples[s, i]).save(folder / f"{i:03d}_{s}.png")


def format_table(metrics: dict) -> str:
    """The metrics as an aligned two-column table, skipped ones with their reason."""
    lines = [f"{'metric':<24} value"]
    for name, value in metrics["scores"].items():
        lines.append(f"{name:<24} {value:.4f}")
    for name, reason in metrics.get("skipped", {}).items():
        lines.append(f"{name:<24} skipped: {reason}")
    return "\n".join(lines)


def main(cfg: GenEvalConfig, classifier: eval_metrics.Classifier | None = None) -> Path:
    """Generate, save and score; `classifier` replaces ViT-H/14 for the n-way metric (e.g. the demo's)."""
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    run_dir = make_run_dir(cfg.output_path, "gen_eval")
    log = setup_logging(run_dir)
    save_config(cfg, run_dir)
    log.info("gen_eval config:\n%s", format_config(cfg))

    model, stage_b = load_finetuned(cfg.checkpoint, root=cfg.root, device=device)
    if classifier is None and cfg.classifier is not None:
        classifier = load_classifier(cfg.classifier, device)
    if stage_b.dataset != cfg.dataset:
        raise ValueError(f"{cfg.checkpoint} was finetuned on {stage_b.dataset}, not {cfg.dataset}")
    _, test_set = load_target_dataset(stage_b, img_size=stage_b.img_size)
    expected = num_voxels_of(model.cond_stage_model.mae.state_dict(), "", stage_b.patch_size)
    if test_set.num_voxels != expected:
        raise ValueError(
            f"{cfg.checkpoint} expects {expected} voxels but the {cfg.dataset} test fMRI of "
            f"{stage_b.subjects} (roi {stage_b.roi}) has {test_set.num_voxels}"
        )
    n = len(test_set.fmri) if cfg.limit is None else min(cfg.limit, len(test_set.fmri))
    fmri = torch.from_numpy(test_set.fmri[:n])
    gt = test_set.resized_images(stage_b.img_size)[test_set.image_index[:n]]
    log.info("decoding %d test fMRI x %d samples, %s %d steps, %s", n, cfg.num_samples, cfg.sampler,
             cfg.ddim_steps, precision)

    samples = generate(model, fmri, cfg.num_samples, cfg.ddim_steps, cfg.sampler, cfg.eta, cfg.batch_size,
                       cfg.seed, precision, progress=is_interactive())
    save_grid(gt, samples, run_dir / "grid.png")
    save_samples(samples, run_dir / "samples")
    np.save(run_dir / "samples.npy", samples)

    metrics = eval_metrics.evaluate(gt, samples, metrics=cfg.metrics, classifier=classifier, n_way=cfg.n_way,
                                    num_trials=cfg.num_trials, seed=cfg.seed, device=device)
    metrics.update(num_items=n, num_samples=cfg.num_samples, sampler=cfg.sampler, ddim_steps=cfg.ddim_steps)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("results (%d items, %d samples each):\n%s", n, cfg.num_samples, format_table(metrics))
    log.info("wrote %s", run_dir)
    return run_dir


if __name__ == "__main__":
    main(parse_config(GenEvalConfig))
