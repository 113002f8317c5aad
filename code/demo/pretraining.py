"""Does SC-MBM pre-training help Stage B? Stage A's learning curve and the pre-training study, on the cortex world.

    PYTHONPATH=code python -m demo --stage_a_curve         # Stage A's learning curve on fMRI it never saw
    PYTHONPATH=code python -m demo --pretraining_study     # the study: its plan, then every row it has not made

Both run on the cortex-shaped brain (`demo/simulation/cortex.py`), where HCP and GOD subjects share the world's
cortex in degrees (`--sharing`), and build on the demo's steps (`demo/pipeline.py`): the same simulation, world
models and stage command lines, every result cached beside it with its recipe, so a run stopped at any point
continues where it stopped.

**Stage A's learning curve** (`stage_a_curve`): A1 on the HCP resting state and the GOD training fMRI (as published)
for `STUDY.a1_epochs`, scored after every epoch on HCP subjects it never saw (`HELD_OUT_HCP` more subjects of the
same world) and on sbj_3's test fMRI (which A1 never sees); then A2 from it for `STUDY.curve_a2_epochs` on sbj_3's
test fMRI less `STUDY.val_images` test images, scored on those. That A1 is the study's pre-trained A1 of its
first world at training seed 0. The score is the masked-voxel correlation (fixed
masks); its reference on the same held-out fMRI is a ridge map from the visible to the masked voxels fitted on
fMRI of the same kind (the HCP training subjects; sbj_3's training trials) -> stage_a_curve.{md,json,png}.

**The study** (`pretraining_study`): for each world of `STUDY.worlds` (the realistic default, then the two ends of
the sharing setting), each training seed of `STUDY.seeds` (a seed apart from the world's, which stays 0), each
encoder of `ENCODERS` and each number of Stage B training pairs of `STUDY.pairs`:

- a few-shot linear probe: ridge from the encoder's tokens (and from the raw fMRI, the reference) of the training
  pairs to the label LDM's class embedding of each image, scored as 50-way identification of the test classes;
- Stage B (the demo's recipe, `STUDY.recipe_steps` optimiser steps; then the published Stage B,
  `STUDY.published_steps`, a budget at which its learning curve has left the control, on `STUDY.published_pairs`
  only, the ends of `STUDY.pairs`) and gen_eval on the 50 test fMRI.

Every score comes with a 95% interval over test items and training seeds, and each encoder against the pre-trained
one as a paired difference (`intervals.over_seeds`) -> pretraining_study.{md,json,png}. The plan (every row,
and the optimiser steps of each kind) is printed before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomic import write_text_atomically
from checkpoint_layouts import read_stage_a
from config import StageBConfig
from config_engine import load_yaml
from dataset import split_images
from demo.pipeline import World, decode, prepare, train_a2, train_encoder
from demo.presets import PUBLISHED_STAGE_B
from demo.reports import bracket, item_scores
from demo.simulation.simulate import write_heldout_hcp
from demo.steps import train_stage, write_json
from demo.studies import random_encoder
from demo.world_models import load_world_ldm
from intervals import clustered_interval, over_seeds
from readers.arrays import fit_voxels, pad_all_to_longest
from readers.god import create_god_dataset
from readers.hcp import HCP_FILE, create_hcp_dataset, hcp_subjects
from ridge import fit_ridge
from sc_mbm.mae_for_fmri import FMRIEncoder, build_mae
from sc_mbm.reconstruction import ridge_reference, score

log = logging.getLogger("mindvis.demo")

HELD_OUT_HCP = 4  # HCP subjects of the world that A1 never sees


@dataclass(frozen=True)
class StudyPlan:
    """The pre-training study's rows and budgets (Stage A's learning curve is its pre-trained A1 on the first world,
    training seed 0, then an A2 of `curve_a2_epochs` that leaves `val_images` test images out)."""

    worlds: tuple[str, ...] = ("cortex", "cortex-high", "cortex-none")
    seeds: tuple[int, ...] = (0, 1, 2)
    pairs: tuple[int, ...] = (100, 300, 1150)
    # the published rows cost 20-30x a recipe row on a CPU (Stage B trains the encoder for published_steps at batch
    # 5): they run at the two ends of `pairs`, few and all, where the paper's claim is (a budget choice, made before
    # any published row ran)
    published_pairs: tuple[int, ...] = (100, 1150)
    a1_epochs: int = 24  # 9,000 optimiser steps: 12,000 samples (6,000 HCP windows, 6,000 GOD trials) at batch 32
    a1_warmup: int = 3
    a2_epochs: int = 20
    a2_warmup: int = 2
    curve_a2_epochs: int = 60
    val_images: int = 10
    recipe_steps: int = 552  # the demo recipe's own budget: 12 epochs of 1,150 pairs at batch 25
    published_steps: int = 5520  # 24 epochs of 1,150 pairs at batch 5: the curve (seeds 0, 1) has left its control
    eval_samples: int = 2  # images decoded per test fMRI


STUDY = StudyPlan()
ENCODERS = ("pre-trained", "no pre-training", "pre-trained on voxel-permuted HCP")


# ---- Stage A's learning curve ------------------------------------------------------------------------------------


def held_out_hcp(w: World) -> Path:
    """`HELD_OUT_HCP` more HCP subjects of the world, beside its data (`<data>-heldout-hcp`)."""
    target = w.data.parent / f"{w.data.name}-heldout-hcp"

    def run() -> dict:
        with _folder_in_place(target) as partial:
            write_heldout_hcp(w.data, partial, HELD_OUT_HCP)
        return {"subjects": HELD_OUT_HCP}

    w.steps("held-out HCP subjects", target, {"sim": w.hashes["sim"], "subjects": HELD_OUT_HCP}, run)
    return target


@contextmanager
def _folder_in_place(target: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `target`, renamed to `target` once the block has filled it: a run killed on the
    way leaves no half-written `target` (only the hidden folder, never deleted, since nothing stamps it)."""
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    yield partial
    partial.rename(target)


