"""Metrics against hand-computed cases, independent reference code and scikit-learn (a test-only dependency)."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from sklearn import metrics as sk

from foprokd_jax import metrics

ISIC_NAMES = ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
# docs/reference_semantics.md §8.1, imbalance 0.002
ISIC_TRAIN_0002 = np.array([12725, 4372, 2180, 897, 369, 152, 62, 25])


# ---- reference implementations written from the definitions, working on label/pred vectors ----


def reference_scores(labels, preds, num_classes):
    """Per-class recall/precision/F1 from TP/FP/FN counted example by example, plus sklearn-style means."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    recall, precision, f1 = {}, {}, {}
    for c in range(num_classes):
        tp = int(np.sum((labels == c) & (preds == c)))
        fp = int(np.sum((labels != c) & (preds == c)))
        fn = int(np.sum((labels == c) & (preds != c)))
        recall[c] = tp / (tp + fn) if tp + fn else None
        precision[c] = tp / (tp + fp) if tp + fp else 0.0
        f1[c] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    seen_in_labels = sorted(set(labels.tolist()))
    seen_anywhere = sorted(set(labels.tolist()) | set(preds.tolist()))
    bacc = np.mean([recall[c] for c in seen_in_labels])
    macro_f1 = np.mean([f1[c] for c in seen_anywhere])
    return recall, precision, f1, bacc, macro_f1


def reference_mcc(labels, preds, num_classes):
    """Gorodkin's R_K: covariance of the one-hot label and prediction vectors, summed over classes."""
    x = np.eye(num_classes)[np.asarray(labels)]
    y = np.eye(num_classes)[np.asarray(preds)]
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    cov_xy, cov_xx, cov_yy = np.sum(x * y), np.sum(x * x), np.sum(y * y)
    return 0.0 if cov_xx * cov_yy == 0 else cov_xy / np.sqrt(cov_xx * cov_yy)


def report_from_vectors(labels, preds, num_classes, **kwargs):
    confusion = metrics.confusion_from_vectors(labels, preds, num_classes)
    return metrics.classification_report(confusion, class_names=[str(c) for c in range(num_classes)], **kwargs)


# ---- confusion_update ----


def test_confusion_update_from_logits_and_preds_with_mask():
    labels = jnp.array([0, 1, 2, 2, 1, 0])
    preds = jnp.array([0, 2, 2, 1, 1, 1])
    mask = jnp.array([1, 1, 1, 1, 0, 0])  # the last two are eval padding
    expected = np.zeros((3, 3), np.int32)
    for t, p in [(0, 0), (1, 2), (2, 2), (2, 1)]:
        expected[t, p] += 1
    start = jnp.zeros((3, 3), jnp.int32)
    from_preds = metrics.confusion_update(start, preds, labels, mask)
    logits = jax.nn.one_hot(preds, 3) * 5.0 - 1.0
    from_logits = jax.jit(metrics.confusion_update)(start, logits, labels, mask.astype(bool))
    assert from_preds.dtype == jnp.int32
    np.testing.assert_array_equal(from_preds, expected)
    np.testing.assert_array_equal(from_logits, expected)
    # Accumulates onto the running matrix.
    np.testing.assert_array_equal(metrics.confusion_update(from_preds, preds, labels, mask), 2 * expected)


def test_confusion_update_ignores_padding_labels_and_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, size=(4, 33))  # extra leading axis: per-device stacks
    logits = rng.normal(size=(4, 33, 8)).astype(np.float32)
    mask = rng.random((4, 33)) > 0.3
    padded_labels = np.where(mask, labels, -1)  # padding often carries label -1; must not wrap to class 7
    out = metrics.confusion_update(
        jnp.zeros((8, 8), jnp.int32), jnp.asarray(logits), jnp.asarray(padded_labels), jnp.asarray(mask)
    )
    expected = metrics.confusion_from_vectors(labels[mask], logits.argmax(-1)[mask], 8)
    np.testing.assert_array_equal(out, expected)
    assert int(out.sum()) == int(mask.sum())


