"""CRCKD's loss terms, each returned PER EXAMPLE so the step decides the (data-parallel) reduction.

Every formula is transcribed from the authors' code (docs/crckd.md §R3-§R6); the docs/crckd.md section and the
reference file are cited on each function. All of them work in float32.
"""

import jax
import jax.numpy as jnp

from foprokd_jax.losses import l2_normalize

NCE_EPS = 1e-7  # `eps` of utils/CCD_CRP_loss.py


def contrast_exp_scores(anchors: jnp.ndarray, rows: jnp.ndarray, temperature: float) -> jnp.ndarray:
    """exp(<anchor_i, rows_ij> / tau), shape (B, P+K): the un-normalised CCD scores (docs/crckd.md §R4.3).

    anchors (B, D) are this step's embeddings; rows (B, P+K, D) the gathered memory entries of the OTHER
    network (treated as constants by the caller).
    """
    dots = jnp.einsum("bd,bjd->bj", anchors.astype(jnp.float32), rows.astype(jnp.float32))
    return jnp.exp(dots / temperature)


def nce_loss_per_example(scores: jnp.ndarray, num_positives: int, n_data: int) -> jnp.ndarray:
    """CRD's binary NCE with P positives (docs/crckd.md §R4.4, `ContrastLoss.forward` in utils/CCD_CRP_loss.py).

    scores (B, P+K) = h_ij = exp(.)/Z; columns [0, P) are positives, [P, P+K) negatives. With the noise
    constant c = K / n_data:
        log D1 = log(h / (h + c + eps)),  log D0 = log(c / (h + c + eps))
        l_i = -[(1/P) sum_{pos} log D1 + sum_{neg} log D0]
    so that mean_i l_i is the reference's `-((sum log_D1 + P * sum log_D0) / bsz).sum() / P`: the
    positives are averaged over P, the negatives are NOT (docs/crckd.md G6).

    (The reference `.squeeze()` would drop the batch axis for a batch of ONE example and then skip the 1/P on
    the positives; batches are never that small, and this function keeps the general formula.)
    """
    if not 0 < num_positives < scores.shape[-1]:
        raise ValueError(
            f"num_positives={num_positives} must lie in [1, {scores.shape[-1]}) for scores of shape {scores.shape}"
        )
    num_negatives = scores.shape[-1] - num_positives
    noise = num_negatives / float(n_data)
    pos, neg = scores[:, :num_positives], scores[:, num_positives:]
    log_d1 = jnp.log(pos / (pos + noise + NCE_EPS))
    log_d0 = jnp.log(noise / (neg + noise + NCE_EPS))
    return -(jnp.mean(log_d1, axis=-1) + jnp.sum(log_d0, axis=-1))


def class_centroids(memory: jnp.ndarray, labels: jnp.ndarray, num_classes: int, relu: bool = True) -> jnp.ndarray:
    """CRP anchors: per class, the mean of (ReLU'd) memory rows of ALL its training samples, L2-normalised.

    docs/crckd.md §R5.1 (`anchor_type='center'`, utils/CCD_CRP_loss.py): `mean_n ReLU(M[n])` over the class's
    training indices, then `Normalize(2)`. `labels` (N_train,) holds the class of memory rows 0..N_train-1;
    rows past N_train (a larger `n_data`) belong to no class. The caller detaches the result.
    """
    rows = memory[: labels.shape[0]].astype(jnp.float32)
    if relu:
        rows = jax.nn.relu(rows)
    sums = jax.ops.segment_sum(rows, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(jnp.ones(labels.shape, jnp.float32), labels, num_segments=num_classes)
    return l2_normalize(sums / counts[:, None])


def crp_loss_per_example(
    g_s: jnp.ndarray, g_t: jnp.ndarray, centroids_s: jnp.ndarray, centroids_t: jnp.ndarray, temperature: float
) -> jnp.ndarray:
    """KL(softmax(r_t) || softmax(r_s)) per example, r = <g, centroids> / tau (docs/crckd.md §R5.2-5.3).

    Student embedding vs student-memory centroids against teacher embedding vs teacher-memory centroids;
    `F.kl_div(log_softmax(r_s), softmax(r_t), 'batchmean')` is the batch mean of this. No tau^2 factor. The
    caller stops the gradient of `g_t` and of the centroids (the teacher side is `.detach()`ed).
    """
    r_s = g_s.astype(jnp.float32) @ centroids_s.T / temperature
    r_t = g_t.astype(jnp.float32) @ centroids_t.T / temperature
    return _kl_rows(r_t, r_s)


def mean_teacher_kl_per_example(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray) -> jnp.ndarray:
    """sum_c p_t (log p_t - log p_s): `softmax_kl_loss(logit_s, logit_t)` summed over classes (docs/crckd.md §R3).

    The reference divides the batch sum by the nominal batch size; with full batches that is the mean.
    """
    return _kl_rows(teacher_logits.astype(jnp.float32), student_logits.astype(jnp.float32))


def _kl_rows(target_logits, input_logits):
    log_p_t = jax.nn.log_softmax(target_logits, axis=-1)
    log_p_s = jax.nn.log_softmax(input_logits, axis=-1)
    return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def inverse_frequency_weights(class_counts) -> jnp.ndarray:
    """w_c = N / n_c (docs/crckd.md §R6, `CLASS_WEIGHT` of utils/losses.py); only ratios matter (weighted mean)."""
    counts = jnp.asarray(class_counts, jnp.float32)
    return jnp.sum(counts) / counts


def weighted_ce_terms(logits: jnp.ndarray, labels: jnp.ndarray, class_weights: jnp.ndarray):
    """(w_{y_i} * CE_i, w_{y_i}) per example for torch's `CrossEntropyLoss(weight=w, reduction='mean')`.

    Its value is sum_i w_{y_i} CE_i / sum_i w_{y_i} (docs/crckd.md G12): the caller sums both over the GLOBAL
    batch before dividing.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    w = class_weights[labels]
    return w * ce, w
