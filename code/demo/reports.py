"""The demo's reports: summary.md (every metric beside chance and the control, the world models, the steps),
levers.md and the SNR sweep's figure."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from atomic import write_text_atomically
from demo.presets import LEVERS
from intervals import bootstrap_interval
from runtime import format_seconds

log = logging.getLogger("mindvis.demo")


def bracket(interval: list[float] | tuple[float, float] | None, digits: int = 3) -> str:
    """ " [low, high]" for a score's 95% interval, or nothing for a score without one (a run that predates them)."""
    return "" if interval is None else f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def scored(metrics: dict, name: str) -> str:
    """A score of a metrics.json as `0.123 [0.100, 0.150]`, with its 95% interval over test items where it has one."""
    value, interval = metrics["scores"].get(name), metrics.get("intervals", {}).get(name)
    if value is None:
        return "skipped"
    return f"{value:.3f}{bracket(interval)}"


def item_scores(path: Path, metric: str) -> list[float] | None:
    """The per-item scores of `metric` in a gen_eval metrics.json, or None where the file or the metric is absent."""
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("per_item", {}).get(metric)


def pick_scores(metrics: dict, names: tuple[str, ...]) -> dict[str, float]:
    """The scores of a metrics.json named in `names` (those it has)."""
    return {k: metrics["scores"][k] for k in names if k in metrics["scores"]}


def levers_table(out: Path, records: list[dict]) -> str:
    """levers.md: the recipe, its control and each lever of `LEVERS`, by pair-wise PCC and n-way top-1."""
    seconds = {r["step"]: r["seconds"] for r in records}

    def row(name: str, folder: Path, b_step: str | None) -> str:
        metrics = json.loads((folder / "metrics.json").read_text())
        cells = [scored(metrics, k) for k in ("pcc", "top-1-class", "top-1-class (max)")]
        b_time = format_seconds(seconds[b_step]) if b_step in seconds else "(the recipe's model)"
        return f"| {name} | {' | '.join(cells)} | {b_time} |"

    rows = [
        "| Stage B / sampling | pair-wise PCC [95% interval] | n-way top-1 | n-way top-1 (max) | Stage B time |",
        "| --- | --- | --- | --- | --- |",
        row("**the recipe**", out / "gen_eval", "stage B"),
        row("the recipe, shuffled fMRI (control)", out / "control", None),
    ]
    rows += [row(name, out / "levers" / f"{i}" / "gen_eval", f"lever {i}: stage B") for i, name in enumerate(LEVERS)]
    text = "\n".join(["# One change of the recipe at a time", "", *rows, ""])
    write_text_atomically(out / "levers.md", text)
    return text


