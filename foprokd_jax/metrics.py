"""Classification metrics for long-tailed evaluation, built on a confusion matrix.

The device side only accumulates a `C x C` confusion matrix (`confusion_update`, pure jnp, masked so that
eval padding counts for nothing); every summary number is derived from it on the host
(`classification_report`, numpy). A confusion matrix is a sufficient statistic for all of them, it sums
exactly across devices and batches, and it is tiny to `device_get` (docs/reference_semantics.md §9).

The host-side formulas follow scikit-learn's semantics, which the released FoPro-KD code used:
  * `bacc`      = `balanced_accuracy_score`: mean recall over classes that occur in the labels; classes
                  with no true example are left out, with a warning.
  * `macro_f1`  = `f1_score(average='macro', zero_division=0)`: mean F1 over classes that occur in the
                  labels OR the predictions (sklearn's `unique_labels`); F1 = 2TP / (2TP + FP + FN).
  * `mcc`       = `matthews_corrcoef` (Gorodkin's multiclass R_K), 0.0 when a marginal is constant.
scikit-learn itself is not a dependency of the package (tests compare against it).

`full_report` (host side, from probabilities) adds what CRCKD reports (docs/crckd.md §R9): macro
precision/recall/specificity, Cohen's kappa (unweighted and quadratic) and the macro one-vs-rest AUC;
`mean_of_last_evals` gives CRCKD's "mean over the final N evaluations" from a run's metrics.jsonl.
"""

import math
import warnings
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.metric_writer import read_metrics_jsonl

GROUP_ORDER = ("head", "medium", "tail")


