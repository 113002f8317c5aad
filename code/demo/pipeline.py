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
then writes `results/demo/<size>/`: grid.png (ground truth, then decoded samples), grid_shuffled.png,
metrics.json, metrics_shuffled.json, metrics.png (decoded, control and chance per metric), report.json (every
step's recipe hash, steps and seconds, the machine, the seed) and summary.md. The stages run through their
command lines, as a user runs them. Every part trains a fixed number of steps: a result depends on the seed,
never on the machine's speed; a slow machine only takes longer (progress lines carry an ETA).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier_file import load_classifier_file
from demo import world_models
from demo.readout import attribute_readout
from demo.simulation.simulate import MARKER, make_synthetic_data
from demo.simulation.spec import SIZES
from demo.world_models import WorldSizes
from errors import UserError
from eval_metrics import chance_level
from figures import metric_bar_chart
from runtime import format_seconds, machine, pick_device

CODE = Path(__file__).resolve().parents[1]
ROOT = CODE.parent
log = logging.getLogger("mindvis.demo")

MAE = {"embed_dim": 128, "depth": 4, "num_heads": 4, "decoder_embed_dim": 64, "decoder_num_heads": 4}


@dataclass(frozen=True)
class Preset:
    """Everything one demo run does: the simulation size, the world models' sizes and each stage's flags."""

    simulation: str
    img_size: int
    world: WorldSizes
    a1: dict = field(default_factory=dict)
    a2: dict = field(default_factory=dict)
    b: dict = field(default_factory=dict)
    gen_eval: dict = field(default_factory=dict)


# Stage B's recipe (the README's "The demo" says why): one context token, a Linear of all the encoder's tokens
# started at the ridge regression onto the LDM's class embeddings of the training labels and kept there with the
# encoder; the UNet's conditioning path (the published set) and a null context trained with 10% condition dropout;
# sampling with classifier-free guidance 3. Stage A's share is short: a linear read-out of the encoder's tokens
# holds what the fMRI holds after one epoch already.
RECIPE_B = dict(global_pool=True, linear_pool=True, ridge_init=True, freeze_encoder=True, freeze_mapper=True,
                cond_dropout=0.1, guidance_scale=3.0, latent_views=4)
DEMO = Preset(
    simulation="demo", img_size=32, world=WorldSizes(),
    a1=dict(num_epoch=1, warmup_epochs=1, lr=1e-3, batch_size=32, ckpt_every=1, **MAE),
    a2=dict(num_epoch=2, warmup_epochs=1, lr=5e-4, ckpt_every=2),
    b=dict(img_size=32, batch_size=25, lr=1e-4, num_epoch=12, val_every=4, num_val_items=10, num_samples=1,
           ddim_steps=50, **RECIPE_B),
    gen_eval=dict(num_samples=5, ddim_steps=50, batch_size=50, num_trials=1000),
)  # fmt: skip
# `--levers`: each one change of the recipe, Stage B retrained (or only sampled) and scored like the recipe. The
# published conditioning trains the encoder, the mappers and the UNet's conditioning path on 77 mapped tokens.
PUBLISHED_B = dict(global_pool=False, linear_pool=False, ridge_init=False, freeze_encoder=False, freeze_mapper=False,
                   cond_dropout=0.0, guidance_scale=1.0, latent_views=0)
LEVERS = {  # name -> (Stage B flags changed, or None: the recipe's model; gen_eval flags changed)
    "published conditioning (77 tokens)": (PUBLISHED_B, {}),
    "published, global_pool (one mean token)": ({**PUBLISHED_B, "global_pool": True}, {}),
    "linear pool trained from the ridge start": ({"freeze_mapper": False}, {}),
    "linear pool trained from a random start": ({"ridge_init": False, "freeze_mapper": False}, {}),
    "encoder trained too": ({"freeze_encoder": False}, {}),
    "no condition dropout, no guidance": ({"cond_dropout": 0.0, "guidance_scale": 1.0}, {}),
    "guidance 1 at sampling (no guidance)": (None, {"guidance_scale": 1.0}),
    "guidance 2 at sampling": (None, {"guidance_scale": 2.0}),
    "guidance 5 at sampling": (None, {"guidance_scale": 5.0}),
}
PRESETS = {
    "demo": DEMO,
    "hard": dataclasses.replace(DEMO, simulation="hard"),  # the same recipe on the harder brain (data/README.md)
    "tiny": Preset(
        simulation="tiny", img_size=32,
        world=WorldSizes(per_class=2, heldout_per_class=1, n_embed=16, vq_steps=2, vq_batch=4, unet_channels=32,
                         context_dim=32, ldm_steps=2, ldm_batch=4, clf_width=8, clf_steps=2, clf_batch=4,
                         eval_samples=1, eval_steps=5),
        a1=dict(num_epoch=1, warmup_epochs=1, lr=1e-3, batch_size=32, ckpt_every=1, **MAE),
        a2=dict(num_epoch=1, warmup_epochs=1, lr=5e-4, ckpt_every=1),
        b=dict(img_size=32, batch_size=8, lr=1e-4, num_epoch=1, val_every=1, num_val_items=10, num_samples=1,
               ddim_steps=5, **{**RECIPE_B, "latent_views": 1}),
        gen_eval=dict(num_samples=1, ddim_steps=5, batch_size=50, num_trials=1000, limit=20),
    ),
}  # fmt: skip


def recipe_hash(recipe: Any) -> str:
    """A short hash of a JSON-able recipe."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamp_of(target: Path) -> Path:
    """The recipe stamp the demo writes beside everything it makes: `<target>.recipe.json`."""
    return target.parent / f"{target.name}.recipe.json"


def remove_made(target: Path) -> None:
    """Delete `target` (a file or a folder) only if the demo made it, i.e. its recipe stamp lies beside it."""
    if not stamp_of(target).is_file():
        raise UserError(f"{target} was not made by the demo (no {stamp_of(target).name} beside it); refusing to "
                        "delete it: move it away or choose another --root_path")  # fmt: skip
    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()


class Steps:
    """Runs each step unless its result exists with the same recipe hash; records what every step did."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, name: str, target: Path, recipe: dict, run: Callable[[], dict | None],
                 remove_stale: bool = True) -> str:  # fmt: skip
        """Make `target` with `run()` (which may return facts to record, e.g. steps done); returns the recipe hash.

        A `target` made by another recipe is deleted first (`remove_stale`; the simulation replaces its own); one
        without a stamp was not made by the demo and is refused."""
        digest = recipe_hash(recipe)
        target.parent.mkdir(parents=True, exist_ok=True)
        stamp = stamp_of(target)
        if target.exists() and stamp.is_file() and json.loads(stamp.read_text()).get("hash") == digest:
            done = json.loads(stamp.read_text())
            log.info("[%s] reusing %s (recipe %s, made in %s)", name, target, digest, format_seconds(done["seconds"]))
            self.records.append({"step": name, **done, "reused": True})
            return digest
        if target.exists():
            log.info("[%s] %s was made by another recipe: redoing it", name, target)
            if remove_stale:
                remove_made(target)
        log.info("[%s] running ...", name)
        start = time.time()
        facts = run() or {}
        record = {"hash": digest, "seconds": round(time.time() - start, 1), **facts, "recipe": recipe}
        stamp.write_text(json.dumps(record, indent=1, default=str) + "\n")
        log.info("[%s] done in %s -> %s", name, format_seconds(record["seconds"]), target)
        self.records.append({"step": name, **record, "reused": False})
        return digest


