"""Format semantics of the readers on small hand-made trees, the transforms, and clear errors on bad input."""

import json
import types

import numpy as np
import pytest
import torch

from config import TargetData
from corpora import pretraining_fmri
from readers.arrays import chunk_mean, interpolate_augment, pad_to_patch_size
from readers.bold5000 import BOLD5000_ROIS, create_bold5000_dataset
from readers.files import DataFormatError
from readers.god import create_god_dataset
from readers.hcp import HCP_ROIS, create_hcp_dataset
from targets import load_target
from transforms import ImageToTensor, RandomCropResize, RandomVoxelDropout, ResizeImage, model_image_transform

# ---- hand-made trees ---------------------------------------------------------------------------------------------

# Class 0 has two WordNet ids; n00000003 is listed under classes 1 and 2 (the first wins).
CLASS_INDEX = {
    "0": ["n00000001", "n00000002", "alpha"],
    "1": ["n00000003", "beta"],
    "2": ["n00000003", "n00000004", "gamma"],
    "3": ["n00000005", "delta"],
    "4": ["n00000006", "epsilon"],
}
TRAIN_IDS = [
    "2.000001.JPEG",
    "3.000001.JPEG,extra column",
    "1.000002.JPEG",
    "3.000002.JPEG",
    "2.000003",
    "1.04",
    "4.1",
]
TEST_IDS = ["6.000001.JPEG", "5.000001.JPEG", "6.000002.JPEG"]
N_TRAIN, N_TEST, REPEATS = len(TRAIN_IDS), len(TEST_IDS), 35


def write_god(root, voxels=(20,), seed=0):
    """GOD layout: one sbj_<k>.npz per entry of `voxels` (all voxels in VC, the first half in V1)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagenet_class_index.json").write_text(json.dumps(CLASS_INDEX))
    (root / "imagenet_training_label.csv").write_text("\n".join(TRAIN_IDS) + "\n")
    (root / "imagenet_testing_label.csv").write_text("\n".join(TEST_IDS) + "\n")
    np.savez(
        root / "images_256.npz",
        train_images=rng.integers(0, 256, (N_TRAIN, 8, 8, 3), dtype=np.uint8),
        test_images=rng.integers(0, 256, (N_TEST, 8, 8, 3), dtype=np.uint8),
    )
    for k, v in enumerate(voxels, start=1):
        avg = rng.normal(3, 2, (N_TEST, v)).astype(np.float32)
        single = np.repeat(avg, REPEATS, 0) + rng.normal(0, 1, (N_TEST * REPEATS, v)).astype(np.float32)
        vc, v1 = np.ones(v, bool), np.arange(v) < v // 2
        train = rng.normal(5, 3, (N_TRAIN, v)).astype(np.float32)
        np.savez(
            root / f"sbj_{k}.npz", arr_0=train, arr_1=single, arr_2=avg, arr_3=rng.permutation(N_TRAIN), VC=vc, V1=v1
        )
    return root


def write_hcp(root, subjects=(("b_sub", 10.0), ("a_sub", 1.0)), frames=1200, voxels=5, seed=0):
    rng = np.random.default_rng(seed)
    for name, scale in subjects:  # created in reverse name order: the reader must sort
        (root / name).mkdir(parents=True)
        rois = {r: (scale * rng.normal(size=(frames, voxels))).astype(np.float32) for r in HCP_ROIS}
        np.savez(root / name / "HCP_visual_voxel.npz", **rois)
    (root / "c_empty").mkdir()
    (root / "d_other").mkdir()
    (root / "d_other" / "notes.txt").write_text("no data here")
    return root


PRESENTED = [  # per session and run; `rep_` marks a repeat
    [["img0.jpg", "img4.jpg", "img1.jpg", "rep_img5.jpg"]],
    [["img2.jpg", "rep_img4.jpg"], ["img3.jpg", "img5.jpg"]],
]


def write_bold(root, voxels=(("CSI1", 3), ("CSI2", 7)), seed=1):
    rng = np.random.default_rng(seed)
    betas, stim = root / "BOLD5000_GLMsingle_ROI_betas" / "py", root / "BOLD5000_Stimuli"
    (stim / "Scene_Stimuli" / "Presented_Stimuli").mkdir(parents=True)
    betas.mkdir(parents=True)
    images = {f"img{i}.jpg": np.full((4, 4, 3), i, np.uint8) for i in range(10)}
    np.save(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy", images, allow_pickle=True)
    # img9 is repeated but never shown to these subjects (as CSI4 lacks some): it is left out
    (stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").write_text("img5.jpg\nimg9.jpg\nimg4.jpg\n")
    n_trials = sum(len(run) for session in PRESENTED for run in session)
    for sub, v in voxels:
        for s, session in reversed(list(enumerate(PRESENTED, start=1))):
            folder = stim / "Stimuli_Presentation_Lists" / sub / f"{sub}_sess0{s}"
            folder.mkdir(parents=True)
            for r, run in enumerate(session, start=1):
                (folder / f"{sub}_sess0{s}_run0{r}.txt").write_text("\n".join(run) + "\n")
            (folder / "notes.md").write_text("img7.jpg")  # not a run list
        (stim / "Stimuli_Presentation_Lists" / sub / "README.txt").write_text("img8.jpg")  # stray file
        for roi in BOLD5000_ROIS:
            for h in ("LH", "RH"):
                x = rng.normal(size=(n_trials, v)).astype(np.float32)
                np.save(betas / f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{h}{roi}.npy", x)
    return root


def bold_raw(root, sub):
    """A subject's fMRI as specified: ROI by ROI, LH then RH (file-name order)."""
    py = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    files = [
        f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{h}{r}.npy" for r in BOLD5000_ROIS for h in ("LH", "RH")
    ]
    return np.concatenate([np.load(py / f) for f in files], axis=1)