def confusion_update(
    confusion: jnp.ndarray, logits_or_preds: jnp.ndarray, labels: jnp.ndarray, mask: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
    """Returns `confusion + counts`, where `counts[true, pred]` counts this batch's unmasked examples.

    Args:
      confusion: (C, C) int32 running matrix, rows = true class, columns = predicted class.
      logits_or_preds: (..., C) logits/scores (argmax is taken) or (...) integer predictions; the
        leading shape must equal `labels.shape` (any rank, so per-device (devices, batch) stacks work).
      labels: (...) integer true classes. Labels outside [0, C) (e.g. -1 on padding) add nothing.
      mask: (...) bool/0-1 weights; examples with mask 0 add nothing. None means all ones.

    Pure and shape-static, so it can be used under `jit` and inside `jax.shard_map` (psum the result
    over the data axis there to get the global matrix).
    """
    num_classes = confusion.shape[0]
    # One extra trailing axis means scores over classes; otherwise these already are class indices.
    is_scores = logits_or_preds.ndim == labels.ndim + 1
    preds = jnp.argmax(logits_or_preds, axis=-1) if is_scores else logits_or_preds
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {logits_or_preds.shape} do not match labels {labels.shape}")
    preds = jnp.reshape(preds, (-1,))
    labels = jnp.reshape(labels, (-1,))
    weights = jnp.ones(labels.shape, jnp.float32) if mask is None else jnp.reshape(mask, (-1,)).astype(jnp.float32)
    # One-hot outer product instead of a scatter: negative labels would wrap around in `.at[].add`,
    # whereas `one_hot` maps anything outside [0, C) to an all-zero row. The product runs in float32
    # (integer matmuls are poorly supported on some accelerators) and is exact for batches < 2**24.
    true_onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
    pred_onehot = jax.nn.one_hot(preds, num_classes, dtype=jnp.float32)
    counts = jnp.einsum("ni,nj->ij", true_onehot, pred_onehot, precision=jax.lax.Precision.HIGHEST)
    return confusion + jnp.round(counts).astype(confusion.dtype)


def confusion_from_vectors(labels, preds, num_classes: int) -> np.ndarray:
    """Host-side (numpy) confusion matrix from label and prediction vectors, `[true, pred]`."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    preds = np.asarray(preds, np.int64).reshape(-1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, preds), 1)
    return confusion


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise division with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def matthews_corrcoef_from_confusion(confusion: np.ndarray) -> float:
    """Multiclass MCC (R_K) from a confusion matrix; 0.0 when either marginal is constant, like sklearn."""
    confusion = np.asarray(confusion, np.float64)  # float64: products of counts overflow nothing here
    true_totals = confusion.sum(axis=1)
    pred_totals = confusion.sum(axis=0)
    num_correct = np.trace(confusion)
    num_samples = confusion.sum()
    cov_true_pred = num_correct * num_samples - true_totals @ pred_totals
    cov_pred_pred = num_samples**2 - pred_totals @ pred_totals
    cov_true_true = num_samples**2 - true_totals @ true_totals
    if cov_pred_pred * cov_true_true == 0:
        return 0.0
    return float(cov_true_pred / np.sqrt(cov_true_true * cov_pred_pred))


def assign_frequency_groups(
    train_class_counts, class_names: Sequence[str], head_min: int = 700, tail_max: int = 70
) -> dict:
    """Splits classes by TRAIN frequency: head (> head_min), tail (< tail_max), medium (the rest).

    Returns `{group: [class names]}` with only the non-empty groups, in head/medium/tail order.
    """
    counts = np.asarray(train_class_counts).reshape(-1)
    if counts.shape[0] != len(class_names):
        raise ValueError(f"{counts.shape[0]} train counts for {len(class_names)} classes")
    if tail_max > head_min:
        raise ValueError(f"tail_max ({tail_max}) must not exceed head_min ({head_min})")
    groups = {name: [] for name in GROUP_ORDER}
    for name, count in zip(class_names, counts):
        group = "head" if count > head_min else "tail" if count < tail_max else "medium"
        groups[group].append(name)
    return {name: members for name, members in groups.items() if members}


def classification_report(
    confusion,
    train_class_counts=None,
    class_names: Optional[Sequence[str]] = None,
    head_min: int = 700,
    tail_max: int = 70,
) -> dict:
    """All evaluation numbers from a `[true, pred]` confusion matrix, as a JSON-serialisable dict.

    Keys: `num_examples`, `accuracy`, `bacc`, `macro_f1`, `mcc`, `per_class_recall`,
    `per_class_precision`, `per_class_f1`, `per_class_support` (dicts by class name), `absent_classes`
    (names with no true example); with `train_class_counts` also `groups` and
    `head_recall`/`medium_recall`/`tail_recall` for the non-empty groups.

    Undefined values: recall of a class with no true example is None (it is excluded from `bacc` and
    from the group means, as sklearn excludes it from balanced accuracy); precision of a class that is
    never predicted is 0.0 (zero_division=0). No value is ever NaN. A group whose classes all have no
    eval examples is omitted like an empty group.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square (C, C), got shape {confusion.shape}")
    if np.any(confusion < 0):
        raise ValueError("confusion has negative counts")
    num_classes = confusion.shape[0]
    class_names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class confusion matrix")
    num_examples = int(confusion.sum())
    if num_examples == 0:
        raise ValueError("confusion matrix is empty: no examples were evaluated")

    confusion = confusion.astype(np.float64)
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)  # true examples per class
    predicted = confusion.sum(axis=0)  # predictions per class
    present = support > 0
    recall = _safe_divide(true_positives, support)
    precision = _safe_divide(true_positives, predicted)
    f1_denominator = 2 * true_positives + (predicted - true_positives) + (support - true_positives)
    f1 = _safe_divide(2 * true_positives, f1_denominator)

    absent = [name for name, is_present in zip(class_names, present) if not is_present]
    if absent:
        # Same condition under which sklearn warns "y_pred contains classes not in y_true".
        warnings.warn(f"classes with no true examples are excluded from balanced accuracy: {absent}")
    # sklearn's macro average runs over labels seen in y_true or y_pred, not over all C classes.
    in_true_or_pred = present | (predicted > 0)

    report = {
        "num_examples": num_examples,
        "accuracy": float(true_positives.sum() / num_examples),
        "bacc": float(recall[present].mean()),
        "macro_f1": float(f1[in_true_or_pred].mean()),
        "mcc": matthews_corrcoef_from_confusion(confusion),
        "per_class_recall": {name: (float(recall[i]) if present[i] else None) for i, name in enumerate(class_names)},
        "per_class_precision": {name: float(precision[i]) for i, name in enumerate(class_names)},
        "per_class_f1": {name: float(f1[i]) for i, name in enumerate(class_names)},
        "per_class_support": {name: int(support[i]) for i, name in enumerate(class_names)},
        "absent_classes": absent,
    }

    if train_class_counts is not None:
        groups = assign_frequency_groups(train_class_counts, class_names, head_min, tail_max)
        report["groups"] = groups
        for group, members in groups.items():
            recalls = [report["per_class_recall"][name] for name in members]
            recalls = [r for r in recalls if r is not None]
            if recalls:
                report[f"{group}_recall"] = float(np.mean(recalls))
    return report


# Scalars written to metrics.jsonl / TensorBoard after each evaluation, when the report has them.
SCALAR_KEYS = (
    "accuracy",
    "bacc",
    "macro_f1",
    "mcc",
    "head_recall",
    "medium_recall",
    "tail_recall",
    "macro_precision",
    "macro_recall",
    "macro_specificity",
    "kappa",
    "kappa_quadratic",
    "auc",
)