def run_stage(script: str, flags: dict, output_path: Path) -> Path:
    """Run a stage script in its own process, as a user would; returns its run folder. `output_path` is stamped as
    the demo's first, so that a failed attempt's folder can be removed by the next one."""
    if output_path.exists() or output_path.is_symlink():
        remove_made(output_path)  # a failed earlier attempt of this step
    argv = [sys.executable, str(CODE / script), "--output_path", str(output_path)]
    for key, value in flags.items():
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list | tuple):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", "None" if value is None else str(value)]
    log.info("$ %s", " ".join(argv[1:]))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    stamp_of(output_path).write_text(json.dumps({"made_by": "demo.pipeline.run_stage", "argv": argv[1:]}) + "\n")
    result = subprocess.run(argv)
    if result.returncode != 0:
        raise UserError(f"{script} failed (exit code {result.returncode}); its message is above")
    (run_dir,) = (p for p in output_path.glob("*/*") if p.is_dir())
    return run_dir


def simulate(data: Path, preset: Preset, seed: int, steps: Steps, snr: float | None) -> str:
    """The simulated data set (its marker, simulation.json, is the cached target)."""
    overrides = {} if snr is None else {"snr": snr}
    spec = SIZES[preset.simulation].with_overrides(**overrides)
    recipe = {"size": preset.simulation, "settings": dataclasses.asdict(spec), "seed": seed}

    def run() -> dict:  # replaces an earlier simulation there, never other files (make_synthetic_data refuses)
        make_synthetic_data(data, size=preset.simulation, seed=seed, overwrite=True, **overrides)
        return {"god_subjects": spec.god_subjects}

    return steps("simulate", data / MARKER, recipe, run, remove_stale=False)


