"""Studies of the method on the simulated brain, beyond the demo's one run.

    PYTHONPATH=code python -m demo --curve       # the published Stage B's learning curve (docs/demo_curve.png)
    PYTHONPATH=code python -m demo --ablations   # the paper's ablations in miniature (ablations.md)

`--curve` trains Stage B exactly as published (the published conditioning: 77 mapped tokens, encoder and mappers
trained, no labels, no ridge start, no guidance; the published optimisation: AdamW at 5.3e-5, batch 5, clipping 0.5,
random crops) on the demo brain for `CURVE_EPOCHS[-1]` epochs, keeps the model after each epoch of `CURVE_EPOCHS`,
and decodes the 50 held-out test fMRI with each (and the shuffled-fMRI control). Beside the scores it measures how
much each model's ε-prediction uses the fMRI at all (`conditioning_gain`): the denoising loss on the test pairs
with each image's own fMRI against another image's, at the same timesteps and noise.

Every step is cached by recipe, as in the demo; the curve's points and the ablations' rows are written as
Markdown tables in `results/demo/<size>/` (curve.md, ablations.md) and as figures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomic import write_text_atomically
from checkpoint import save_checkpoint
from checkpoint_layouts import read_stage_a
from config import StageBConfig
from dc_ldm.ldm_for_fmri import load_finetuned
from demo.pipeline import World, decode, train_encoder
from demo.presets import PUBLISHED_STAGE_B
from demo.reports import bracket, item_scores, scored
from demo.steps import run_stage, write_json
from demo.world_models import load_world_ldm
from errors import UserError
from intervals import bootstrap_interval, over_seeds
from readers.arrays import fit_voxels
from readers.god import create_god_dataset
from readers.hcp import create_hcp_dataset
from runtime import format_seconds
from sc_mbm.mae_for_fmri import build_mae
from sc_mbm.reconstruction import ridge_reference, score
from transforms import model_image_transform

log = logging.getLogger("mindvis.demo")

CURVE_EPOCHS = (1, 2, 4, 8, 16, 24, 32, 44)  # 230 steps an epoch at batch 5: 44 epochs = 10,120 steps


def curve(w: World, epochs: tuple[int, ...] = CURVE_EPOCHS) -> Path:
    """The published Stage B's learning curve on the demo brain: test scores and conditioning gain per epoch."""
    model, per_epoch = _curve_model(w, epochs), _steps_per_epoch(w, _curve_flags(w, epochs))
    rows = [_point(curve_point(w, model, e), e, e * per_epoch) for e in epochs]
    w.steps(
        "the recipe: conditioning gain",
        w.out / "conditioning.json",
        {"b": w.hashes["b"]},
        lambda: write_json(conditioning_gain(w, w.out / "finetuned.pth"), w.out / "conditioning.json"),
        keep=True,
    )
    recipe_row = _point(w.out, None, None)
    seconds = next(r["seconds"] for r in w.steps.records if r["step"] == "curve: stage B")
    text = curve_table(rows, recipe_row, w.n_way(), seconds)
    write_text_atomically(w.out / "curve.md", text)
    curve_figure(rows, recipe_row, w.n_way(), w.out / "curve.png")
    log.info("\n%s", text)
    return w.out / "curve.md"


def _curve_model(w: World, epochs: tuple[int, ...]) -> tuple[Path, str]:
    """The curve's Stage B, trained once with a snapshot after each of `epochs`: (snapshots folder, recipe hash)."""
    out = w.out / "curve"
    flags = _curve_flags(w, epochs)
    recipe = {"a2": w.hashes["a2"], "ldm": w.hashes["ldm"], "classifier": w.hashes["clf"], "flags": flags}
    snapshots = out / "snapshots"
    b_hash = w.steps(
        "curve: stage B",
        snapshots,
        recipe,
        lambda: _train_snapshots(flags, out / "runs" / "b", snapshots),
        defer=True,
    )
    return snapshots, b_hash


