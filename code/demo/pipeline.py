"""The demo pipeline: simulate a brain, train its world's models, run every stage through its command line, score.

Steps, each cached beside its result with a hash of its recipe (the preset's values and the recipes of the steps
it builds on), so a second run reuses what is done and an edited preset redoes exactly what it changes:
  1. simulate the brain (`data/synthetic/<size>`, never over real data in `data/`);
  2. train the simulated world's own "ImageNet" models (`pretrains/demo/<size>`): a VQ autoencoder, a
     label-conditioned LDM in the published label2img layout and an n-way classifier, and measure them;
  3. Stage A1 on the simulated HCP resting state and the GOD training fMRI (the published include_kam);
  4. Stage A2 on the GOD test fMRI of sbj_3;
  5. Stage B on sbj_3's training pairs;
  6. gen_eval on the 50 held-out test fMRI, and the same model fed *shuffled* test fMRI (a control that must
     stay at chance);
then writes `results/demo/<size>/`: grid.png (ground truth, then decoded samples), grid_shuffled.png, grid_pair.png
(the first 10 rows of both), metrics.json, metrics_shuffled.json, metrics.png (decoded, control and chance per
metric), report.json (every step's recipe hash, steps and seconds, the machine, the seed) and summary.md. The
stages run through their command lines, as a user runs them (`demo/steps.py`; the presets in `demo/presets.py`, the
reports in `demo/reports.py`). Every part trains a fixed number of steps: a result depends on the seed, never on the
machine's speed; a slow machine only takes longer (progress lines carry an ETA).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomic import write_text_atomically
from classifier_file import load_classifier_file
from demo import world_models
from demo.presets import LEVERS, PRESETS, Preset
from demo.readout import attribute_readout
from demo.reports import levers_table, pick_scores, write_summary
from demo.simulation.simulate import MARKER, make_synthetic_data
from demo.simulation.spec import IMAGE_SETTINGS, SIZES, SimSpec
from demo.steps import Ledger, Steps, copy_result, run_stage, train_stage, write_json
from eval_metrics import chance_level
from figures import grids_side_by_side, metric_bar_chart
from runtime import format_seconds, machine, pick_device

log = logging.getLogger("mindvis.demo")


def simulate(data: Path, preset: Preset, seed: int, steps: Steps, snr: float | None) -> str:
    """The simulated data set (its marker, simulation.json, is the cached target)."""
    overrides = {} if snr is None else {"snr": snr}
    spec = SIZES[preset.simulation].with_overrides(**overrides)
    recipe = {"size": preset.simulation, "settings": recorded_settings(spec), "seed": seed}

    def run() -> dict:  # replaces an earlier simulation there, never other files (make_synthetic_data refuses)
        make_synthetic_data(data, size=preset.simulation, seed=seed, overwrite=True, **overrides)
        return {"god_subjects": spec.god_subjects}

    return steps("simulate", data / MARKER, recipe, run, remove_stale=False)


def recorded_settings(spec: SimSpec) -> dict:
    """The settings a simulation's recipe records: a world without NSD subjects leaves out the NSD settings, so the
    worlds simulated before NSD was added keep their recipes (and their cached steps)."""
    settings = dataclasses.asdict(spec)
    if not spec.nsd_subjects:
        settings = {k: v for k, v in settings.items() if not k.startswith("nsd_")}
    return settings


@dataclass
class World:
    """One demo world, made or reused: its folders, the flags every stage run shares, and the recipe hashes of the
    steps the method builds on (the simulation, the world models, Stage A)."""

    preset: Preset
    size: str
    seed: int  # the world's: the simulated brain and its models
    train_seed: int  # every stage's: Stage A, Stage B, gen_eval (the same as `seed` unless asked otherwise)
    root: Path
    data: Path  # the simulated data set
    models: Path  # the world models: vq.pth, label2img/, classifier.pth
    out: Path  # results/demo/<name>
    steps: Steps
    hashes: dict[str, str]  # step -> recipe hash: sim, vq, ldm, clf, a1, a2

    @property
    def kam(self) -> str:
        return str(self.data / "Kamitani" / "npz")

    @property
    def target_flags(self) -> dict:
        """The flags that point A2, Stage B and gen_eval at the preset's target data."""
        if self.preset.target == "NSD":
            return {"dataset": "NSD", "nsd_path": str(self.data / "NSD" / "mindeye2"), "nsd_subs": ["subj01"]}
        return {"kam_path": self.kam}

    def b_flags(self, encoder: Path, **change: Any) -> dict:
        """Stage B's flags: the preset's, on the encoder `encoder`, with `change` applied."""
        return {
            **self.target_flags,
            "pretrain_gm_path": str(self.models / "label2img"),
            "pretrain_mbm_path": str(encoder),
            "classifier": str(self.models / "classifier.pth"),
            "seed": self.train_seed,
            **self.preset.b,
            **change,
        }

    def eval_flags(self, checkpoint: Path, **change: Any) -> dict:
        """gen_eval's flags for the Stage B checkpoint `checkpoint`, with `change` applied."""
        return {
            "root_path": str(self.root),
            "checkpoint": str(checkpoint),
            **self.target_flags,
            "pretrain_gm_path": str(self.models / "label2img"),
            "classifier": str(self.models / "classifier.pth"),
            "metrics": ["mse", "pcc", "ssim", "n_way"],
            "seed": self.train_seed,
            **self.preset.gen_eval,
            **change,
        }

    def n_way(self) -> int:
        return min(50, load_classifier_file(self.models / "classifier.pth")[0].num_classes)


