"""The FoPro-KD step: per-device FFTs (no all-gather), device-count independence, EKD at identity."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from foprokd_jax import losses, parallel
from foprokd_jax.methods.ekd import step as ekd_step_lib
from foprokd_jax.methods.fopro import step as fopro_step
from foprokd_jax.methods.fopro.prompt import FourierPrompt
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.models.torch_init import torch_dense
from foprokd_jax.state import create_train_state, make_optimizer

NUM_CLASSES = 8
COUNTS = np.array([400, 150, 90, 60, 25, 12, 5, 3])
SIZE = 32


def _adam():
    return make_optimizer(
        ConfigDict(dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=5.0))
    )


def _setup(variant="spectrum", batch_size=16, seed=0):
    teacher = ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=4)
    student = EKDStudent(
        num_classes=NUM_CLASSES,
        teacher_dim=teacher.feature_dim,
        stage_sizes=(1, 1, 1, 1),
        width=8,
        bn_axis_name=parallel.DATA_AXIS,
    )
    prompt = FourierPrompt(variant=variant, hidden=4, depth=1)
    head = torch_dense(NUM_CLASSES, teacher.feature_dim)
    dummy = jnp.zeros((1, SIZE, SIZE, 3))
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    student_vars = student.init(keys[0], dummy, train=False)
    teacher_vars = teacher.init(keys[1], dummy, train=False)
    fpg_params = {
        "prompt": prompt.init(keys[2], dummy)["params"],
        "explore_head": head.init(keys[3], jnp.zeros((1, teacher.feature_dim)))["params"],
    }
    rng = np.random.default_rng(seed)
    batches = [
        {
            "image": rng.integers(0, 256, (batch_size, SIZE, SIZE, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32),
        }
        for _ in range(3)
    ]
    return dict(
        student=student,
        teacher=teacher,
        prompt=prompt,
        head=head,
        student_vars=student_vars,
        teacher_vars=teacher_vars,
        fpg_params=fpg_params,
        batches=batches,
    )


def _step_and_state(s, mesh, optimizer, fpg_optimizer, lambda_adv=1.0):
    state = parallel.replicate(create_train_state(s["student_vars"], optimizer, s["fpg_params"], fpg_optimizer), mesh)
    step = fopro_step.make_fopro_train_step(
        student=s["student"],
        teacher=s["teacher"],
        prompt=s["prompt"],
        explore_head=s["head"],
        cls_loss=losses.make_classification_loss("bsm", COUNTS),
        optimizer=optimizer,
        fpg_optimizer=fpg_optimizer,
        free_u=3.0,
        lambda_cls=1.0,
        lambda_adv=lambda_adv,
        lambda_reg=1e-3,
        teacher_feature_key="pre_logits",
        mesh=mesh,
        donate=False,
    )
    return step, state, parallel.replicate(s["teacher_vars"], mesh)


@pytest.mark.parametrize("variant", ["spectrum", "conditional"])
def test_compiled_step_does_not_gather_the_batch(variant):
    """jax#13081: a global-view FFT on a batch-sharded array all-gathers it; our per-device step must not."""
    s = _setup(variant)
    mesh = parallel.make_mesh(8)
    step, state, tv = _step_and_state(s, mesh, _adam(), _adam())
    batch = parallel.host_batch_to_global(s["batches"][0], mesh)
    hlo = step.lower(state, tv, batch).compile().as_text()
    assert "all-gather" not in hlo
    assert "all-reduce" in hlo  # the explicit pmean of gradients is there


def test_one_and_eight_devices_agree():
    s = _setup("spectrum")
    histories, states = [], []
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        step, state, tv = _step_and_state(s, mesh, optax.sgd(0.05, momentum=0.9), optax.sgd(0.5))
        history = []
        for batch in s["batches"]:
            state, m = step(state, tv, parallel.host_batch_to_global(batch, mesh))
            history.append(parallel.to_host(m))
        histories.append(history)
        states.append(jax.device_get(state))
    for m1, m8 in zip(*histories):
        for key in m1:
            if "grad_norm" not in key:
                np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-5, err_msg=key)
    for part in ("params", "batch_stats", "fpg_params"):
        flat8 = dict(jax.tree_util.tree_leaves_with_path(getattr(states[1], part)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(states[0], part)):
            np.testing.assert_allclose(leaf, flat8[path], rtol=1e-5, atol=1e-5, err_msg=part + str(path))
    # The prompt actually moved away from the identity.
    assert max(np.abs(leaf).max() for leaf in jax.tree.leaves(states[0].fpg_params["prompt"])) > 0


def test_identity_prompt_gives_the_released_ekd_student_update():
    """At init the prompt is the identity, so the student's loss and update equal EKD's."""
    s = _setup("radial")
    mesh = parallel.make_mesh(2)
    adam = _adam()
    step, state, tv = _step_and_state(s, mesh, adam, _adam())
    batch = parallel.host_batch_to_global(s["batches"][0], mesh)
    new_state, m = step(state, tv, batch)
    ekd_step = ekd_step_lib.make_train_step(
        student=s["student"],
        teacher=s["teacher"],
        cls_loss=losses.make_classification_loss("bsm", COUNTS),
        optimizer=adam,
        free_u=3.0,
        teacher_feature_key="pre_logits",
        mesh=mesh,
        donate=False,
    )
    ekd_state = parallel.replicate(create_train_state(s["student_vars"], adam), mesh)
    ekd_new, ekd_m = ekd_step(ekd_state, tv, batch)
    for key in ("loss", "loss_cls", "loss_cls_free", "loss_distill"):
        np.testing.assert_allclose(float(m[key]), float(ekd_m[key]), rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(
        np.asarray(new_state.batch_stats["trunk"]["bn1"]["mean"]),
        np.asarray(ekd_new.batch_stats["trunk"]["bn1"]["mean"]),
        rtol=1e-6,
        atol=1e-7,
    )
    # The FPG objective is live: explore loss finite, adversarial term equals the distillation term.
    assert np.isfinite(float(m["fpg/loss_explore"]))
    np.testing.assert_allclose(float(m["fpg/loss_adversarial"]), float(m["loss_distill"]), rtol=1e-6)
