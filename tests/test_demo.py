"""`make demo` at tiny size: every step runs and writes its artefacts; a re-run reuses every step; a change of the
simulation preset redoes every step."""

import dataclasses
import json
import re
import types

import numpy as np
import pytest

from demo import pipeline, presets, reports, steps, studies
from demo.simulation import spec
from errors import UserError


def _steps(out) -> dict[str, bool]:
    return {r["step"]: r["reused"] for r in json.loads((out / "report.json").read_text())["steps"]}


def test_tiny_demo_runs_every_step_and_caches_by_recipe(tmp_path, monkeypatch):
    world = pipeline.run_world("tiny", seed=0, root=tmp_path)
    out = world.out
    for name in (
        "grid.png",
        "grid_shuffled.png",
        "metrics.json",
        "metrics_shuffled.json",
        "metrics.png",
        "summary.md",
        "report.json",
        "fmri_encoder_A1.pth",
        "fmri_encoder.pth",
        "finetuned.pth",
    ):
        assert (out / name).is_file(), name
    models = tmp_path / "pretrains" / "demo" / "tiny"
    for name in (
        "label2img/config.yaml",
        "label2img/model.ckpt",
        "classifier.pth",
        "report.json",
        "classifier.pth.recipe.json",
    ):
        assert (models / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mse", "pcc", "ssim", "top-1-class"} <= set(metrics["scores"])
    assert json.loads((out / "metrics_shuffled.json").read_text())["shuffled_fmri"] is True
    first = _steps(out)
    assert len(first) == 11 and not any(first.values())
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 0 and {"cpu", "torch_threads", "native_bf16"} <= set(report["machine"])
    assert next(r for r in report["steps"] if r["step"] == "vq autoencoder")["steps"] == 2
    assert next(r for r in report["steps"] if r["step"] == "stage B")["steps"] == "1 epoch"
    summary = (out / "summary.md").read_text()
    assert "shuffled fMRI (control)" in summary and "| top-1-class |" in summary and "| stage B |" in summary
    assert "metrics.png" in summary and report["machine"]["cpu"] in summary
    for reference in (
        r"identification \*\*[\d.]+\*\* \[",
        r"\*\*[\d.]+\*\* \[[\d.]+, [\d.]+\] \(chance 0\.17",
        r"classifier top-1 [\d.]+ \[",
        r"reach [\d.]+ \[",
    ):  # each reference score with its interval
        assert re.search(reference, summary), reference

    # the learning curve: Stage B as published with a snapshot per point, each decoded, control and gain measured
    studies.curve(world, epochs=(1, 2))
    table = (out / "curve.md").read_text()
    assert table.count("\n| 1 |") == 1 and "\n| 2 |" in table and "the demo's recipe" in table
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    gain = json.loads((out / "curve" / "epoch002" / "conditioning.json").read_text())
    assert {"loss_own_fmri", "loss_other_fmri", "gain", "label_gain"} <= set(gain)
    curve_b = next(r for r in world.steps.records if r["step"] == "curve: stage B")
    assert curve_b["recipe"]["flags"]["lr"] == 5.3e-5 and curve_b["recipe"]["flags"]["batch_size"] == 5
    assert (
        curve_b["recipe"]["flags"]["conditioner"] == "published"
        and curve_b["recipe"]["flags"]["guidance_scale"] == 1.0
    )
    probe = studies.stage_a_probe(world, {"A2": out / "fmri_encoder.pth"}, masks=1)
    assert set(probe) == {
        "mask_ratio",
        "masks",
        "A2",
        "linear map from sbj_3's training fMRI",
        "linear map from the HCP resting state",
        "intervals",
    }
    assert all(low <= probe[k] <= high for k, (low, high) in probe["intervals"].items())
    assert all(-1 <= v <= 1 for k, v in probe.items() if k not in ("mask_ratio", "masks", "intervals"))

    assert all(_steps(pipeline.run("tiny", seed=0, root=tmp_path)).values())  # everything reused

    # another training seed over the same world: the world and its models reused, every stage trained again
    again = pipeline.run("tiny", seed=0, root=tmp_path, train_seed=1)
    assert again.name == "tiny-train1" and json.loads((again / "report.json").read_text())["train_seed"] == 1
    reused = _steps(again)
    world_steps = {"simulate", "vq autoencoder", "label-conditioned LDM", "classifier", "world models' report"}
    assert all(reused[k] for k in world_steps) and not any(v for k, v in reused.items() if k not in world_steps)
    assert "training seed 1" in (again / "summary.md").read_text()
    assert "decoded [95% interval]" in summary and re.search(r"\| pcc \| [\d.]+ \[[\d.]+, [\d.]+\] \|", summary)

    monkeypatch.setitem(spec.SIZES, "tiny", dataclasses.replace(spec.SIZES["tiny"], structured_noise=0.2))
    redone = _steps(pipeline.run("tiny", seed=0, root=tmp_path))  # the brain changed, the images did not:
    models = {"vq autoencoder", "label-conditioned LDM", "classifier", "world models' report"}
    assert all(redone[k] for k in models) and not any(v for k, v in redone.items() if k not in models)


def test_sweep_plots_and_tables_each_score_with_its_interval(tmp_path):
    outs = []
    for snr in (0.1, 1.0, 0.3):  # any order: plotted and tabled by SNR
        out = tmp_path / f"snr{snr}"
        out.mkdir()
        attributes = {"mean": snr / 2, "mean_interval": [snr / 2 - 0.01, snr / 2 + 0.01], "chance": 0.17}
        report = {
            "snr": snr,
            "baselines": {"ridge_pcc": 0.9, "ridge_pcc_interval": [0.85, 0.95], "attributes": attributes},
        }
        (out / "report.json").write_text(json.dumps(report))
        decoded = {
            "scores": {"pcc": 0.8, "top-1-class": snr / 4},
            "intervals": {"pcc": [0.7, 0.88], "top-1-class": [0.0, 0.5]},
        }
        (out / "metrics.json").write_text(json.dumps(decoded))
        (out / "metrics_shuffled.json").write_text(
            json.dumps({"scores": {"pcc": 0.5, "top-1-class": 0.02}})
        )  # an old run
        outs.append(out)
    path = reports.sweep(outs, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = path.with_suffix(".md").read_text()
    assert "| single-trial SNR | 0.1 | 0.3 | 1 |" in table and "over the test items" in table
    assert "| pipeline: 50-way top-1 | 0.025 [0.000, 0.500] | 0.075 [0.000, 0.500] | 0.250 [0.000, 0.500] |" in table
    assert "| control: pair-wise PCC | 0.500 | 0.500 | 0.500 |" in table  # no interval where the run has none
    assert "| ridge attribute read-out | 0.05 [0.04, 0.06] | 0.15 [0.14, 0.16] | 0.50 [0.49, 0.51] |" in table


def test_every_lever_is_a_valid_stage_b_and_gen_eval_setting():
    from config import GenEvalConfig, StageBConfig
    from config_engine import from_dict

    recipe_b = dict(presets.DEMO.b)
    for name, (b_change, eval_change) in presets.LEVERS.items():
        if b_change is not None:
            cfg = from_dict(StageBConfig, {**recipe_b, **b_change})  # validated when built
            assert any(getattr(cfg, k) != recipe_b.get(k, getattr(StageBConfig(), k)) for k in b_change), name
        from_dict(GenEvalConfig, {**presets.DEMO.gen_eval, **eval_change})


def test_levers_table_lists_the_recipe_the_control_and_each_lever(tmp_path):
    def scores(folder, pcc, top1):
        folder.mkdir(parents=True)
        metrics = {"scores": {"pcc": pcc, "top-1-class": top1, "top-1-class (max)": top1 + 0.01}}
        (folder / "metrics.json").write_text(json.dumps(metrics))

    scores(tmp_path / "gen_eval", 0.95, 0.6)
    recipe = json.loads((tmp_path / "gen_eval" / "metrics.json").read_text())
    (tmp_path / "gen_eval" / "metrics.json").write_text(json.dumps({**recipe, "intervals": {"pcc": [0.93, 0.97]}}))
    scores(tmp_path / "control", 0.52, 0.02)
    records = [{"step": "stage B", "seconds": 125.0}]
    for i in range(len(presets.LEVERS)):
        scores(tmp_path / "levers" / str(i) / "gen_eval", 0.5 + i / 100, 0.1)
        records.append({"step": f"lever {i}: stage B", "seconds": 60.0 + i})
    text = reports.levers_table(tmp_path, records)
    assert (tmp_path / "levers.md").read_text() == text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + 2 + len(presets.LEVERS)  # header and rule, recipe, control, one per lever
    assert "| **the recipe** | 0.950 [0.930, 0.970] | 0.600 | 0.610 | 2m05s |" in text
    assert f"| {next(iter(presets.LEVERS))} | 0.500 | 0.100 | 0.110 | 1m00s |" in text


def test_the_method_never_imports_the_demo():
    import ast
    from pathlib import Path

    code = Path(pipeline.__file__).resolve().parents[1]
    offenders = []
    for path in code.rglob("*.py"):
        if "demo" in path.relative_to(code).parts[:1] or path.name == "make_synthetic_data.py":
            continue  # the demo itself, and the simulator's documented command-line shim
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(code)}: {n}" for n in names if n.split(".")[0] == "demo"]
    assert not offenders


def test_ablations_pair_each_change_with_the_papers_number(tmp_path, monkeypatch):
    """The table's assembly: every variant for both conditionings, the demo's own run as the recipe's full row,
    Stage A retrained per mask ratio, a random encoder for no pre-training (the runs themselves are faked)."""
    world = types.SimpleNamespace(
        out=tmp_path,
        hashes={"a2": "a2", "b": "b", "ldm": "ldm", "clf": "clf"},
        seed=0,
        train_seed=0,
        steps=steps.Steps(),
        n_way=lambda: 50,
        kam="unused",
        b_flags=lambda encoder, **change: {"encoder": str(encoder), **change},
    )
    encoders, decoded = [], []

    def fake_train_encoder(w, folder, label, defer=False, **change):
        assert defer  # an ablation's encoder is made only if a row the ledger lacks needs it
        encoders.append(change)
        return "a1", f"a2-{change}"

    def fake_decode(w, folder, label, b_flags, eval_change, a2, **curve_point):
        decoded.append((b_flags or curve_point, a2))
        (folder / "gen_eval").mkdir(parents=True)
        scores = {"top-1-class": 0.1, "top-1-class (max)": 0.2, "pcc": 0.6}
        (folder / "gen_eval" / "metrics.json").write_text(json.dumps({"scores": scores}))

    (tmp_path / "gen_eval").mkdir()
    recipe = {"scores": {"top-1-class": 0.6, "top-1-class (max)": 0.62, "pcc": 0.95}, "intervals": {"pcc": [0.9, 1]}}
    (tmp_path / "gen_eval" / "metrics.json").write_text(json.dumps(recipe))
    monkeypatch.setattr(studies, "train_encoder", fake_train_encoder)
    monkeypatch.setattr(studies, "decode", fake_decode)
    monkeypatch.setattr(studies, "random_encoder", lambda template, path, seed: {})
    monkeypatch.setattr(studies, "_steps_per_epoch", lambda w, flags: 230)
    trained = []
    monkeypatch.setattr(studies, "_train_snapshots", lambda flags, out, target: trained.append(flags) or {})
    monkeypatch.setattr(studies, "conditioning_gain", lambda w, checkpoint: {"gain": 0.1})
    monkeypatch.setattr(
        studies,
        "stage_a_probe",
        lambda w, encoders: {
            "mask_ratio": 0.75,
            "masks": 4,
            **{name: 0.1 for name in encoders},
            "linear map from sbj_3's training fMRI": 0.8,
            "intervals": {"linear map from sbj_3's training fMRI": [0.75, 0.85]},
        },
    )
    text = studies.ablations(world, epochs=(1, 2)) and (tmp_path / "ablations.md").read_text()
    assert encoders == [{"mask_ratio": 0.35}, {"mask_ratio": 0.85}]
    rows = [line for line in text.splitlines() if line.startswith("| published") or line.startswith("| the demo")]
    assert len(rows) == 2 * len(studies.PAPER) and len(decoded) == 2 * len(studies.PAPER) - 1
    assert "| the demo's recipe | full | 0.600 | 0.620 | 0.950 [0.900, 1.000] | 23.9 |" in text
    assert "| published Stage B | no pre-training | 0.100 | 0.200 | 0.600 | 2.6 |" in text
    published = [flags for flags, _ in decoded if flags.get("lr") == 5.3e-5] + trained
    assert len(published) == len(studies.PAPER)  # the full row: the curve's model, trained once, its last point
    assert all(f["num_epoch"] == 2 and f["batch_size"] == 5 and f["conditioner"] == "published" for f in published)
    assert trained[0]["snapshot_epochs"] == [1, 2]
    assert [kw["checkpoint"].name for kw, _ in decoded if "checkpoint" in kw] == ["snapshot_epoch0002.pth"]
    assert sum(f.get("use_time_cond") is False for f, _ in decoded) == 2  # cross-attention only, both conditionings
    assert "460 optimiser steps" in text
    assert (
        "| no pre-training | 0.100 |" in text
        and "| linear map from sbj_3's training fMRI | 0.800 [0.750, 0.850] |" in text
    )


def _seeded_worlds(tmp_path, seeds=(0, 1, 2)):
    return [
        types.SimpleNamespace(out=tmp_path / ("demo" if t == 0 else f"demo-train{t}"), train_seed=t, n_way=lambda: 50)
        for t in seeds
    ]


def _write_scores(folder, **per_item):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"per_item": {k: list(v) for k, v in per_item.items()}}))