def curve_point(w: World, model: tuple[Path, str], epoch: int) -> Path:
    """The curve's model (`_curve_model`) after `epoch` epochs decoded (the test fMRI and the shuffled-fMRI control)
    and its conditioning gain measured; returns the point's folder."""
    snapshots, b_hash = model
    folder, checkpoint = _curve_point(w, epoch), snapshots / f"snapshot_epoch{epoch:04d}.pth"
    decode(
        w,
        folder,
        f"curve, epoch {epoch}: ",
        None,
        {},
        w.hashes["a2"],
        checkpoint=checkpoint,
        b_hash=f"{b_hash}/{epoch}",
        control=True,
        kept=True,
    )
    w.steps(
        f"curve, epoch {epoch}: conditioning gain",
        folder / "conditioning.json",
        {"b": f"{b_hash}/{epoch}"},
        lambda: write_json(conditioning_gain(w, checkpoint), folder / "conditioning.json"),
        keep=True,
    )
    return folder


def _curve_flags(w: World, epochs: tuple[int, ...]) -> dict:
    """The curve's Stage B: as published, for the last of `epochs`, a snapshot kept after each of them."""
    return w.b_flags(
        w.out / "fmri_encoder.pth",
        **PUBLISHED_STAGE_B,
        num_epoch=max(epochs),
        snapshot_epochs=list(epochs),
        val_every=max(epochs),
    )


def _curve_point(w: World, epoch: int) -> Path:
    """The folder of the curve's point after `epoch` epochs (its gen_eval, control and conditioning gain)."""
    return w.out / "curve" / f"epoch{epoch:03d}"


def _train_snapshots(flags: dict, output_path: Path, target: Path) -> dict:
    """Run Stage B and move its snapshots into `target`; the facts: the epochs trained."""
    run_dir = run_stage("stageB_ldm_finetune.py", flags, output_path)
    target.mkdir(parents=True, exist_ok=True)
    for snap in sorted(run_dir.glob("snapshot_epoch*.pth")):
        shutil.move(snap, target / snap.name)
    return {"source": str(run_dir), "steps": f"{flags['num_epoch']} epochs"}


def _steps_per_epoch(w: World, flags: dict) -> int:
    """Optimiser steps per Stage B epoch: the training pairs (less the held-out validation images) over the batch."""
    defaults = {f.name: f.default for f in dataclasses.fields(StageBConfig)}
    train, _ = create_god_dataset(w.kam, subjects=["sbj_3"])
    if flags.get("select_on", defaults["select_on"]) == "val_split":
        train, _ = train.hold_out(flags.get("val_split", defaults["val_split"]), w.train_seed)
    return len(train) // flags["batch_size"]


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _point(folder: Path, epoch: int | None, steps: int | None) -> dict[str, Any]:
    """One point of the curve: the decoded and control scores, and the conditioning gain."""
    decoded, control = (_read(folder / f / "metrics.json") for f in ("gen_eval", "control"))
    gain = folder / "conditioning.json"
    return {
        "epoch": epoch,
        "steps": steps,
        "decoded": decoded,
        "control": control,
        "top1": decoded["scores"]["top-1-class"],
        "top1_max": decoded["scores"]["top-1-class (max)"],
        "pcc": decoded["scores"]["pcc"],
        "control_top1": control["scores"]["top-1-class"],
        "control_pcc": control["scores"]["pcc"],
        "gain": _read(gain)["gain"] if gain.is_file() else None,
        "label_gain": _read(gain)["label_gain"] if gain.is_file() else None,
    }


# ---- the paper's ablations in miniature -----------------------------------------------------------------------------

