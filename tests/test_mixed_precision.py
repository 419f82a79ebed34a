"""Mixed precision for the student (config.student.dtype='bfloat16'): bfloat16 convs/matmuls, while parameters,
optimiser state, BatchNorm statistics, model outputs and losses stay float32; the float32 default is unchanged."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from foprokd_jax import losses, parallel, train
from foprokd_jax.methods import resnet_student
from foprokd_jax.methods.bsm import step as bsm_step
from foprokd_jax.models.ekd_student import EKDStudent, FreeProjector, student_compute_dtype
from foprokd_jax.state import create_train_state

NUM_CLASSES = 5
TINY = dict(stage_sizes=(1, 1), width=8)
SIZE = 32
# Bounds on the max per-sample relative L2 error of bf16 vs f32 student outputs (bf16 has an 8-bit significand,
# unit round-off 2^-8 ~ 4e-3). Eval mode (running statistics) stays within a few round-offs per layer. Train
# mode normalises by the batch statistics: a randomly initialised net on noise images gives features that
# barely vary across the batch, so subtracting the batch mean amplifies the bf16 rounding of the conv
# outputs (the statistics themselves are float32). R18 at 64 px measured 2e-2 (h) to 8e-2 (z2) there.
EVAL_BOUND = 5e-2
TRAIN_BOUND = 1e-1


def _student(dtype, teacher_dim=16, **kwargs):
    return EKDStudent(num_classes=NUM_CLASSES, teacher_dim=teacher_dim, dtype=dtype, **TINY, **kwargs)


def _images(n=8, seed=3):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, SIZE, SIZE, 3))


def _init_abstract(student):
    return jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))


@functools.lru_cache(maxsize=None)
def _variables(teacher_dim=16, bn_axis_name=None):
    """float32 init shared by the f32 and bf16 students: initialisers draw in the float32 param_dtype, so a
    bf16 student's own init is the same tree (checked by dtype below). Cached: CPU init compiles take ~10 s."""
    student = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=teacher_dim, bn_axis_name=bn_axis_name, **TINY)
    return jax.jit(lambda rng: student.init(rng, jnp.zeros((1, SIZE, SIZE, 3)), train=False))(jax.random.PRNGKey(0))


def _all_float32(tree):
    return all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(tree))


def _max_relative_error(approx, exact):
    approx, exact = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
    return float((np.linalg.norm(approx - exact, axis=-1) / np.linalg.norm(exact, axis=-1)).max())


