"""CRCKD loss terms and memory bank against NumPy transcriptions of the reference code (docs/crckd.md §R3-§R6)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from foprokd_jax.methods.crckd import losses, memory_bank


def _reference_contrast_loss(x, P, n_data, eps=1e-7):
    """utils/CCD_CRP_loss.py `ContrastLoss.forward`, op for op in NumPy (x: (bsz, P+K, 1))."""
    bsz = x.shape[0]
    N = x.shape[1] - P
    m, Pn = N, 1 / float(n_data)
    P_pos = x[:, :P]
    log_D1 = np.log(P_pos / (P_pos + m * Pn + eps))
    P_neg = x[:, P : P + N]
    log_D0 = np.log(np.full_like(P_neg, m * Pn) / (P_neg + m * Pn + eps))
    return -((log_D1.squeeze().sum(0) + np.repeat(log_D0.reshape(-1, 1), P, axis=1).sum(0)) / bsz).sum(0) / P


@pytest.mark.parametrize("bsz,P,K,n_data", [(6, 20, 50, 300), (4, 3, 7, 10), (5, 1, 9, 40)])
def test_nce_reduction_matches_the_reference_with_several_positives(bsz, P, K, n_data):
    rng = np.random.default_rng(bsz + P)
    scores = rng.uniform(0.01, 3.0, size=(bsz, P + K)).astype(np.float64)
    expected = _reference_contrast_loss(scores[..., None], P, n_data)
    per_example = losses.nce_loss_per_example(jnp.asarray(scores, jnp.float32), P, n_data)
    assert per_example.shape == (bsz,)
    np.testing.assert_allclose(float(jnp.mean(per_example)), expected, rtol=1e-5)
    # The negatives are summed, the positives averaged: scaling P changes only the positive term's weight.
    pos_only = -np.mean(np.log(scores[:, :P] / (scores[:, :P] + K / n_data + 1e-7)), axis=1)
    neg_only = -np.sum(np.log((K / n_data) / (scores[:, P:] + K / n_data + 1e-7)), axis=1)
    np.testing.assert_allclose(np.asarray(per_example), pos_only + neg_only, rtol=1e-5)


def test_nce_hand_computed_single_example():
    # P = 1, K = 2, n_data = 4: noise c = K / n_data = 0.5; h = (0.5 | 0.5, 1.5).
    # -[log(0.5/1.0) + log(0.5/1.0) + log(0.5/2.0)] = -log(1/16) = log 16.
    loss = losses.nce_loss_per_example(jnp.array([[0.5, 0.5, 1.5]]), num_positives=1, n_data=4)
    assert float(loss[0]) == pytest.approx(math.log(16.0), rel=1e-6)
    with pytest.raises(ValueError, match="num_positives"):
        losses.nce_loss_per_example(jnp.ones((2, 3)), num_positives=3, n_data=4)


def test_contrast_scores_are_exp_dot_over_temperature():
    rng = np.random.default_rng(0)
    anchors, rows = rng.normal(size=(3, 8)), rng.normal(size=(3, 5, 8))
    got = losses.contrast_exp_scores(jnp.asarray(anchors), jnp.asarray(rows), 0.5)
    np.testing.assert_allclose(np.asarray(got), np.exp(np.einsum("bd,bjd->bj", anchors, rows) / 0.5), rtol=1e-5)


def _reference_centroids(memory, labels, num_classes, relu=True):
    rows = np.maximum(memory, 0) if relu else memory
    cents = np.stack([rows[labels == k].mean(0) for k in range(num_classes)])
    return cents / np.linalg.norm(cents, axis=1, keepdims=True)


def test_crp_matches_a_numpy_transcription():
    rng = np.random.default_rng(1)
    num_classes, tau = 4, 0.07
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 2, 1])
    mem_s, mem_t = rng.normal(size=(14, 6)), rng.normal(size=(14, 6))  # 2 rows past N_train: no class
    g_s = rng.normal(size=(5, 6))
    g_t = rng.normal(size=(5, 6))
    g_s /= np.linalg.norm(g_s, axis=1, keepdims=True)
    g_t /= np.linalg.norm(g_t, axis=1, keepdims=True)
    for relu in (True, False):
        c_s = _reference_centroids(mem_s[:12], labels, num_classes, relu)
        c_t = _reference_centroids(mem_t[:12], labels, num_classes, relu)
        got_c = losses.class_centroids(jnp.asarray(mem_s), jnp.asarray(labels), num_classes, relu=relu)
        np.testing.assert_allclose(np.asarray(got_c), c_s, rtol=1e-5, atol=1e-6)
        r_s, r_t = g_s @ c_s.T / tau, g_t @ c_t.T / tau
        # F.kl_div(log_softmax(r_s), softmax(r_t), reduction='batchmean')
        expected = torch.nn.functional.kl_div(
            torch.log_softmax(torch.tensor(r_s), 1), torch.softmax(torch.tensor(r_t), 1), reduction="batchmean"
        ).item()
        got = losses.crp_loss_per_example(
            jnp.asarray(g_s),
            jnp.asarray(g_t),
            got_c,
            losses.class_centroids(jnp.asarray(mem_t), jnp.asarray(labels), num_classes, relu=relu),
            tau,
        )
        np.testing.assert_allclose(float(jnp.mean(got)), expected, rtol=1e-4)


def test_mean_teacher_kl_matches_softmax_kl_loss():
    rng = np.random.default_rng(2)
    logit_s, logit_t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    # torch.sum(softmax_kl_loss(logit_s, logit_t)) / batch_size (utils/losses.py, train_CRCKD.py).
    expected = (
        torch.nn.functional.kl_div(
            torch.log_softmax(torch.tensor(logit_s), 1), torch.softmax(torch.tensor(logit_t), 1), reduction="none"
        )
        .sum()
        .item()
        / 6
    )
    got = losses.mean_teacher_kl_per_example(jnp.asarray(logit_s), jnp.asarray(logit_t))
    np.testing.assert_allclose(float(jnp.mean(got)), expected, rtol=1e-5)


def test_weighted_ce_is_torch_weighted_mean():
    counts = np.array([1805, 370, 999, 193, 295])
    weights = losses.inverse_frequency_weights(counts)
    np.testing.assert_allclose(np.asarray(weights), [2.029, 9.897, 3.666, 18.974, 12.414], atol=1e-3)
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(9, 5)).astype(np.float32), rng.integers(0, 5, 9)
    expected = torch.nn.CrossEntropyLoss(weight=torch.tensor(np.asarray(weights)))(
        torch.tensor(logits), torch.tensor(labels)
    ).item()
    num, den = losses.weighted_ce_terms(jnp.asarray(logits), jnp.asarray(labels), weights)
    np.testing.assert_allclose(float(num.sum() / den.sum()), expected, rtol=1e-5)


def test_memory_init_and_momentum_update():
    bank = memory_bank.init_bank(jax.random.PRNGKey(0), 1000, 128)
    bound = 1 / math.sqrt(128 / 3)
    assert float(jnp.abs(bank).max()) <= bound and float(jnp.abs(bank).max()) > 0.95 * bound
    assert float(jnp.mean(jnp.linalg.norm(bank, axis=1))) == pytest.approx(1.0, abs=0.05)
    rng = np.random.default_rng(4)
    memory = rng.normal(size=(6, 4)).astype(np.float32)
    new = rng.normal(size=(3, 4)).astype(np.float32)
    out = np.asarray(memory_bank.momentum_update(jnp.asarray(memory), jnp.array([4, 0, 2]), jnp.asarray(new), 0.5))
    expected = memory.copy()
    for row, i in zip(new, (4, 0, 2)):
        v = 0.5 * memory[i] + 0.5 * row
        expected[i] = v / np.linalg.norm(v)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_duplicate_indices_last_occurrence_wins():
    memory = np.eye(5, 3, dtype=np.float32) + 0.1
    new = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    indices = jnp.array([3, 1, 3, 1])  # positions 2 and 3 are the last occurrences of 3 and 1
    np.testing.assert_array_equal(np.asarray(memory_bank.last_occurrence_mask(indices)), [False, False, True, True])
    out = np.asarray(memory_bank.momentum_update(jnp.asarray(memory), indices, jnp.asarray(new), 0.5))
    for i, row in ((3, new[2]), (1, new[3])):  # from the PRE-step row, not chained
        v = 0.5 * memory[i] + 0.5 * row
        np.testing.assert_allclose(out[i], v / np.linalg.norm(v), rtol=1e-6)
    np.testing.assert_array_equal(out[[0, 2, 4]], memory[[0, 2, 4]])


def test_normalisation_constant_is_set_once():
    z = memory_bank.normalisation_constant(jnp.float32(-1), jnp.float32(2.5), n_data=100)
    assert float(z) == pytest.approx(250.0)
    assert float(memory_bank.normalisation_constant(z, jnp.float32(9.0), n_data=100)) == pytest.approx(250.0)
