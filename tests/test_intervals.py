"""intervals: the bootstrap covers the truth at about its nominal rate, resamples items (not samples), pairs runs."""

import numpy as np
import pytest

from intervals import bootstrap_interval, clustered_interval, max_over_sets_interval, paired_difference

REPETITIONS, ITEMS, SAMPLES = 200, 50, 5
ALPHA, BETA = 2.0, 5.0  # item scores ~ Beta(2, 5): bounded like an accuracy, skewed; mean 2 / 7
TRUE_MEAN = ALPHA / (ALPHA + BETA)


def _coverage(intervals: list[tuple[float, float]]) -> float:
    return float(np.mean([low <= TRUE_MEAN <= high for low, high in intervals]))


def test_coverage_is_nominal_over_items_and_too_low_over_correlated_samples():
    rng = np.random.default_rng(0)
    items = rng.beta(ALPHA, BETA, (REPETITIONS, ITEMS))  # (reps, N) item effects
    samples = items[..., None] + rng.normal(0, 0.02, (REPETITIONS, ITEMS, SAMPLES))  # (reps, N, S) correlated
    by_item = [bootstrap_interval(s.mean(-1), num_resamples=2000) for s in samples]
    # 200 repetitions estimate a coverage with a standard deviation of sqrt(0.95 * 0.05 / 200) = 0.015; a
    # percentile bootstrap over 50 items covers 0.93-0.95, so a correct interval leaves [0.88, 0.99] with a
    # probability under 0.1% (0.88 is over 3.5 SD below 0.935; 199 or 200 hits of 200 at 0.95 have 0.04%)
    assert 0.88 <= _coverage(by_item) <= 0.99
    # the 5 samples of an item as 250 independent trials: an interval about sqrt(5) too narrow, which misses
    # (50 repetitions suffice: it covers about 0.6, and 0.8 lies 3 SD above)
    by_sample = [bootstrap_interval(s.reshape(-1), num_resamples=1000) for s in samples[:50]]
    assert _coverage(by_sample) < 0.8


def test_an_item_with_identical_samples_counts_once():
    scores = np.random.default_rng(1).beta(ALPHA, BETA, ITEMS)
    one = bootstrap_interval(scores)
    copies = np.repeat(scores[None], SAMPLES, axis=0)  # (S, N): every sample of an item scores the same
    assert bootstrap_interval(copies.mean(0)) == one
    assert max_over_sets_interval(copies) == pytest.approx(one, rel=1e-12)  # the best of identical sets: any
    naive = bootstrap_interval(copies.reshape(-1))  # what resampling samples would give
    assert naive[1] - naive[0] < 0.6 * (one[1] - one[0])


def test_clustered_interval_resamples_whole_units_and_pairs_a_ratio():
    rng = np.random.default_rng(4)
    scores = rng.beta(ALPHA, BETA, ITEMS)
    value, interval = clustered_interval(scores, np.arange(ITEMS))  # every sample its own unit: the item bootstrap
    assert value == pytest.approx(scores.mean()) and interval == pytest.approx(bootstrap_interval(scores), rel=1e-12)
    # units of unequal size: the mean is over samples, and a unit's copies of one score count as one draw
    groups = np.repeat(np.arange(ITEMS), rng.integers(1, 6, ITEMS))
    value, (low, high) = clustered_interval(scores[groups], groups)
    assert value == pytest.approx(scores[groups].mean()) and low < value < high
    naive = bootstrap_interval(scores[groups])
    assert naive[1] - naive[0] < 0.7 * (high - low)
    # a ratio to reference scores of the same samples: exact where they are proportional, else around the ratio
    assert clustered_interval(2 * scores[groups], groups, reference=scores[groups]) == (
        pytest.approx(2.0),
        (pytest.approx(2.0), pytest.approx(2.0)),
    )
    ratio, (low, high) = clustered_interval(scores, np.arange(ITEMS), reference=scores + 0.5)
    assert ratio == pytest.approx(scores.mean() / (scores.mean() + 0.5)) and low < ratio < high
    with pytest.raises(ValueError, match="at least 2 units"):
        clustered_interval(scores, np.zeros(ITEMS))
    with pytest.raises(ValueError, match="same samples"):
        clustered_interval(scores, np.arange(ITEMS), reference=scores[:-1])


