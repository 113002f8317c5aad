"""The simulated brain: published layouts, determinism, refusal to overwrite, the real readers, and signal."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from config import StageA1Config
from corpora import pretraining_fmri
from demo.simulation.simulate import draw_class_images, make_synthetic_data
from demo.simulation.spec import SIZES
from demo.simulation.stimuli import ATTRIBUTE_SIZES, BG_TYPES, COLOUR_NAMES, SHAPES, TEXTURES, TINT_NAMES
from readers.bold5000 import create_bold5000_dataset
from readers.files import DataFormatError
from readers.god import create_god_dataset
from readers.hcp import create_hcp_dataset
from safe_pickle import load_pickled_npy

CODE = Path(__file__).resolve().parents[1] / "code"
SPEC = SIZES["tiny"]
GOD_KEYS = {"arr_0", "arr_1", "arr_2", "arr_3", "V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC"}
BOLD_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic_data(tmp_path_factory.mktemp("sim") / "tiny", size="tiny", seed=0)


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A copy of the tiny simulation that a test may change."""
    return Path(shutil.copytree(tiny, tmp_path / "copy"))


def _contents(root: Path) -> dict[str, object]:
    """Every array (npz keys, npy files, img_dict images) and every text file under root, by relative path."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.suffix == ".npz":
            with np.load(path) as npz:
                out.update({f"{rel}:{k}": npz[k] for k in npz.files})
        elif path.name == "img_dict.npy":
            out.update({f"{rel}:{k}": v for k, v in load_pickled_npy(path).items()})
        elif path.suffix == ".npy":
            out[rel] = np.load(path)
        elif path.suffix == ".tar":
            out[rel] = np.frombuffer(path.read_bytes(), np.uint8)  # members carry no time stamps
        elif path.suffix == ".hdf5":
            out.update(_hdf5_contents(path, rel))
        elif path.is_file() and path.name != "simulation.json":
            out[rel] = path.read_text()
    return out


def _hdf5_contents(path: Path, rel: str) -> dict[str, object]:
    """Every dataset of an HDF5 file: its values, or for a sparsely written chunked one (NSD's 73k images) the
    chunks stored, by offset (the file's own bytes hold creation times)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name, ds in f.items():
            if ds.chunks is None:
                out[f"{rel}:{name}"] = ds[()]
            else:
                chunks = [ds.id.get_chunk_info(i).chunk_offset for i in range(ds.id.get_num_chunks())]
                stored = [np.frombuffer(ds.id.read_direct_chunk(c)[1], np.uint8) for c in chunks]
                out[f"{rel}:{name}"] = np.concatenate([np.array(chunks, dtype=np.int64).ravel(), *stored]).view(
                    np.uint8
                )
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------
# Determinism, refusal, settings
# ----------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_the_cli_refuses_to_overwrite(tiny, tmp_path):
    again = tmp_path / "again"
    cmd = [sys.executable, str(CODE / "make_synthetic_data.py"), "--out", str(again), "--size", "tiny", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    reference = _contents(tiny)
    assert _same(reference, _contents(again))
    assert json.loads((again / "simulation.json").read_text())["complete"] is True

    refused = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr

    make_synthetic_data(again, size="tiny", seed=1, overwrite=True)
    other = _contents(again)
    differ = [k for k in reference if k in other and not np.array_equal(reference[k], other[k])]
    assert any(k.endswith("images_256.npz:train_images") for k in differ)
    assert any(k.endswith("sbj_1.npz:arr_0") for k in differ) or other.keys() != reference.keys()


def test_overwrite_never_deletes_data_it_did_not_write(tmp_path):
    real = tmp_path / "Kamitani" / "npz" / "sbj_1.npz"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a user's download")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_synthetic_data(tmp_path, size="tiny")
    with pytest.raises(FileExistsError, match="did not write"):
        make_synthetic_data(tmp_path, size="tiny", overwrite=True)
    assert real.read_bytes() == b"a user's download"


def test_overwrite_deletes_only_the_files_it_listed(tiny_copy):
    """A user's file inside a simulated folder survives --overwrite, which then refuses and names it."""
    mine = tiny_copy / "Kamitani" / "npz" / "my_notes.txt"
    mine.write_text("keep me")
    with pytest.raises(FileExistsError, match=r"did not write: Kamitani/npz/my_notes\.txt"):
        make_synthetic_data(tiny_copy, size="tiny", overwrite=True)
    assert mine.read_text() == "keep me" and (tiny_copy / "Kamitani" / "npz" / "sbj_1.npz").is_file()
    mine.unlink()
    make_synthetic_data(tiny_copy, size="tiny", seed=1, overwrite=True)
    assert json.loads((tiny_copy / "simulation.json").read_text())["complete"] is True


def test_readers_refuse_an_incomplete_simulation(tiny_copy):
    marker = tiny_copy / "simulation.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))
    with pytest.raises(DataFormatError, match=r"simulation\.json.*incomplete"):
        create_god_dataset(tiny_copy / "Kamitani" / "npz")


def test_bad_settings_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_synthetic_data(tmp_path / "a", size="huge")
    with pytest.raises(ValueError, match="multiple of 64"):
        make_synthetic_data(tmp_path / "b", size="tiny", image_size=100)
    with pytest.raises(TypeError, match="unknown simulation setting"):
        make_synthetic_data(tmp_path / "c", size="tiny", signal=3.0)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# Layouts (docs/formats.md)
# ----------------------------------------------------------------------------------------------------


def test_god_layout_keys_shapes_and_masks(tiny):
    root = tiny / "Kamitani" / "npz"
    with np.load(root / "images_256.npz") as npz:
        assert sorted(npz.files) == ["test_images", "train_images"]
        train_images, test_images = npz["train_images"], npz["test_images"]
    n_train, n_test, s = SPEC.train_categories * SPEC.images_per_category, SPEC.test_categories, SPEC.image_size
    assert train_images.shape == (n_train, s, s, 3) and test_images.shape == (n_test, s, s, 3)
    assert train_images.dtype == test_images.dtype == np.uint8
    vc_counts = []
    for k in range(1, 6):
        with np.load(root / f"sbj_{k}.npz") as npz:
            d = {key: npz[key] for key in npz.files}
        assert set(d) == GOD_KEYS
        v = d["arr_0"].shape[1]
        assert (
            d["arr_0"].shape == (n_train, v)
            and d["arr_1"].shape == (n_test * 35, v)
            and d["arr_2"].shape == (n_test, v)
        )
        assert all(d[key].dtype == np.float32 and np.isfinite(d[key]).all() for key in ("arr_0", "arr_1", "arr_2"))
        np.testing.assert_allclose(d["arr_2"], d["arr_1"].reshape(n_test, 35, v).mean(1), atol=1e-5)
        assert d["arr_3"].dtype == np.int64 and sorted(d["arr_3"]) == list(range(n_train))
        masks = {key: d[key] for key in GOD_KEYS if not key.startswith("arr")}
        assert all(m.dtype == bool and m.shape == (v,) for m in masks.values())
        areas = ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA"]
        assert sum(masks[a].astype(int) for a in areas).max() == 1  # the named areas do not overlap
        assert np.array_equal(masks["LVC"], masks["V1"] | masks["V2"] | masks["V3"])
        assert not (masks["LOC"] | masks["FFA"] | masks["PPA"])[~masks["HVC"]].any()
        assert np.array_equal(masks["VC"], masks["LVC"] | masks["V4"] | masks["HVC"])
        n = {key: int(m.sum()) for key, m in masks.items()}
        assert n["V1"] == max(n["V1"], n["V2"], n["V3"], n["V4"]) and 0.6 < n["HVC"] / n["LVC"] < 1.6
        assert n["VC"] < v and n["VC"] % 16 and v % 16  # voxels outside VC; never patch-aligned
        vc_counts.append(n["VC"])
    assert len(set(vc_counts)) == 5  # every subject has its own brain


def test_god_labels_in_the_published_format(tiny):
    root = tiny / "Kamitani" / "npz"
    index = json.loads((root / "imagenet_class_index.json").read_text())
    assert sorted(map(int, index)) == list(range(SPEC.train_categories + SPEC.test_categories))
    wnid_to_class = {}
    for c, entry in index.items():
        assert all(re.fullmatch(r"n0\d{7}", w) for w in entry[:-1]) and entry[-1]
        wnid_to_class.update({int(w[1:]): int(c) for w in entry[:-1]})
    classes = {}
    for split in ("training", "testing"):
        rows = [line.split(",") for line in (root / f"imagenet_{split}_label.csv").read_text().splitlines()]
        assert all(re.fullmatch(r"\d{7}\.\d{6}", r[0]) and re.fullmatch(r"n0\d{7}_\d+\.JPEG", r[1]) for r in rows)
        classes[split] = [wnid_to_class[int(r[0].split(".")[0])] for r in rows]
    assert len(classes["training"]) == SPEC.train_categories * SPEC.images_per_category
    assert len(set(classes["training"])) == SPEC.train_categories
    assert len(set(classes["testing"])) == len(classes["testing"]) == SPEC.test_categories
    assert not set(classes["training"]) & set(classes["testing"])


def test_bold5000_layout(tiny):
    root = tiny / "BOLD5000"
    stim = root / "BOLD5000_Stimuli"
    images = np.load(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy", allow_pickle=True).item()
    assert len(images) == SPEC.bold_images + SPEC.bold_repeated
    assert all(v.dtype == np.uint8 and v.shape == (SPEC.image_size,) * 2 + (3,) for v in images.values())
    repeated = (stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").read_text().split()
    assert len(repeated) == SPEC.bold_repeated and set(repeated) <= set(images)
    assert any((stim / "Image_Labels").iterdir())
    trials, totals = {}, set()
    for k in range(1, SPEC.bold_subjects + 1):
        sub = f"CSI{k}"
        shown = [
            n
            for run in sorted((stim / "Stimuli_Presentation_Lists" / sub).glob("*/*.txt"))
            for n in run.read_text().split()
        ]
        seen = set()
        for name in shown:  # rep_ marks exactly the later presentations of a repeated image
            plain = name.removeprefix("rep_")
            assert (
                plain in images
                and name.startswith("rep_") == (plain in seen)
                and (plain in seen) <= (plain in repeated)
            )
            seen.add(plain)
        files = sorted((root / "BOLD5000_GLMsingle_ROI_betas" / "py").glob(f"{sub}_*.npy"))
        assert [f.name for f in files] == sorted(
            f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{h}{roi}.npy" for roi in BOLD_ROIS for h in ("LH", "RH")
        )
        betas = [np.load(f) for f in files]
        assert all(b.dtype == np.float32 and b.shape[0] == len(shown) for b in betas)
        total = sum(b.shape[1] for b in betas)
        assert total % 16 and total not in totals
        totals.add(total)
        trials[sub] = len(shown)
    assert trials["CSI4"] < trials["CSI1"]  # CSI4 stopped early, as in the published data


def test_hcp_layout(tiny):
    subjects = sorted((tiny / "HCP" / "npz").iterdir())
    assert len(subjects) == SPEC.hcp_subjects
    for folder in subjects:
        with np.load(folder / "HCP_visual_voxel.npz") as npz:
            assert sorted(npz.files) == ["V1", "V2", "V3", "V4"]
            shapes = {k: npz[k].shape for k in npz.files}
            assert all(npz[k].dtype == np.float32 and np.isfinite(npz[k]).all() for k in npz.files)
        assert all(s[0] == 1200 for s in shapes.values())
        assert sum(s[1] for s in shapes.values()) % 16 and shapes["V1"][1] > shapes["V4"][1]


# ----------------------------------------------------------------------------------------------------
# The real readers and the signal
# ----------------------------------------------------------------------------------------------------


def test_the_three_readers_run_on_it(tiny):
    god = tiny / "Kamitani" / "npz"
    hcp = create_hcp_dataset(tiny / "HCP" / "npz")
    assert hcp.fmri.shape[0] == SPEC.hcp_subjects * 120 and hcp[0]["fmri"].shape == (1, hcp.num_voxels)
    a1 = StageA1Config(hcp_path=str(tiny / "HCP" / "npz"), kam_path=str(god))  # HCP + GOD, as published
    assert len(pretraining_fmri(a1)) == SPEC.hcp_subjects * 120 + 5 * SPEC.train_categories * SPEC.images_per_category

    n_train, n_test = SPEC.train_categories * SPEC.images_per_category, SPEC.test_categories
    for roi in ("VC", "LVC", "HVC", "V1", "PPA"):
        train, test = create_god_dataset(god, roi=roi, subjects=("sbj_3",))
        assert len(train) == n_train and len(test) == n_test and train.num_voxels % 16 == 0
    train, test = create_god_dataset(god, subjects=("sbj_1", "sbj_2"), include_nonavg_test=True)
    assert len(train) == 2 * n_train and len(test) == 2 * n_test * 36
    assert set(test.item_labels()).isdisjoint(train.item_labels())
    item = train[0]
    assert item["fmri"].shape == (1, train.num_voxels) and item["image"].shape == (SPEC.image_size,) * 2 + (3,)
    assert 0 <= item["label"] < SPEC.train_categories + SPEC.test_categories

    train, test = create_bold5000_dataset(tiny / "BOLD5000", subjects=("CSI1", "CSI4"))
    assert len(test) <= 2 * SPEC.bold_repeated and len(train) > 0 and test[0]["image"].dtype == np.uint8


def test_resting_state_is_smooth_in_space_and_time(tiny):
    with np.load(sorted((tiny / "HCP" / "npz").iterdir())[0] / "HCP_visual_voxel.npz") as npz:
        x = npz["V1"]
    x = (x - x.mean(0)) / x.std(0)
    assert np.median((x[1:] * x[:-1]).mean(0)) > 0.3  # autocorrelated in time
    c = np.corrcoef(x.T)
    pairs = np.random.default_rng(0).integers(0, len(c), (2, 2000))
    assert np.median(np.diag(c, 1)) > np.median(c[pairs[0], pairs[1]]) + 0.1  # neighbours see the same field


def test_single_trials_are_noisy_and_averaging_repeats_helps(tiny):
    with np.load(tiny / "Kamitani" / "npz" / "sbj_1.npz") as npz:
        rep = npz["arr_1"][:, npz["VC"]].reshape(SPEC.test_categories, 35, -1)

    def reliability(a, b):  # per-voxel correlation across test images, median over voxels
        a, b = a - a.mean(0), b - b.mean(0)
        return np.median((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0)))

    single = reliability(rep[:, 0], rep[:, 1])
    halves = reliability(rep[:, :17].mean(1), rep[:, 17:34].mean(1))
    assert single < 0.4 and halves > single + 0.25, (single, halves)


def _attributes(names: list[str]) -> np.ndarray:
    """One-hot codes of the attributes a class name spells ('red striped star on sky horizon')."""
    vocab = (SHAPES, COLOUR_NAMES, TEXTURES, BG_TYPES, TINT_NAMES)
    codes = []
    for name in names:
        colour, texture, shape, _, tint, bg = name.split()
        values = (shape, colour, texture, bg, tint)
        codes.append(
            np.concatenate([np.eye(n)[v.index(x)] for n, v, x in zip(ATTRIBUTE_SIZES, vocab, values, strict=True)])
        )
    return np.array(codes)


def _pixels(images: np.ndarray, grid: int = 8) -> np.ndarray:
    n, s = images.shape[:2]
    return images.astype(np.float64).reshape(n, grid, s // grid, grid, s // grid, 3).mean((2, 4)).reshape(n, -1)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0):
    """Closed-form (dual) ridge regression fMRI -> features; returns the predictor."""
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xz = (x - mu) / sd
    gram = xz @ xz.T
    coef = xz.T @ np.linalg.solve(gram + alpha * np.trace(gram) / len(gram) * np.eye(len(gram)), y - y.mean(0))
    return lambda t: ((t - mu) / sd) @ coef + y.mean(0)


def _pairwise_identification(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of (i, j != i) with corr(pred_i, true_i) > corr(pred_i, true_j); chance 0.5."""
    z = [(a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True) for a in (pred, true)]
    corr = z[0] @ z[1].T
    return float(((np.diag(corr)[:, None] > corr).sum(1) / (len(corr) - 1)).mean())


@pytest.mark.parametrize("features", ["attributes", "pixels"])
def test_fmri_identifies_held_out_test_images(tiny, features):
    train, test = create_god_dataset(tiny / "Kamitani" / "npz", subjects=("sbj_1",))
    if features == "attributes":  # test categories are new combinations of known attributes
        f_train, f_test = _attributes(train.class_names)[train.image_index], _attributes(test.class_names)
    else:
        f_train, f_test = _pixels(train.images)[train.image_index], _pixels(test.images)
    x_train, x_test = train.fmri[:, 0].astype(np.float64), test.fmri[:, 0].astype(np.float64)
    accuracy = _pairwise_identification(_ridge(x_train, f_train)(x_test), f_test)
    rng = np.random.default_rng(0)
    shuffled = np.mean(
        [
            _pairwise_identification(_ridge(x_train, f_train[rng.permutation(len(f_train))])(x_test), f_test)
            for _ in range(5)
        ]
    )
    assert accuracy > 0.7, accuracy
    assert 0.35 < shuffled < 0.65, shuffled


def test_class_images_are_new_draws_of_the_same_categories(tiny):
    images, labels = draw_class_images(tiny, per_class=3)
    n_classes = SPEC.train_categories + SPEC.test_categories
    assert images.shape == (3 * n_classes, SPEC.image_size, SPEC.image_size, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, np.repeat(np.arange(n_classes), 3))
    assert np.array_equal(draw_class_images(tiny, per_class=3)[0], images)
    assert not np.array_equal(draw_class_images(tiny, per_class=3, seed=1)[0], images)
    _, test = create_god_dataset(tiny / "Kamitani" / "npz")
    # each GOD test image is nearest (8x8 pixels) to the class centroid of its own class's new draws
    centroids = np.stack([_pixels(images[labels == c]).mean(0) for c in test.labels])
    nearest = ((_pixels(test.images)[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == np.arange(len(test))).mean() > 0.5
    assert not any(np.array_equal(a, b) for a in test.images for b in images[np.isin(labels, test.labels)])
