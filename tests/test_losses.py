"""Long-tail losses (docs/reference_semantics.md §5) against numpy and hand-computed values, and LDAM's cosine
classifier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from foprokd_jax import losses, parallel
from foprokd_jax.models.ekd_student import EKDStudent, resolve_classifier

COUNTS = np.array([400, 150, 90, 60, 25, 12, 5, 3])
C = len(COUNTS)


def _batch(batch_size=16, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((batch_size, C))).astype(np.float32)
    labels = rng.integers(0, C, batch_size).astype(np.int32)
    return logits, labels


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(z, y):
    return -_np_log_softmax(z)[np.arange(len(y)), y]


def _np_softmax(z):
    return np.exp(_np_log_softmax(z))


def _loss(name, counts=COUNTS, steps_per_epoch=None, **params):
    return losses.make_classification_loss(ConfigDict(dict(name=name, free_u=3.0, **params)), counts, steps_per_epoch)


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- CE, BSM, focal, LA, LCC


def test_ce_and_bsm_match_numpy():
    z, y = _batch()
    _close(_loss("ce")(z, y, 0), _np_ce(z, y))
    # Uniform logits: CE = log C, by hand.
    _close(_loss("ce")(np.zeros((2, C), np.float32), np.array([0, 7])), [np.log(C)] * 2)
    prior = np.log(COUNTS / COUNTS.sum() + 1e-12)
    _close(_loss("bsm")(z, y, 0), _np_ce(z + prior, y))
    # BSM is CE with the log prior added to the logits.
    _close(_loss("bsm")(z, y), _loss("ce")(z + losses.log_class_prior(COUNTS), y))


def test_focal_loss_value_gamma_zero_and_detached_gradient():
    z, y = _batch()
    p_true = _np_softmax(z)[np.arange(len(y)), y]
    _close(_loss("focal", focal_gamma=0.0)(z, y), _np_ce(z, y))
    _close(_loss("focal")(z, y), -((1 - p_true) ** 2) * np.log(p_true), rtol=2e-5)  # default gamma = 2
    _close(_loss("focal", focal_gamma=0.5)(z, y), -((1 - p_true) ** 0.5) * np.log(p_true), rtol=2e-5)
    # Reference FocalLoss detaches p_t in the factor: d/dz = (1 - p_t)^gamma (softmax - onehot).
    loss = _loss("focal")
    grad = jax.grad(lambda logits: jnp.sum(loss(logits, y)))(z)
    expected = (1 - p_true)[:, None] ** 2 * (_np_softmax(z) - np.eye(C)[y])
    _close(grad, expected, rtol=1e-4, atol=1e-6)


def test_logit_adjusted_ce():
    z, y = _batch()
    prior = np.log(COUNTS / COUNTS.sum() + 1e-12)
    _close(_loss("la", la_tau=0.0)(z, y), _np_ce(z, y))
    _close(_loss("la", la_tau=1.0)(z, y), _loss("bsm")(z, y))
    _close(_loss("la", la_tau=2.0)(z, y), _np_ce(z + 2.0 * prior, y), rtol=2e-5)


def test_lcc_calibration_by_hand():
    counts = np.array([16, 1, 81, 0])
    # tau * n^(-1/4) with n = 16, 1, 81 and the reference's 1e-8 floor for an empty class.
    np.testing.assert_allclose(losses.lcc_calibration(counts, 0.5), [0.25, 0.5, 1 / 6, 50.0], rtol=1e-6)
    z, y = _batch(batch_size=6)
    z, y = z[:, :4], y % 3
    _close(_loss("lcc", counts)(z, y), _np_ce(z - np.array([0.25, 0.5, 1 / 6, 50.0]), y))
    # Equal counts shift every logit equally: LCC is then plain CE.
    z8, y8 = _batch()
    _close(_loss("lcc", np.full(C, 7))(z8, y8), _np_ce(z8, y8))


# ----------------------------------------------------------------------------- weighted losses


def test_class_balanced_and_inverse_frequency_weights_by_hand():
    counts = np.array([3, 1, 0])
    # (1 - b) / (1 - b^n) with b = 0.5: 4/7 and 1, rescaled to sum to the 2 present classes: 8/11, 14/11.
    np.testing.assert_allclose(losses.class_balanced_weights(counts, 0.5), [8 / 11, 14 / 11, 0], rtol=1e-6)
    np.testing.assert_allclose(losses.class_balanced_weights(counts, 0.0), [1, 1, 0])
    # N / (C n_c) with N = 4, C = 3 (the empty class counts in C, as in the reference).
    np.testing.assert_allclose(losses.inverse_frequency_weights(counts), [4 / 9, 4 / 3, 0], rtol=1e-6)
    weights = losses.class_balanced_weights(COUNTS, 0.9999)
    np.testing.assert_allclose(weights.sum(), C, rtol=1e-6)
    assert np.all(np.diff(weights) > 0)  # rarer classes weigh more
    with pytest.raises(ValueError, match="beta"):
        losses.class_balanced_weights(COUNTS, 1.0)


@pytest.mark.parametrize("name", ["cb", "rw"])
def test_weighted_ce_per_example_and_torch_reduction(name):
    z, y = _batch()
    w = (
        losses.class_balanced_weights(COUNTS, 0.9999)
        if name == "cb"
        else COUNTS.sum() / (C * COUNTS.astype(np.float64))
    )
    loss = _loss(name)
    per_example = w[y] * _np_ce(z, y)
    _close(loss(z, y, 0), per_example)
    # torch CrossEntropyLoss(weight=w) 'mean': sum(w_y l) / sum(w_y).
    _close(losses.batch_mean(loss, z, y, 0), per_example.sum() / w[y].sum())
    _close(losses.batch_mean(_loss(name, weighted_mean="batch"), z, y, 0), per_example.mean())


def test_weighted_batch_mean_is_global_across_devices():
    """Per-device shares with the pmean'd normaliser average to the single-device (global) value."""
    z, y = _batch(batch_size=16, seed=3)
    y[:4] = 7  # the rarest class lands on one device only, so local normalisers differ a lot
    loss = _loss("cb")
    mesh = parallel.make_mesh(4)

    def per_device(logits, labels):
        return jax.lax.pmean(losses.batch_mean(loss, logits, labels, 0, parallel.DATA_AXIS), parallel.DATA_AXIS)

    fn = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.DATA_AXIS),) * 2, out_specs=P(), check_vma=False)
    )
    w = losses.class_balanced_weights(COUNTS, 0.9999)
    _close(fn(z, y), (w[y] * _np_ce(z, y)).sum() / w[y].sum())


