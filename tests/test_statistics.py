"""foprokd_jax.statistics against scipy.stats and scikit-learn: bootstrap replicates, t-test, exact Wilcoxon."""

import itertools

import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from foprokd_jax import statistics


def _predictions(rng, labels, num_classes, accuracy):
    wrong = rng.integers(0, num_classes, size=labels.shape)
    return np.where(rng.uniform(size=labels.shape) < accuracy, labels, wrong)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_bootstrap_replicates_equal_sklearn_on_the_resampled_arrays():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [40, 12, 5, 3])
    rng.shuffle(labels)
    predictions = _predictions(rng, labels, 5, 0.6)  # class 4 is predicted but never true
    names = ["a", "b", "c", "d", "e"]
    out = statistics.bootstrap_intervals(labels, predictions, names, n_resamples=200, seed=7)
    baccs, f1s, recalls = [], [], []
    for index in statistics.stratified_bootstrap_samples(labels, 200, 7):
        # Stratified: every replicate keeps each class's support.
        np.testing.assert_array_equal(np.bincount(labels[index], minlength=4), [40, 12, 5, 3])
        y, p = labels[index], predictions[index]
        baccs.append(balanced_accuracy_score(y, p))
        f1s.append(f1_score(y, p, average="macro", zero_division=0))
        recalls.append(recall_score(y, p, labels=[0, 1, 2, 3], average=None, zero_division=0))
    for key, values in (("bacc", baccs), ("macro_f1", f1s)):
        low, high = np.percentile(values, [2.5, 97.5])
        assert out[key]["low"] == pytest.approx(low, abs=1e-12) and out[key]["high"] == pytest.approx(high, abs=1e-12)
        assert out[key]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert out["bacc"]["estimate"] == pytest.approx(balanced_accuracy_score(labels, predictions), abs=1e-12)
    assert out["macro_f1"]["estimate"] == pytest.approx(f1_score(labels, predictions, average="macro"), abs=1e-12)
    recalls = np.array(recalls)
    for c, name in enumerate(names[:4]):
        ci = out["per_class_recall"][name]
        assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.percentile(recalls[:, c], [2.5, 97.5])), abs=1e-12)
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert out["per_class_recall"]["e"] is None  # no true example: no recall, no interval
    # Seeded: the same seed gives the same intervals, another seed other ones.
    assert statistics.bootstrap_intervals(labels, predictions, names, 200, seed=7) == out
    assert statistics.bootstrap_intervals(labels, predictions, names, 200, seed=8)["bacc"] != out["bacc"]


def test_bootstrap_interval_of_one_class_matches_scipy_percentile_bootstrap():
    """One class: stratified = plain bootstrap of the mean of 'correct'; scipy's percentile interval agrees
    to Monte-Carlo error (different random streams)."""
    rng = np.random.default_rng(1)
    labels = np.zeros(300, np.int64)
    predictions = (rng.uniform(size=300) > 0.7).astype(np.int64)  # recall about 0.3
    ours = statistics.bootstrap_intervals(labels, predictions, ["x", "y"], n_resamples=4000, seed=0)["bacc"]
    ref = scipy.stats.bootstrap(
        ((predictions == 0).astype(float),),
        np.mean,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert ours["low"] == pytest.approx(ref.low, abs=0.01) and ours["high"] == pytest.approx(ref.high, abs=0.01)


def test_incomplete_beta_and_paired_t_test_equal_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 0.5, 0.999), (15.0, 0.5, 0.01), (1.0, 3.0, 0.5), (50.0, 0.5, 0.9)]:
        assert statistics.regularized_incomplete_beta(a, b, x) == pytest.approx(
            scipy.special.betainc(a, b, x), rel=1e-12, abs=1e-300
        )
    rng = np.random.default_rng(2)
    for n in (2, 3, 5, 10, 30):
        a = rng.normal(0.7, 0.05, n)
        b = a - rng.normal(0.01, 0.02, n)
        ours = statistics.paired_t_test(a, b)
        ref = scipy.stats.ttest_rel(a, b)
        assert ours["t"] == pytest.approx(ref.statistic, rel=1e-12)
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)
        assert ours["df"] == n - 1
    tiny = statistics.paired_t_test([1.0, 2.0, 3.0, 4.0, 5.0], [0.9, 1.9001, 2.9, 3.9, 4.9])  # huge t
    assert tiny["p"] == pytest.approx(
        scipy.stats.ttest_rel([1.0, 2.0, 3.0, 4.0, 5.0], [0.9, 1.9001, 2.9, 3.9, 4.9]).pvalue, rel=1e-8
    )
    assert statistics.paired_t_test([1.0, 2.0], [0.5, 1.5])["p"] == 0.0  # constant non-zero difference
    assert statistics.paired_t_test([1.0, 2.0], [1.0, 2.0])["p"] is None  # no difference at all
    assert statistics.paired_t_test([1.0], [0.0])["p"] is None


