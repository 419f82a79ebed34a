"""Student backbones (models/students.py): parity with torchvision/timm, torch-exact init, ImageNet loading.

Parity uses randomised weights *and* BatchNorm running statistics (a fresh torch model has mean 0 / var 1,
which would hide a mean/var swap), fp32, 64-px inputs, batch 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

from configs import isic
from foprokd_jax.methods import resnet_student
from foprokd_jax.models import build, students
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.porting import artifact, student_weights
from foprokd_jax.porting.torch_compat import import_torchvision
from tests.parity_report import parity_report

torchvision = import_torchvision()
import timm  # noqa: E402  (after import_torchvision: timm imports torchvision)

NEW_ARCHS = ("mobilenet_v3_large", "efficientnet_b0", "vit_tiny_patch16")
SIZE = 64


def torch_model(arch, num_classes=10, image_size=SIZE):
    if arch == "vit_tiny_patch16":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size, num_classes=num_classes)
    return getattr(torchvision.models, arch)(num_classes=num_classes)


def torch_features(arch, model, x):
    """(pooled feature, logits) of the torch model in eval mode."""
    with torch.no_grad():
        if arch == "vit_tiny_patch16":
            feature = model.forward_head(model.forward_features(x), pre_logits=True)
        elif arch.startswith("resnet"):
            trunk = torch.nn.Sequential(*list(model.children())[:-1])
            feature = torch.flatten(trunk(x), 1)
        else:
            feature = torch.flatten(model.avgpool(model.features(x)), 1)
        return feature.numpy(), model(x).numpy()


def randomise(model, seed):
    """Random affine norm parameters, biases and BN running statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
        for name, param in model.named_parameters():
            if param.ndim == 1 and name.endswith("weight"):
                param.copy_(torch.rand(param.shape, generator=g) + 0.5)
            elif param.ndim == 1 and name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return model.eval()


def numpy_state_dict(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", NEW_ARCHS + ("resnet50",))
def test_logits_and_features_match_the_reference(arch):
    torch.manual_seed(0)
    model = randomise(torch_model(arch), 1)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    feature, logits = torch_features(arch, model, x)
    variables = student_weights.to_flax(numpy_state_dict(model), arch, include_classifier=True, image_size=SIZE)
    module, feature_dim = students.build_backbone(arch, 10, image_size=SIZE)
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    assert out["pre_logits"].shape == (2, feature_dim) == (2, students.FEATURE_DIMS[arch])
    for name, ours, ref in (("pre_logits", out["pre_logits"], feature), ("logits", out["logits"], logits)):
        _, relative = parity_report(f"{arch} {name}", ours, ref)
        assert relative <= 1e-5, (arch, name, relative)


def test_vit_positional_grid_is_resampled_like_timm():
    """A 224-px timm state dict loaded into a 64-px model: timm's checkpoint_filter_fn vs our converter."""
    torch.manual_seed(3)
    source = randomise(torch_model("vit_tiny_patch16", 10, 224), 4)
    with torch.no_grad():
        source.pos_embed.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))  # a non-trivial grid
    small = torch_model("vit_tiny_patch16", 10, SIZE).eval()
    from timm.models.vision_transformer import checkpoint_filter_fn

    small.load_state_dict(checkpoint_filter_fn(source.state_dict(), small))
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    _, logits = torch_features("vit_tiny_patch16", small, x)
    variables = student_weights.to_flax(numpy_state_dict(source), "vit_tiny_patch16", True, image_size=SIZE)
    assert variables["params"]["pos_embed"].shape == (1, 1 + 4 * 4, 192)
    np.testing.assert_allclose(variables["params"]["pos_embed"], small.pos_embed.detach().numpy(), atol=1e-5)
    module, _ = students.build_backbone("vit_tiny_patch16", 10, image_size=SIZE)
    ours = jax.jit(module.apply)(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))["logits"]
    assert parity_report("vit 224->64 logits", ours, logits)[1] <= 1e-5


