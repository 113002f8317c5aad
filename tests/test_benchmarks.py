"""The benchmark scripts run (--tiny: toy sizes, seconds) and write complete JSON; the original's way is really
the original's (explicit-softmax attention reached the model code, and computes what SDPA computes); the original's
own code is imported beside ours without mixing the two (`--original`; the runs against a real checkout need
MINDVIS_ORIGINAL=/path/to/mind-vis and are skipped without it); gpu_check.sh --dry-run runs every step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import attention  # noqa: E402
import timing  # noqa: E402


def test_explicit_attention_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    mask = torch.rand(2, 1, 7, 5) > 0.3
    mask[..., 0] = True  # every query keeps one key
    for m in (None, mask):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(attention.explicit_attention(q, k, v, attn_mask=m), want)


def test_original_attention_patch_is_scoped():
    fused = F.scaled_dot_product_attention
    before = attention.original_attention_calls()
    with attention.original_attention():
        assert F.scaled_dot_product_attention is not fused
        F.scaled_dot_product_attention(*(torch.randn(1, 1, 3, 4) for _ in range(3)))
    assert F.scaled_dot_product_attention is fused
    assert attention.original_attention_calls() == before + 1
    with pytest.raises(RuntimeError, match="never ran"):
        attention.check_patch_reached(attention.original_attention_calls())


def test_the_original_training_metric_computes_ours():
    import bench_stageA
    from correlation import row_pearson

    torch.manual_seed(0)
    pred, fmri = torch.randn(3, 4, 16), torch.randn(3, 1, 64)  # (N, L, p) patches of V = L * p voxels
    want = row_pearson(pred.flatten(1), fmri.flatten(1)).mean().item()
    assert bench_stageA.original_correlation(pred, fmri) == pytest.approx(want, abs=1e-6)


def test_climb_keeps_a_lever_only_when_it_helps():
    import time

    slow = {"bf16"}  # pretend bf16 is slower here; channels-last faster

    def call(v: timing.Variant) -> None:
        time.sleep(
            0.004
            * v.batch
            * (2.0 if v.attention == "explicit" else 1.0)
            * (1.5 if v.dtype in slow else 1.0)
            * (0.5 if v.channels_last else 1.0)
        )

    rungs = [timing.Variant(1, "fp32", "explicit"), timing.Variant(1)]
    measured, ours = timing.climb(
        rungs, [{"channels_last": True}, {"dtype": "bf16"}], call, torch.device("cpu"), warmup=0, runs=3
    )
    assert ours == timing.Variant(1, channels_last=True)
    assert measured[0].speedup == 1.0
    assert 2.5 < next(m.speedup for m in reversed(measured) if m.variant == ours) < 6


@pytest.mark.parametrize("script", ["bench_stageA", "bench_stageB", "bench_generation", "bench_vq_decode"])
def test_benchmark_runs_tiny(script, tmp_path, capsys):
    module = __import__(script)
    path = module.main(["--tiny", "--device", "cpu", "--runs", "1", "--warmup", "0", "--out", str(tmp_path)])
    record = json.loads(Path(path).read_text())
    assert path.name == f"{script}-cpu-tiny.json"
    assert record["mode"] == "tiny" and record["device"]["type"] == "cpu" and record["commit"]
    for workload in record["workloads"]:
        names = [v["name"] for v in workload["variants"]]
        assert workload["original"] == names[0] and "explicit" in names[0]
        assert workload["ours"] in names and ("sdpa" in workload["ours"] or "softmax" in workload["ours"])
        assert workload["ratio"] > 0 and workload["flops_per_item"] > 0
        for v in workload["variants"]:
            assert v["time_s_median"] > 0 and v["peak_memory_bytes"] > 0 and v["achieved_flops"] > 0
    if script == "bench_generation":
        protocol = record["protocol"]
        assert protocol["images"] == 250 and protocol["unet_calls_per_image"] == 251
        assert protocol["floor"]["flops"] > 1e15  # the published-size protocol, counted on meta
        unet = record["workloads"][0]
        assert unet["variants"][-1]["batch"] == unet["sizes"]["batch_original"] and unet["ratio_at_original_batch"] > 0
    if script == "bench_stageB":
        estimate = record["memory"]["estimate"]
        assert {(r["dtype"], r["checkpointing"]) for r in estimate} >= {("fp32", False), ("bf16", True)}
    assert "ours =" in capsys.readouterr().out


# ---- the original's own code --------------------------------------------------------------------------------------

ORIGINAL = os.environ.get("MINDVIS_ORIGINAL")


def fake_checkout(root: Path) -> Path:
    """A folder that passes the checkout test: the original's signature lines, and a module marking itself theirs."""
    import original

    for rel, line in original.SIGNATURE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{line}:\n    pass\n")
    theirs = "import torch._six\nclass fmri_encoder:\n    pass\nWHOSE = 'theirs'\n"
    (root / "code/sc_mbm/mae_for_fmri.py").write_text(theirs)
    return root


