"""Stage A1 and A2 scripts end to end on the tiny simulated data: artefacts, resume, torchrun, bad input."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import stageA1_mbm_pretrain as a1
import stageA2_mbm_finetune as a2
from checkpoint import as_config_dict, load_checkpoint
from config import StageA1Config, StageA2Config
from config_engine import ConfigError, from_dict, parse_config
from demo.simulation.simulate import make_synthetic_data
from engine import NonFiniteLossError, Schedule
from errors import CheckpointError, UserError
from sc_mbm.mae_for_fmri import MAEforFMRI

CODE = Path(__file__).resolve().parents[1] / "code"
TINY_MODEL = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_num_heads=2)
CKPT_KEYS = {"model", "optimizer", "epoch", "scaler", "config", "rng"}


class Killed(Exception):
    """Stands in for the process being killed between two epochs."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic_data(tmp_path_factory.mktemp("sim") / "tiny", size="tiny", seed=0)


def a1_config(data: Path, out: Path, **overrides) -> StageA1Config:
    values = dict(
        hcp_path=str(data / "HCP/npz"),
        kam_path=str(data / "Kamitani/npz"),
        output_path=str(out),
        batch_size=64,
        num_epoch=2,
        warmup_epochs=1,
        ckpt_every=1,
        log_every=2,
        include_kam=False,
        **TINY_MODEL,
    )
    return StageA1Config(**{**values, **overrides})


def a2_config(data: Path, out: Path, pretrained: Path, **overrides) -> StageA2Config:
    values = dict(
        kam_path=str(data / "Kamitani/npz"),
        bold5000_path=str(data / "BOLD5000"),
        output_path=str(out),
        pretrain_mbm_path=str(pretrained),
        num_epoch=2,
        warmup_epochs=1,
        ckpt_every=1,
        batch_size=64,
        log_every=5,
    )
    return StageA2Config(**{**values, **overrides})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def kill_at(monkeypatch, epoch: int, script=a1) -> None:
    """Make the stage script die when it starts `epoch` (after the checkpoint of the epoch before)."""
    real = script.train_one_epoch

    def train_or_die(*args, **kwargs):
        if kwargs["epoch"] == epoch:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(script, "train_one_epoch", train_or_die)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True):
        assert ka == kb and all(torch.equal(sa[k], sb[k]) for k in sa)


def held_out_hcp(tiny: Path, folder: Path) -> Path:
    """A folder holding the last HCP subject only (a link), the one `num_sub_limit=2` leaves out of training."""
    last = sorted((tiny / "HCP/npz").iterdir())[-1]
    folder.mkdir()
    (folder / last.name).symlink_to(last)
    return folder


@pytest.fixture(scope="module")
def a1_run(tiny, tmp_path_factory) -> Path:
    """Two HCP subjects + GOD training fMRI; the third HCP subject and the GOD test fMRI of sbj_3 held out."""
    out = tmp_path_factory.mktemp("a1")
    val_hcp = held_out_hcp(tiny, out / "val_hcp")
    cfg = a1_config(tiny, out, include_kam=True, num_sub_limit=2, val_hcp_path=str(val_hcp), val_kam_subs=["sbj_3"])
    return a1.main(cfg)


