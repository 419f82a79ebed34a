"""Teacher registry: every teacher is described, configs pick it by name, artifacts of each family load with the
declared width, a registered DINOv2 teacher trains end to end, and bfloat16 teacher compute stays close."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import isic
from foprokd_jax import train
from foprokd_jax.data import synthetic
from foprokd_jax.methods import resnet_student
from foprokd_jax.models import build, teachers, vit
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.porting import artifact

EXPECTED = {
    "moco_r50": ("resnet50", 2048),
    "dinov2_s14": ("dinov2_vits14", 384),
    "dinov2_b14": ("dinov2_vitb14", 768),
    "dinov2_l14": ("dinov2_vitl14", 1024),
    "imagenet_r50_v1": ("resnet50", 2048),
    "imagenet_r50_v2": ("resnet50", 2048),
    "imagenet_r18": ("resnet18", 512),
    "dinov2_s14_reg": ("dinov2_vits14_reg", 384),
    "dinov2_b14_reg": ("dinov2_vitb14_reg", 768),
    "dinov2_l14_reg": ("dinov2_vitl14_reg", 1024),
    "dinov3_s16": ("dinov3_vits16", 384),
    "dinov3_b16": ("dinov3_vitb16", 768),
    "dinov3_l16": ("dinov3_vitl16", 1024),
    "retfound_l16": ("retfound_vitl16", 1024),
    "biomedclip_b16": ("biomedclip_vitb16", 768),
    "imagenet_convnext_t": ("convnext_tiny", 768),
    "imagenet_convnext_s": ("convnext_small", 768),
}
FAMILY_PREFIXES = {"dinov": "vit", "retfound": "vit", "biomedclip": "vit", "convnext": "convnext", "resnet": "resnet"}
# DINOv2 ViT-S/14 widths (embed 384, 6 heads) with fewer blocks than the real 12: the registry's 384-d
# feature and the ViT code path, at a fraction of the CPU compile time.
VIT_S_SHALLOW = dict(embed_dim=384, depth=1, num_heads=6, mlp_ratio=4.0, patch_size=14, num_register_tokens=0)
VIT_SIZE = 28  # 2x2 patches of 14 px


def _random_variables(module, size, seed=0):
    """Random float32 variables shaped by `jax.eval_shape` (no real init, so big teachers stay cheap)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.default_rng(seed)
    # Scaled like a fan-in init so activations stay O(1) through the depth; BN variances must be positive.
    values = [
        np.abs(rng.normal(1.0, 0.1, s.shape)).astype(np.float32)
        if len(s.shape) == 1
        else (rng.normal(0.0, 1.0, s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
        for s in leaves
    ]
    return jax.tree.unflatten(treedef, values)


def _vit_artifact(path, size=VIT_SIZE, arch="dinov2_vits14", shape=VIT_S_SHALLOW):
    """A random DINOv2 artifact. shape=None: the real `arch` with the sidecar convert_teacher.py writes;
    else explicit (reduced) shapes in the sidecar, which `build_teacher_module` honours."""
    module = vit.DinoV2ViT(image_size=size, **shape) if shape else vit.dinov2_vit(arch, image_size=size)
    meta = {
        "arch": arch,
        "feature_dim": module.feature_dim,
        "image_size": size,
        "family": "vit",
        "patch_size": module.patch_size,
        "num_register_tokens": module.num_register_tokens,
        **(shape or {}),
        "source": "random (test)",
    }
    artifact.save_artifact(str(path), _random_variables(module, size), meta)
    return str(path)


def _resnet_artifact(path, shape=dict(stage_sizes=[1, 1], block="bottleneck", width=8)):
    module = ResNet(stage_sizes=tuple(shape["stage_sizes"]), block=shape["block"], width=shape["width"])
    artifact.save_artifact(
        str(path), _random_variables(module, 32), {"arch": "tiny_resnet", "feature_dim": module.feature_dim, **shape}
    )
    return str(path), module.feature_dim


def test_registry_describes_every_teacher():
    assert set(teachers.TEACHERS) == set(EXPECTED)
    for name, spec in teachers.TEACHERS.items():
        assert (spec.arch, spec.feature_dim) == EXPECTED[name], name
        assert spec.family == next(f for prefix, f in FAMILY_PREFIXES.items() if spec.arch.startswith(prefix))
        assert (spec.patch_size is not None) == (spec.family == "vit") and spec.feature
        assert spec.default_artifact.startswith("teachers/") and spec.default_artifact.endswith(".npz")
        assert f"--arch={spec.arch}" in spec.convert and f"--out={spec.default_artifact}" in spec.convert
        assert spec.input_size == 224 and spec.normalisation == "imagenet" and spec.feature_key == "pre_logits"
        assert spec.source
    # The reference's 'IMAGENET1K_V1' option loads V2 weights (docs/reference_semantics.md §13.14): the registry
    # says which is which.
    assert "IMAGENET1K_V2" in teachers.TEACHERS["imagenet_r50_v2"].source
    assert teachers.get_teacher_spec("moco") is teachers.TEACHERS["moco_r50"]
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        readme = f.read()
    for spec in teachers.TEACHERS.values():  # the README's teacher table follows the registry
        assert f"| `{spec.name}`" in readme and spec.default_artifact in readme, spec.name
    with pytest.raises(ValueError, match="dinov2_s14.*moco_r50"):
        teachers.get_teacher_spec("clip")
    with pytest.raises(ValueError, match="teacher.dtype"):
        teachers.teacher_compute_dtype("float16")


@pytest.mark.parametrize("name", sorted(EXPECTED) + ["moco"])
def test_isic_config_takes_every_registered_teacher(name):
    spec = teachers.get_teacher_spec(name)
    config = isic.get_config(f"teacher={name},runlocal")
    assert (config.teacher.name, config.teacher.arch) == (spec.name, spec.arch)
    assert (config.teacher.artifact, config.teacher.feature_key) == (spec.default_artifact, "pre_logits")
    assert spec.name in config.name and config.teacher.dtype == "float32"
    # runlocal picks 2x2 of a ViT's patches (28 px for 14-px DINOv2, 32 px for 16-px patches), 32 px for CNNs.
    assert config.input.image_size == (2 * spec.patch_size if spec.patch_size else 32)


def test_resnet_artifact_loads_with_its_width(tmp_path):
    path, dim = _resnet_artifact(tmp_path / "r.npz")
    module, variables, record = build.teacher_from_artifact(path, "tiny_resnet", image_size=40)
    out = module.apply(variables, jnp.ones((2, 40, 40, 3)), train=False)["pre_logits"]
    assert out.shape == (2, dim) and record["feature_dim"] == dim == 64 and record["family"] == "resnet"


def test_vit_artifact_loads_and_refuses_another_image_size(tmp_path):
    path = _vit_artifact(tmp_path / "v.npz")
    module, variables, record = build.teacher_from_artifact(path, "dinov2_vits14", image_size=VIT_SIZE)
    out = module.apply(variables, jnp.ones((2, VIT_SIZE, VIT_SIZE, 3)), train=False)
    assert out["pre_logits"].shape == (2, 384) and record["feature_dim"] == 384
    assert (record["family"], record["image_size"]) == ("vit", VIT_SIZE)
    with pytest.raises(ValueError, match="--image_size=42"):
        build.teacher_from_artifact(path, "dinov2_vits14", image_size=42)
    with pytest.raises(ValueError, match="no 'image_size'"):
        teachers.build_teacher_module({"arch": "dinov2_vits14", "family": "vit"}, image_size=224)


def test_registered_teacher_must_have_the_registry_width(tmp_path):
    narrow = dict(VIT_S_SHALLOW, embed_dim=96, num_heads=2, depth=1)
    path = _vit_artifact(tmp_path / "narrow.npz", shape=narrow)
    config = isic.get_config("teacher=dinov2_s14,method=ekd,runlocal")
    config.teacher.artifact = path
    with pytest.raises(ValueError, match="384-d"):
        resnet_student.build_feature_teacher(config)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("isic_vit"))
    synthetic.write_synthetic_isic(
        root,
        n_max=24,
        val_per_class=2,
        test_per_class=3,
        image_sizes=((40, 30), (32, 32)),
        folds=(1,),
        imbs=("0.01",),
        seed=0,
    )
    return root


@pytest.mark.parametrize("method,dtype", [("ekd", "float32"), ("fopro", "bfloat16")])
def test_dinov2_s14_config_trains_on_synthetic_data(dataset, tmp_path, method, dtype):
    config = isic.get_config(f"teacher=dinov2_s14,method={method},runlocal")
    config.input.image_root = dataset
    config.input.split_dir = os.path.join(dataset, "splits")
    config.input.prepared_dir = os.path.join(dataset, "tfds")
    config.teacher.artifact = _vit_artifact(tmp_path / "dinov2_vits14.npz")
    config.teacher.dtype = dtype
    config.total_steps = 2
    config.num_devices = 1  # the 8-device data-parallel path is test_train's; one device halves the time
    _, _, record = resnet_student.build_feature_teacher(config)
    student = resnet_student.build_student(config, 8, record["feature_dim"])
    assert student.teacher_dim == 384 and record["dtype"] == dtype
    results = train.train_and_evaluate(config, str(tmp_path / "work"))
    assert results["method_info"]["teacher"]["feature_dim"] == 384
    assert results["method_info"]["teacher"]["arch"] == "dinov2_vits14" and results["teacher"] == "dinov2_s14"
    assert 0.0 <= results["report"]["bacc"] <= 1.0


def _relative_errors(module_f32, module_bf16, variables, size):
    x = jax.random.normal(jax.random.PRNGKey(3), (4, size, size, 3))
    f32 = np.asarray(module_f32.apply(variables, x, train=False)["pre_logits"], np.float64)
    bf16 = np.asarray(module_bf16.apply(variables, x, train=False)["pre_logits"].astype(jnp.float32), np.float64)
    per_sample = np.linalg.norm(bf16 - f32, axis=1) / np.linalg.norm(f32, axis=1)
    return float(per_sample.max()), float(np.abs(bf16 - f32).max() / np.abs(f32).max())


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_bfloat16_teacher_features_match_float32(tmp_path, family):
    if family == "vit":
        # The real ViT-S/14 (12 blocks; bf16 error grows with depth), built from the arch name alone.
        path, arch, size = _vit_artifact(tmp_path / "v.npz", shape=None), "dinov2_vits14", VIT_SIZE
    else:
        path, arch, size = _resnet_artifact(tmp_path / "r.npz")[0], "tiny_resnet", 64
    m32, variables, _ = build.teacher_from_artifact(path, arch, image_size=size)
    m16, variables16, _ = build.teacher_from_artifact(path, arch, image_size=size, dtype=jnp.bfloat16)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables16))  # params stay float32
    norm_err, max_err = _relative_errors(m32, m16, variables, size)
    print(
        f"bf16 vs f32 teacher features ({family}): max per-sample relative L2 error {norm_err:.2e}, "
        f"max abs error / max |f32| {max_err:.2e}"
    )
    assert norm_err < 5e-2 and max_err < 5e-2
