"""Calibration of a classifier's probabilities: ECE, Brier score, NLL, reliability bins, temperature scaling.

Everything is host-side numpy in float64, from logits (N, C) and integer labels (N,):

* Top-label ECE (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
  arXiv:1706.04599): confidence = max_c p_c, correct = [argmax_c p_c == y]; the confidences are cut into
  B bins and ECE = sum_b (n_b / N) |acc_b - conf_b| over the non-empty bins.
  - 'width' bins (Guo et al.): edges 0, 1/B, ..., 1.
  - 'mass' bins (equal-mass / adaptive, Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W
    2019, arXiv:1904.01685): edges at the empirical quantiles k/B of the confidences (np.percentile,
    linear interpolation), so every bin holds about N/B examples; ties stay in one bin.
  Bin membership is scikit-learn's `calibration_curve` convention (`np.searchsorted(edges[1:-1], conf)`):
  bins are closed on the right, (e_{b-1}, e_b], the first bin also holds e_0. A confidence equal to an
  inner edge therefore belongs to the lower bin.
* Brier score (Brier 1950, multi-class form): mean_n sum_c (p_nc - 1[y_n = c])^2, in [0, 2].
* NLL: mean_n -log softmax(z_n)_{y_n}, computed with a log-sum-exp from the logits (no clipping).
* Temperature scaling (Guo et al. 2017 §4.2): one scalar T > 0 minimising the NLL of z / T on a held-out
  split. With beta = 1/T the NLL is convex in beta (log-sum-exp of a linear function minus a linear one), so
  its derivative mean_n (E_{softmax(beta z_n)}[z_n] - z_{n,y_n}) is increasing in beta; the minimiser is found
  by bisection on the sign of that derivative in log(beta), to float64 precision.

scikit-learn and scipy are not runtime dependencies; tests compare against them (tests/test_calibration.py).
Docs: docs/evaluation.md ("Calibration").
"""

import math
import warnings
from typing import Optional

import numpy as np

BINNINGS = ("width", "mass")
DEFAULT_NUM_BINS = 15  # Guo et al. 2017
# Temperatures searched: beta = 1/T in [1/T_MAX, 1/T_MIN]. A fit at the boundary is reported with a warning.
T_MIN, T_MAX = 1e-2, 1e2


def log_softmax(logits) -> np.ndarray:
    """Row-wise log-softmax in float64 (log-sum-exp around the row maximum)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check(logits, labels):
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N > 0, got {logits.shape}")
    if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({logits.shape[0]},) integers, got shape {labels.shape} {labels.dtype}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits hold non-finite values")
    return logits, labels.astype(np.int64)


def negative_log_likelihood(logits, labels) -> float:
    """Mean cross-entropy -log p_y of softmax(logits)."""
    logits, labels = _check(logits, labels)
    return float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels]))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: mean over examples of the squared distance to the one-hot label."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def bin_edges(confidences, num_bins: int, binning: str) -> np.ndarray:
    """The B + 1 edges of 'width' (0, 1/B, ..., 1) or 'mass' (empirical quantiles k/B) bins."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if binning == "width":
        return np.linspace(0.0, 1.0, num_bins + 1)
    if binning == "mass":
        return np.percentile(np.asarray(confidences, np.float64), np.linspace(0.0, 100.0, num_bins + 1))
    raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")


