"""The reconstruction metrics: MinD-Vis's (pair-wise identification, n-way top-k, FID) and MindEye's suite.

Images are (N, H, W, 3), uint8 or float in [0, 255], numpy or torch; the ground truth is the test stimuli
and `samples` (S, N, H, W, 3) holds S reconstructions of each. Scores over several sample sets are means over
the sets. MinD-Vis's definitions follow its published `eval_metrics.py`, without its per-pair Python loops:

- pair-wise identification (MSE, PCC, SSIM, LPIPS): the full (S, N, N) score matrix of every
  reconstruction against every ground truth, in float64 and batched through networks, then for each
  reconstruction i the fraction of j != i whose score is worse than that of its own ground truth;
- n-way top-k: the ground-truth class is the classifier's argmax on the ground truth; every trial picks
  n - 1 other classes, success if the ground-truth class is among the k most probable of the n. All
  trials come from one seeded CPU generator, so they do not depend on the device or the batch size. We compare
  logits, not the published float32 softmax probabilities, which underflow to 0 for a confident classifier and
  tie: the original gave every tie to the ground truth (a win), we count a tie as its expected outcome and
  report the number of ties (`tie_rule="published"` keeps the original's arithmetic, for its protocol only;
  docs/defects.md #15);
- FID: torchmetrics' Frechet distance on 2048-d Inception features (torch-fidelity's extractor) of each
  sample set against the ground truth, averaged over sets (the published wrapper used 64-d features).

MindEye's eight (`MINDEYE_METRICS`, group name "mindeye"; MedARC-AI/fMRI-reconstruction-NSD
`src/Reconstruction_Metrics.py`, MindEyeV2 `src/final_evaluations.ipynb`) see every image as MindEye does
(`mindeye_view`: 256x256, then the metric's side, bilinear without antialiasing, values in [0, 1]):

- pixcorr: Pearson correlation of each reconstruction's pixels with its own image's, at 425x425;
- ssim_mindeye: SSIM of each reconstruction with its own image, greyscale (skimage's rgb2gray) at 425x425,
  Gaussian window (sigma 1.5, 11 taps), population covariance, data range 1 (skimage's settings);
- alexnet2, alexnet5, inception, clip: two-way identification on network features (`feature_nets.FEATURES`):
  for each reconstruction, the fraction of other images whose features correlate less with its features
  than its own image's do (chance 0.5);
- effnet, swav: mean correlation distance (1 - Pearson r) between the features of each reconstruction and
  of its own image (lower is better).

Every score that is a mean over test items comes with its item scores and a 95% bootstrap interval over the
items (`intervals.py`: the samples of one item resampled together); FID, a statistic of the whole set, has none.

Networks load only from the local caches (`feature_nets`); a metric whose weights (or package) are missing is
reported under `skipped` with the reason and the path it expected, and nothing is downloaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from correlation import pearson_matrix, row_pearson, unit_rows
from feature_nets import (
    FEATURES,
    Classifier,
    FeatureSpec,
    MetricUnavailable,
    load_feature_net,
    load_fid_metric,
    load_lpips_alex,
    load_vit_h14_classifier,
)
from intervals import bootstrap_interval, format_interval, max_over_sets_interval

log = logging.getLogger("mindvis.eval_metrics")

Images = np.ndarray | torch.Tensor

# Pair-wise scores and whether lower is better. "mse_uint8" is the published MSE as it actually ran:
# `np.square(a - b).mean()` on uint8 arrays wraps around modulo 256 (kept to reproduce published numbers).
PAIRWISE = {"mse": True, "pcc": False, "ssim": False, "lpips": True, "mse_uint8": True}
MINDEYE_METRICS = ("pixcorr", "ssim_mindeye", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")
METRICS = (*PAIRWISE, "n_way", "fid", *MINDEYE_METRICS)
DEFAULT_METRICS = ("mse", "pcc", "ssim", "lpips", "n_way", "fid")
METRIC_GROUPS = {"mindeye": MINDEYE_METRICS}
TWO_WAY = ("alexnet2", "alexnet5", "inception", "clip")  # feature correlations, identification as PAIRWISE
DISTANCES = ("effnet", "swav")  # feature correlation distance to the own image only
LOWER_IS_BETTER = frozenset({"fid", *DISTANCES})  # every other score is an accuracy or a similarity
SSIM_WIN = 7  # skimage's default window (uniform filter, sample covariance)
TIE_RULES = ("split", "published")  # how n-way accuracy treats ties (n_way_top_k_accuracy)
TRIAL_KEYS_PER_CHUNK = 2**24  # bounds the memory of the random keys behind the n-way draws
MINDEYE_SIZE = 256  # both MindEye notebooks bring every image to 256x256 before any metric
MINDEYE_PIXEL_SIZE = 425  # PixCorr and SSIM compare images at NSD's stimulus size
MINDEYE_SSIM_SIGMA, MINDEYE_SSIM_TRUNCATE = 1.5, 3.5  # skimage's gaussian_weights=True: an 11-tap window
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


class EvalResult(TypedDict):
    """What `evaluate` returns, each keyed by score name.

    `scores`: the value; `intervals`: its 95% bootstrap interval [low, high] over test items (None for FID, a
    statistic of the whole set with no item scores; refitting it on resampled sets would cost a 2048-d Frechet
    distance per resample, and with duplicated images); `per_item`: the N item scores (each the mean over the
    item's samples) of every score that is a mean over items; `ties`: n-way trials decided by a tie (expected 0);
    `skipped`: why a score could not be computed.
    """

    scores: dict[str, float]
    intervals: dict[str, list[float] | None]
    per_item: dict[str, list[float]]
    ties: dict[str, int]
    skipped: dict[str, str]


def expand_metrics(names: Sequence[str]) -> list[str]:
    """Metric names with group names ("mindeye") expanded, in order, each once; ValueError names unknown ones."""
    unknown = [m for m in names if m not in METRICS and m not in METRIC_GROUPS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names from {METRICS} or groups {tuple(METRIC_GROUPS)}")
    expanded = [m for name in names for m in METRIC_GROUPS.get(name, (name,))]
    return list(dict.fromkeys(expanded))


def chance_level(score: str, n_way: int = 50) -> float | None:
    """A score's expected value for reconstructions unrelated to their images, where defined: 0.5 or k / n."""
    if score in PAIRWISE or score in TWO_WAY:
        return 0.5
    top_k = re.fullmatch(r"top-(\d+)-class( \(max\))?", score)  # n-way top-k (the max over sets too)
    return int(top_k[1]) / n_way if top_k else None


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
    # one reconstruction against a block of ground truths at a time; on CPU small blocks stay in cache (several
    # times faster)
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
        return pearson_matrix(recon.double(), gt.double()).clamp(-1.0, 1.0)  # np.corrcoef clips the same way
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
    logits: torch.Tensor,
    gt_class: torch.Tensor,
    n_way: int = 50,
    num_trials: int = 1000,
    top_k: int = 1,
    seed: int = 0,
    tie_rule: str = "split",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (M, C), classes (M,) -> accuracy (M,), the share of trials where gt_class is in the top k of n, and
    ties (M,), the number of trials where the outcome hangs on a tie with a distractor at the k-th place.

    tie_rule "split" compares the logits, where no float32 softmax underflow can create a tie, and counts a tie as
    its expected outcome when broken at random (the share of the tied places within the top k); "published" is
    the original's arithmetic: float32 softmax probabilities compared, every tie a win for the ground truth.
    """
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
    scores = logits.float().softmax(-1) if tie_rule == "published" else logits
    m, c = scores.shape
    picks = draw_n_way_trials(m, c, n_way, num_trials, seed).to(scores.device)  # (M, T, n - 1)
    gt_class = gt_class.to(scores.device)
    classes = picks + (picks >= gt_class[:, None, None]).long()  # slot -> class, stepping over the item's own
    other = scores.gather(1, classes.flatten(1)).view_as(classes)  # (M, T, n - 1)
    own = scores.gather(1, gt_class[:, None])[:, :, None]  # (M, 1, 1)
    beaten_by, tied = (other > own).sum(-1), (other == own).sum(-1)  # (M, T) each
    ties = ((beaten_by < top_k) & (beaten_by + tied >= top_k)).sum(-1)
    if tie_rule == "published":  # as argmax's first index did in the published code
        return (beaten_by < top_k).double().mean(-1), ties
    # the own class takes one of the tied places beaten_by + 1 ... beaten_by + tied + 1 with equal chance
    wins = ((top_k - beaten_by).double() / (tied + 1)).clamp(0.0, 1.0)
    return wins.mean(-1), ties


@torch.no_grad()
def class_logits(images: torch.Tensor, classifier: Classifier, batch_size: int = 64) -> torch.Tensor:
    """The classifier's logits (on the images' device) for images (N, H, W, 3) -> float32 (N, C)."""
    model, preprocess = classifier
    return torch.cat([model(preprocess(_as_uint8(b).permute(0, 3, 1, 2))).float() for b in images.split(batch_size)])


@torch.no_grad()
def fid(gt: torch.Tensor, samples: torch.Tensor, fid_model: nn.Module | None = None, batch_size: int = 64) -> float:
    """FID of each sample set (S, N, H, W, 3) against the ground truth (N, H, W, 3), averaged over sets."""
    metric = load_fid_metric(fid_model).to(gt.device)

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


def mindeye_view(images: torch.Tensor, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images (B, H, W, 3) in [0, 255] -> (B, 3, size, size) in [0, 1], resized as MindEye's evaluation does."""
    x = images.permute(0, 3, 1, 2).to(dtype) / 255
    # first to 256x256, then to the metric's side, each as torchvision 0.16's tensor Resize (MindEyeV2's
    # pinned version): bilinear, half-pixel centres, no antialiasing
    for side in (MINDEYE_SIZE, size):
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
    return x