def test_ablations_over_seeds_pair_each_change_with_the_full_method_on_the_same_seeds_and_items(tmp_path):
    """Seeds that differ a lot and a change that adds exactly 0.05 to every item of every seed: the row's own
    interval is wide (seeds vary), its paired difference from the full method is 0.05 to the last digit."""
    rng = np.random.default_rng(0)
    worlds = _seeded_worlds(tmp_path)
    for w in worlds:
        full = 0.3 + 0.1 * w.train_seed + rng.normal(0, 0.1, 50)
        for (_, name), folder in studies.ablation_folders(w).items():
            shift = 0.05 if name == "no pre-training" else 0.0
            _write_scores(folder / "gen_eval", **{"top-1-class": full + shift, "pcc": full / 2 + 0.5})
    path = studies.ablations_over_seeds(worlds, tmp_path / "demo-ablations-seeds.md")
    text = path.read_text()
    assert "over training seeds 0, 1, 2" in text
    row = next(line for line in text.splitlines() if line.startswith("| published Stage B | no pre-training |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    mean, low, high = map(float, re.match(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cells[2]).groups())
    assert high - low > 0.1  # the seeds' spread
    assert cells[3] == "+0.050 [+0.050, +0.050]" and cells[5] == "+0.000 [+0.000, +0.000]" and cells[6] == "2.6"
    full_row = next(line for line in text.splitlines() if line.startswith("| the demo's recipe | full |"))
    assert full_row.split("|")[4].strip() == ""  # the full method has no difference from itself
    rows = json.loads(path.with_suffix(".json").read_text())
    assert rows["train_seeds"] == [0, 1, 2] and len(rows["rows"]) == 2 * len(studies.ABLATED) * 2


def test_curve_over_seeds_says_where_the_fmri_starts_to_steer_the_decoding(tmp_path, monkeypatch):
    """Decoded equal to its control at the first point (difference 0), above it by 0.2 at the second."""
    monkeypatch.setattr(studies, "_steps_per_epoch", lambda w, flags: 230)
    monkeypatch.setattr(studies, "_curve_flags", lambda w, epochs: {})
    rng = np.random.default_rng(1)
    worlds = _seeded_worlds(tmp_path)
    for w in worlds:
        for epoch, lift in ((1, 0.0), (2, 0.2)):
            point = studies._curve_point(w, epoch)
            control = rng.uniform(0, 0.1, 50)
            _write_scores(point / "control", **{"top-1-class": control, "pcc": control + 0.5})
            _write_scores(point / "gen_eval", **{"top-1-class": control + lift, "pcc": control + 0.5 + lift})
            (point / "conditioning.json").write_text(json.dumps({"gain": lift + w.train_seed / 100}))
        _write_scores(w.out / "gen_eval", **{"top-1-class": rng.uniform(0.5, 0.7, 50), "pcc": rng.uniform(0.9, 1, 50)})
    text = studies.curve_over_seeds(worlds, tmp_path / "demo-curve-seeds.md", epochs=(1, 2)).read_text()
    first, second = (line for line in text.splitlines() if re.match(r"\| [12] \|", line))
    assert first.startswith("| 1 | 230 |") and "| +0.000 [+0.000, +0.000] |" in first
    assert second.startswith("| 2 | 460 |") and "| +0.200 [+0.200, +0.200] |" in second
    assert second.endswith("| 0.200, 0.210, 0.220 |")  # each seed's conditioning gain
    assert (tmp_path / "demo-curve-seeds.png").stat().st_size > 10_000  # the figure, its bands over seeds and items


def test_several_training_seeds_with_the_curve_and_ablations_run_seed_by_seed_then_the_tables(tmp_path, monkeypatch):
    from demo import cli

    calls = []
    worlds = _seeded_worlds(tmp_path, seeds=(0, 1))
    monkeypatch.setattr(
        cli, "run_world", lambda size, seed, root, snr, levers, t: calls.append(("demo", t)) or worlds[t or 0]
    )
    monkeypatch.setattr(cli.studies, "curve", lambda w: calls.append(("curve", w.train_seed)))
    monkeypatch.setattr(cli.studies, "ablations", lambda w: calls.append(("ablations", w.train_seed)))
    monkeypatch.setattr(cli, "seeds_table", lambda outs, path: calls.append(("seeds", path.name)))
    monkeypatch.setattr(cli.studies, "curve_over_seeds", lambda ws, path: calls.append(("curve seeds", path.name)))
    monkeypatch.setattr(cli.studies, "ablations_over_seeds", lambda ws, path: calls.append(("abl seeds", path.name)))
    cli.main(["--train_seed", "0", "1", "--curve", "--ablations", "--root_path", str(tmp_path)])
    assert calls == [
        ("demo", 0),
        ("curve", 0),
        ("ablations", 0),
        ("demo", 1),
        ("curve", 1),
        ("ablations", 1),
        ("seeds", "demo-seeds.md"),
        ("curve seeds", "demo-curve-seeds.md"),
        ("abl seeds", "demo-ablations-seeds.md"),
    ]
    calls.clear()  # one seed: no table of the demo over seeds, the paired tables of the curve and the ablations
    cli.main(["--curve", "--ablations", "--root_path", str(tmp_path)])
    assert [c[0] for c in calls] == ["demo", "curve", "ablations", "curve seeds", "abl seeds"]


def test_random_encoder_keeps_the_architecture_and_draws_new_weights(tmp_path):
    from checkpoint import save_checkpoint
    from checkpoint_layouts import read_stage_a
    from sc_mbm.mae_for_fmri import MAEforFMRI

    arch = dict(
        num_voxels=64,
        patch_size=16,
        embed_dim=32,
        depth=1,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=4,
        mlp_ratio=1.0,
    )
    trained = MAEforFMRI(**arch)
    save_checkpoint({"model": trained.state_dict(), "config": arch, "epoch": 3}, tmp_path / "a2.pth")
    studies.random_encoder(tmp_path / "a2.pth", tmp_path / "random" / "fmri_encoder.pth", seed=5)
    fresh = read_stage_a(tmp_path / "random" / "fmri_encoder.pth")
    assert fresh.arch == read_stage_a(tmp_path / "a2.pth").arch
    assert not fresh.model["blocks.0.attn.qkv.weight"].equal(trained.state_dict()["blocks.0.attn.qkv.weight"])


def test_seeds_table_gives_each_score_over_training_runs_with_its_interval(tmp_path):
    """Three training runs of one world: the mean, each run's score and an interval over items and runs."""
    rng = np.random.default_rng(0)
    outs = []
    for seed, shift in enumerate((0.0, 0.02, 0.04)):
        out = tmp_path / f"demo-train{seed}"
        out.mkdir()
        per_item = 0.8 + shift + rng.normal(0, 0.05, 50)
        decoded = {"scores": {"pcc": per_item.mean(), "mse": 0.1}, "per_item": {"pcc": per_item.tolist()}}
        control = {"scores": {"pcc": 0.5}, "per_item": {"pcc": (0.5 + rng.normal(0, 0.05, 50)).tolist()}}
        (out / "metrics.json").write_text(json.dumps(decoded))
        (out / "metrics_shuffled.json").write_text(json.dumps(control))
        (out / "report.json").write_text(json.dumps({"train_seed": seed}))
        outs.append(out)
    text = reports.seeds_table(outs, tmp_path / "demo-seeds.md")
    assert (tmp_path / "demo-seeds.md").read_text() == text and "3 training seeds (0, 1, 2)" in text
    row = next(line for line in text.splitlines() if line.startswith("| pcc |"))
    mean, low, high = map(float, re.match(r"\| pcc \| ([\d.]+) \[([\d.]+), ([\d.]+)\]", row).groups())
    assert low < mean < high and high - low < 0.2 and mean == pytest.approx(0.82, abs=0.02)
    assert row.count(", ") >= 4  # each run's score listed, for decoded and control
    assert "| mse | n/a |" in text  # no item scores: no interval is made up


def test_a_killed_stage_step_resumes_and_a_finished_one_is_taken(tmp_path, monkeypatch):
    """`run_stage` of the same command again: an earlier attempt with a checkpoint of some epochs is resumed
    (`--resume` its run folder), one whose checkpoint holds every epoch is taken as it is, another command starts
    over; Stage A checkpoints after every epoch whatever its recipe says."""
    from checkpoint import save_checkpoint
    from demo import steps

    calls = []

    def fake_run(argv):
        calls.append(argv)
        run = tmp_path / "out" / "stageA1" / "run0"
        run.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"epoch": 1}, run / "checkpoint.pth")  # killed after its second epoch
        return types.SimpleNamespace(returncode=1)

    monkeypatch.setattr(steps.subprocess, "run", fake_run)
    flags = {"num_epoch": 4, "ckpt_every": 4, "seed": 0}
    with pytest.raises(UserError, match="failed"):
        steps.run_stage("stageA1_mbm_pretrain.py", flags, tmp_path / "out")
    assert calls[-1][calls[-1].index("--ckpt_every") + 1] == "1" and "--resume" not in calls[-1]
    with pytest.raises(UserError, match="failed"):
        steps.run_stage("stageA1_mbm_pretrain.py", flags, tmp_path / "out")
    assert calls[-1][-2:] == ["--resume", str(tmp_path / "out" / "stageA1" / "run0")]
    save_checkpoint({"epoch": 3}, tmp_path / "out" / "stageA1" / "run0" / "checkpoint.pth")
    assert steps.run_stage("stageA1_mbm_pretrain.py", flags, tmp_path / "out") == tmp_path / "out/stageA1/run0"
    assert len(calls) == 2  # finished: nothing run
    with pytest.raises(UserError, match="failed"):
        steps.run_stage("stageA1_mbm_pretrain.py", {**flags, "seed": 1}, tmp_path / "out")
    assert "--resume" not in calls[-1]  # another command: the old attempt removed, a new one started