def test_stageA1_writes_the_run_folder(a1_run):
    assert a1_run.parent.name == "stageA1"
    cfg = from_dict(StageA1Config, yaml.safe_load((a1_run / "config.yaml").read_text()))
    ckpt = load_checkpoint(a1_run / "checkpoint.pth")
    assert set(ckpt) == CKPT_KEYS and ckpt["epoch"] == 1 and ckpt["scaler"] == {} and len(ckpt["rng"]) == 1
    assert type(ckpt["config"]).__qualname__ == "Config_MBM_fMRI" and ckpt["config"].embed_dim == 32
    assert ckpt["config"].num_voxels == cfg.num_voxels == (ckpt["model"]["pos_embed"].shape[1] - 1) * 16
    assert set(ckpt["model"]) == set(MAEforFMRI(cfg.num_voxels, **TINY_MODEL).state_dict())
    assert {"recon_epoch0.png", "recon_epoch1.png", "log.txt"} <= {p.name for p in a1_run.iterdir()}
    rows = metrics(a1_run)
    assert [r["epoch"] for r in rows] == [-1, 0, 1]
    held_out = {f"val_{s}_{m}" for s in ("hcp", "god") for m in ("loss", "cor", "masked_cor")}
    assert set(rows[0]) == {"epoch"} | held_out and {"loss", "cor", "lr", "samples_per_s"} | held_out <= set(rows[1])
    assert rows[2]["loss"] < rows[1]["loss"]
    log = (a1_run / "log.txt").read_text()
    assert "data: 840 samples of 352 voxels" in log  # 2 x 120 HCP windows + 5 x 120 GOD training trials
    assert "fp32 on cpu (sdpa attention)" in log
    assert "epoch 1 step 4/14  loss" in log and " lr " in log and " cor " in log and "samples/s" in log


def test_stageA1_resumes_exactly_where_it_was_killed(tiny, tmp_path, monkeypatch):
    whole = a1.main(a1_config(tiny, tmp_path / "whole", num_epoch=3, ckpt_every=2))
    kill_at(monkeypatch, epoch=2)
    with pytest.raises(Killed):
        a1.main(a1_config(tiny, tmp_path / "killed", num_epoch=3, ckpt_every=2))
    monkeypatch.undo()
    (killed,) = (tmp_path / "killed/stageA1").iterdir()
    assert load_checkpoint(killed / "checkpoint.pth")["epoch"] == 1
    longer = Path(shutil.copytree(killed, tmp_path / "longer"))
    (killed / ".checkpoint.pth.x1.tmp").write_bytes(b"left by a save that was killed")
    # the run's own config.yaml supplies the flags: --resume alone continues it, in its folder
    resumed = a1.main(parse_config(StageA1Config, ["--resume", str(killed)]))
    assert resumed == killed and [r["epoch"] for r in metrics(resumed)] == [0, 1, 2]
    assert not (killed / ".checkpoint.pth.x1.tmp").exists()
    assert_same_training_state(load_checkpoint(whole / "checkpoint.pth"), load_checkpoint(resumed / "checkpoint.pth"))
    assert metrics(resumed)[2] | {"samples_per_s": 0, "time_s": 0} == metrics(whole)[2] | {
        "samples_per_s": 0,
        "time_s": 0,
    }
    with pytest.raises(ConfigError, match="already finished its 3 epochs"):
        a1.main(a1_config(tiny, tmp_path, num_epoch=3, resume=str(killed)))
    # checkpointing changes nothing the run computes (the demo's steps checkpoint every epoch to resume)
    every = a1.main(a1_config(tiny, tmp_path / "every", num_epoch=3, ckpt_every=1))
    assert_same_training_state(load_checkpoint(whole / "checkpoint.pth"), load_checkpoint(every / "checkpoint.pth"))

    # a longer target changes the schedule: refused unless asked for; then the lr follows the new num_epoch
    with pytest.raises(ConfigError, match=r"schedule would change \(num_epoch 3 -> 4\).*--allow_new_schedule"):
        a1.main(a1_config(tiny, tmp_path, num_epoch=4, resume=str(longer)))
    kill_at(monkeypatch, epoch=3)
    with pytest.raises(Killed):
        a1.main(a1_config(tiny, tmp_path, num_epoch=4, resume=str(longer), allow_new_schedule=True))
    assert metrics(longer)[-1]["lr"] == pytest.approx(Schedule(2.5e-4, 0.0, 1, 4)(2 + 5 / 6))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = a1.train_one_epoch

    def poison_at_epoch_1(model, *args, **kwargs):
        if kwargs["epoch"] == 1:
            with torch.no_grad():
                model.decoder_pred.bias.fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(a1, "train_one_epoch", poison_at_epoch_1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 1, step 0 of 6"):
        a1.main(a1_config(tiny, tmp_path, num_epoch=3))
    (run,) = (tmp_path / "stageA1").iterdir()
    ckpt = load_checkpoint(run / "checkpoint.pth")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (run / "recon_epoch1.png").exists()


def test_torchrun_two_processes_agree_split_the_data_and_write_one_checkpoint(tiny, tmp_path):
    dump = tmp_path / "dump"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).parent / "torchrun_probe.py"),
        "--hcp_path",
        str(tiny / "HCP/npz"),
        "--output_path",
        str(tmp_path / "out"),
        "--no-include_kam",
        "--batch_size",
        "32",
        "--num_epoch",
        "2",
        "--warmup_epochs",
        "1",
        *[f"--{k}={v}" for k, v in TINY_MODEL.items()],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_OUT": str(dump)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    for epoch in ("0", "1"):
        first, second = (set(r["indices"][epoch]) for r in ranks)
        assert len(first) == len(second) == 180 and not first & second  # 360 HCP samples, disjoint halves
    assert ranks[0]["indices"]["0"] != ranks[0]["indices"]["1"]  # reshuffled per epoch (set_epoch)
    (checkpoint,) = (tmp_path / "out").rglob("*.pth")
    assert len(load_checkpoint(checkpoint)["rng"]) == 2  # every rank's RNG, for an exact resume