# The paper's 50-way top-1 (%, mean of 5 sample sets, GOD; Chen et al. 2023): the full method, then one change each.
PAPER = {"full": 23.9, "mask 0.35": 19.6, "mask 0.85": 16.1, "no pre-training": 2.6, "cross-attention only": 15.6}
# Stage A variants: the demo's SC-MBM (mask ratio 0.75), the other mask ratios (A1 and A2), no pre-training at all.
ENCODERS = {"full": {}, "mask 0.35": {"mask_ratio": 0.35}, "mask 0.85": {"mask_ratio": 0.85}, "no pre-training": None}


def ablations(w: World, epochs: tuple[int, ...] = CURVE_EPOCHS) -> Path:
    """Each of the paper's ablations as one change of the full method, for the published Stage B (`epochs[-1]`
    epochs: 10,120 optimiser steps at batch 5) and for the demo's recipe: 50-way top-1 and pair-wise PCC on the 50
    test fMRI, beside the paper's number. The published full row is the last point of the curve over `epochs` (the
    same run: trained here if `curve` has not)."""
    out = w.out / "ablations"
    encoders = {}
    for name, change in ENCODERS.items():
        folder = out / name.replace(" ", "_").replace(".", "")
        if name == "full":
            encoders[name] = (w.out / "fmri_encoder.pth", w.hashes["a2"])
        elif change is None:
            a2 = w.steps(
                f"{name}: random encoder",
                folder / "fmri_encoder.pth",
                {"a2": w.hashes["a2"]},
                lambda f=folder: random_encoder(w.out / "fmri_encoder.pth", f / "fmri_encoder.pth", w.train_seed),
                defer=True,
            )
            encoders[name] = (folder / "fmri_encoder.pth", a2)
        else:
            a2 = train_encoder(w, folder, f"{name}: ", defer=True, **change)[1]
            encoders[name] = (folder / "fmri_encoder.pth", a2)
    probe = {name: path for name, (path, _) in encoders.items()} | {
        "A1 of the full method": w.out / "fmri_encoder_A1.pth"
    }
    w.steps(
        "ablation: what Stage A learns",
        out / "stage_a.json",
        {n: h for n, (_, h) in encoders.items()},
        lambda: write_json(stage_a_probe(w, probe), out / "stage_a.json"),
        keep=True,
    )
    published = {**PUBLISHED_STAGE_B, "num_epoch": epochs[-1], "val_every": epochs[-1]}
    variants = {f"{name}": (encoders[name], {}) for name in ENCODERS}
    variants["cross-attention only"] = (encoders["full"], {"use_time_cond": False})
    folders = ablation_folders(w, epochs)
    rows = []
    for conditioning, base in (("published Stage B", published), ("the demo's recipe", {})):
        for name, ((encoder, a2), change) in variants.items():
            folder = folders[conditioning, name]
            if (conditioning, name) == ("published Stage B", "full"):
                curve_point(w, _curve_model(w, epochs), epochs[-1])
            elif folder != w.out:  # the recipe's full row is the demo's own run
                flags = w.b_flags(encoder, **base, **change)
                decode(w, folder, f"ablation, {conditioning}, {name}: ", flags, {}, a2, kept=True)
            rows.append(
                {
                    "conditioning": conditioning,
                    "variant": name,
                    "metrics": _read(folder / "gen_eval" / "metrics.json"),
                    "paper": PAPER[name],
                }
            )
    text = ablation_table(rows, w.n_way(), epochs[-1] * _steps_per_epoch(w, published), _read(out / "stage_a.json"))
    write_text_atomically(w.out / "ablations.md", text)
    log.info("\n%s", text)
    return w.out / "ablations.md"


ABLATED = (*ENCODERS, "cross-attention only")  # the ablations' rows under each Stage B


def ablation_folders(w: World, epochs: tuple[int, ...] = CURVE_EPOCHS) -> dict[tuple[str, str], Path]:
    """(Stage B, change) -> the folder of that ablation row's decoding (the recipe's full row: the demo's own run;
    the published full row: the last point of the curve over `epochs`)."""
    folders = {}
    for conditioning, sub in (("published Stage B", "published"), ("the demo's recipe", "recipe")):
        for name in ABLATED:
            slug = name.replace(" ", "_").replace(".", "")
            folders[conditioning, name] = w.out / "ablations" / sub / slug
    folders["the demo's recipe", "full"] = w.out
    folders["published Stage B", "full"] = _curve_point(w, epochs[-1])
    return folders