def test_an_attempt_of_another_recipe_is_never_taken_though_its_command_is_the_same(tmp_path, monkeypatch):
    """A stage's command names its inputs by path: when an input was remade (a new Stage A encoder in the same
    file), the command is the same and the recipe is not. The earlier attempt, finished or killed, belongs to the
    old recipe and is removed, never taken or resumed."""
    from checkpoint import save_checkpoint
    from demo import steps

    calls = []

    def fake_run(argv):
        calls.append(argv)
        run = tmp_path / "out" / "stageB" / "run0"
        run.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"epoch": 3}, run / "checkpoint.pth")  # every epoch done
        (run / "finetuned.pth").write_text(f"made by call {len(calls)}")
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(steps.subprocess, "run", fake_run)
    flags = {"num_epoch": 4, "pretrain_mbm_path": str(tmp_path / "encoder.pth")}
    target = tmp_path / "finetuned.pth"

    def make(encoder_recipe):
        return steps.Steps()(
            "stage B",
            target,
            {"encoder": encoder_recipe},
            lambda: steps.train_stage("stageB_ldm_finetune.py", flags, tmp_path / "out", "finetuned.pth", target),
        )

    make("encoder 1")
    assert len(calls) == 1 and target.read_text() == "made by call 1"
    target.unlink()  # the step's result lost: the same recipe takes its finished attempt
    make("encoder 1")
    assert len(calls) == 1 and target.read_text() == "made by call 1"
    make("encoder 2")  # the encoder remade in the same file: the same command, another recipe
    assert len(calls) == 2 and "--resume" not in calls[-1] and target.read_text() == "made by call 2"


