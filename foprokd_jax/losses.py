"""Losses, each returning per-example values so the caller decides how to reduce (masking, pmean).

Long-tail classification losses follow the released Fed-MAS/FoPro-KD code (`methods/utils.py`,
see `shared/specs/fopro_kd_spec.md` §5); the distillation term is EKD's normalised-feature loss (§3.4).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def log_class_prior(class_counts) -> np.ndarray:
    """log(pi_c + 1e-12) with pi_c = n_c / sum(n), exactly as Balanced Softmax in the reference code."""
    counts = np.asarray(class_counts, np.float64)
    if counts.ndim != 1 or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError(f"class_counts must be a non-negative 1-D vector with a positive sum, got {counts}")
    return np.log(counts / counts.sum() + 1e-12).astype(np.float32)


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Per-example cross-entropy with integer labels (torch `nn.CrossEntropyLoss(reduction='none')`)."""
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def balanced_softmax(logits: jnp.ndarray, labels: jnp.ndarray, log_prior: jnp.ndarray) -> jnp.ndarray:
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE on logits shifted by the log class prior.

    Only the training loss sees the shift; evaluation takes argmax of the raw logits (spec §13.7).
    """
    return softmax_cross_entropy(logits + log_prior, labels)


def normalized_feature_distance(student: jnp.ndarray, teacher: jnp.ndarray) -> jnp.ndarray:
    """EKD's distillation term: 2 - 2 cos(p, t), i.e. ||p/|p| - t/|t|||^2 (BYOL-style), per example.

    Normalisation matches `F.normalize` (eps 1e-12 on the norm), in float32.
    """
    def _normalize(v):
        v = v.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
        return v / jnp.maximum(norm, 1e-12)
    return 2.0 - 2.0 * jnp.sum(_normalize(student) * _normalize(teacher), axis=-1)


def make_classification_loss(name: str, class_counts) -> Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]:
    """Returns `loss(logits, labels) -> per-example loss` for a long-tail loss by name.

    Implemented: 'ce' and 'bsm'. Other losses of the reference code (focal, LDAM-DRW, CB, RW, LCC) belong to
    the long-tail baselines issue and raise a clear error here rather than silently falling back.
    """
    if name == "ce":
        return softmax_cross_entropy
    if name == "bsm":
        log_prior = jnp.asarray(log_class_prior(class_counts))
        return lambda logits, labels: balanced_softmax(logits, labels, log_prior)
    raise ValueError(f"Unknown classification loss {name!r}; available: 'ce', 'bsm'.")
