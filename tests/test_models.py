"""Tests for models/resnet.py, models/ekd_student.py and models/torch_init.py.

Parameter counts come from docs/reference_semantics.md §12 and torchvision. Everything that needs real
computation uses tiny widths and 32x32 inputs so the file stays fast on 2 CPU cores.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.models.resnet import ResNet, get_resnet, resnet18, resnet50
from foprokd_jax.models.torch_init import kaiming_fan_out_normal, torch_linear_bias_init, torch_linear_kernel_init


def _init_key(seed):
    # The 'rbg' PRNG compiles several times faster than threefry on CPU (a tiny ResNet init: ~2.5 s
    # instead of ~8 s); the distributions are the same.
    return jax.random.key(seed, impl="rbg")


def _abstract_variables(model, image_size=64):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


@pytest.mark.parametrize(
    "name,num_classes,expected",
    [
        ("resnet18", None, 11_176_512),
        ("resnet50", None, 23_508_032),
        ("resnet18", 1000, 11_689_512),
        ("resnet50", 1000, 25_557_032),
    ],
)
def test_resnet_parameter_counts_match_torchvision(name, num_classes, expected):
    variables = _abstract_variables(get_resnet(name, num_classes=num_classes))
    assert _count(variables["params"]) == expected


def test_resnet_names_mirror_torchvision():
    params = _abstract_variables(resnet50(num_classes=10))["params"]
    assert {"conv1", "bn1", "fc", "layer1_0", "layer4_2"} <= set(params)
    assert "layer4_3" not in params
    assert set(params["layer1_0"]) == {
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv3",
        "bn3",
        "downsample_conv",
        "downsample_bn",
    }
    assert "downsample_conv" not in params["layer1_1"]
    # V1.5: the stride (and so the 3x3) sits on conv2 of a bottleneck.
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    r18 = _abstract_variables(resnet18())["params"]
    assert "downsample_conv" not in r18["layer1_0"] and "downsample_conv" in r18["layer2_0"]
    assert "fc" not in r18


@pytest.mark.parametrize("name,width_out", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_feature_shapes(name, width_out):
    model = get_resnet(name, num_classes=7)
    variables = _abstract_variables(model)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), train=False), variables)
    expansion = 4 if name == "resnet50" else 1
    assert out["stem"].shape == (2, 56, 56, 64)
    for stage, size in zip(range(1, 5), (56, 28, 14, 7)):
        assert out[f"stage{stage}"].shape == (2, size, size, 64 * 2 ** (stage - 1) * expansion)
    assert out["pre_logits"].shape == (2, width_out)
    assert out["logits"].shape == (2, 7)
    assert model.feature_dim == width_out


def test_odd_input_size_matches_torch_arithmetic():
    # torch: floor((n + 2p - k) / s) + 1 per layer; 'SAME' padding would give different sizes/values.
    out = jax.eval_shape(
        lambda: resnet18().init_with_output(jax.random.key(0), jnp.zeros((1, 65, 65, 3)), train=False)
    )[0]
    assert out["stem"].shape[1:3] == (17, 17)
    assert out["stage4"].shape[1:3] == (3, 3)


@pytest.fixture(scope="module")
def wide_tiny_params():
    """A one-block-per-stage ResNet at width 16: its 3x3x128x128 convs give enough samples (147k) for
    tight statistics, while init compiles in a second instead of ~12 s for a full ResNet-18."""
    model = ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=16, num_classes=1000)
    return jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False))(_init_key(0))


def test_conv_init_is_untruncated_kaiming_fan_out(wide_tiny_params):
    kernel = np.asarray(wide_tiny_params["params"]["layer4_0"]["conv2"]["kernel"])  # (3,3,128,128)
    expected_std = math.sqrt(2.0 / (3 * 3 * 128))
    assert abs(kernel.std() / expected_std - 1.0) < 0.05
    assert abs(kernel.mean()) < 0.05 * expected_std
    # A 2-sigma truncated normal (flax's 'truncated_normal') could never exceed 2 std.
    assert np.abs(kernel).max() > 3.5 * expected_std
    stem = np.asarray(wide_tiny_params["params"]["conv1"]["kernel"])  # fan_out = 7*7*16
    assert abs(stem.std() / math.sqrt(2.0 / (7 * 7 * 16)) - 1.0) < 0.1
    shortcut = np.asarray(wide_tiny_params["params"]["layer4_0"]["downsample_conv"]["kernel"])
    assert abs(shortcut.std() / math.sqrt(2.0 / 128) - 1.0) < 0.05


def test_bn_and_dense_init_match_torch_defaults(wide_tiny_params):
    params, stats = wide_tiny_params["params"], wide_tiny_params["batch_stats"]
    np.testing.assert_array_equal(params["layer2_0"]["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["layer2_0"]["downsample_bn"]["bias"], 0.0)
    np.testing.assert_array_equal(stats["bn1"]["mean"], 0.0)
    np.testing.assert_array_equal(stats["bn1"]["var"], 1.0)
    # zero_init_residual=False: the last BN of a block starts at 1, not 0.
    np.testing.assert_array_equal(params["layer1_0"]["bn2"]["scale"], 1.0)
    bound = 1.0 / math.sqrt(128)
    kernel, bias = np.asarray(params["fc"]["kernel"]), np.asarray(params["fc"]["bias"])
    assert kernel.shape == (128, 1000)
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    # Uniform on [-b, b] has std b/sqrt(3); the bias is random too, not zero.
    assert abs(kernel.std() / (bound / math.sqrt(3)) - 1.0) < 0.05
    assert np.abs(bias).max() > 0.5 * bound
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(wide_tiny_params))


def test_kaiming_initializer_on_a_resnet18_sized_layer():
    kernel = np.asarray(kaiming_fan_out_normal(jax.random.key(3), (3, 3, 512, 512)))
    assert abs(kernel.std() / math.sqrt(2.0 / (3 * 3 * 512)) - 1.0) < 0.05


def test_torch_linear_initialisers_bounds():
    kernel = torch_linear_kernel_init(jax.random.key(1), (300, 40))
    bias = torch_linear_bias_init(300)(jax.random.key(2), (40,))
    assert float(jnp.abs(kernel).max()) <= 1 / math.sqrt(300)
    assert float(jnp.abs(bias).max()) <= 1 / math.sqrt(300)


TINY = dict(stage_sizes=(1, 1, 1, 1), block="basic", width=8)


def _jitted(model):
    """(init, eval_apply, train_apply), jitted: op-by-op dispatch of a ResNet is several times slower."""
    init = jax.jit(lambda key, x: model.init(key, x, train=False))
    eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    return init, eval_apply, train_apply


@pytest.fixture(scope="module")
def tiny_variables():
    init, _, _ = _jitted(ResNet(num_classes=3, **TINY))
    return init(_init_key(1), jnp.zeros((4, 32, 32, 3)))


def test_tiny_resnet_train_vs_eval_batchnorm(tiny_variables):
    model = ResNet(num_classes=3, **TINY)
    _, eval_apply, train_apply = _jitted(model)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = tiny_variables

    train_out, updates = train_apply(variables, x)
    assert set(updates) == {"batch_stats"}
    new_mean = np.asarray(updates["batch_stats"]["bn1"]["mean"])
    eval_out = eval_apply(variables, x)
    assert not np.allclose(train_out["logits"], eval_out["logits"])

    # Eval mode treats examples independently; train mode (batch statistics) does not.
    x_other = x.at[1:].set(jax.random.normal(jax.random.key(2), (3, 32, 32, 3)))
    np.testing.assert_allclose(eval_apply(variables, x_other)["logits"][0], eval_out["logits"][0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(train_apply(variables, x_other)[0]["logits"][0], train_out["logits"][0])

    # The stem BN's running mean moves by (1 - momentum) = 0.1 of the batch mean of conv1's output.
    conv_out = jax.lax.conv_general_dilated(
        x, variables["params"]["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(new_mean, 0.1 * np.asarray(conv_out).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert np.abs(new_mean).max() > 0


def test_bn_axis_name_synchronises_batch_stats_under_shard_map(tiny_variables):
    devices = np.array(jax.devices()[:4])
    if devices.size < 4:
        pytest.skip("needs 4 (fake) devices")
    mesh = jax.sharding.Mesh(devices, ("data",))
    P = jax.sharding.PartitionSpec
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    plain = ResNet(num_classes=3, **TINY)
    synced = ResNet(num_classes=3, bn_axis_name="data", **TINY)
    _, _, train_apply = _jitted(plain)
    variables = tiny_variables
    expected, expected_stats = train_apply(variables, x)

    def sharded_forward(v, batch):
        out, stats = synced.apply(v, batch, train=True, mutable=["batch_stats"])
        return out["logits"], stats

    logits, stats = jax.jit(
        jax.shard_map(sharded_forward, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()))
    )(variables, x)
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        stats["batch_stats"]["layer4_0"]["bn2"]["var"],
        expected_stats["batch_stats"]["layer4_0"]["bn2"]["var"],
        rtol=1e-4,
    )


def test_ekd_student_head_parameter_counts_resnet18():
    student = EKDStudent(num_classes=8, teacher_dim=2048)
    params = _abstract_variables(student)["params"]
    assert set(params) == {"trunk", "fc", "p_free", "fc_free"}
    assert _count(params["trunk"]) == 11_176_512
    assert _count(params["fc"]) == 4_104
    assert _count(params["p_free"]) == 1_314_304
    assert _count(params["fc_free"]) == 16_392
    assert set(params["p_free"]) == {"linear1", "bn", "linear2"}
    assert "fc" not in params["trunk"]
    empty_stage_sizes = _abstract_variables(EKDStudent(num_classes=8, teacher_dim=2048, stage_sizes=()))
    assert _count(empty_stage_sizes["params"]["trunk"]) == 11_176_512
    dino = _abstract_variables(EKDStudent(num_classes=8, teacher_dim=384))["params"]
    assert _count(dino["p_free"]) == 460_672 and _count(dino["fc_free"]) == 3_080


def test_ekd_student_outputs_and_modes():
    student = EKDStudent(num_classes=5, teacher_dim=16, **TINY)
    init, eval_apply, train_apply = _jitted(student)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = init(_init_key(1), x)
    assert variables["params"]["p_free"]["linear1"]["kernel"].shape == (64, 64)
    out, updates = train_apply(variables, x)
    assert out["h"].shape == (4, 64) and out["z1"].shape == (4, 5)
    assert out["p"].shape == (4, 16) and out["z2"].shape == (4, 5)
    assert "bn" in updates["batch_stats"]["p_free"]
    # z1 is the classifier on the raw trunk feature, z2 the classifier on the projection.
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(out["z1"], out["h"] @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)
    fc_free = variables["params"]["fc_free"]
    np.testing.assert_allclose(out["z2"], out["p"] @ fc_free["kernel"] + fc_free["bias"], rtol=1e-5, atol=1e-5)
    eval_out = eval_apply(variables, x)
    assert not np.allclose(eval_out["p"], out["p"])
    bound = 1 / math.sqrt(16)
    assert float(jnp.abs(fc_free["kernel"]).max()) <= bound


def test_bfloat16_compute_keeps_float32_params(tiny_variables):
    model = ResNet(num_classes=3, dtype=jnp.bfloat16, **TINY)
    _, eval_apply, _ = _jitted(model)
    x = jnp.ones((2, 32, 32, 3))
    variables = tiny_variables
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    out = eval_apply(variables, x)
    assert out["logits"].dtype == jnp.bfloat16
    reference = _jitted(ResNet(num_classes=3, **TINY))[1](variables, x)["logits"]
    np.testing.assert_allclose(np.asarray(out["logits"], np.float32), reference, rtol=0.1, atol=0.1)