def _model_and_score(root, made, score_change=0):
    """Three steps as a study makes them: a model (deferred) from an encoder (deferred), a score kept in the ledger."""
    s = steps.Steps(steps.Ledger(root))
    out = root / "results" / "demo" / "w"

    def make(name, target, content):
        made.append(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)

    encoder = s("encoder", out / "enc.pth", {"flags": 1}, lambda: make("encoder", out / "enc.pth", "e"), defer=True)
    model = s("model", out / "b.pth", {"a2": encoder}, lambda: make("model", out / "b.pth", "m"), defer=True)

    def score():
        made.append("score")
        (out / "row" / "gen_eval").mkdir(parents=True, exist_ok=True)
        assert (out / "b.pth").read_text() == "m"  # the model it builds on is made first
        scores = {"scores": {"pcc": 0.75 + score_change}, "checkpoint": str(out / "b.pth")}
        (out / "row" / "gen_eval" / "metrics.json").write_text(json.dumps(scores))

    s("gen_eval", out / "row" / "gen_eval", {"b": f"{model}/4", "change": score_change}, score, keep=True)
    return s, out


def test_a_fresh_clone_restores_kept_scores_from_the_ledger_without_making_their_models(tmp_path):
    made = []
    s, out = _model_and_score(tmp_path, made)
    assert made == ["encoder", "model", "score"]  # the deferred steps made, in order, when the score had to run
    entry = json.loads((tmp_path / "results/ledger/results/demo/w/row/gen_eval.json").read_text())
    metrics = {"scores": {"pcc": 0.75}, "checkpoint": "<root>/results/demo/w/b.pth"}  # no user's folders entered
    assert entry["files"] == {"metrics.json": metrics} and entry["made"]["machine"]["cores"]
    model = json.loads((tmp_path / "results/ledger/results/demo/w/b.pth.json").read_text())
    assert "files" not in model and model["seconds"] >= 0  # a model is entered by its stamp, never its weights
    assert [r.get("deferred") for r in s.records] == [False, False, None]  # the deferred records, completed

    steps.shutil.rmtree(tmp_path / "results" / "demo")  # a fresh clone: the step cache gone, the ledger kept
    made.clear()
    s, out = _model_and_score(tmp_path, made)
    assert made == [] and not (out / "b.pth").exists()  # restored; the models never made
    restored = json.loads((out / "row/gen_eval/metrics.json").read_text())
    assert restored == {"scores": {"pcc": 0.75}, "checkpoint": str(out / "b.pth")}
    deferred = next(r for r in s.records if r["step"] == "model")
    assert deferred["deferred"] and deferred["seconds"] == model["seconds"]  # its time, from the ledger
    assert next(r for r in s.records if r["step"] == "gen_eval")["restored"]
    _model_and_score(tmp_path, made)
    assert made == []  # and restored once: the next run reuses the cache
    elsewhere = tmp_path / "clone-2"  # a fresh clone in another folder: the same entries, its own paths
    steps.shutil.copytree(tmp_path / "results" / "ledger", elsewhere / "results" / "ledger")
    _, there = _model_and_score(elsewhere, made)
    assert made == [] and json.loads((there / "row/gen_eval/metrics.json").read_text())["checkpoint"] == str(
        there / "b.pth"
    )
    steps.shutil.move(elsewhere / "results" / "ledger", tmp_path / "aside")  # moved aside: recomputed
    _model_and_score(elsewhere, made)
    assert made == ["encoder", "model", "score"]
    made.clear()

    _model_and_score(tmp_path, made, score_change=0.1)  # another score of the same model: made again, from scratch
    assert made == ["encoder", "model", "score"]
    entry = json.loads((tmp_path / "results/ledger/results/demo/w/row/gen_eval.json").read_text())
    assert entry["files"]["metrics.json"]["scores"]["pcc"] == pytest.approx(0.85)  # the entry replaced