def test_original_modules_are_imported_beside_ours(tmp_path):
    import original
    import sc_mbm.mae_for_fmri as ours

    checkout = original.OriginalCheckout(fake_checkout(tmp_path))
    theirs = checkout.module("sc_mbm.mae_for_fmri")  # imports its torch._six: the shim is there
    assert theirs.WHOSE == "theirs" and Path(theirs.__file__).is_relative_to(tmp_path)
    assert sys.modules["sc_mbm.mae_for_fmri"] is ours and "torch._six" not in sys.modules
    assert checkout.module("sc_mbm.mae_for_fmri") is theirs  # kept aside, not imported twice


def test_original_needing_a_missing_package_is_one_clear_line_and_ours_stay(tmp_path):
    import config
    import original
    from errors import UsageError

    root = fake_checkout(tmp_path)
    trainer = "import lightning_that_is_not_installed\nclass NativeScalerWithGradNormCount: ...\n"
    (root / "code/sc_mbm/trainer.py").write_text(trainer)
    checkout = original.OriginalCheckout(root)
    with pytest.raises(UsageError, match="'lightning_that_is_not_installed', which is not installed here"):
        checkout.module("sc_mbm.trainer")
    assert sys.modules["config"] is config and str(BENCH) in sys.path  # ours are back


