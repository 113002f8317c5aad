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
    # each reconstruction is its image's, so every item scores 1 and so does every resample of them
    assert rows["mse"].split()[1:] == ["1.0000", "[1.0000,", "1.0000]", "higher", "0.500"]
    assert "skipped" in rows["alexnet2"] and "alexnet-owt-7be5be79.pth" in rows["alexnet2"]

    report = json.loads((out / "metrics.json").read_text())
    assert set(report["scores"]) == {"mse", "pcc", "pixcorr"} and set(report["skipped"]) == {"alexnet2"}
    assert report["chance"] == {"mse": 0.5, "pcc": 0.5}
    assert report["num_items"] == N and report["num_samples"] == SETS
    assert 0 < report["scores"]["pixcorr"] < 1
    assert report["items"] == [f"stim{i:02d}" for i in range(N)]
    assert set(report["per_item"]) == set(report["intervals"]) == {"mse", "pcc", "pixcorr"}
    for name, items in report["per_item"].items():
        low, high = report["intervals"][name]
        assert len(items) == N and low <= report["scores"][name] <= high, name
        assert f"[{low:.4f}, {high:.4f}]" in rows[name], name
    with Image.open(out / "metrics.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 200


def test_npy_files_score_like_the_folders(data):
    by_folder = _run("--recon", data / "recon", "--gt", data / "gt", "--metrics", "ssim", "--out", data / "a")
    by_npy = _run("--recon", data / "recon.npy", "--gt", data / "gt.npy", "--metrics", "ssim", "--out", data / "b")
    assert by_folder.returncode == 0 and by_npy.returncode == 0, by_folder.stderr + by_npy.stderr
    a, b = (json.loads((data / d / "metrics.json").read_text()) for d in "ab")
    assert a["scores"] == b["scores"] and b["num_samples"] == SETS and b["items"] is None
    compared = _run("--compare", data / "a", data / "b" / "metrics.json")  # a folder or its file
    assert compared.returncode == 0, compared.stderr
    assert "by position" in compared.stdout  # a .npy names no items
    same = f"{a['scores']['ssim']:.4f}"
    assert compared.stdout.splitlines()[-1].split() == ["ssim", same, same, "+0.0000", "[0.0000,", "0.0000]", "higher"]


ITEMS = 50


def _write_run(path, scores_per_item, items=None):
    """A metrics.json as evaluate.py writes it, from item scores {metric: (N,)}; FID without item scores."""
    per_item = {name: list(map(float, values)) for name, values in scores_per_item.items()}
    report = {
        "scores": {**{name: float(np.mean(v)) for name, v in per_item.items()}, "fid": 1.0},
        "intervals": {name: [0.0, 1.0] for name in per_item} | {"fid": None},
        "per_item": per_item,
        "items": items,
    }
    path.mkdir()
    (path / "metrics.json").write_text(json.dumps(report))
    return path


def _comparison_rows(stdout):
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[2:]}


def test_compare_gives_the_paired_difference(tmp_path):
    rng = np.random.default_rng(0)
    difficulty = rng.random(ITEMS)
    names = [f"img{i}" for i in range(ITEMS)]
    a = _write_run(tmp_path / "a", {"ssim": difficulty, "mse": difficulty}, names)
    b = _write_run(tmp_path / "b", {"ssim": difficulty - 0.05, "mse": difficulty + rng.normal(0, 0.01, ITEMS)}, names)
    done = _run("--compare", a, b)
    assert done.returncode == 0, done.stderr
    assert f"paired over {ITEMS} items by name" in done.stdout.splitlines()[0]
    rows = _comparison_rows(done.stdout)
    _, _, diff, low, high, better = rows["ssim"]
    assert float(diff) == pytest.approx(-0.05) and float(high.rstrip("]")) < 0 and better == "higher"
    _, _, diff, low, high, _ = rows["mse"]  # no real difference: the interval holds 0
    assert float(low.strip("[,")) < 0 < float(high.rstrip("]"))
    assert "n/a" in " ".join(rows["fid"])


