"""Classification metrics for long-tailed evaluation, built on a confusion matrix.

The device side only accumulates a `C x C` confusion matrix (`confusion_update`, pure jnp, masked so that
eval padding counts for nothing); every summary number is derived from it on the host
(`classification_report`, numpy). A confusion matrix is a sufficient statistic for all of them, it sums
exactly across devices and batches, and it is tiny to `device_get` (spec §9, conventions §6.9).

The host-side formulas follow scikit-learn's semantics, which the released FoPro-KD code used:
  * `bacc`      = `balanced_accuracy_score`: mean recall over classes that occur in the labels; classes
                  with no true example are left out, with a warning.
  * `macro_f1`  = `f1_score(average='macro', zero_division=0)`: mean F1 over classes that occur in the
                  labels OR the predictions (sklearn's `unique_labels`); F1 = 2TP / (2TP + FP + FN).
  * `mcc`       = `matthews_corrcoef` (Gorodkin's multiclass R_K), 0.0 when a marginal is constant.
scikit-learn itself is not a dependency; tests check these against independent reference code.
"""
import warnings
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

GROUP_ORDER = ("head", "medium", "tail")


def confusion_update(confusion: jnp.ndarray, logits_or_preds: jnp.ndarray, labels: jnp.ndarray,
                     mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
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
    cov_pred_pred = num_samples ** 2 - pred_totals @ pred_totals
    cov_true_true = num_samples ** 2 - true_totals @ true_totals
    if cov_pred_pred * cov_true_true == 0:
        return 0.0
    return float(cov_true_pred / np.sqrt(cov_true_true * cov_pred_pred))


def assign_frequency_groups(train_class_counts, class_names: Sequence[str], head_min: int = 700,
                            tail_max: int = 70) -> dict:
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


def classification_report(confusion, train_class_counts=None, class_names: Optional[Sequence[str]] = None,
                          head_min: int = 700, tail_max: int = 70) -> dict:
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
    support = confusion.sum(axis=1)          # true examples per class
    predicted = confusion.sum(axis=0)        # predictions per class
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
        "per_class_recall": {name: (float(recall[i]) if present[i] else None)
                             for i, name in enumerate(class_names)},
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


def report_scalars(report: dict, prefix: str = "val/") -> dict:
    """Flattens a `classification_report` into `{prefix + name: float}` for a scalar writer.

    Per-class recalls become `prefix + "recall/" + class_name`; undefined (None) values are dropped.
    """
    scalars = {}
    for key in ("accuracy", "bacc", "macro_f1", "mcc", "head_recall", "medium_recall", "tail_recall"):
        if key in report:
            scalars[prefix + key] = report[key]
    for name, value in report["per_class_recall"].items():
        if value is not None:
            scalars[f"{prefix}recall/{name}"] = value
    return scalars
