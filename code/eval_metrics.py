"""The reconstruction metrics of MinD-Vis: pair-wise identification, n-way top-k classification, FID.

Images are (N, H, W, 3), uint8 or float in [0, 255], numpy or torch; the ground truth is the test stimuli
and `samples` (S, N, H, W, 3) holds S reconstructions of each. Definitions follow the published
`eval_metrics.py`, computed without its per-pair Python loops:

- pair-wise identification (MSE, PCC, SSIM, LPIPS): the full (S, N, N) score matrix of every
  reconstruction against every ground truth, in float64 and batched through networks, then for each
  reconstruction i the fraction of j != i whose score is worse than that of its own ground truth;
- n-way top-k: the ground-truth class is the classifier's argmax on the ground truth; every trial picks
  n - 1 other classes, success if the ground-truth class is among the k most probable of the n. All
  trials come from one seeded CPU generator, so they do not depend on the device or the batch size;
- FID: torchmetrics' Frechet distance on 2048-d Inception features (torch-fidelity's extractor) of each
  sample set against the ground truth, averaged over sets (the published wrapper used 64-d features).

Networks load only from the local torch hub cache (`torch.hub.get_dir()/checkpoints`); a metric whose
weights (or package) are missing is reported under `skipped` with the reason, and nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

log = logging.getLogger("mindvis.eval_metrics")

Images = np.ndarray | torch.Tensor
# (model, preprocess): preprocess maps uint8 (B, 3, H, W) on the evaluation device to the model's input,
# the model (in eval mode) returns logits (B, C)
Classifier = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]

# Pair-wise scores and whether lower is better. "mse_uint8" is the published MSE as it actually ran:
# `np.square(a - b).mean()` on uint8 arrays wraps around modulo 256 (kept to reproduce published numbers).
PAIRWISE = {"mse": True, "pcc": False, "ssim": False, "lpips": True, "mse_uint8": True}
METRICS = (*PAIRWISE, "n_way", "fid")
DEFAULT_METRICS = ("mse", "pcc", "ssim", "lpips", "n_way", "fid")
FID_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
SSIM_WIN = 7  # skimage's default window (uniform filter, sample covariance)
TRIAL_KEYS_PER_CHUNK = 2**24  # bounds the memory of the random keys behind the n-way draws


class EvalResult(TypedDict):
    """`scores`: metric name -> value; `skipped`: metric name -> why it could not be computed."""

    scores: dict[str, float]
    skipped: dict[str, str]


class MetricUnavailable(RuntimeError):
    """A metric cannot run here: weights not in the local cache, a package missing, too few images."""


def cached_weights_path(url: str) -> Path:
    """Where torch hub keeps the file downloaded from `url`: `torch.hub.get_dir()/checkpoints/<file name>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _require_cached(url: str, what: str) -> Path:
    path = cached_weights_path(url)
    if not path.is_file():
        raise MetricUnavailable(
            f"{what} weights not found at {path}: nothing is downloaded here; fetch {url} into that folder "
            "(or point TORCH_HOME at a folder whose hub/checkpoints holds it)"
        )
    return path


def load_vit_h14_classifier(device: torch.device | str = "cpu") -> Classifier:
    """torchvision ViT-H/14 (IMAGENET1K_SWAG_E2E_V1) in eval mode and its own preprocessing, from the local cache."""
    from torchvision.models import ViT_H_14_Weights, vit_h_14

    weights = ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1
    _require_cached(weights.url, "ViT-H/14 SWAG classifier")
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
    _require_cached(AlexNet_Weights.DEFAULT.url, "LPIPS AlexNet backbone (torchvision)")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex").net.to(device)


def _fid_metric(fid_model: nn.Module | None) -> nn.Module:
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
    path = _require_cached(URL_INCEPTION_V3, "FID InceptionV3 (torch-fidelity)")
    return FrechetInceptionDistance(feature=2048, reset_real_features=False, feature_extractor_weights_path=str(path))


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.uint8 else images.round().clamp(0, 255).to(torch.uint8)


def _box(x: torch.Tensor) -> torch.Tensor:
    # means over the SSIM windows lying fully inside the image (separably): skimage's uniform-filtered map after
    # it crops (win - 1) // 2 pixels off every border, so the reflected border values never enter
    return F.avg_pool2d(F.avg_pool2d(x, (1, SSIM_WIN), stride=1), (SSIM_WIN, 1), stride=1)


def _ssim_matrix(recon: torch.Tensor, gt: torch.Tensor, batch_size: int) -> torch.Tensor:
    """skimage's `structural_similarity(r, g, data_range=255, channel_axis=-1)` for every pair -> (M, N)."""
    if min(gt.shape[1:3]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {tuple(gt.shape[1:3])}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov_norm = SSIM_WIN**2 / (SSIM_WIN**2 - 1)
    x, y = recon.permute(0, 3, 1, 2).double(), gt.permute(0, 3, 1, 2).double()  # (M, 3, H, W), (N, 3, H, W)
    ux, uy = _box(x), _box(y)  # (M, 3, h, w), (N, 3, h, w)
    vx, vy = cov_norm * (_box(x * x) - ux * ux), cov_norm * (_box(y * y) - uy * uy)
    # one reconstruction against a block of ground truths at a time; on CPU small blocks stay in cache (3x faster)
    cols = batch_size if x.device.type != "cpu" else min(batch_size, 8)
    out = torch.empty(len(x), len(y), dtype=torch.float64, device=x.device)
    for i in range(len(x)):
        xi, uxi, vxi = x[i], ux[i], vx[i]  # (3, ., .)
        for j in range(0, len(y), cols):
            yj, uyj, vyj = y[j : j + cols], uy[j : j + cols], vy[j : j + cols]  # (b, 3, ., .)
            p = uxi * uyj  # (b, 3, h, w)
            # skimage's (2 ux uy + C1)(2 vxy + C2) / ((ux^2 + uy^2 + C1)(vx + vy + C2)), in place to save memory
            num = _box(xi * yj).sub_(p).mul_(2 * cov_norm).add_(c2).mul_(p.mul_(2).add_(c1))
            den = (uxi * uxi + uyj * uyj + c1).mul_(vxi + vyj + c2)
            out[i, j : j + cols] = num.div_(den).mean((-2, -1)).mean(-1)  # per channel, then over channels
    return out


def _mse_uint8_matrix(recon: torch.Tensor, gt: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The published MSE on uint8 images, difference and square both wrapping modulo 256 -> (M, N)."""
    if recon.dtype != torch.uint8 or gt.dtype != torch.uint8:
        raise ValueError("mse_uint8 reproduces the published uint8 arithmetic and needs uint8 images")
    x, y = recon.flatten(1), gt.flatten(1)
    rows = max(1, batch_size // len(y))
    out = []
    for xi in x.split(rows):
        d = xi[:, None] - y[None]  # (b, N, P) uint8, wraps as numpy's uint8 subtraction did
        out.append((d * d).sum(-1, dtype=torch.int64).double() / x.shape[1])
    return torch.cat(out)


@torch.no_grad()
def _lpips_matrix(recon: torch.Tensor, gt: torch.Tensor, lpips_model: nn.Module, batch_size: int) -> torch.Tensor:
    """LPIPS of every pair, `batch_size` pairs per network call -> (M, N)."""

    def to_input(images: torch.Tensor) -> torch.Tensor:  # as the published wrapper: x / 127.5 - 1, float32
        return (images.permute(0, 3, 1, 2).double() / 127.5 - 1.0).float()

    m, n = len(recon), len(gt)
    rec_idx = torch.arange(m, device=recon.device).repeat_interleave(n)  # pair p = (p // n, p % n)
    gt_idx = torch.arange(n, device=recon.device).repeat(m)
    out = [
        lpips_model(to_input(recon[r]), to_input(gt[g])).reshape(-1).double()
        for r, g in zip(rec_idx.split(batch_size), gt_idx.split(batch_size), strict=True)
    ]
    return torch.cat(out).view(m, n)


def score_matrix(
    metric: str,
    recon: torch.Tensor,
    gt: torch.Tensor,
    lpips_model: nn.Module | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Score of every reconstruction (M, H, W, 3) against every ground truth (N, H, W, 3) -> float64 (M, N)."""
    if metric == "mse":
        x, y = recon.flatten(1).double(), gt.flatten(1).double()  # (M, P), (N, P)
        # |x - y|^2 expanded into a matmul; exact for uint8 inputs (integer sums stay below 2^53)
        return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T) / x.shape[1]
    if metric == "pcc":
        x, y = recon.flatten(1).double(), gt.flatten(1).double()
        x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        r = (x @ y.T) / (x.norm(dim=1)[:, None] * y.norm(dim=1)[None])
        return r.clamp(-1.0, 1.0)  # np.corrcoef clips the same way
    if metric == "ssim":
        return _ssim_matrix(recon, gt, batch_size)
    if metric == "mse_uint8":
        return _mse_uint8_matrix(recon, gt, batch_size)
    if metric == "lpips":
        if lpips_model is None:
            raise ValueError("score_matrix('lpips') needs an lpips_model (see load_lpips_alex)")
        return _lpips_matrix(recon, gt, lpips_model, batch_size)
    raise ValueError(f"unknown pair-wise metric {metric!r}; expected one of {tuple(PAIRWISE)}")


def identification_accuracy(scores: torch.Tensor, lower_is_better: bool) -> torch.Tensor:
    """Scores (..., N, N) [recon i, gt j] -> (..., N): share of j != i where gt i scores better than gt j."""
    own = scores.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # (..., N, 1)
    wins = own < scores if lower_is_better else own > scores  # strict, so the diagonal never counts
    return wins.sum(-1).double() / (scores.shape[-1] - 1)


def draw_n_way_trials(num_items: int, num_classes: int, n_way: int, num_trials: int, seed: int = 0) -> torch.Tensor:
    """Per item and trial, n_way - 1 distinct picks among num_classes - 1 "other" slots -> int64 (M, T, n - 1)."""
    if not 1 < n_way <= num_classes:
        raise ValueError(f"n_way must be in [2, num_classes={num_classes}], got {n_way}")
    generator = torch.Generator().manual_seed(seed)
    # uniform keys + top-k = a uniform draw without replacement; the CPU generator fills tensors in order,
    # so splitting the items into chunks (to bound memory) yields the same draws as one call
    per_chunk = max(1, TRIAL_KEYS_PER_CHUNK // (num_trials * (num_classes - 1)))
    picks = []
    for start in range(0, num_items, per_chunk):
        size = min(per_chunk, num_items - start)
        keys = torch.rand(size, num_trials, num_classes - 1, generator=generator, dtype=torch.float64)
        picks.append(keys.topk(n_way - 1, dim=-1).indices)
    return torch.cat(picks) if picks else torch.empty(0, num_trials, n_way - 1, dtype=torch.long)


def n_way_top_k_accuracy(
    probs: torch.Tensor, gt_class: torch.Tensor, n_way: int = 50, num_trials: int = 1000, top_k: int = 1, seed: int = 0
) -> torch.Tensor:
    """Probabilities (M, C), classes (M,) -> (M,): share of trials where gt_class is in the top k of n."""
    m, c = probs.shape
    picks = draw_n_way_trials(m, c, n_way, num_trials, seed).to(probs.device)  # (M, T, n - 1)
    gt_class = gt_class.to(probs.device)
    classes = picks + (picks >= gt_class[:, None, None]).long()  # slot -> class, stepping over the item's own
    p_other = probs.gather(1, classes.flatten(1)).view_as(classes)  # (M, T, n - 1)
    p_own = probs.gather(1, gt_class[:, None])[:, :, None]  # (M, 1, 1)
    # strictly higher only: ties go to the ground truth, as argmax's first index did in the published code
    beaten_by = (p_other > p_own).sum(-1)  # (M, T)
    return (beaten_by < top_k).double().mean(-1)


@torch.no_grad()
def class_probabilities(images: torch.Tensor, classifier: Classifier, batch_size: int = 64) -> torch.Tensor:
    """Softmax of the classifier (on the images' device) for images (N, H, W, 3) -> float32 (N, C)."""
    model, preprocess = classifier
    out = [
        model(preprocess(_as_uint8(batch).permute(0, 3, 1, 2))).float().softmax(-1)
        for batch in images.split(batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def fid(gt: torch.Tensor, samples: torch.Tensor, fid_model: nn.Module | None = None, batch_size: int = 64) -> float:
    """FID of each sample set (S, N, H, W, 3) against the ground truth (N, H, W, 3), averaged over sets."""
    metric = _fid_metric(fid_model).to(gt.device)

    def add(images: torch.Tensor, real: bool) -> None:
        for batch in _as_uint8(images).permute(0, 3, 1, 2).split(batch_size):
            metric.update(batch, real=real)

    add(gt, real=True)
    values = []
    for recon in samples:
        add(recon, real=False)
        values.append(metric.compute().item())
        metric.reset()  # keeps the real features (reset_real_features=False)
    return float(np.mean(values))


def _check_images(gt_images: Images, samples: Images) -> tuple[torch.Tensor, torch.Tensor]:
    gt, samples = torch.as_tensor(gt_images), torch.as_tensor(samples)
    if samples.ndim == 4:
        samples = samples[None]
    if gt.ndim != 4 or gt.shape[-1] != 3:
        raise ValueError(f"gt_images must be (N, H, W, 3), got shape {tuple(gt.shape)}")
    if samples.ndim != 5 or samples.shape[1:] != gt.shape:
        raise ValueError(f"samples must be (S, *{tuple(gt.shape)}) like gt_images, got shape {tuple(samples.shape)}")
    for name, t in (("gt_images", gt), ("samples", samples)):
        if t.dtype != torch.uint8 and not t.is_floating_point():
            raise ValueError(f"{name} must be uint8 or float in [0, 255], got {t.dtype}")
        if t.is_floating_point() and (t.min() < 0 or t.max() > 255):
            raise ValueError(f"{name} must hold values in [0, 255], got [{t.min().item()}, {t.max().item()}]")
    return gt, samples


def _score_names(metric: str, top_k: int) -> list[str]:
    return [f"top-{top_k}-class", f"top-{top_k}-class (max)"] if metric == "n_way" else [metric]


def evaluate(
    gt_images: Images,
    samples: Images,
    metrics: Sequence[str] = DEFAULT_METRICS,
    classifier: Classifier | None = None,
    lpips_model: nn.Module | None = None,
    fid_model: nn.Module | None = None,
    n_way: int = 50,
    num_trials: int = 1000,
    top_k: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
    batch_size: int = 64,
) -> EvalResult:
    """Score samples (S, N, H, W, 3) against gt_images (N, H, W, 3) -> {"scores": ..., "skipped": ...}."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names from {METRICS}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    gt, samples = (t.to(device) for t in _check_images(gt_images, samples))
    num_sets, n = samples.shape[:2]
    result = EvalResult(scores={}, skipped={})
    for metric in metrics:
        try:
            if n < 2:
                raise MetricUnavailable(f"needs at least 2 test images, got {n}")
            if metric in PAIRWISE:
                model = None
                if metric == "lpips":
                    model = lpips_model.to(device) if lpips_model is not None else load_lpips_alex(device)
                scores = score_matrix(metric, samples.flatten(0, 1), gt, model, batch_size)  # (S * N, N)
                accuracy = identification_accuracy(scores.view(num_sets, n, n), PAIRWISE[metric])  # (S, N)
                result["scores"][metric] = accuracy.mean(1).mean().item()
            elif metric == "n_way":
                if classifier is None:
                    clf = load_vit_h14_classifier(device)
                else:
                    clf = (classifier[0].to(device), classifier[1])
                gt_class = class_probabilities(gt, clf, batch_size).argmax(-1)  # (N,)
                probs = class_probabilities(samples.flatten(0, 1), clf, batch_size)  # (S * N, C)
                accuracy = n_way_top_k_accuracy(probs, gt_class.repeat(num_sets), n_way, num_trials, top_k, seed)
                per_set = accuracy.view(num_sets, n).mean(1)
                result["scores"][f"top-{top_k}-class"] = per_set.mean().item()
                result["scores"][f"top-{top_k}-class (max)"] = per_set.max().item()
            else:
                result["scores"]["fid"] = fid(gt, samples, fid_model, batch_size)
        except MetricUnavailable as err:
            log.warning("metric %s skipped: %s", metric, err)
            result["skipped"].update(dict.fromkeys(_score_names(metric, top_k), str(err)))
    return result
