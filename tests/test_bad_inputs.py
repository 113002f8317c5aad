"""Every entry point under bad input: one clear line naming the file or flag, exit 2 (usage) or 1, no traceback,
no run folder left behind, nothing executed from a data or config file, nothing deleted that we did not write."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import gen_eval
import stageA1_mbm_pretrain
import stageA2_mbm_finetune
import stageB_ldm_finetune
from checkpoint import load_checkpoint, save_checkpoint
from checkpoint_layouts import finetuned_checkpoint
from config import GenEvalConfig, StageA1Config, StageA2Config, StageBConfig
from config_engine import parse_config
from conftest import REFERENCE_DIR
from dc_ldm.ldm_for_fmri import build_ldm_for_fmri
from demo import cli
from demo.simulation.simulate import main as simulate_main
from demo.simulation.simulate import make_synthetic_data
from errors import run_main
from preprocess_hcp import main as preprocess_main
from sc_mbm.mae_for_fmri import MAEforFMRI

CODE = Path(__file__).resolve().parents[1] / "code"
MAE = {
    "patch_size": 16,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 4,
    "mlp_ratio": 1.0,
    "decoder_embed_dim": 16,
    "decoder_num_heads": 4,
    "decoder_depth": 1,
}


class Pwn:
    """Unpickling it runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny simulated data, a tiny label2img folder, a Stage A checkpoint and a finetuned.pth made from them."""
    root = tmp_path_factory.mktemp("bad")
    data = make_synthetic_data(root / "data", size="tiny", seed=0)
    ldm_dir = root / "ldm"
    ldm_dir.mkdir()
    (ldm_dir / "config.yaml").write_text(
        yaml.safe_dump({"model": yaml.safe_load((REFERENCE_DIR / "ldm.json").read_text())["model"]})
    )
    from readers.god import create_god_dataset

    num_voxels = create_god_dataset(data / "Kamitani/npz", subjects=["sbj_3"])[0].num_voxels
    mae = MAEforFMRI(num_voxels, **{k: v for k, v in MAE.items()})
    stage_a = root / "fmri_encoder.pth"
    save_checkpoint({"model": mae.state_dict(), "config": {**MAE, "num_voxels": num_voxels}, "epoch": 0}, stage_a)
    cfg = StageBConfig(
        root_path=str(root),
        kam_path=str(data / "Kamitani/npz"),
        pretrain_gm_path=str(ldm_dir),
        pretrain_mbm_path=str(stage_a),
        img_size=32,
        model_meta={k: MAE[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")},
    )
    model = build_ldm_for_fmri(ldm_dir, MAE, num_voxels, load_ldm_weights=False)
    save_checkpoint(finetuned_checkpoint(model, cfg), root / "finetuned.pth")
    return root


def fail(main, capsys, monkeypatch) -> tuple[int, str]:
    """Run an entry point's main as its `__main__` does (through run_main): (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog"])  # no --debug
    monkeypatch.delenv("MINDVIS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    return exit_info.value.code, capsys.readouterr().err


def a1(argv):
    return lambda: stageA1_mbm_pretrain.main(parse_config(StageA1Config, argv))


def a2(argv):
    return lambda: stageA2_mbm_finetune.main(parse_config(StageA2Config, argv))


def b(argv):
    return lambda: stageB_ldm_finetune.main(parse_config(StageBConfig, argv))


def ge(argv):
    return lambda: gen_eval.main(parse_config(GenEvalConfig, argv))


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def nan_checkpoint(world: Path, tmp: Path) -> Path:
    ckpt = load_checkpoint(world / "fmri_encoder.pth")
    ckpt["model"]["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    return save_checkpoint({**ckpt, "config": dict(ckpt["config"])}, tmp / "nan.pth")


def evil_pickle(tmp: Path) -> Path:
    torch.save({"model": Pwn(tmp / "pwned")}, tmp / "evil.pth")
    return tmp / "evil.pth"


def constant_god(world: Path, tmp: Path) -> Path:
    """A copy of the GOD folder whose sbj_3 training fMRI is constant."""
    import shutil

    folder = Path(shutil.copytree(world / "data/Kamitani/npz", tmp / "god"))
    with np.load(folder / "sbj_3.npz") as npz:
        arrays = dict(npz)
    arrays["arr_0"] = np.ones_like(arrays["arr_0"])
    np.savez(folder / "sbj_3.npz", **arrays)
    return folder


def evil_ldm(tmp: Path) -> Path:
    folder = tmp / "evil_ldm"
    write(folder / "config.yaml", f"model:\n  target: os.system\n  params:\n    command: touch {tmp / 'pwned'}\n")
    return folder


# (name, entry point builder, argv builder (world, tmp) -> argv, exit code, regex the one line must match)
CASES = [
    (
        "a1 float for an int",
        a1,
        lambda w, t: ["--config", str(write(t / "c.yaml", "num_epoch: 1.7\n"))],
        2,
        r"num_epoch must be a whole number, got 1\.7",
    ),
    ("a1 mask ratio 0", a1, lambda w, t: ["--mask_ratio", "0"], 2, r"mask_ratio must be in \(0, 1\)"),
    (
        "a1 yaml syntax",
        a1,
        lambda w, t: ["--config", str(write(t / "c.yaml", "lr: [1\n"))],
        2,
        r"c\.yaml: not valid YAML",
    ),
    ("a1 missing yaml", a1, lambda w, t: ["--config", str(t / "none.yaml")], 2, r"config file not found: .*none"),
    (
        "a1 fp16 on cpu",
        a1,
        lambda w, t: ["--precision", "fp16", "--output_path", str(t)],
        2,
        r"--precision fp16 needs a CUDA device",
    ),
    ("a1 bad roi", a1, lambda w, t: ["--roi", "V9"], 2, r"roi must be VC, V1, V2, V3 or V4, got 'V9'"),
    (
        "a1 output is a file",
        a1,
        lambda w, t: ["--output_path", str(write(t / "f", "x"))],
        1,
        r"--output_path .*/f is a file, not a folder",
    ),
    (
        "a1 no data",
        a1,
        lambda w, t: ["--hcp_path", str(t / "nowhere"), "--output_path", str(t / "o")],
        1,
        r"folder not found: .*nowhere",
    ),
    (
        "a1 resume nothing",
        a1,
        lambda w, t: ["--resume", str(t / "gone"), "--output_path", str(t / "o")],
        1,
        r"--resume .*gone: no checkpoint\.pth there",
    ),
    (
        "a1 patch larger than the voxels",
        a1,
        lambda w, t: [
            "--hcp_path",
            str(w / "data/HCP/npz"),
            "--no-include_kam",
            "--roi",
            "V4",
            "--patch_size",
            "4096",
            "--output_path",
            str(t / "o"),
        ],
        1,
        r"fewer than one patch of 4096",
    ),
    (
        "a2 garbage checkpoint",
        a2,
        lambda w, t: [
            "--pretrain_mbm_path",
            str(write(t / "g.pth", b"\x00garbage" * 9)),
            "--kam_path",
            str(w / "data/Kamitani/npz"),
            "--output_path",
            str(t / "o"),
        ],
        1,
        r"g\.pth: not a readable torch checkpoint",
    ),
    (
        "a2 NaN weights",
        a2,
        lambda w, t: [
            "--pretrain_mbm_path",
            str(nan_checkpoint(w, t)),
            "--kam_path",
            str(w / "data/Kamitani/npz"),
            "--output_path",
            str(t / "o"),
        ],
        1,
        r"nan\.pth: weights hold NaN or inf values",
    ),
    (
        "a2 code in a checkpoint",
        a2,
        lambda w, t: ["--pretrain_mbm_path", str(evil_pickle(t)), "--output_path", str(t / "o")],
        1,
        r"evil\.pth: refused to load global '(os|posix)\.system'",
    ),
    ("a2 unknown data set", a2, lambda w, t: ["--dataset", "THINGS"], 2, r"dataset must be one of"),
    (
        "a2 constant fMRI",
        a2,
        lambda w, t: [
            "--pretrain_mbm_path",
            str(w / "fmri_encoder.pth"),
            "--kam_path",
            str(constant_god(w, t)),
            "--output_path",
            str(t / "o"),
        ],
        1,
        r"sbj_3\.npz: key 'arr_0': the fMRI is constant",
    ),
    (
        "b code in config.yaml",
        b,
        lambda w, t: [
            "--pretrain_gm_path",
            str(evil_ldm(t)),
            "--pretrain_mbm_path",
            str(w / "fmri_encoder.pth"),
            "--kam_path",
            str(w / "data/Kamitani/npz"),
            "--img_size",
            "32",
            "--output_path",
            str(t / "o"),
        ],
        1,
        r"config\.yaml: key 'model\.target': refused config target 'os\.system'",
    ),
    ("b one sampler step", b, lambda w, t: ["--ddim_steps", "1"], 2, r"ddim_steps must be at least 4"),
    ("b guidance without dropout", b, lambda w, t: ["--guidance_scale", "3"], 2, r"needs a model trained with"),
    (
        "b bad classifier file",
        b,
        lambda w, t: [
            "--classifier",
            str(write(t / "c.pth", b"junk")),
            "--pretrain_mbm_path",
            str(w / "fmri_encoder.pth"),
            "--output_path",
            str(t / "o"),
        ],
        1,
        r"c\.pth: not a readable torch checkpoint",
    ),
    (
        "gen_eval no checkpoint",
        ge,
        lambda w, t: ["--checkpoint", str(t / "none.pth"), "--output_path", str(t / "o")],
        1,
        r"Stage B checkpoint not found: .*none\.pth",
    ),
    ("gen_eval unknown metric", ge, lambda w, t: ["--metrics", "nope"], 2, r"unknown metric\(s\) \['nope'\]"),
    ("gen_eval cuda without a GPU", ge, lambda w, t: ["--device", "cuda"], 2, r"--device cuda: no CUDA GPU"),
    ("gen_eval one item", ge, lambda w, t: ["--limit", "1"], 2, r"limit must be at least 2"),
    (
        "gen_eval redirecting checkpoint",
        ge,
        lambda w, t: ["--checkpoint", str(redirecting(w, t)), "--root_path", str(w), "--output_path", str(t / "o")],
        1,
        r"refused config target 'os\.system'",
    ),
    (
        "simulate existing data",
        lambda argv: lambda: simulate_main(argv),
        lambda w, t: ["--out", str(w / "data")],
        1,
        r"already holds data .*--overwrite",
    ),
    (
        "simulate bad setting",
        lambda argv: lambda: simulate_main(argv),
        lambda w, t: ["--out", str(t / "s"), "--image_size", "100"],
        2,
        r"image_size must be a positive multiple of 64",
    ),
    (
        "preprocess no atlas",
        lambda argv: lambda: preprocess_main(argv),
        lambda w, t: ["--fmri_glob", str(t / "*.nii"), "--atlas", str(t / "atlas.nii.gz")],
        2,
        r"--fmri_glob: no fMRI files match",
    ),
    (
        "demo negative seed",
        lambda argv: lambda: cli.main(argv),
        lambda w, t: ["--seed", "-1"],
        2,
        r"--seed must be >= 0",
    ),
]


def redirecting(world: Path, tmp: Path) -> Path:
    """A finetuned.pth (passing the unpickler) whose stored paths steer to a config.yaml that would run code."""
    ckpt = load_checkpoint(world / "finetuned.pth")
    ckpt["config"] = {**vars(ckpt["config"]), "pretrain_gm_path": str(evil_ldm(tmp))}
    return save_checkpoint(ckpt, tmp / "redirecting.pth")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, world, tmp_path, capsys, monkeypatch):
    _, entry, argv, code, message = case
    exit_code, err = fail(entry(argv(world, tmp_path)), capsys, monkeypatch)
    assert exit_code == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "pwned").exists()  # nothing in a data or config file ran
    assert not any(p.is_dir() for p in (tmp_path / "o").glob("*/*")), "a failed run left its run folder"