def write_summary(out: Path, decoded: dict, control: dict, chance: dict, world: dict, report: dict) -> str:
    """summary.md: every metric beside its chance level and the shuffled-fMRI control, the world models' quality, and
    what each step did on which machine."""
    fmt = lambda v: "skipped" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [
        "| metric | decoded [95% interval] | shuffled fMRI (control) [95% interval] | chance |",
        "| --- | --- | --- | --- |",
    ]
    rows += [f"| {k} | {scored(decoded, k)} | {scored(control, k)} | {fmt(v)} |" for k, v in chance.items()]
    steps = ["| step | steps | time | cached |", "| --- | --- | --- | --- |"]
    steps += [
        f"| {r['step']} | {r.get('steps', '')} | {format_seconds(r['seconds'])} | {'yes' * r['reused']} |"
        for r in report["steps"]
    ]
    m = report["machine"]
    attributes, baselines = report["baselines"].get("attributes"), report["baselines"]
    attribute_text = (
        f"; the unseen test categories' attributes (shape, colour, texture, background type and tint) "
        f"**{attributes['mean']:.2f}**{bracket(attributes.get('mean_interval'), 2)} "
        f"(chance {attributes['chance']:.2f})"
        if attributes
        else ""
    )
    what = (
        "NSD layout (MindEye2's release), subject subj01, the shared test images (seen by every subject, never in "
        "Stage B), each the mean of its 3 presentations"
        if report.get("target") == "NSD"
        else "GOD layout, subject sbj_3, test categories never seen in Stage B"
    )
    accuracy, ldm = world["classifier_accuracy"], world["ldm_samples_of_test_classes"]
    ceiling = next(v for k, v in ldm.items() if k.startswith("n_way_top1 ("))
    god_test, clf_intervals = accuracy["god_test_stimuli"], world.get("classifier_accuracy_intervals", {})
    n_way = round(1 / chance["top-1-class"])
    text = "\n".join(
        [
            "# MinD-Vis demo on the simulated brain",
            "",
            f"Decoded images of {decoded.get('num_items', '?')} held-out test fMRI ({what}), scored against the "
            "images the simulated subject saw. Pair-wise rows: "
            "the fraction of other test images the reconstruction is closer to its own ground truth than to (chance "
            f"0.5). n-way: {n_way}-way top-1 semantic accuracy with the simulated world's classifier "
            f"(chance 1/{n_way}), "
            "the mean over the sample sets and the best set (max). The control feeds the same model the test fMRI of "
            "other images. Intervals: 95% bootstrap over the test items (each item's samples resampled together; "
            "one training run, so they leave out seed-to-seed variation).",
            "",
            *rows,
            "",
            "![decoded, control and chance per metric](metrics.png)",
            "",
            "What a linear read-out gets from the same fMRI (ridge regressions from the training fMRI, penalty by "
            "cross-validation on the training trials): the test images as 16x16 grey thumbnails, pair-wise PCC "
            f"identification **{baselines.get('ridge_pcc', float('nan')):.3f}**"
            f"{bracket(baselines.get('ridge_pcc_interval'), 3)} (chance 0.5; the decoded "
            "images "
            f"{fmt(decoded['scores'].get('pcc'))}){attribute_text}.",
            "",
            "The simulated world's models (`pretrains/demo/<size>/report.json`): VQ round trip "
            f"{world['vq']['psnr_db']:.1f} dB PSNR; classifier top-1 {god_test:.2f}"
            f"{bracket(clf_intervals.get('god_test_stimuli'), 2)} on the GOD "
            f"test stimuli, {accuracy['heldout_test_classes_vq_reconstructed']:.2f}"
            f"{bracket(clf_intervals.get('heldout_test_classes_vq_reconstructed'), 2)}"
            " on VQ round trips; "
            "label-conditioned LDM "
            f"samples of the test categories given the true label reach {ceiling:.3f}"
            f"{bracket(ldm.get('n_way_top1_interval'), 3)} {n_way}-way top-1 (one unguided "
            "sample each: what the LDM renders of a category it is told; guided sampling, as the decoding uses, goes "
            "further).",
            "",
            f"Seed {report['seed']} (world), training seed {report.get('train_seed', report['seed'])}; machine: "
            f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
            f"native bf16 {'yes' if m['native_bf16'] else 'no'}, torch {m['torch']}. Total "
            f"{format_seconds(report['total_seconds'])}; every step trains a fixed number of steps:",
            "",
            *steps,
            "",
            "Grid: `grid.png` (ground truth first in each row); control: `grid_shuffled.png`.",
            "",
        ]
    )
    write_text_atomically(out / "summary.md", text)
    return text


SEED_METRICS = ("pcc", "ssim", "top-1-class", "mse")
KINDS = {"decoded": "metrics", "control": "metrics_shuffled"}  # the metrics files a demo run keeps


