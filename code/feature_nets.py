"""The networks behind the metrics, loaded only from the local caches: nothing is ever downloaded.

Every loader first checks that its weights file is where the library would read it (torchvision and torch hub
files: `torch.hub.get_dir()/checkpoints`, i.e. $TORCH_HOME/hub/checkpoints; open_clip's CLIP: the Hugging
Face hub cache, $HF_HUB_CACHE or $HF_HOME/hub) and raises `MetricUnavailable` naming that path otherwise;
`eval_metrics.evaluate` reports such a metric under `skipped`. The libraries then read the file with
`weights_only=True` whatever they ask for (`plain_weights_only`): torchvision's and torch-fidelity's loaders ask
for `weights_only=False`, under which a tampered file in the cache would run code.

`FEATURES` says how MindEye's evaluation (Scotti et al. 2023, MedARC-AI/fMRI-reconstruction-NSD
`src/Reconstruction_Metrics.py`; MindEyeV2 `src/final_evaluations.ipynb` runs the same definitions) reads each
network: the side `size` its input is resized to, the normalisation, and the layer (a torchvision
`create_feature_extractor` node name) whose flattened output is compared. A feature network here maps
normalised images (B, 3, size, size) to either a tensor (B, ...) of features or a dict of named layers.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from errors import UnsafeCheckpointError

# (model, preprocess): preprocess maps uint8 (B, 3, H, W) on the evaluation device to the model's input,
# the model (in eval mode) returns logits (B, C)
Classifier = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]

FID_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# what torch.hub.load('facebookresearch/swav:main', 'resnet50') fetches: a ResNet-50 state dict behind "module."
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"
# open_clip's source of OpenAI's ViT-L/14 ("ViT-L-14", pretrained="openai"), newest file name first
CLIP_HF_REPO = "timm/vit_large_patch14_clip_224.openai"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FeatureSpec:
    """How MindEye reads one network: input side, normalisation, compared layer (None: the network's output)."""

    net: str
    layer: str | None
    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# metric -> spec; AlexNet's features.4 and features.11 are the ReLUs after its 2nd and 5th convolutions
FEATURES = {
    "alexnet2": FeatureSpec("alexnet", "features.4", 256),
    "alexnet5": FeatureSpec("alexnet", "features.11", 256),
    "inception": FeatureSpec("inception", "avgpool", 342),
    "clip": FeatureSpec("clip", None, 224, CLIP_MEAN, CLIP_STD),  # the image embedding (encode_image)
    "effnet": FeatureSpec("effnet", "avgpool", 255),
    "swav": FeatureSpec("swav", "avgpool", 224),
}
NETS = tuple(dict.fromkeys(spec.net for spec in FEATURES.values()))


class MetricUnavailable(RuntimeError):
    """A metric cannot run here: weights not in the local cache, a package missing, too few images."""


def cached_weights_path(url: str) -> Path:
    """Where torch hub keeps the file downloaded from `url`: `torch.hub.get_dir()/checkpoints/<file name>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def require_cached(url: str, what: str) -> Path:
    """The cached file of `url`, or MetricUnavailable naming where it was expected."""
    path = cached_weights_path(url)
    if not path.is_file():
        raise MetricUnavailable(
            f"{what} weights not found at {path}: nothing is downloaded here; fetch {url} into that folder "
            "(or point TORCH_HOME at a folder whose hub/checkpoints holds it)"
        )
    return path


# torch.load reads these at every call; the first makes it read plain weights even when asked otherwise
_FORCE_WEIGHTS_ONLY, _FORCE_ANY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def plain_weights_only(path: Path) -> Iterator[None]:
    """Inside, every torch.load reads with weights_only=True (tensors and containers, no code), whatever its caller
    passes; a file holding anything else is UnsafeCheckpointError naming `path`, the file the library reads."""
    saved = {name: os.environ.pop(name, None) for name in (_FORCE_WEIGHTS_ONLY, _FORCE_ANY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    except pickle.UnpicklingError as err:
        reason = next(iter(str(err).splitlines()), "")
        raise UnsafeCheckpointError(
            f"{path}: refused: not a plain weights file, it may have been tampered with; "
            f"delete it and fetch it again ({reason})"
        ) from None
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.environ.get("HF_HOME") or Path(cache_home) / "huggingface").expanduser() / "hub"


def load_vit_h14_classifier(device: torch.device | str = "cpu") -> Classifier:
    """torchvision ViT-H/14 (IMAGENET1K_SWAG_E2E_V1) in eval mode and its own preprocessing, from the local cache."""
    from torchvision.models import ViT_H_14_Weights, vit_h_14

    weights = ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1
    path = require_cached(weights.url, "ViT-H/14 SWAG classifier")
    with plain_weights_only(path):
        model = vit_h_14(weights=weights)  # torchvision reads the cached file and downloads only when it is absent
    transform = weights.transforms()

    def preprocess(batch: torch.Tensor) -> torch.Tensor:
        # through PIL image by image, as the published code did: torchvision's tensor resize differs from
        # PIL's bicubic by up to ~20 grey levels on sharp edges
        images = [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in batch]  # uint8 (3, H, W) each
        return torch.stack([transform(img) for img in images]).to(batch.device)  # (B, 3, 518, 518)

    return model.eval().to(device), preprocess


def load_lpips_alex(device: torch.device | str = "cpu") -> nn.Module:
    """torchmetrics' LPIPS network (AlexNet; x, y (B, 3, H, W) in [-1, 1] -> (B, 1, 1, 1)), from the local cache."""
    from torchvision.models import AlexNet_Weights

    # the linear layers ship inside torchmetrics; only the torchvision backbone would be downloaded
    path = require_cached(AlexNet_Weights.DEFAULT.url, "LPIPS AlexNet backbone (torchvision)")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    with plain_weights_only(path):
        return LearnedPerceptualImagePatchSimilarity(net_type="alex").net.to(device)


def load_fid_metric(fid_model: nn.Module | None) -> nn.Module:
    """torchmetrics' FID on `fid_model` features, or on torch-fidelity's 2048-d InceptionV3 from the local cache."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if fid_model is not None:
        return FrechetInceptionDistance(feature=fid_model, reset_real_features=False)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except ModuleNotFoundError as err:
        raise MetricUnavailable(
            "FID needs the torch-fidelity package (not installed; `pip install torch-fidelity`) and its "
            f"InceptionV3 weights at {cached_weights_path(FID_WEIGHTS_URL)} ({FID_WEIGHTS_URL})"
        ) from err
    path = require_cached(URL_INCEPTION_V3, "FID InceptionV3 (torch-fidelity)")
    with plain_weights_only(path):
        return FrechetInceptionDistance(
            feature=2048, reset_real_features=False, feature_extractor_weights_path=str(path)
        )


def _layers(model: nn.Module, net: str) -> nn.Module:
    """`model` returning {layer: output} for the layers FEATURES reads from `net`, in eval mode."""
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = sorted({spec.layer for spec in FEATURES.values() if spec.net == net})
    # only eval mode runs, so InceptionV3's train graph (its auxiliary head) differing does not matter
    extractor = create_feature_extractor(model.eval(), return_nodes=nodes, suppress_diff_warning=True)
    return extractor.eval().requires_grad_(False)


def _torchvision_net(net: str, what: str) -> nn.Module:
    import torchvision.models as tvm

    builder, weights = {
        "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1),
        "inception": (tvm.inception_v3, tvm.Inception_V3_Weights.DEFAULT),  # keeps transform_input=True
        "effnet": (tvm.efficientnet_b1, tvm.EfficientNet_B1_Weights.DEFAULT),  # IMAGENET1K_V2, resize 255
    }[net]
    with plain_weights_only(require_cached(weights.url, what)):
        model = builder(weights=weights)  # torchvision reads the cached file, downloads only when absent
    return _layers(model, net)


def _swav() -> nn.Module:
    from torchvision.models import resnet50

    path = require_cached(SWAV_URL, "SwAV ResNet-50")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = resnet50()
    # the file also holds SwAV's projection head and prototypes, and no classifier (fc stays random: unused)
    missing = [k for k in model.load_state_dict(state, strict=False).missing_keys if not k.startswith("fc.")]
    if missing:
        raise MetricUnavailable(f"{path} is not SwAV's ResNet-50 checkpoint: {len(missing)} backbone weights missing")
    return _layers(model, "swav")


def _clip() -> nn.Module:
    from huggingface_hub import try_to_load_from_cache

    cache = hf_hub_cache()
    found = [try_to_load_from_cache(CLIP_HF_REPO, name, cache_dir=cache) for name in CLIP_FILES]
    paths = [p for p in found if isinstance(p, str)]  # absent files come back as None or a sentinel
    if not paths:
        raise MetricUnavailable(
            f"CLIP ViT-L/14 (OpenAI) weights not found in {cache / ('models--' + CLIP_HF_REPO.replace('/', '--'))}: "
            f"nothing is downloaded here; fetch {CLIP_FILES[0]} of the Hugging Face repo {CLIP_HF_REPO} into that "
            "cache (or point HF_HOME / HF_HUB_CACHE at a cache that holds it)"
        )
    import open_clip  # slow to import (seconds); only this metric needs it

    # OpenAI's weights were trained with QuickGELU, which open_clip only infers from the "openai" tag
    with plain_weights_only(Path(paths[0])):
        model = open_clip.create_model("ViT-L-14", pretrained=paths[0], force_quick_gelu=True)
    return model.visual.eval().requires_grad_(False)  # what encode_image runs: (B, 3, 224, 224) -> (B, 768)


def load_feature_net(net: str, device: torch.device | str = "cpu") -> nn.Module:
    """The network `net` of FEATURES (alexnet, inception, clip, effnet, swav) in eval mode, from the local cache."""
    names = {"alexnet": "AlexNet", "inception": "InceptionV3", "effnet": "EfficientNet-B1"}
    if net in names:
        model = _torchvision_net(net, f"{names[net]} (torchvision)")
    elif net == "swav":
        model = _swav()
    elif net == "clip":
        model = _clip()
    else:
        raise ValueError(f"unknown feature network {net!r}; expected one of {sorted(NETS)}")
    return model.to(device)
