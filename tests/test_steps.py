"""The data-parallel train/eval steps: device-count independence, the exact EKD objective, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from foprokd_jax import losses, parallel
from foprokd_jax.methods import student_step
from foprokd_jax.methods.bsm import step as bsm_step
from foprokd_jax.methods.ekd import step as ekd_step
from foprokd_jax.methods.ekd.objective import ekd_objective
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.state import create_train_state, make_optimizer

NUM_CLASSES = 8
COUNTS = np.array([400, 150, 90, 60, 25, 12, 5, 3])


def _optim_config():
    return ConfigDict(dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=5.0))


def _setup(method, batch_size=16, size=32, seed=0, classifier="linear"):
    teacher = ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=4)
    student = EKDStudent(
        num_classes=NUM_CLASSES,
        teacher_dim=teacher.feature_dim if method == "ekd" else None,
        stage_sizes=(1, 1, 1, 1),
        width=8,
        bn_axis_name=parallel.DATA_AXIS,
        classifier=classifier,
    )
    dummy = jnp.zeros((1, size, size, 3))
    student_vars = student.init(jax.random.PRNGKey(seed), dummy, train=False)
    teacher_vars = teacher.init(jax.random.PRNGKey(seed + 1), dummy, train=False) if method == "ekd" else {}
    rng = np.random.default_rng(seed)
    batches = [
        {
            "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32),
        }
        for _ in range(3)
    ]
    return student, teacher, student_vars, teacher_vars, batches


def _run(method, num_devices, optimizer, num_steps=3):
    student, teacher, student_vars, teacher_vars, batches = _setup(method)
    mesh = parallel.make_mesh(num_devices)
    state = parallel.replicate(create_train_state(student_vars, optimizer), mesh)
    teacher_vars = parallel.replicate(teacher_vars, mesh)
    cls_loss = losses.make_classification_loss("bsm", COUNTS)
    if method == "ekd":
        step = ekd_step.make_train_step(
            student=student,
            teacher=teacher,
            cls_loss=cls_loss,
            optimizer=optimizer,
            free_u=3.0,
            teacher_feature_key="pre_logits",
            mesh=mesh,
        )
    else:
        step = bsm_step.make_train_step(student=student, cls_loss=cls_loss, optimizer=optimizer, mesh=mesh)
    history = []
    for batch in batches[:num_steps]:
        state, m = step(state, teacher_vars, parallel.host_batch_to_global(batch, mesh))
        history.append(parallel.to_host(m))
    return jax.device_get(state), history


@pytest.mark.parametrize("method", ["bsm", "ekd"])
def test_one_and_eight_devices_agree(method):
    """Same global batch on 1 and 8 devices: same losses, parameters and (synchronised) BN statistics.

    Parameters are compared after SGD with momentum, whose update is linear in the gradient, so equal
    parameters mean equal gradients. Adam is compared on the losses only (next test): its first updates
    are ~lr*sign(g), and coordinates whose exact gradient is zero (the bias of a Linear feeding
    BatchNorm, e.g. p_free/linear1/bias) move by +-lr according to float rounding noise, on any device
    count and in PyTorch alike.
    """
    assert jax.device_count() >= 8, "conftest must provide 8 CPU devices"
    sgd = optax.sgd(0.05, momentum=0.9)
    state1, hist1 = _run(method, 1, sgd)
    state8, hist8 = _run(method, 8, sgd)
    for m1, m8 in zip(hist1, hist8):
        for key in m1:
            # grad_norm sums ~1e5 squared float32 terms whose reduction order differs with the device
            # count; it is a diagnostic, so it gets 1e-4. Losses, parameters and BN statistics get 1e-5.
            rtol = 1e-4 if key == "grad_norm" else 1e-5
            np.testing.assert_allclose(m1[key], m8[key], rtol=rtol, atol=1e-5, err_msg=key)
    max_diff = 0.0
    for part, tol in (("params", 1e-5), ("batch_stats", 1e-5), ("opt_state", 1e-4)):
        # opt_state is the momentum trace, i.e. accumulated raw gradients (sums over the batch whose
        # float32 reduction order depends on the device count): 1e-4 there, 1e-5 on what the model uses.
        flat8 = dict(jax.tree_util.tree_leaves_with_path(getattr(state8, part)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(state1, part)):
            other = flat8[path]
            np.testing.assert_allclose(
                np.asarray(leaf), np.asarray(other), rtol=tol, atol=tol, err_msg=part + jax.tree_util.keystr(path)
            )
            if part != "opt_state":
                max_diff = max(max_diff, float(np.max(np.abs(np.asarray(leaf, np.float64) - other))))
    # The synchronised BN statistics are part of the state compared above; check they moved at all.
    bn_mean = state1.batch_stats["trunk"]["bn1"]["mean"]
    assert np.abs(bn_mean).max() > 0
    print(f"{method}: max |params/BN stats (1 device) - (8 devices)| = {max_diff:.3g}")


@pytest.mark.parametrize("method", ["bsm", "ekd"])
def test_one_and_eight_devices_agree_with_the_reference_adam(method):
    adam = make_optimizer(_optim_config())
    _, hist1 = _run(method, 1, adam)
    _, hist8 = _run(method, 8, adam)
    for m1, m8 in zip(hist1, hist8):
        for key in [k for k in m1 if k.startswith("loss")] + ["train_accuracy"]:
            np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _reference_bsm(logits, labels, counts):
    prior = np.log(counts / counts.sum() + 1e-12)
    z = logits.astype(np.float64) + prior
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def test_ekd_objective_matches_reference_formula():
    student, teacher, student_vars, teacher_vars, batches = _setup("ekd")
    batch = batches[0]
    x = student_step.normalize_images(jnp.asarray(batch["image"]))
    # The student's BN collective needs the mesh axis: evaluate the loss inside a 1-device shard_map.
    mesh = parallel.make_mesh(1)

    def per_device(params, batch_stats, tv, images, labels):
        xx = student_step.normalize_images(images)
        t = student_step.teacher_outputs(teacher, tv, xx, "pre_logits")
        out, _ = student.apply({"params": params, "batch_stats": batch_stats}, xx, train=True, mutable=["batch_stats"])
        loss, _ = ekd_objective(out, labels, losses.make_classification_loss("bsm", COUNTS), 3.0, t)
        return loss, out, t

    fn = parallel.data_parallel(per_device, mesh, num_replicated=3, num_sharded=2)
    loss, out, t = jax.device_get(
        fn(student_vars["params"], student_vars["batch_stats"], teacher_vars, batch["image"], batch["label"])
    )
    labels = batch["label"]
    p = np.asarray(out["p"], np.float64)
    tt = np.asarray(t, np.float64)
    cos = (p * tt).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(tt, axis=-1))
    expected = (
        _reference_bsm(np.asarray(out["z1"]), labels, COUNTS)
        + _reference_bsm(np.asarray(out["z2"]), labels, COUNTS)
        + 3.0 * np.mean(2 - 2 * cos)
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # The teacher sees the same normalised batch in inference mode (running stats, no update).
    t_direct = teacher.apply(teacher_vars, x, train=False)["pre_logits"]
    np.testing.assert_allclose(np.asarray(t), np.asarray(t_direct), rtol=1e-5, atol=1e-6)


def test_ldam_drw_in_the_compiled_step_matches_numpy():
    """LDAM-DRW on the cosine fc, 8 devices: the step passes the traced state.step to the loss, so step 0
    (epoch 0) is unweighted and step 1 (epoch 1) class-balanced, normalised by sum(w_y) over the GLOBAL batch.
    ('ekd' reduces z2 with the same `student_objective` term; the 'bsm' method keeps the compile small.)
    """
    student, _, student_vars, _, batches = _setup("bsm", classifier="cosine")
    # Same parameters without the mesh axis: BatchNorm over the whole batch, as the 8 synchronised devices do.
    reference = student.clone(bn_axis_name=None)
    apply_train = jax.jit(
        lambda v, images: reference.apply(
            v, student_step.normalize_images(images), train=True, mutable=["batch_stats"]
        )[0]
    )
    loss_config = ConfigDict(dict(name="ldam", drw_epoch=1, drw_beta=0.9999, free_u=3.0))
    cls_loss = losses.make_classification_loss(loss_config, COUNTS, steps_per_epoch=1)
    mesh = parallel.make_mesh(8)
    sgd = optax.sgd(0.05)
    state = parallel.replicate(create_train_state(student_vars, sgd), mesh)
    step = bsm_step.make_train_step(student=student, cls_loss=cls_loss, optimizer=sgd, mesh=mesh, donate=False)
    margins = losses.ldam_margins(COUNTS, 0.5)
    cb_weights = losses.class_balanced_weights(COUNTS, 0.9999)
    for k, batch in enumerate(batches[:2]):
        host = jax.device_get(state)
        out = apply_train({"params": host.params, "batch_stats": host.batch_stats}, batch["image"])
        state, m = step(state, {}, parallel.host_batch_to_global(batch, mesh))
        labels = batch["label"]
        weights = (np.ones(NUM_CLASSES) if k == 0 else cb_weights)[labels]
        z = np.asarray(out["z1"], np.float64)
        assert np.abs(z).max() <= 1 + 1e-6  # cosine logits
        shifted = 30.0 * (z - margins[labels][:, None] * np.eye(NUM_CLASSES)[labels])
        per_example = -_log_softmax(shifted)[np.arange(len(labels)), labels]
        expected = (weights * per_example).sum() / weights.sum()
        np.testing.assert_allclose(float(m["loss_cls"]), expected, rtol=1e-4, err_msg=f"step {k}")
        if k == 1:  # the switch is visible: the weighted value is not the plain mean
            assert abs(expected - per_example.mean()) > 1e-2 * per_example.mean()
    assert int(state.step) == 2


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_training_reduces_loss_on_a_fixed_batch():
    student, teacher, student_vars, teacher_vars, batches = _setup("ekd", batch_size=8)
    mesh = parallel.make_mesh(2)
    optimizer = make_optimizer(ConfigDict(dict(_optim_config(), lr=3e-3)))
    state = parallel.replicate(create_train_state(student_vars, optimizer), mesh)
    tv = parallel.replicate(teacher_vars, mesh)
    step = ekd_step.make_train_step(
        student=student,
        teacher=teacher,
        cls_loss=losses.make_classification_loss("ce", COUNTS),
        optimizer=optimizer,
        free_u=3.0,
        teacher_feature_key="pre_logits",
        mesh=mesh,
    )
    batch = parallel.host_batch_to_global(batches[0], mesh)
    first = None
    for _ in range(15):
        state, m = step(state, tv, batch)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.7 * first, (first, float(m["loss"]))
    assert int(state.step) == 15


def test_predict_step_on_eight_devices_gives_every_example_its_own_logits():
    """The evaluated logits: raw fc logits in eval mode, gathered over the mesh in the global batch's order."""
    student, _, student_vars, _, batches = _setup("bsm")
    mesh = parallel.make_mesh(8)
    optimizer = make_optimizer(_optim_config())
    state = parallel.replicate(create_train_state(student_vars, optimizer), mesh)
    predict = student_step.make_predict_step(student, mesh)
    logits = np.asarray(predict(state, parallel.host_batch_to_global(batches[0], mesh)))
    x = student_step.normalize_images(jnp.asarray(batches[0]["image"]))
    expected = np.asarray(student.apply(student_vars, x, train=False)["z1"])
    assert logits.shape == (16, NUM_CLASSES)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
