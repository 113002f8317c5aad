"""GOD (Kamitani) data: `Kamitani/npz/sbj_<k>.npz` with `images_256.npz` and the ImageNet label files.

Per subject: arr_0 training trials, arr_1 / arr_2 single / averaged test trials, arr_3 training trial -> image,
and a bool mask per ROI. With `include_nonavg_test` every single test trial is its own row paired with its image
(docs/defects.md #12).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bounded import check_tree
from dataset import FMRIImageDataset
from errors import one_line
from readers.arrays import make_sets, pad_to_patch_size, zscore
from readers.files import (
    DataFormatError,
    check_fmri,
    check_images,
    check_subjects,
    data_root,
    load_npz,
    missing,
    require,
)

GOD_ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC")


def _read_stimulus_ids(path: Path) -> np.ndarray:
    """WordNet number of every row of a GOD label csv: the integer before the first '.' of the first column."""
    with open(require(path), newline="") as f:
        first = np.array([row[0].strip() for row in csv.reader(f) if row and row[0].strip()])
    head = np.char.partition(first, ".")[:, 0] if len(first) else first
    bad = ~np.char.isdigit(head)
    if bad.any():
        raise DataFormatError(f"{path}: expected stimulus ids like 1518878.005958, got {first[bad][:3].tolist()}")
    return head.astype(np.int64)


GOD_CLASS_INDEX = "imagenet_class_index.json"


def read_class_index(folder: Path) -> dict[int, list[str]]:
    """A GOD folder's `imagenet_class_index.json`: {class index: [wnid, ..., class name]}."""
    path = require(folder / GOD_CLASS_INDEX)
    try:
        entries = json.loads(path.read_text())
        check_tree(entries)
        index = {int(c): v for c, v in entries.items()}
    except (ValueError, AttributeError, TypeError, RecursionError) as e:  # TooLarge is a ValueError
        raise DataFormatError(
            f"{path}: expected {{class index: [wnid, ..., class name]}} as the published file holds ({one_line(e)})"
        ) from None
    if not all(isinstance(v, list) and v and all(isinstance(w, str) for w in v) for v in index.values()):
        raise DataFormatError(f"{path}: every class index must map to a list [wnid, ..., class name] of text")
    return index