def test_confusion_update_inside_shard_map_with_psum():
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    n = 16 * len(devices)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=n)
    logits = rng.normal(size=(n, 5)).astype(np.float32)
    mask = rng.random(n) > 0.2

    def per_device(confusion, logits, labels, mask):
        local = metrics.confusion_update(jnp.zeros_like(confusion), logits, labels, mask)
        return confusion + jax.lax.psum(local, "data")

    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")), out_specs=P()))
    out = step(jnp.zeros((5, 5), jnp.int32), logits, labels, mask)
    np.testing.assert_array_equal(out, metrics.confusion_from_vectors(labels[mask], logits.argmax(-1)[mask], 5))


# ---- classification_report ----


def test_hand_computed_three_class_example():
    # y_true = [0, 0, 1, 1, 2], y_pred = [0, 1, 1, 1, 0]  ->  [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    confusion = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    report = metrics.classification_report(confusion, None, ["a", "b", "c"])
    assert report["num_examples"] == 5
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class_recall"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})
    assert report["bacc"] == pytest.approx(0.5)
    assert report["per_class_precision"] == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 0.0})  # c never predicted
    assert report["per_class_f1"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert report["macro_f1"] == pytest.approx(1.3 / 3)
    # n=5, correct=3, t=[2,2,1], p=[2,3,0]: (15-10) / sqrt((25-9) * (25-13))
    assert report["mcc"] == pytest.approx(5 / np.sqrt(16 * 12))
    assert "groups" not in report and "head_recall" not in report


@pytest.mark.parametrize("seed", range(6))
def test_random_vectors_match_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes = 8
    labels = rng.choice(num_classes, size=300, p=np.array([40, 20, 12, 10, 8, 5, 3, 2]) / 100)
    # A skewed, imperfect classifier: right 60% of the time, otherwise biased towards the head class.
    preds = np.where(rng.random(300) < 0.6, labels, rng.choice(num_classes, size=300, p=[0.5] + [0.5 / 7] * 7))
    if seed % 2:
        preds[preds == 7] = 0  # class 7 is never predicted
    recall, precision, f1, bacc, macro_f1 = reference_scores(labels, preds, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rare class can be absent from a random draw
        report = report_from_vectors(labels, preds, num_classes)
    assert report["bacc"] == pytest.approx(bacc, abs=1e-12)
    assert report["macro_f1"] == pytest.approx(macro_f1, abs=1e-12)
    assert report["mcc"] == pytest.approx(reference_mcc(labels, preds, num_classes), abs=1e-12)
    assert report["accuracy"] == pytest.approx(np.mean(labels == preds))
    for c in range(num_classes):
        assert report["per_class_precision"][str(c)] == pytest.approx(precision[c])
        assert report["per_class_f1"][str(c)] == pytest.approx(f1[c])
        if recall[c] is None:
            assert report["per_class_recall"][str(c)] is None
        else:
            assert report["per_class_recall"][str(c)] == pytest.approx(recall[c])


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 3, 3, 2, 1, 0, 0])
    report = report_from_vectors(labels, labels, 4)
    for key in ("bacc", "accuracy", "macro_f1", "mcc"):
        assert report[key] == pytest.approx(1.0)


def test_everything_predicted_as_one_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    preds = np.zeros_like(labels)
    report = report_from_vectors(labels, preds, 4)
    assert report["bacc"] == pytest.approx(0.25)
    assert report["mcc"] == 0.0  # constant prediction: sklearn returns 0, not NaN
    assert report["per_class_precision"]["0"] == pytest.approx(0.5)
    assert report["per_class_precision"]["1"] == 0.0
    assert report["macro_f1"] == pytest.approx((2 * 4 / (8 + 4)) / 4)


def test_single_true_class_excludes_absent_classes_with_warning():
    labels = np.array([1, 1, 1, 1])
    preds = np.array([1, 1, 0, 1])
    with pytest.warns(UserWarning, match="no true examples"):
        report = report_from_vectors(labels, preds, 3)
    assert report["bacc"] == pytest.approx(0.75)  # only class 1 counts, as in sklearn
    assert report["per_class_recall"] == {"0": None, "1": 0.75, "2": None}
    assert report["absent_classes"] == ["0", "2"]
    # macro-F1 over classes in y_true or y_pred ({0, 1}); class 2 appears in neither.
    assert report["macro_f1"] == pytest.approx((0.0 + 2 * 3 / (6 + 0 + 1)) / 2)
    assert report["mcc"] == 0.0  # y_true is constant