def test_stageA2_finetunes_on_god_test_fmri_padded_to_the_pretrained_count(tiny, a1_run, tmp_path):
    run = a2.main(a2_config(tiny, tmp_path, a1_run / "checkpoint.pth"))
    ckpt = load_checkpoint(run / "checkpoint.pth")
    pretrained = load_checkpoint(a1_run / "checkpoint.pth")
    assert set(ckpt) == CKPT_KEYS | {"finetune_config"} and ckpt["epoch"] == 1
    assert ckpt["model"]["pos_embed"].shape == pretrained["model"]["pos_embed"].shape
    config, finetune = as_config_dict(ckpt["config"]), as_config_dict(ckpt["finetune_config"])
    assert {k: config[k] for k in TINY_MODEL} == TINY_MODEL  # the architecture, for Stage B
    assert config["num_voxels"] == as_config_dict(pretrained["config"])["num_voxels"] == 352
    assert finetune["dataset"] == "GOD" and finetune["include_nonavg_test"]
    assert not torch.equal(ckpt["model"]["blocks.0.attn.qkv.weight"], pretrained["model"]["blocks.0.attn.qkv.weight"])
    assert {"recon_epoch0.png", "recon_epoch1.png", "config.yaml"} <= {p.name for p in run.iterdir()}
    assert "720 test fMRI of 336 voxels, padded to 352" in (run / "log.txt").read_text()  # 20 averaged + 20 x 35


def test_stageA2_scores_test_images_it_leaves_out_after_every_epoch(tiny, a1_run, tmp_path):
    run = a2.main(a2_config(tiny, tmp_path, a1_run / "checkpoint.pth", val_images=3, num_epoch=2))
    lines = metrics(run)
    assert [m["epoch"] for m in lines if "val_test_masked_cor" in m] == [-1, 0, 1]  # before training, each epoch
    assert all(-1 <= m["val_test_masked_cor"] <= 1 for m in lines if "val_test_masked_cor" in m)
    assert "612 test fMRI of 336 voxels" in (run / "log.txt").read_text()  # 17 of 20 images x (1 average + 35)
    with pytest.raises(UserError, match="--val_images 20 leaves no test image"):
        a2.main(
            a2_config(tiny, tmp_path / "all", a1_run / "checkpoint.pth", val_images=20, num_epoch=1, warmup_epochs=0)
        )
    with pytest.raises(UserError, match="--val_images 21: the data show only 20 images"):
        a2.main(
            a2_config(tiny, tmp_path / "more", a1_run / "checkpoint.pth", val_images=21, num_epoch=1, warmup_epochs=0)
        )


