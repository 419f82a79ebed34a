"""Registry of the frozen public teachers, and the Flax module builder for a converted teacher artifact.

A config names a teacher (`configs/isic.py:teacher=dinov2_s14`); the registry gives everything the run needs
to know about it without loading weights: architecture, distilled feature and its width D_t (which sizes the
student's projector `p_free` and the FPG's explore head), native input size, input normalisation, where the
weights come from and how to convert them (docs/reference_semantics.md §3.2, §3.3, §6).

The artifact's JSON sidecar stays the source of truth for the network actually built
(`build_teacher_module`): the registry only says what a correctly converted artifact must declare.
"""
import dataclasses
from typing import Any, Dict, Optional

import jax.numpy as jnp

from foprokd_jax.models.resnet import ResNet, get_resnet

FAMILIES = ("resnet", "vit", "densenet")
# Every teacher here was trained on ImageNet-normalised inputs, which is what the pipeline feeds the student
# (docs/reference_semantics.md §6: "the right normalisation for MoCo, torchvision and DINOv2"). A teacher
# needing another normalisation would need a per-teacher re-normalisation in the step, which does not exist yet.
SUPPORTED_NORMALISATIONS = ("imagenet",)
TEACHER_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_CONVERT = "python launch/convert_teacher.py"


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """What a registered teacher is and how to obtain its artifact.

    Attributes:
      name: registry key, used by `configs/isic.py:teacher=<name>` and in run names.
      arch: architecture the artifact's sidecar must declare ('resnet50', 'dinov2_vits14', ...).
      family: 'resnet' or 'vit'; selects the Flax module.
      feature_dim: width D_t of the distilled feature.
      feature_key: key of the distilled feature in the module's output dict.
      default_artifact: converted artifact the config points at (overridable with --config.teacher.artifact).
      input_size: resolution the teacher was trained at; the run may use another (a ViT artifact is then
        converted at that size, see `build_teacher_module`).
      normalisation: input normalisation the teacher expects.
      source: where the weights come from and what to cite.
      convert: the one-time conversion command (needs torch; training never imports it).
    """

    name: str
    arch: str
    family: str
    feature_dim: int
    default_artifact: str
    source: str
    convert: str
    feature_key: str = "pre_logits"
    input_size: int = 224
    normalisation: str = "imagenet"


def _torchvision(name, arch, feature_dim, weights, url_file, note=""):
    artifact = f"teachers/{name}.npz"
    return TeacherSpec(
        name=name, arch=arch, family="resnet", feature_dim=feature_dim, default_artifact=artifact,
        source=(f"torchvision {arch} {weights} (https://download.pytorch.org/models/{url_file}); "
                f"He et al., CVPR 2016{note}"),
        convert=f"{_CONVERT} --src={url_file} --arch={arch} --out={artifact}")


def _dinov2(name, arch, feature_dim, hf_name):
    # The positional embedding is baked for one input size at conversion, so the size is in the name.
    artifact = f"teachers/{arch}_224.npz"
    return TeacherSpec(
        name=name, arch=arch, family="vit", feature_dim=feature_dim, default_artifact=artifact,
        feature_key="pre_logits",  # the CLS token after the final LayerNorm (docs/reference_semantics.md §3.2)
        source=(f"DINOv2 {arch} without registers (https://dl.fbaipublicfiles.com/dinov2/{arch}/"
                f"{arch}_pretrain.pth, or HF facebook/{hf_name} model.safetensors via --format=hf_dinov2); "
                "Oquab et al., DINOv2, TMLR 2024, arXiv:2304.07193"),
        convert=(f"{_CONVERT} --src={arch}_pretrain.pth --arch={arch} --image_size=224 --out={artifact}"))


TEACHERS: Dict[str, TeacherSpec] = {spec.name: spec for spec in (
    TeacherSpec(
        name="moco_r50", arch="resnet50", family="resnet", feature_dim=2048,
        default_artifact="teachers/moco_v2_r50.npz",
        # The 2048-d avgpool feature before the MoCo MLP, not normalised (docs/reference_semantics.md §6, §13.5).
        source=("MoCo v2, 800 epochs, ResNet-50 query encoder (https://dl.fbaipublicfiles.com/moco/"
                "moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar); Chen et al., arXiv:2003.04297"),
        convert=f"{_CONVERT} --src=moco_v2_800ep_pretrain.pth.tar --arch=resnet50 --out=teachers/moco_v2_r50.npz"),
    _dinov2("dinov2_s14", "dinov2_vits14", 384, "dinov2-small"),
    _dinov2("dinov2_b14", "dinov2_vitb14", 768, "dinov2-base"),
    _dinov2("dinov2_l14", "dinov2_vitl14", 1024, "dinov2-large"),
    _torchvision("imagenet_r50_v1", "resnet50", 2048, "IMAGENET1K_V1", "resnet50-0676ba61.pth"),
    # The reference's 'IMAGENET1K_V1' teacher option actually loads these V2 weights
    # (docs/reference_semantics.md §6, §13.14).
    _torchvision("imagenet_r50_v2", "resnet50", 2048, "IMAGENET1K_V2", "resnet50-11ad3fa6.pth",
                 note="; what the reference's 'IMAGENET1K_V1' option really loads"),
    _torchvision("imagenet_r18", "resnet18", 512, "IMAGENET1K_V1", "resnet18-f37072fd.pth",
                 note="; the reference's '18_img'"),
)}