def zs(x, mean, std):
    return (x - mean) / std


def rewrite_npz(path, **changes):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(path, **arrays)


# ---- array operations --------------------------------------------------------------------------------------------


def test_wrap_padding_amount_including_the_divisible_case():
    x = np.arange(10, dtype=np.float32)[None]
    np.testing.assert_array_equal(pad_to_patch_size(x, 4), [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]])  # wrap mode
    assert pad_to_patch_size(np.zeros((2, 16)), 16).shape == (2, 32)  # already divisible: a full extra patch
    assert pad_to_patch_size(np.zeros((2, 17)), 16).shape == (2, 32)


def test_chunk_mean_matches_array_split():
    v = np.random.default_rng(0).normal(size=(1205, 5)).astype(np.float32)  # uneven chunks of 11 and 10 frames
    ref = np.stack([c.mean(0) for c in np.array_split(v, 120)])
    np.testing.assert_array_equal(chunk_mean(v, 120), ref)


def test_interpolation_augment_appends_midpoints():
    data = np.arange(8, dtype=np.float32).reshape(4, 2) * 2
    aug = interpolate_augment(data, 3, np.random.default_rng(0))
    assert aug.shape == (12, 2)
    np.testing.assert_array_equal(aug[:4], data)
    midpoints = {(a + b) / 2 for a in data[:, 0] for b in data[:, 0]}
    assert set(aug[4:, 0].tolist()) <= midpoints and np.all(aug[4:, 1] - aug[4:, 0] == 2)
    assert interpolate_augment(data, 1, np.random.default_rng(0)) is data


# ---- GOD ---------------------------------------------------------------------------------------------------------


def test_god_labels(tmp_path):
    train, test = create_god_dataset(write_god(tmp_path / "god"), subjects=["sbj_1"])
    # class of the integer before the first '.'; the shared WordNet id 3 belongs to the first class (1)
    np.testing.assert_array_equal(train.labels, [0, 1, 0, 1, 0, 0, 2])
    assert train.class_names == ["alpha", "beta", "alpha", "beta", "alpha", "alpha", "gamma"]
    # order of first appearance of the WordNet id; the test images continue the training numbering
    np.testing.assert_array_equal(train.naive_labels, [0, 1, 2, 1, 0, 2, 3])
    np.testing.assert_array_equal(test.labels, [4, 3, 4])
    np.testing.assert_array_equal(test.naive_labels, [4, 5, 4])
    assert test.class_names == ["epsilon", "delta", "epsilon"]
    j = train.image_index[2]
    item = train[2]
    assert item["label"] == train.labels[j] and item["naive_label"] == train.naive_labels[j]
    assert train.item_class_names()[2] == train.class_names[j]
    assert item["fmri"].dtype == torch.float32 and item["fmri"].shape == (1, 32)
    assert item["image"].dtype == np.uint8 and np.array_equal(item["image"], train.images[j])


