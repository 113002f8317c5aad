"""`make demo`: the whole method on the simulated brain, on a laptop CPU.

    python code/demo.py                 # data/synthetic/demo -> results/demo (about 12 minutes on 2 CPU cores)
    python code/demo.py --size tiny     # the same pipeline at test size, in about a minute

Steps, each cached (a second run reuses what is done; delete results/demo to start over):
  1. simulate the brain (`data/synthetic/<size>`, never over real data in `data/`);
  2. train the simulated world's own "ImageNet" models: a label-conditioned LDM in the published label2img
     layout and an image classifier for the n-way metric (`pretrains/demo/<size>`);
  3. Stage A1 pre-training on the simulated HCP resting state and the GOD training fMRI (published include_kam);
  4. Stage A2 finetuning on the GOD test fMRI of sbj_3;
  5. Stage B finetuning of the LDM on sbj_3's training pairs;
  6. gen_eval on the 50 held-out test fMRI, and the same model fed *shuffled* test fMRI (a control that
     must stay at chance);
and writes `results/demo/<size>/`: `grid.png` (ground truth, then decoded samples), `metrics.json` and
`summary.md` (each metric next to its chance level and the shuffled control).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import eval_metrics
import gen_eval
import stageA1_mbm_pretrain
import stageA2_mbm_finetune
import stageB_ldm_finetune
import train_demo_models
from config import GenEvalConfig, StageA1Config, StageA2Config, StageBConfig
from dataset import load_target_dataset
from dc_ldm.ldm_for_fmri import load_finetuned
from demo_classifier import load_classifier
from make_synthetic_data import MARKER, make_synthetic_data

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mindvis.demo")


@dataclass(frozen=True)
class Preset:
    """Sizes of one demo run; `demo` fits the 20-minute budget on 2 CPU cores."""

    img_size: int  # side of the simulated world's models and of Stage B's images
    a1_epochs: int
    a2_epochs: int
    b_epochs: int
    b_batch: int
    b_lr: float
    ddim_steps: int
    num_samples: int
    limit: int | None


PRESETS = {
    "tiny": Preset(img_size=32, a1_epochs=1, a2_epochs=1, b_epochs=1, b_batch=8, b_lr=1e-3,
                   ddim_steps=5, num_samples=1, limit=6),
    "demo": Preset(img_size=32, a1_epochs=6, a2_epochs=30, b_epochs=24, b_batch=25, b_lr=1e-3,
                   ddim_steps=50, num_samples=5, limit=None),
}
MAE = dict(embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=64, decoder_num_heads=4, mlp_ratio=1.0)


def step(name: str, target: Path, run) -> Path:
    """Run `run() -> file` unless `target` exists; copy its result to `target` (the cache)."""
    if target.exists():
        log.info("[%s] reusing %s", name, target)
        return target
    log.info("[%s] running ...", name)
    start = time.time()
    produced = Path(run())
    target.parent.mkdir(parents=True, exist_ok=True)
    if produced.resolve() == target.resolve():
        pass  # the step wrote its result in place
    elif produced.is_dir():
        shutil.copytree(produced, target)
    else:
        shutil.copy2(produced, target)
    log.info("[%s] done in %.0f s -> %s", name, time.time() - start, target)
    return target


def simulate(data_dir: Path, size: str, seed: int) -> Path:
    """Simulate the data set once; later runs reuse it (the simulator marks a finished set in simulation.json)."""
    marker = data_dir / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("complete") and info.get("size") == size and info.get("seed") == seed:
            log.info("[data] reusing simulated %s data in %s", size, data_dir)
            return data_dir
    log.info("[data] simulating the %s data set in %s ...", size, data_dir)
    return make_synthetic_data(data_dir, size=size, seed=seed, overwrite=True)


def shuffled_control(finetuned: Path, out: Path, cfg: GenEvalConfig, classifier) -> dict:
    """The decoder fed the test fMRI of *other* images (a fixed derangement): scores must fall to chance."""
    model, stage_b = load_finetuned(finetuned)
    _, test = load_target_dataset(stage_b, img_size=stage_b.img_size)
    n = len(test.fmri) if cfg.limit is None else min(cfg.limit, len(test.fmri))
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    while np.any(perm == np.arange(n)):  # a derangement: no item keeps its own fMRI
        perm = rng.permutation(n)
    fmri = torch.from_numpy(test.fmri[:n][perm])
    gt = test.resized_images(stage_b.img_size)[test.image_index[:n]]
    samples = gen_eval.generate(model, fmri, cfg.num_samples, cfg.ddim_steps, cfg.sampler, batch_size=cfg.batch_size,
                                seed=cfg.seed)
    gen_eval.save_grid(gt, samples, out / "grid_shuffled.png")
    return eval_metrics.evaluate(gt, samples, metrics=["mse", "pcc", "ssim", "n_way"], classifier=classifier,
                                 n_way=cfg.n_way, num_trials=cfg.num_trials, seed=cfg.seed)


def write_summary(out: Path, decoded: dict, control: dict, n_way: int, seconds: float, models: dict) -> str:
    """summary.md: every metric next to its chance level and the shuffled-fMRI control."""
    chance = {"mse": 0.5, "pcc": 0.5, "ssim": 0.5, "top-1-class": 1 / n_way, "top-1-class (max)": 1 / n_way}
    rows = ["| metric | decoded | shuffled fMRI (control) | chance |", "| --- | --- | --- | --- |"]
    for name, level in chance.items():
        ours, ctrl = decoded["scores"].get(name), control["scores"].get(name)
        fmt = lambda v: "skipped" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(f"| {name} | {fmt(ours)} | {fmt(ctrl)} | {level:.3f} |")
    text = "\n".join([
        "# MinD-Vis demo on the simulated brain",
        "",
        f"Decoded images of {decoded.get('num_items', '?')} held-out test fMRI (GOD layout, subject sbj_3, test "
        "categories never seen in Stage B), scored against the images the simulated subject saw. Pair-wise "
        "rows: fraction of other test images the reconstruction is closer to its own ground truth than to "
        f"(chance 0.5). n-way: {n_way}-way top-1 semantic accuracy with the simulated world's classifier "
        f"(chance 1/{n_way}). The control feeds the same model the test fMRI of other images.",
        "",
        *rows,
        "",
        *_models_lines(models),
        "",
        f"Total time: {seconds / 60:.1f} min. Grid: `grid.png` (ground truth first in each row); control: "
        "`grid_shuffled.png`.",
        "",
    ])
    (out / "summary.md").write_text(text)
    return text


def _models_lines(report: dict) -> list[str]:
    """What the simulated world's models can do (train_demo_models' report.json): the ceiling of the decoding."""
    if not report:
        return []
    accuracy, ldm = report["classifier_accuracy"], report["ldm_samples_of_test_classes"]
    n_way = next(v for k, v in ldm.items() if k.startswith("n_way_top1"))
    classes = round(1 / report["chance"]["top1_all_classes"])
    return [
        f"The simulated world's models (`pretrains/demo/<size>/report.json`): VQ round trip "
        f"{report['vq']['psnr_db']:.1f} dB PSNR; classifier top-1 over all {classes} "
        f"categories {accuracy['god_test_stimuli']:.2f} on the GOD test stimuli, "
        f"{accuracy['heldout_test_classes_vq_reconstructed']:.2f} on VQ round trips; label-conditioned LDM samples "
        f"of the test categories reach {n_way:.3f} n-way top-1 given the true label, the ceiling for decoding.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (data/, pretrains/, results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(args.size, args.seed, args.root)


def run(size: str, seed: int, root: Path) -> Path:
    """The whole demo; returns the results folder."""
    start, p = time.time(), PRESETS[size]
    data = simulate(root / "data" / "synthetic" / size, size, seed)
    models, out = root / "pretrains" / "demo" / size, root / "results" / "demo" / size
    work = out / "runs"
    kam, hcp = str(data / "Kamitani" / "npz"), str(data / "HCP" / "npz")

    step("simulated-world models", models / "classifier.pth",
         lambda: _train_models(data, models, size, p.img_size) / "classifier.pth")
    a1 = step("stage A1", out / "fmri_encoder_A1.pth", lambda: stageA1_mbm_pretrain.main(StageA1Config(
        hcp_path=hcp, kam_path=kam, output_path=str(work), num_epoch=p.a1_epochs,
        warmup_epochs=min(2, p.a1_epochs), lr=1e-3, batch_size=32, seed=seed, ckpt_every=p.a1_epochs, **MAE,
    )) / "checkpoint.pth")
    a2 = step("stage A2", out / "fmri_encoder.pth", lambda: stageA2_mbm_finetune.main(StageA2Config(
        kam_path=kam, pretrain_mbm_path=str(a1), output_path=str(work), num_epoch=p.a2_epochs,
        warmup_epochs=min(1, p.a2_epochs), lr=5e-4, seed=seed, ckpt_every=p.a2_epochs,
    )) / "checkpoint.pth")
    classifier_path = models / "classifier.pth"
    b = step("stage B", out / "finetuned.pth", lambda: stageB_ldm_finetune.main(StageBConfig(
        kam_path=kam, pretrain_gm_path=str(models / "label2img"), pretrain_mbm_path=str(a2), output_path=str(work),
        img_size=p.img_size, batch_size=p.b_batch, lr=p.b_lr, num_epoch=p.b_epochs, val_every=max(1, p.b_epochs // 3),
        num_val_items=10, num_samples=1, ddim_steps=p.ddim_steps, seed=seed, classifier=str(classifier_path),
        global_pool=True,  # one pooled token: the context shape the label-conditioned LDM learned (see README)
    )) / "finetuned.pth")

    classifier = load_classifier(classifier_path)
    n_way = min(50, classifier[0].num_classes - 1)
    cfg = GenEvalConfig(root=str(root), checkpoint=str(b), output_path=str(work), num_samples=p.num_samples,
                        ddim_steps=p.ddim_steps, batch_size=50, seed=seed, limit=p.limit, n_way=n_way,
                        num_trials=1000, metrics=["mse", "pcc", "ssim", "n_way"], classifier=str(classifier_path))
    evaluated = step("gen_eval", out / "gen_eval", lambda: gen_eval.main(cfg))
    decoded = json.loads((evaluated / "metrics.json").read_text())
    shutil.copy2(evaluated / "grid.png", out / "grid.png")
    shutil.copy2(evaluated / "metrics.json", out / "metrics.json")
    log.info("[control] decoding shuffled test fMRI ...")
    control = shuffled_control(b, out, cfg, classifier)
    (out / "metrics_shuffled.json").write_text(json.dumps(control, indent=2))
    report = json.loads((models / "report.json").read_text()) if (models / "report.json").is_file() else {}
    summary = write_summary(out, decoded, control, n_way, time.time() - start, report)
    log.info("\n%s", summary)
    log.info("demo finished in %.1f min: %s", (time.time() - start) / 60, out)
    return out


def _train_models(data: Path, models: Path, size: str, img_size: int) -> Path:
    argv = ["--data_dir", str(data), "--out", str(models), "--img_size", str(img_size)]
    if size == "tiny":
        argv += ["--preset", "tiny"]
    train_demo_models.main(train_demo_models.parse_args(argv))
    return models


if __name__ == "__main__":
    main()