# ----------------------------------------------------------------------------- LDAM + DRW


def test_ldam_margins_by_hand():
    # n^(-1/4) = 0.5, 1, 1/3 -> rescaled so the largest is 0.5; an empty class gets no margin.
    np.testing.assert_allclose(losses.ldam_margins([16, 1, 81, 0], 0.5), [0.25, 0.5, 1 / 6, 0], rtol=1e-6)
    np.testing.assert_allclose(losses.ldam_margins([16, 1, 81], 0.3), [0.15, 0.3, 0.1], rtol=1e-6)


def test_ldam_loss_and_margin_only_on_the_true_class():
    counts = np.array([16, 1, 81])
    margins = np.array([0.25, 0.5, 1 / 6])
    rng = np.random.default_rng(1)
    z = rng.uniform(-1, 1, (6, 3)).astype(np.float32)  # cosine logits
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    shifted = 30.0 * (z - margins[y][:, None] * np.eye(3)[y])
    loss = _loss("ldam", counts, drw_epoch=-1)
    _close(loss(z, y), _np_ce(shifted, y), rtol=2e-5)
    # d/dz = s (softmax(s (z - m_y e_y)) - e_y): the margin moves only the true logit.
    grad = jax.grad(lambda logits: jnp.sum(loss(logits, y)))(z)
    _close(grad, 30.0 * (_np_softmax(shifted) - np.eye(3)[y]), rtol=1e-4, atol=1e-5)
    # Changing the margins of the other classes changes nothing.
    for i in range(len(y)):
        other = margins.copy()
        other[np.arange(3) != y[i]] = 7.0
        _close(
            losses.ldam_loss(z[i : i + 1], y[i : i + 1], jnp.asarray(other, jnp.float32), 30.0),
            _np_ce(shifted[i : i + 1], y[i : i + 1]),
            rtol=2e-5,
        )