def test_god_normalisation_uses_training_statistics(tmp_path):
    root = write_god(tmp_path / "god")
    with np.load(root / "sbj_1.npz") as raw:
        tr, avg, single, order = (raw[k] for k in ("arr_0", "arr_2", "arr_1", "arr_3"))
    tr, avg, single = (pad_to_patch_size(x, 16) for x in (tr, avg, single))  # 20 voxels -> 32
    train, test = create_god_dataset(root, subjects=["sbj_1"], test_norm="train", include_nonavg_test=True)
    assert train.fmri.shape == (N_TRAIN, 1, 32) and train.fmri.dtype == np.float32
    np.testing.assert_allclose(train.fmri[:, 0], zs(tr, tr.mean(), tr.std()), atol=1e-5)  # its own statistics
    np.testing.assert_array_equal(train.image_index, order)
    np.testing.assert_allclose(test.fmri[:N_TEST, 0], zs(avg, tr.mean(), tr.std()), atol=1e-5)  # the training ones
    np.testing.assert_allclose(test.fmri[N_TEST:, 0], zs(single, tr.mean(), tr.std()), atol=1e-5)
    assert abs(test.fmri[:N_TEST].mean() - (3 - 5) / 3) < 0.5  # test data (mean 3) below training data (mean 5)
    # published: the statistics of the already normalised training fMRI (about 0 and 1), keeping the test scale
    _, published = create_god_dataset(root, subjects=["sbj_1"])
    trn = zs(tr, tr.mean(), tr.std())
    np.testing.assert_allclose(published.fmri[:, 0], zs(avg, trn.mean(), trn.std()), atol=1e-4)


def test_god_35_repeat_alignment(tmp_path):
    root = write_god(tmp_path / "god")
    _, test = create_god_dataset(root, subjects=["sbj_1"], include_nonavg_test=True)
    assert test.fmri.shape == (N_TEST + N_TEST * REPEATS, 1, 32)
    # averaged trials pair with the test images in order, then each image's 35 single trials in turn
    np.testing.assert_array_equal(test.image_index, np.r_[0:N_TEST, np.repeat(np.arange(N_TEST), REPEATS)])
    np.testing.assert_array_equal(test.item_labels()[N_TEST::REPEATS], [4, 3, 4])
    assert np.array_equal(test[N_TEST + REPEATS]["image"], test.images[1])
    # the single trials of an image average to its averaged row (write_god draws them around it)
    singles = test.fmri[N_TEST:, 0].reshape(N_TEST, REPEATS, -1).mean(1)
    assert np.abs(singles - test.fmri[:N_TEST, 0]).mean() < 0.3


def test_god_several_subjects_are_padded_to_the_longest(tmp_path):
    root = write_god(tmp_path / "god", voxels=(20, 40))
    train, test = create_god_dataset(root, subjects=["sbj_1", "sbj_2"], include_nonavg_test=True)
    assert train.fmri.shape == (2 * N_TRAIN, 1, 48) and test.fmri.shape == (2 * N_TEST * (1 + REPEATS), 1, 48)
    alone, _ = create_god_dataset(root, subjects=["sbj_1"])  # 32 voxels, wrap-padded to 48
    np.testing.assert_array_equal(train.fmri[:N_TRAIN, 0, :32], alone.fmri[:, 0])
    np.testing.assert_array_equal(train.fmri[:N_TRAIN, 0, 32:], alone.fmri[:, 0, :16])
    assert len(test.image_index) == len(test.fmri) and test.image_index[N_TEST * (1 + REPEATS)] == 0
    v1, _ = create_god_dataset(root, roi="V1", subjects=["sbj_2"])  # ROI selection: 20 voxels -> 32
    assert v1.num_voxels == 32