@pytest.mark.parametrize("arch", NEW_ARCHS + students.RESNET_ARCHS)
def test_parameter_counts_match_the_reference(arch):
    size = 224 if arch == "vit_tiny_patch16" else 64
    for num_classes in (1000, None):
        module, _ = students.build_backbone(arch, num_classes, image_size=size)
        shapes = jax.eval_shape(lambda m=module: m.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
        ours = sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))
        reference = torch_model(arch, 1000, 224)
        expected = sum(
            p.numel()
            for n, p in reference.named_parameters()
            if num_classes or not n.startswith(student_weights.CLASSIFIER_PREFIXES[arch])
        )
        assert ours == expected, (arch, num_classes, ours, expected)


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_init_follows_the_reference_constructor(arch):
    """Every variable's init distribution is the reference's: constants equal, random ones matched in
    std (within 10%) and shape (kurtosis: 1.8 uniform vs 3 normal) on layers with >= 2000 values."""
    torch.manual_seed(0)
    reference = student_weights.to_flax(numpy_state_dict(torch_model(arch)), arch, True, image_size=SIZE)
    module, _ = students.build_backbone(arch, 10, image_size=SIZE)
    ours = jax.device_get(
        jax.jit(lambda key: module.init(key, jnp.zeros((1, SIZE, SIZE, 3)), train=False))(jax.random.key(0))
    )
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
    checked = 0
    for path, value in jax.tree_util.tree_flatten_with_path(ours)[0]:
        ref = np.asarray(flat_ref[path])
        value = np.asarray(value)
        if np.all(ref == ref.flat[0]):
            np.testing.assert_array_equal(value, ref, err_msg=jax.tree_util.keystr(path))
        elif ref.size >= 2000:
            assert 0.9 < value.std() / ref.std() < 1.1, (jax.tree_util.keystr(path), value.std(), ref.std())
            assert (
                abs(scipy.stats.kurtosis(value.ravel(), fisher=False) - scipy.stats.kurtosis(ref.ravel(), fisher=False))
                < 0.4
            ), jax.tree_util.keystr(path)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_ekd_student_on_each_backbone_loads_a_converted_imagenet_artifact(arch, tmp_path):
    torch.manual_seed(0)
    model = randomise(torch_model(arch, 1000, SIZE if arch == "vit_tiny_patch16" else 224), 7)
    path = str(tmp_path / f"{arch}.npz")
    variables = student_weights.to_flax(numpy_state_dict(model), arch, include_classifier=True, image_size=SIZE)
    artifact.save_artifact(path, variables, {"arch": arch, "feature_dim": students.FEATURE_DIMS[arch]})

    config = isic.get_config("method=bsm")
    config.unlock()
    config.student.name = arch
    config.student.init = path
    config.input.image_size = SIZE
    student = resnet_student.build_student(config, 8)
    assert isinstance(student, EKDStudent) and student.trunk == arch
    loaded = jax.device_get(build.init_student(student, config, jax.random.PRNGKey(0)))
    trunk = loaded["params"]["trunk"]
    if arch == "mobilenet_v3_large":
        leaf, source = trunk["features_4"]["se"]["fc1"]["kernel"], model.features[4].block[2].fc1.weight
    elif arch == "efficientnet_b0":
        leaf, source = trunk["features_2_1"]["project"]["conv"]["kernel"], model.features[2][1].block[3][0].weight
    else:
        leaf, source = trunk["blocks_11"]["attn"]["qkv"]["kernel"], model.blocks[11].attn.qkv.weight
    source = source.detach().numpy()
    np.testing.assert_array_equal(leaf, source.T if source.ndim == 2 else source.transpose(2, 3, 1, 0))
    assert loaded["params"]["fc"]["kernel"].shape == (students.FEATURE_DIMS[arch], 8)  # fresh 8-way head
    # The ImageNet-initialised student reproduces the reference feature.
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    feature, _ = torch_features(arch, model, x)
    out = jax.jit(lambda v, x: student.apply(v, x, train=False))(loaded, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    assert parity_report(f"{arch} EKD h", out["h"], feature)[1] <= 1e-5


def test_bad_state_dict_lists_every_problem():
    state = numpy_state_dict(torch_model("mobilenet_v3_large"))
    state["features.1.block.0.0.weight"] = state["features.1.block.0.0.weight"][:8]
    del state["features.16.1.running_var"]
    state["extra.weight"] = np.zeros(3)
    with pytest.raises(ValueError) as error:
        student_weights.to_flax(state, "mobilenet_v3_large")
    message = str(error.value)
    assert "extra.weight" in message and "features.1.block.0.0.weight" in message
    assert "features_16/bn/var" in message
    with pytest.raises(ValueError, match="unknown student arch 'mobilenet_v2'"):
        students.build_backbone("mobilenet_v2")


@pytest.mark.parametrize("arch,trunk_params", [("resnet18", 11_176_512), ("resnet50", 23_508_032)])
def test_config_student_name_selects_the_published_resnet(arch, trunk_params):
    """The default config builds torchvision's trunk for student.name (no ResNet-18 depths under a resnet50)."""
    config = isic.get_config("method=bsm")
    config.unlock()
    config.student.name = arch
    student = resnet_student.build_student(config, 8)
    shapes = jax.eval_shape(lambda: student.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]["trunk"])) == trunk_params
    with pytest.raises(ValueError, match="student.name"):
        config.student.name = "resnet34"
        resnet_student.validate(config)
