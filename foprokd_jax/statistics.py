"""Uncertainty of evaluation numbers: stratified bootstrap intervals and paired tests between methods.

Host-side numpy (scipy is not a runtime dependency; tests/test_statistics.py checks every number against
scipy.stats and scikit-learn).

Bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, percentile interval §13.3):
  each replicate redraws, for every class c in index order, n_c examples with replacement from the n_c test
  examples of class c (`stratified_bootstrap_samples`), so every replicate keeps the class supports of the
  test split and every class's recall stays defined. The statistic of a replicate is computed from its
  confusion matrix with the semantics of `metrics.classification_report` (balanced accuracy over the
  classes present, macro-F1 over the classes in the labels or the replicate's predictions). The interval is
  the percentile interval: the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the replicates
  (np.percentile, linear interpolation). One `np.random.default_rng(seed)` draws everything, replicate by
  replicate and class by class, so the same seed gives the same intervals.

Paired tests over matched folds/seeds, d_i = a_i - b_i (method minus baseline):
  * paired t-test (Student 1908): t = mean(d) / (sd(d, ddof=1) / sqrt(n)), df = n - 1, two-sided
    p = 2 P(T_df >= |t|) = I_{df / (df + t^2)}(df/2, 1/2) with I the regularised incomplete beta function,
    evaluated by its continued fraction (Numerical Recipes §6.4, modified Lentz). scipy.stats.ttest_rel.
  * Wilcoxon signed-rank test (Wilcoxon 1945) with its exact null distribution: zero differences are
    dropped ('wilcox', scipy's default) or ranked and then dropped ('pratt'); tied |d| get their average
    rank; the null distribution of W+ (sum of the ranks of the positive d) is enumerated exactly over all
    2^n sign assignments of the ranks actually observed (ties included, i.e. the permutation distribution),
    by dynamic programming on twice the ranks (integers). Two-sided p = min(1, 2 min(P(W+ <= w), P(W+ >= w))).
    With no ties this is scipy.stats.wilcoxon(method='exact'); with ties it is scipy's default ('auto'), the
    exact permutation distribution. The reported statistic is min(W+, W-), as scipy reports it.
"""

import math
from typing import Optional, Sequence

import numpy as np

from foprokd_jax import metrics

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
ZERO_METHODS = ("wilcox", "pratt")
# Exact Wilcoxon distributions are enumerated up to this many non-zero differences (DP of n x n(n+1) cells).
WILCOXON_MAX_N = 400


# ---------------------------------------------------------------- bootstrap ----


def stratified_bootstrap_samples(labels, n_resamples: int, seed: int):
    """Yields `n_resamples` index arrays, each resampling every class's examples with replacement.

    Indices of a replicate are grouped class by class (class 0 first); within class c, `n_c` draws of
    `rng.integers(0, n_c)` pick among the examples of class c in their original order.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(n_resamples):
        yield np.concatenate([m[rng.integers(0, len(m), size=len(m))] for m in members])


def _replicate_scores(confusion: np.ndarray):
    """(bacc, macro_f1, per-class recall) of one confusion matrix, as metrics.classification_report."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    f1_denominator = support + predicted
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros_like(tp), where=f1_denominator > 0)
    return recall[present].mean(), f1[present | (predicted > 0)].mean(), recall


def _interval(values: np.ndarray, estimate: float, confidence: float) -> dict:
    low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "std": float(np.std(values, ddof=1))}