def test_god_test_category_holds_out_training_images(tmp_path):
    root = write_god(tmp_path / "god")
    train, test = create_god_dataset(root, subjects=["sbj_1"], test_category=[1, 3], seed=0)
    assert len(test) == 2 and len(train) == N_TRAIN - 2 + N_TEST
    assert sorted(test.naive_labels[test.image_index]) == [1, 3]
    assert set(test.image_index).isdisjoint(train.image_index)
    np.testing.assert_array_equal(train.image_index[-N_TEST:], N_TRAIN + np.arange(N_TEST))  # former test trials
    np.testing.assert_array_equal(train.item_labels()[-N_TEST:], [4, 3, 4])
    again, _ = create_god_dataset(root, subjects=["sbj_1"], test_category=[1, 3], seed=0)
    np.testing.assert_array_equal(again.image_index, train.image_index)
    with pytest.raises(ValueError, match="test_category 9"):
        create_god_dataset(root, subjects=["sbj_1"], test_category=[9])


# ---- HCP ---------------------------------------------------------------------------------------------------------


def test_hcp_sorted_subjects_skipping_folders_without_the_file(tmp_path):
    root = write_hcp(tmp_path / "hcp")
    ds = create_hcp_dataset(root, patch_size=16)
    assert ds.fmri.shape == (240, 1, 32)  # 20 voxels -> 32; 1200 frames / 10 per 8 s window -> 120 per subject
    for block, name in enumerate(("a_sub", "b_sub")):  # sorted, whatever the listing order
        with np.load(root / name / "HCP_visual_voxel.npz") as npz:
            v = np.concatenate([npz[r] for r in HCP_ROIS], axis=1)
        x = pad_to_patch_size(chunk_mean(v, 120), 16)
        np.testing.assert_allclose(ds.fmri[120 * block : 120 * (block + 1), 0], zs(x, x.mean(), x.std()), atol=1e-5)
    np.testing.assert_array_equal(create_hcp_dataset(root, num_sub_limit=1).fmri, ds.fmri[:120])
    assert ds[0]["fmri"].shape == (1, 32)


def test_hcp_augmentation(tmp_path):
    root = write_hcp(tmp_path / "hcp")
    plain = create_hcp_dataset(root)
    aug = create_hcp_dataset(root, aug_times=3, seed=1)
    assert len(aug) == 3 * 240
    np.testing.assert_array_equal(aug.fmri[:240], plain.fmri)
    np.testing.assert_array_equal(create_hcp_dataset(root, aug_times=3, seed=1).fmri, aug.fmri)  # reproducible
    assert not np.array_equal(create_hcp_dataset(root, aug_times=3, seed=2).fmri, aug.fmri)


