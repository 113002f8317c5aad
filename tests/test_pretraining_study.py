"""The pre-training study and Stage A's learning curve (`demo/pretraining.py`): the plan, the rows' flags, the tables
with their paired intervals, and the whole thing at tiny size (probes only, one seed), resumed from its cache."""

import dataclasses
import json
import shutil
import types

import numpy as np
import pytest

from demo import pretraining
from demo.pipeline import prepare
from demo.presets import PRESETS

TINY_PLAN = pretraining.StudyPlan(
    worlds=("cortex-tiny",),
    seeds=(0,),
    pairs=(20, 40),
    published_pairs=(40,),
    a1_epochs=1,
    a1_warmup=0,
    a2_epochs=1,
    a2_warmup=0,
    curve_a2_epochs=2,
    val_images=3,
    recipe_steps=2,
    published_steps=2,
    eval_samples=1,
)


def test_plan_lists_every_row_seed_by_seed_cheap_kinds_first_and_counts_the_steps(caplog):
    plan = pretraining.STUDY
    rows = pretraining.study_rows(plan)
    n = len(plan.seeds) * len(plan.worlds) * len(pretraining.ENCODERS) * len(plan.pairs)
    n_published = n // len(plan.pairs) * len(plan.published_pairs)
    assert 0 < len(plan.published_pairs) < len(plan.pairs) and set(plan.published_pairs) <= set(plan.pairs)
    assert len(rows) == 2 * n + n_published and len(set(rows)) == len(rows)
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)  # whole seeds first
    per_seed = n // len(plan.seeds)
    for seed in plan.seeds:
        kinds = [r[0] for r in rows if r[1] == seed]
        assert kinds == ["probe"] * per_seed + ["recipe"] * per_seed + ["published"] * (n_published // len(plan.seeds))
    assert {r[4] for r in rows if r[0] == "published"} == set(plan.published_pairs)
    with caplog.at_level("INFO", logger="mindvis.demo"):
        text = pretraining.print_plan(plan)
    assert f"{n} Stage B runs of the demo's recipe, {plan.recipe_steps} optimiser steps each" in text
    assert f"({n_published * plan.published_steps:,} steps)" in text and "stopped and rerun at any point" in text


@pytest.mark.parametrize("kind,batch", [("recipe", 25), ("published", 5)])
def test_stage_b_rows_train_a_fixed_number_of_steps_on_the_asked_pairs(kind, batch):
    w = types.SimpleNamespace(preset=PRESETS["cortex"], b_flags=lambda encoder, **change: change)
    for pairs in (100, 1150):
        flags = pretraining.stage_b_flags(w, "enc.pth", kind, pairs, pretraining.STUDY)
        steps = pretraining.STUDY.recipe_steps if kind == "recipe" else pretraining.STUDY.published_steps
        assert flags["num_train_images"] == pairs and flags["val_every"] == flags["num_epoch"]
        assert abs(flags["num_epoch"] * pairs / batch - steps) <= pairs / batch / 2  # the steps, to an epoch
    assert flags.get("lr", 1e-4) == (5.3e-5 if kind == "published" else 1e-4)


def test_summary_pairs_each_encoder_with_the_pretrained_one_on_the_same_items_and_seeds():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, (3, 50)).astype(float)
    better = np.maximum(base, rng.integers(0, 2, (3, 50)))  # the same items, some more correct
    rows = [
        {
            "world": "w",
            "kind": "probe",
            "features": "pre-trained",
            "pairs": 100,
            "metric": "m",
            "per_seed": dict(enumerate(base.tolist())),
        },
        {
            "world": "w",
            "kind": "probe",
            "features": "no pre-training",
            "pairs": 100,
            "metric": "m",
            "per_seed": dict(enumerate(better.tolist())),
        },
        {
            "world": "w",
            "kind": "probe",
            "features": "raw fMRI",
            "pairs": 100,
            "metric": "m",
            "per_seed": {0: base[0].tolist()},
        },
    ]
    summary = {r["features"]: r for r in pretraining.summarise(rows)}
    assert "vs_pretrained" not in summary["pre-trained"]
    diff, (low, high) = summary["no pre-training"]["vs_pretrained"]
    assert diff == pytest.approx(better.mean() - base.mean()) and 0 < low < diff < high
    assert summary["raw fMRI"]["vs_pretrained"][0] == 0.0  # only seed 0 is paired: the same scores
    assert summary["no pre-training"]["seeds"] == [0, 1, 2]