def _other_items(tmp_path):
    items = [f"other{i}" for i in range(ITEMS)]
    return _write_run(tmp_path / "b", {"ssim": np.ones(ITEMS)}, items), ["other0, other1, other2", "same items"]


def _fewer_items(tmp_path):
    return _write_run(tmp_path / "b", {"ssim": np.ones(ITEMS - 1)}), [f"{ITEMS - 1} items", f"{ITEMS} items"]


def _nested(tmp_path):
    (tmp_path / "deep.json").write_text('{"per_item": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return tmp_path / "deep.json", ["deep.json", "not a readable metrics.json"]


def _item_scores_as_text(tmp_path):
    (tmp_path / "text.json").write_text(json.dumps({"scores": {"ssim": 0.5}, "per_item": {"ssim": ["1"] * ITEMS}}))
    return tmp_path / "text.json", ["text.json", "'per_item' (metric: list of numbers)"]


def _no_item_scores(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"scores": {"ssim": 0.5}, "skipped": {}}))
    return tmp_path / "old.json", ["old.json", "no per-item scores"]


def _not_json(tmp_path):
    (tmp_path / "b.json").write_text("{scores")
    return tmp_path / "b.json", ["b.json", "not a readable metrics.json"]


@pytest.mark.parametrize(
    "case", [_other_items, _fewer_items, _no_item_scores, _not_json, _nested, _item_scores_as_text]
)
def test_compare_refuses_runs_it_cannot_pair(tmp_path, case):
    a = _write_run(tmp_path / "a", {"ssim": np.ones(ITEMS)}, [f"img{i}" for i in range(ITEMS)])
    b, named = case(tmp_path)
    done = _run("--compare", a, b)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    for text in named:
        assert text in done.stderr


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


def test_grids_side_by_side_show_the_first_rows_of_each_grid_as_they_are(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from figures import grids_side_by_side, image_grid

    gt = np.repeat(np.arange(12, dtype=np.uint8)[:, None, None, None] * 20, 8, 1).repeat(8, 2).repeat(3, 3)
    left = image_grid(gt, np.stack([gt, gt]), tmp_path / "left.png")  # 12 rows of 8 px, 3 tiles each
    right = image_grid(gt, np.stack([255 - gt]), tmp_path / "right.png")
    drawn = []
    imshow = Axes.imshow
    monkeypatch.setattr(Axes, "imshow", lambda ax, image, **kw: drawn.append((image, kw)) or imshow(ax, image, **kw))
    path = grids_side_by_side({"decoded": left, "control": right}, tmp_path / "pair.png", row_height=8, rows=3)
    assert [image.shape for image, _ in drawn] == [(24, 24, 3), (24, 16, 3)]  # 3 rows of each, every tile
    assert [image[17, 0, 0] for image, _ in drawn] == [40, 40]  # the third row: item 2's ground truth
    assert all(kw["interpolation"] == "nearest" for _, kw in drawn)
    with Image.open(path) as figure:
        assert figure.format == "PNG"


def test_bar_chart_draws_each_given_interval(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from figures import metric_bar_chart

    drawn = []
    real = Axes.errorbar
    monkeypatch.setattr(
        Axes, "errorbar", lambda self, x, y, yerr, **kw: drawn.append((x, y, yerr)) or real(self, x, y, yerr, **kw)
    )
    intervals = {"decoded": {"pcc": (0.85, 0.95), "fid": None}, "control": {"pcc": [0.4, 0.6]}}
    metric_bar_chart(
        {"decoded": {"pcc": 0.9, "fid": 3.0}, "control": {"pcc": 0.5}}, tmp_path / "b.png", intervals=intervals
    )
    assert [(x, y) for x, y, _ in drawn] == [(0, 0.9), (1, 0.5)]
    assert drawn[0][2] == [[pytest.approx(0.05)], [pytest.approx(0.05)]]
