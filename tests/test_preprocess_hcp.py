"""preprocess_hcp: synthetic NIfTI / CIFTI series + atlas -> HCP_visual_voxel.npz, read back by the HCP reader."""

import nibabel as nib
import numpy as np
import pytest

from preprocess_hcp import PreprocessError, load_atlas, main, parse_labels, preprocess
from readers.hcp import create_hcp_dataset

SHAPE, FRAMES = (6, 5, 4), 30
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _atlas(path, values=(1, 2, 3, 4), affine=AFFINE) -> np.ndarray:
    """Label values[x] on the x-th slab (labels 1..4 on the first four by default), 0 elsewhere."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    for x, value in enumerate(values):
        labels[x] = value
    nib.save(nib.Nifti1Image(labels, affine), path)
    return labels


def _fmri(path, seed: int, frames: int = FRAMES) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((*SHAPE, frames)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return data


@pytest.fixture
def subjects(tmp_path):
    series = {}
    for k, sub in enumerate(("100307", "100206")):
        (tmp_path / "raw" / sub).mkdir(parents=True)
        series[sub] = _fmri(tmp_path / "raw" / sub / "rfMRI_REST1_LR.nii.gz", seed=k)
    return series


def test_volumes_become_the_published_npz_and_the_hcp_reader_loads_them(tmp_path, subjects):
    labels = _atlas(tmp_path / "atlas.nii.gz", values=(1, 2, 3, 4))
    out = tmp_path / "npz"
    written = main(
        [
            "--fmri_glob",
            str(tmp_path / "raw/*/rfMRI_REST1_LR.nii.gz"),
            "--atlas",
            str(tmp_path / "atlas.nii.gz"),
            "--out",
            str(out),
        ]
    )
    assert sorted(p.parent.name for p in written) == ["100206", "100307"]
    for sub, data in subjects.items():
        with np.load(out / sub / "HCP_visual_voxel.npz") as npz:
            assert sorted(npz.files) == ["V1", "V2", "V3", "V4"]
            for k, roi in enumerate(("V1", "V2", "V3", "V4")):
                expected = data[labels == k + 1].T  # (T, n) in C order of the volume
                assert npz[roi].dtype == np.float32 and npz[roi].shape == (FRAMES, 5 * 4)
                np.testing.assert_array_equal(npz[roi], expected)
    hcp = create_hcp_dataset(out, patch_size=16)
    assert hcp.fmri.shape == (2 * FRAMES // 10, 1, 96)  # 3 windows per subject; 80 voxels + a padded patch

    # existing files are kept unless --overwrite
    assert preprocess([tmp_path / "raw/100307/rfMRI_REST1_LR.nii.gz"], tmp_path / "atlas.nii.gz", out) == []


def test_label_values_are_configurable(tmp_path, subjects):
    labels = _atlas(tmp_path / "atlas.nii.gz", values=(7, 8, 9, 11, 12, 13))
    out = tmp_path / "npz"
    main(
        [
            "--fmri_glob",
            str(tmp_path / "raw/1003*/*.nii.gz"),
            "--atlas",
            str(tmp_path / "atlas.nii.gz"),
            "--out",
            str(out),
            "--labels",
            "V1=7,8",
            "V2=9",
            "V3=11",
            "V4=13",
        ]
    )
    assert not (out / "100206").exists()
    with np.load(out / "100307" / "HCP_visual_voxel.npz") as npz:
        np.testing.assert_array_equal(npz["V1"], subjects["100307"][np.isin(labels, (7, 8))].T)
        np.testing.assert_array_equal(npz["V4"], subjects["100307"][5].reshape(-1, FRAMES).T)
    assert parse_labels(["V1=1", "V2=2,5", "V3=3", "V4=4"])["V2"] == (2, 5)


def test_cifti_dense_time_series(tmp_path):
    grayordinates, frames = 40, 12
    models = nib.cifti2.BrainModelAxis.from_mask(np.ones(grayordinates, dtype=bool), name="CortexLeft")
    series_axis = nib.cifti2.SeriesAxis(start=0.0, step=0.72, size=frames)
    data = np.random.default_rng(0).standard_normal((frames, grayordinates)).astype(np.float32)
    header = nib.cifti2.Cifti2Header.from_axes((series_axis, models))
    nib.save(nib.Cifti2Image(data, header), tmp_path / "100307_rest.dtseries.nii")
    labels = np.repeat([1, 2, 3, 4, 0], 8).astype(np.float32)[None]  # (1, G)
    label_header = nib.cifti2.Cifti2Header.from_axes((nib.cifti2.ScalarAxis(["areas"]), models))
    nib.save(nib.Cifti2Image(labels, label_header), tmp_path / "areas.dscalar.nii")
    atlas = load_atlas(tmp_path / "areas.dscalar.nii")
    assert atlas.is_cifti
    (written,) = preprocess([tmp_path / "100307_rest.dtseries.nii"], tmp_path / "areas.dscalar.nii", tmp_path / "o")
    with np.load(written) as npz:
        np.testing.assert_array_equal(npz["V3"], data[:, 16:24])
    with pytest.raises(PreprocessError, match="a volume fMRI needs a NIfTI atlas"):
        _fmri(tmp_path / "100206.nii.gz", 0)
        preprocess([tmp_path / "100206.nii.gz"], tmp_path / "areas.dscalar.nii", tmp_path / "o")


def test_bad_input_fails_clearly(tmp_path, subjects):
    raw = tmp_path / "raw/100307/rfMRI_REST1_LR.nii.gz"
    _atlas(tmp_path / "atlas.nii.gz")
    small = np.repeat(np.arange(1, 6, dtype=np.int16), 20).reshape(5, 5, 4)  # every label, on a smaller grid
    nib.save(nib.Nifti1Image(small, AFFINE), tmp_path / "small.nii.gz")
    with pytest.raises(PreprocessError, match=r"fMRI grid \(6, 5, 4\) does not match the atlas grid \(5, 5, 4\)"):
        preprocess([raw], tmp_path / "small.nii.gz", tmp_path / "o")

    _atlas(tmp_path / "no_v4.nii.gz", values=(1, 2, 3, 0))
    with pytest.raises(PreprocessError, match=r"no_v4\.nii\.gz: no voxel carries the V4 label\(s\) \[4\]"):
        preprocess([raw], tmp_path / "no_v4.nii.gz", tmp_path / "o")

    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), tmp_path / "100206_3d.nii.gz")
    with pytest.raises(PreprocessError, match=r"100206_3d\.nii\.gz: expected a 4-D \(x, y, z, time\) fMRI series"):
        preprocess([tmp_path / "100206_3d.nii.gz"], tmp_path / "atlas.nii.gz", tmp_path / "o")

    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 4), np.float32), AFFINE), tmp_path / "100206_short.nii.gz")
    with pytest.raises(PreprocessError, match="4 frames, fewer than one 8 s window"):
        preprocess([tmp_path / "100206_short.nii.gz"], tmp_path / "atlas.nii.gz", tmp_path / "o")

    _atlas(tmp_path / "shifted.nii.gz", affine=np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(PreprocessError, match="affine differs from the atlas"):
        preprocess([raw], tmp_path / "shifted.nii.gz", tmp_path / "o")

    with pytest.raises(PreprocessError, match="two files for subject 100307"):
        preprocess([raw, raw.with_name("rfMRI_REST2_LR.nii.gz")], tmp_path / "atlas.nii.gz", tmp_path / "o")
    with pytest.raises(PreprocessError, match=r"expected each of .* once as NAME=v\[,v...\], got 'V5=4'"):
        parse_labels(["V1=1", "V2=2", "V3=3", "V5=4"])
    with pytest.raises(PreprocessError, match="must give all of"):
        parse_labels(["V1=1", "V2=2", "V3=3"])
    with pytest.raises(PreprocessError, match="belongs to two areas"):
        parse_labels(["V1=1", "V2=1", "V3=3", "V4=4"])
    with pytest.raises(SystemExit):
        main(["--fmri_glob", str(tmp_path / "nothing/*.nii.gz"), "--atlas", str(tmp_path / "atlas.nii.gz")])