def test_masked_examples_do_not_change_the_report():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 64)
    preds = rng.integers(0, 4, 64)
    mask = np.arange(64) < 50
    confusion = metrics.confusion_update(
        jnp.zeros((4, 4), jnp.int32), jnp.asarray(preds), jnp.asarray(labels), jnp.asarray(mask)
    )
    masked = metrics.classification_report(np.asarray(confusion), None, list("abcd"))
    direct = metrics.classification_report(
        metrics.confusion_from_vectors(labels[:50], preds[:50], 4), None, list("abcd")
    )
    assert masked == direct
    assert masked["num_examples"] == 50


def test_head_medium_tail_groups_and_json():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(8), 100)  # the balanced ISIC test split: 100 per class
    preds = np.where(rng.random(800) < np.linspace(0.9, 0.3, 8)[labels], labels, 0)
    confusion = metrics.confusion_from_vectors(labels, preds, 8)
    report = metrics.classification_report(confusion, ISIC_TRAIN_0002, ISIC_NAMES)
    assert report["groups"] == {"head": ["NV", "MEL", "BCC", "BKL"], "medium": ["AK", "SCC"], "tail": ["VASC", "DF"]}
    recall = report["per_class_recall"]
    assert report["head_recall"] == pytest.approx(np.mean([recall[n] for n in ("NV", "MEL", "BCC", "BKL")]))
    assert report["medium_recall"] == pytest.approx(np.mean([recall["AK"], recall["SCC"]]))
    assert report["tail_recall"] == pytest.approx(np.mean([recall["VASC"], recall["DF"]]))
    assert report["bacc"] == pytest.approx(report["accuracy"])  # balanced eval set: top-1 == BAcc
    round_trip = json.loads(json.dumps(report, allow_nan=False))
    assert round_trip == report
    assert all(type(v) in (float, int) for v in metrics.report_scalars(report).values())


def test_empty_groups_are_omitted_not_nan():
    # At imbalance 0.01 no class has fewer than 70 training images (DF has 89): no tail group.
    train_001 = np.array([12725, 4372, 3173, 1788, 717, 478, 103, 89])
    report = metrics.classification_report(np.eye(8, dtype=int) * 10, train_001, ISIC_NAMES)
    assert set(report["groups"]) == {"head", "medium"}
    assert "tail_recall" not in report
    assert report["groups"]["head"] == ["NV", "MEL", "BCC", "BKL", "AK"]  # 717 > 700


def test_invalid_inputs():
    with pytest.raises(ValueError):
        metrics.classification_report(np.zeros((3, 3)), None, list("abc"))
    with pytest.raises(ValueError):
        metrics.classification_report(np.ones((3, 2)), None, list("abc"))
    with pytest.raises(ValueError):
        metrics.classification_report(np.eye(3), None, list("ab"))


# ---- full_report (probabilities) against scikit-learn ----


