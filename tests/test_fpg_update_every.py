"""`fpg.update_every`: the FPG trains on every k-th step only, in one compiled program (docs/fpg.md).

One k=3 trajectory of 4 steps on 8 devices is checked step by step against independent references: on
update steps (state.step 0 and 3) the full joint FoPro step (k=1) from the same state; on skip steps (1, 2)
the released EKD step whose teacher is fed the *current* prompt's output, with the FPG state untouched.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import common
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
K = 3
NUM_STEPS = 4
# The references are other compiled programs, equal up to float rounding, so the test keeps the updates
# well conditioned: SGD for the student, and for the FPG an Adam (whose moments and count a zero-gradient
# "update" on skip steps would move) with a large eps, since Adam's first step is ~lr * sign(g) and would
# turn rounding noise in near-zero gradients into lr-sized differences.
STUDENT_OPT = optax.sgd(0.05, momentum=0.9)
FPG_OPT = make_optimizer(
    ConfigDict(dict(name="adam", lr=3e-2, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.0, clip_norm=5.0))
)


class PromptedTeacher:
    """The frozen teacher behind a fixed prompt, with the `apply` signature `ekd_step.make_train_step` expects.

    Variables: {'teacher': teacher variables, 'prompt': prompt params}. The released EKD step with this
    teacher is, by definition, the student's update with teacher features from that prompt.
    """

    def __init__(self, prompt, teacher):
        self.prompt, self.teacher = prompt, teacher

    def apply(self, variables, x, train):
        x_prompted, _ = self.prompt.apply({"params": variables["prompt"]}, x)
        return self.teacher.apply(variables["teacher"], x_prompted, train=train)


def _models(seed=0):
    teacher = ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=4)
    student = EKDStudent(
        num_classes=NUM_CLASSES,
        teacher_dim=teacher.feature_dim,
        stage_sizes=(1, 1, 1, 1),
        width=8,
        bn_axis_name=parallel.DATA_AXIS,
    )
    prompt = FourierPrompt(variant="spectrum")
    head = torch_dense(NUM_CLASSES, teacher.feature_dim)
    dummy = jnp.zeros((1, SIZE, SIZE, 3))
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    fpg_params = {
        "prompt": prompt.init(keys[2], dummy)["params"],
        "explore_head": head.init(keys[3], jnp.zeros((1, teacher.feature_dim)))["params"],
    }
    return dict(
        student=student,
        teacher=teacher,
        prompt=prompt,
        head=head,
        fpg_params=fpg_params,
        student_vars=_random_variables(student, dummy, seed),
        teacher_vars=_random_variables(teacher, dummy, seed + 1),
    )


def _random_variables(model, dummy, seed):
    """Variables of `model` drawn with numpy on its init's shapes: compiling flax's init of a ResNet costs
    more than the whole step on a busy CPU, and these tests need valid, not torch-initialised, weights.
    BatchNorm: scale and running variance 1, bias and running mean 0; kernels ~ N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), dummy)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def _make_step(m, mesh, **kwargs):
    return fopro_step.make_fopro_train_step(
        student=m["student"],
        teacher=m["teacher"],
        prompt=m["prompt"],
        explore_head=m["head"],
        cls_loss=losses.make_classification_loss("bsm", COUNTS),
        optimizer=STUDENT_OPT,
        fpg_optimizer=FPG_OPT,
        free_u=3.0,
        lambda_cls=1.0,
        lambda_adv=1.0,
        lambda_reg=1e-3,
        teacher_feature_key="pre_logits",
        mesh=mesh,
        donate=False,
        **kwargs,
    )


def _assert_trees(a, b, what, exact=False):
    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    assert len(leaves_a) == len(flat_b) > 0, what
    for path, leaf in leaves_a:
        if exact:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]), err_msg=what + str(path))
        else:
            np.testing.assert_allclose(
                np.asarray(leaf), np.asarray(flat_b[path]), rtol=1e-5, atol=1e-6, err_msg=what + str(path)
            )


def _max_abs_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def run():
    """A k=3 trajectory plus, for every step, the reference of the branch that step should take."""
    m = _models()
    mesh = parallel.make_mesh(8)
    rng = np.random.default_rng(0)
    # Pixel values away from 0 and 255: the prompt clips to [0, 1], and at an exact boundary the clip's
    # gradient (0 or 1) would hinge on the rounding of the identity prompt, which differs between programs.
    batches = [
        parallel.host_batch_to_global(
            {
                "image": rng.integers(16, 240, (16, SIZE, SIZE, 3), dtype=np.uint8),
                "label": rng.integers(0, NUM_CLASSES, (16,)).astype(np.int32),
            },
            mesh,
        )
        for _ in range(NUM_STEPS)
    ]
    tv = parallel.replicate(m["teacher_vars"], mesh)
    step_k = _make_step(m, mesh, update_every=K)
    step_1 = _make_step(m, mesh, update_every=1)
    ekd_step = ekd_step_lib.make_train_step(
        student=m["student"],
        teacher=PromptedTeacher(m["prompt"], m["teacher"]),
        cls_loss=losses.make_classification_loss("bsm", COUNTS),
        optimizer=STUDENT_OPT,
        free_u=3.0,
        teacher_feature_key="pre_logits",
        mesh=mesh,
        donate=False,
    )
    state = parallel.replicate(create_train_state(m["student_vars"], STUDENT_OPT, m["fpg_params"], FPG_OPT), mesh)
    identity_prompt = m["fpg_params"]["prompt"]
    records = []
    for batch in batches:
        new_state, metrics = step_k(state, tv, batch)
        record = dict(before=jax.device_get(state), after=jax.device_get(new_state), metrics=parallel.to_host(metrics))
        if int(state.step) % K == 0:
            ref_state, ref_metrics = step_1(state, tv, batch)
        else:
            ref_state, ref_metrics = ekd_step(state, {"teacher": tv, "prompt": state.fpg_params["prompt"]}, batch)
            # The same EKD step on the initial (identity) prompt: what a stale or un-prompted teacher would give.
            stale_state, _ = ekd_step(state, {"teacher": tv, "prompt": identity_prompt}, batch)
            record["stale"] = jax.device_get(stale_state)
        record.update(ref=jax.device_get(ref_state), ref_metrics=parallel.to_host(ref_metrics))
        records.append(record)
        state = new_state
    return dict(
        records=records,
        step_k=step_k,
        step_1=step_1,
        models=m,
        mesh=mesh,
        state0=records[0]["before"],
        batch=batches[0],
        tv=tv,
    )