def seeds_table(outs: list[Path], path: Path) -> str:
    """`path` (markdown): each metric over several training runs of one world (`results/demo/<name>-train<T>`), the
    decoded and the shuffled-fMRI control: the mean over runs, each run's score, and a 95% interval from resampling
    test items and runs (`intervals.bootstrap_interval` on the (runs, items) scores)."""
    runs = [{kind: json.loads((out / f"{folder}.json").read_text()) for kind, folder in KINDS.items()} for out in outs]
    seeds = [json.loads((out / "report.json").read_text()).get("train_seed") for out in outs]
    lines = [
        f"# The demo's recipe over {len(outs)} training seeds ({', '.join(map(str, seeds))}) of one world",
        "",
        "Each score: the mean over the runs, [its 95% interval, resampling test items and runs], then each run's. "
        f"With {len(outs)} runs the seed level of the interval is a rough estimate.",
        "",
        "| metric | decoded | runs | shuffled fMRI (control) | runs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for metric in SEED_METRICS:
        cells = []
        for kind in KINDS:
            per_item = [run[kind].get("per_item", {}).get(metric) for run in runs]
            scores = [run[kind]["scores"].get(metric) for run in runs]
            if any(p is None for p in per_item):
                cells += ["n/a", "n/a"]
                continue
            low, high = bootstrap_interval(np.array(per_item))
            cells += [
                f"{np.mean(scores):.3f} [{low:.3f}, {high:.3f}]",
                ", ".join(f"{v:.3f}" for v in scores),
            ]
        lines.append(f"| {metric} | {' | '.join(cells)} |")
    text = "\n".join(lines) + "\n"
    write_text_atomically(path, text)
    log.info("training seeds: %s\n%s", path, text)
    return text


def sweep(outs: list[Path], path: Path) -> Path:
    """The single-trial SNR sweep: `path` (png) plots the pipeline, its shuffled-fMRI control and the linear
    baselines against SNR, each with its 95% interval over test items, and `path` with .md tables the same numbers."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    def load(out: Path, name: str) -> dict:
        return json.loads((out / name).read_text())

    runs = sorted(
        (
            {
                "report": load(o, "report.json"),
                "decoded": load(o, "metrics.json"),
                "control": load(o, "metrics_shuffled.json"),
            }
            for o in outs
        ),
        key=lambda run: run["report"]["snr"],
    )
    snr = [run["report"]["snr"] for run in runs]

    def series(kind: str, metric: str | None) -> tuple[list[float], list[list[float] | None]]:
        baselines = [run["report"]["baselines"] for run in runs]
        if kind == "ridge":  # fMRI -> image, scored by pair-wise PCC
            return [b["ridge_pcc"] for b in baselines], [b.get("ridge_pcc_interval") for b in baselines]
        if kind == "attributes":  # fMRI -> the test categories' attributes, the share read right
            return [b["attributes"]["mean"] for b in baselines], [
                b["attributes"].get("mean_interval") for b in baselines
            ]
        metrics = [run[kind] for run in runs]
        return [m["scores"][metric] for m in metrics], [m.get("intervals", {}).get(metric) for m in metrics]

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    panels = {
        "pcc": ("pair-wise PCC identification", 0.5, (0.4, 1.0), "ridge", "ridge fMRI -> image"),
        "top-1-class": (
            "50-way top-1 (mean of sample sets)",
            1 / 50,
            (0, 1.05),
            "attributes",
            "ridge attribute read-out",
        ),
    }
    for ax, (metric, (title, chance, ylim, baseline, name)) in zip(fig.subplots(1, 2), panels.items(), strict=True):
        for kind, style, label in (
            ("decoded", "o-", "pipeline"),
            (baseline, "s--", name),
            ("control", "x:", "shuffled-fMRI control"),
        ):
            values, intervals = series(kind, metric)
            errors = np.array(
                [[v - i[0], i[1] - v] if i else [0.0, 0.0] for v, i in zip(values, intervals, strict=True)]
            ).T
            ax.errorbar(snr, values, yerr=errors, fmt=style, capsize=3, label=label)
        ax.axhline(chance, color="grey", lw=0.8, label="chance")
        ax.set(title=title, xlabel="single-trial SNR", xscale="log", ylim=ylim)
        ax.set_xticks(snr, [f"{v:g}" for v in snr])
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)

    rows = [
        ("pipeline: pair-wise PCC", "decoded", "pcc"),
        ("pipeline: 50-way top-1", "decoded", "top-1-class"),
        ("control: pair-wise PCC", "control", "pcc"),
        ("control: 50-way top-1", "control", "top-1-class"),
        ("ridge fMRI -> image, pair-wise PCC", "ridge", "pcc"),
        ("ridge attribute read-out", "attributes", None),
    ]
    attribute_chance = runs[0]["report"]["baselines"]["attributes"]["chance"]
    items = runs[0]["decoded"].get("num_items", "the")
    lines = [
        f"# The demo's recipe against single-trial SNR ({len(runs)} worlds, one run each)",
        "",
        f"Each score with its 95% interval over {items} test items (one training run per SNR). Chance: pair-wise PCC "
        f"0.5, 50-way top-1 0.02, the attribute read-out {attribute_chance:.2f}.",
        "",
        "| single-trial SNR | " + " | ".join(f"{v:g}" for v in snr) + " |",
        "| --- |" + " --- |" * len(snr),
    ]
    for label, kind, metric in rows:
        values, intervals = series(kind, metric)
        digits = 2 if kind == "attributes" else 3
        cells = [f"{v:.{digits}f}{bracket(i, digits)}" for v, i in zip(values, intervals, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_text_atomically(path.with_suffix(".md"), text)
    log.info("sweep: %s\n%s", path, text)
    return path