def test_drw_switches_at_the_epoch_boundary_without_recompiling():
    z, y = _batch()
    loss = _loss("ldam", drw_epoch=2, drw_beta=0.9999, steps_per_epoch=10)
    plain = _loss("ldam", drw_epoch=-1)
    traces = []

    @jax.jit
    def per_example_and_mean(logits, labels, step):
        traces.append(step)
        return loss(logits, labels, step), losses.batch_mean(loss, logits, labels, step)

    w = losses.class_balanced_weights(COUNTS, 0.9999)
    unweighted = np.asarray(plain(z, y), np.float64)
    for step in (0, 19):  # epochs 0 and 1: weight 1 for every class
        per_example, mean = per_example_and_mean(z, y, jnp.int32(step))
        _close(per_example, unweighted)
        _close(mean, unweighted.mean())
    for step in (20, 35):  # epoch 2 on: class-balanced weights, torch-normalised
        per_example, mean = per_example_and_mean(z, y, jnp.int32(step))
        _close(per_example, w[y] * unweighted)
        _close(mean, (w[y] * unweighted).sum() / w[y].sum())
    assert len(traces) == 1, "the step must be traced, not baked into the compiled loss"
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _loss("ldam", drw_epoch=2)
    with pytest.raises(ValueError, match="step"):
        loss(z, y)


# ----------------------------------------------------------------------------- the factory


def test_factory_accepts_names_and_configs_and_refuses_bad_values():
    z, y = _batch()
    # A bare name (the pre-config call style) and a mixed-case reference name both work.
    _close(losses.make_classification_loss("bsm", COUNTS)(z, y), _loss("bsm")(z, y))
    _close(losses.make_classification_loss({"name": "BSM"}, COUNTS)(z, y), _loss("bsm")(z, y))
    out = _loss("focal")(jnp.asarray(z, jnp.bfloat16), y)
    assert out.dtype == jnp.float32 and out.shape == (len(y),)
    bad = [
        (dict(name="softmax"), "config.loss.name='softmax'"),
        (dict(name="focal", focal_gamma=-1.0), "gamma"),
        (dict(name="cb", cb_beta=1.5), "beta"),
        (dict(name="ldam", ldam_s=0.0), "ldam_s"),
        (dict(name="ce", weighted_mean="sum"), "weighted_mean"),
        (dict(free_u=3.0), "name"),
    ]
    for config, match in bad:
        with pytest.raises(ValueError, match=match):
            losses.make_classification_loss(ConfigDict(config), COUNTS, 10)
    with pytest.raises(ValueError, match="class_counts"):
        losses.make_classification_loss("ce", [3, -1])
    with pytest.raises(ValueError, match="8 classes"):
        _loss("ce")(z[:, :5], y)


# ----------------------------------------------------------------------------- LDAM's cosine classifier


def test_cosine_classifier_heads():
    assert resolve_classifier("auto", "ldam") == "cosine" and resolve_classifier("auto", "bsm") == "linear"
    assert resolve_classifier("linear", "ldam") == "linear"
    with pytest.raises(ValueError, match="student.classifier"):
        resolve_classifier("mlp", "ce")
    student = EKDStudent(num_classes=C, teacher_dim=12, stage_sizes=(1,), width=4, classifier="cosine")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 8, 3)), jnp.float32)
    variables = jax.jit(lambda rng: student.init(rng, x, train=False))(jax.random.PRNGKey(0))
    for head, fan_in in (("fc", 4), ("fc_free", 12)):
        params = variables["params"][head]
        assert set(params) == {"kernel"} and params["kernel"].shape == (fan_in, C)  # no bias
        np.testing.assert_allclose(np.linalg.norm(params["kernel"], axis=0), 1.0, rtol=1e-6)  # unit columns
    out = jax.jit(lambda v: student.apply(v, x, train=False))(variables)
    for head, feature in (("fc", "h"), ("fc_free", "p")):
        f = np.asarray(out[feature], np.float64)
        w = np.asarray(variables["params"][head]["kernel"], np.float64)
        expected = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
        _close(out["z1" if head == "fc" else "z2"], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(out["z1"])).max() <= 1.0 + 1e-6
