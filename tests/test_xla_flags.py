"""XLA:CPU flag defaults (foprokd_jax/xla_flags.py) and the no-recompilation guard of the EKD train step.

* Flag merging: the user's own XLA_FLAGS are kept, a user who chose either convolution flag is respected,
  the opt-out works, GPU/TPU runs are left alone, and a call after JAX started its backends changes nothing.
* Numerics: a small ResNet forward + gradient agrees with and without the flags. XLA reads XLA_FLAGS once
  per process, so each configuration runs in its own subprocess; the test also checks from the compiled
  HLO that the flags really changed which library runs the convolutions (YNNPACK vs not), else the
  comparison would prove nothing.
* Recompilation: after step 1, steps 2..4 of the real data-parallel EKD step (tiny shapes, 8 CPU devices)
  compile nothing (counted through jax.monitoring's backend-compile event, which also fires on persistent
  cache hits, and the jitted function's own cache size where jax exposes it).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from foprokd_jax import losses, parallel, xla_flags
from foprokd_jax.methods.ekd import step as ekd_step
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.state import create_train_state, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN, ONEDNN = xla_flags.CPU_DEFAULT_FLAGS
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


# ----------------------------------------------------------------------------- flag merging (pure)


def test_merge_appends_after_the_users_own_flags():
    merged = xla_flags.merge_flags("--xla_force_host_platform_device_count=8")
    assert merged.split() == ["--xla_force_host_platform_device_count=8", YNN, ONEDNN]
    assert xla_flags.merge_flags("") == f"{YNN} {ONEDNN}"
    assert xla_flags.merge_flags(merged) == merged  # idempotent


@pytest.mark.parametrize(
    "user_flag",
    [
        "--xla_cpu_experimental_ynn_fusion_type=",
        "--xla_cpu_experimental_ynn_fusion_type=+dot",
        "--xla_cpu_experimental_onednn_custom_call=false",
        "--noxla_cpu_experimental_onednn_custom_call",
    ],
)
def test_a_user_choice_of_either_flag_is_kept_untouched(user_flag):
    existing = f"--xla_dump_to=/tmp/x {user_flag}"
    assert xla_flags.merge_flags(existing) == existing


def test_flag_names_parse_values_and_negation():
    assert xla_flags.flag_names("--a=1  --noxla_b --xla_c=x=y\t--xla_d") == {"a", "xla_b", "xla_c", "xla_d"}


@pytest.mark.parametrize(
    "platforms, plugin, expected",
    [
        ("cpu", True, True),
        ("CPU,cuda", True, True),
        ("cuda,cpu", False, False),
        ("tpu", False, False),
        ("", False, True),
        ("", True, False),
    ],
)
def test_will_be_cpu(monkeypatch, platforms, plugin, expected):
    monkeypatch.setattr(xla_flags, "accelerator_plugin_installed", lambda: plugin)
    assert xla_flags.will_be_cpu({"JAX_PLATFORMS": platforms}) is expected


def test_apply_respects_opt_out_accelerators_and_existing_choice(monkeypatch):
    monkeypatch.setattr(xla_flags, "accelerator_plugin_installed", lambda: False)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    assert xla_flags.apply_cpu_defaults(env) is True
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", YNN, ONEDNN]
    assert xla_flags.apply_cpu_defaults(env) is False  # already there: unchanged
    for env in (
        {"JAX_PLATFORMS": "cuda"},
        {"FOPROKD_XLA_CPU_DEFAULTS": "0"},
        {"XLA_FLAGS": "--xla_cpu_experimental_onednn_custom_call=false"},
    ):
        before = dict(env)
        assert xla_flags.apply_cpu_defaults(env) is False
        assert env == before


def test_too_late_after_backend_start_changes_nothing(monkeypatch):
    jax.devices()  # the backends exist in this test process
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv(xla_flags.OPT_OUT_ENV, raising=False)
    assert xla_flags.apply_cpu_defaults() is False
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"


def test_installed_jaxlib_registers_both_flags():
    assert xla_flags.jaxlib_knows_flags()
    assert not xla_flags.jaxlib_knows_flags(["--xla_cpu_no_such_flag_anywhere_0123"])


_HLO = """
%fused_computation (param_0: f32[8,32,32,64], param_1: f32[3,3,64,64]) -> f32[8,32,32,64] {
  %param_0 = f32[8,32,32,64]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,64,64]{3,2,1,0} parameter(1)
  ROOT %conv.0 = f32[8,32,32,64]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_dot (param_0.1: f32[64,64], param_1.1: f32[64,64]) -> f32[64,64] {
  %param_0.1 = f32[64,64]{1,0} parameter(0)
  %param_1.1 = f32[64,64]{1,0} parameter(1)
  ROOT %dot.1 = f32[64,64]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.2 (x.1: f32[8,32,32,64], w.1: f32[3,3,64,64], a.1: f32[64,64]) -> f32[8,32,32,64] {
  %x.1 = f32[8,32,32,64]{3,2,1,0} parameter(0)
  %w.1 = f32[3,3,64,64]{3,2,1,0} parameter(1)
  %a.1 = f32[64,64]{1,0} parameter(2)
  %ynn_fusion = f32[8,32,32,64]{3,2,1,0} fusion(%x.1, %w.1), kind=kCustom, calls=%fused_computation, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %ynn_fusion.1 = f32[64,64]{1,0} fusion(%a.1, %a.1), kind=kCustom, calls=%fused_dot, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %convolution-base-dilated = f32[8,32,32,64]{3,2,1,0} convolution(%ynn_fusion, %w.1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  ROOT %custom-call.3 = f32[8,32,32,64]{3,2,1,0} custom-call(%convolution-base-dilated, %w.1), custom_call_target="__onednn$convolution"
}
"""


def test_conv_backend_count_of_an_optimized_module():
    """One YNN convolution fusion (the YNN dot fusion is not a convolution), one Eigen, one oneDNN."""
    assert xla_flags.count_conv_backends(_HLO) == {"ynnpack": 1, "onednn": 1, "eigen": 1}


# ----------------------------------------------------------------------------- numerics, one process each

_CHILD = r"""
import json, sys
import numpy as np
from foprokd_jax import xla_flags
applied = xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp
from foprokd_jax.models.resnet import ResNet
model = ResNet(stage_sizes=(1, 1), block="basic", width=32, num_classes=4)
x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3)), jnp.float32)
variables = model.init(jax.random.PRNGKey(0), x, train=False)
def loss_fn(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.mean(out["logits"] ** 2)
compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(variables["params"]).compile()
loss, grads = compiled(variables["params"])
flat = {jax.tree_util.keystr(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
np.savez(sys.argv[1], loss=np.asarray(loss), **flat)
print(json.dumps({"applied": applied, "backends": xla_flags.count_conv_backends(compiled.as_text())}))
"""


def _run_child(out_path, defaults_on: bool):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env[xla_flags.OPT_OUT_ENV] = "1" if defaults_on else "0"
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, dict(np.load(out_path))


def test_resnet_forward_and_gradient_agree_with_and_without_the_flags(tmp_path):
    """Tolerance: loss to 1e-5 relative; each gradient tensor to 1e-4 of its largest entry.

    Different convolution libraries sum in different orders (float32), and train-mode BatchNorm's
    backward amplifies that; anything beyond 1e-4 would be a real difference.
    """
    info_off, off = _run_child(tmp_path / "off.npz", defaults_on=False)
    info_on, on = _run_child(tmp_path / "on.npz", defaults_on=True)
    assert info_off["applied"] is False and info_on["applied"] is True
    # The flags took effect: YNNPACK runs convolutions by default and none with the flags.
    assert info_off["backends"]["ynnpack"] > 0, info_off
    assert info_on["backends"]["ynnpack"] == 0, info_on
    assert sum(info_on["backends"].values()) == sum(info_off["backends"].values())
    np.testing.assert_allclose(on["loss"], off["loss"], rtol=1e-5)
    assert set(on) == set(off) and len(on) > 10
    for name in off:
        scale = float(np.max(np.abs(off[name]))) or 1.0
        np.testing.assert_allclose(on[name], off[name], rtol=0, atol=1e-4 * scale, err_msg=name)


# ----------------------------------------------------------------------------- no recompilation after step 1


def test_ekd_train_step_compiles_once():
    assert jax.device_count() >= 8, "conftest must provide 8 CPU devices"
    teacher = ResNet(stage_sizes=(1, 1), block="bottleneck", width=4)
    student = EKDStudent(
        num_classes=4, teacher_dim=teacher.feature_dim, stage_sizes=(1, 1), width=8, bn_axis_name=parallel.DATA_AXIS
    )
    dummy = jnp.zeros((1, 16, 16, 3))
    optimizer = make_optimizer(
        ConfigDict(dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=5.0))
    )
    mesh = parallel.make_mesh()
    state = parallel.replicate(
        create_train_state(student.init(jax.random.PRNGKey(0), dummy, train=False), optimizer), mesh
    )
    teacher_vars = parallel.replicate(teacher.init(jax.random.PRNGKey(1), dummy, train=False), mesh)
    step = ekd_step.make_train_step(
        student=student,
        teacher=teacher,
        cls_loss=losses.make_classification_loss("bsm", [40, 20, 10, 5]),
        optimizer=optimizer,
        free_u=3.0,
        teacher_feature_key="pre_logits",
        mesh=mesh,
    )
    rng = np.random.default_rng(0)
    batches = [
        parallel.host_batch_to_global(
            {
                "image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                "label": rng.integers(0, 4, (16,)).astype(np.int32),
            },
            mesh,
        )
        for _ in range(4)
    ]  # built up front: only the steps run while compilations are counted
    compiles = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        per_step = []
        for batch in batches:
            before = len(compiles)
            state, metrics = step(state, teacher_vars, batch)
            jax.block_until_ready((state, metrics))
            per_step.append(compiles[before:])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert per_step[0], "step 1 compiled nothing: the compile listener is not working"
    assert per_step[1:] == [[], [], []], f"steps 2..4 recompiled: {per_step[1:]}"
    if hasattr(step, "_cache_size"):  # jax's jitted-function cache: one entry per compiled signature
        assert step._cache_size() == 1
    assert np.isfinite(float(metrics["loss"]))
