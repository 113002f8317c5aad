"""Decode every test fMRI into images with a finetuned DC-LDM and score them as the paper does.

    python code/gen_eval.py --dataset GOD --protocol published   # the paper's protocol, beside the paper's numbers
    python code/gen_eval.py --dataset BOLD5000 --root_path /data/mind-vis
    python code/gen_eval.py --checkpoint results/stageB/<run>/finetuned.pth
    python code/gen_eval.py --checkpoint CKPT --ddim_steps 50 --limit 10      # a quick look
    python code/gen_eval.py --checkpoint CKPT --shuffle_fmri                  # control: scores must fall to chance
    python code/gen_eval.py --checkpoint CKPT --compile --precision bf16      # long runs: a compiled UNet

The checkpoint may be a published `finetuned.pth` (its pickled `config.Config_Generative_Model` is read safely)
or one of ours. The data set, subjects and ROI default to the checkpoint's; every data and model path given as
a flag wins over the paths stored in the checkpoint, and stored relative paths are resolved against
`--root_path`. All test fMRI x `num_samples` go through the sampler in batches of `batch_size` images; the same
`--seed` gives the same images.

Writes `<output_path>/gen_eval/<timestamp>/`: `grid.png` (ground truth first in each row), `samples/`,
`samples.npy`, `metrics.json` (every metric with its 95% interval over the test items and the items' scores, or
the reason it was skipped; `python code/evaluate.py --compare RUN_A RUN_B` compares two such runs),
`metrics.png` (a bar chart with chance levels) and prints a table. Metric names: eval_metrics.METRICS, or the
group `mindeye`. With `--baselines`, also a ridge regression from the training fMRI to the images, scored the
same way (`ridge_grid.png`, `metrics.json["baselines"]`). Under `--protocol published` n-way accuracy keeps the
original's arithmetic (softmax probabilities compared, ties won by the ground truth); otherwise it compares logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import eval_metrics
from atomic import write_text_atomically
from baselines import ridge_image_baseline
from checkpoint_layouts import read_finetuned, resolve_stored_path
from classifier_file import load_classifier_file
from config import GenEvalConfig, StageBConfig, TargetData
from config_engine import ConfigError, format_config, parse_config, save_config, typed_fields
from dc_ldm.conditioners import CONDITIONERS
from dc_ldm.ldm_for_fmri import model_from_finetuned
from dc_ldm.sampling import generate
from errors import CheckpointError, UserError, run_main
from figures import image_grid, metric_bar_chart
from intervals import format_interval
from readers.files import check_subjects
from runtime import (
    attention_kind,
    check_output_folder,
    compile_for_inference,
    log,
    make_run_dir,
    pick_device,
    resolve_precision,
    run_folder,
    setup_logging,
    use_attention,
)
from targets import DATASETS, DEFAULT_DATASET, TARGETS, load_target

# The stored Stage B settings gen_eval builds and samples with: typed as Stage B's fields (a boolean is a boolean, a
# number finite; a published `"no"` is not True) and in range, so a file cannot make a silently wrong run.
STORED_SETTINGS = (
    "img_size",
    "conditioner",
    "global_pool",  # the published name of the conditioner (StageBConfig.read_published)
    "linear_pool",  # our former one
    "use_time_cond",
    "cond_dropout",
    "guidance_scale",
    "include_nonavg_test",
    "roi",
    "test_category",
    "nsd_layout",
    "nsd_train_average",
    "time_cond_start",
)
MAX_IMG_SIZE = 1024


def stored_settings(stored: dict, path: str) -> dict:
    """`stored` with the settings of STORED_SETTINGS checked (CheckpointError naming the file and the field); the
    conditioner of a published file (or of ours before it stored one) named from its `global_pool`."""
    try:
        values = typed_fields(StageBConfig, {k: stored[k] for k in STORED_SETTINGS if k in stored}, source=path)
    except ConfigError as e:
        raise CheckpointError(f"{e} (a setting stored in the checkpoint)") from None
    ranges = {
        "img_size": (lambda v: 8 <= v <= MAX_IMG_SIZE and v % 8 == 0, "out of range"),
        "cond_dropout": (lambda v: 0 <= v < 1, "out of range"),
        "conditioner": (lambda v: v in CONDITIONERS, f"not one of {tuple(CONDITIONERS)}"),
        "guidance_scale": (lambda v: v >= 0, "out of range"),
    }
    for key, (ok, why) in ranges.items():
        if key in values and not ok(values[key]):
            raise CheckpointError(f"{path}: its stored {key} {values[key]!r} is {why}")
    return {**stored, **values}


def target_data(cfg: GenEvalConfig, stored: dict, path: str) -> TargetData:
    """The test data: the checkpoint's data set, subjects and ROI unless flags say otherwise; paths resolved. The
    stored values become file paths, so they are checked first, naming the checkpoint `path`."""
    if stored.get("dataset", DEFAULT_DATASET) not in TARGETS:
        raise UserError(f"{path}: its stored dataset {stored['dataset']!r} is not one of {DATASETS}")
    dataset = cfg.dataset or stored.get("dataset", DEFAULT_DATASET)
    if stored.get("dataset") and dataset != stored["dataset"]:
        raise UserError(f"--dataset {dataset}: the checkpoint was finetuned on {stored['dataset']}")
    root, fields = cfg.root_path, {}  # every data set's subjects and folder, as a stage config holds them
    for key, default in ((t.subjects_field, t.default_subjects) for t in TARGETS.values()):
        where = f"{path}: its stored {key}"
        fields[key] = getattr(cfg, key) or check_subjects(stored.get(key) or list(default), where)
    for key, default in ((t.path_field, t.default_path) for t in TARGETS.values()):
        fields[key] = resolve_stored_path(getattr(cfg, key), stored, key, default, root, path)
    return TargetData(
        root_path=root,
        dataset=dataset,
        **fields,
        roi=cfg.roi or stored.get("roi", "VC"),
        test_category=cfg.test_category or stored.get("test_category"),
        nsd_layout=cfg.nsd_layout or stored.get("nsd_layout", "auto"),
        nsd_train_average=stored.get("nsd_train_average", False),
        seed=cfg.seed,
    )


def paper_table(metrics: dict, dataset: str, subjects: list[str]) -> str:
    """Our scores (with their 95% intervals) beside the paper's for one subject's model (the published protocol)."""
    paper = TARGETS[dataset].paper.get(subjects[0], {}) if len(subjects) == 1 else {}
    ours = metrics["scores"]
    lines = [f"{'metric':<28} {'ours':>8} {'95% interval':<18} {'paper':>8}"]
    for name in dict.fromkeys([*ours, *paper]):
        mine = f"{ours[name]:.4f}" if name in ours else "-"
        interval = format_interval(metrics["intervals"].get(name)) if name in ours else "-"
        theirs = f"{paper[name]:.4f}" if name in paper else "-"
        lines.append(f"{name:<28} {mine:>8} {interval:<18} {theirs:>8}")
    return "\n".join(lines)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) that moves every item (n >= 2)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    while np.any(perm == np.arange(n)):
        perm = rng.permutation(n)
    return perm


def main(cfg: GenEvalConfig, classifier: eval_metrics.Classifier | None = None) -> Path:
    """Generate, save and score; `classifier` replaces ViT-H/14 (or cfg.classifier's file) for the n-way metric."""
    # ---- checks before any work: device, precision, output folder, classifier, checkpoint, model files
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    check_output_folder(cfg.output_path)
    if classifier is None and cfg.classifier is not None:
        classifier = load_classifier_file(cfg.classifier, device)
    dataset = cfg.dataset or DEFAULT_DATASET
    path = cfg.checkpoint or str(Path(cfg.root_path) / "pretrains" / dataset / "finetuned.pth")
    state, stored = read_finetuned(path)
    stored = stored_settings(stored, path)
    data = target_data(cfg, stored, path)
    gm_path = resolve_stored_path(
        cfg.pretrain_gm_path, stored, "pretrain_gm_path", "pretrains/ldm/label2img", cfg.root_path, path
    )
    mbm_path = resolve_stored_path(
        cfg.pretrain_mbm_path,
        stored,
        "pretrain_mbm_path",
        f"pretrains/{data.dataset}/fmri_encoder.pth",
        cfg.root_path,
        path,
    )
    model = model_from_finetuned(state, stored, path, gm_path, mbm_path, device)
    use_attention(model, attention_kind(device, precision))
    model.first_stage_model.to(memory_format=torch.channels_last)  # the VQ decoder (benchmarks/README.md measures it)
    if cfg.compile:  # compiles at the first sampler call (minutes on a CPU), again for a new batch shape
        model.model = compile_for_inference(model.model)
    del state
    guidance = cfg.guidance_scale if cfg.guidance_scale is not None else float(stored.get("guidance_scale") or 1.0)
    if guidance != 1.0:
        model.cond_stage_model.unconditional(1)  # refuses a model without a learned null context, before any work

    # ---- the test set, checked against the model
    img_size = int(stored.get("img_size", 256))
    patch_size = stored["model_meta"]["patch_size"]
    train_set, test_set = load_target(data, patch_size, bool(stored.get("include_nonavg_test", False)))
    expected = model.cond_stage_model.mae.num_voxels
    if test_set.num_voxels != expected:
        raise UserError(
            f"{path} expects {expected} voxels but the {data.dataset} test fMRI of {data.subjects} "
            f"(roi {data.roi}) has {test_set.num_voxels}: pass the subjects and --roi it was trained on"
        )
    n = len(test_set) if cfg.limit is None else min(cfg.limit, len(test_set))
    if n < 2:
        raise UserError(f"the {data.dataset} test set of {data.subjects} holds {n} item(s); scoring needs at least 2")
    fmri = torch.from_numpy(test_set.fmri[:n])
    if cfg.shuffle_fmri:
        fmri = fmri[derangement(n, cfg.seed)]
    gt = test_set.resized_images(img_size)[test_set.image_index[:n]]

    run_dir = make_run_dir(cfg.output_path, "gen_eval")
    with run_folder(run_dir):
        setup_logging(run_dir)
        save_config(cfg, run_dir)
        log.info("gen_eval config:\n%s", format_config(cfg))
        log.info(
            "checkpoint %s (LDM %s); decoding %d %s %s test fMRI%s x %d samples, %s %d steps, guidance %g, %s on %s%s",
            path,
            gm_path,
            n,
            data.dataset,
            data.subjects,
            " (shuffled: the control)" if cfg.shuffle_fmri else "",
            cfg.num_samples,
            cfg.sampler,
            cfg.ddim_steps,
            guidance,
            precision,
            device,
            ", UNet compiled (the first call compiles it)" if cfg.compile else "",
        )

        samples = generate(
            model,
            fmri,
            cfg.num_samples,
            cfg.ddim_steps,
            cfg.sampler,
            cfg.eta,
            cfg.batch_size,
            cfg.seed,
            precision,
            guidance_scale=guidance,
        )
        image_grid(gt, samples, run_dir / "grid.png")
        np.save(run_dir / "samples.npy", samples)
        (run_dir / "samples").mkdir()
        for s, i in np.ndindex(samples.shape[:2]):
            Image.fromarray(samples[s, i]).save(run_dir / "samples" / f"{i:03d}_{s}.png")

        # the published protocol keeps the paper's n-way arithmetic (probabilities compared, ties to the truth)
        tie_rule = "published" if cfg.protocol == "published" else "split"
        metrics = eval_metrics.evaluate(
            gt,
            samples,
            metrics=cfg.metrics,
            classifier=classifier,
            n_way=cfg.n_way,
            num_trials=cfg.num_trials,
            seed=cfg.seed,
            device=device,
            tie_rule=tie_rule,
        )
        if cfg.protocol == "published":  # the paper's table also has 100-way accuracy
            hundred = eval_metrics.evaluate(
                gt,
                samples,
                metrics=["n_way"],
                classifier=classifier,
                n_way=100,
                num_trials=cfg.num_trials,
                seed=cfg.seed,
                device=device,
                tie_rule=tie_rule,
            )
            for key, values in hundred.items():  # scores, intervals, per_item, ties, skipped
                metrics[key].update({f"100-way {k}": v for k, v in values.items()})
        metrics.update(
            tie_rule=tie_rule,
            items=None,  # the test set's first n items in its order: paired by position (evaluate.py --compare)
            num_items=n,
            num_samples=cfg.num_samples,
            sampler=cfg.sampler,
            ddim_steps=cfg.ddim_steps,
            guidance_scale=guidance,
            shuffled_fmri=cfg.shuffle_fmri,
        )
        if cfg.baselines:  # what a linear read-out gets from the same fMRI (never the shuffled fMRI)
            train_images = train_set.resized_images(img_size)[train_set.image_index]
            metrics["baselines"], ridge = ridge_image_baseline(
                train_set.fmri[:, 0], train_images, test_set.fmri[:n, 0], gt, seed=cfg.seed
            )
            image_grid(gt, ridge[None], run_dir / "ridge_grid.png")
            log.info(
                "ridge regression baseline: pair-wise PCC identification %.3f %s (penalty %g)",
                metrics["baselines"]["ridge_pcc"],
                format_interval(metrics["baselines"]["ridge_pcc_interval"]),
                metrics["baselines"]["ridge_alpha"],
            )
        write_text_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        chance = {k: eval_metrics.chance_level(k, cfg.n_way) for k in metrics["scores"]}
        if metrics["scores"]:
            metric_bar_chart(
                {"decoded": metrics["scores"]},
                run_dir / "metrics.png",
                {k: v for k, v in chance.items() if v is not None},
                title=f"gen_eval: {path}",
                intervals={"decoded": metrics.get("intervals", {})},
            )
        log.info(
            "results (%d items, %d samples each):\n%s", n, cfg.num_samples, eval_metrics.format_table(metrics, chance)
        )
        if cfg.protocol == "published":
            log.info(
                "beside the paper (%s %s):\n%s",
                data.dataset,
                data.subjects,
                paper_table(metrics, data.dataset, data.subjects),
            )
        log.info("wrote %s", run_dir)
    return run_dir


if __name__ == "__main__":
    run_main(lambda: main(parse_config(GenEvalConfig, usage=__doc__)))