def _brute_force_wilcoxon(diff):
    """Enumerates all 2^n sign assignments of the average ranks of |d| (zeros dropped)."""
    diff = diff[diff != 0]
    ranks = scipy.stats.rankdata(np.abs(diff))
    observed = ranks[diff > 0].sum()
    sums = np.array([np.dot(signs, ranks) for signs in itertools.product([0, 1], repeat=len(diff))])
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


def test_exact_wilcoxon_equals_scipy_with_and_without_ties():
    rng = np.random.default_rng(3)
    for n in (1, 3, 5, 8, 12, 20):
        a = rng.normal(size=n)
        b = a - rng.normal(0.3, 1.0, n)
        ours = statistics.wilcoxon_signed_rank(a, b)
        ref = scipy.stats.wilcoxon(a, b, method="exact")
        assert not ours["ties"]
        assert ours["statistic"] == ref.statistic
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    # Ties and zero differences (scores rounded to 2 decimals, as reported): scipy's default is the exact
    # permutation distribution, and so is a brute-force enumeration.
    for diff in (
        np.array([1.0, 2, 2, -3, 4, 5, -0.5]),
        np.array([0.01, -0.01, 0.02, 0.0, 0.02, 0.03, 0.01, 0.0]),
        np.round(rng.normal(0.01, 0.02, 11), 2),
    ):
        ours = statistics.wilcoxon_signed_rank(diff)
        ref = scipy.stats.wilcoxon(diff)  # method='auto', zero_method='wilcox'
        assert ours["statistic"] == ref.statistic
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)
        assert ours["p"] == pytest.approx(_brute_force_wilcoxon(diff), rel=1e-12)
    pratt = np.array([0.0, 1.0, -2.0, 3.0, 4.0, 0.0, 5.0])
    ref = scipy.stats.wilcoxon(pratt, zero_method="pratt", method=scipy.stats.PermutationMethod())
    ours = statistics.wilcoxon_signed_rank(pratt, zero_method="pratt")
    assert ours["statistic"] == ref.statistic and ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    # Five folds that all favour the method: the smallest p a 5-pair Wilcoxon test can give, 2/32.
    assert statistics.wilcoxon_signed_rank([0.8] * 5, [0.7, 0.71, 0.72, 0.73, 0.74])["p"] == 0.0625
    assert statistics.min_wilcoxon_p(5) == 0.0625
    assert statistics.wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0])["p"] is None


def test_paired_comparison_combines_both_tests():
    a, b = np.array([0.71, 0.74, 0.69, 0.75, 0.72]), np.array([0.70, 0.70, 0.68, 0.73, 0.70])
    out = statistics.paired_comparison(a, b)
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert out["p_t"] == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert out["p_wilcoxon"] == pytest.approx(scipy.stats.wilcoxon(a, b).pvalue, rel=1e-10)
    with pytest.raises(ValueError, match="equal-length"):
        statistics.paired_comparison(a, b[:3])