def world_name(size: str, seed: int, snr: float | None = None) -> str:
    """The name of a world's data and results folders: `<size>[-snr<x>][-seed<S>]`."""
    return (size if snr is None else f"{size}-snr{snr:g}") + (f"-seed{seed}" if seed != 0 else "")


def prepare(
    size: str,
    seed: int,
    root: Path,
    snr: float | None = None,
    train_seed: int | None = None,
    stage_a: bool = True,
) -> World:
    """The simulated brain, its world models and (with `stage_a`) Stage A (A1, A2) of the preset: made, or reused.

    `train_seed` (default `seed`) seeds the stages alone: another training run on the same world, whose results sit
    in `results/demo/<name>-train<T>`."""
    preset = PRESETS[size]
    other_seed = f"-seed{seed}" if seed != 0 else ""  # another seed's world sits beside seed 0's
    name = world_name(size, seed, snr)
    out_name = name if train_seed is None or train_seed == seed else f"{name}-train{train_seed}"
    data = root / "data" / "synthetic" / name
    # the world models depend on the categories' images only, which every brain of a preset shares (and the cortex
    # presets share the demo's: the same images)
    models = root / "pretrains" / "demo" / ((preset.models or preset.simulation) + other_seed)
    out = root / "results" / "demo" / out_name
    for folder in (models, out / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    device = pick_device("auto")
    steps = Steps(Ledger(root))
    world, img = preset.world, preset.img_size

    # ---- the simulated world and its models
    sim = simulate(data, preset, seed, steps, snr)
    # the world's images (the settings that make them, and the seed): an SNR sweep or a cortex world shares the models
    settings = dataclasses.asdict(SIZES[preset.simulation])
    images = {**{k: settings[k] for k in IMAGE_SETTINGS}, "seed": seed}
    vq = steps(
        "vq autoencoder",
        models / "vq.pth",
        {"images": images, "sizes": dataclasses.asdict(world), "img": img},
        lambda: world_models.make_vq(data, models / "vq.pth", world, img, seed, device),
    )
    ldm = steps(
        "label-conditioned LDM",
        models / "label2img",
        {"vq": vq, "time_embed_condtion": "pytorch default"},  # its file's unused path, as built (was: zero)
        lambda: world_models.make_ldm(data, models / "vq.pth", models / "label2img", world, img, seed, device),
    )
    clf = steps(
        "classifier",
        models / "classifier.pth",
        {"ldm": ldm},
        lambda: world_models.make_classifier(
            data, models / "label2img", models / "classifier.pth", world, img, seed, device
        ),
    )
    steps(
        "world models' report",
        models / "report.json",
        {"ldm": ldm, "classifier": clf},
        lambda: world_models.measure(
            data, models / "label2img", models / "classifier.pth", models, world, img, seed, device
        ),
    )
    hashes = {"sim": sim, "vq": vq, "ldm": ldm, "clf": clf}
    w = World(preset, size, seed, seed if train_seed is None else train_seed, root, data, models, out, steps, hashes)

    # ---- Stage A, through the command lines
    if stage_a:
        w.hashes["a1"], w.hashes["a2"] = train_encoder(w, out, "")
    return w


def train_encoder(
    w: World, folder: Path, label: str, a2_change: dict | None = None, defer: bool = False, **a1_change: Any
) -> tuple[str, str]:
    """Stage A1 then A2 of the preset into `folder/fmri_encoder_A1.pth` and `folder/fmri_encoder.pth`, with
    `a1_change` applied to A1 (its mask ratio to A2 too) and `a2_change` to A2; returns their recipe hashes. `defer`:
    both are made only when a step that builds on them runs (a study's encoder; `demo.steps.Steps`)."""
    kam, hcp = w.kam, str(w.data / "HCP" / "npz")
    a1_flags = {"hcp_path": hcp, "kam_path": kam, "seed": w.train_seed, **w.preset.a1, **a1_change}
    if a1_flags.get("include_nsd"):
        a1_flags["nsd_path"] = str(w.data / "NSD" / "mindeye2")
    a1 = w.steps(
        f"{label}stage A1",
        folder / "fmri_encoder_A1.pth",
        {"data": w.hashes["sim"], "flags": a1_flags},
        lambda: train_stage(
            "stageA1_mbm_pretrain.py",
            a1_flags,
            folder / "runs" / "a1",
            "checkpoint.pth",
            folder / "fmri_encoder_A1.pth",
        ),
        defer=defer,
    )
    a2_change = {**{k: v for k, v in a1_change.items() if k == "mask_ratio"}, **(a2_change or {})}
    return a1, train_a2(w, folder / "fmri_encoder_A1.pth", a1, folder, label, defer=defer, **a2_change)


def train_a2(w: World, a1_path: Path, a1: str, folder: Path, label: str, defer: bool = False, **a2_change: Any) -> str:
    """Stage A2 of the preset (with `a2_change`) from the A1 checkpoint `a1_path` (made by the recipe `a1`) into
    `folder/fmri_encoder.pth`; returns its recipe hash (`defer`: made when a step that builds on it runs)."""
    a2_flags = {
        **w.target_flags,
        "pretrain_mbm_path": str(a1_path),
        "seed": w.train_seed,
        **w.preset.a2,
        **a2_change,
    }
    return w.steps(
        f"{label}stage A2",
        folder / "fmri_encoder.pth",
        {"a1": a1, "flags": a2_flags},
        lambda: train_stage(
            "stageA2_mbm_finetune.py", a2_flags, folder / "runs" / "a2", "checkpoint.pth", folder / "fmri_encoder.pth"
        ),
        defer=defer,
    )


def decode(
    w: World,
    folder: Path,
    label: str,
    b_flags: dict | None,
    eval_change: dict,
    a2: str,
    checkpoint: Path | None = None,
    b_hash: str | None = None,
    control: bool = False,
    baselines: bool = False,
    kept: bool = False,
) -> str:
    """Stage B with `b_flags` into `folder/finetuned.pth` (None: sample the Stage B model `checkpoint`, made by the
    recipe `b_hash`, default the demo's), then gen_eval into `folder/gen_eval` (with `baselines`, also the ridge
    baseline), and with `control` the shuffled-fMRI control into `folder/control`. `a2` is the recipe hash of the
    encoder Stage B starts from; returns Stage B's hash. `kept` (a study's row): the scores are kept in the ledger
    and Stage B is deferred, made only if a decoding the ledger lacks needs it (`demo.steps.Steps`)."""
    folder.mkdir(parents=True, exist_ok=True)
    b_hash = b_hash or w.hashes.get("b", "")
    if b_flags is not None:
        checkpoint = folder / "finetuned.pth"
        recipe = {"a2": a2, "ldm": w.hashes["ldm"], "classifier": w.hashes["clf"], "flags": b_flags}
        b_hash = w.steps(
            f"{label}stage B",
            checkpoint,
            recipe,
            lambda: train_stage("stageB_ldm_finetune.py", b_flags, folder / "runs" / "b", "finetuned.pth", checkpoint),
            defer=kept,
        )
    for step, shuffled in (("gen_eval", False), ("control", True))[: 1 + control]:
        flags = w.eval_flags(checkpoint, shuffle_fmri=shuffled, baselines=baselines and not shuffled, **eval_change)
        w.steps(
            f"{label}{step}",
            folder / step,
            {"b": b_hash, "flags": flags},
            lambda flags=flags, step=step: copy_result(
                run_stage("gen_eval.py", flags, folder / "runs" / step), folder / step
            ),
            keep=kept,
        )
    return b_hash


def run(
    size: str, seed: int, root: Path, snr: float | None = None, levers: bool = False, train_seed: int | None = None
) -> Path:
    """The whole demo; returns the results folder. `snr` replaces the simulation's single-trial SNR (a sweep);
    `levers` also runs every change of the recipe in `LEVERS` (`levers.md`); `train_seed` seeds the stages alone."""
    return run_world(size, seed, root, snr, levers, train_seed).out


def run_world(
    size: str, seed: int, root: Path, snr: float | None = None, levers: bool = False, train_seed: int | None = None
) -> World:
    """`run`, returning the world (its folders and recipe hashes) for the studies that build on it."""
    start = time.time()
    w = prepare(size, seed, root, snr, train_seed)
    out = w.out
    w.hashes["b"] = decode(
        w, out, "", w.b_flags(out / "fmri_encoder.pth"), {}, w.hashes["a2"], control=True, baselines=True
    )
    if w.preset.target == "GOD":  # the attributes of GOD's unseen test categories (NSD's test images are scenes)
        w.steps(
            "attribute read-out",
            out / "attributes.json",
            {"data": w.hashes["sim"]},
            lambda: write_json(attribute_readout(w.kam, seed=seed), out / "attributes.json"),
        )

    for i, (b_change, eval_change) in enumerate(LEVERS.values() if levers else ()):
        b_flags = None if b_change is None else w.b_flags(out / "fmri_encoder.pth", **b_change)
        decode(
            w,
            out / "levers" / str(i),
            f"lever {i}: ",
            b_flags,
            eval_change,
            w.hashes["a2"],
            checkpoint=out / "finetuned.pth",
        )

    # ---- the results
    decoded = json.loads((out / "gen_eval" / "metrics.json").read_text())
    control = json.loads((out / "control" / "metrics.json").read_text())
    for name, source in (
        ("grid.png", "gen_eval/grid.png"),
        ("grid_shuffled.png", "control/grid.png"),
        ("metrics.json", "gen_eval/metrics.json"),
        ("metrics_shuffled.json", "control/metrics.json"),
    ):
        shutil.copy2(out / source, out / name)
    grids_side_by_side(
        {"decoded (truth, then the samples)": out / "grid.png", "shuffled-fMRI control": out / "grid_shuffled.png"},
        out / "grid_pair.png",
        row_height=w.preset.img_size,
    )
    names = ("mse", "pcc", "ssim", "top-1-class", "top-1-class (max)")
    chance = {k: chance_level(k, w.n_way()) for k in names}
    metric_bar_chart(
        {"decoded": pick_scores(decoded, names), "shuffled fMRI (control)": pick_scores(control, names)},
        out / "metrics.png",
        chance,
        title=f"MinD-Vis demo ({size}, seed {seed}, training seed {w.train_seed}; 95% intervals over test items)",
        intervals={"decoded": decoded.get("intervals", {}), "shuffled fMRI (control)": control.get("intervals", {})},
    )
    world_report = json.loads((w.models / "report.json").read_text())
    baselines = decoded.get("baselines", {})
    if (out / "attributes.json").is_file():
        baselines["attributes"] = json.loads((out / "attributes.json").read_text())
    report = {
        "size": size,
        "target": w.preset.target,
        "snr": snr,
        "seed": seed,
        "train_seed": w.train_seed,
        "baselines": baselines,
        "machine": machine(),
        "total_seconds": round(time.time() - start, 1),
        "steps": w.steps.records,
    }
    write_text_atomically(out / "report.json", json.dumps(report, indent=1, default=str) + "\n")
    summary = write_summary(out, decoded, control, chance, world_report, report)
    if levers:
        summary += "\n" + levers_table(out, w.steps.records)
    log.info("\n%s", summary)
    log.info("demo finished in %s: %s", format_seconds(time.time() - start), out)
    return w