def _op_input_dtypes(fn, *args, primitives=("conv_general_dilated", "dot_general")):
    """dtypes of the inputs of every conv/matmul in fn's jaxpr (nested jaxprs included)."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in primitives:
                found.extend(str(v.aval.dtype) for v in eqn.invars)
            for value in eqn.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", item)  # ClosedJaxpr -> Jaxpr (pjit, custom_jvp, ...)
                    if hasattr(inner, "eqns"):
                        visit(inner)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_bf16_student_computes_in_bf16_and_keeps_float32_parameters_outputs_and_bn_statistics():
    student = _student(jnp.bfloat16)
    abstract = _init_abstract(student)
    assert _all_float32(abstract["params"]) and _all_float32(abstract["batch_stats"])
    variables = _variables()
    assert jax.tree.structure(abstract) == jax.tree.structure(variables)
    x = _images()

    @jax.jit
    def forward(params):
        return student.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )

    dtypes = _op_input_dtypes(lambda p: forward(p)[0], variables["params"])
    assert dtypes and set(dtypes) == {"bfloat16"}, dtypes  # every conv/dense really runs in bfloat16
    out, mutated = forward(variables["params"])
    assert all(value.dtype == jnp.float32 for value in out.values())
    assert _all_float32(mutated["batch_stats"])
    grads = jax.jit(jax.grad(lambda p: forward(p)[0]["z1"].sum()))(variables["params"])
    assert _all_float32(grads)


def test_bf16_projector_batchnorm_reduces_statistics_in_float32():
    """p_free's BatchNorm gets the bf16 linear1 output; its running mean/var after one step equal momentum-0.9
    updates of the float64 batch moments of exactly those bf16 values. A bf16 reduction is off by ~1e-3."""
    projector = FreeProjector(out_dim=16, dtype=jnp.bfloat16)
    h = jax.random.normal(jax.random.PRNGKey(5), (8, 32)) + 3.0  # post-ReLU-like: mean well above the spread
    variables = jax.jit(lambda rng: projector.init(rng, h[:1], train=False))(jax.random.PRNGKey(0))
    assert _all_float32(variables)
    # Op by op, not jitted: under jit XLA may keep a fused bf16 intermediate in float32 (excess precision),
    # and the reference below needs the bf16 values the BatchNorm really received.
    out, mutated = projector.apply(
        variables, h, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    linear1 = mutated["intermediates"]["linear1"]["__call__"][0]
    assert linear1.dtype == jnp.bfloat16 and out.dtype == jnp.bfloat16  # the module itself computes in bf16
    linear1 = np.asarray(linear1.astype(jnp.float32), np.float64)
    bn = mutated["batch_stats"]["bn"]
    assert _all_float32(bn)
    np.testing.assert_allclose(bn["mean"], 0.1 * linear1.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn["var"], 0.9 + 0.1 * linear1.var(0), rtol=1e-6)


def test_float32_default_has_no_bfloat16_and_config_switch_builds_bf16_student():
    config = common.method_config("bsm")
    assert config.student.dtype == "float32"
    default = resnet_student.build_student(config, NUM_CLASSES)
    assert default.dtype == jnp.float32
    x = _images(2)
    student = _student(jnp.float32)
    variables = _variables()

    def loss(params):
        out, _ = student.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return out["z1"].sum() + out["p"].sum()

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
    assert "bf16" not in jaxpr
    # The explicit float32 student is the default one: identical outputs, bit for bit.
    implicit = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=16, **TINY)
    assert implicit.dtype == jnp.float32
    a = student.apply(variables, x, train=False)
    b = implicit.apply(variables, x, train=False)
    assert all(np.array_equal(a[k], b[k]) for k in a)

    config.student.dtype = "bfloat16"
    train.validate_config(config)
    bf16 = resnet_student.build_student(config, NUM_CLASSES)
    assert bf16.dtype == jnp.bfloat16
    config.student.dtype = "float16"
    with pytest.raises(ValueError, match="config.student.dtype='float16'"):
        train.validate_config(config)
    with pytest.raises(ValueError, match="config.student.dtype='float16'"):
        student_compute_dtype("float16")


@pytest.mark.parametrize("train_mode", [False, True])
def test_bf16_student_outputs_are_close_to_float32(train_mode):
    s32, s16 = _student(jnp.float32), _student(jnp.bfloat16)
    variables = _variables()
    x = _images()
    out32, _ = s32.apply(variables, x, train=train_mode, mutable=["batch_stats"])
    out16, _ = s16.apply(variables, x, train=train_mode, mutable=["batch_stats"])
    errors = {k: _max_relative_error(out16[k], out32[k]) for k in out32}
    print(
        f"bf16 vs f32 student outputs (train={train_mode}), max per-sample relative L2 error: "
        + ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
    )
    bound = TRAIN_BOUND if train_mode else EVAL_BOUND
    assert all(0.0 < v < bound for v in errors.values()), errors  # > 0: bf16 really changed the compute


def test_bf16_bsm_step_on_eight_devices_keeps_float32_state_and_tracks_float32():
    assert jax.device_count() >= 8, "conftest must provide 8 CPU devices"
    mesh = parallel.make_mesh(8)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, (16,)).astype(np.int32),
        }
        for _ in range(2)
    ]
    optimizer = optax.adam(1e-3)
    counts = np.array([40, 20, 10, 5, 2])
    results = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        student = EKDStudent(
            num_classes=NUM_CLASSES, teacher_dim=None, dtype=dtype, bn_axis_name=parallel.DATA_AXIS, **TINY
        )
        # A host copy: the step donates its state, which must not delete the cached variables.
        variables = jax.tree.map(np.array, _variables(None, parallel.DATA_AXIS))
        state = parallel.replicate(create_train_state(variables, optimizer), mesh)
        step = bsm_step.make_train_step(
            student=student, cls_loss=losses.make_classification_loss("bsm", counts), optimizer=optimizer, mesh=mesh
        )
        history = []
        for batch in batches:
            state, m = step(state, {}, parallel.host_batch_to_global(batch, mesh))
            history.append(parallel.to_host(m))
        results[name] = (jax.device_get(state), history)
    state16, history16 = results["bf16"]
    state32, history32 = results["f32"]
    assert _all_float32(state16.params) and _all_float32(state16.batch_stats)
    assert _all_float32([leaf for leaf in jax.tree.leaves(state16.opt_state) if leaf.dtype != jnp.int32])
    losses16 = np.array([h["loss"] for h in history16])
    losses32 = np.array([h["loss"] for h in history32])
    print(f"bsm loss per step, bf16 {losses16}, f32 {losses32}")
    assert np.all(np.isfinite(losses16))
    np.testing.assert_allclose(losses16[0], losses32[0], rtol=1e-2)
    np.testing.assert_allclose(losses16[1], losses32[1], rtol=3e-2)
    assert not np.array_equal(losses16, losses32)  # the bf16 switch took effect inside the compiled step
