"""ANLS against hand-computed values, and the family intervals against direct computations."""

import itertools

import numpy as np
import pytest

from megatron_zppo.core.scores import anls, benchmark_mean, family_score, paired_delta


def test_anls_hand_computed_values_and_edge_cases():
    assert anls("Paris", ["paris"]) == 1.0  # case ignored
    assert anls("  new   york ", ["New York"]) == 1.0  # surrounding and repeated spaces ignored
    assert anls("abce", ["abcd"]) == pytest.approx(0.75)  # one edit in four characters
    assert anls("abxyz", ["abcde"]) == 0.0  # 3/5 = 0.6 >= 0.5: wrong, not 0.4 right
    assert anls("ab", ["abcd"]) == 0.0  # exactly at the threshold (2/4) counts as wrong
    assert anls("abc", ["abcd"]) == pytest.approx(0.75)
    assert anls("abc", ["zzzz", "abcd", "ab"]) == pytest.approx(0.75)  # the best gold answer
    assert anls("", ["abc"]) == 0.0 and anls("", [""]) == 1.0  # an empty answer matches only an empty gold
    with pytest.raises(ValueError, match="at least one gold answer"):
        anls("x", [])


def test_a_benchmark_of_several_parts_scores_the_mean_of_its_parts():
    assert benchmark_mean([[1, 1, 1, 0], [0, 0]]) == pytest.approx((0.75 + 0.0) / 2)  # not the pooled 3/6


def _exact_quantile(values, k, level):
    """The bootstrap distribution of the mean of k benchmarks, enumerated: every k-tuple is equally likely."""
    means = np.round([np.mean(t) for t in itertools.product(values, repeat=k)], 12)
    atoms, counts = np.unique(means, return_counts=True)
    cdf = np.cumsum(counts) / len(means)
    i = int(np.searchsorted(cdf, level))
    below = cdf[i - 1] if i else 0.0
    assert min(cdf[i] - level, level - below) > 0.005  # not at a jump: the sampled quantile is then exact
    return atoms[i]


def test_the_interval_over_benchmarks_is_the_enumerated_bootstrap_distributions_quantiles():
    low, high = [[1.0] + [0.0] * 4], [[1.0] * 4 + [0.0]]  # benchmarks at 0.2 and 0.8
    scores = {"a": low, "b": low, "c": low, "d": high, "e": high}
    means = [benchmark_mean(p) for p in scores.values()]
    f = family_score(scores, n_boot=20000, seed=3)
    assert f.mean == pytest.approx(0.44)
    # the resampled mean is 0.2 + 0.6 B / 5 with B ~ Binomial(5, 0.4): quantiles 0.2 (B=0) and 0.68 (B=4)
    assert f.benchmarks == (pytest.approx(_exact_quantile(means, 5, 0.025)),
                            pytest.approx(_exact_quantile(means, 5, 0.975)))
    assert f.benchmarks == (pytest.approx(0.2), pytest.approx(0.68))


def test_the_interval_over_questions_has_the_analytic_spread_and_both_is_wider_than_either():
    rng = np.random.default_rng(0)
    scores = {f"b{j}": [list(rng.integers(0, 2, size=n).astype(float))] for j, n in enumerate((200, 400, 800))}
    f = family_score(scores, n_boot=20000, seed=1)
    # Var(macro mean) = sum_j var_j / n_j / k^2 (resampling within each benchmark independently)
    sd = np.sqrt(sum(np.var(s[0]) / len(s[0]) for s in scores.values())) / len(scores)
    half = (f.questions[1] - f.questions[0]) / 2
    assert half == pytest.approx(1.96 * sd, rel=0.08)  # 20,000 replicates: the spread is within a few percent
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(f.both) > max(width(f.questions), width(f.benchmarks)) * 0.99
    constant = family_score({"x": [[1.0] * 5], "y": [[0.0] * 7]}, n_boot=500)
    assert constant.questions == (0.5, 0.5)  # no spread within benchmarks: nothing to resample


def test_paired_delta_counts_wins_and_shares_its_resamples_across_comparisons():
    a = {"x": 0.5, "y": 0.7, "z": 0.2}
    d = paired_delta(a, {"x": 0.4, "y": 0.75, "z": 0.1, "only_b": 0.9}, n_boot=4000, seed=5)
    assert (d.delta, d.wins, d.n) == (pytest.approx((0.1 - 0.05 + 0.1) / 3), 2, 3)
    assert -0.05 - 1e-12 <= d.interval[0] <= d.delta <= d.interval[1] <= 0.1 + 1e-12
    shifted = paired_delta({k: v + 1 for k, v in a.items()}, {"x": 1.4, "y": 1.75, "z": 1.1}, n_boot=4000, seed=5)
    assert shifted.interval == pytest.approx(d.interval)  # the same benchmarks drawn in every replicate
    with pytest.raises(ValueError, match="no benchmark in common"):
        paired_delta({"x": 1.0}, {"y": 1.0})


def test_a_family_with_an_unscored_benchmark_is_refused():
    with pytest.raises(ValueError, match="empty: \\['b'\\]"):
        family_score({"a": [[1.0]], "b": [[]]})