def test_default_is_update_every_one_and_builds_no_cond(run):
    """k=1 (explicit) lowers to the same program as the default, with no conditional in it; k=3 has one."""
    m, mesh = run["models"], run["mesh"]
    state = parallel.replicate(run["state0"], mesh)
    args = (state, run["tv"], run["batch"])
    default_text = _make_step(m, mesh).lower(*args).as_text()
    assert run["step_1"].lower(*args).as_text() == default_text
    assert "stablehlo.case" not in default_text
    assert "stablehlo.case" in run["step_k"].lower(*args).as_text()
    _, metrics = run["step_1"](*args)
    assert float(metrics["fpg/updated"]) == 1.0


def test_fpg_trains_only_on_every_kth_step(run):
    for record in run["records"]:
        step = int(record["before"].step)
        before, after, metrics = record["before"], record["after"], record["metrics"]
        assert int(after.step) == step + 1
        if step % K == 0:
            assert metrics["fpg/updated"] == 1.0 and metrics["fpg/grad_norm"] > 0
            assert _max_abs_diff(before.fpg_params["prompt"], after.fpg_params["prompt"]) > 1e-3
            assert _max_abs_diff(before.fpg_params["explore_head"], after.fpg_params["explore_head"]) > 1e-3
        else:
            assert metrics["fpg/updated"] == 0.0 and metrics["fpg/grad_norm"] == 0.0
            _assert_trees(after.fpg_params, before.fpg_params, f"step {step} fpg_params", exact=True)
            _assert_trees(after.fpg_opt_state, before.fpg_opt_state, f"step {step} fpg_opt_state", exact=True)
    # Adam's step count (inside the clip -> adam chain) counts FPG updates only: steps 0 and 3.
    counts = [
        int(leaf)
        for leaf in jax.tree.leaves(run["records"][-1]["after"].fpg_opt_state)
        if np.asarray(leaf).dtype == np.int32
    ]
    assert counts == [2]


def test_update_steps_equal_the_joint_step(run):
    for record in run["records"]:
        if int(record["before"].step) % K:
            continue
        _assert_trees(record["after"], record["ref"], f"state after step {int(record['before'].step)}")
        for key, value in record["ref_metrics"].items():
            np.testing.assert_allclose(record["metrics"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_skip_steps_update_the_student_on_the_current_prompt(run):
    skipped = [r for r in run["records"] if int(r["before"].step) % K]
    assert [int(r["before"].step) for r in skipped] == [1, 2]
    for record in skipped:
        what = f"step {int(record['before'].step)}"
        after, ref, metrics = record["after"], record["ref"], record["metrics"]
        for part in ("params", "batch_stats", "opt_state"):
            _assert_trees(getattr(after, part), getattr(ref, part), f"{what} {part}")
        for key in ("loss", "loss_cls", "loss_cls_free", "loss_distill", "train_accuracy", "param_norm"):
            np.testing.assert_allclose(
                metrics[key], record["ref_metrics"][key], rtol=1e-5, atol=1e-6, err_msg=f"{what} {key}"
            )
        # The FPG terms come from the forward pass: AKD's distance is the student's distillation term.
        np.testing.assert_allclose(metrics["fpg/loss_adversarial"], metrics["loss_distill"], rtol=1e-6)
        assert np.isfinite(metrics["fpg/loss_explore"]) and metrics["fpg/mean_abs_log_gain"] > 0
        # The reference can tell the prompt apart: the identity-prompt teacher gives a different student.
        assert _max_abs_diff(record["stale"].params, ref.params) > 100 * _max_abs_diff(after.params, ref.params)


def test_compiles_once(run):
    """Skip and update steps are branches of one program: one jit cache entry after 4 steps."""
    assert run["step_k"]._cache_size() == 1


@pytest.mark.parametrize("bad", [0, -1, 2.0, "3", True, None])
def test_bad_update_every_is_refused(bad):
    # Checked before anything is built, so no models are needed.
    models = dict(student=None, teacher=None, prompt=None, head=None)
    with pytest.raises(ValueError, match=r"fpg\.update_every"):
        _make_step(models, parallel.make_mesh(1), update_every=bad)


def test_check_update_every_and_config_default():
    assert fopro_step.check_update_every(np.int64(4)) == 4
    assert common.method_config("fopro").fpg.update_every == 1