def random_encoder(template: Path, path: Path, seed: int) -> dict:
    """A Stage A checkpoint of the template's architecture with freshly initialised weights (no pre-training)."""
    stage_a = read_stage_a(template)
    torch.manual_seed(seed)
    mae = build_mae(stage_a.arch)  # the architecture and num_voxels
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": mae.state_dict(), "config": stage_a.config, "epoch": -1}, path)
    return {"source": f"initialised with seed {seed}"}


def ablation_table(rows: list[dict], n_way: int, steps: int, stage_a: dict) -> str:
    lines = [
        "# The paper's ablations in miniature, on the demo brain",
        "",
        f"One change of the full method per row; {n_way}-way top-1 (chance {1 / n_way:.3f}) as the mean of 5 sample "
        f"sets and the best set, pair-wise PCC (chance 0.5), on the 50 held-out test fMRI, each with its 95% interval "
        f"over the test items (one training seed: seed-to-seed variation is not in it). The published Stage B "
        f"trains {steps} optimiser steps per row; the demo's recipe its own 12 epochs. The paper's column is its "
        "50-way top-1 on GOD (%, mean of 5).",
        "",
        "| Stage B | change | top-1 (mean) | top-1 (best set) | pair-wise PCC | paper, top-1 % |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['conditioning']} | {r['variant']} | "
        + " | ".join(scored(r["metrics"], k) for k in ("top-1-class", "top-1-class (max)", "pcc"))
        + f" | {r['paper']} |"
        for r in rows
    ]
    lines += [
        "",
        f"What Stage A learns: masked reconstruction of sbj_3's held-out test fMRI (mask ratio "
        f"{stage_a['mask_ratio']}, {stage_a['masks']} fixed masks), the Pearson correlation on the masked "
        "voxels (`studies.stage_a_probe`).",
        "",
        "| model | masked-voxel correlation |",
        "| --- | --- |",
    ]
    intervals = stage_a.get("intervals", {})
    lines += [
        f"| {k} | {v:.3f}{bracket(intervals.get(k))} |"
        for k, v in stage_a.items()
        if k not in ("mask_ratio", "masks", "intervals")
    ]
    return "\n".join(lines) + "\n"


# ---- over training seeds ------------------------------------------------------------------------------------------


def _per_item(folder: Path, metric: str) -> list[float]:
    """A decoding's per-item scores of `metric` (`folder`/metrics.json); UserError naming the file if it has none."""
    scores = item_scores(folder / "metrics.json", metric)
    if scores is None:
        raise UserError(f"{folder / 'metrics.json'}: no per-item '{metric}' scores; run the study's steps first")
    return scores