def test_pretraining_corpora_in_the_published_order_padded_to_the_longest(tmp_path):
    """HCP (augmented) then GOD's training fMRI, as published, then a folder of the user's own arrays; each corpus
    switched by its field, every one wrap-padded to the longest."""
    root = write_hcp(tmp_path / "hcp")
    god = write_god(tmp_path / "god", voxels=(20, 40))
    cfg = types.SimpleNamespace(
        include_hcp=True, include_kam=True, include_nsd=False, fmri_folder=None, hcp_path=root, kam_path=god,
        roi="VC", patch_size=16, aug_times=2, num_sub_limit=None, seed=1,
    )  # fmt: skip
    both = pretraining_fmri(cfg)
    assert both.shape == (2 * 240 + 2 * N_TRAIN, 48)  # only HCP is augmented; all padded to the longest
    god_train, _ = create_god_dataset(god, subjects=["sbj_1", "sbj_2"])
    plain = create_hcp_dataset(root).fmri[:, 0]
    np.testing.assert_array_equal(both[480:], god_train.fmri[:, 0])
    np.testing.assert_array_equal(both[:240, 32:], plain[:, :16])  # HCP wrap-padded 32 -> 48
    cfg.include_hcp = False
    np.testing.assert_array_equal(pretraining_fmri(cfg), god_train.fmri[:, 0])
    own = tmp_path / "own"
    own.mkdir()
    rng = np.random.default_rng(0)
    np.save(own / "b_session.npy", rng.normal(3, 2, (7, 70)).astype(np.float32))
    np.save(own / "a_session.npy", rng.normal(0, 1, (5, 20)))
    cfg.include_kam, cfg.fmri_folder = False, str(own)
    rows = pretraining_fmri(cfg)
    assert rows.shape == (12, 80) and rows.dtype == np.float32  # 70 -> 80 (whole patches); 20 -> 32 -> 80
    np.testing.assert_allclose(rows[5:].mean(), 0, atol=1e-5)  # each file z-scored on its own, in name order
    (own / "c_bad.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(DataFormatError, match="c_bad.npy"):
        pretraining_fmri(cfg)
    cfg.fmri_folder = None
    with pytest.raises(ValueError, match="no pre-training corpus"):
        pretraining_fmri(cfg)


# ---- BOLD5000 ----------------------------------------------------------------------------------------------------


def test_bold5000_split(tmp_path):
    root = write_bold(tmp_path / "bold")
    train, test = create_bold5000_dataset(root, 16, subjects=["CSI1"], include_nonavg_test=True)
    raw = pad_to_patch_size(bold_raw(root, "CSI1"), 16)  # 30 voxels -> 32, z-scored over all trials
    x = zs(raw, raw.mean(), raw.std())
    # presentation: img0 img4 img1 img5 | img2 img4 | img3 img5 (sessions and runs sorted, `rep_` stripped)
    shown = lambda ds: [int(ds.images[j][0, 0, 0]) for j in ds.image_index]  # noqa: E731
    assert shown(train) == [0, 1, 2, 3]
    np.testing.assert_allclose(train.fmri[:, 0], x[[0, 2, 4, 6]], atol=1e-6)
    # test: repeated images in list order, averaged (img9 never shown), then their single trials
    assert shown(test) == [5, 4, 5, 5, 4, 4]
    expected = np.stack([x[[3, 7]].mean(0), x[[1, 5]].mean(0), x[3], x[7], x[1], x[5]])
    np.testing.assert_allclose(test.fmri[:, 0], expected, atol=1e-6)
    assert (test.labels == -1).all() and test[0]["label"] == -1


def test_bold5000_subjects_of_different_sizes_are_padded_to_the_longest(tmp_path):
    root = write_bold(tmp_path / "bold")
    train, test = create_bold5000_dataset(root, 16, subjects=["CSI1", "CSI2"])
    assert train.fmri.shape == (8, 1, 80) and test.fmri.shape == (4, 1, 80)  # 30 -> 32 and 70 -> 80 (defect #11)
    alone, _ = create_bold5000_dataset(root, 16, subjects=["CSI1"])
    np.testing.assert_array_equal(train.fmri[:4, 0, :32], alone.fmri[:, 0])
    np.testing.assert_array_equal(train.fmri[:4, 0, 32:64], alone.fmri[:, 0])  # wrap mode


# ---- transforms --------------------------------------------------------------------------------------------------


def test_image_transforms():
    img = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    img[0, 0] = (0, 128, 255)
    x = ImageToTensor()(img)
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
    assert x[0, 0, 0] == -1 and x[2, 0, 0] == 1
    assert ResizeImage(16)(x).shape == (3, 16, 16)
    square = x[:, :10, :10]
    assert ResizeImage(10)(square) is square
    assert RandomCropResize(0.2).crop_size(256) == 205 and RandomCropResize(0.2).crop_size(64) == 52
    assert RandomCropResize(0.2, p=0.0)(square) is square
    torch.manual_seed(0)
    out = RandomCropResize(0.2, p=1.0)(square)  # a crop of side 8 at one of 3 x 3 positions, resized back to 10
    windows = [ResizeImage(10)(square[:, i : i + 8, j : j + 8]) for i in range(3) for j in range(3)]
    assert out.shape == (3, 10, 10) and any(torch.equal(out, w) for w in windows)
    cropped = [not torch.equal(RandomCropResize(0.2)(square), square) for _ in range(40)]
    assert 5 < sum(cropped) < 35  # probability 0.5
    y = model_image_transform(16, 0.2)(img)
    assert y.shape == (3, 16, 16) and y.min() >= -1 and y.max() <= 1


def test_voxel_dropout():
    fmri = torch.rand(1, 2000) + 1
    assert RandomVoxelDropout(0.0)(fmri) is fmri  # the published, no-op default
    out = RandomVoxelDropout(0.3)(fmri)
    dropped = out == 0
    assert 0.25 < dropped.float().mean() < 0.35 and torch.equal(out[~dropped], fmri[~dropped])
    with pytest.raises(ValueError, match="rate"):
        RandomVoxelDropout(1.0)


def test_load_target_takes_a_stage_config_and_the_transforms_apply(tmp_path):
    root = write_god(tmp_path / "god")
    data = TargetData(dataset="GOD", kam_path=str(root), roi="VC", kam_subs=["sbj_1"])
    train, test = load_target(data, patch_size=16, include_nonavg_test=True)
    train.image_transform, train.transform = model_image_transform(16, 0.2), RandomVoxelDropout(0.5)
    test.image_transform = model_image_transform(16)
    assert train[0]["image"].shape == (3, 16, 16) and test[0]["image"].shape == (3, 16, 16)
    assert (train[0]["fmri"] == 0).any() and len(test) == N_TEST * (1 + REPEATS)
    assert test.resized_images(16).shape == (N_TEST, 16, 16, 3) and test.resized_images(8) is test.images


# ---- bad input ---------------------------------------------------------------------------------------------------

GOD_BREAKS = {  # name: (change to the tree, expected message)
    "no folder": (lambda r: r.rename(r.parent / "gone"), r"folder not found: .*god.*data/README\.md"),
    "no class index": (lambda r: (r / "imagenet_class_index.json").unlink(), r"imagenet_class_index\.json.*README"),
    "no subject file": (lambda r: (r / "sbj_1.npz").unlink(), r"file not found: .*sbj_1\.npz.*data/README\.md"),
    "missing ROI key": (lambda r: rewrite_npz(r / "sbj_1.npz", VC=None), r"sbj_1\.npz: missing key\(s\) \['VC'\]"),
    "NaN": (
        lambda r: rewrite_npz(r / "sbj_1.npz", arr_0=np.full((N_TRAIN, 20), np.nan, np.float32)),
        r"sbj_1\.npz: key 'arr_0' holds 140 NaN",
    ),
    "inf": (
        lambda r: rewrite_npz(r / "sbj_1.npz", arr_2=np.full((N_TEST, 20), np.inf, np.float32)),
        r"sbj_1\.npz: key 'arr_2' holds",
    ),
    "int fMRI": (
        lambda r: rewrite_npz(r / "sbj_1.npz", arr_0=np.ones((N_TRAIN, 20), np.int64)),
        r"sbj_1\.npz: key 'arr_0' must be a float array",
    ),
    "wrong test rows": (
        lambda r: rewrite_npz(r / "sbj_1.npz", arr_2=np.ones((N_TEST + 1, 20), np.float32)),
        r"sbj_1\.npz: key 'arr_2' must be a float array \(3, n_voxels\)",
    ),
    "int ROI mask": (
        lambda r: rewrite_npz(r / "sbj_1.npz", VC=np.ones(20, np.int64)),
        r"sbj_1\.npz: key 'VC' must be a non-empty bool mask",
    ),
    "bad trial index": (
        lambda r: rewrite_npz(r / "sbj_1.npz", arr_3=np.arange(N_TRAIN) + 1),
        r"sbj_1\.npz: key 'arr_3'",
    ),
    "float images": (
        lambda r: rewrite_npz(r / "images_256.npz", train_images=np.zeros((N_TRAIN, 8, 8, 3))),
        r"images_256\.npz: key 'train_images' must be uint8",
    ),
    "unknown WordNet id": (
        lambda r: (r / "imagenet_testing_label.csv").write_text("6.1\n77.1\n5.2\n"),
        r"imagenet_testing_label\.csv: WordNet id\(s\) \['n00000077'\]",
    ),
    "malformed stimulus id": (
        lambda r: (r / "imagenet_training_label.csv").write_text("x.1\n" * N_TRAIN),
        r"imagenet_training_label\.csv: expected stimulus ids",
    ),
}


GOD_BREAKS |= {
    "truncated npz": (
        lambda r: (r / "sbj_1.npz").write_bytes((r / "sbj_1.npz").read_bytes()[:300]),
        r"sbj_1\.npz: not a readable \.npz archive of arrays \(truncated or corrupt\?\)",
    ),
    "garbage bytes": (
        lambda r: (r / "images_256.npz").write_bytes(b"\x00garbage" * 50),
        r"images_256\.npz: not a readable \.npz archive",
    ),
    "constant fMRI": (
        lambda r: rewrite_npz(r / "sbj_1.npz", arr_0=np.ones((N_TRAIN, 20), np.float32)),
        r"sbj_1\.npz: key 'arr_0': the fMRI is constant \(standard deviation 0\)",
    ),
}


@pytest.mark.parametrize("name", GOD_BREAKS)
def test_bad_god_input(tmp_path, name):
    root = write_god(tmp_path / "god")
    brk, message = GOD_BREAKS[name]
    brk(root)
    with pytest.raises(DataFormatError, match=message):
        create_god_dataset(root, subjects=["sbj_1"])


def test_bad_hcp_input(tmp_path):
    with pytest.raises(DataFormatError, match=r"folder not found: .*nowhere.*data/README\.md"):
        create_hcp_dataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataFormatError, match=r"<subject>/HCP_visual_voxel\.npz.*data/README\.md"):
        create_hcp_dataset(tmp_path / "empty")
    root = write_hcp(tmp_path / "hcp", subjects=[("a_sub", 1.0)])
    file = root / "a_sub" / "HCP_visual_voxel.npz"
    rewrite_npz(file, V2=np.full((1200, 5), np.inf, np.float32))
    with pytest.raises(DataFormatError, match=r"a_sub/HCP_visual_voxel\.npz: key 'V2' holds 6000 NaN/inf"):
        create_hcp_dataset(root)
    rewrite_npz(file, V2=None)
    with pytest.raises(DataFormatError, match=r"HCP_visual_voxel\.npz: missing key\(s\) \['V2'\]"):
        create_hcp_dataset(root)