def report_scalars(report: dict, prefix: str = "val/") -> dict:
    """Flattens a `classification_report`/`full_report` into `{prefix + name: float}` for a scalar writer.

    Per-class recalls become `prefix + "recall/" + class_name`; undefined (None) values are dropped.
    """
    scalars = {}
    for key in SCALAR_KEYS:
        if report.get(key) is not None:
            scalars[prefix + key] = report[key]
    for name, value in report["per_class_recall"].items():
        if value is not None:
            scalars[f"{prefix}recall/{name}"] = value
    return scalars


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64 on the host (float64 so near-equal logits keep distinct probabilities)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (scipy's rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group_of = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], len(values))  # exclusive
    ranks = np.empty(len(values), np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group_of]
    return ranks


def binary_auc(scores, is_positive) -> Optional[float]:
    """ROC AUC as the Mann-Whitney statistic; a tie between a positive and a negative counts 1/2.

    Equal to sklearn's trapezoidal `roc_auc_score` (ties in the scores are one ROC point, so the
    trapezoid gives them half credit). None when there are no positives or no negatives.
    """
    scores = np.asarray(scores).reshape(-1)
    is_positive = np.asarray(is_positive, bool).reshape(-1)
    num_pos = int(is_positive.sum())
    num_neg = is_positive.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return None
    rank_sum = _average_ranks(scores)[is_positive].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def one_vs_rest_auc(probs, labels, class_names: Sequence[str]):
    """Macro one-vs-rest AUC as CRCKD reports it, and the per-class AUCs (docs/crckd.md §R9).

    CRCKD calls `roc_auc_score(onehot(labels), probs, average='macro', multi_class='ovo')`; with one-hot
    targets sklearn ignores `multi_class` and returns the mean over classes of the binary AUC of column c
    against `labels == c`. A class with no example in `labels` (or with every example) has no AUC: its
    entry is None and it is left out of the mean, with a warning (sklearn 1.9 instead returns NaN for
    the whole mean, older versions raise). Returns (macro AUC or None, {name: AUC or None}).
    """
    per_class = {}
    for c, name in enumerate(class_names):
        per_class[str(name)] = binary_auc(probs[:, c], labels == c)
    undefined = [name for name, value in per_class.items() if value is None]
    if undefined:
        warnings.warn(
            f"one-vs-rest AUC is undefined for classes absent from the labels (or holding all of "
            f"them), left out of the macro AUC: {undefined}"
        )
    defined = [value for value in per_class.values() if value is not None]
    return (float(np.mean(defined)) if defined else None), per_class


def cohen_kappa_from_confusion(confusion, weights: Optional[str] = None) -> Optional[float]:
    """Cohen's kappa between true and predicted classes; `weights` None (unweighted) or 'quadratic'.

    Disagreement weights use the class indices 0..C-1 ((i - j)^2 for 'quadratic'), i.e. sklearn's
    `cohen_kappa_score(..., labels=range(C))`. Without `labels`, sklearn re-indexes the classes that occur
    and its quadratic kappa differs when a class in the middle of an ordinal scale never occurs.
    Returns None when undefined (no expected disagreement: both raters use one and the same class).
    """
    confusion = np.asarray(confusion, np.float64)
    num_classes = confusion.shape[0]
    index = np.arange(num_classes)
    if weights is None:
        disagreement = 1.0 - np.eye(num_classes)
    elif weights == "quadratic":
        disagreement = (index[:, None] - index[None, :]) ** 2.0
    else:
        raise ValueError(f"kappa weights must be None or 'quadratic', got {weights!r}")
    total = confusion.sum()
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / total
    expected_disagreement = float(np.sum(disagreement * expected))
    if expected_disagreement == 0.0:
        return None
    return float(1.0 - np.sum(disagreement * confusion) / expected_disagreement)


def _check_probs_and_labels(probs, labels, class_names) -> tuple:
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(
            f"probs must have shape (N, {len(class_names)}) for {len(class_names)} classes, got {probs.shape}"
        )
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},) to match probs, got {labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("no examples: probs and labels are empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"probs hold {int(np.sum(~np.isfinite(probs)))} non-finite values")
    row_sums = probs.sum(axis=1, dtype=np.float64)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if probs.min() < 0 or abs(row_sums[worst] - 1.0) > 1e-3:
        # AUC ranks each class column, and the softmax does not preserve a column's order of logits.
        raise ValueError(
            f"probs must be probabilities (softmax of the logits): row {worst} sums to "
            f"{row_sums[worst]:.6g}, min value {probs.min():.6g}"
        )
    return probs, labels.astype(np.int64)


def full_report(
    probs,
    labels,
    class_names: Sequence[str],
    train_counts=None,
    head_min: int = 700,
    tail_max: int = 70,
    predictions=None,
) -> dict:
    """Every evaluation number of FoPro-KD (docs/reference_semantics.md §9) and CRCKD (docs/crckd.md §R9),
    JSON-serialisable.

    Args:
      probs: (N, C) class probabilities (rows sum to 1); scored by the AUC.
      labels: (N,) integer true classes.
      class_names: the C class names, in class-index order.
      train_counts: per-class training counts for the head/medium/tail groups (optional).
      predictions: (N,) predicted classes; default argmax of `probs`. Pass argmax of the logits to count
        exactly what a confusion matrix of the logits counts (a float32 softmax can tie near-equal logits).

    Returns everything `classification_report` returns, plus `confusion` (list of lists, [true, pred]),
    `macro_precision`, `macro_recall`, `macro_specificity` (sklearn/imblearn `average='macro'`: mean over
    classes present in the labels or the predictions, 0 for an undefined ratio), `per_class_specificity`
    (TN / (TN + FP)), `kappa`, `kappa_quadratic` (`cohen_kappa_from_confusion`, None if undefined), `auc`
    and `per_class_auc` (`one_vs_rest_auc`) and `auc_undefined_classes`. No value is NaN.
    """
    class_names = [str(name) for name in class_names]
    probs, labels = _check_probs_and_labels(probs, labels, class_names)
    predictions = np.argmax(probs, axis=1) if predictions is None else np.asarray(predictions, np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions must have shape {labels.shape}, got {predictions.shape}")
    num_classes = len(class_names)
    confusion = confusion_from_vectors(labels, predictions, num_classes)
    report = classification_report(confusion, train_counts, class_names, head_min, tail_max)

    counts = confusion.astype(np.float64)
    true_positives = np.diag(counts)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    in_true_or_pred = (support > 0) | (predicted > 0)
    negatives = counts.sum() - support
    false_positives = predicted - true_positives
    specificity = _safe_divide(negatives - false_positives, negatives)
    recall = _safe_divide(true_positives, support)
    precision = _safe_divide(true_positives, predicted)
    auc, per_class_auc = one_vs_rest_auc(probs, labels, class_names)
    report.update(
        {
            "confusion": confusion.tolist(),
            "macro_precision": float(precision[in_true_or_pred].mean()),
            "macro_recall": float(recall[in_true_or_pred].mean()),
            "macro_specificity": float(specificity[in_true_or_pred].mean()),
            "per_class_specificity": {name: float(specificity[i]) for i, name in enumerate(class_names)},
            "kappa": cohen_kappa_from_confusion(confusion),
            "kappa_quadratic": cohen_kappa_from_confusion(confusion, "quadratic"),
            "auc": auc,
            "per_class_auc": per_class_auc,
            "auc_undefined_classes": [name for name, value in per_class_auc.items() if value is None],
        }
    )
    return report


def mean_of_last_evals(metrics_jsonl_path: str, split_prefix: str, n: int) -> dict:
    """CRCKD's reported number: each metric averaged over the final `n` evaluations (docs/crckd.md §R9).

    Reads the evaluation records that `report_scalars(report, prefix=split_prefix)` wrote to metrics.jsonl
    (`split_prefix` e.g. 'test/' or 'test'). A step logged twice (a resumed run) keeps its last values.
    Returns `{metric: mean, ..., "num_evals": k, "steps": [...]}` with the prefix stripped from metric
    names (e.g. 'bacc', 'auc', 'recall/NV'); a metric is averaged over those of the k evaluations that
    logged a finite value. Fewer than `n` evaluations: all are used, with a warning.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prefix = split_prefix if split_prefix.endswith("/") else split_prefix + "/"
    by_step = {}
    for record in read_metrics_jsonl(metrics_jsonl_path):
        values = {key[len(prefix) :]: value for key, value in record.items() if key.startswith(prefix)}
        if values and "step" in record:
            by_step.setdefault(int(record["step"]), {}).update(values)
    if not by_step:
        raise ValueError(f"{metrics_jsonl_path} holds no evaluation records with prefix {prefix!r}")
    steps = sorted(by_step)[-n:]
    if len(steps) < n:
        warnings.warn(
            f"{metrics_jsonl_path}: only {len(steps)} '{prefix}' evaluations, fewer than the {n} "
            "asked for; averaging all of them"
        )
    sums, counts = {}, {}
    for step in steps:
        for key, value in by_step[step].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
    result = {key: sums[key] / counts[key] for key in sorted(sums)}
    result.update({"num_evals": len(steps), "steps": steps})
    return result