@dataclass
class World:
    """One demo world, made or reused: its folders, the flags every stage run shares, and the recipe hashes of the
    steps the method builds on (the simulation, the world models, Stage A)."""

    preset: Preset
    size: str
    seed: int
    root: Path
    data: Path  # the simulated data set
    models: Path  # the world models: vq.pth, label2img/, classifier.pth
    out: Path  # results/demo/<name>
    steps: Steps
    hashes: dict[str, str]  # step -> recipe hash: sim, vq, ldm, clf, a1, a2

    @property
    def kam(self) -> str:
        return str(self.data / "Kamitani" / "npz")

    def b_flags(self, encoder: Path, **change: Any) -> dict:
        """Stage B's flags: the preset's, on the encoder `encoder`, with `change` applied."""
        return {"kam_path": self.kam, "pretrain_gm_path": str(self.models / "label2img"), "pretrain_mbm_path":
                str(encoder), "classifier": str(self.models / "classifier.pth"), "seed": self.seed, **self.preset.b,
                **change}  # fmt: skip

    def eval_flags(self, checkpoint: Path, **change: Any) -> dict:
        """gen_eval's flags for the Stage B checkpoint `checkpoint`, with `change` applied."""
        return {"root_path": str(self.root), "checkpoint": str(checkpoint), "kam_path": self.kam,
                "pretrain_gm_path": str(self.models / "label2img"), "classifier": str(self.models / "classifier.pth"),
                "metrics": ["mse", "pcc", "ssim", "n_way"], "seed": self.seed, **self.preset.gen_eval, **change}

    def n_way(self) -> int:
        return _n_way(self.models / "classifier.pth")