def test_a_step_cache_made_before_the_ledger_is_entered_when_reused(tmp_path):
    out = tmp_path / "results" / "demo"

    def make():
        out.mkdir(parents=True, exist_ok=True)
        (out / "probes.json").write_text('{"raw|20": 0.5}')

    steps.Steps()("probes", out / "probes.json", {"x": 1}, make, keep=True)  # no ledger: nothing entered
    assert not (tmp_path / "results" / "ledger").exists()
    steps.Steps(steps.Ledger(tmp_path))("probes", out / "probes.json", {"x": 1}, make, keep=True)
    entry = json.loads((tmp_path / "results/ledger/results/demo/probes.json.json").read_text())
    assert entry["files"] == {"": {"raw|20": 0.5}} and entry["hash"] == steps.recipe_hash({"x": 1})


def test_a_hostile_or_broken_ledger_entry_never_writes_outside_its_step_or_counts_as_made(tmp_path, caplog):
    out = tmp_path / "results" / "demo"
    target = out / "gen_eval"
    entry_path = tmp_path / "results/ledger/results/demo/gen_eval.json"
    entry_path.parent.mkdir(parents=True)
    digest = steps.recipe_hash({"b": 1})
    entry_path.write_text(json.dumps({"hash": digest, "seconds": 1, "made": {}, "files": {"../../x.json": {}}}))
    ran = []
    with pytest.raises(UserError, match=r"gen_eval names the file '../../x.json': expected a .json file inside it"):
        steps.Steps(steps.Ledger(tmp_path))("gen_eval", target, {"b": 1}, lambda: ran.append(1), keep=True)
    assert not (tmp_path / "results" / "x.json").exists() and not ran
    entry_path.write_text(json.dumps({"hash": digest, "seconds": 1, "files": ["metrics.json"]}))
    with pytest.raises(UserError, match="'files' must map file names to their JSON content"):
        steps.Steps(steps.Ledger(tmp_path))("gen_eval", target, {"b": 1}, lambda: ran.append(1), keep=True)

    entry_path.write_text('{"hash": "' + digest + '", "files": {"metr')  # cut short (a session ended mid-write)
    steps.Steps(steps.Ledger(tmp_path))("gen_eval", target, {"b": 1}, lambda: ran.append(1), keep=True)
    assert ran == [1] and "is not valid JSON" in caplog.text  # named, and the step made again

    target.mkdir(parents=True, exist_ok=True)  # a folder the demo did not make is never replaced from the ledger
    (target / "mine.txt").write_text("keep me")
    steps.stamp_of(target).unlink()
    entry_path.write_text(json.dumps({"hash": digest, "seconds": 1, "made": {}, "files": {"metrics.json": {}}}))
    with pytest.raises(UserError, match="was not made by the demo"):
        steps.Steps(steps.Ledger(tmp_path))("gen_eval", target, {"b": 1}, lambda: ran.append(1), keep=True)
    assert (target / "mine.txt").read_text() == "keep me"


