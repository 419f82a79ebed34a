"""foprokd_jax.calibration against scikit-learn, scipy and hand computations: ECE bins, Brier, NLL, temperature."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from foprokd_jax import calibration


def _logits(rng, n=400, c=5, scale=3.0):
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * scale
    logits[np.arange(n), labels] += 2.0  # better than chance, over-confident at scale 3
    return logits, labels


def test_ece_hand_example_and_bin_edges():
    """4 examples, 2 width bins (0, .5], (.5, 1]: a confidence of exactly 0.5 falls in the lower bin."""
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.1, 0.0, 0.9], [0.6, 0.4, 0.0]])
    labels = np.array([1, 1, 0, 0])  # argmax of row 0 is class 0 (first maximum): wrong
    bins = calibration.reliability_bins(probs, labels, num_bins=2, binning="width")
    assert bins["edges"] == [0.0, 0.5, 1.0] and bins["count"] == [1, 3]
    assert bins["accuracy"] == [0.0, pytest.approx(2 / 3)]
    assert bins["confidence"] == [0.5, pytest.approx((0.8 + 0.9 + 0.6) / 3)]
    # ECE = 1/4 |0 - .5| + 3/4 |2/3 - 2.3/3| = 0.125 + 0.075
    assert bins["ece"] == pytest.approx(0.2, abs=1e-12)
    assert bins["mce"] == pytest.approx(0.5)
    mass = calibration.reliability_bins(probs, labels, num_bins=2, binning="mass")
    assert mass["edges"] == pytest.approx([0.5, 0.7, 0.9]) and mass["count"] == [2, 2]


@pytest.mark.parametrize("binning,strategy", [("width", "uniform"), ("mass", "quantile")])
def test_reliability_bins_equal_sklearn_calibration_curve(binning, strategy):
    rng = np.random.default_rng(0)
    logits, labels = _logits(rng)
    probs = scipy.special.softmax(logits, axis=1)
    bins = calibration.reliability_bins(probs, labels, num_bins=10, binning=binning)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(int)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, strategy=strategy)
    nonempty = [i for i, n in enumerate(bins["count"]) if n > 0]
    np.testing.assert_allclose([bins["accuracy"][i] for i in nonempty], prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose([bins["confidence"][i] for i in nonempty], prob_pred, rtol=0, atol=1e-12)
    # ECE from sklearn's per-bin numbers, counts from an independent np.histogram-style count.
    edges = np.asarray(bins["edges"])
    counts = np.array([np.sum((confidence > lo) & (confidence <= hi)) for lo, hi in zip(edges[:-1], edges[1:])])
    counts[0] += np.sum(confidence == edges[0])
    np.testing.assert_array_equal(counts, bins["count"])
    expected = np.sum(counts[nonempty] / len(labels) * np.abs(prob_true - prob_pred))
    assert bins["ece"] == pytest.approx(expected, abs=1e-12)
    if binning == "mass":
        assert max(bins["count"]) - min(bins["count"]) <= 1  # no ties: equal mass


def test_brier_and_nll_equal_sklearn():
    rng = np.random.default_rng(1)
    logits, labels = _logits(rng, n=300, c=4)
    probs = scipy.special.softmax(logits, axis=1)
    assert calibration.brier_score(probs, labels) == pytest.approx(
        brier_score_loss(labels, probs, labels=[0, 1, 2, 3], scale_by_half=False), abs=1e-12
    )
    assert calibration.negative_log_likelihood(logits, labels) == pytest.approx(
        log_loss(labels, probs, labels=[0, 1, 2, 3]), rel=1e-9
    )
    # Far beyond float32 probabilities: the log-sum-exp form stays exact where probabilities underflow.
    extreme = np.array([[800.0, 0.0], [0.0, 900.0]])
    assert calibration.negative_log_likelihood(extreme, np.array([1, 0])) == pytest.approx(850.0)


def test_temperature_equals_scipy_minimiser_and_keeps_accuracy():
    rng = np.random.default_rng(2)
    logits, labels = _logits(rng, n=500, c=6, scale=4.0)
    fit = calibration.fit_temperature(logits, labels)

    def nll(t):
        return -np.mean(scipy.special.log_softmax(logits / t, axis=1)[np.arange(len(labels)), labels])

    ref = scipy.optimize.minimize_scalar(nll, bounds=(0.01, 100.0), method="bounded", options={"xatol": 1e-10})
    assert fit["temperature"] == pytest.approx(ref.x, rel=1e-6)
    assert fit["temperature"] > 1.0  # the synthetic logits are over-confident
    assert (
        fit["nll_after"] == pytest.approx(nll(fit["temperature"]), rel=1e-12) and fit["nll_after"] < fit["nll_before"]
    )
    val, test = slice(0, 250), slice(250, 500)
    report = calibration.calibration_report(logits[test], labels[test], 15, logits[val], labels[val], "val")
    scaling = report["temperature_scaling"]
    assert scaling["fitted_on"] == "val"
    assert scaling["temperature"] == pytest.approx(calibration.fit_temperature(logits[val], labels[val])["temperature"])
    assert scaling["after"]["nll"] < report["nll"] and scaling["after"]["ece"] < report["ece"]
    after_bins = scaling["after"]["bins"]["width"]
    assert sum(after_bins["count"]) == 250
    # Perfectly separated logits: the NLL falls without bound as T -> 0; the fit stops at the bound, says so.
    with pytest.warns(UserWarning, match="outside"):
        sharp = calibration.fit_temperature(np.array([[5.0, 0.0], [0.0, 5.0]]), np.array([0, 1]))
    assert sharp["at_bound"] and sharp["temperature"] == pytest.approx(calibration.T_MIN)