def prepare(size: str, seed: int, root: Path, snr: float | None = None) -> World:
    """The simulated brain, its world models and Stage A (A1, A2) of the preset: made, or reused when done."""
    preset = PRESETS[size]
    other_seed = f"-seed{seed}" if seed != 0 else ""  # another seed's world sits beside seed 0's
    name = (size if snr is None else f"{size}-snr{snr:g}") + other_seed
    data = root / "data" / "synthetic" / name
    # the world models depend on the categories' images only, which every brain of a preset shares
    models = root / "pretrains" / "demo" / (preset.simulation + other_seed)
    out = root / "results" / "demo" / name
    for folder in (models, out / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    device = pick_device("auto")
    steps = Steps()
    world, img = preset.world, preset.img_size

    # ---- the simulated world and its models
    sim = simulate(data, preset, seed, steps, snr)
    # the world's images: every simulation setting but the single-trial SNR, so an SNR sweep shares the models
    images = {**{k: v for k, v in dataclasses.asdict(SIZES[preset.simulation]).items() if k != "snr"}, "seed": seed}
    vq = steps("vq autoencoder", models / "vq.pth", {"images": images, "sizes": dataclasses.asdict(world),
               "img": img}, lambda: world_models.make_vq(data, models / "vq.pth", world, img, seed, device))
    ldm = steps("label-conditioned LDM", models / "label2img", {"vq": vq},
                lambda: world_models.make_ldm(data, models / "vq.pth", models / "label2img", world, img, seed, device))
    clf = steps("classifier", models / "classifier.pth", {"ldm": ldm},
                lambda: world_models.make_classifier(data, models / "label2img", models / "classifier.pth", world, img,
                                                     seed, device))
    steps("world models' report", models / "report.json", {"ldm": ldm, "classifier": clf},
          lambda: world_models.measure(data, models / "label2img", models / "classifier.pth", models, world, img, seed,
                                       device))
    w = World(preset, size, seed, root, data, models, out, steps, {"sim": sim, "vq": vq, "ldm": ldm, "clf": clf})

    # ---- Stage A, through the command lines
    w.hashes["a1"], w.hashes["a2"] = train_encoder(w, out, "")
    return w


def train_encoder(w: World, folder: Path, label: str, **a1_change: Any) -> tuple[str, str]:
    """Stage A1 then A2 of the preset (with `a1_change` applied to both, e.g. a mask ratio) into
    `folder/fmri_encoder_A1.pth` and `folder/fmri_encoder.pth`; returns their recipe hashes."""
    kam, hcp = w.kam, str(w.data / "HCP" / "npz")
    a1_flags = {"hcp_path": hcp, "kam_path": kam, "seed": w.seed, **w.preset.a1, **a1_change}
    a1 = w.steps(f"{label}stage A1", folder / "fmri_encoder_A1.pth", {"data": w.hashes["sim"], "flags": a1_flags},
                 lambda: _train("stageA1_mbm_pretrain.py", a1_flags, folder / "runs" / "a1", "checkpoint.pth",
                                folder / "fmri_encoder_A1.pth"))  # fmt: skip
    a2_flags = {"kam_path": kam, "pretrain_mbm_path": str(folder / "fmri_encoder_A1.pth"), "seed": w.seed,
                **w.preset.a2, **{k: v for k, v in a1_change.items() if k == "mask_ratio"}}  # fmt: skip
    a2 = w.steps(f"{label}stage A2", folder / "fmri_encoder.pth", {"a1": a1, "flags": a2_flags},
                 lambda: _train("stageA2_mbm_finetune.py", a2_flags, folder / "runs" / "a2", "checkpoint.pth",
                                folder / "fmri_encoder.pth"))  # fmt: skip
    return a1, a2


def decode(w: World, folder: Path, label: str, b_flags: dict | None, eval_change: dict, a2: str,
           checkpoint: Path | None = None, b_hash: str | None = None, control: bool = False,
           baselines: bool = False) -> str:  # fmt: skip
    """Stage B with `b_flags` into `folder/finetuned.pth` (None: sample the Stage B model `checkpoint`, made by the
    recipe `b_hash`, default the demo's), then gen_eval into `folder/gen_eval` (with `baselines`, also the ridge
    baseline), and with `control` the shuffled-fMRI control into `folder/control`. `a2` is the recipe hash of the
    encoder Stage B starts from; returns Stage B's hash."""
    folder.mkdir(parents=True, exist_ok=True)
    b_hash = b_hash or w.hashes.get("b", "")
    if b_flags is not None:
        checkpoint = folder / "finetuned.pth"
        recipe = {"a2": a2, "ldm": w.hashes["ldm"], "classifier": w.hashes["clf"], "flags": b_flags}
        b_hash = w.steps(f"{label}stage B", checkpoint, recipe,
                         lambda: _train("stageB_ldm_finetune.py", b_flags, folder / "runs" / "b", "finetuned.pth",
                                        checkpoint))  # fmt: skip
    for step, shuffled in (("gen_eval", False), ("control", True))[: 1 + control]:
        flags = w.eval_flags(checkpoint, shuffle_fmri=shuffled, baselines=baselines and not shuffled, **eval_change)
        w.steps(f"{label}{step}", folder / step, {"b": b_hash, "flags": flags},
                lambda flags=flags, step=step: _copy(run_stage("gen_eval.py", flags, folder / "runs" / step),
                                                     folder / step))  # fmt: skip
    return b_hash


def run(size: str, seed: int, root: Path, snr: float | None = None, levers: bool = False) -> Path:
    """The whole demo; returns the results folder. `snr` replaces the simulation's single-trial SNR (a sweep);
    `levers` also runs every change of the recipe in `LEVERS` (`levers.md`)."""
    return run_world(size, seed, root, snr, levers).out


def run_world(size: str, seed: int, root: Path, snr: float | None = None, levers: bool = False) -> World:
    """`run`, returning the world (its folders and recipe hashes) for the studies that build on it."""
    start = time.time()
    w = prepare(size, seed, root, snr)
    out = w.out
    w.hashes["b"] = decode(w, out, "", w.b_flags(out / "fmri_encoder.pth"), {}, w.hashes["a2"], control=True,
                           baselines=True)  # fmt: skip
    w.steps("attribute read-out", out / "attributes.json", {"data": w.hashes["sim"]},
            lambda: _write_json(attribute_readout(w.kam, seed=seed), out / "attributes.json"))

    for i, (b_change, eval_change) in enumerate(LEVERS.values() if levers else ()):
        b_flags = None if b_change is None else w.b_flags(out / "fmri_encoder.pth", **b_change)
        decode(w, out / "levers" / str(i), f"lever {i}: ", b_flags, eval_change, w.hashes["a2"],
               checkpoint=out / "finetuned.pth")  # fmt: skip

    # ---- the results
    decoded = json.loads((out / "gen_eval" / "metrics.json").read_text())
    control = json.loads((out / "control" / "metrics.json").read_text())
    for name, source in (("grid.png", "gen_eval/grid.png"), ("grid_shuffled.png", "control/grid.png"),
                         ("metrics.json", "gen_eval/metrics.json"), ("metrics_shuffled.json", "control/metrics.json")):
        shutil.copy2(out / source, out / name)
    names = ("mse", "pcc", "ssim", "top-1-class", "top-1-class (max)")
    chance = {k: chance_level(k, w.n_way()) for k in names}
    metric_bar_chart({"decoded": _pick(decoded, names), "shuffled fMRI (control)": _pick(control, names)},
                     out / "metrics.png", chance, title=f"MinD-Vis demo ({size}, seed {seed})")
    world_report = json.loads((w.models / "report.json").read_text())
    baselines = {**decoded.get("baselines", {}), "attributes": json.loads((out / "attributes.json").read_text())}
    report = {"size": size, "snr": snr, "seed": seed, "baselines": baselines, "machine": machine(),
              "total_seconds": round(time.time() - start, 1), "steps": w.steps.records}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    summary = write_summary(out, decoded, control, chance, world_report, report)
    if levers:
        summary += "\n" + levers_table(out, w.steps.records)
    log.info("\n%s", summary)
    log.info("demo finished in %s: %s", format_seconds(time.time() - start), out)
    return w


def levers_table(out: Path, records: list[dict]) -> str:
    """levers.md: the recipe, its control and each lever of `LEVERS`, by pair-wise PCC and n-way top-1."""
    seconds = {r["step"]: r["seconds"] for r in records}

    def row(name: str, folder: Path, b_step: str | None) -> str:
        scores = json.loads((folder / "metrics.json").read_text())["scores"]
        cells = [f"{scores[k]:.3f}" if scores.get(k) is not None else "skipped"
                 for k in ("pcc", "top-1-class", "top-1-class (max)")]  # fmt: skip
        b_time = format_seconds(seconds[b_step]) if b_step in seconds else "(the recipe's model)"
        return f"| {name} | {' | '.join(cells)} | {b_time} |"

    rows = ["| Stage B / sampling | pair-wise PCC | n-way top-1 | n-way top-1 (max) | Stage B time |",
            "| --- | --- | --- | --- | --- |", row("**the recipe**", out / "gen_eval", "stage B"),
            row("the recipe, shuffled fMRI (control)", out / "control", None)]  # fmt: skip
    rows += [row(name, out / "levers" / f"{i}" / "gen_eval", f"lever {i}: stage B") for i, name in enumerate(LEVERS)]
    text = "\n".join(["# One change of the recipe at a time", "", *rows, ""])
    (out / "levers.md").write_text(text)
    return text


def _write_json(data: dict, path: Path) -> dict:
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def _train(script: str, flags: dict, output_path: Path, artefact: str, target: Path) -> dict:
    """Run a training stage, copy its `artefact` to `target`; the facts: the run and the epochs it trained."""
    run_dir = run_stage(script, flags, output_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    epochs = len({json.loads(line)["epoch"] for line in lines if '"epoch"' in line})
    return {**_copy(run_dir / artefact, target), "steps": f"{epochs} epoch{'s' * (epochs != 1)}"}


def _copy(source: Path, target: Path) -> dict:
    shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
    return {"source": str(source)}


def _pick(metrics: dict, names: tuple[str, ...]) -> dict[str, float]:
    return {k: metrics["scores"][k] for k in names if k in metrics["scores"]}


def _n_way(classifier: Path) -> int:
    return min(50, load_classifier_file(classifier)[0].num_classes)


def write_summary(out: Path, decoded: dict, control: dict, chance: dict, world: dict, report: dict) -> str:
    """summary.md: every metric beside its chance level and the shuffled-fMRI control, the world models' quality, and
    what each step did on which machine."""
    fmt = lambda v: "skipped" if v is None else f"{v:.3f}"  # noqa: E731
    rows = ["| metric | decoded | shuffled fMRI (control) | chance |", "| --- | --- | --- | --- |"]
    rows += [f"| {k} | {fmt(decoded['scores'].get(k))} | {fmt(control['scores'].get(k))} | {fmt(v)} |"
             for k, v in chance.items()]  # fmt: skip
    steps = ["| step | steps | time | cached |", "| --- | --- | --- | --- |"]
    steps += [f"| {r['step']} | {r.get('steps', '')} | {format_seconds(r['seconds'])} | {'yes' * r['reused']} |"
              for r in report["steps"]]  # fmt: skip
    m = report["machine"]
    attributes = report["baselines"]["attributes"]
    accuracy, ldm = world["classifier_accuracy"], world["ldm_samples_of_test_classes"]
    ceiling = next(v for k, v in ldm.items() if k.startswith("n_way_top1"))
    n_way = round(1 / chance["top-1-class"])
    text = "\n".join([
        "# MinD-Vis demo on the simulated brain",
        "",
        f"Decoded images of {decoded.get('num_items', '?')} held-out test fMRI (GOD layout, subject sbj_3, test "
        "categories never seen in Stage B), scored against the images the simulated subject saw. Pair-wise rows: "
        "the fraction of other test images the reconstruction is closer to its own ground truth than to (chance "
        f"0.5). n-way: {n_way}-way top-1 semantic accuracy with the simulated world's classifier (chance 1/{n_way}), "
        "the mean over the sample sets and the best set (max). The control feeds the same model the test fMRI of "
        "other images.",
        "",
        *rows,
        "",
        "![decoded, control and chance per metric](metrics.png)",
        "",
        "What a linear read-out gets from the same fMRI (ridge regressions from the training fMRI, penalty by "
        "cross-validation on the training trials): the test images as 16x16 grey thumbnails, pair-wise PCC "
        f"identification **{report['baselines'].get('ridge_pcc', float('nan')):.3f}** (chance 0.5; the decoded images "
        f"{fmt(decoded['scores'].get('pcc'))}); the unseen test categories' attributes (shape, colour, texture, "
        f"background type and tint) **{attributes['mean']:.2f}** (chance {attributes['chance']:.2f}).",
        "",
        "The simulated world's models (`pretrains/demo/<size>/report.json`): VQ round trip "
        f"{world['vq']['psnr_db']:.1f} dB PSNR; classifier top-1 {accuracy['god_test_stimuli']:.2f} on the GOD test "
        f"stimuli, {accuracy['heldout_test_classes_vq_reconstructed']:.2f} on VQ round trips; label-conditioned LDM "
        f"samples of the test categories given the true label reach {ceiling:.3f} {n_way}-way top-1 (one unguided "
        "sample each: what the LDM renders of a category it is told; guided sampling, as the decoding uses, goes "
        "further).",
        "",
        f"Seed {report['seed']}; machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"native bf16 {'yes' if m['native_bf16'] else 'no'}, torch {m['torch']}. Total "
        f"{format_seconds(report['total_seconds'])}; every step trains a fixed number of steps:",
        "",
        *steps,
        "",
        "Grid: `grid.png` (ground truth first in each row); control: `grid_shuffled.png`.",
        "",
    ])  # fmt: skip
    (out / "summary.md").write_text(text)
    return text


def sweep_figure(outs: list[Path], path: Path) -> Path:
    """Pipeline and ridge baseline against single-trial SNR: pair-wise PCC identification and 50-way top-1."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    def load(out: Path, name: str) -> dict:
        return json.loads((out / name).read_text())

    rows = sorted(((load(o, "report.json"), load(o, "metrics.json")["scores"], load(o, "metrics_shuffled.json")
                    ["scores"]) for o in outs), key=lambda row: row[0]["snr"])  # fmt: skip
    reports, scores, control = zip(*rows, strict=True)
    snr = [r["snr"] for r in reports]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(snr, [s["pcc"] for s in scores], "o-", label="pipeline")
    left.plot(snr, [r["baselines"]["ridge_pcc"] for r in reports], "s--", label="ridge regression")
    left.plot(snr, [c["pcc"] for c in control], "x:", label="shuffled-fMRI control")
    left.axhline(0.5, color="grey", lw=0.8)
    left.set(title="pair-wise PCC identification", xlabel="single-trial SNR", xscale="log", ylim=(0.4, 1.0))
    right.plot(snr, [s["top-1-class"] for s in scores], "o-", label="pipeline")
    right.plot(snr, [c["top-1-class"] for c in control], "x:", label="shuffled-fMRI control")
    right.plot(snr, [r["baselines"]["attributes"]["mean"] for r in reports], "s--",
               label="ridge attribute read-out")  # fmt: skip
    right.axhline(1 / 50, color="grey", lw=0.8, label="50-way chance")
    right.set(title="50-way top-1 (mean of sample sets)", xlabel="single-trial SNR", xscale="log", ylim=(0, 1.05))
    for ax in (left, right):
        ax.set_xticks(snr, [f"{v:g}" for v in snr])
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    log.info("sweep: %s", path)
    return path
