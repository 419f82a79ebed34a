"""Metrics against hand-computed confusion matrices and independent reference code (sklearn is absent)."""
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from foprokd_jax import metrics

ISIC_NAMES = ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
ISIC_TRAIN_0002 = np.array([12725, 4372, 2180, 897, 369, 152, 62, 25])  # spec §8.1, imbalance 0.002


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
    out = metrics.confusion_update(jnp.zeros((8, 8), jnp.int32), jnp.asarray(logits), jnp.asarray(padded_labels),
                                   jnp.asarray(mask))
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

    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")),
                                 out_specs=P()))
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
    confusion = metrics.confusion_update(jnp.zeros((4, 4), jnp.int32), jnp.asarray(preds), jnp.asarray(labels),
                                         jnp.asarray(mask))
    masked = metrics.classification_report(np.asarray(confusion), None, list("abcd"))
    direct = metrics.classification_report(metrics.confusion_from_vectors(labels[:50], preds[:50], 4), None,
                                           list("abcd"))
    assert masked == direct
    assert masked["num_examples"] == 50


def test_head_medium_tail_groups_and_json():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(8), 100)  # the balanced ISIC test split: 100 per class
    preds = np.where(rng.random(800) < np.linspace(0.9, 0.3, 8)[labels], labels, 0)
    confusion = metrics.confusion_from_vectors(labels, preds, 8)
    report = metrics.classification_report(confusion, ISIC_TRAIN_0002, ISIC_NAMES)
    assert report["groups"] == {"head": ["NV", "MEL", "BCC", "BKL"], "medium": ["AK", "SCC"],
                                "tail": ["VASC", "DF"]}
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
