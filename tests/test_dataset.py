"""Format semantics of the readers on small hand-made arrays, and clear errors on bad input."""

import json

import numpy as np
import pytest
import torch

from dataset import (
    DataFormatError,
    RandomCropResize,
    RandomVoxelDropout,
    ToModelImage,
    chunk_mean,
    create_bold5000_dataset,
    create_god_dataset,
    create_hcp_dataset,
    interpolate_augment,
    pad_to_patch_size,
)


def test_wrap_padding_amount_including_the_divisible_case():
    x = np.arange(10, dtype=np.float32)[None]
    assert pad_to_patch_size(x, 4).shape == (1, 12)
    np.testing.assert_array_equal(pad_to_patch_size(x, 4)[0, 10:], [0, 1])  # wrap mode
    assert pad_to_patch_size(np.zeros((2, 16)), 16).shape == (2, 32)  # already divisible: a full extra patch


def test_chunk_mean_matches_array_split():
    v = np.random.default_rng(0).normal(size=(1203, 5))
    ref = np.stack([c.mean(0) for c in np.array_split(v, 120)])
    np.testing.assert_allclose(chunk_mean(v, 120), ref, rtol=1e-12)


def _write_god(root, n_sub=1, voxels=(20,), n_train=6, n_test=3, repeats=35, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    index = {"0": ["n00000001", "n00000002", "alpha"], "1": ["n00000003", "beta"], "2": ["n00000004", "gamma"],
             "3": ["n00000005", "delta"]}
    (root / "imagenet_class_index.json").write_text(json.dumps(index))
    # the WordNet number before the first '.'; two WordNet ids map to class 0
    (root / "imagenet_training_label.csv").write_text("2.000001.JPEG\n3.000001.JPEG\n1.000002.JPEG\n"
                                                      "3.000002.JPEG\n2.000003.JPEG\n1.000004.JPEG\n")
    (root / "imagenet_testing_label.csv").write_text("5.000001.JPEG\n4.000001.JPEG\n5.000002.JPEG\n")
    np.savez(root / "images_256.npz", train_images=rng.integers(0, 255, (n_train, 8, 8, 3), dtype=np.uint8),
             test_images=rng.integers(0, 255, (n_test, 8, 8, 3), dtype=np.uint8))
    for k in range(n_sub):
        v = voxels[k]
        avg = rng.normal(3, 2, (n_test, v)).astype(np.float32)
        rep = np.repeat(avg, repeats, 0) + rng.normal(0, 1, (n_test * repeats, v)).astype(np.float32)
        vc = np.ones(v, bool)
        np.savez(root / f"sbj_{k + 1}.npz", arr_0=rng.normal(5, 3, (n_train, v)).astype(np.float32), arr_1=rep,
                 arr_2=avg, arr_3=rng.permutation(n_train), VC=vc, V1=vc.copy())
    return root


def test_god_labels_normalisation_and_35_repeat_alignment(tmp_path):
    root = _write_god(tmp_path / "god", voxels=(20,))
    train, test = create_god_dataset(root, "VC", 16, subjects=["sbj_1"], include_nonavg_test=True)
    raw = np.load(root / "sbj_1.npz")
    # labels: class index of the WordNet number; naive = order of first appearance, test continues training
    np.testing.assert_array_equal(train.labels, [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(train.naive_labels, [0, 1, 2, 1, 0, 2])
    np.testing.assert_array_equal(test.labels, [3, 2, 3])
    np.testing.assert_array_equal(test.naive_labels, [3, 4, 3])
    assert train.class_names[:2] == ["alpha", "beta"]
    # training fMRI: padded to 32 voxels, z-scored with its own scalar statistics
    assert train.fmri.shape == (6, 1, 32)
    padded = pad_to_patch_size(raw["arr_0"], 16)
    np.testing.assert_allclose(train.fmri[:, 0], (padded - padded.mean()) / padded.std(), atol=1e-5)
    np.testing.assert_array_equal(train.image_index, raw["arr_3"])
    # test fMRI: averaged rows first, then all 35 repeats; images line up row by row
    assert test.fmri.shape == (3 + 3 * 35, 1, 32)
    np.testing.assert_array_equal(test.image_index, np.r_[0, 1, 2, np.repeat([0, 1, 2], 35)])
    assert torch.equal(torch.from_numpy(test.images[1]), torch.from_numpy(test[3 + 35]["image"]))


def test_god_test_statistics_published_and_train(tmp_path):
    root = _write_god(tmp_path / "god")
    raw = np.load(root / "sbj_1.npz")
    tr, tt = pad_to_patch_size(raw["arr_0"], 16), pad_to_patch_size(raw["arr_2"], 16)
    _, test = create_god_dataset(root, subjects=["sbj_1"], test_norm="train")
    np.testing.assert_allclose(test.fmri[:, 0], (tt - tr.mean()) / tr.std(), atol=1e-5)
    # published: statistics of the already normalised training fMRI (about 0 and 1), so the scale is kept
    _, test = create_god_dataset(root, subjects=["sbj_1"])
    trn = (tr - tr.mean()) / tr.std()
    np.testing.assert_allclose(test.fmri[:, 0], (tt - trn.mean()) / trn.std(), atol=1e-4)


def test_god_several_subjects_are_padded_to_the_longest(tmp_path):
    root = _write_god(tmp_path / "god", n_sub=2, voxels=(20, 40))
    train, test = create_god_dataset(root, subjects=["sbj_1", "sbj_2"])
    assert train.fmri.shape == (12, 1, 48) and test.fmri.shape == (6, 1, 48)
    np.testing.assert_array_equal(train.fmri[:6, 0, 32:], train.fmri[:6, 0, :16])  # wrap padding of subject 1


def test_hcp_sorted_subjects_skip_empty_folders_and_augment(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "hcp"
    for name, scale in (("b_sub", 10.0), ("a_sub", 1.0)):
        (root / name).mkdir(parents=True)
        np.savez(root / name / "HCP_visual_voxel.npz",
                 **{r: (scale * rng.normal(size=(1200, 5))).astype(np.float32) for r in ("V1", "V2", "V3", "V4")})
    (root / "empty").mkdir()
    ds = create_hcp_dataset(root, patch_size=16)
    assert ds.fmri.shape == (240, 1, 32)  # 20 voxels -> 32; 1200 frames / 10 -> 120 samples per subject
    a = np.concatenate([np.load(root / "a_sub" / "HCP_visual_voxel.npz")[r] for r in ("V1", "V2", "V3", "V4")], 1)
    first = pad_to_patch_size(chunk_mean(a, 120), 16)
    np.testing.assert_allclose(ds.fmri[:120, 0], (first - first.mean()) / first.std(), atol=1e-5)
    assert len(create_hcp_dataset(root, aug_times=3)) == 720
    assert len(create_hcp_dataset(root, num_sub_limit=1)) == 120
    data = np.arange(8, dtype=np.float32).reshape(4, 2)
    aug = interpolate_augment(data, 2, np.random.default_rng(0))
    assert aug.shape == (8, 2)
    midpoints = {(i + j) / 2 for i in (0, 2, 4, 6) for j in (0, 2, 4, 6)}
    assert set(aug[4:, 0].tolist()) <= midpoints and not np.array_equal(aug[4:], data)


def _write_bold(root, subjects=("CSI1", "CSI2"), voxels=(3, 7)):
    rng = np.random.default_rng(1)
    betas = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    stim = root / "BOLD5000_Stimuli"
    (stim / "Scene_Stimuli" / "Presented_Stimuli").mkdir(parents=True)
    betas.mkdir(parents=True)
    names = [f"img{i}.jpg" for i in range(6)]
    np.save(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy",
            {n: np.full((4, 4, 3), i, np.uint8) for i, n in enumerate(names)}, allow_pickle=True)
    (stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").write_text("img4.jpg\nimg5.jpg\n")
    order = ["img0.jpg", "img4.jpg", "img1.jpg", "rep_img5.jpg", "img2.jpg", "rep_img4.jpg", "img3.jpg", "img5.jpg"]
    for sub, v in zip(subjects, voxels, strict=True):
        for s, part in enumerate((order[:4], order[4:])):
            folder = stim / "Stimuli_Presentation_Lists" / sub / f"{sub}_sess0{s + 1}"
            folder.mkdir(parents=True)
            (folder / f"{sub}_sess0{s + 1}_run01.txt").write_text("\n".join(part))
        (stim / "Stimuli_Presentation_Lists" / sub / "README.txt").write_text("stray file")
        for h in ("LH", "RH"):
            for roi in ("EarlyVis", "LOC", "OPA", "PPA", "RSC"):
                np.save(betas / f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{h}{roi}.npy",
                        rng.normal(size=(8, v)).astype(np.float32))
    return root


def test_bold5000_split_and_subjects_of_different_sizes(tmp_path):
    root = _write_bold(tmp_path / "bold")
    train, test = create_bold5000_dataset(root, 16, subjects=["CSI1"], include_nonavg_test=True)
    assert len(train) == 4 and train.fmri.shape[-1] == 32  # 30 voxels -> 32
    # repeated images are the test set: averaged per image in list order, then the single trials
    assert [int(test.images[j][0, 0, 0]) for j in test.image_index] == [4, 5, 4, 4, 5, 5]
    assert [int(train.images[j][0, 0, 0]) for j in train.image_index] == [0, 1, 2, 3]
    both_train, both_test = create_bold5000_dataset(root, 16, subjects=["CSI1", "CSI2"])
    assert both_train.fmri.shape == (8, 1, 80) and both_test.fmri.shape == (4, 1, 80)  # 32 and 80 -> 80 (defect 11)


def test_bad_input_errors_name_the_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"not found: .*nowhere.*data/README.md"):
        create_god_dataset(tmp_path / "nowhere")
    root = _write_god(tmp_path / "god")
    with pytest.raises(DataFormatError, match=r"sbj_9\.npz"):
        create_god_dataset(root, subjects=["sbj_9"])
    with pytest.raises(DataFormatError, match=r"sbj_1\.npz: missing key\(s\) \['LOC'\]"):
        create_god_dataset(root, roi="LOC", subjects=["sbj_1"])
    d = dict(np.load(root / "sbj_1.npz"))
    d["arr_0"][0, 0] = np.nan
    np.savez(root / "sbj_1.npz", **d)
    with pytest.raises(DataFormatError, match=r"sbj_1\.npz: key 'arr_0' holds 1 NaN"):
        create_god_dataset(root, subjects=["sbj_1"])
    d["arr_0"] = np.ones(d["arr_0"].shape, dtype=np.int64)
    np.savez(root / "sbj_1.npz", **d)
    with pytest.raises(DataFormatError, match=r"'arr_0' must be a 2-D float array"):
        create_god_dataset(root, subjects=["sbj_1"])
    with pytest.raises(DataFormatError, match=r"HCP_visual_voxel\.npz"):
        (tmp_path / "hcp" / "sub").mkdir(parents=True)
        create_hcp_dataset(tmp_path / "hcp")


def test_transforms():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = ToModelImage(16)(img)
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert torch.allclose(ToModelImage(32)(img), torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
    torch.manual_seed(0)
    outs = [RandomCropResize(16, 0.2, p=0.5)(x) for _ in range(20)]
    assert all(o.shape == (3, 16, 16) for o in outs)
    assert 0 < sum(torch.equal(o, x) for o in outs) < 20  # cropped about half of the time
    fmri = torch.ones(1, 1000)
    assert torch.equal(RandomVoxelDropout(0.0)(fmri), fmri)
    assert 0.2 < (RandomVoxelDropout(0.3)(fmri) == 0).float().mean() < 0.4
