"""What the simulated fMRI holds of the categories: a ridge read-out of the test classes' attributes.

The simulated world knows what each image shows (its category's shape, colour, texture, background type and
tint, in the class name); a real visual cortex is not so easy to read. A ridge regression (`ridge.fit_ridge`)
from the training fMRI to the one-hot attributes of each training image predicts them for the test images, whose
categories it never saw; the accuracy per attribute (argmax within its values) tells how much of the semantics a
linear read-out finds, beside what the pipeline decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from demo.simulation.stimuli import ATTRIBUTES, BG_TYPES, COLOUR_NAMES, SHAPES, TEXTURES, TINT_NAMES
from intervals import bootstrap_interval
from readers.god import create_god_dataset
from ridge import fit_ridge

VALUES = (SHAPES, COLOUR_NAMES, TEXTURES, BG_TYPES, TINT_NAMES)  # in ATTRIBUTES order


def attributes_of(name: str) -> list[int]:
    """The attribute indices of a class name 'red striped star on sky horizon' (ATTRIBUTES order)."""
    colour, texture, shape, _, tint, bg = name.split()
    return [
        SHAPES.index(shape),
        COLOUR_NAMES.index(colour),
        TEXTURES.index(texture),
        BG_TYPES.index(bg),
        TINT_NAMES.index(tint),
    ]


def one_hot(attrs: np.ndarray) -> np.ndarray:
    """(N, 5) attribute indices -> (N, sum of the attributes' sizes) one-hot blocks."""
    return np.concatenate([np.eye(len(v))[attrs[:, a]] for a, v in enumerate(VALUES)], axis=1)


def attribute_readout(kam_path: str | Path, subject: str = "sbj_3", seed: int = 0) -> dict[str, float]:
    """Ridge from the training fMRI to the attributes; accuracy on the averaged test fMRI (unseen categories), per
    attribute and their mean with its 95% interval over the test items."""
    train, test = create_god_dataset(kam_path, subjects=[subject])
    attrs = {
        split: np.array([attributes_of(n) for n in d.item_class_names()])
        for split, d in (("train", train), ("test", test))
    }
    weights, bias, _ = fit_ridge(train.fmri[:, 0].astype(np.float64), one_hot(attrs["train"]), seed=seed)
    scores = test.fmri[:, 0] @ weights + bias
    out, start, correct = {}, 0, []
    for a, values in enumerate(VALUES):
        correct.append(scores[:, start : start + len(values)].argmax(1) == attrs["test"][:, a])  # (N,)
        out[ATTRIBUTES[a]] = float(correct[-1].mean())
        start += len(values)
    per_item = np.mean(correct, axis=0)  # the share of its attributes read right, per test item
    out["mean"] = float(per_item.mean())
    out["mean_interval"] = bootstrap_interval(per_item)
    out["chance"] = float(np.mean([1 / len(v) for v in VALUES]))
    return out