def pretrained_a1(w: World, plan: StudyPlan, defer: bool = True) -> tuple[Path, str]:
    """The pre-trained encoder's A1 (as published: HCP + GOD training fMRI), scored after every epoch on held-out HCP
    subjects and sbj_3's test fMRI: (checkpoint, recipe hash). The study and the learning curve share it; the study
    defers it (made when a row the ledger lacks needs it), the curve, which reads its run, does not."""
    folder = w.out / "encoders" / "pre-trained"
    flags = {
        **w.preset.a1,
        "hcp_path": str(w.data / "HCP" / "npz"),
        "kam_path": w.kam,
        "seed": w.train_seed,
        "num_epoch": plan.a1_epochs,
        "warmup_epochs": plan.a1_warmup,
        "ckpt_every": plan.a1_epochs,
        "val_hcp_path": str(held_out_hcp(w)),
        "val_kam_subs": ["sbj_3"],
    }
    a1 = w.steps(
        "pre-trained: stage A1",
        folder / "fmri_encoder_A1.pth",
        {"data": w.hashes["sim"], "flags": flags},
        lambda: train_stage(
            "stageA1_mbm_pretrain.py", flags, folder / "runs" / "a1", "checkpoint.pth", folder / "fmri_encoder_A1.pth"
        ),
        defer=defer,
    )
    return folder / "fmri_encoder_A1.pth", a1


def stage_a_curve(w: World, plan: StudyPlan = STUDY) -> Path:
    """A1 and an A2 that leaves test images out, scored on held-out fMRI after every epoch, against the ridge
    references on the same fMRI -> stage_a_curve.{md,json,png} in the world's results."""
    a1_path, a1 = pretrained_a1(w, plan, defer=False)  # its checkpoint and run are read below
    out = w.out / "stage_a_curve"
    change = {"num_epoch": plan.curve_a2_epochs, "warmup_epochs": plan.a2_warmup, "val_images": plan.val_images}
    change["ckpt_every"] = plan.curve_a2_epochs
    a2 = train_a2(w, a1_path, a1, out, "Stage A curve: ", **change)
    num_voxels = read_stage_a(a1_path).arch["num_voxels"]
    a1_runs, a2_runs = a1_path.parent / "runs" / "a1", out / "runs" / "a2"
    models = {"a1": (a1_path, a1_runs), "a2": (out / "fmri_encoder.pth", a2_runs)}
    w.steps(
        "Stage A curve: trained models and ridge references",
        out / "intervals.json",
        {"sim": w.hashes["sim"], "a1": a1, "a2": a2, "num_voxels": num_voxels, "val_images": plan.val_images},
        lambda: write_json(curve_intervals(w, models, num_voxels, plan.val_images), out / "intervals.json"),
    )
    intervals = json.loads((out / "intervals.json").read_text())
    result = {
        "a1": _metrics(a1_runs),
        "a2": _metrics(a2_runs),
        "ridge": {key: got["ridge"] for key, got in intervals.items()},
        "intervals": intervals,
        "steps_per_epoch": {"a1": _steps_per_epoch(a1_runs), "a2": _steps_per_epoch(a2_runs)},
        "seconds": {"a1": _seconds(w, "pre-trained: stage A1"), "a2": _seconds(w, "Stage A curve: stage A2")},
    }
    write_text_atomically(w.out / "stage_a_curve.json", json.dumps(result, indent=1) + "\n")
    text = curve_table(result, plan)
    write_text_atomically(w.out / "stage_a_curve.md", text)
    curve_figure(result, w.out / "stage_a_curve.png")
    log.info("\n%s", text)
    return w.out / "stage_a_curve.md"


