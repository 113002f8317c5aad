"""95% percentile bootstrap intervals for evaluation scores, over test items and, where given, training seeds.

The unit of resampling is the test item: the S samples decoded from one fMRI are correlated (one brain response,
one image), so a metric's item score is the mean over its samples and the items are resampled with all their
samples at once; resampling the samples themselves would treat S correlated scores as S independent ones and give
an interval up to sqrt(S) times too narrow.

Scores come as one run's item scores (N,) or as several training seeds' (R, N), the same N items for every seed.
Each resample draws N items and R seeds with replacement (the same items for every seed) and takes the mean of
the resampled grid; with R = 1 it is the plain bootstrap over items. With few seeds (R < about 10) the seed level
of such a bootstrap is a rough estimate: a percentile interval over 3 values cannot reach beyond them.

Every interval uses a fixed seed, so the same scores always give the same printed interval. scipy.stats.bootstrap
covers the one-level case only; the two-level and max-over-sets statistics need the resampling counts anyway, so
one numpy formulation serves all: how often each unit is drawn (a multinomial draw), the means as count-weighted
sums.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
NUM_RESAMPLES = 10_000
SEED = 0

Interval = tuple[float, float]


def _grid(scores: np.ndarray | list, what: str = "scores") -> np.ndarray:
    """Item scores (N,) or (R, N) -> float64 (R, N); ValueError for other shapes or fewer than 2 items."""
    grid = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if grid.ndim != 2 or grid.shape[1] < 2:
        raise ValueError(f"{what} must be (N,) item scores or (R, N) per seed and item with N >= 2, got {grid.shape}")
    return grid


def _draw_counts(rng: np.random.Generator, n: int, num_resamples: int) -> np.ndarray:
    """int (B, n): how often each of n units is drawn in each of B resamples with replacement."""
    return rng.multinomial(n, np.full(n, 1 / n), size=num_resamples)


def _resampled_means(
    grid: np.ndarray, item_counts: np.ndarray, rng: np.random.Generator, seed_counts: np.ndarray | None = None
) -> np.ndarray:
    """Means (B,) of a grid (R, N) under item counts (B, N), each resample drawing R seeds of its own unless
    `seed_counts` (B, R) are given."""
    if seed_counts is None:
        seed_counts = _draw_counts(rng, len(grid), len(item_counts))  # (B, R)
    return np.einsum("br,rn,bn->b", seed_counts, grid, item_counts) / grid.size


def _percentiles(values: np.ndarray, confidence: float) -> Interval:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(
    scores: np.ndarray | list, confidence: float = CONFIDENCE, num_resamples: int = NUM_RESAMPLES, seed: int = SEED
) -> Interval:
    """Percentile interval of the mean of item scores (N,), or of (R, N) per training seed and item."""
    grid = _grid(scores)
    rng = np.random.default_rng(seed)
    items = _draw_counts(rng, grid.shape[1], num_resamples)  # (B, N)
    return _percentiles(_resampled_means(grid, items, rng), confidence)


def paired_difference(
    a: np.ndarray | list,
    b: np.ndarray | list,
    confidence: float = CONFIDENCE,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
    paired_seeds: bool = False,
) -> tuple[float, Interval]:
    """Mean of b minus mean of a over the same N items, and its interval; a (N,) or (Ra, N), b (N,) or (Rb, N).

    Paired: each resample draws the same items for both runs, so what the items share cancels. Seeds are drawn
    for each run on its own (a training seed of one run has no partner in the other), unless `paired_seeds`: then
    row r of a and of b share their seed (the same data split and training seed, a different model), and each
    resample draws the same seeds for both, so what a seed shares cancels too (a and b need the same rows).
    """
    grid_a, grid_b = _grid(a, "a"), _grid(b, "b")
    if grid_a.shape[1] != grid_b.shape[1]:
        raise ValueError(f"a and b must score the same items, got {grid_a.shape[1]} and {grid_b.shape[1]} items")
    if paired_seeds and len(grid_a) != len(grid_b):
        raise ValueError(f"paired seeds need as many rows in a as in b, got {len(grid_a)} and {len(grid_b)}")
    rng = np.random.default_rng(seed)
    items = _draw_counts(rng, grid_a.shape[1], num_resamples)  # (B, N)
    seeds = _draw_counts(rng, len(grid_a), num_resamples) if paired_seeds else None
    diffs = _resampled_means(grid_b, items, rng, seeds) - _resampled_means(grid_a, items, rng, seeds)
    return float(grid_b.mean() - grid_a.mean()), _percentiles(diffs, confidence)


def over_seeds(per_seed: dict[int, list], base: dict[int, list] | None = None) -> dict:
    """A row of a study scored per training seed and item ({seed: item scores}): its mean over seeds and items with
    the interval resampling both (`seeds`, `mean`, `interval`) and, given `base` (another row scored on the same
    items with the same seeds), the paired difference row - base over the seeds both have, seeds and items drawn
    together (`minus_base`: (difference, interval))."""
    seeds = sorted(per_seed)
    grid = np.array([per_seed[s] for s in seeds], dtype=np.float64)
    row = {"seeds": seeds, "mean": float(grid.mean()), "interval": bootstrap_interval(grid)}
    both = [s for s in seeds if base is not None and s in base]
    if both:
        row["minus_base"] = paired_difference([base[s] for s in both], [per_seed[s] for s in both], paired_seeds=True)
    return row


def clustered_interval(
    scores: np.ndarray | list,
    groups: np.ndarray | list,
    reference: np.ndarray | list | None = None,
    confidence: float = CONFIDENCE,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, Interval]:
    """The mean of sample scores (N,) whose samples come in correlated units (`groups` (N,): the trials of one
    image, the windows of one subject), and its interval resampling whole units, each drawn unit bringing all its
    samples; given `reference` (N,) scores of the same samples, the ratio mean(scores) / mean(reference) instead,
    both resampled with the same units."""
    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups)
    if scores.ndim != 1 or groups.shape != scores.shape:
        raise ValueError(f"scores and groups must be (N,) each, got {scores.shape} and {groups.shape}")
    units, unit = np.unique(groups, return_inverse=True)
    if len(units) < 2:
        raise ValueError(f"an interval over units needs at least 2 units, got {len(units)}")
    sums = np.bincount(unit, scores, len(units))  # (G,)
    if reference is None:
        denominators, value = np.bincount(unit, minlength=len(units)).astype(np.float64), scores.mean()
    else:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.shape != scores.shape:
            raise ValueError(f"reference must score the same samples, got {reference.shape} for {scores.shape}")
        denominators, value = np.bincount(unit, reference, len(units)), scores.mean() / reference.mean()
    counts = _draw_counts(np.random.default_rng(seed), len(units), num_resamples)  # (B, G)
    return float(value), _percentiles((counts @ sums) / (counts @ denominators), confidence)


def max_over_sets_interval(
    per_set: np.ndarray | list, confidence: float = CONFIDENCE, num_resamples: int = NUM_RESAMPLES, seed: int = SEED
) -> Interval:
    """Interval of the best sample set's mean, scores (S, N) per sample set and item, the items resampled."""
    grid = _grid(per_set, "per_set")
    rng = np.random.default_rng(seed)
    items = _draw_counts(rng, grid.shape[1], num_resamples)  # (B, N)
    return _percentiles((items @ grid.T).max(1) / grid.shape[1], confidence)  # (B, S) set means -> the best


def format_interval(interval: list[float] | tuple[float, float] | None) -> str:
    """An interval as "[low, high]" with 4 decimals, or "n/a" for a score without one."""
    return "n/a" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"