def test_stageA2_in_bf16_on_a_cpu_runs_the_explicit_attention(tiny, a1_run, tmp_path):
    run = a2.main(a2_config(tiny, tmp_path, a1_run / "checkpoint.pth", precision="bf16", num_epoch=1, warmup_epochs=0))
    assert "bf16 on cpu (explicit attention)" in (run / "log.txt").read_text()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics(run)[-1].items() if k in ("loss", "cor"))


def test_stageA2_command_line_on_bold5000(tiny, a1_run, tmp_path):
    cmd = [
        sys.executable,
        str(CODE / "stageA2_mbm_finetune.py"),
        "--dataset",
        "BOLD5000",
        "--bold5000_path",
        str(tiny / "BOLD5000"),
        "--pretrain_mbm_path",
        str(a1_run / "checkpoint.pth"),
        "--output_path",
        str(tmp_path),
        "--num_epoch",
        "1",
        "--warmup_epochs",
        "0",
        "--no-include_nonavg_test",
    ]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "stageA2").iterdir()
    assert "BOLD5000 ['CSI1'], 12 test fMRI of 128 voxels, padded to 352" in (run / "log.txt").read_text()
    assert [r["epoch"] for r in metrics(run)] == [0] and (run / "checkpoint.pth").is_file()


def _published_checkpoint(path: Path, monkeypatch, num_voxels: int = 160, **config) -> dict:
    """An fmri_encoder.pth as the original wrote it: `config` is a pickled `config.Config_MBM_fMRI` object."""
    module = types.ModuleType("config")

    class Config_MBM_fMRI:  # noqa: N801 - the published class name
        pass

    Config_MBM_fMRI.__module__, Config_MBM_fMRI.__qualname__ = "config", "Config_MBM_fMRI"
    module.Config_MBM_fMRI = Config_MBM_fMRI
    published = Config_MBM_fMRI()
    fields = dict(lr=2.5e-4, mask_ratio=0.75, patch_size=16, mlp_ratio=1.0, seed="2022", num_voxels=num_voxels)
    published.__dict__.update({**fields, **TINY_MODEL, "embed_dim": 24, **config})
    model = MAEforFMRI(num_voxels, **{**TINY_MODEL, "embed_dim": 24})
    state = {"model": model.state_dict(), "optimizer": {}, "epoch": 499, "scaler": {}, "config": published}
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "config", module)
        torch.save(state, path)
    return state


def test_stageA2_loads_a_published_checkpoint_and_cuts_the_voxels(tiny, tmp_path, monkeypatch):
    _published_checkpoint(tmp_path / "fmri_encoder.pth", monkeypatch, num_voxels=160)
    run = a2.main(
        a2_config(
            tiny, tmp_path, tmp_path / "fmri_encoder.pth", num_epoch=1, warmup_epochs=0, include_nonavg_test=False
        )
    )
    assert "20 test fMRI of 336 voxels, cut to 160" in (run / "log.txt").read_text()
    config = as_config_dict(load_checkpoint(run / "checkpoint.pth")["config"])
    assert config["embed_dim"] == 24 and config["num_voxels"] == 160 and config["decoder_depth"] == 8


def test_stageA2_resumes_exactly(tiny, a1_run, tmp_path, monkeypatch):
    small = dict(num_epoch=2, include_nonavg_test=False, batch_size=8)  # 20 averaged test fMRI, 3 steps per epoch
    whole = a2.main(a2_config(tiny, tmp_path / "whole", a1_run / "checkpoint.pth", ckpt_every=2, **small))
    kill_at(monkeypatch, epoch=1, script=a2)
    with pytest.raises(Killed):
        a2.main(a2_config(tiny, tmp_path / "killed", a1_run / "checkpoint.pth", **small))
    monkeypatch.undo()
    (killed,) = (tmp_path / "killed/stageA2").iterdir()
    # the architecture and the starting weights come from the resumed checkpoint, not the pre-trained one
    resumed = a2.main(
        a2_config(tiny, tmp_path / "resumed", tmp_path / "absent.pth", resume=str(killed / "checkpoint.pth"), **small)
    )
    assert resumed == killed
    assert_same_training_state(load_checkpoint(whole / "checkpoint.pth"), load_checkpoint(resumed / "checkpoint.pth"))


