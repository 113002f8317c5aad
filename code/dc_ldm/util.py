"""Build objects from LDM `config.yaml` sections (`{target: import.path.Class, params: {...}}`), safely.

Only the published config files need this; our own code constructs objects directly. A config file is data
from the internet, so `target` may name only the classes of this package that a published LDM config uses
(the CompVis `ldm.*` paths map onto ours); anything else is refused before any import happens. A config names no
weights file: a `ckpt_path` in any section is ignored (weights load only from the files the flags name, e.g.
`model.ckpt`), and OmegaConf interpolations (`${oc.env:...}` pulls in the environment) are refused.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from bounded import read_yaml
from errors import UserError

log = logging.getLogger("mindvis.dc_ldm")

# Every class a published LDM config may instantiate, by the import path written in the file.
TARGETS = frozenset(
    {
        "dc_ldm.models.diffusion.ddpm.LatentDiffusion",
        "dc_ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "dc_ldm.models.autoencoder.VQModel",
        "dc_ldm.models.autoencoder.VQModelInterface",
        "dc_ldm.models.autoencoder.AutoencoderKL",
        "dc_ldm.modules.encoders.modules.ClassEmbedder",
        "torch.nn.Identity",
    }
)
# The sections of a LatentDiffusion config that are instantiated (a first stage's `lossconfig` is ignored).
MODEL_SECTIONS = ("unet_config", "first_stage_config", "cond_stage_config")


class UnsafeConfigError(UserError):
    """A config names a `target` outside the allow-list."""


def resolve_target(path: str) -> str:
    """The allow-listed import path for `path` (CompVis `ldm.*` -> our `dc_ldm.*`); refuses anything else."""
    name = "dc_" + path if path.startswith("ldm.") else path
    if name not in TARGETS:
        raise UnsafeConfigError(
            f"refused config target {path!r}: only these classes can be built from a config file: {sorted(TARGETS)}"
        )
    return name


def get_obj_from_str(path: str) -> Any:
    """The allow-listed class named by a dotted import path such as 'torch.nn.Identity'."""
    module, _, name = resolve_target(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:  # an allow-listed name that this version lacks: a bug here
        raise ImportError(f"cannot resolve config target {path!r}: {e}") from e


def instantiate_from_config(config: Mapping | DictConfig) -> Any:
    """Instantiate `config["target"]` (allow-listed) with keyword arguments `config["params"]`.

    OmegaConf input is resolved to plain dicts and lists first, so constructors receive ordinary Python containers.
    """
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping) or "target" not in config:
        found = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise KeyError(f"config section needs a 'target' import string (and optional 'params'); got {found}")
    params = dict(config.get("params") or {})
    if params.get("ckpt_path") is not None:  # a weights file named by a config is never read
        log.warning(
            "%s: ignoring ckpt_path %r of its config section (weights load only from the files flags name)",
            config["target"],
            params["ckpt_path"],
        )
        params["ckpt_path"] = None
    return get_obj_from_str(config["target"])(**params)


# The sizes an LDM config.yaml sets, bounded well above any published or plausible model (label2img: 1,000
# timesteps, 192 channels, 2 blocks per level, multipliers up to 5, an 8,192-code first stage), so that a number in
# a 1 KB file cannot make us allocate gigabytes; any other number at most 10^6.
SIZE_LIMITS = {
    "timesteps": 10_000,
    "channels": 64,
    "num_res_blocks": 16,
    "channel_mult": 16,
    "ch_mult": 16,
    "attention_resolutions": 1024,
    "n_embed": 65_536,
    "embed_dim": 4096,
    "image_size": 1024,
    "resolution": 2048,
    "ch": 4096,
    "model_channels": 4096,
    "in_channels": 64,
    "out_channels": 64,
    "z_channels": 64,
    "out_ch": 64,
    "in_chans": 64,
    "context_dim": 8192,
    "n_classes": 100_000,
    "num_heads": 128,
    "num_head_channels": 4096,
    "transformer_depth": 64,
}


def load_ldm_config(path: str | Path) -> dict:
    """Read an LDM `config.yaml` as plain containers and check every target it would build, naming file and key.

    Returns the `model` section ({target, params}); nothing is imported or built here.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LDM config not found: {path} (see pretrains/README.md)")
    try:
        read_yaml(path)  # bounded first: OmegaConf copies every shared reference it meets
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (YAMLError, OmegaConfBaseException, ValueError) as e:
        raise UserError(f"{path}: not a readable LDM config.yaml: {' '.join(str(e).split())}") from None
    for key, value in _leaves(config):
        name = key.rsplit(".", 1)[-1].split("[")[0]
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and not abs(value) <= SIZE_LIMITS.get(name, 10**6)
        ):
            raise UserError(
                f"{path}: key '{key}' is {value}, above {SIZE_LIMITS.get(name, 10**6):,}: no LDM of this kind is "
                "that large (a size from a file is bounded before any memory is taken)"
            )
        if isinstance(value, str) and "${" in value:
            raise UnsafeConfigError(
                f"{path}: key '{key}': interpolations such as {value!r} are not read from a "
                "config file (they can pull in environment variables); write the value itself"
            )
    model = config.get("model", config) if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict) or "target" not in model:
        raise UserError(f"{path}: expected a 'model' section with 'target' and 'params' (the label2img layout)")
    _check_target(path, "model.target", model["target"])
    for key in MODEL_SECTIONS:
        section = model["params"].get(key)
        if not isinstance(section, dict) or "target" not in section:
            raise UserError(f"{path}: 'model.params.{key}' must be a section with a 'target'")
        _check_target(path, f"model.params.{key}.target", section["target"])
    return model


def _leaves(tree: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested dicts and lists."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, tree


def _check_target(path: Path, key: str, target: Any) -> None:
    try:
        resolve_target(str(target))
    except UnsafeConfigError as e:
        raise UnsafeConfigError(f"{path}: key '{key}': {e}") from None