def read_god_labels(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{'train'|'test': (class index, naive label, class name) per image} from the GOD label files.

    A WordNet id listed under several classes belongs to the first. The naive label numbers the WordNet ids
    in order of first appearance, the test images continuing the numbering of the training images.
    """
    class_file = folder / GOD_CLASS_INDEX
    entries = read_class_index(folder)
    class_index = np.array(list(entries), dtype=np.int64)
    class_name = np.array([v[-1] for v in entries.values()])
    wnids = np.array([int(w[1:]) for v in entries.values() for w in v[:-1]], dtype=np.int64)
    owner = np.repeat(np.arange(len(entries)), [len(v) - 1 for v in entries.values()])  # entry of each wnid
    wnids, first = np.unique(wnids, return_index=True)  # sorted; a shared id keeps its first entry
    owner = owner[first]

    files = {"train": folder / "imagenet_training_label.csv", "test": folder / "imagenet_testing_label.csv"}
    ids = {split: _read_stimulus_ids(f) for split, f in files.items()}
    both = np.concatenate([ids["train"], ids["test"]])
    unique, first_row, inverse = np.unique(both, return_index=True, return_inverse=True)
    naive = np.argsort(np.argsort(first_row))[inverse]  # rank of each id's first appearance
    out, start = {}, 0
    for split, wn in ids.items():
        pos = np.minimum(np.searchsorted(wnids, wn), len(wnids) - 1)
        unknown = wnids[pos] != wn
        if unknown.any():
            missing = [f"n{w:08d}" for w in wn[unknown][:3]]
            raise DataFormatError(f"{files[split]}: WordNet id(s) {missing} are not in {class_file}")
        out[split] = (class_index[owner[pos]], naive[start : start + len(wn)], class_name[owner[pos]].tolist())
        start += len(wn)
    return out


def _read_god_subject(file: Path, roi: str, patch_size: int, n_train: int, n_test: int, test_norm: str):
    """One subject's (train fMRI, test fMRI averaged, test fMRI single trials, train image index)."""
    npz = load_npz(file, ("arr_0", "arr_1", "arr_2", "arr_3", roi))
    mask, order = npz[roi], npz["arr_3"]
    v_all = check_fmri(npz["arr_0"], file, "arr_0").shape[1]
    if mask.dtype != bool or mask.shape != (v_all,) or not mask.any():
        raise DataFormatError(
            f"{file}: key '{roi}' must be a non-empty bool mask ({v_all},), got {mask.dtype} {mask.shape}"
        )
    tr = npz["arr_0"][:, mask]
    avg = check_fmri(npz["arr_2"], file, "arr_2", rows=n_test)[:, mask]
    rep = check_fmri(npz["arr_1"], file, "arr_1")[:, mask]
    if order.dtype.kind not in "iu" or order.shape != (len(tr),) or order.min() < 0 or order.max() >= n_train:
        raise DataFormatError(
            f"{file}: key 'arr_3' must be ({len(tr)},) ints < {n_train}, got {order.dtype} {order.shape}"
        )
    if len(rep) % n_test or not tr.shape[1] == avg.shape[1] == rep.shape[1]:
        raise DataFormatError(
            f"{file}: key 'arr_1' must be (k * {n_test}, {v_all}) single test trials, got {rep.shape}"
        )
    tr, avg, rep = (pad_to_patch_size(x, patch_size, f"{file} (roi {roi})") for x in (tr, avg, rep))
    # Published: the test fMRI is z-scored with the mean/std of the *normalised* training fMRI (about 0 and 1).
    mean, std = (tr.mean(), tr.std()) if test_norm == "train" else (None, None)
    tr = zscore(tr, source=f"{file}: key 'arr_0'")
    mean, std = (tr.mean(), tr.std()) if mean is None else (mean, std)
    return tr, zscore(avg, mean, std), zscore(rep, mean, std), order.astype(np.int64)


def _pick_held_out(naive: np.ndarray, categories: Sequence[int], seed: int) -> np.ndarray:
    """One training image of each category (naive label), drawn from `seed`: (len(categories),) image indices."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in categories:
        candidates = np.flatnonzero(naive == c)
        if not len(candidates):
            raise ValueError(f"test_category {c} is not a training category (0 .. {naive.max()})")
        picks.append(rng.choice(candidates))
    return np.array(picks, dtype=np.int64)


def create_god_dataset(
    path: str | os.PathLike = "data/Kamitani/npz",
    roi: str = "VC",
    patch_size: int = 16,
    subjects: Sequence[str] = ("sbj_3",),
    fmri_transform: Callable | None = None,
    image_transform: Callable | None = None,
    include_nonavg_test: bool = False,
    test_category: Sequence[int] | None = None,
    test_norm: str = "published",
    seed: int = 0,
) -> tuple[FMRIImageDataset, FMRIImageDataset]:
    """GOD train and test sets of the given subjects (wrap-padded to the longest, then concatenated).

    Test rows are the averaged trials, followed with `include_nonavg_test` by all single trials (35 per image).
    `test_norm="published"` z-scores the test fMRI with the statistics of the normalised training fMRI, as
    the published reader and checkpoints do; `"train"` uses the raw training statistics.
    `test_category` (training categories, numbered by naive label): one image of each, drawn from `seed`, is
    held out as the test set; all other training trials and the original test trials form the training set.
    """
    if roi not in GOD_ROIS:
        raise ValueError(f"GOD roi must be one of {GOD_ROIS}, got {roi!r}")
    if test_norm not in ("published", "train"):
        raise ValueError(f"test_norm must be 'published' or 'train', got {test_norm!r}")
    root = data_root(Path(path))
    labels = read_god_labels(root)
    image_file = root / "images_256.npz"
    images = load_npz(image_file, ("train_images", "test_images"))
    for split, key in (("train", "train_images"), ("test", "test_images")):
        if len(check_images(images[key], image_file, key)) != len(labels[split][0]):
            raise DataFormatError(
                f"{image_file}: key '{key}' has {len(images[key])} images, its csv {len(labels[split][0])}"
            )
    n_train, n_test = len(images["train_images"]), len(images["test_images"])
    held = None if test_category is None else _pick_held_out(labels["train"][1], test_category, seed)

    train, test = [], []  # (fMRI, image index) per subject
    for sub in check_subjects(subjects, root):
        tr, avg, rep, order = _read_god_subject(root / f"{sub}.npz", roi, patch_size, n_train, n_test, test_norm)
        tt, tt_index = avg, np.arange(n_test)
        if include_nonavg_test:  # averaged rows pair with the images in order, single trials with each 35 times
            tt = np.concatenate([avg, rep])
            tt_index = np.concatenate([tt_index, np.repeat(tt_index, len(rep) // n_test)])
        if held is None:
            train.append((tr, order))
            test.append((tt, tt_index))
        else:  # indices into the training images followed by the test images
            out = np.isin(order, held)
            train.append((np.concatenate([tr[~out], tt]), np.concatenate([order[~out], n_train + tt_index])))
            test.append((tr[out], order[out]))

    views = [(images["train_images"], labels["train"]), (images["test_images"], labels["test"])]
    if held is not None:  # both sets index the training images followed by the test images
        (tr_img, (tr_cls, tr_naive, tr_names)), (tt_img, (tt_cls, tt_naive, tt_names)) = views
        both = (
            np.concatenate([tr_img, tt_img]),
            (np.r_[tr_cls, tt_cls], np.r_[tr_naive, tt_naive], tr_names + tt_names),
        )
        views = [both, both]
    return make_sets(train, test, views, fmri_transform=fmri_transform, image_transform=image_transform)


def god_training_fmri(
    path: str | os.PathLike = "data/Kamitani/npz", roi: str = "VC", patch_size: int = 16
) -> np.ndarray:
    """The training fMRI (N, V) of every GOD subject in `path` (`sbj_<k>.npz`, in subject order), as the published
    pre-training appends it to HCP's: test fMRI left out, no images."""
    root = data_root(Path(path))
    subjects = sorted((p.stem for p in root.glob("sbj_*.npz")), key=lambda s: (len(s), s))
    if not subjects:
        raise missing(root / "sbj_<k>.npz")
    train, _ = create_god_dataset(root, roi, patch_size, subjects=subjects)
    return train.fmri[:, 0]
