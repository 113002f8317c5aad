"""evaluate.py end to end as a user runs it: a good run writes the table, metrics.json and the chart; bad input
gives one clear line naming the flag or file, a non-zero exit code and no traceback."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import CODE

N, SETS, SIZE = 5, 2, 24


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, str(CODE / "evaluate.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def data(tmp_path):
    """A ground-truth folder, a reconstruction folder (<stem>_<k>.png) and the same as .npy files."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    recon = (gt // 2 + rng.integers(0, 128, (SETS, *gt.shape))).astype(np.uint8)  # resembles its image
    (tmp_path / "gt").mkdir()
    (tmp_path / "recon").mkdir()
    for i, image in enumerate(gt):
        Image.fromarray(image).save(tmp_path / "gt" / f"stim{i:02d}.png")
        for k in range(SETS):
            Image.fromarray(recon[k, i]).save(tmp_path / "recon" / f"stim{i:02d}_{k}.png")
    np.save(tmp_path / "gt.npy", gt)
    np.save(tmp_path / "recon.npy", recon)
    return tmp_path


def test_folders_give_table_json_and_chart(data):
    out = data / "out"
    empty_cache = {"TORCH_HOME": str(data / "no_weights")}
    done = _run(
        "--recon",
        data / "recon",
        "--gt",
        data / "gt",
        "--metrics",
        "mse",
        "pcc",
        "pixcorr",
        "alexnet2",
        "--out",
        out,
        env=empty_cache,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    rows = {line.split()[0]: line for line in lines[header + 1 :] if line and not line.startswith("wrote")}
    assert set(rows) == {"mse", "pcc", "pixcorr", "alexnet2"}
    assert rows["mse"].split()[1:] == ["1.0000", "higher", "0.500"]  # each reconstruction is its image's
    assert "skipped" in rows["alexnet2"] and "alexnet-owt-7be5be79.pth" in rows["alexnet2"]

    report = json.loads((out / "metrics.json").read_text())
    assert set(report["scores"]) == {"mse", "pcc", "pixcorr"} and set(report["skipped"]) == {"alexnet2"}
    assert report["chance"] == {"mse": 0.5, "pcc": 0.5}
    assert report["num_items"] == N and report["num_samples"] == SETS
    assert 0 < report["scores"]["pixcorr"] < 1
    with Image.open(out / "metrics.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 200


def test_npy_files_score_like_the_folders(data):
    by_folder = _run("--recon", data / "recon", "--gt", data / "gt", "--metrics", "ssim", "--out", data / "a")
    by_npy = _run("--recon", data / "recon.npy", "--gt", data / "gt.npy", "--metrics", "ssim", "--out", data / "b")
    assert by_folder.returncode == 0 and by_npy.returncode == 0, by_folder.stderr + by_npy.stderr
    a, b = (json.loads((data / d / "metrics.json").read_text()) for d in "ab")
    assert a["scores"] == b["scores"] and b["num_samples"] == SETS


def _drop_one_sample(data):
    (data / "recon" / "stim03_1.png").unlink()
    return ["--recon", data / "recon", "--gt", data / "gt"], 1, ["--recon", "stim03"]


def _misnamed_file(data):
    (data / "recon" / "stim03_1.png").rename(data / "recon" / "stim03-1.png")
    return ["--recon", data / "recon", "--gt", data / "gt"], 1, ["stim03-1.png", "<gt-stem>_<k>"]


def _fewer_items(data):
    np.save(data / "short.npy", np.load(data / "recon.npy")[:, :-1])
    return ["--recon", data / "short.npy", "--gt", data / "gt"], 1, ["--recon", "short.npy", f"has {N}"]


def _greyscale_npy(data):
    np.save(data / "grey.npy", np.load(data / "gt.npy")[..., 0])
    return ["--recon", data / "recon", "--gt", data / "grey.npy"], 1, ["--gt", "grey.npy", "(N, H, W, 3)"]


def _float_npy(data):
    np.save(data / "float.npy", np.load(data / "recon.npy") / 255.0)
    return ["--recon", data / "float.npy", "--gt", data / "gt"], 1, ["--recon", "float.npy", "uint8"]


def _missing_folder(data):
    return ["--recon", data / "recon", "--gt", data / "nowhere"], 1, ["--gt", "nowhere", "no such file or folder"]


def _not_images(data):
    (data / "notes.txt").write_text("hello")
    return ["--recon", data / "notes.txt", "--gt", data / "gt"], 2, ["--recon", "notes.txt", ".npy"]


def _unknown_metric(data):
    return ["--recon", data / "recon", "--gt", data / "gt", "--metrics", "mse", "psnr"], 2, ["--metrics", "psnr"]


def _missing_flag(data):
    return ["--recon", data / "recon"], 2, ["--gt"]


@pytest.mark.parametrize(
    "case",
    [
        _drop_one_sample,
        _misnamed_file,
        _fewer_items,
        _greyscale_npy,
        _float_npy,
        _missing_folder,
        _not_images,
        _unknown_metric,
        _missing_flag,
    ],
)
def test_bad_input_is_one_clear_line(data, case):
    args, exit_code, named = case(data)
    done = _run(*args, "--out", data / "out")
    assert done.returncode == exit_code, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "error: " in done.stderr
    for text in named:
        assert text in done.stderr
    assert not (data / "out" / "metrics.json").exists()


def test_help_shows_the_layouts():
    done = _run("--help")
    assert done.returncode == 0
    assert "<gt-stem>_<k>" in done.stdout and "(S, N, H, W, 3)" in done.stdout and "mindeye" in done.stdout


def test_bar_chart_of_two_series_with_gaps(tmp_path):
    from figures import metric_bar_chart

    decoded = {"mse": 0.67, "top-1-class": 0.09, "pixcorr": 0.2, "fid": 120.0}
    control = {"mse": 0.5, "top-1-class": 0.029, "pixcorr": -0.03, "fid": float("nan")}  # NaN: no bar
    path = metric_bar_chart(
        {"decoded": decoded, "shuffled control": control},
        tmp_path / "bars.png",
        chance={"mse": 0.5, "top-1-class": 0.02},
        title="demo",
    )
    with Image.open(path) as chart:
        assert chart.format == "PNG"
    with pytest.raises(ValueError, match="at least one value"):
        metric_bar_chart({"decoded": {}}, tmp_path / "empty.png")