def test_tiny_study_and_curve_run_resume_and_write_their_tables(tmp_path, monkeypatch):
    md = pretraining.pretraining_study(tmp_path, TINY_PLAN, kinds=("probe",))
    probes = json.loads((tmp_path / "results/demo/cortex-tiny/study/probes.json").read_text())
    assert set(probes) == {f"{f}|{n}" for f in ("raw fMRI", *pretraining.ENCODERS) for n in (20, 40)}
    assert all(len(p["per_item"]) == 20 and 0 <= p["top1"] <= 1 for p in probes.values())
    table = study_table = md.read_text()
    assert table.count("| cortex-tiny | probe |") == 8 and "minus pre-trained" in table
    held = json.loads((tmp_path / "results/demo/cortex-tiny/study/tokens.json").read_text())
    assert set(held) == {"raw fMRI", *pretraining.ENCODERS}
    assert all(0 < h["signal_share"] < 1 and 1 <= h["effective_dims"] for h in held.values())
    assert table.count("| cortex-tiny | 0 |") == 4 and "## What the features hold" in table
    summary = json.loads((tmp_path / "results/demo/pretraining_study.json").read_text())
    assert {r["features"] for r in summary} == {"raw fMRI", *pretraining.ENCODERS}
    assert (tmp_path / "results/demo/pretraining_study.png").read_bytes()[:4] == b"\x89PNG"
    permuted = sorted((tmp_path / "data/synthetic/cortex-tiny-hcp-permuted").iterdir())[0]
    original = tmp_path / "data/synthetic/cortex-tiny/HCP/npz" / permuted.name
    with np.load(permuted / "HCP_visual_voxel.npz") as f, np.load(original / "HCP_visual_voxel.npz") as g:
        x, y = (np.concatenate([d[k] for k in ("V1", "V2", "V3", "V4")], 1) for d in (f, g))
    assert not np.array_equal(x, y) and np.allclose(np.sort(x.std(0)), np.sort(y.std(0)))  # same voxels, new order

    # Stage A's curve reuses the study's pre-trained A1 and adds an A2 that leaves 3 test images out
    w = prepare("cortex-tiny", 0, tmp_path, stage_a=False)
    pretraining.stage_a_curve(w, TINY_PLAN)
    assert next(r for r in w.steps.records if r["step"] == "pre-trained: stage A1")["reused"]
    curve = json.loads((w.out / "stage_a_curve.json").read_text())
    assert [m["epoch"] for m in curve["a2"] if "val_test_masked_cor" in m] == [-1, 0, 1]
    assert [m["epoch"] for m in curve["a1"] if "val_hcp_masked_cor" in m] == [-1, 0]
    assert set(curve["ridge"]) == {"hcp", "god", "test"} and all(0 < v < 1 for v in curve["ridge"].values())
    table = (w.out / "stage_a_curve.md").read_text()
    assert "| A2: held-out test images (averages and trials) | 3 |" in table  # 3 held-out images, the units
    got = curve["intervals"]
    assert got["hcp"]["units"] == pretraining.HELD_OUT_HCP and got["god"]["units"] == 20  # tiny: 20 test images
    for key, (stage, last) in {"hcp": ("a1", -1), "god": ("a1", -1), "test": ("a2", -1)}.items():
        logged = [m for m in curve[stage] if f"val_{key}_masked_cor" in m][last][f"val_{key}_masked_cor"]
        assert got[key]["mae"] == pytest.approx(logged, abs=1e-6)  # rescored as the stage scored it
        assert got[key]["ridge"] == pytest.approx(curve["ridge"][key], abs=1e-9)
        low, high = got[key]["mae_interval"]
        assert low <= got[key]["mae"] <= high and got[key]["share"][0] == pytest.approx(logged / curve["ridge"][key])

    made = []  # a rerun makes nothing again
    monkeypatch.setattr(pretraining, "prepare", lambda *a, **k: made.append(prepare(*a, **k)) or made[-1])
    pretraining.pretraining_study(tmp_path, TINY_PLAN, kinds=("probe",))
    assert made and all(r["reused"] for w in made for r in w.steps.records)

    recipe_plan = dataclasses.replace(TINY_PLAN, pairs=(20,))  # the demo's recipe on 20 pairs, one row per encoder
    recipe_table = pretraining.pretraining_study(tmp_path, recipe_plan, kinds=("recipe",)).read_text()
    assert recipe_table.count("| cortex-tiny | recipe |") == 2 * len(pretraining.ENCODERS)  # top-1, PCC

    # a fresh clone holds the ledger, not the step cache: the study's numbers come back without a Stage A or B run
    shutil.rmtree(tmp_path / "results" / "demo")
    made.clear()
    md = pretraining.pretraining_study(tmp_path, TINY_PLAN, kinds=("probe",))
    assert md.read_text() == study_table
    assert pretraining.pretraining_study(tmp_path, recipe_plan, kinds=("recipe",)).read_text() == recipe_table
    records = {r["step"]: r for w in made for r in w.steps.records}
    assert records["linear probes"]["restored"] and records["what the tokens hold"]["restored"]
    assert records["pre-trained: stage A1"]["deferred"] and records["permuted HCP: stage A2"]["deferred"]
    row = "recipe, no pre-training, 20 pairs (seed 0, cortex-tiny): "
    assert records[row + "stage B"]["deferred"] and records[row + "gen_eval"]["restored"]
    assert not list((tmp_path / "results/demo").rglob("*.pth"))  # no model made