def _random_case(seed, num_classes=6, n=120, missing_class=None, ties=False):
    rng = np.random.default_rng(seed)
    frequencies = np.linspace(2.0, 0.5, num_classes)  # a mild long tail
    labels = rng.choice(num_classes, size=n, p=frequencies / frequencies.sum())
    if missing_class is not None:
        labels[labels == missing_class] = (missing_class + 1) % num_classes
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    if ties:
        logits = np.round(logits)  # many equal scores within a class column, and argmax ties
    probs = metrics.softmax(logits).astype(np.float32)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize(
    "seed,missing,ties",
    [(0, None, False), (1, None, True), (2, 3, False), (3, 0, True), (4, None, False), (5, 5, True)],
)
def test_full_report_matches_sklearn(seed, missing, ties):
    num_classes = 6
    probs, labels = _random_case(seed, num_classes, missing_class=missing, ties=ties)
    names = [f"c{i}" for i in range(num_classes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = metrics.full_report(probs, labels, names)
    preds = probs.argmax(1)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert report["bacc"] == pytest.approx(sk.balanced_accuracy_score(labels, preds), abs=1e-12)
    for key, fn in (
        ("macro_precision", sk.precision_score),
        ("macro_recall", sk.recall_score),
        ("macro_f1", sk.f1_score),
    ):
        assert report[key] == pytest.approx(fn(labels, preds, average="macro", zero_division=0), abs=1e-12), key
    assert report["mcc"] == pytest.approx(sk.matthews_corrcoef(labels, preds), abs=1e-12)
    assert report["kappa"] == pytest.approx(sk.cohen_kappa_score(labels, preds), abs=1e-12)
    assert report["kappa_quadratic"] == pytest.approx(
        sk.cohen_kappa_score(labels, preds, weights="quadratic", labels=list(range(num_classes))), abs=1e-12
    )
    # Specificity per class from sklearn's one-vs-rest confusion matrices ([[tn, fp], [fn, tp]]).
    ovr = sk.multilabel_confusion_matrix(labels, preds, labels=list(range(num_classes)))
    specificity = ovr[:, 0, 0] / (ovr[:, 0, 0] + ovr[:, 0, 1])
    for c in range(num_classes):
        assert report["per_class_specificity"][names[c]] == pytest.approx(specificity[c], abs=1e-12)
    seen = sorted(set(labels) | set(preds))  # imblearn's macro runs over sklearn's unique_labels
    assert report["macro_specificity"] == pytest.approx(np.mean(specificity[seen]), abs=1e-12)
    # CRCKD's AUC call: one-hot targets make it a multilabel macro of per-class one-vs-rest AUCs.
    present = sorted(set(labels))
    onehot = np.eye(num_classes)[labels]
    expected_auc = sk.roc_auc_score(onehot[:, present], probs[:, present], average="macro", multi_class="ovo")
    assert report["auc"] == pytest.approx(expected_auc, abs=1e-12)
    per_class = sk.roc_auc_score(onehot[:, present], probs[:, present], average=None)
    for c, value in zip(present, per_class):
        assert report["per_class_auc"][names[c]] == pytest.approx(value, abs=1e-12)
    if missing is None:
        assert report["auc"] == pytest.approx(sk.roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-12)
        assert report["auc_undefined_classes"] == []
    else:
        assert report["per_class_auc"][names[missing]] is None
        assert report["auc_undefined_classes"] == [names[missing]]
    assert json.loads(json.dumps(report, allow_nan=False)) == report


@pytest.mark.filterwarnings("ignore:classes with no true examples")
def test_full_report_missing_class_warns_and_extends_classification_report():
    probs, labels = _random_case(7, 4, n=40, missing_class=2)
    with pytest.warns(UserWarning, match="AUC is undefined"):
        report = metrics.full_report(probs, labels, list("abcd"), train_counts=[800, 100, 50, 20])
    confusion = metrics.confusion_from_vectors(labels, probs.argmax(1), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = metrics.classification_report(confusion, [800, 100, 50, 20], list("abcd"))
    assert {k: report[k] for k in base} == base  # a superset of the confusion-matrix report
    assert report["confusion"] == confusion.tolist()
    assert report["groups"] == {"head": ["a"], "medium": ["b"], "tail": ["c", "d"]}
    assert report["tail_recall"] == report["per_class_recall"]["d"]  # c has no example


def test_binary_auc_hand_cases():
    # The textbook example: 3 of the 4 positive-negative pairs are ordered correctly.
    assert metrics.binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # Ties between a positive and a negative count one half: pairs (0.5+, 0.5-) -> 0.5, (0.5+, 0.2-) -> 1,
    # (0.9+, 0.5-) -> 1, (0.9+, 0.2-) -> 1: 3.5 / 4.
    assert metrics.binary_auc([0.5, 0.5, 0.9, 0.2], [1, 0, 1, 0]) == pytest.approx(3.5 / 4)
    assert metrics.binary_auc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)
    assert metrics.binary_auc([0.1, 0.2], [1, 1]) is None


def test_kappa_hand_cases():
    # y_true = [0, 0, 1, 2], y_pred = [0, 1, 1, 2]: po = 3/4; true marginals [2,1,1], pred [1,2,1]:
    # pe = (2*1 + 1*2 + 1*1) / 16 = 5/16; kappa = (12/16 - 5/16) / (11/16) = 7/11.
    confusion = metrics.confusion_from_vectors([0, 0, 1, 2], [0, 1, 1, 2], 3)
    assert metrics.cohen_kappa_from_confusion(confusion) == pytest.approx(7 / 11)
    # Quadratic: observed weighted disagreement = 1 (one error at distance 1) / 4; expected: sum over
    # (i, j) of (i-j)^2 t_i p_j / 16 = (0-1)^2*2*2 + (0-2)^2*2*1 + (1-0)^2*1*1 + (1-2)^2*1*1
    # + (2-0)^2*1*1 + (2-1)^2*1*2 = 4 + 8 + 1 + 1 + 4 + 2 = 20 -> 20/16.  kappa = 1 - (1/4) / (20/16) = 0.8.
    assert metrics.cohen_kappa_from_confusion(confusion, "quadratic") == pytest.approx(0.8)
    # One class used by both raters: undefined, reported as None (not NaN).
    assert metrics.cohen_kappa_from_confusion(np.array([[5, 0], [0, 0]])) is None


def test_full_report_rejects_bad_inputs():
    probs, labels = _random_case(8, 3, n=10)
    with pytest.raises(ValueError, match="softmax"):
        metrics.full_report(probs * 2, labels, list("abc"))  # logits/unnormalised scores
    with pytest.raises(ValueError, match="shape"):
        metrics.full_report(probs, labels, list("ab"))
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.full_report(probs, labels + 3, list("abc"))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.full_report(np.where(np.arange(3) == 1, np.nan, probs), labels, list("abc"))


def test_full_report_predictions_override_argmax_of_probs():
    probs = np.array([[0.5, 0.5], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([1, 1, 0])
    report = metrics.full_report(probs, labels, ["a", "b"], predictions=np.array([1, 1, 0]))
    assert report["accuracy"] == 1.0
    assert metrics.full_report(probs, labels, ["a", "b"])["accuracy"] == pytest.approx(2 / 3)  # tie -> class 0


# ---- mean_of_last_evals ----


def test_mean_of_last_evals_keeps_the_last_value_of_a_repeated_step(tmp_path):
    from foprokd_jax.metric_writer import MetricWriter

    with MetricWriter(str(tmp_path)) as writer:
        writer.write_scalars(1, {"train/loss": 3.0})
        for step, bacc in ((2, 0.1), (4, 0.2), (6, 0.3)):
            writer.write_scalars(step, {"test/bacc": bacc, "test/auc": 1 - bacc, "val/bacc": 9.0})
        writer.write_scalars(6, {"test/bacc": 0.5, "test/auc": 0.5})  # resumed run re-evaluates step 6
        writer.write_scalars(8, {"test/bacc": 0.7, "test/auc": float("nan")})
    out = metrics.mean_of_last_evals(str(tmp_path / "metrics.jsonl"), "test", 3)
    assert out["steps"] == [4, 6, 8] and out["num_evals"] == 3
    assert out["bacc"] == pytest.approx((0.2 + 0.5 + 0.7) / 3)
    assert out["auc"] == pytest.approx((0.8 + 0.5) / 2)  # the NaN evaluation is left out for this key
    assert set(out) == {"bacc", "auc", "num_evals", "steps"}
    with pytest.warns(UserWarning, match="fewer than"):
        assert metrics.mean_of_last_evals(str(tmp_path / "metrics.jsonl"), "test/", 11)["num_evals"] == 4
    with pytest.raises(ValueError, match="no evaluation records"):
        metrics.mean_of_last_evals(str(tmp_path / "metrics.jsonl"), "selection/", 3)


def test_report_scalars_include_full_report_numbers():
    probs, labels = _random_case(9, 3, n=30)
    scalars = metrics.report_scalars(metrics.full_report(probs, labels, list("abc")), prefix="test/")
    for key in ("bacc", "auc", "kappa_quadratic", "macro_specificity", "recall/a"):
        assert isinstance(scalars[f"test/{key}"], float)
