"""The original's config objects, as its code pickles them into checkpoints: data-only classes of the same names.

A published `.pth` file holds a `config.Config_MBM_fMRI`, `config.Config_MBM_finetune` or
`config.Config_Generative_Model` object. The classes here carry those names (`__module__ == "config"`, and
`config.py` re-exports them), so that:

- our restricted loader (`safe_pickle`) rebuilds a published config object as one of these, attributes only,
  nothing of the file's code run;
- our checkpoints pickle them by reference as `config.<class name>`, which the original code unpickles as its own
  class (attributes set, constructor not called): the original reads our files (tests/test_interop.py).

`published_config` writes one of our stage configs in that form: every field the original reads, in its types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from errors import UnsafeCheckpointError

# Each precision's spellings: first the published configs' (the published Stage B stored `precision = 32`), which
# is what we write back, then Lightning's.
PRECISION_SPELLINGS = {"fp32": (32, "32-true"), "fp16": (16, "16-mixed"), "bf16": ("bf16", "bf16-mixed")}
PRECISION_ALIASES = {str(s): name for name, spellings in PRECISION_SPELLINGS.items() for s in spellings}


def pickled_attributes(state: Any, what: str) -> dict:
    """The attributes a pickled object's state sets: a dict, or (dict, slots) as pickle writes an object with
    `__slots__`; anything else (or a key that is no attribute name) is refused, naming the class `what`."""
    if isinstance(state, tuple) and len(state) == 2:
        state = {**(state[0] or {}), **(state[1] or {})}
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UnsafeCheckpointError(f"unexpected pickled state of type {type(state).__name__} for {what}")
    return state


class _PublishedConfig:
    """A data-only object whose attributes are the original's config fields (no behaviour, nothing to run)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(pickled_attributes(state, type(self).__name__))

    def to_dict(self) -> dict:
        """The attributes as a plain dict."""
        return dict(vars(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Config_MBM_fMRI(_PublishedConfig):  # noqa: N801 - the published class names
    """The Stage A config of `fmri_encoder.pth` / A1 and A2 `checkpoint.pth`."""


class Config_MBM_finetune(_PublishedConfig):  # noqa: N801
    """The Stage A2 run's own settings."""


class Config_Generative_Model(_PublishedConfig):  # noqa: N801
    """The Stage B config of `finetuned.pth`."""


PUBLISHED_CLASSES = (Config_MBM_fMRI, Config_MBM_finetune, Config_Generative_Model)
for _cls in PUBLISHED_CLASSES:  # pickled by reference under the original's module name
    _cls.__module__ = "config"

# Fields the original reads that we do not use, with the values its classes set (docs/formats.md lists them all).
PUBLISHED_EXTRAS = {
    Config_MBM_fMRI: {"use_nature_img_loss": False, "img_recon_weight": 0.5, "local_rank": 0},
    Config_MBM_finetune: {"local_rank": 0},
    Config_Generative_Model: {"eval_avg": True, "HW": None, "checkpoint_path": None, "logger": None, "trainer": None},
}


def published_config(cfg: Any, cls: type[_PublishedConfig]) -> _PublishedConfig:
    """`cfg` (a config dataclass or a dict of fields) as the original's config object `cls`: every field it reads,
    in its types (precision 32, not 'fp32')."""
    values = {**PUBLISHED_EXTRAS[cls], **(cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg))}
    if cls is Config_Generative_Model:
        precision = values["precision"]
        values["precision"] = PRECISION_SPELLINGS["fp32" if precision == "auto" else precision][0]
        values["global_pool"] = values.get("conditioner") == "global_pool"  # how the original names its conditioner
        values["accumulate_grad"] = values.pop("accum_iter", 1)  # and its accumulation
    return cls(**values)


def stage_b_conditioner(values: Mapping) -> Any:
    """The conditioner (`dc_ldm.conditioners.CONDITIONERS` name) a stored Stage B config names: `conditioner` in
    ours; in a published file (and ours before it stored one) `global_pool` (and our former `linear_pool`)."""
    if values.get("conditioner") is not None:
        return values["conditioner"]
    if values.get("linear_pool"):
        return "linear_pool"
    return "global_pool" if values.get("global_pool") else "published"
