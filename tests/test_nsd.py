"""NSD in MindEye's two layouts (readers/nsd.py): the sets on hand-made files written from the public format
descriptions, both layouts of one simulated world giving the same data, and hostile files refused in one line."""

import io
import shutil
import tarfile

import h5py
import numpy as np
import pytest
from PIL import Image

from config import GenEvalConfig, StageA1Config, TargetData
from readers.files import DataFormatError
from readers.nsd import create_nsd_dataset, detect_layout
from stageA1_mbm_pretrain import pretraining_data
from targets import TARGETS, load_target

V = 40  # voxels of the hand-made subject


def npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=a.dtype.hasobject)
    return buffer.getvalue()


def jpg(value: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path, samples: dict[str, dict[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for name, data in members.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def me1_sample(voxels: np.ndarray, coco: int, repeats: int | None = None) -> dict[str, bytes]:
    sample = {
        "nsdgeneral.npy": npy(voxels.astype(np.float16)),
        "jpg": jpg(coco % 250),
        "coco73k.npy": npy(np.array([coco])),
        "trial.npy": npy(np.array([coco * 3])),
    }
    if repeats is not None:
        sample["num_uniques.npy"] = npy(np.array([repeats]))
    return sample


@pytest.fixture
def me1(tmp_path):
    """MindEye's webdataset_avg_split for subj01: 3 train images (one seen twice: num_uniques 2), 1 validation
    image, 2 test images split over two shards; voxel values chosen so every set's numbers are known."""
    rng = np.random.default_rng(0)
    vox = {c: rng.normal(size=(3, V)).astype(np.float16).astype(np.float32) for c in (11, 12, 13, 14, 901, 902)}
    vox[12][2] = 0.0  # the unused row of an image seen twice (num_uniques 2)
    vox[14][1] = np.nan  # a presentation the sample lacks, as a row of NaN (no num_uniques)
    root = tmp_path / "me1"
    split = root / "webdataset_avg_split"
    write_tar(split / "train" / "train_subj01_0.tar", {"sample000000005": me1_sample(vox[13], 13)})
    write_tar(
        split / "train" / "train_subj01_1.tar",
        {"sample000000001": me1_sample(vox[11], 11, 3), "sample000000002": me1_sample(vox[12], 12, 2)},
    )
    write_tar(split / "val" / "val_subj01_0.tar", {"sample000000009": me1_sample(vox[14], 14)})
    write_tar(split / "test" / "test_subj01_0.tar", {"sample000000003": me1_sample(vox[902], 902)})
    write_tar(split / "test" / "test_subj01_1.tar", {"sample000000004": me1_sample(vox[901], 901)})
    return root, vox


def test_mindeye1_sets(me1):
    root, vox = me1
    train, test = create_nsd_dataset(root, patch_size=16, subjects=["subj01"])
    # single trials: 3 + 2 (num_uniques) + 3 + 2 (a NaN row; validation joins training); test: one mean per image
    assert len(train) == 10 and len(test) == 2
    ids = np.array([11, 12, 13, 14, 901, 902])
    assert train.images.shape == (6, 32, 32, 3) and (train.images[:, 0, 0, 0] == ids % 250).all()
    raw = np.concatenate([vox[11], vox[12][:2], vox[13], vox[14][[0, 2]]])
    padded = np.pad(raw, [(0, 0), (0, 48 - V)], mode="wrap")  # wrap-padded first, as the published readers
    mean, std = padded.mean(), padded.std()  # one scalar z-score, the training trials' statistics
    order = np.argsort(ids[train.image_index], kind="stable")
    assert np.allclose(np.sort(train.fmri[:, 0, :V], 0), np.sort((raw - mean) / std, 0), atol=1e-5)
    assert (ids[train.image_index][order] == np.repeat([11, 12, 13, 14], [3, 2, 3, 2])).all()
    expected = np.stack([(vox[c].mean(0) - mean) / std for c in (901, 902)])  # test images in 73k order
    assert (ids[test.image_index] == [901, 902]).all()
    assert np.allclose(test.fmri[:, 0, :V], expected, atol=1e-5)
    assert train.fmri.shape[-1] == 48  # wrap-padded by patch - V % patch, as published
    assert np.allclose(test.fmri[:, 0, V:], test.fmri[:, 0, : 48 - V])
    assert (train.labels == -1).all()


def test_mindeye1_options_and_extracted_folders(me1, tmp_path):
    root, vox = me1
    train, _ = create_nsd_dataset(root, subjects=["subj01"], nsd_train_average=True)
    assert len(train) == 4  # one mean per training image
    _, test = create_nsd_dataset(root, subjects=["subj01"], include_nonavg_test=True)
    assert len(test) == 2 + 6
    # the same samples extracted to webdataset_avg_split/<split>/subj01/ read the same
    extracted = tmp_path / "extracted"
    for shard in (root / "webdataset_avg_split").rglob("*.tar"):
        folder = extracted / "webdataset_avg_split" / shard.parent.name / "subj01"
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(shard) as tar:
            for info in tar:
                (folder / info.name).write_bytes(tar.extractfile(info).read())
    per_shard = tmp_path / "per-shard"  # or one folder per shard, named as the shard
    for shard in (root / "webdataset_avg_split").rglob("*.tar"):
        folder = per_shard / "webdataset_avg_split" / shard.parent.name / shard.stem
        folder.mkdir(parents=True)
        with tarfile.open(shard) as tar:
            for info in tar:
                (folder / info.name).write_bytes(tar.extractfile(info).read())
    a = create_nsd_dataset(root, subjects=["subj01"])
    for other in (extracted, per_shard):
        b = create_nsd_dataset(other, subjects=["subj01"])
        for x, y in zip(a, b, strict=True):
            ox, oy = (np.lexsort((s.fmri[:, 0, 0], s.image_index)) for s in (x, y))
            assert np.array_equal(x.fmri[ox], y.fmri[oy]) and np.array_equal(x.images, y.images)


def behav_row(image: int, trial: int, shared: bool) -> np.ndarray:
    row = np.full((1, 17), -1.0)
    row[0, 0], row[0, 1], row[0, 2], row[0, 5], row[0, 16] = image, 1, 1 + trial // 750, trial, shared
    return row


@pytest.fixture
def me2(tmp_path):
    """MindEye2's release for subj01: 8 trials in the betas file, training trials in two session shards (one
    beta row never named), two shared images shown twice and once in new_test."""
    rng = np.random.default_rng(1)
    tmp_path = tmp_path / "me2"
    tmp_path.mkdir()
    betas = rng.normal(size=(8, V)).astype(np.float32)
    with h5py.File(tmp_path / "betas_all_subj01_fp32_renorm.hdf5", "w") as f:
        f["betas"] = betas
    images = np.zeros((73000, 3, 8, 8), np.float16)  # written sparsely: chunked, only the used rows
    with h5py.File(tmp_path / "coco_images_224_float16.hdf5", "w") as f:
        d = f.create_dataset("images", images.shape, np.float16, chunks=(1, 3, 8, 8))
        for c in (5, 7, 40, 72999):
            d[c] = np.full((3, 8, 8), c / 73000, np.float16)
    wds = tmp_path / "wds" / "subj01"

    def shard(rows):
        return {f"sample{n:09d}": {"behav.npy": npy(behav_row(*r))} for n, r in enumerate(rows)}

    write_tar(wds / "train" / "0.tar", shard([(5, 0, False), (7, 2, False)]))
    write_tar(wds / "train" / "1.tar", shard([(5, 3, False), (72999, 7, False)]))
    write_tar(wds / "new_test" / "0.tar", shard([(40, 4, True), (40, 6, True), (7000, 5, True)]))
    with h5py.File(tmp_path / "coco_images_224_float16.hdf5", "a") as f:
        f["images"][7000] = np.full((3, 8, 8), 1.0, np.float16)
    return tmp_path, betas


def test_mindeye2_sets(me2):
    root, betas = me2
    train, test = create_nsd_dataset(root, patch_size=4, subjects=["subj01"])
    assert detect_layout(root) == "mindeye2"
    raw = betas[[0, 2, 3, 7]]  # the rows behav.npy names (column 5), in shard order
    mean, std = raw.mean(), raw.std()  # 40 voxels: a multiple of the patch 4, so padded by a whole patch
    padded = np.pad(raw, [(0, 0), (0, 4)], mode="wrap")
    mean, std = padded.mean(), padded.std()
    assert np.allclose(train.fmri[:, 0, :V], (raw - mean) / std, atol=1e-5)
    ids = np.array([5, 7, 40, 7000, 72999])
    assert (ids[train.image_index] == [5, 7, 5, 72999]).all()
    # test: the shared images' presentations averaged, images in 73k order
    assert (ids[test.image_index] == [40, 7000]).all()
    assert np.allclose(test.fmri[:, 0, :V], (np.stack([betas[[4, 6]].mean(0), betas[5]]) - mean) / std, atol=1e-5)
    # images: float [0, 1] (3, H, W) -> uint8 (H, W, 3)
    assert train.images.shape == (5, 8, 8, 3)
    assert train.images[3].min() == 255 and train.images[0].max() == round(5 / 73000 * 255)


def test_mindeye2_channels_last_uint8_images_and_subject_numbers(me2):
    root, _ = me2
    path = root / "coco_images_224_float16.hdf5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("images", (73000, 8, 8, 3), np.uint8, chunks=(1, 8, 8, 3))
        for c in (5, 7, 40, 7000, 72999):
            d[c] = c % 251
    train, _ = create_nsd_dataset(root, patch_size=4, subjects=["1"])  # MindEye's --subj 1
    assert (
        train.images.shape == (5, 8, 8, 3) and (train.images[:, 0, 0, 0] == [5, 7, 40, 7000 % 251, 72999 % 251]).all()
    )


def test_mindeye2_extracted_shards(me2, tmp_path):
    root, _ = me2
    a = create_nsd_dataset(root, patch_size=4)
    for shard in (root / "wds").rglob("*.tar"):  # each shard extracted to a folder of its name, then removed
        folder = shard.with_suffix("")
        folder.mkdir()
        with tarfile.open(shard) as tar:
            for info in tar:
                (folder / info.name).write_bytes(tar.extractfile(info).read())
        shard.unlink()
    b = create_nsd_dataset(root, patch_size=4)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.fmri, y.fmri) and np.array_equal(x.image_index, y.image_index)


def test_mindeye2_earlier_releases(me2):
    root, _ = me2
    (root / "wds" / "subj01" / "new_test").rename(root / "wds" / "subj01" / "test")  # the first test set
    (root / "betas_all_subj01_fp32_renorm.hdf5").rename(root / "betas_all_subj01.hdf5")  # the first betas file
    _, test = create_nsd_dataset(root, patch_size=4)
    assert len(test) == 2


# ---- one simulated world in both layouts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from demo.simulation.simulate import make_synthetic_data

    return make_synthetic_data(tmp_path_factory.mktemp("sim") / "tiny", size="tiny", seed=0) / "NSD"


def test_both_layouts_of_one_world_read_alike(simulated):
    subjects = ["subj01", "subj02"]
    one = create_nsd_dataset(simulated / "mindeye1", subjects=subjects)
    two = create_nsd_dataset(simulated / "mindeye2", subjects=subjects)
    for a, b, rows in zip(one, two, (2 * 24 * 3, 2 * 8), strict=True):
        assert len(a) == len(b) == rows
        assert np.abs(a.images.astype(int) - b.images).mean() < 4  # JPEG against float16
        oa, ob = (np.lexsort((s.fmri[:, 0, 0], s.image_index)) for s in (a, b))
        assert np.array_equal(a.image_index[oa], b.image_index[ob])
        assert np.abs(a.fmri[oa] - b.fmri[ob]).max() < 0.01  # float16 betas against float32


def test_registry_and_stages_take_nsd(simulated, tmp_path):
    data = TargetData(dataset="NSD", nsd_path=str(simulated / "mindeye2"), nsd_subs=["subj02"])
    data._resolve_data()
    train, test = load_target(data, patch_size=16, include_nonavg_test=False)
    assert len(train) == 24 * 3 and len(test) == 8
    # every target's subjects and options can be given to gen_eval, defaulting to the checkpoint's (None)
    for target in TARGETS.values():
        assert getattr(GenEvalConfig(), target.subjects_field) is None
    # Stage A1 pre-trains on NSD's training trials beside the rest
    cfg = StageA1Config(
        root_path=str(tmp_path),
        include_hcp=False,
        include_kam=False,
        include_nsd=True,
        nsd_path=str(simulated / "mindeye1"),
        nsd_subs=["subj01", "subj02"],
        patch_size=16,
    )
    assert len(pretraining_data(cfg)) == 2 * 24 * 3


# ---- hostile and broken files: one line naming the file --------------------------------------------------------


def one_line_error(call, *needles):
    with pytest.raises(DataFormatError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_truncated_hdf5(me2):
    root, _ = me2
    path = root / "betas_all_subj01_fp32_renorm.hdf5"
    path.write_bytes(path.read_bytes()[:1000])
    one_line_error(lambda: create_nsd_dataset(root), str(path), "HDF5")


def test_hdf5_of_objects_and_wrong_keys(me2):
    root, _ = me2
    path = root / "betas_all_subj01_fp32_renorm.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", (8, 2), dtype=h5py.string_dtype())
    one_line_error(lambda: create_nsd_dataset(root), str(path), "numeric array")
    with h5py.File(path, "w") as f:
        f["other"] = np.zeros((8, V), np.float32)
    one_line_error(lambda: create_nsd_dataset(root), str(path), "'betas'")


def test_behav_naming_a_row_the_betas_lack(me2):
    root, _ = me2
    write_tar(
        root / "wds" / "subj01" / "train" / "2.tar", {"sample000000009": {"behav.npy": npy(behav_row(5, 99, 0))}}
    )
    one_line_error(lambda: create_nsd_dataset(root), "row 99", "8 rows")


def test_shard_missing_a_member(me1):
    root, vox = me1
    sample = me1_sample(vox[13], 13)
    del sample["coco73k.npy"]
    shard = root / "webdataset_avg_split" / "train" / "train_subj01_0.tar"
    write_tar(shard, {"sample000000005": sample})
    one_line_error(lambda: create_nsd_dataset(root), str(shard), "coco73k.npy")


def test_object_arrays_are_never_unpickled(me1):
    root, vox = me1
    sample = me1_sample(vox[13], 13)
    sample["nsdgeneral.npy"] = npy(np.array([{"a": 1}, None], dtype=object))
    shard = root / "webdataset_avg_split" / "train" / "train_subj01_0.tar"
    write_tar(shard, {"sample000000005": sample})
    one_line_error(lambda: create_nsd_dataset(root), str(shard), "pickle")


def test_truncated_shard_and_links(me1):
    root, _ = me1
    shard = root / "webdataset_avg_split" / "test" / "test_subj01_1.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    one_line_error(lambda: create_nsd_dataset(root), str(shard))
    with tarfile.open(shard, "w") as tar:
        link = tarfile.TarInfo("sample000000004.nsdgeneral.npy")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    one_line_error(lambda: create_nsd_dataset(root), str(shard), "link")


def test_bad_values(me1, caplog):
    root, vox = me1
    shard = root / "webdataset_avg_split" / "train" / "train_subj01_0.tar"
    write_tar(shard, {"sample000000005": me1_sample(vox[13], 80000)})
    one_line_error(lambda: create_nsd_dataset(root), "80000", "outside")
    partly = vox[13].copy()
    partly[0, 3] = np.inf
    write_tar(shard, {"sample000000005": me1_sample(partly, 13)})
    one_line_error(lambda: create_nsd_dataset(root), "NaN/inf")
    write_tar(shard, {"sample000000005": me1_sample(vox[13][:, :30], 13)})
    one_line_error(lambda: create_nsd_dataset(root), "30", "voxels")
    write_tar(shard, {"sample000000005": me1_sample(vox[901], 901)})  # a test image among the training images
    train, test = create_nsd_dataset(root)
    assert len(train) == 7 and len(test) == 2  # its 3 trials left out of training: no test image trained on
    assert "3 training trial(s) show test images (e.g. 901): left out of training" in caplog.text
    smaller = me1_sample(vox[13], 13)
    smaller["jpg"] = jpg(13, size=16)
    write_tar(shard, {"sample000000005": smaller})
    one_line_error(lambda: create_nsd_dataset(root), "differ in size")
    broken = me1_sample(vox[13], 13)
    broken["jpg"] = b"\xff\xd8 not a jpeg"
    write_tar(shard, {"sample000000005": broken})
    one_line_error(lambda: create_nsd_dataset(root), "not a readable image")


def test_layout_detection(me1, me2, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: detect_layout(empty), "no NSD layout")
    both = tmp_path / "both"
    shutil.copytree(me1[0] / "webdataset_avg_split", both / "webdataset_avg_split")
    shutil.copy(me2[0] / "coco_images_224_float16.hdf5", both)
    one_line_error(lambda: detect_layout(both), "--nsd_layout")
    assert detect_layout(both, "mindeye1") == "mindeye1"
    one_line_error(lambda: create_nsd_dataset(me1[0], subjects=["subj03"]), "subj03")


def test_the_nsd_demo_preset_points_every_stage_at_nsd(tmp_path):
    import types

    from demo.pipeline import World
    from demo.presets import PRESETS

    preset = PRESETS["nsd"]
    world = types.SimpleNamespace(preset=preset, data=tmp_path, kam=str(tmp_path / "Kamitani" / "npz"))
    flags = World.target_flags.fget(world)
    assert flags == {"dataset": "NSD", "nsd_path": str(tmp_path / "NSD" / "mindeye2"), "nsd_subs": ["subj01"]}
    assert not preset.b["ridge_init"] and not preset.b["freeze_mapper"]  # NSD has no labels for the ridge start
    assert World.target_flags.fget(types.SimpleNamespace(preset=PRESETS["demo"], kam="K")) == {"kam_path": "K"}