def bootstrap_intervals(
    labels,
    predictions,
    class_names: Sequence[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict:
    """Stratified percentile-bootstrap intervals of balanced accuracy, macro-F1 and each class's recall.

    Returns {"method", "n_resamples", "seed", "confidence", "bacc": {estimate, low, high, std}, "macro_f1":
    {...}, "per_class_recall": {name: {...}, or None for a class absent from the labels}}; `estimate` is the
    statistic on the original sample.
    """
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(predictions, np.int64).reshape(-1)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must be equal, non-empty")
    num_classes = len(class_names)
    codes = labels * num_classes + predictions
    baccs, f1s, recalls = np.empty(n_resamples), np.empty(n_resamples), np.empty((n_resamples, num_classes))
    for b, index in enumerate(stratified_bootstrap_samples(labels, n_resamples, seed)):
        confusion = np.bincount(codes[index], minlength=num_classes**2).reshape(num_classes, num_classes)
        baccs[b], f1s[b], recalls[b] = _replicate_scores(confusion)
    bacc, macro_f1, recall = _replicate_scores(metrics.confusion_from_vectors(labels, predictions, num_classes))
    present = np.bincount(labels, minlength=num_classes) > 0
    return {
        "method": "percentile bootstrap, stratified by class",
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "confidence": float(confidence),
        "bacc": _interval(baccs, bacc, confidence),
        "macro_f1": _interval(f1s, macro_f1, confidence),
        "per_class_recall": {
            str(name): (_interval(recalls[:, c], recall[c], confidence) if present[c] else None)
            for c, name in enumerate(class_names)
        },
    }


# ---------------------------------------------------------------- Student's t ----


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1] (scipy.special.betainc)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"a and b must be positive, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry beyond.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T_df| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(a, b) -> dict:
    """Two-sided paired t-test of a vs b: {"n", "mean_diff", "std_diff", "t", "df", "p"} (scipy.stats.ttest_rel).

    n < 2 gives t and p None. All differences equal: t = ±inf and p = 0 if they are non-zero, t and p None if
    they are all zero (scipy returns NaN there).
    """
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = diff.size
    out = {
        "n": int(n),
        "mean_diff": float(diff.mean()) if n else None,
        "std_diff": float(diff.std(ddof=1)) if n > 1 else None,
        "t": None,
        "df": n - 1 if n > 1 else None,
        "p": None,
    }
    if n < 2:
        return out
    mean, std = diff.mean(), diff.std(ddof=1)
    if std == 0.0:
        if mean != 0.0:
            out.update(t=math.copysign(math.inf, mean), p=0.0)
        return out
    t = mean / (std / math.sqrt(n))
    out.update(t=float(t), p=student_t_two_sided_p(float(t), n - 1))
    return out


# ---------------------------------------------------------------- Wilcoxon ----


def _signed_rank_null(doubled_ranks: np.ndarray) -> np.ndarray:
    """P(2 W+ = k) for k = 0..sum(doubled_ranks), each rank's sign + or - with probability 1/2."""
    distribution = np.zeros(int(doubled_ranks.sum()) + 1)
    distribution[0] = 1.0
    top = 0
    for r in doubled_ranks:
        r = int(r)
        shifted = np.zeros_like(distribution)
        shifted[r : top + r + 1] = distribution[: top + 1]
        distribution = 0.5 * (distribution + shifted)
        top += r
    return distribution


def wilcoxon_signed_rank(a, b=None, zero_method: str = "wilcox") -> dict:
    """Exact two-sided Wilcoxon signed-rank test of d = a - b (or of a alone when b is None).

    Returns {"n": pairs, "n_used": non-zero differences, "w_plus", "w_minus", "statistic": min(W+, W-),
    "p", "ties": whether |d| had ties, "zero_method"}; p None when every difference is zero.
    """
    if zero_method not in ZERO_METHODS:
        raise ValueError(f"zero_method must be one of {ZERO_METHODS}, got {zero_method!r}")
    diff = np.asarray(a, np.float64).reshape(-1)
    if b is not None:
        diff = diff - np.asarray(b, np.float64).reshape(-1)
    n = diff.size
    if zero_method == "wilcox":
        diff = diff[diff != 0.0]
        ranks = metrics._average_ranks(np.abs(diff)) if diff.size else np.zeros(0)
    else:  # pratt: the zeros take part in the ranking, then their ranks are dropped
        ranks = metrics._average_ranks(np.abs(diff)) if diff.size else np.zeros(0)
        keep = diff != 0.0
        diff, ranks = diff[keep], ranks[keep]
    out = {
        "n": int(n),
        "n_used": int(diff.size),
        "zero_method": zero_method,
        "ties": bool(diff.size and len(np.unique(np.abs(diff))) < diff.size),
    }
    w_plus, w_minus = float(ranks[diff > 0].sum()), float(ranks[diff < 0].sum())
    out.update(w_plus=w_plus, w_minus=w_minus, statistic=min(w_plus, w_minus), p=None)
    if diff.size == 0:
        return out
    if diff.size > WILCOXON_MAX_N:
        raise ValueError(f"exact Wilcoxon distribution for {diff.size} > {WILCOXON_MAX_N} differences")
    # Average ranks are integers or halves: doubled they are integers, and the DP is exact.
    doubled = np.rint(2.0 * ranks).astype(np.int64)
    null = _signed_rank_null(doubled)
    observed = int(np.rint(2.0 * w_plus))
    lower, upper = null[: observed + 1].sum(), null[observed:].sum()
    out["p"] = float(min(1.0, 2.0 * min(lower, upper)))
    return out


def paired_comparison(method_values, baseline_values) -> dict:
    """Both paired tests of method vs baseline over matched runs: {"n", "mean_diff", "std_diff", "t", "p_t",
    "wilcoxon_statistic", "p_wilcoxon", "wilcoxon_n_used"}. Positive mean_diff: the method scores higher."""
    method_values = np.asarray(method_values, np.float64)
    baseline_values = np.asarray(baseline_values, np.float64)
    if method_values.shape != baseline_values.shape or method_values.ndim != 1:
        raise ValueError(
            f"paired values must be two equal-length vectors, got {method_values.shape} and {baseline_values.shape}"
        )
    t_test = paired_t_test(method_values, baseline_values)
    wilcoxon = wilcoxon_signed_rank(method_values, baseline_values)
    return {
        "n": t_test["n"],
        "mean_diff": t_test["mean_diff"],
        "std_diff": t_test["std_diff"],
        "t": t_test["t"],
        "df": t_test["df"],
        "p_t": t_test["p"],
        "wilcoxon_statistic": wilcoxon["statistic"],
        "p_wilcoxon": wilcoxon["p"],
        "wilcoxon_n_used": wilcoxon["n_used"],
    }


def min_wilcoxon_p(n: int) -> Optional[float]:
    """Smallest two-sided exact p a Wilcoxon test of n untied non-zero pairs can reach: 2 / 2^n (n = 5: 0.0625)."""
    return None if n < 1 else min(1.0, 2.0 / 2**n)
