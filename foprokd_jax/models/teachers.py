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

FAMILIES = ("resnet", "vit", "densenet", "convnext")
# Every artifact takes ImageNet-normalised inputs, which is what the pipeline feeds the student
# (docs/reference_semantics.md §6: "the right normalisation for MoCo, torchvision and DINOv2"). A teacher trained
# on other statistics (BiomedCLIP:
# OpenAI CLIP's) gets the change of normalisation folded into its patch embedding at conversion (exact: it is
# affine and the patch conv has no padding), so no per-teacher re-normalisation is needed in the step.
SUPPORTED_NORMALISATIONS = ("imagenet",)
TEACHER_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_CONVERT = "python launch/convert_teacher.py"


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """What a registered teacher is and how to obtain its artifact.

    Attributes:
      name: registry key, used by `configs/isic.py:teacher=<name>` and in run names.
      arch: architecture the artifact's sidecar must declare ('resnet50', 'dinov2_vits14', ...).
      family: 'resnet', 'vit', 'densenet' or 'convnext'; selects the Flax module.
      feature_dim: width D_t of the distilled feature.
      feature_key: key of the distilled feature in the module's output dict.
      feature: what that feature is (e.g. 'CLS token after the final LayerNorm').
      default_artifact: converted artifact the config points at (overridable with --config.teacher.artifact).
      input_size: resolution the teacher was trained at; the run may use another (a ViT artifact is then
        converted at that size, see `build_teacher_module`).
      normalisation: input normalisation the artifact expects.
      patch_size: a ViT's patch size (config.input.image_size must be a multiple of it); None for CNNs.
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
    feature: str = ""
    input_size: int = 224
    normalisation: str = "imagenet"
    patch_size: Optional[int] = None


def _torchvision(name, arch, feature_dim, weights, url_file, note=""):
    artifact = f"teachers/{name}.npz"
    return TeacherSpec(
        name=name,
        arch=arch,
        family="resnet",
        feature_dim=feature_dim,
        default_artifact=artifact,
        feature=f"{feature_dim}-d global average pool",
        source=(
            f"torchvision {arch} {weights} (https://download.pytorch.org/models/{url_file}); He et al., CVPR 2016{note}"
        ),
        convert=f"{_CONVERT} --src={url_file} --arch={arch} --out={artifact}",
    )


def _dinov2(name, arch, feature_dim, hf_name):
    # The positional embedding is baked for one input size at conversion, so the size is in the name.
    artifact = f"teachers/{arch}_224.npz"
    return TeacherSpec(
        name=name,
        arch=arch,
        family="vit",
        feature_dim=feature_dim,
        default_artifact=artifact,
        feature_key="pre_logits",
        patch_size=14,
        feature="CLS token after the final LayerNorm (docs/reference_semantics.md §3.2)",
        source=(
            f"DINOv2 {arch} without registers (https://dl.fbaipublicfiles.com/dinov2/{arch}/"
            f"{arch}_pretrain.pth, or HF facebook/{hf_name} model.safetensors via --format=hf_dinov2); "
            "Oquab et al., DINOv2, TMLR 2024, arXiv:2304.07193"
        ),
        convert=(f"{_CONVERT} --src={arch}_pretrain.pth --arch={arch} --image_size=224 --out={artifact}"),
    )


def _vit(name, arch, feature_dim, feature, patch_size, src, fmt, source):
    """A ViT teacher converted from a timm-style layout (porting/timm_vit_weights.py); the pos-embed / RoPE grid
    is baked for one input size at conversion, so the size is in the artifact name."""
    artifact = f"teachers/{arch}_224.npz"
    return TeacherSpec(
        name=name,
        arch=arch,
        family="vit",
        feature_dim=feature_dim,
        default_artifact=artifact,
        feature=feature,
        patch_size=patch_size,
        source=source,
        convert=f"{_CONVERT} --src={src} --arch={arch} --format={fmt} --image_size=224 --out={artifact}",
    )


def _dinov2_reg(name, arch, feature_dim, timm_name):
    return _vit(
        name,
        arch,
        feature_dim,
        "CLS token after the final LayerNorm (4 register tokens)",
        14,
        f"{timm_name}.safetensors",
        "timm",
        f"DINOv2 {arch} with 4 registers, timm layout (HF timm/{timm_name}.lvd142m model.safetensors; the "
        f"official dinov2_{arch[7:11]}14_reg4_pretrain.pth converts with --format=dinov2); Darcet et al., "
        "Vision Transformers Need Registers, ICLR 2024, arXiv:2309.16588",
    )


_TIMM_SIZE_NAMES = {"s": "small", "b": "base", "l": "large"}


def _dinov3(name, arch, feature_dim, size_letter):
    timm_name = f"vit_{_TIMM_SIZE_NAMES[size_letter]}_patch16_dinov3"
    return _vit(
        name,
        arch,
        feature_dim,
        "CLS token after the final LayerNorm (RoPE, 4 register tokens)",
        16,
        f"dinov3_vit{size_letter}16_pretrain_lvd1689m.pth",
        "dinov3",
        f"DINOv3 ViT-{size_letter.upper()}/16 LVD-1689M (official facebookresearch/dinov3 .pth, or HF "
        f"timm/{timm_name}.lvd1689m with "
        "--format=timm); Simeoni et al., DINOv3, arXiv:2508.10104",
    )


def _convnext(name, arch, url_file):
    artifact = f"teachers/{name}.npz"
    return TeacherSpec(
        name=name,
        arch=arch,
        family="convnext",
        feature_dim=768,
        default_artifact=artifact,
        feature="768-d global average pool -> LayerNorm (torchvision classifier[0], timm head.norm)",
        source=(
            f"torchvision {arch} IMAGENET1K_V1 (https://download.pytorch.org/models/{url_file}; timm "
            f"{arch}.* state dicts convert too); Liu et al., A ConvNet for the 2020s, CVPR 2022"
        ),
        convert=f"{_CONVERT} --src={url_file} --arch={arch} --out={artifact}",
    )


TEACHERS: Dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in (
        TeacherSpec(
            name="moco_r50",
            arch="resnet50",
            family="resnet",
            feature_dim=2048,
            feature="2048-d global average pool before the MoCo MLP",
            default_artifact="teachers/moco_v2_r50.npz",
            # The 2048-d avgpool feature before the MoCo MLP, not normalised (docs/reference_semantics.md §6, §13.5).
            source=(
                "MoCo v2, 800 epochs, ResNet-50 query encoder (https://dl.fbaipublicfiles.com/moco/"
                "moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar); Chen et al., arXiv:2003.04297"
            ),
            convert=f"{_CONVERT} --src=moco_v2_800ep_pretrain.pth.tar --arch=resnet50 --out=teachers/moco_v2_r50.npz",
        ),
        _dinov2("dinov2_s14", "dinov2_vits14", 384, "dinov2-small"),
        _dinov2("dinov2_b14", "dinov2_vitb14", 768, "dinov2-base"),
        _dinov2("dinov2_l14", "dinov2_vitl14", 1024, "dinov2-large"),
        _torchvision("imagenet_r50_v1", "resnet50", 2048, "IMAGENET1K_V1", "resnet50-0676ba61.pth"),
        # The reference's 'IMAGENET1K_V1' teacher option actually loads these V2 weights
        # (docs/reference_semantics.md §6, §13.14).
        _torchvision(
            "imagenet_r50_v2",
            "resnet50",
            2048,
            "IMAGENET1K_V2",
            "resnet50-11ad3fa6.pth",
            note="; what the reference's 'IMAGENET1K_V1' option really loads",
        ),
        _torchvision(
            "imagenet_r18", "resnet18", 512, "IMAGENET1K_V1", "resnet18-f37072fd.pth", note="; the reference's '18_img'"
        ),
        _dinov2_reg("dinov2_s14_reg", "dinov2_vits14_reg", 384, "vit_small_patch14_reg4_dinov2"),
        _dinov2_reg("dinov2_b14_reg", "dinov2_vitb14_reg", 768, "vit_base_patch14_reg4_dinov2"),
        _dinov2_reg("dinov2_l14_reg", "dinov2_vitl14_reg", 1024, "vit_large_patch14_reg4_dinov2"),
        _dinov3("dinov3_s16", "dinov3_vits16", 384, "s"),
        _dinov3("dinov3_b16", "dinov3_vitb16", 768, "b"),
        _dinov3("dinov3_l16", "dinov3_vitl16", 1024, "l"),
        _vit(
            "retfound_l16",
            "retfound_vitl16",
            1024,
            "mean of the patch tokens -> fc_norm (RETFound's global_pool fine-tuning feature)",
            16,
            "RETFound_cfp_weights.pth",
            "timm",
            "RETFound MAE ViT-L/16, colour fundus (HF YukunZhou/RETFound_mae_natureCFP, a {'model': ...} .pth; an "
            "MAE pre-training checkpoint's final norm becomes fc_norm); Zhou et al., A foundation model for "
            "generalizable disease detection from retinal images, Nature 2023; github.com/rmaphoh/RETFound_MAE",
        ),
        _vit(
            "biomedclip_b16",
            "biomedclip_vitb16",
            768,
            "CLS token after the final LayerNorm of the timm trunk (before open_clip's 512-d projection)",
            16,
            "open_clip_pytorch_model.bin",
            "timm",
            "BiomedCLIP vision tower (HF microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
            "open_clip_pytorch_model.bin, visual.trunk.*; OpenAI-CLIP input normalisation folded into the patch "
            "embedding); Zhang et al., BiomedCLIP, arXiv:2303.00915",
        ),
        _convnext("imagenet_convnext_t", "convnext_tiny", "convnext_tiny-983f1562.pth"),
        _convnext("imagenet_convnext_s", "convnext_small", "convnext_small-0c510722.pth"),
    )
}

# Names earlier configs used; they resolve to the registry entry.
ALIASES = {"moco": "moco_r50"}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def get_teacher_spec(name: str) -> TeacherSpec:
    """The registry entry for `name` (or an alias such as 'moco'); a clear error lists the known names."""
    key = canonical_name(name)
    if key not in TEACHERS:
        aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(ALIASES.items()))
        raise ValueError(
            f"unknown teacher {name!r}; registered teachers: {', '.join(sorted(TEACHERS))} (aliases: {aliases})"
        )
    return TEACHERS[key]


def teacher_compute_dtype(name: str) -> Any:
    """'float32' or 'bfloat16' -> jnp dtype. Parameters stay float32 either way; only the compute changes."""
    if name not in TEACHER_DTYPES:
        raise ValueError(f"config.teacher.dtype={name!r} is not one of {tuple(TEACHER_DTYPES)}")
    return TEACHER_DTYPES[name]


def artifact_family(meta: dict) -> str:
    """'resnet', 'vit', 'densenet' or 'convnext'. Artifacts written before the ViT port carry no 'family': ResNets."""
    arch = str(meta.get("arch", ""))
    family = meta.get("family") or (
        "vit" if arch.startswith("dinov2") else "densenet" if arch.startswith("densenet") else "resnet"
    )
    if family not in FAMILIES:
        raise ValueError(f"artifact declares family {family!r}; expected one of {FAMILIES}")
    return family


def _densenet_module(meta: dict, dtype: Any):
    """A headless DenseNet (output key 'features') from the sidecar's torchvision constructor arguments, if
    present, else by `arch` (size-agnostic like a ResNet: it ends in a global average pool)."""
    from foprokd_jax.models import densenet

    if meta.get("growth_rate"):
        return densenet.DenseNet(
            growth_rate=int(meta["growth_rate"]),
            block_config=tuple(int(n) for n in meta["block_config"]),
            num_init_features=int(meta["num_init_features"]),
            bn_size=int(meta["bn_size"]),
            dtype=dtype,
        )
    if meta.get("arch") != "densenet121":
        raise ValueError(f"unknown DenseNet arch {meta.get('arch')!r} in a teacher sidecar; expected 'densenet121'")
    return densenet.densenet121(dtype=dtype)


def build_teacher_module(meta: dict, dtype: Any = jnp.float32, image_size: Optional[int] = None):
    """The Flax module for an artifact's sidecar `meta`, computing in `dtype` with float32 parameters.

    ResNet: by torchvision name, or by the sidecar's `stage_sizes`/`block`/`width` (the demo's tiny teacher).
    DenseNet: headless, by the sidecar's `growth_rate`/`block_config`/`num_init_features`/`bn_size` or `arch`;
    its distilled feature is `'features'` (the sidecar's `feature_key`).
    ConvNeXt: headless, by the sidecar's `depths`/`dims` or `arch`; size-agnostic.
    ViT (DINOv2, DINOv2-reg, DINOv3, RETFound, BiomedCLIP): the sidecar's VisionTransformer options
    (`embed_dim`/`depth`/`num_heads`/`patch_size`/`layerscale_init`/`norm_epsilon`/`position_encoding`/`pooling`,
    DINOv2 defaults for those it lacks), else by `arch`, at the sidecar's baked `image_size` (the positional
    embedding was interpolated to that grid at conversion, as torch does at run time, docs/reference_semantics.md
    §13.15), or by explicit `embed_dim`/`depth`/`num_heads` for reduced test teachers. `image_size` is the run's
    input size; a ViT artifact baked for another size is refused, since silently re-interpolating here would bypass
    the conversion's torch-parity checks.
    """
    family = artifact_family(meta)
    if family == "resnet":
        # A ResNet is size-agnostic (global average pool), so image_size needs no check.
        if meta.get("stage_sizes"):
            return ResNet(
                stage_sizes=tuple(meta["stage_sizes"]),
                block=meta.get("block", "bottleneck"),
                width=int(meta.get("width", 64)),
                dtype=dtype,
            )
        return get_resnet(meta["arch"], dtype=dtype)
    if family == "densenet":
        return _densenet_module(meta, dtype)
    if family == "convnext":
        from foprokd_jax.models import convnext

        if meta.get("dims"):  # size-agnostic (global average pool), like a ResNet
            return convnext.ConvNeXt(
                depths=tuple(int(n) for n in meta["depths"]), dims=tuple(int(n) for n in meta["dims"]), dtype=dtype
            )
        return convnext.get_convnext(meta["arch"], dtype=dtype)

    from foprokd_jax.models import vit  # imported here: keeps ResNet-only use light

    baked = meta.get("image_size")
    if baked is None:
        raise ValueError(
            f"ViT artifact ({meta.get('arch')!r}) has no 'image_size' in its sidecar; re-convert it "
            "with launch/convert_teacher.py --image_size=<config.input.image_size>"
        )
    baked = int(baked)
    if image_size is not None and int(image_size) != baked:
        raise ValueError(
            f"the {meta.get('arch')} teacher artifact was converted for {baked}x{baked} inputs (its positional "
            f"embedding is baked for that grid) but config.input.image_size is {image_size}; re-convert it with "
            f"launch/convert_teacher.py --image_size={image_size} (a multiple of the patch size "
            f"{meta.get('patch_size', 14)})"
        )
    if meta.get("embed_dim"):
        # Options a sidecar omits (DINOv2 artifacts written before the timm-layout importer) take the DINOv2
        # defaults; 'layerscale_init': null means no LayerScale.
        defaults = vit.VisionTransformer
        layerscale = meta.get("layerscale_init", defaults.layerscale_init)
        return vit.VisionTransformer(
            patch_size=int(meta.get("patch_size", 14)),
            embed_dim=int(meta["embed_dim"]),
            depth=int(meta["depth"]),
            num_heads=int(meta["num_heads"]),
            mlp_ratio=float(meta.get("mlp_ratio", 4.0)),
            num_register_tokens=int(meta.get("num_register_tokens", 0)),
            image_size=baked,
            layerscale_init=None if layerscale is None else float(layerscale),
            norm_epsilon=float(meta.get("norm_epsilon", defaults.norm_epsilon)),
            position_encoding=str(meta.get("position_encoding", defaults.position_encoding)),
            rope_base=float(meta.get("rope_base", defaults.rope_base)),
            pooling=str(meta.get("pooling", defaults.pooling)),
            dtype=dtype,
        )
    if meta["arch"] in vit.VIT_ARCHS:
        return vit.VisionTransformer(image_size=baked, **vit.vit_options(meta["arch"]), dtype=dtype)
    return vit.dinov2_vit(meta["arch"], image_size=baked, dtype=dtype)