def _seconds(w: World, step: str) -> float | None:
    return next((r["seconds"] for r in w.steps.records if r["step"] == step), None)


def _run_dir(runs: Path) -> Path:
    (run_dir,) = (p for p in runs.glob("*/*") if p.is_dir())
    return run_dir


def _metrics(runs: Path) -> list[dict]:
    lines = (_run_dir(runs) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _steps_per_epoch(runs: Path) -> int | None:
    """Optimiser steps per epoch of a Stage A run, from its log's step lines (`step i/N`)."""
    for line in (_run_dir(runs) / "log.txt").read_text().splitlines():
        if " step " in line and "/" in line:
            return int(line.split(" step ")[1].split()[0].split("/")[1])
    return None


def curve_sets(w: World, heldout: Path, num_voxels: int, val_images: int) -> dict[str, dict[str, np.ndarray]]:
    """Each held-out set the curve scores ({'fit': the fMRI its ridge reference is fitted on, 'test': the held-out
    fMRI, 'groups': the unit each test sample belongs to}), wrap-padded like Stage A: 'hcp' the held-out HCP
    subjects (grouped by subject), 'god' sbj_3's 50 test averages (each its own unit), 'test' the test images A2
    leaves out, averages and single trials (grouped by image)."""
    hcp_fit = fit_voxels(create_hcp_dataset(w.data / "HCP" / "npz", patch_size=16).fmri, num_voxels)[:, 0]
    subjects = hcp_subjects(heldout, patch_size=16)  # read once: the windows and whose they are
    hcp = np.concatenate(pad_all_to_longest(subjects))[:, None]
    subject = np.repeat(np.arange(len(subjects)), [len(x) for x in subjects])
    train, test = create_god_dataset(w.kam, subjects=["sbj_3"])
    _, test_all = create_god_dataset(w.kam, subjects=["sbj_3"], include_nonavg_test=True)
    held = split_images(test_all, val_images, "val_images")[1]
    god_fit = fit_voxels(train.fmri, num_voxels)[:, 0]
    return {
        "hcp": {"fit": hcp_fit, "test": fit_voxels(hcp, num_voxels)[:, 0], "groups": subject},
        "god": {"fit": god_fit, "test": fit_voxels(test.fmri, num_voxels)[:, 0], "groups": np.arange(len(test))},
        "test": {"fit": god_fit, "test": fit_voxels(held.fmri, num_voxels)[:, 0], "groups": held.image_index},
    }


def curve_intervals(
    w: World,
    models: dict[str, tuple[Path, Path]],
    num_voxels: int,
    val_images: int,
    mask_ratio: float = 0.75,
    masks: int = 4,
) -> dict[str, dict]:
    """The trained MAE's masked-voxel correlation on each held-out set, scored as the stage scores it (the run's
    masks, seed and batch size), and its ridge reference's (`ridge_reference`, fitted on fMRI of the same kind), each
    with its 95% interval resampling the set's units (`curve_sets`: HCP subjects, test images), and the MAE's share
    of the ridge map's, paired over the same units. `models`: {'a1': (checkpoint, run folder), 'a2': ...}."""
    sets = curve_sets(w, held_out_hcp(w), num_voxels, val_images)
    result = {}
    for stage, keys in (("a1", ("hcp", "god")), ("a2", ("test",))):
        checkpoint, runs = models[stage]
        config = load_yaml(_run_dir(runs) / "config.yaml")  # the run's masks: its mask ratio, seed, batch size
        stage_a = read_stage_a(checkpoint)
        model = build_mae(stage_a.arch)
        model.load_state_dict(stage_a.model)
        for key in keys:
            d = sets[key]
            fmri = torch.from_numpy(d["test"][:, None].copy())
            mae = score(
                model, fmri, config["mask_ratio"], config["batch_size"], "fp32", config["seed"], per_item=True
            )["masked_cor_per_item"]
            ridge = ridge_reference(d["fit"], d["test"], mask_ratio, masks, w.seed)
            result[key] = {
                "units": int(len(np.unique(d["groups"]))),
                "mae": float(np.mean(mae)),
                "mae_interval": clustered_interval(mae, d["groups"])[1],
                "ridge": float(ridge.mean()),
                "ridge_interval": clustered_interval(ridge, d["groups"])[1],
                "share": clustered_interval(mae, d["groups"], reference=ridge),
            }
    return result


CURVE_SETS = {
    "hcp": "A1: held-out HCP subjects",
    "god": "A1: sbj_3's test fMRI (averages)",
    "test": "A2: held-out test images (averages and trials)",
}


def curve_table(result: dict, plan: StudyPlan) -> str:
    intervals = result["intervals"]
    rows = []
    for stage, key in (("a1", "hcp"), ("a1", "god"), ("a2", "test")):
        points = [m for m in result[stage] if f"val_{key}_masked_cor" in m]
        if not points:
            continue
        values = [m[f"val_{key}_masked_cor"] for m in points]
        best = int(np.argmax(values))
        got = intervals[key]  # the trained model rescored per sample, with intervals over the set's units
        cells = [
            CURVE_SETS[key],
            str(got["units"]),
            f"{values[0]:.3f}",
            f"{got['mae']:.3f}{bracket(got['mae_interval'])}",
            f"{values[best]:.3f} (epoch {points[best]['epoch'] + 1})",
            f"{got['ridge']:.3f}{bracket(got['ridge_interval'])}",
            f"{got['share'][0]:.2f}{bracket(got['share'][1], 2)}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return (
        "\n".join(
            [
                "# Stage A's learning curve on fMRI it never saw (cortex world)",
                "",
                f"A1: {plan.a1_epochs} epochs ({result['steps_per_epoch']['a1']} optimiser steps each), A2 from "
                f"it: {plan.curve_a2_epochs} epochs ({result['steps_per_epoch']['a2']} steps each) on sbj_3's test "
                f"fMRI less {plan.val_images} test images. Masked-voxel correlation (mask ratio 0.75, fixed masks) "
                "of the MAE and of a ridge map fitted on fMRI of the same kind (one run, training seed 0). "
                "Brackets: 95% intervals resampling the held-out set's units (HCP subjects, sbj_3's test fMRI, "
                "test images with all their trials); with 4 subjects the HCP interval is a rough one. Before "
                "training and the best epoch: the curve's per-epoch means.",
                "",
                "| held-out fMRI | units | before training | last epoch | best epoch | ridge map | last / ridge |",
                "| --- | --- | --- | --- | --- | --- | --- |",
                *rows,
            ]
        )
        + "\n"
    )


def curve_figure(result: dict, path: Path) -> Path:
    """Masked-voxel correlation against optimiser steps, A1 then A2, with each set's ridge reference and its half."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    ridge = result["ridge"]
    for ax, stage, keys in ((axes[0], "a1", ("hcp", "god")), (axes[1], "a2", ("test",))):
        per_epoch = result["steps_per_epoch"][stage] or 1
        for i, key in enumerate(keys):
            points = [m for m in result[stage] if f"val_{key}_masked_cor" in m]
            steps = [(m["epoch"] + 1) * per_epoch for m in points]
            ax.plot(
                steps, [m[f"val_{key}_masked_cor"] for m in points], "o-", ms=3, color=f"C{i}", label=CURVE_SETS[key]
            )
            ax.axhline(ridge[key], color=f"C{i}", ls="--", lw=1, label="ridge map" if i == 0 else None)
            ax.axhline(ridge[key] / 2, color=f"C{i}", ls=":", lw=1, label="half the ridge map" if i == 0 else None)
        ax.set(xlabel="optimiser steps", ylabel="masked-voxel correlation", title=f"Stage {stage.upper()}")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


# ---- the study ---------------------------------------------------------------------------------------------------


def permuted_hcp(w: World, seed: int = 0) -> Path:
    """The world's HCP resting state with its voxels in one fixed random order (the same for every subject): every
    voxel's statistics kept, the spatial structure gone (`<data>-hcp-permuted`)."""
    target = w.data.parent / f"{w.data.name}-hcp-permuted"

    def run() -> dict:
        source = w.data / "HCP" / "npz"
        with _folder_in_place(target) as partial:
            for folder in sorted(p for p in source.iterdir() if (p / HCP_FILE).is_file()):
                with np.load(folder / HCP_FILE) as f:
                    rois = {k: f[k] for k in f.files}
                x = np.concatenate(list(rois.values()), axis=1)
                x = x[:, np.random.default_rng(seed).permutation(x.shape[1])]
                cuts = np.cumsum([v.shape[1] for v in rois.values()])[:-1]
                (partial / folder.name).mkdir()
                np.savez(partial / folder.name / HCP_FILE, **dict(zip(rois, np.split(x, cuts, axis=1), strict=True)))
        return {"seed": seed}

    w.steps("voxel-permuted HCP", target, {"sim": w.hashes["sim"], "seed": seed}, run)
    return target


def study_encoders(w: World, plan: StudyPlan) -> dict[str, tuple[Path, str]]:
    """Each encoder of `ENCODERS` for this world and training seed: (checkpoint, recipe hash)."""
    out = w.out / "encoders"
    a1 = {"num_epoch": plan.a1_epochs, "warmup_epochs": plan.a1_warmup, "ckpt_every": plan.a1_epochs}
    a2 = {"num_epoch": plan.a2_epochs, "warmup_epochs": plan.a2_warmup, "ckpt_every": plan.a2_epochs}
    encoders = {}
    a1_path, a1_hash = pretrained_a1(w, plan)
    folder = a1_path.parent
    encoders["pre-trained"] = (
        folder / "fmri_encoder.pth",
        train_a2(w, a1_path, a1_hash, folder, "pre-trained: ", defer=True, **a2),
    )
    random = out / "no-pre-training" / "fmri_encoder.pth"
    encoders["no pre-training"] = (
        random,
        w.steps(
            "no pre-training: random encoder",
            random,
            {"template": encoders["pre-trained"][1], "seed": w.train_seed},
            lambda: random_encoder(encoders["pre-trained"][0], random, w.train_seed),
            defer=True,
        ),
    )
    folder = out / "permuted-hcp"
    permuted = {**a1, "hcp_path": str(permuted_hcp(w))}
    encoders[ENCODERS[2]] = (
        folder / "fmri_encoder.pth",
        train_encoder(w, folder, "permuted HCP: ", a2, defer=True, **permuted)[1],
    )
    return encoders


@torch.no_grad()
def encoder_tokens(path: Path, fmri: np.ndarray) -> np.ndarray:
    """Every patch token of a Stage A checkpoint's encoder for fmri (N, 1, V), flattened: (N, L * D)."""
    stage_a = read_stage_a(path)
    arch = stage_a.arch
    encoder = FMRIEncoder(
        arch["num_voxels"], arch["patch_size"], arch["embed_dim"], arch["depth"], arch["num_heads"], arch["mlp_ratio"]
    )
    encoder.load_checkpoint(stage_a.model)
    encoder.eval()
    x = torch.from_numpy(fit_voxels(fmri, arch["num_voxels"]))
    return torch.cat([encoder(b).flatten(1) for b in x.split(100)]).double().numpy()


def stage_b_pool(w: World, train):
    """The training pairs Stage B draws `--num_train_images` from: all of them less its validation images."""
    defaults = {f.name: f.default for f in dataclasses.fields(StageBConfig)}
    flags = {**defaults, **w.preset.b}
    if flags["select_on"] != "val_split":
        return train
    return train.hold_out(flags["val_split"], w.train_seed)[0]


def linear_probe(w: World, encoders: dict[str, Path], pairs: tuple[int, ...]) -> dict:
    """Few-shot linear probes of each encoder's tokens and of the raw fMRI (`raw fMRI`): for each number of
    training pairs (the pairs Stage B trains on with --num_train_images, after its validation hold-out), a ridge map
    onto the label LDM's class embedding of each training image; each test fMRI's prediction is then identified
    among the 50 test classes' embeddings by correlation. {'<features>|<pairs>': {'top1', 'per_item' (0/1)}}."""
    train, test = create_god_dataset(w.kam, subjects=["sbj_3"])
    rest = stage_b_pool(w, train)
    table = load_world_ldm(w.models / "label2img").cond_stage_model.embedding.weight.detach().double().numpy()
    candidates = _standardised(table[test.item_labels()])  # (50, E): the test classes, in item order
    features = {"raw fMRI": lambda fmri: fmri[:, 0].astype(np.float64)}
    features |= {name: (lambda fmri, p=path: encoder_tokens(p, fmri)) for name, path in encoders.items()}
    out: dict[str, Any] = {}
    for name, extract in features.items():
        x_test = extract(test.fmri)
        for n in pairs:
            kept = split_images(rest, n, "pairs")[1]
            weights, bias, _ = fit_ridge(extract(kept.fmri), table[kept.item_labels()], seed=w.seed)
            sim = _standardised(x_test @ weights + bias) @ candidates.T  # (50 items, 50 classes) correlations
            correct = (sim.argmax(1) == np.arange(len(test))).astype(float)
            out[f"{name}|{n}"] = {"top1": float(correct.mean()), "per_item": correct.tolist()}
    return out


def token_signal(w: World, encoders: dict[str, Path]) -> dict:
    """What each feature space (the raw fMRI, each encoder's tokens) holds of the stimulus, as a few-shot ridge
    read-out meets it: every feature standardised with the training fMRI's statistics, as `fit_ridge` does. Over
    sbj_3's single test trials (50 images x 35 repeats): `signal_share`, the share of the features' total variance
    that the image explains (between-image over total sum of squares; pure noise gives 49 / 1749 = 0.028); over its
    training fMRI: `effective_dims`, the participation ratio of the features' covariance eigenvalues (how many
    directions the variance is spread over). {features: {...}}."""
    train, test = create_god_dataset(w.kam, subjects=["sbj_3"], include_nonavg_test=True)
    single = np.arange(len(test)) >= len(np.unique(test.image_index))  # the averages come first
    trials, images = test.fmri[single], test.image_index[single]
    features = {"raw fMRI": lambda fmri: fmri[:, 0].astype(np.float64)}
    features |= {name: (lambda fmri, p=path: encoder_tokens(p, fmri)) for name, path in encoders.items()}
    out = {}
    for name, extract in features.items():
        y = extract(train.fmri)
        scale = y.std(0) + 1e-8  # each feature standardised with the training statistics, as `fit_ridge` does
        y = (y - y.mean(0)) / scale
        x = extract(trials) / scale
        x = x - x.mean(0)
        means = np.stack([x[images == i].mean(0) for i in np.unique(images)])  # (50, F)
        counts = np.array([(images == i).sum() for i in np.unique(images)])
        between = float((counts[:, None] * means**2).sum())
        s = np.linalg.svd(y, compute_uv=False) ** 2  # covariance eigenvalues (x n)
        out[name] = {
            "signal_share": between / float((x**2).sum()),
            "effective_dims": float(s.sum() ** 2 / (s**2).sum()),
        }
    return out


def _standardised(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm: their dot products are Pearson correlations."""
    x = x - x.mean(1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


KINDS = ("probe", "recipe", "published")


def stage_b_flags(w: World, encoder: Path, kind: str, pairs: int, plan: StudyPlan) -> dict:
    """Stage B's flags for one row: the recipe or the published Stage B, on `pairs` training pairs, for a fixed
    number of optimiser steps (epochs = steps x batch / pairs), validated once at the end."""
    base = {} if kind == "recipe" else PUBLISHED_STAGE_B
    batch = base.get("batch_size", w.preset.b["batch_size"])
    steps = plan.recipe_steps if kind == "recipe" else plan.published_steps
    epochs = max(1, round(steps * batch / pairs))
    return w.b_flags(encoder, **base, num_train_images=pairs, num_epoch=epochs, val_every=epochs)


def study_rows(plan: StudyPlan) -> list[tuple[str, int, str, str, int]]:
    """Every row of the study in the order it runs: (kind, seed, world, encoder, pairs). Seed by seed, since a new
    training seed costs its Stage A runs (most of an hour per world on a 2-core CPU), and within a seed the cheap kinds
    first: an interrupted study has whole seeds of every kind it was asked for."""
    return [
        (kind, seed, world, encoder, pairs)
        for seed in plan.seeds
        for kind in KINDS
        for world in plan.worlds
        for encoder in ENCODERS
        for pairs in (plan.published_pairs if kind == "published" else plan.pairs)
    ]


def print_plan(plan: StudyPlan) -> str:
    rows = study_rows(plan)
    counts = {kind: sum(r[0] == kind for r in rows) for kind in KINDS}
    a_runs = len(plan.seeds) * len(plan.worlds) * 2
    text = (
        f"pre-training study: {len(plan.worlds)} worlds ({', '.join(plan.worlds)}) x {len(plan.seeds)} training "
        f"seeds x {len(ENCODERS)} encoders x {len(plan.pairs)} numbers of pairs ({', '.join(map(str, plan.pairs))})\n"
        f"  Stage A: {a_runs} A1 runs of {plan.a1_epochs} epochs and A2 runs of {plan.a2_epochs} epochs "
        "(pre-trained; pre-trained on voxel-permuted HCP), random encoders for no pre-training\n"
        f"  {counts['probe']} linear probes (seconds each)\n"
        f"  {counts['recipe']} Stage B runs of the demo's recipe, {plan.recipe_steps} optimiser steps each "
        f"({counts['recipe'] * plan.recipe_steps:,} steps), each decoded ({plan.eval_samples} images per test fMRI)\n"
        f"  {counts['published']} Stage B runs as published ({', '.join(map(str, plan.published_pairs))} pairs), "
        f"{plan.published_steps} optimiser steps each ({counts['published'] * plan.published_steps:,} steps), "
        "each decoded\n"
        "  rows already made are reused (the step cache); the study can be stopped and rerun at any point"
    )
    log.info("%s", text)
    return text


def pretraining_study(root: Path, plan: StudyPlan = STUDY, kinds: tuple[str, ...] = KINDS) -> Path:
    """Run (or reuse) every row of the study of the kinds `kinds`, then write the tables and figure."""
    print_plan(plan)
    worlds: dict[tuple[str, int], tuple[World, dict]] = {}
    for kind, seed, size, encoder, pairs in study_rows(plan):
        if kind not in kinds:
            continue
        if (size, seed) not in worlds:
            w = prepare(size, 0, root, train_seed=seed, stage_a=False)
            worlds[size, seed] = (w, study_encoders(w, plan))
        w, encoders = worlds[size, seed]
        if kind == "probe":
            if encoder == ENCODERS[0] and pairs == plan.pairs[0]:  # one step makes every probe of a world and seed
                paths = {name: path for name, (path, _) in encoders.items()}
                w.steps(
                    "linear probes",
                    w.out / "study" / "probes.json",
                    {n: h for n, (_, h) in encoders.items()} | {"pairs": list(plan.pairs), "ldm": w.hashes["ldm"]},
                    lambda w=w, paths=paths: write_json(
                        linear_probe(w, paths, plan.pairs), w.out / "study" / "probes.json"
                    ),
                    keep=True,
                )
                w.steps(
                    "what the tokens hold",
                    w.out / "study" / "tokens.json",
                    {n: h for n, (_, h) in encoders.items()},
                    lambda w=w, paths=paths: write_json(token_signal(w, paths), w.out / "study" / "tokens.json"),
                    keep=True,
                )
            continue
        path, a2 = encoders[encoder]
        folder = w.out / "study" / kind / encoder.replace(" ", "-") / f"pairs{pairs}"
        label = f"{kind}, {encoder}, {pairs} pairs (seed {seed}, {size}): "
        flags = stage_b_flags(w, path, kind, pairs, plan)
        decode(w, folder, label, flags, {"num_samples": plan.eval_samples}, a2, kept=True)
    return write_study(root, plan)


def collect(root: Path, plan: StudyPlan) -> list[dict]:
    """Every row made so far: {world, kind, features, pairs, metric, per_seed: {seed: per-item scores}}."""
    rows: dict[tuple, dict] = {}
    for kind, seed, size, encoder, pairs in study_rows(plan):
        out = root / "results" / "demo" / (size if seed == 0 else f"{size}-train{seed}") / "study"
        if kind == "probe":
            probes = json.loads((out / "probes.json").read_text()) if (out / "probes.json").is_file() else {}
            for features in ("raw fMRI", encoder):
                got = probes.get(f"{features}|{pairs}")
                if got is not None:
                    key = (size, kind, features, pairs, "top-1 (probe)")
                    rows.setdefault(key, {"per_seed": {}})["per_seed"][seed] = got["per_item"]
            continue
        metrics = out / kind / encoder.replace(" ", "-") / f"pairs{pairs}" / "gen_eval" / "metrics.json"
        for metric in ("top-1-class", "pcc"):
            got = item_scores(metrics, metric)
            if got is not None:
                rows.setdefault((size, kind, encoder, pairs, metric), {"per_seed": {}})["per_seed"][seed] = got
    return [
        {"world": k[0], "kind": k[1], "features": k[2], "pairs": k[3], "metric": k[4], **v} for k, v in rows.items()
    ]


def summarise(rows: list[dict]) -> list[dict]:
    """Each row's mean over seeds and items with its interval, and its paired difference from the pre-trained
    encoder's row of the same world, kind, pairs and metric (seeds that both have, items paired)."""
    index = {(r["world"], r["kind"], r["features"], r["pairs"], r["metric"]): r for r in rows}
    out = []
    for r in rows:
        base = index.get((r["world"], r["kind"], ENCODERS[0], r["pairs"], r["metric"]))
        paired = base is not None and r["features"] != ENCODERS[0]  # the same split and seed, another encoder
        row = over_seeds(r["per_seed"], base["per_seed"] if paired else None)
        diff = row.pop("minus_base", None)
        out.append({**r, **row, **({"vs_pretrained": diff} if diff is not None else {})})
    return out


def study_table(summary: list[dict], plan: StudyPlan) -> str:
    lines = [
        "# Does SC-MBM pre-training help Stage B? (cortex world)",
        "",
        "Each cell: the mean over training seeds and the 50 test items [95% interval, resampling items and seeds]; "
        "'minus pre-trained': the row's score minus the pre-trained encoder's on the same seeds and items [paired "
        "95% interval]. Probe: ridge from the features of the training pairs to the label LDM's class embeddings, "
        "50-way identification of the test classes. Recipe / published: Stage B, then 50-way top-1 (chance 0.02) "
        f"and pair-wise PCC (chance 0.5) of {plan.eval_samples} images per test fMRI.",
        "",
        "| world | Stage B | metric | features | pairs | seeds | score | minus pre-trained |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {w: i for i, w in enumerate(plan.worlds)}
    kinds = {k: i for i, k in enumerate(KINDS)}
    feats = {f: i for i, f in enumerate(("raw fMRI", *ENCODERS))}
    for r in sorted(
        summary, key=lambda r: (order[r["world"]], kinds[r["kind"]], r["metric"], r["pairs"], feats[r["features"]])
    ):
        low, high = r["interval"]
        diff = r.get("vs_pretrained")
        diff_cell = "" if diff is None else f"{diff[0]:+.3f} [{diff[1][0]:+.3f}, {diff[1][1]:+.3f}]"
        seeds = ",".join(map(str, r["seeds"]))
        lines.append(
            f"| {r['world']} | {r['kind']} | {r['metric']} | {r['features']} | {r['pairs']} | {seeds} | "
            f"{r['mean']:.3f} [{low:.3f}, {high:.3f}] | {diff_cell} |"
        )
    return "\n".join(lines) + "\n"


def study_figure(summary: list[dict], plan: StudyPlan, path: Path) -> Path:
    """Score against the number of pairs, one panel per world and kind (top-1), a line per encoder with intervals."""
    from matplotlib.figure import Figure

    panels = [(w, k) for w in plan.worlds for k in KINDS if any(r["world"] == w and r["kind"] == k for r in summary)]
    if not panels:
        return path
    fig = Figure(figsize=(3.4 * len(panels), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (world, kind) in zip(axes, panels, strict=True):
        metric = "top-1 (probe)" if kind == "probe" else "top-1-class"
        for i, features in enumerate(("raw fMRI", *ENCODERS)):
            pts = sorted(
                (r["pairs"], r["mean"], *r["interval"])
                for r in summary
                if (r["world"], r["kind"], r["features"], r["metric"]) == (world, kind, features, metric)
            )
            if pts:
                x, y, low, high = map(np.array, zip(*pts, strict=True))
                ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o-", ms=3, capsize=2, color=f"C{i}", label=features)
        ax.axhline(0.02, color="grey", lw=0.8, label="chance")
        ax.set(title=f"{world}: {kind}", xlabel="Stage B training pairs", xscale="log", ylabel="50-way top-1")
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)
    return path


def token_rows(root: Path, plan: StudyPlan) -> list[dict]:
    """Every world and seed's `token_signal` made so far: {world, seed, features, signal_share, effective_dims}."""
    rows = []
    for seed in plan.seeds:
        for size in plan.worlds:
            path = root / "results" / "demo" / (size if seed == 0 else f"{size}-train{seed}") / "study" / "tokens.json"
            if path.is_file():
                got = json.loads(path.read_text())
                rows += [{"world": size, "seed": seed, "features": f, **got[f]} for f in ("raw fMRI", *ENCODERS)]
    return rows


def token_table(rows: list[dict]) -> str:
    lines = [
        "## What the features hold",
        "",
        "Signal share: of the features' variance over sbj_3's 1,750 single test trials, the share the image explains "
        "(pure noise: 0.028). Effective dimensions: the participation ratio of the standardised features' "
        "covariance over the training fMRI. A ridge read-out from few pairs reads the directions of large variance "
        "first.",
        "",
        "| world | seed | features | signal share | effective dimensions |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['seed']} | {r['features']} | {r['signal_share']:.3f} | {r['effective_dims']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_study(root: Path, plan: StudyPlan) -> Path:
    """pretraining_study.{json,md,png} in results/demo/ from every row made so far."""
    out = root / "results" / "demo"
    summary = summarise(collect(root, plan))
    tokens = token_rows(root, plan)
    record = summary + [{"kind": "what the features hold", **r} for r in tokens]
    write_text_atomically(out / "pretraining_study.json", json.dumps(record, indent=1) + "\n")
    text = study_table(summary, plan) + ("\n" + token_table(tokens) if tokens else "")
    write_text_atomically(out / "pretraining_study.md", text)
    study_figure(summary, plan, out / "pretraining_study.png")
    log.info("\n%s", text)
    return out / "pretraining_study.md"