def reliability_bins(probs, labels, num_bins: int = DEFAULT_NUM_BINS, binning: str = "width") -> dict:
    """Per-bin statistics of the top-label confidence: the reliability diagram's data and the ECE.

    Returns {"edges": B + 1 floats, "count": B ints, "accuracy": B floats or None (empty bin),
    "confidence": B floats or None, "ece": float, "mce": max gap over non-empty bins, "binning", "num_bins"}.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    confidences = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == labels).astype(np.float64)
    edges = bin_edges(confidences, num_bins, binning)
    # scikit-learn's calibration_curve assignment: right-closed bins, the first one also holding edges[0].
    bin_ids = np.searchsorted(edges[1:-1], confidences)
    count = np.bincount(bin_ids, minlength=num_bins)
    correct_sum = np.bincount(bin_ids, weights=correct, minlength=num_bins)
    confidence_sum = np.bincount(bin_ids, weights=confidences, minlength=num_bins)
    nonempty = count > 0
    accuracy = np.where(nonempty, correct_sum / np.maximum(count, 1), np.nan)
    mean_confidence = np.where(nonempty, confidence_sum / np.maximum(count, 1), np.nan)
    gaps = np.abs(accuracy - mean_confidence)[nonempty]
    ece = float(np.sum(count[nonempty] / len(labels) * gaps))
    return {
        "binning": binning,
        "num_bins": int(num_bins),
        "edges": edges.tolist(),
        "count": count.tolist(),
        "accuracy": [float(a) if ok else None for a, ok in zip(accuracy, nonempty)],
        "confidence": [float(c) if ok else None for c, ok in zip(mean_confidence, nonempty)],
        "ece": ece,
        "mce": float(gaps.max()) if gaps.size else 0.0,
    }


def expected_calibration_error(probs, labels, num_bins: int = DEFAULT_NUM_BINS, binning: str = "width") -> float:
    """Top-label ECE with 'width' or 'mass' bins (see the module docstring for the bin convention)."""
    return reliability_bins(probs, labels, num_bins, binning)["ece"]


def _nll_slope(beta: float, logits: np.ndarray, labels: np.ndarray) -> float:
    """d/d beta of mean NLL(beta * z): mean(E_softmax(beta z)[z] - z_y); increasing in beta (convexity)."""
    probs = np.exp(log_softmax(beta * logits))
    return float(np.mean(np.sum(probs * logits, axis=1) - logits[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, iterations: int = 200) -> dict:
    """Temperature T minimising NLL(logits / T) (Guo et al. 2017), by bisection in log(1/T).

    Returns {"temperature": T, "nll_before": NLL at T = 1, "nll_after": NLL at T, "at_bound": bool}.
    `at_bound` (with a warning) when the optimum lies outside [T_MIN, T_MAX], e.g. a split the model
    classifies perfectly, whose NLL keeps falling as T -> 0.
    """
    logits, labels = _check(logits, labels)
    lo, hi = math.log(1.0 / T_MAX), math.log(1.0 / T_MIN)
    at_bound = False
    if _nll_slope(math.exp(lo), logits, labels) >= 0.0:
        log_beta, at_bound = lo, True
    elif _nll_slope(math.exp(hi), logits, labels) <= 0.0:
        log_beta, at_bound = hi, True
    else:
        for _ in range(iterations):  # 200 halvings of a width-9.2 interval: far below float64 resolution
            mid = 0.5 * (lo + hi)
            if _nll_slope(math.exp(mid), logits, labels) > 0.0:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1e-15:
                break
        log_beta = 0.5 * (lo + hi)
    temperature = 1.0 / math.exp(log_beta)
    if at_bound:
        warnings.warn(
            f"temperature scaling: the NLL optimum lies outside [{T_MIN}, {T_MAX}]; using T = {temperature:g}"
        )
    return {
        "temperature": temperature,
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits / temperature, labels),
        "at_bound": at_bound,
    }


def calibration_metrics(logits, labels, num_bins: int = DEFAULT_NUM_BINS) -> dict:
    """{"ece", "ece_mass", "mce", "brier", "nll", "bins": {"width": reliability_bins, "mass": ...}}."""
    logits, labels = _check(logits, labels)
    probs = np.exp(log_softmax(logits))
    bins = {binning: reliability_bins(probs, labels, num_bins, binning) for binning in BINNINGS}
    return {
        "ece": bins["width"]["ece"],
        "ece_mass": bins["mass"]["ece"],
        "mce": bins["width"]["mce"],
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(logits, labels),
        "num_bins": int(num_bins),
        "bins": bins,
    }


def calibration_report(
    logits, labels, num_bins: int = DEFAULT_NUM_BINS, fit_logits=None, fit_labels=None, fit_split: Optional[str] = None
) -> dict:
    """Calibration of `logits` and, given a held-out split, after temperature scaling fitted on it.

    Returns `calibration_metrics(logits, labels)` plus, with `fit_logits`/`fit_labels`, "temperature_scaling":
    {"fitted_on": fit_split, "temperature", "fit_nll_before", "fit_nll_after", "at_bound", "after":
    calibration_metrics(logits / T, labels)}. Accuracy and balanced accuracy do not change (T > 0 keeps the
    argmax); only confidences do.
    """
    report = calibration_metrics(logits, labels, num_bins)
    if fit_logits is not None:
        fit = fit_temperature(fit_logits, fit_labels)
        scaled = np.asarray(logits, np.float64) / fit["temperature"]
        report["temperature_scaling"] = {
            "fitted_on": fit_split,
            "temperature": fit["temperature"],
            "fit_nll_before": fit["nll_before"],
            "fit_nll_after": fit["nll_after"],
            "at_bound": fit["at_bound"],
            "after": calibration_metrics(scaled, labels, num_bins),
        }
    return report
