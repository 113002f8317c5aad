"""Build objects from LDM `config.yaml` sections (`{target: import.path.Class, params: {...}}`).

Only the published config files need this; our own code constructs objects directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn


def get_obj_from_str(path: str) -> Any:
    """Return the object named by a dotted import path such as 'torch.nn.Identity'."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"target {path!r} is not a dotted import path like 'package.module.Class'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot resolve config target {path!r}: {e}") from e


def instantiate_from_config(config: Mapping | DictConfig) -> Any:
    """Instantiate `config["target"]` with keyword arguments `config["params"]` (dict or OmegaConf).

    OmegaConf input is resolved to plain dicts and lists first, so constructors receive ordinary Python containers.
    """
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping) or "target" not in config:
        found = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise KeyError(f"config section needs a 'target' import string (and optional 'params'); got {found}")
    return get_obj_from_str(config["target"])(**(config.get("params") or {}))


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())
