"""Our readers return what the published readers returned on the small tree in `<reference>/readers`.

Every case of `expected.json` is one test, its settings taken from the case (the HCP case has none: the
fixture README fixes ROI VC, patch 16, no augmentation). Images are compared by the md5 of the raw uint8 array.
"""

import hashlib
import json

import numpy as np
import pytest

from config import StageA1Config
from conftest import REFERENCE_DIR
from readers.bold5000 import create_bold5000_dataset
from readers.god import create_god_dataset
from readers.hcp import HCP_FILE, create_hcp_dataset
from stageA1_mbm_pretrain import pretraining_data

READERS = REFERENCE_DIR / "readers"
DATA = READERS / "data"
CASES = json.loads((READERS / "expected.json").read_text())
with np.load(READERS / "expected.npz") as _npz:
    EXPECTED = {k: _npz[k] for k in _npz.files}


def md5s(images: np.ndarray) -> list[str]:
    return [hashlib.md5(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def assert_fmri(ours: np.ndarray, key: str) -> None:
    ref = EXPECTED[key]
    assert ours.dtype == np.float32 and ours.shape == ref.shape, f"{key}: {ours.dtype} {ours.shape} vs {ref.shape}"
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6, err_msg=key)


def check_hcp(case: str, spec: dict, tmp_path) -> None:
    # Git keeps no empty folders, so rebuild the subject folders as the published reader listed them;
    # the ones without the file (e.g. `empty_subject`) must be skipped.
    root = tmp_path / "npz"
    for sub in spec["subjects_in_listdir_order"]:
        (root / sub).mkdir(parents=True)
        if (DATA / "HCP" / "npz" / sub / HCP_FILE).is_file():
            (root / sub / HCP_FILE).symlink_to(DATA / "HCP" / "npz" / sub / HCP_FILE)
    hcp = create_hcp_dataset(root, roi="VC", patch_size=16, aug_times=1)
    assert_fmri(hcp.fmri, f"{case}_fmri")
    a1 = StageA1Config(hcp_path=str(root), kam_path=str(DATA / "Kamitani" / "npz"), roi="VC", patch_size=16)
    both = pretraining_data(a1)  # the published pre-training set: HCP, then GOD's training fMRI (corpora.py)
    assert_fmri(both.fmri, f"{case}_kam_fmri")
    assert both[0]["fmri"].shape == (1, both.num_voxels)


def check_god(case: str, spec: dict, tmp_path) -> None:
    train, test = create_god_dataset(
        DATA / "Kamitani" / "npz",
        roi=spec["roi"],
        patch_size=spec["patch_size"],
        subjects=spec["subjects"],
        include_nonavg_test=spec["include_nonavg_test"],
    )
    assert_fmri(train.fmri[:, 0], f"{case}_train_fmri")
    assert_fmri(test.fmri[:, 0], f"{case}_test_fmri")
    np.testing.assert_array_equal(train.item_labels(), EXPECTED[f"{case}_train_class"])
    np.testing.assert_array_equal(train.naive_labels[train.image_index], EXPECTED[f"{case}_train_naive"])
    assert train.item_class_names() == spec["train_class_names"]
    assert md5s(train.images[train.image_index]) == list(EXPECTED[f"{case}_train_images_md5"])
    # The published test labels cover the averaged rows, one per test image and subject.
    n = len(EXPECTED[f"{case}_test_class"])
    np.testing.assert_array_equal(test.item_labels()[:n], EXPECTED[f"{case}_test_class"])
    np.testing.assert_array_equal(test.naive_labels[test.image_index[:n]], EXPECTED[f"{case}_test_naive"])
    assert test.item_class_names()[:n] == spec["test_class_names"]
    # Defect #12: every test row has its image. Per subject: the test images in order, then (with the
    # non-averaged trials) each of them repeated as often as the published image list repeated them.
    n_sub, n_img = len(spec["subjects"]), len(test.images)
    per_subject = np.arange(n_img)
    if spec["include_nonavg_test"]:
        reps = spec["test_images_len"] // (n_sub * n_img)
        per_subject = np.concatenate([per_subject, np.repeat(per_subject, reps)])
    np.testing.assert_array_equal(test.image_index, np.tile(per_subject, n_sub))
    assert len(test.image_index) == len(test.fmri)


def check_bold(case: str, spec: dict, tmp_path) -> None:
    train, test = create_bold5000_dataset(
        DATA / "BOLD5000",
        patch_size=spec["patch_size"],
        subjects=spec["subjects"],
        include_nonavg_test=spec["include_nonavg_test"],
    )
    assert_fmri(train.fmri[:, 0], f"{case}_train_fmri")
    assert_fmri(test.fmri[:, 0], f"{case}_test_fmri")
    assert md5s(train.images[train.image_index]) == list(EXPECTED[f"{case}_train_images_md5"])
    assert md5s(test.images[test.image_index]) == list(EXPECTED[f"{case}_test_images_md5"])


CHECKS = {"hcp": check_hcp, "god": check_god, "bold": check_bold}
ARRAYS = {  # the expected.npz keys each kind of case is compared with
    "hcp": ["fmri", "kam_fmri"],
    "god": [f"{s}_{k}" for s in ("train", "test") for k in ("fmri", "class", "naive")] + ["train_images_md5"],
    "bold": [f"{s}_{k}" for s in ("train", "test") for k in ("fmri", "images_md5")],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_case(case, tmp_path):
    kind = case.split("_")[0]
    assert kind in CHECKS, f"expected.json case {case!r} is of no known reader ({sorted(CHECKS)})"
    CHECKS[kind](case, CASES[case], tmp_path)


def test_every_expected_array_belongs_to_a_case():
    covered = {f"{case}_{k}" for case in CASES for k in ARRAYS.get(case.split("_")[0], [])}
    assert set(EXPECTED) <= covered, sorted(set(EXPECTED) - covered)