def test_original_that_is_not_a_checkout_is_one_clear_line(tmp_path):
    (tmp_path / "code").mkdir()
    result = subprocess.run(
        [sys.executable, str(BENCH / "bench_vq_decode.py"), "--tiny", "--original", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a checkout of the original MinD-Vis" in lines[0] and str(tmp_path) in lines[0]


@pytest.mark.skipif(not ORIGINAL, reason="set MINDVIS_ORIGINAL to a checkout of zjc062/mind-vis")
@pytest.mark.parametrize("script", ["bench_stageA", "bench_stageB", "bench_generation", "bench_vq_decode"])
def test_against_the_original_code(script, tmp_path):
    module = __import__(script)
    argv = ["--tiny", "--device", "cpu", "--runs", "1", "--warmup", "0", "--out", str(tmp_path)]
    record = json.loads(Path(module.main([*argv, "--original", ORIGINAL])).read_text())
    assert record["original_checkout"]["commit"]
    for workload in record["workloads"]:
        assert workload["baseline"] == "original code" and workload["original"].startswith("original code")
        fp32 = {k: d for k, d in workload["max_abs_diff_vs_original"].items() if "fp32" in k}
        assert fp32, workload["max_abs_diff_vs_original"]
        for label, d in fp32.items():  # both implementations compute the same numbers
            assert d["max_abs_diff"] <= 1e-5 * max(1.0, d["max_abs_original"]), (label, d)


# ---- training dynamics against the original ------------------------------------------------------------------------


@pytest.mark.skipif(not ORIGINAL, reason="set MINDVIS_ORIGINAL to a checkout of zjc062/mind-vis")
def test_dynamics_against_the_original(tmp_path):
    pytest.importorskip("pytorch_lightning", reason="the original's Stage B needs its Lightning")
    import dynamics

    path = dynamics.main(
        ["--original", ORIGINAL, "--steps", "9", "--out", str(tmp_path), "--figure", str(tmp_path / "dynamics.png")]
    )
    record = json.loads(Path(path).read_text())
    for stage in ("stage_a1", "stage_b", "stage_b_duplicates_emulated"):
        r = record[stage]
        assert r["steps"] == 9 and r["max_lr_difference"] == 0 and not r["hyper_parameters_differ"], stage
        assert not r["trained_only_by_ours"] and r["max_rel_loss_difference"] < 1e-5 and not r["changed_outside_ours"]
    assert record["stage_b_duplicates_emulated"]["weights_apart_over_update"] < 1e-3
    assert record["transforms"]["image_max_abs_difference"] < 1e-6
    # double conditioning's start, from one label LDM file without it: ours as the original's, bit for bit
    start = record["conditioning_start"]
    assert len(start["left_out_of_the_file"]) == 6 and start["published"]["identical_to_original"]
    assert start["zero"]["added_over_timestep_embedding"] == 0 < start["original"]["added_over_timestep_embedding"]


def test_dynamics_comparison_sees_a_different_learning_rate():
    """The comparison itself, without the original: two runs of our Stage A1 loop from the same weights on the same
    batches agree exactly; a different learning rate shows in the lr column and moves the weights apart."""
    import copy

    import dynamics
    from engine import AmpScaler, Schedule, make_optimizer, train_one_epoch
    from sc_mbm.mae_for_fmri import MAEforFMRI
    from sc_mbm.training import mae_step

    arch = dict(dynamics.ARCH_A1, num_voxels=64, embed_dim=32, decoder_embed_dim=16)
    data = dynamics.batches(dynamics.low_rank_world(64, 64, None, seed=0), 8, 6, seed=0)
    torch.manual_seed(0)
    first = MAEforFMRI(**arch)
    start = dynamics.weights(first)

    def train(model, lr):
        optimizer = make_optimizer(model, lr, 0.05)
        with dynamics.recorded(model, lambda: optimizer, seed=1) as record:
            train_one_epoch(
                model,
                data,
                optimizer,
                AmpScaler("fp32", torch.device("cpu")),
                epoch=0,
                step=mae_step(0.75),
                schedule=Schedule(lr, lr, 0, 1),
                clip_grad=0.8,
                log_every=10**9,
            )
        return record, dynamics.optimiser_view(model, optimizer)

    runs = [(copy.deepcopy(first), lr) for lr in (1e-3, 1e-3, 2e-3)]
    (a, a_opt), (b, b_opt), (c, c_opt) = (train(model, lr) for model, lr in runs)
    same = dynamics.compare_runs(a, b, runs[0][0], runs[1][0], start, a_opt, b_opt)
    assert same["max_rel_loss_difference"] == 0 and same["weights_apart_over_update"] == 0
    other = dynamics.compare_runs(a, c, runs[0][0], runs[2][0], start, a_opt, c_opt)
    assert other["max_lr_difference"] == pytest.approx(1e-3) and other["weights_apart_over_update"] > 0.1


# ---- gpu_check ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path, capsys):
    import gpu_check

    path = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    record = json.loads(Path(path).read_text())
    assert record["mode"] == "dry-run" and set(record["steps"]) == set(gpu_check.STEPS)
    assert all(step["ok"] for step in record["steps"].values()), record["steps"]
    assert record["steps"]["stage_a1"]["samples_per_s"] > 0 and record["steps"]["god_protocol"]["protocol_s"] > 0
    assert "| stage_b_memory |" in capsys.readouterr().out


def test_nsd_reader_benchmark_reads_both_layouts_alike(tmp_path, monkeypatch):
    import bench_nsd_reader
    import repo

    monkeypatch.setattr(repo, "RESULTS_DIR", tmp_path)
    record = json.loads(bench_nsd_reader.main(["--scale", "0.01", "--scratch", str(tmp_path)]).read_text())
    one, two = record["results"]["mindeye1"], record["results"]["mindeye2"]
    assert record["trials"] == 300 and one["train_rows"] == two["train_rows"] == 270  # 90 own images x 3
    assert one["test_rows"] == two["test_rows"] == 10 and one["peak_rss_gib"] >= one["before_read_gib"] > 0