def _pixcorr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of x[i] and y[i] over all their values, (B, ...) each -> (B,); NaN for a constant image."""
    return row_pearson(x, y, eps=0.0).clamp(-1.0, 1.0)  # np.corrcoef clips the same way


def _gaussian_valid(x: torch.Tensor) -> torch.Tensor:
    """scipy's gaussian_filter (sigma 1.5, truncate 3.5) of (..., H, W) where its window fits: (..., H-10, W-10)."""
    radius = int(MINDEYE_SSIM_TRUNCATE * MINDEYE_SSIM_SIGMA + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    w = torch.exp(-0.5 * taps.square() / MINDEYE_SSIM_SIGMA**2)
    w = (w / w.sum()).tolist()
    # skimage crops `radius` pixels off every border of the SSIM map, so the reflected border never counts;
    # separable sums of shifted slices, in place: several times faster than a float64 conv2d on the CPU
    for dim in (-1, -2):
        size = x.shape[dim] - 2 * radius
        out = x.narrow(dim, 0, size) * w[0]
        for k in range(1, len(w)):
            out.add_(x.narrow(dim, k, size), alpha=w[k])
        x = out
    return x


def _gray_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """skimage's SSIM (Gaussian weights, population covariance, data range 1) of rgb2gray(x[i]), rgb2gray(y[i]).

    x, y (B, 3, H, W) in [0, 1] -> (B,).
    """
    gray = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    gx, gy = (x * gray).sum(1), (y * gray).sum(1)  # (B, H, W)
    # the five local moments in one pass: (5, B, h, w)
    ux, uy, uxx, uyy, uxy = _gaussian_valid(torch.stack([gx, gy, gx * gx, gy * gy, gx * gy]))
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    ssim = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim.mean((1, 2))


@torch.no_grad()
def mindeye_pixel_scores(metric: str, gt: torch.Tensor, samples: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """`metric` (pixcorr, ssim_mindeye) of each sample (S, N, H, W, 3) with its image (N, H, W, 3): float64 (S, N)."""
    score = {"pixcorr": _pixcorr, "ssim_mindeye": _gray_ssim}[metric]
    out = torch.empty(samples.shape[:2], dtype=torch.float64, device=gt.device)
    step = min(batch_size, 16)  # ~30 MB of float64 intermediates per 425x425 image
    for start in range(0, len(gt), step):
        items = slice(start, start + step)
        y = mindeye_view(gt[items], MINDEYE_PIXEL_SIZE, torch.float64)  # (b, 3, 425, 425)
        for s, recon in enumerate(samples):
            out[s, items] = score(mindeye_view(recon[items], MINDEYE_PIXEL_SIZE, torch.float64), y)
    return out


def _unit_features(images: torch.Tensor, net: nn.Module, spec: FeatureSpec) -> torch.Tensor:
    """Images (B, H, W, 3) -> the spec's layer flattened, centred and scaled to unit norm: float64 (B, D)."""
    x = mindeye_view(images, spec.size)  # (B, 3, size, size) float32
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    out = net((x - mean) / std)
    # a constant feature vector gives NaN, as np.corrcoef does
    return unit_rows((out[spec.layer] if isinstance(out, dict) else out).double())


@torch.no_grad()
def feature_correlations(
    recon: torch.Tensor, gt: torch.Tensor, net: nn.Module, spec: FeatureSpec, batch_size: int = 64
) -> torch.Tensor:
    """Pearson r of every reconstruction's (M, H, W, 3) features with every image's (N, H, W, 3) -> float64 (M, N)."""
    y = torch.cat([_unit_features(batch, net, spec) for batch in gt.split(batch_size)])  # (N, D)
    return torch.cat([_unit_features(batch, net, spec) @ y.T for batch in recon.split(batch_size)])


def _mindeye_feature_scores(
    metric: str, gt: torch.Tensor, samples: torch.Tensor, net: nn.Module, batch: int
) -> torch.Tensor:
    """Each sample's (S, N, H, W, 3) feature score against the images (N, H, W, 3) -> float64 (S, N)."""
    num_sets, n = samples.shape[:2]
    r = feature_correlations(samples.flatten(0, 1), gt, net, FEATURES[metric], batch).view(num_sets, n, n)
    if metric in DISTANCES:  # scipy.spatial.distance.correlation with the own image
        return 1 - r.diagonal(dim1=-2, dim2=-1)
    return identification_accuracy(r, lower_is_better=False)


def _n_way_scores(
    gt: torch.Tensor, samples: torch.Tensor, classifier: Classifier, settings: dict, batch_size: int
) -> tuple[torch.Tensor, int]:
    """n-way accuracy of each sample (S, N, H, W, 3) -> float64 (S, N), and the number of trials decided by a tie.

    `settings`: n_way_top_k_accuracy's n_way, num_trials, top_k, seed and tie_rule.
    """
    gt_logits = class_logits(gt, classifier, batch_size)  # (N, C)
    # the published rule takes the ground truth's class from its probabilities, as the original did
    published = settings["tie_rule"] == "published"
    gt_class = (gt_logits.softmax(-1) if published else gt_logits).argmax(-1)  # (N,)
    logits = class_logits(samples.flatten(0, 1), classifier, batch_size)  # (S * N, C)
    accuracy, ties = n_way_top_k_accuracy(logits, gt_class.repeat(len(samples)), **settings)
    return accuracy.view(samples.shape[:2]), int(ties.sum())


def _add_n_way(result: EvalResult, name: str, accuracy: torch.Tensor, ties: int) -> None:
    """Record n-way accuracy (S, N): the mean and the best sample set's, their intervals, the ties."""
    per_set = accuracy.mean(1)  # (S,)
    _add_score(result, name, per_set.mean().item(), accuracy)
    result["scores"][f"{name} (max)"] = per_set.max().item()
    result["intervals"][f"{name} (max)"] = list(max_over_sets_interval(accuracy.cpu().numpy()))
    result["ties"][name] = ties
    if ties:
        log.warning("%s: %d n-way trials hang on a tie between the true class and a distractor", name, ties)


def _add_score(result: EvalResult, name: str, score: float, per_sample: torch.Tensor | None) -> None:
    """Record a score with its item scores (the means over the samples of per_sample (S, N)) and their interval."""
    result["scores"][name] = score
    if per_sample is None:  # a statistic of the whole set (FID): no item scores, no interval
        result["intervals"][name] = None
        return
    per_item = per_sample.mean(0).cpu().numpy()  # (N,)
    result["per_item"][name] = per_item.tolist()
    result["intervals"][name] = list(bootstrap_interval(per_item))


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
    feature_nets: Mapping[str, nn.Module] | None = None,
    n_way: int = 50,
    num_trials: int = 1000,
    top_k: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    tie_rule: str = "split",
) -> EvalResult:
    """Score samples (S, N, H, W, 3) against gt_images (N, H, W, 3) -> scores, intervals, item scores (EvalResult).

    `classifier`, `lpips_model`, `fid_model` and `feature_nets` (network name of `feature_nets.FEATURES` ->
    module) replace the networks otherwise loaded from the local caches. `tie_rule` "published" reproduces the
    original's n-way arithmetic (probabilities compared, ties won by the ground truth; see n_way_top_k_accuracy).
    """
    metrics = expand_metrics(metrics)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    gt, samples = (t.to(device) for t in _check_images(gt_images, samples))
    num_sets, n = samples.shape[:2]
    nets = dict(feature_nets or {})  # loaded once per call: alexnet2 and alexnet5 share AlexNet
    settings = dict(n_way=n_way, num_trials=num_trials, top_k=top_k, seed=seed, tie_rule=tie_rule)
    result = EvalResult(scores={}, intervals={}, per_item={}, ties={}, skipped={})
    for metric in metrics:
        try:
            # pixcorr, SSIM and the distances compare a reconstruction with its own image only
            if n < 2 and metric not in ("pixcorr", "ssim_mindeye", *DISTANCES):
                raise MetricUnavailable(f"needs at least 2 test images, got {n}")
            if metric in PAIRWISE:
                model = None
                if metric == "lpips":
                    model = lpips_model.to(device) if lpips_model is not None else load_lpips_alex(device)
                scores = score_matrix(metric, samples.flatten(0, 1), gt, model, batch_size)  # (S * N, N)
                accuracy = identification_accuracy(scores.view(num_sets, n, n), PAIRWISE[metric])  # (S, N)
                _add_score(result, metric, accuracy.mean(1).mean().item(), accuracy)
            elif metric == "n_way":
                if classifier is None:
                    clf = load_vit_h14_classifier(device)
                else:
                    clf = (classifier[0].to(device), classifier[1])
                accuracy, ties = _n_way_scores(gt, samples, clf, settings, batch_size)  # (S, N), int
                _add_n_way(result, f"top-{top_k}-class", accuracy, ties)
            elif metric == "fid":
                _add_score(result, "fid", fid(gt, samples, fid_model, batch_size), None)
            elif metric in FEATURES:
                net = FEATURES[metric].net
                nets[net] = nets[net].to(device) if net in nets else load_feature_net(net, device)
                per_sample = _mindeye_feature_scores(metric, gt, samples, nets[net], batch_size)  # (S, N)
                _add_score(result, metric, per_sample.mean().item(), per_sample)
            else:
                per_sample = mindeye_pixel_scores(metric, gt, samples, batch_size)  # (S, N)
                _add_score(result, metric, per_sample.mean().item(), per_sample)
        except MetricUnavailable as err:
            log.warning("metric %s skipped: %s", metric, err)
            result["skipped"].update(dict.fromkeys(_score_names(metric, top_k), str(err)))
    return result


def format_table(result: EvalResult, chance: Mapping[str, float | None] | None = None) -> str:
    """The scores as an aligned table (metric, value, 95% interval, which way is better, chance level where known),
    then the skipped ones and any n-way ties."""
    chance = chance or {}
    width = max([len("metric"), *map(len, result["scores"]), *map(len, result["skipped"])])
    lines = [f"{'metric':<{width}}  {'value':>9}  {'95% interval':<18}  better  chance"]
    for name, value in result["scores"].items():
        better = "lower" if name in LOWER_IS_BETTER else "higher"
        level = f"{chance[name]:.3f}" if chance.get(name) is not None else "-"
        interval = format_interval(result["intervals"].get(name))
        lines.append(f"{name:<{width}}  {value:>9.4f}  {interval:<18}  {better:<6}  {level}")
    lines += [f"{name:<{width}}  skipped: {reason}" for name, reason in result["skipped"].items()]
    tied = [(name, n) for name, n in result["ties"].items() if n]  # expected: none (logits rarely tie)
    lines += [f"{name:<{width}}  {n} n-way trials tied, each counted as its expected outcome" for name, n in tied]
    return "\n".join(lines)
