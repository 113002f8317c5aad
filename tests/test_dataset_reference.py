"""Our readers return what the published readers returned on the small tree in `reference/readers`."""

import hashlib
import json

import numpy as np
import pytest

from conftest import REFERENCE_DIR
from dataset import create_bold5000_dataset, create_god_dataset, create_hcp_dataset

READERS = REFERENCE_DIR / "readers"
DATA = READERS / "data"
CASES = json.loads((READERS / "expected.json").read_text())
EXPECTED = np.load(READERS / "expected.npz")


def md5s(images: np.ndarray) -> list[str]:
    return [hashlib.md5(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def assert_fmri(ours: np.ndarray, key: str) -> None:
    ref = EXPECTED[key]
    ours = ours.reshape(ref.shape) if ours.size == ref.size else ours
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape, f"{key}: {ours.shape} vs {ref.shape}"
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6, err_msg=key)


def test_hcp_cases():
    assert "empty_subject" in CASES["hcp"]["subjects_in_listdir_order"]  # a folder without the file is skipped
    hcp = create_hcp_dataset(DATA / "HCP" / "npz", roi="VC", patch_size=16, aug_times=1)
    assert_fmri(hcp.fmri, "hcp_fmri")
    both = create_hcp_dataset(DATA / "HCP" / "npz", include_kam=True, kam_path=DATA / "Kamitani" / "npz")
    assert_fmri(both.fmri, "hcp_kam_fmri")
    assert both[0]["fmri"].shape == (1, both.num_voxels)


GOD_CASES = [c for c in CASES if c.startswith("god_")]
BOLD_CASES = [c for c in CASES if c.startswith("bold_")]


@pytest.mark.parametrize("case", GOD_CASES)
def test_god_cases(case):
    spec = CASES[case]
    train, test = create_god_dataset(
        DATA / "Kamitani" / "npz", roi=spec["roi"], patch_size=spec["patch_size"], subjects=spec["subjects"],
        include_nonavg_test=spec["include_nonavg_test"],
    )
    assert_fmri(train.fmri[:, 0], f"{case}_train_fmri")
    assert_fmri(test.fmri[:, 0], f"{case}_test_fmri")
    np.testing.assert_array_equal(train.item_labels(), EXPECTED[f"{case}_train_class"])
    np.testing.assert_array_equal(train.naive_labels[train.image_index], EXPECTED[f"{case}_train_naive"])
    assert [train.class_names[j] for j in train.image_index] == spec["train_class_names"]
    assert md5s(train.images[train.image_index]) == list(EXPECTED[f"{case}_train_images_md5"])
    # The published test labels cover the averaged rows (the non-averaged rows follow them).
    n = len(EXPECTED[f"{case}_test_class"])
    np.testing.assert_array_equal(test.item_labels()[:n], EXPECTED[f"{case}_test_class"])
    np.testing.assert_array_equal(test.naive_labels[test.image_index[:n]], EXPECTED[f"{case}_test_naive"])
    assert [test.class_names[j] for j in test.image_index[:n]] == spec["test_class_names"]
    # Every test fMRI row has its image (the published list had only the 35-fold repetition: defect #12).
    assert len(test.image_index) == len(test.fmri) >= spec["test_images_len"]


@pytest.mark.parametrize("case", BOLD_CASES)
def test_bold5000_cases(case):
    spec = CASES[case]
    train, test = create_bold5000_dataset(
        DATA / "BOLD5000", patch_size=spec["patch_size"], subjects=spec["subjects"],
        include_nonavg_test=spec["include_nonavg_test"],
    )
    assert_fmri(train.fmri[:, 0], f"{case}_train_fmri")
    assert_fmri(test.fmri[:, 0], f"{case}_test_fmri")
    assert md5s(train.images[train.image_index]) == list(EXPECTED[f"{case}_train_images_md5"])
    assert md5s(test.images[test.image_index]) == list(EXPECTED[f"{case}_test_images_md5"])


def test_every_expected_array_is_checked():
    covered = {"hcp_fmri", "hcp_kam_fmri"}
    for case in GOD_CASES:
        covered |= {f"{case}_{s}_{k}" for s in ("train", "test") for k in ("fmri", "class", "naive")}
        covered.add(f"{case}_train_images_md5")
    for case in BOLD_CASES:
        covered |= {f"{case}_{s}_{k}" for s in ("train", "test") for k in ("fmri", "images_md5")}
    assert set(EXPECTED.files) <= covered
