"""The simulated brain: published layouts, determinism, and fMRI that carries the stimulus."""

import json

import numpy as np
import pytest

from dataset import create_bold5000_dataset, create_god_dataset, create_hcp_dataset
from make_synthetic_data import make_synthetic_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic_data(tmp_path_factory.mktemp("sim") / "tiny", size="tiny", seed=0)


def test_layout_keys_and_shapes(tiny):
    god = tiny / "Kamitani" / "npz"
    images = np.load(god / "images_256.npz")
    n_train, n_test = len(images["train_images"]), len(images["test_images"])
    assert images["train_images"].dtype == np.uint8 and images["train_images"].shape[-1] == 3
    voxels = []
    for k in range(1, 6):
        s = np.load(god / f"sbj_{k}.npz")
        v = s["arr_0"].shape[1]
        voxels.append(int(s["VC"].sum()))
        assert s["arr_0"].shape == (n_train, v) and s["arr_0"].dtype == np.float32
        assert s["arr_1"].shape == (n_test * 35, v) and s["arr_2"].shape == (n_test, v)
        np.testing.assert_allclose(s["arr_2"], s["arr_1"].reshape(n_test, 35, v).mean(1), atol=1e-5)
        assert sorted(s["arr_3"]) == list(range(n_train))
        assert s["VC"].sum() < v  # V_all also holds voxels outside visual cortex
        assert np.array_equal(s["LVC"], s["V1"] | s["V2"] | s["V3"]) and s["V1"].sum() > s["V4"].sum()
    assert len(set(voxels)) == 5 and all(v % 16 for v in voxels)
    index = json.loads((god / "imagenet_class_index.json").read_text())
    train_ids = {int(r.split(".")[0]) for r in (god / "imagenet_training_label.csv").read_text().split()}
    test_ids = {int(r.split(".")[0]) for r in (god / "imagenet_testing_label.csv").read_text().split()}
    assert not train_ids & test_ids and len(index) == len(train_ids) + len(test_ids)
    hcp = sorted((tiny / "HCP" / "npz").iterdir())
    assert len(hcp) == 2
    h = np.load(hcp[0] / "HCP_visual_voxel.npz")
    assert sorted(h.files) == ["V1", "V2", "V3", "V4"] and h["V1"].shape[0] == 1200


def test_all_three_readers_run(tiny):
    hcp = create_hcp_dataset(tiny / "HCP" / "npz", include_kam=True, kam_path=tiny / "Kamitani" / "npz")
    assert hcp.fmri.shape[0] == 2 * 120 + 5 * 48 and hcp.num_voxels % 16 == 0
    train, test = create_god_dataset(tiny / "Kamitani" / "npz", subjects=["sbj_1", "sbj_2"])
    assert len(train) == 96 and len(test) == 12 and set(test.item_labels()).isdisjoint(train.item_labels())
    train, test = create_bold5000_dataset(tiny / "BOLD5000", subjects=["CSI1", "CSI4"], include_nonavg_test=True)
    assert len(test) > 0 and len(train) > 0 and test[0]["image"].shape == (64, 64, 3)


def test_deterministic_per_seed_and_refuses_to_overwrite(tiny, tmp_path):
    again = make_synthetic_data(tmp_path / "again", size="tiny", seed=0)
    other = make_synthetic_data(tmp_path / "other", size="tiny", seed=1)
    a, b, c = (np.load(d / "Kamitani" / "npz" / "sbj_1.npz")["arr_0"] for d in (tiny, again, other))
    assert np.array_equal(a, b) and not (a.shape == c.shape and np.array_equal(a, c))
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_synthetic_data(again, size="tiny", seed=0)
    make_synthetic_data(again, size="tiny", seed=2, overwrite=True)


def _ridge_identification(x_train, y_train, x_test, y_test, lam=10.0):
    """Fit fMRI -> features by closed-form ridge; top-1 identification of each test image among all."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xs = (x_train - mu) / sd, (x_test - mu) / sd
    w = np.linalg.solve(xt.T @ xt + lam * len(xt) * np.eye(xt.shape[1]), xt.T @ (y_train - y_train.mean(0)))
    pred = xs @ w
    pz = (pred - pred.mean(1, keepdims=True)) / pred.std(1, keepdims=True)
    yz = (y_test - y_test.mean(1, keepdims=True)) / y_test.std(1, keepdims=True)
    corr = pz @ yz.T  # (n_test, n_test)
    return float((corr.argmax(1) == np.arange(len(corr))).mean())


def test_fmri_carries_the_stimulus(tmp_path):
    root = make_synthetic_data(tmp_path / "sim", size="tiny", seed=3)
    train, test = create_god_dataset(root / "Kamitani" / "npz", subjects=["sbj_1", "sbj_2", "sbj_3"])

    def features(ds):  # stimulus features: the images at 8x8, all channels
        img = ds.images[ds.image_index].astype(np.float32)
        n, s = len(img), img.shape[1] // 8
        return img.reshape(n, 8, s, 8, s, 3).mean((2, 4)).reshape(n, -1)

    x_tr, x_te = train.fmri[:, 0], test.fmri[:, 0]
    y_tr, y_te = features(train), features(test)
    chance = 1 / len(x_te)
    accuracy = _ridge_identification(x_tr, y_tr, x_te, y_te)
    shuffled = np.mean([_ridge_identification(x_tr, y_tr[np.random.default_rng(s).permutation(len(y_tr))],
                                              x_te, y_te) for s in range(10)])
    assert accuracy >= 4 * chance, (accuracy, chance)
    assert shuffled <= 2.5 * chance, (shuffled, chance)
