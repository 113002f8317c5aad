"""An n-way classifier from a file: the stand-in for ViT-H/14 when the images are not ImageNet's.

The n-way metric needs a classifier over the data set's classes. `--classifier FILE` (Stage B, gen_eval,
evaluate.py) reads one from a file that describes its architecture as data, so that loading it runs no code:

    {"format": "mindvis-classifier/1",
     "layers": [["Conv2d", {"in_channels": 3, ...}], ["ReLU", {}], ...]   # an nn.Sequential of allow-listed layers
       or "timm_model": "resnet50", "model_args": {"num_classes": 200}     # an architecture timm registers
     "state_dict": {...}, "input_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
     "class_names": ["...", ...]}                                          # optional

It is read with the restricted unpickler (`checkpoint.load_checkpoint`); layer types come from an allow-list of
`torch.nn` classes and every argument must be a number, string, boolean or a list of them. A timm model is a plain
architecture name (no `hf-hub:` or `local-dir:` source, which makes timm reach the network or read a folder, and no
pretrained tag) with architecture arguments from TIMM_ARGS only (not create_model's own options, which load a
checkpoint or point at a cache). Images are resized to `input_size` (bilinear, antialiased), scaled to [0, 1] and
normalised with `mean` and `std`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bounded import short_repr
from checkpoint import check_finite, load_checkpoint, save_checkpoint
from errors import CheckpointError, one_line
from feature_nets import Classifier

FORMAT = "mindvis-classifier/1"
LAYERS = {
    name: getattr(nn, name)
    for name in (
        "Conv2d",
        "BatchNorm2d",
        "GroupNorm",
        "LayerNorm",
        "ReLU",
        "GELU",
        "SiLU",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        "Flatten",
        "Linear",
        "Dropout",
        "Identity",
    )
}


def build_sequential(layers: Sequence[Sequence]) -> nn.Sequential:
    """nn.Sequential from [[layer type, {argument: value}], ...], types from the allow-list LAYERS."""
    modules = []
    for i, entry in enumerate(layers):
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise CheckpointError(f"layer {i} must be [type, {{arguments}}], got {entry!r}")
        name, kwargs = entry
        if name not in LAYERS:
            raise CheckpointError(f"layer {i}: type {name!r} is not one of {sorted(LAYERS)}")
        if not all(_plain(v) for v in kwargs.values()):
            raise CheckpointError(f"layer {i} ({name}): arguments must be numbers, strings or lists, got {kwargs}")
        modules.append(LAYERS[name](**kwargs))
    return nn.Sequential(*modules)


# The arguments of timm architectures a classifier file may set; every other create_model keyword is refused.
TIMM_ARGS = frozenset(
    {
        "num_classes",
        "in_chans",
        "global_pool",
        "drop_rate",
        "drop_path_rate",
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "class_token",
        "qkv_bias",
        "output_stride",
    }
)


def build_timm(name: Any, args: Any) -> nn.Module:
    """The timm architecture registered as `name` (a plain name) built with `args` from TIMM_ARGS, random weights."""
    import timm

    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+", name) and timm.is_model(name)):
        raise CheckpointError(
            f"timm_model must be the plain name of a timm architecture (timm.list_models(); no "
            f"'hf-hub:' or 'local-dir:' source, no pretrained tag), got {name!r}"
        )
    if not isinstance(args, dict) or not all(_plain(v) for v in args.values()):
        raise CheckpointError("model_args must map names to numbers, strings or lists")
    refused = sorted(set(args) - TIMM_ARGS)
    if refused:
        raise CheckpointError(
            f"model_args {refused} are not allowed; a classifier file sets only the architecture "
            f"arguments {sorted(TIMM_ARGS)}"
        )
    return timm.create_model(name, pretrained=False, **args)


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _build(spec: dict) -> nn.Module:
    if "layers" in spec:
        return build_sequential(spec["layers"])
    return build_timm(spec.get("timm_model"), spec.get("model_args", {}))


MAX_INPUT_SIZE = 1024  # ViT-H/14 reads 224 pixels; a larger claim only costs memory


def _preprocessing(spec: dict) -> tuple[int, list[float], list[float]]:
    """The file's input size, mean and std, checked: a whole size up to MAX_INPUT_SIZE, three finite means and three
    finite standard deviations above 0 (a zero std turns every image into inf, and every score into a tie)."""
    size, mean, std = spec["input_size"], spec["mean"], spec["std"]
    if not (type(size) is int and 1 <= size <= MAX_INPUT_SIZE):
        raise CheckpointError(f"input_size must be a whole number from 1 to {MAX_INPUT_SIZE}, got {short_repr(size)}")
    for name, values in (("mean", mean), ("std", std)):
        ok = isinstance(values, list | tuple) and len(values) == 3
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not ok or (name == "std" and min(values) <= 0):
            rule = "three finite numbers above 0" if name == "std" else "three finite numbers"
            raise CheckpointError(f"{name} must be {rule} (one per colour channel), got {short_repr(values)}")
    return size, [float(v) for v in mean], [float(v) for v in std]


MAX_ACTIVATION = 2**26  # values of one layer's output for one image: a ResNet-50 at 1,024 pixels needs 2^24
MAX_CLASSES = 100_000


def _num_classes(model: nn.Module, size: int) -> int:
    """The class count of a classifier on the meta device (one image through it, no memory), its layers' outputs
    checked to stay below MAX_ACTIVATION values (a pooling or padding from the file can ask for gigabytes)."""
    largest = []
    hooks = [m.register_forward_hook(lambda m, i, out: largest.append(out.numel())) for m in model.modules()]
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    if max(largest, default=0) > MAX_ACTIVATION:
        raise CheckpointError(
            f"a layer's output holds {max(largest):,} values for one image, more than {MAX_ACTIVATION:,}; "
            "a classifier's layers are sized for images"
        )
    if out.ndim != 2 or not 2 <= out.shape[1] <= MAX_CLASSES:
        raise CheckpointError(
            f"the classifier's output is {list(out.shape)}, not (1, classes) with 2 to {MAX_CLASSES:,}"
        )
    return int(out.shape[1])


def save_classifier_file(
    path: str | os.PathLike,
    layers: Sequence[Sequence],
    model: nn.Module,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a classifier built by `build_sequential(layers)` in the file format above (atomically)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    spec = {
        "format": FORMAT,
        "layers": [[n, dict(kw)] for n, kw in layers],
        "state_dict": state,
        "input_size": int(input_size),
        "mean": list(mean),
        "std": list(std),
    }
    if class_names is not None:
        spec["class_names"] = list(class_names)
    return save_checkpoint(spec, path)


def load_classifier_file(path: str | os.PathLike, device: torch.device | str = "cpu") -> Classifier:
    """The classifier of a file (format above) in eval mode on `device`, and its preprocessing for uint8 images."""
    spec = load_checkpoint(path)
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or "state_dict" not in spec:
        raise CheckpointError(
            f"{path}: not a classifier file (expected a dict with 'format': '{FORMAT}', "
            "'layers' or 'timm_model', 'state_dict', 'input_size', 'mean', 'std')"
        )
    try:
        size, mean, std = _preprocessing(spec)
        state = spec["state_dict"]
        if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
            raise CheckpointError("state_dict must map names to tensors")
        check_finite(state, "state_dict")  # NaN weights make every score a tie, and ties were wins
        with torch.device("meta"):  # no memory yet: the file's tensors must fit the architecture it names
            _build(spec).load_state_dict(state, assign=True)  # names and shapes first; copies nothing
            num_classes = _num_classes(_build(spec), size)  # a second probe: the first now holds the file's tensors
        model = _build(spec)
        model.load_state_dict(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: the classifier cannot be built from this file: {one_line(e)}") from None
    model = model.to(device).eval()
    model.num_classes = num_classes  # the n in n-way
    shift = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    scale = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        x = images.float()  # uint8 (B, 3, H, W)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x / 255.0 - shift) / scale

    return model, preprocess