def test_a_recipe_hash_does_not_depend_on_where_the_checkout_lies(tmp_path):
    def recipe(root):
        return {"flags": {"kam_path": str(root / "data" / "npz"), "root_path": str(root)}, "other": "/elsewhere"}

    here, there = tmp_path / "clone", tmp_path / "clone-2"  # a sibling whose name extends the root's is not inside it
    assert steps.recipe_hash(recipe(here), here) == steps.recipe_hash(recipe(there), there)
    assert steps.recipe_hash(recipe(there), here) != steps.recipe_hash(recipe(here), here)


def test_the_ledger_never_writes_through_a_link_or_enters_a_linked_file(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "results" / "ledger").mkdir(parents=True)
    (tmp_path / "results" / "ledger" / "results").symlink_to(outside)  # a committed link out of the ledger
    out = tmp_path / "results" / "demo"
    out.mkdir()
    (out / "probes.json").write_text("{}")
    with pytest.raises(UserError, match="a link inside .* leads out of it"):
        steps.Steps(steps.Ledger(tmp_path))("probes", out / "probes.json", {"x": 1}, lambda: None, keep=True)
    assert list(outside.iterdir()) == []

    (tmp_path / "secret.json").write_text('{"token": "x"}')
    (out / "gen_eval").mkdir()
    (out / "gen_eval" / "metrics.json").write_text('{"scores": {}}')
    (out / "gen_eval" / "linked.json").symlink_to(tmp_path / "secret.json")
    assert steps.kept_files(out / "gen_eval") == {"metrics.json": {"scores": {}}}


def test_a_step_cache_stamped_before_hashes_counted_paths_from_the_root_is_reused(tmp_path):
    target = tmp_path / "results" / "demo" / "a1.pth"
    recipe = {"flags": {"hcp_path": str(tmp_path / "data")}}
    ran = []

    def make():
        ran.append("made")
        target.write_text("a1")

    steps.Steps()("stage A1", target, recipe, make)  # a step cache of the old hashes
    assert steps.json.loads(steps.stamp_of(target).read_text())["hash"] == steps.recipe_hash(recipe)
    digest = steps.Steps(steps.Ledger(tmp_path))("stage A1", target, recipe, make, defer=True)
    assert ran == ["made"] and digest == steps.recipe_hash(recipe, tmp_path) != steps.recipe_hash(recipe)
    assert steps.json.loads(steps.stamp_of(target).read_text())["hash"] == digest  # rewritten