def test_bad_bold5000_input(tmp_path):
    root = write_bold(tmp_path / "bold", voxels=[("CSI1", 3)])
    py = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    with pytest.raises(DataFormatError, match=r"py/CSI3_GLMbetas-.*_<LH\|RH>EarlyVis\.npy.*data/README\.md"):
        create_bold5000_dataset(root, subjects=["CSI3"])
    bad = np.load(py / "CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_LHPPA.npy")
    bad[0, 0] = np.nan
    np.save(py / "CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_LHPPA.npy", bad)
    with pytest.raises(DataFormatError, match=r"CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_LHPPA\.npy: holds 1"):
        create_bold5000_dataset(root)
    for h in ("LH", "RH"):
        (py / f"CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{h}PPA.npy").unlink()
    with pytest.raises(DataFormatError, match=r"CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_<LH\|RH>PPA\.npy"):
        create_bold5000_dataset(root)
    root = write_bold(tmp_path / "bold2", voxels=[("CSI1", 3)])
    (root / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists" / "CSI1" / "CSI1_sess01" / "extra.txt").write_text(
        "img0"
    )
    with pytest.raises(DataFormatError, match=r"CSI1 has 8 fMRI trials but .*CSI1 lists 9 images"):
        create_bold5000_dataset(root)
    for run in (root / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists" / "CSI1").glob("*/*"):
        run.unlink()
    with pytest.raises(DataFormatError, match=r"CSI1 has 8 fMRI trials but .*CSI1 lists 0 images"):
        create_bold5000_dataset(root)
    (root / "BOLD5000_Stimuli" / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy").unlink()
    with pytest.raises(DataFormatError, match=r"file not found: .*img_dict\.npy.*data/README\.md"):
        create_bold5000_dataset(root)


def test_hold_out_takes_whole_images_and_is_seeded():
    from dataset import FMRIImageDataset

    fmri = np.arange(12 * 4, dtype=np.float32).reshape(12, 1, 4)
    images = np.zeros((6, 2, 2, 3), np.uint8)
    data = FMRIImageDataset(fmri, images, np.repeat(np.arange(6), 2), labels=np.arange(6))  # two trials per image
    rest, held = data.hold_out(2, seed=3)
    assert len(np.unique(held.image_index)) == 2 and len(held) == 4 and len(rest) == 8
    assert not set(held.image_index) & set(rest.image_index)
    assert np.array_equal(held.item_labels(), held.image_index)  # rows keep their own images and labels
    again, _ = data.hold_out(2, seed=3)
    assert np.array_equal(again.image_index, rest.image_index)
    with pytest.raises(ValueError, match="cannot hold out 6 of 6"):
        data.hold_out(6, seed=0)