# ---- Bad input ------------------------------------------------------------------------------------------------------


def test_stageA2_bad_checkpoints_fail_clearly(tiny, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"Stage A checkpoint not found: .*nowhere\.pth.*--pretrain_mbm_path"):
        a2.main(a2_config(tiny, tmp_path, tmp_path / "nowhere.pth"))

    path = tmp_path / "broken.pth"
    state = _published_checkpoint(path, monkeypatch)
    del state["model"]["decoder_pred.weight"]
    torch.save({**state, "config": vars(state["config"])}, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth: model state lacks 1 key\(s\): \['decoder_pred.weight'\]"):
        a2.main(a2_config(tiny, tmp_path, path))

    _published_checkpoint(path, monkeypatch, num_heads=5)  # embed_dim 24 with 5 heads
    inconsistent = r"broken\.pth: the file is inconsistent: .*embed_dim \(24\) must be divisible by num_heads \(5\)"
    with pytest.raises(CheckpointError, match=inconsistent):
        a2.main(a2_config(tiny, tmp_path, path))
    _published_checkpoint(path, monkeypatch, embed_dim=32)  # the config contradicts the weights (24)
    with pytest.raises(CheckpointError, match=r"its config says embed_dim = 32 but its weights were built with 24"):
        a2.main(a2_config(tiny, tmp_path, path))

    state = _published_checkpoint(path, monkeypatch)
    state["model"]["pos_embed"] = state["model"]["pos_embed"][:, :1]  # no patch at all: fMRI shorter than a patch
    torch.save({**state, "config": vars(state["config"])}, path)
    with pytest.raises(CheckpointError, match="pos_embed holds no patch positions"):
        a2.main(a2_config(tiny, tmp_path, path))


def test_stageA1_refuses_to_resume_another_architecture_or_voxel_count(tiny, a1_run, tmp_path):
    with pytest.raises(ConfigError, match=r"num_voxels 352 there, 272 here"):
        a1.main(a1_config(tiny, tmp_path, resume=str(a1_run / "checkpoint.pth")))
    with pytest.raises(ConfigError, match=r"embed_dim 32 there, 64 here"):
        a1.main(a1_config(tiny, tmp_path, include_kam=True, embed_dim=64, resume=str(a1_run / "checkpoint.pth")))
    val_hcp = held_out_hcp(tiny, tmp_path / "val_hcp")
    with pytest.raises(ConfigError, match=r"val_hcp_path shares subjects with hcp_path, so they are not held out"):
        a1.main(a1_config(tiny, tmp_path, val_hcp_path=str(val_hcp)))


def test_stageA1_command_line_rejects_embed_dim_not_divisible_by_heads(capsys):
    with pytest.raises(SystemExit):
        parse_config(StageA1Config, ["--embed_dim", "60", "--num_heads", "16"])
    assert "embed_dim (60) must be divisible by num_heads (16)" in capsys.readouterr().err


def test_stageA2_command_line_on_nsd(tiny, a1_run, tmp_path):
    """A2 on NSD's shared test images (MindEye's layout), the flags as on GOD."""
    cmd = [sys.executable, str(CODE / "stageA2_mbm_finetune.py"), "--dataset", "NSD"]
    cmd += ["--nsd_path", str(tiny / "NSD" / "mindeye1"), "--nsd_subs", "subj01", "subj02"]
    cmd += ["--pretrain_mbm_path", str(a1_run / "checkpoint.pth"), "--output_path", str(tmp_path)]
    cmd += ["--num_epoch", "1", "--warmup_epochs", "0"]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "stageA2").iterdir()
    log = (run / "log.txt").read_text()
    # 8 shared images per subject: their means and (include_nonavg_test, A2's default) their 3 single trials each
    assert "NSD ['subj01', 'subj02'], 64 test fMRI" in log, log[-2000:]
    assert [r["epoch"] for r in metrics(run)] == [0]