# Names earlier configs used; they resolve to the registry entry.
ALIASES = {"moco": "moco_r50"}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def get_teacher_spec(name: str) -> TeacherSpec:
    """The registry entry for `name` (or an alias such as 'moco'); a clear error lists the known names."""
    key = canonical_name(name)
    if key not in TEACHERS:
        aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(ALIASES.items()))
        raise ValueError(f"unknown teacher {name!r}; registered teachers: {', '.join(sorted(TEACHERS))} "
                         f"(aliases: {aliases})")
    return TEACHERS[key]


def teacher_compute_dtype(name: str) -> Any:
    """'float32' or 'bfloat16' -> jnp dtype. Parameters stay float32 either way; only the compute changes."""
    if name not in TEACHER_DTYPES:
        raise ValueError(f"config.teacher.dtype={name!r} is not one of {tuple(TEACHER_DTYPES)}")
    return TEACHER_DTYPES[name]


def artifact_family(meta: dict) -> str:
    """'resnet', 'vit' or 'densenet'. Artifacts written before the ViT port carry no 'family': ResNets."""
    arch = str(meta.get("arch", ""))
    family = meta.get("family") or ("vit" if arch.startswith("dinov2")
                                    else "densenet" if arch.startswith("densenet") else "resnet")
    if family not in FAMILIES:
        raise ValueError(f"artifact declares family {family!r}; expected one of {FAMILIES}")
    return family


def _densenet_module(meta: dict, dtype: Any):
    """A headless DenseNet (output key 'features') from the sidecar's torchvision constructor arguments, if
    present, else by `arch` (size-agnostic like a ResNet: it ends in a global average pool)."""
    from foprokd_jax.models import densenet  # pylint: disable=import-outside-toplevel

    if meta.get("growth_rate"):
        return densenet.DenseNet(
            growth_rate=int(meta["growth_rate"]), block_config=tuple(int(n) for n in meta["block_config"]),
            num_init_features=int(meta["num_init_features"]), bn_size=int(meta["bn_size"]), dtype=dtype)
    if meta.get("arch") != "densenet121":
        raise ValueError(f"unknown DenseNet arch {meta.get('arch')!r} in a teacher sidecar; expected 'densenet121'")
    return densenet.densenet121(dtype=dtype)


def build_teacher_module(meta: dict, dtype: Any = jnp.float32, image_size: Optional[int] = None):
    """The Flax module for an artifact's sidecar `meta`, computing in `dtype` with float32 parameters.

    ResNet: by torchvision name, or by the sidecar's `stage_sizes`/`block`/`width` (the demo's tiny teacher).
    DenseNet: headless, by the sidecar's `growth_rate`/`block_config`/`num_init_features`/`bn_size` or `arch`;
    its distilled feature is `'features'` (the sidecar's `feature_key`).
    DINOv2 ViT: by `arch` at the sidecar's baked `image_size` (the positional embedding was interpolated to that
    grid at conversion, as torch does at run time, docs/reference_semantics.md §13.15), or by explicit
    `embed_dim`/`depth`/`num_heads` for reduced test teachers. `image_size` is the run's input size; a ViT
    artifact baked for another size is refused, since silently re-interpolating here would bypass the
    conversion's torch-parity checks.
    """
    family = artifact_family(meta)
    if family == "resnet":
        # A ResNet is size-agnostic (global average pool), so image_size needs no check.
        if meta.get("stage_sizes"):
            return ResNet(stage_sizes=tuple(meta["stage_sizes"]), block=meta.get("block", "bottleneck"),
                          width=int(meta.get("width", 64)), dtype=dtype)
        return get_resnet(meta["arch"], dtype=dtype)
    if family == "densenet":
        return _densenet_module(meta, dtype)

    from foprokd_jax.models import vit  # pylint: disable=import-outside-toplevel  (keeps ResNet-only use light)

    baked = meta.get("image_size")
    if baked is None:
        raise ValueError(f"ViT artifact ({meta.get('arch')!r}) has no 'image_size' in its sidecar; re-convert it "
                         "with launch/convert_teacher.py --image_size=<config.input.image_size>")
    baked = int(baked)
    if image_size is not None and int(image_size) != baked:
        raise ValueError(
            f"the {meta.get('arch')} teacher artifact was converted for {baked}x{baked} inputs (its positional "
            f"embedding is baked for that grid) but config.input.image_size is {image_size}; re-convert it with "
            f"launch/convert_teacher.py --image_size={image_size} (a multiple of the patch size "
            f"{meta.get('patch_size', 14)})")
    if meta.get("embed_dim"):
        return vit.DinoV2ViT(
            patch_size=int(meta.get("patch_size", 14)), embed_dim=int(meta["embed_dim"]), depth=int(meta["depth"]),
            num_heads=int(meta["num_heads"]), mlp_ratio=float(meta.get("mlp_ratio", 4.0)),
            num_register_tokens=int(meta.get("num_register_tokens", 0)), image_size=baked, dtype=dtype)
    return vit.dinov2_vit(meta["arch"], image_size=baked, dtype=dtype)
