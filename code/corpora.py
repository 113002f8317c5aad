"""The pre-training corpora of Stage A1: one entry each, as the target data sets are entries of `targets.py`.

An entry names the Stage A1 config field that switches it on (the published `include_hcp` / `include_kam` for HCP
and GOD) and its reader: the config -> the corpus's pre-training fMRI rows (N, V), each source z-scored and padded
to whole patches by its reader. `pretraining_fmri` reads the switched-on entries in table order (HCP, then GOD, as
published) and wrap-pads every one to the longest.

Adding a corpus is a reader in `readers/` and an entry here; config.py declares its field (and its folder).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from readers.arrays import pad_all_to_longest
from readers.fmri_folder import read_fmri_folder
from readers.god import god_training_fmri
from readers.hcp import create_hcp_dataset
from readers.nsd import create_nsd_dataset

log = logging.getLogger("mindvis.dataset")


@dataclass(frozen=True)
class Corpus:
    """One pre-training corpus."""

    name: str
    field: str  # the Stage A1 config field that switches it on (a flag, or a folder: None is off)
    read: Callable[[Any], np.ndarray]  # Stage A1 config -> fMRI rows (N, V)
    what: str  # one line: what it holds


def _hcp(cfg: Any) -> np.ndarray:
    hcp = create_hcp_dataset(
        cfg.hcp_path, cfg.roi, cfg.patch_size, aug_times=cfg.aug_times, num_sub_limit=cfg.num_sub_limit, seed=cfg.seed
    )
    return hcp.fmri[:, 0]


def _god(cfg: Any) -> np.ndarray:
    return god_training_fmri(cfg.kam_path, cfg.roi, cfg.patch_size)


def _nsd(cfg: Any) -> np.ndarray:
    return create_nsd_dataset(cfg.nsd_path, cfg.patch_size, subjects=cfg.nsd_subs)[0].fmri[:, 0]


def _folder(cfg: Any) -> np.ndarray:
    return read_fmri_folder(cfg.fmri_folder, cfg.patch_size)


CORPORA = {
    c.name: c
    for c in (
        Corpus("HCP", "include_hcp", _hcp, "HCP resting state, 8 s window means of V1-V4 (published)"),
        Corpus("GOD", "include_kam", _god, "GOD training fMRI of every subject in kam_path (published)"),
        Corpus("NSD", "include_nsd", _nsd, "NSD training trials of nsd_subs, either MindEye layout"),
        Corpus("folder", "fmri_folder", _folder, "every .npy array (N, V) in fmri_folder: any fMRI of yours"),
    )
}


def included(cfg: Any) -> list[Corpus]:
    """The corpora the config switches on, in table order."""
    return [c for c in CORPORA.values() if getattr(cfg, c.field)]


def pretraining_fmri(cfg: Any) -> np.ndarray:
    """Stage A1's pre-training fMRI (N, V): every switched-on corpus, wrap-padded to the longest, concatenated."""
    parts = []
    for corpus in included(cfg):
        rows = corpus.read(cfg)
        log.info("pre-training corpus %s: %d samples x %d voxels", corpus.name, *rows.shape)
        parts.append(rows)
    if not parts:
        raise ValueError(f"no pre-training corpus is switched on ({', '.join(c.field for c in CORPORA.values())})")
    return np.concatenate(pad_all_to_longest(parts))