def test_a_flag_path_wins_over_the_stored_one(world, tmp_path):
    """With --pretrain_gm_path the redirecting checkpoint's stored folder is never read; it decodes normally."""
    run = gen_eval.main(
        GenEvalConfig(
            checkpoint=str(redirecting(world, tmp_path)),
            root_path=str(world),
            pretrain_gm_path=str(world / "ldm"),
            output_path=str(tmp_path / "o"),
            num_samples=1,
            ddim_steps=4,
            limit=2,
            metrics=["pcc"],
        )
    )
    assert (run / "metrics.json").is_file() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["stageA1_mbm_pretrain.py", "--mask_ratio", "1.5"], 2, "mask_ratio must be in"),
        (["stageA2_mbm_finetune.py", "--pretrain_mbm_path", "/nonexistent/x.pth"], 1, "Stage A checkpoint not found"),
        (["stageB_ldm_finetune.py", "--lr", "-1"], 2, "lr must be positive"),
        (["gen_eval.py", "--checkpoint", "/nonexistent/f.pth"], 1, "Stage B checkpoint not found"),
        (["make_synthetic_data.py", "--out", "/proc/cannot"], 1, "/proc/cannot"),
        (["preprocess_hcp.py", "--fmri_glob", "/nonexistent/*", "--atlas", "a.nii"], 2, "--fmri_glob"),
        (["evaluate.py", "--recon", "/nonexistent", "--gt", "/nonexistent"], 1, "--gt /nonexistent"),
        (["-m", "demo", "--size", "huge"], 2, "--size"),
    ],
)
def test_entry_points_as_processes(argv, code, message, tmp_path):
    cmd = [
        sys.executable,
        *([str(CODE / argv[0])] if argv[0].endswith(".py") else argv[:2]),
        *(argv[1:] if argv[0].endswith(".py") else argv[2:]),
    ]
    env = {**os.environ, "PYTHONPATH": str(CODE), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr


def test_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, str(CODE / "gen_eval.py"), "--checkpoint", "/nonexistent/f.pth", "--debug"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint({"x": torch.ones(1)}, tmp_path / "c.pth")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