def ablations_over_seeds(worlds: list[World], path: Path) -> Path:
    """`path` (.md, and .json beside it): each ablation row over the training seeds of `worlds` (one world, trained
    again per seed; `ablations` run for each): its mean over seeds and test items with the interval resampling both,
    and its difference from the full method under the same Stage B, paired over seeds and items."""
    scores: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for w in worlds:
        for (conditioning, name), folder in ablation_folders(w).items():
            for metric in ("top-1-class", "pcc"):
                per_seed = scores.setdefault((conditioning, name, metric), {})
                per_seed[w.train_seed] = _per_item(folder / "gen_eval", metric)
    rows = [
        {
            "conditioning": c,
            "variant": n,
            "metric": m,
            "paper": PAPER.get(n),
            **over_seeds(s, None if n == "full" else scores[c, "full", m]),
        }
        for (c, n, m), s in scores.items()
    ]
    seeds = ("seeds " if len(worlds) > 1 else "seed ") + ", ".join(str(w.train_seed) for w in worlds)
    lines = [
        f"# The paper's ablations in miniature over training {seeds} of one world",
        "",
        "Each cell: the mean over training seeds and the 50 test items [95% interval, resampling seeds and items]; "
        "'minus full': the row's score minus the full method's under the same Stage B, on the same seeds and items "
        f"[paired 95% interval]. {worlds[0].n_way()}-way top-1 is the mean of 5 sample sets (chance "
        f"{1 / worlds[0].n_way():.3f}); pair-wise PCC chance 0.5. {_seed_level(len(worlds))} The paper's column: its "
        "50-way top-1 on GOD (%).",
        "",
        "| Stage B | change | top-1 | minus full | pair-wise PCC | minus full | paper, top-1 % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_key = {(r["conditioning"], r["variant"], r["metric"]): r for r in rows}
    for conditioning, name in ablation_folders(worlds[0]):
        cells = _score_cells({m: by_key[conditioning, name, m] for m in ("top-1-class", "pcc")})
        lines.append(f"| {conditioning} | {name} | {cells} | {PAPER[name]} |")
    return _write_over_seeds(path, lines, rows, worlds)


def _seed_level(seeds: int) -> str:
    """What a table over `seeds` training seeds can say about training's own variance."""
    if seeds == 1:
        return "One training seed: the intervals are over the test items alone, without training's own variance."
    return f"With {seeds} seeds the seed level of an interval is a rough estimate."


def curve_over_seeds(worlds: list[World], path: Path, epochs: tuple[int, ...] = CURVE_EPOCHS) -> Path:
    """`path` (.md, and .json and .png beside it): the published Stage B's learning curve over the training seeds of
    `worlds` (`curve` run for each): per point, top-1 and PCC over seeds and items with their intervals, decoded
    minus the shuffled-fMRI control paired over seeds and items (above zero: the fMRI steers the decoding), and
    the conditioning gain of each seed."""
    steps_per_epoch = _steps_per_epoch(worlds[0], _curve_flags(worlds[0], epochs))
    rows = []
    for e in epochs:
        row: dict[str, Any] = {"epoch": e, "steps": e * steps_per_epoch}
        for metric in ("top-1-class", "pcc"):
            decoded = {w.train_seed: _per_item(_curve_point(w, e) / "gen_eval", metric) for w in worlds}
            control = {w.train_seed: _per_item(_curve_point(w, e) / "control", metric) for w in worlds}
            row[metric] = over_seeds(decoded, control)
            row[f"control {metric}"] = over_seeds(control)
        row["gain"] = [_read(_curve_point(w, e) / "conditioning.json")["gain"] for w in worlds]
        rows.append(row)
    n_way = worlds[0].n_way()
    seeds = ("seeds " if len(worlds) > 1 else "seed ") + ", ".join(str(w.train_seed) for w in worlds)
    lines = [
        f"# The published Stage B's learning curve over training {seeds} of one world",
        "",
        f"Each cell: the mean over training seeds and the 50 test items [95% interval, resampling seeds and items]; "
        f"'minus control': decoded minus the same models fed shuffled test fMRI, paired over seeds and items "
        f"[95% interval]: above zero, the fMRI steers the decoding. {n_way}-way top-1 (mean of 5 sample sets, chance "
        f"{1 / n_way:.3f}), pair-wise PCC (chance 0.5); conditioning gain of each seed's model. "
        f"{_seed_level(len(worlds))}",
        "",
        "| epochs | optimiser steps | top-1 | minus control | pair-wise PCC | minus control | conditioning gain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gains = ", ".join(f"{g:.3f}" for g in r["gain"])
        lines.append(f"| {r['epoch']} | {r['steps']:,} | {_score_cells(r)} | {gains} |")
    recipe = {  # the demo's recipe over the same seeds, and the label LDM's gain (the same world models each seed)
        key: float(np.mean([_per_item(w.out / "gen_eval", metric) for w in worlds]))
        for key, metric in (("top1", "top-1-class"), ("pcc", "pcc"))
    }
    gains = [_read(w.out / "conditioning.json") for w in worlds if (w.out / "conditioning.json").is_file()]
    recipe |= {k: float(np.mean([g[k] for g in gains])) for k in ("gain", "label_gain") if gains}
    curve_over_seeds_figure(rows, recipe, n_way, path.with_suffix(".png"))
    return _write_over_seeds(path, lines, rows, worlds)


def _score_cells(by_metric: dict[str, dict]) -> str:
    """Table cells of top-1 and pair-wise PCC (`intervals.over_seeds` rows): each mean with its interval, then its
    paired difference from the base row where there is one."""
    cells = []
    for metric in ("top-1-class", "pcc"):
        row = by_metric[metric]
        (low, high), difference = row["interval"], row.get("minus_base")
        cells.append(f"{row['mean']:.3f} [{low:.3f}, {high:.3f}]")
        cells.append("" if difference is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(difference[0], *difference[1]))
    return " | ".join(cells)


def _write_over_seeds(path: Path, lines: list[str], rows: list[dict], worlds: list[World]) -> Path:
    """Write a table over training seeds (`path`) and its rows as JSON beside it."""
    text = "\n".join(lines) + "\n"
    write_text_atomically(path, text)
    write_json({"rows": rows, "train_seeds": [w.train_seed for w in worlds]}, path.with_suffix(".json"))
    log.info("%s\n%s", path, text)
    return path


# ---- what Stage A learns ------------------------------------------------------------------------------------------


@torch.no_grad()
def stage_a_probe(w: World, encoders: dict[str, Path], mask_ratio: float = 0.75, masks: int = 4) -> dict[str, Any]:
    """How well each Stage A model fills in masked fMRI it never trained on, against what a linear map can.

    Held-out data: sbj_3's 50 averaged test fMRI (A1 never sees them; A2 trains on them unsupervised, as published,
    so for A2 models the number is a training fit). Masks: `masks` fixed draws of `mask_ratio` of the patches, the
    same for every model. The linear references: for each mask, a ridge regression (penalty by cross-validation)
    from the visible to the masked voxels, fitted on sbj_3's 1,200 training fMRI, and one fitted on the simulated
    HCP resting state (what pre-training sees; wrap-padded to sbj_3's voxel count as Stage A pads). Scores: the mean
    over samples of the Pearson correlation between prediction and truth on the masked voxels, with its 95% interval
    over the test fMRI (`intervals`)."""
    train, test = create_god_dataset(w.kam, subjects=["sbj_3"])
    out: dict[str, Any] = {"mask_ratio": mask_ratio, "masks": masks}
    per_item: dict[str, np.ndarray] = {}
    for name, path in encoders.items():
        stage_a = read_stage_a(path)
        model = build_mae(stage_a.arch)
        model.load_state_dict(stage_a.model)
        fmri = torch.from_numpy(fit_voxels(test.fmri, stage_a.arch["num_voxels"]))
        per_mask = [
            score(model, fmri, mask_ratio, batch_size=50, seed=w.seed + k, per_item=True)["masked_cor_per_item"]
            for k in range(masks)
        ]
        per_item[name] = np.mean(per_mask, axis=0)  # each test fMRI's correlation, averaged over the masks
    x_test = test.fmri[:, 0].astype(np.float64)
    hcp = create_hcp_dataset(w.data / "HCP" / "npz", patch_size=16).fmri[:, 0]
    references = {
        "linear map from sbj_3's training fMRI": train.fmri[:, 0],
        "linear map from the HCP resting state": fit_voxels(hcp, x_test.shape[1]),
    }
    for name, x_fit in references.items():  # the same masks for each reference
        per_item[name] = ridge_reference(x_fit, x_test, mask_ratio, masks, w.seed)
    out |= {name: float(v.mean()) for name, v in per_item.items()}
    out["intervals"] = {name: bootstrap_interval(v) for name, v in per_item.items()}  # 95% over the test fMRI
    return out


# ---- does the ε-prediction use the fMRI? -------------------------------------------------------------------------


@torch.no_grad()
def conditioning_gain(w: World, checkpoint: Path, draws: int = 8) -> dict[str, float]:
    """The denoising loss on the 50 test pairs with each image's own fMRI and with another image's (a fixed
    derangement), at the same timesteps and noise (`draws` of each per image); gain = 1 - own / other.

    0 means the ε-prediction ignores the fMRI (the sampler then cannot follow it); the label LDM's own gain with the
    true class against another class is the reference (`label_gain`)."""
    model, _ = load_finetuned(checkpoint, w.models / "label2img")
    _, test = create_god_dataset(w.kam, subjects=["sbj_3"], patch_size=model.cond_stage_model.mae.patch_size)
    num_voxels = model.cond_stage_model.mae.num_voxels
    fmri = torch.from_numpy(test.fmri[..., :num_voxels])
    transform = model_image_transform(w.preset.img_size)
    images = torch.stack([transform(test.images[i]) for i in test.image_index])
    z = model.get_first_stage_encoding(model.encode_first_stage(images))
    other = torch.roll(torch.arange(len(fmri)), 1)  # each image paired with the next image's fMRI
    context = model.get_learned_conditioning(fmri)
    own, shuffled = _denoising_losses(model, z, [context, context[other]], draws, w.seed)
    label = _label_gain(w, z, test.item_labels(), other, draws)
    return {"loss_own_fmri": own, "loss_other_fmri": shuffled, "gain": 1 - own / shuffled, **label}


def _denoising_losses(model, z: torch.Tensor, contexts: list[torch.Tensor], draws: int, seed: int) -> list[float]:
    """Mean ε-prediction MSE of latents z (N, C, h, w) under each context, at the same seeded timesteps and noise."""
    g = torch.Generator().manual_seed(seed)
    totals = [0.0] * len(contexts)
    for _ in range(draws):
        t = torch.randint(0, model.num_timesteps, (len(z),), generator=g)
        noise = torch.randn(z.shape, generator=g)
        x_t = model.q_sample(z, t, noise)
        for k, c in enumerate(contexts):
            totals[k] += torch.nn.functional.mse_loss(model.apply_model(x_t, t, c), noise).item() / draws
    return totals


def _label_gain(w: World, z: torch.Tensor, labels: np.ndarray, other: torch.Tensor, draws: int) -> dict[str, float]:
    ldm = load_world_ldm(w.models / "label2img")
    context = ldm.get_learned_conditioning(torch.from_numpy(labels))
    own, shuffled = _denoising_losses(ldm, z, [context, context[other]], draws, w.seed)
    return {"label_loss_own": own, "label_loss_other": shuffled, "label_gain": 1 - own / shuffled}


# ---- tables and figures --------------------------------------------------------------------------------------------


def curve_table(rows: list[dict], recipe: dict, n_way: int, seconds: float | None) -> str:
    took = "its time is not recorded" if seconds is None else f"Stage B took {format_seconds(seconds)}"
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# The published Stage B's learning curve on the demo brain",
        "",
        f"Stage B as published (77 mapped tokens, encoder trained, AdamW 5.3e-5, batch 5, no guidance), {n_way}-way "
        f"top-1 (chance {1 / n_way:.3f}; 5x chance {5 / n_way:.2f}) and pair-wise PCC (chance 0.5) on the 50 held-out "
        f"test fMRI x 5 samples, each with its 95% interval over the test items (one training seed); the control "
        f"decodes shuffled fMRI. Conditioning gain: 1 - loss(own fMRI) / "
        f"loss(another image's fMRI) of the ε-prediction on the test pairs (the label-conditioned LDM given the true "
        f"class against another class: {recipe['label_gain']:.3f}); {took}.",
        "",
        "| epochs | optimiser steps | top-1 (mean) | top-1 (best set) | pair-wise PCC | control top-1 | control PCC | "
        "conditioning gain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in [*rows, {**recipe, "epoch": "the demo's recipe", "steps": None}]:
        decoded, control = r["decoded"], r["control"]
        cells = [scored(decoded, k) for k in ("top-1-class", "top-1-class (max)", "pcc")]
        cells += [scored(control, k) for k in ("top-1-class", "pcc")]
        lines.append(f"| {r['epoch']} | {r['steps'] or ''} | {' | '.join(cells)} | {fmt(r['gain'])} |")
    return "\n".join(lines) + "\n"


def curve_figure(rows: list[dict], recipe: dict, n_way: int, path: Path) -> Path:
    """Top-1, pair-wise PCC and conditioning gain against optimiser steps, decoded and control (one run)."""
    series = {
        key: [("published Stage B", [r[key] for r in rows], None)]
        + ([("shuffled-fMRI control", [r[control] for r in rows], None)] if control else [])
        for key, control in (("top1", "control_top1"), ("pcc", "control_pcc"), ("gain", None))
    }
    return _curve_panels([r["steps"] for r in rows], series, recipe, n_way, path)


def curve_over_seeds_figure(rows: list[dict], recipe: dict, n_way: int, path: Path) -> Path:
    """`curve_figure` over training seeds: each mean with its 95% band (seeds and items resampled), decoded and
    control, and each seed's conditioning gain."""
    band = lambda rs, k: ([r[k]["mean"] for r in rs], [r[k]["interval"] for r in rs])  # noqa: E731
    series = {
        key: [("published Stage B", *band(rows, metric)), ("shuffled-fMRI control", *band(rows, f"control {metric}"))]
        for key, metric in (("top1", "top-1-class"), ("pcc", "pcc"))
    }
    seeds = rows[0]["top-1-class"]["seeds"]
    series["gain"] = [(f"training seed {s}", [r["gain"][k] for r in rows], None) for k, s in enumerate(seeds)]
    return _curve_panels([r["steps"] for r in rows], series, recipe, n_way, path)


def _curve_panels(steps: list[int], series: dict[str, list], recipe: dict, n_way: int, path: Path) -> Path:
    """Three panels against optimiser steps (top1, pcc, gain): each (label, values, band or None) of `series`, the
    recipe's scores and the label LDM's gain as lines, chance (and 5x chance for top-1)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    titles = {"top1": f"{n_way}-way top-1 (mean of 5 sample sets)", "pcc": "pair-wise PCC identification"}
    chance = {"top1": 1 / n_way, "pcc": 0.5, "gain": 0.0}
    for ax, key in zip(axes, ("top1", "pcc", "gain"), strict=True):
        for k, (label, values, bands) in enumerate(series[key]):
            color = f"C{(0, 1, 4, 5, 6, 7)[k]}"  # C2 and C3: the recipe's and the label LDM's lines
            ax.plot(steps, values, "o-" if k == 0 else "x:", color=color, label=label)
            if bands is not None:
                low, high = zip(*bands, strict=True)
                ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
        if recipe.get(key) is not None:
            ax.axhline(recipe[key], color="C2", ls="--", label="the demo's recipe")
        if key == "gain" and recipe.get("label_gain") is not None:
            ax.axhline(recipe["label_gain"], color="C3", ls=":", label="the label LDM, true class")
        ax.axhline(chance[key], color="grey", lw=0.8, label="chance" if key != "gain" else "no use of the fMRI")
        if key == "top1":
            ax.axhline(5 / n_way, color="grey", lw=0.8, ls=":", label="5x chance")
        ax.set(title=titles.get(key, "conditioning gain"), xlabel="optimiser steps (batch 5)", xscale="log")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