def test_clustered_interval_covers_over_correlated_units():
    rng = np.random.default_rng(5)
    units = rng.beta(ALPHA, BETA, (REPETITIONS, 20))  # 20 units (subjects, images) per repetition
    groups = np.repeat(np.arange(20), 10)  # 10 correlated samples each
    samples = units[:, groups] + rng.normal(0, 0.02, (REPETITIONS, 200))
    coverage = _coverage([clustered_interval(s, groups, num_resamples=2000)[1] for s in samples])
    assert 0.85 <= coverage <= 0.99  # 20 units: a percentile bootstrap covers a little under 0.95
    assert _coverage([bootstrap_interval(s, num_resamples=1000) for s in samples[:50]]) < 0.7  # samples as units


def test_intervals_are_reproducible_and_contain_the_mean():
    scores = np.random.default_rng(2).random(ITEMS)
    low, high = bootstrap_interval(scores)
    assert low < scores.mean() < high
    assert bootstrap_interval(scores) == (low, high) and bootstrap_interval(list(scores)) == (low, high)
    assert bootstrap_interval(scores, seed=1) != (low, high)
    narrow = bootstrap_interval(scores, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_paired_difference_sign_and_pairing():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 1, ITEMS)  # what the items share: large against the runs' difference
    a = difficulty + rng.normal(0, 0.05, ITEMS)
    b = difficulty + 0.1 + rng.normal(0, 0.05, ITEMS)
    diff, (low, high) = paired_difference(a, b)
    assert diff == pytest.approx(b.mean() - a.mean()) and 0 < low < diff < high
    assert paired_difference(b, a)[0] == -diff
    # unpaired, the items' spread would swamp the difference: each run's own interval is far wider
    a_low, a_high = bootstrap_interval(a)
    assert high - low < 0.1 * (a_high - a_low)
    _, (low, high) = paired_difference(a, a + rng.normal(0, 0.05, ITEMS))
    assert low < 0 < high


def test_training_seeds_widen_the_interval():
    rng = np.random.default_rng(4)
    items = rng.beta(ALPHA, BETA, ITEMS)
    assert bootstrap_interval(items[None]) == bootstrap_interval(items)  # one seed: the bootstrap over items
    seeds = items + rng.normal(0, 0.1, (5, 1))  # (R, N): each training seed shifts every item
    low, high = bootstrap_interval(seeds)
    items_only = bootstrap_interval(seeds.mean(0))
    assert low < seeds.mean() < high and high - low > 2 * (items_only[1] - items_only[0])
    diff, (low, high) = paired_difference(seeds, seeds[:3] + 0.5)  # 5 seeds against 3, the same items
    assert diff == pytest.approx(seeds[:3].mean() + 0.5 - seeds.mean()) and 0 < low < high


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N >= 2"):
        bootstrap_interval([0.5])
    with pytest.raises(ValueError, match=r"\(R, N\)"):
        bootstrap_interval(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="same items"):
        paired_difference(np.zeros(5), np.zeros(6))


def test_paired_seeds_cancel_what_a_seed_shares():
    """Two models trained under the same seeds: a seed effect common to both drops out of their difference."""
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 1.0, (4, 1))
    a = seed_effect + rng.normal(0, 0.1, (4, ITEMS))
    b = a + 0.2 + rng.normal(0, 0.05, (4, ITEMS))
    diff, (low, high) = paired_difference(a, b, paired_seeds=True)
    _, (low_u, high_u) = paired_difference(a, b)
    assert low < diff < high and 0.1 < low and high < 0.3
    assert high - low < (high_u - low_u) / 5
    with pytest.raises(ValueError, match="as many rows"):
        paired_difference(a, b[:3], paired_seeds=True)
