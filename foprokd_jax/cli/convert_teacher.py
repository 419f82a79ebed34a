r"""Convert a teacher checkpoint (ResNet, DenseNet, ConvNeXt, DINOv2 / DINOv3 / timm-layout ViT) into a Flax artifact.

Offline, one-time step; the only place outside tests that imports torch:

  python launch/convert_teacher.py --src data/moco_v2_800ep_pretrain.pth.tar \
      --arch resnet50 --out teachers/moco_r50.npz

* The checkpoint is read with ``torch.load(..., weights_only=True)``. A file that needs arbitrary code
  to unpickle is refused, never loaded with ``weights_only=False``.
* ``--format auto`` picks MoCo-v2 when ``module.encoder_q.*`` keys exist (query encoder kept, MLP head
  dropped: the teacher feature is the 2048-d pooled output, docs/reference_semantics.md §6), else torchvision
  (``fc`` kept when present, so logits can be checked too).
* DenseNet-121 (``--arch=densenet121``, CRCKD's backbone, docs/crckd.md §R2): a torchvision state dict
  such as ``densenet121-a639ec97.pth``, in either key spelling (the published files use the legacy
  ``denselayerN.norm.1`` form); ``classifier`` is kept when present. The sidecar declares family
  'densenet' and feature key 'features':

    python launch/convert_teacher.py --src=densenet121-a639ec97.pth --arch=densenet121 \
        --out=teachers/imagenet_densenet121.npz

* DINOv2 (``--arch=dinov2_vit{s,b,l}14[_reg]``): ``--format dinov2`` reads the official
  ``dinov2_*_pretrain.pth``; ``--format hf_dinov2`` reads a Hugging Face ``model.safetensors`` (or the
  model folder holding it) without torch. The positional embedding is resized once, here, for
  ``--image_size`` (default 224, a multiple of 14) exactly as the official code does at run time:

    python launch/convert_teacher.py --src dinov2_vits14_pretrain.pth --arch dinov2_vits14 \
        --format dinov2 --image_size 224 --out teachers/dinov2_vits14_224.npz

* timm-layout ViTs (``--format timm``, or ``auto``; ``porting/timm_vit_weights.py``): ``dinov2_vit{s,b,l}14_reg``
  from timm's ``vit_*_patch14_reg4_dinov2`` (needs ``--format=timm``), ``retfound_vitl16`` (RETFound's
  ``{'model': ...}`` .pth), ``biomedclip_vitb16`` (open_clip's ``open_clip_pytorch_model.bin``, ``visual.trunk.*``;
  its OpenAI-CLIP input normalisation is folded into the patch embedding), ``dinov3_vit{s,b,l}16`` (timm's
  ``vit_*_patch16_dinov3`` state dict, or ``--format dinov3`` for the official facebookresearch/dinov3 .pth).
  ``.safetensors`` files are read without torch. ``--image_size`` must be a multiple of the patch size (16):

    python launch/convert_teacher.py --src RETFound_cfp_weights.pth --arch retfound_vitl16 \
        --image_size 224 --out teachers/retfound_vitl16_224.npz

* ConvNeXt (``--arch=convnext_{tiny,small}``): a torchvision or timm state dict (detected by its keys); the
  classifier is dropped, the feature is the pooled, LayerNorm-ed 768-d trunk output.

* The output is ``--out`` (npz) plus ``--out``.json with the sha256; both appear atomically or not
  at all.
"""

import os
import pickle
import sys

import numpy as np

# pylint: disable=wrong-import-position
from absl import app, flags

from foprokd_jax import image_norm
from foprokd_jax.models.convnext import CONVNEXT_CONFIGS
from foprokd_jax.models.vit import DINOV2_CONFIGS, PATCH_SIZE, VIT_ARCHS, VIT_OPTION_KEYS, vit_options
from foprokd_jax.porting import (
    artifact,
    convnext_weights,
    densenet_weights,
    dinov2_weights,
    resnet_weights,
    timm_vit_weights,
)
from foprokd_jax.porting.artifact import save_artifact, sha256_file

RESNET_FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048}
DENSENET_FEATURE_DIMS = {"densenet121": 1024}
CONVNEXT_FEATURE_DIMS = {arch: dims[-1] for arch, (_, dims) in CONVNEXT_CONFIGS.items()}
FEATURE_DIMS = {
    **RESNET_FEATURE_DIMS,
    **DENSENET_FEATURE_DIMS,
    **CONVNEXT_FEATURE_DIMS,
    **{arch: config[0] for arch, config in DINOV2_CONFIGS.items()},
    **{arch: options["embed_dim"] for arch, options in VIT_ARCHS.items()},
}
ALL_FORMATS = ("auto", *resnet_weights.FORMATS, *dinov2_weights.FORMATS, *timm_vit_weights.FORMATS)
# Input statistics a ViT teacher was trained with, when they are not ImageNet's: folded into its patch embedding
# at conversion. BiomedCLIP: open_clip_config.json 'preprocess_cfg' = OpenAI CLIP's mean / std.
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SOURCE_NORMALISATION = {"biomedclip_vitb16": ("openai_clip", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}
HF_WEIGHTS_NAME = "model.safetensors"

_SRC = flags.DEFINE_string("src", None, "PyTorch checkpoint (.pth / .pth.tar) to convert.")
_OUT = flags.DEFINE_string("out", None, "Output artifact path (.npz); a .npz.json sidecar is written beside it.")
_ARCH = flags.DEFINE_enum(
    "arch", "resnet50", sorted(FEATURE_DIMS), "Architecture of the checkpoint (ResNet, DenseNet or DINOv2 ViT)."
)
_FORMAT = flags.DEFINE_enum(
    "format",
    "auto",
    list(ALL_FORMATS),
    "Checkpoint layout. 'auto': for ResNets MoCo-v2 is detected by its module.encoder_q.* keys; for "
    "DINOv2 a .safetensors file or a folder means hf_dinov2, anything else the official .pth; for the other "
    "ViTs 'timm' or, with storage_tokens, 'dinov3'; 'timm' also reads timm's DINOv2-reg and ConvNeXt layouts.",
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    224,
    "ViTs only: input size the positional encoding is baked for (a multiple of the patch "
    f"size: {PATCH_SIZE} for DINOv2, 16 for the others); the Flax teacher then accepts exactly this size.",
)


class CheckpointError(RuntimeError):
    """The checkpoint cannot be converted; the message says why and names the file."""


def _load_checkpoint(src: str):
    """``torch.load`` with ``weights_only=True``, turning failures into readable CheckpointErrors."""
    import torch  # pylint: disable=import-outside-toplevel

    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch raises UnpicklingError both for disallowed globals and for non-pickle bytes.
        if "weights only load failed" in str(error).lower():
            raise CheckpointError(
                f"refusing to load {src}: unpickling it would need arbitrary Python code (it holds "
                "objects other than tensors and plain containers), which could execute anything. "
                "Only weights_only=True loading is allowed for safety. Re-save the state dict from a "
                "trusted environment with torch.save(model.state_dict(), ...).\n"
                f"torch said: {str(error).splitlines()[0]}"
            ) from error
        raise CheckpointError(f"{src} is not a readable torch checkpoint: {error}") from error
    except Exception as error:  # pylint: disable=broad-except
        # A truncated or foreign file surfaces as KeyError/RuntimeError/EOFError from torch internals.
        raise CheckpointError(f"{src} is not a readable torch checkpoint: {type(error).__name__}: {error}") from error


def _tensors_to_numpy(state_dict):
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch.Tensor
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    return out


def convert(
    src: str, out: str, arch: str = "resnet50", fmt: str = "auto", include_fc=None, image_size: int = 224, shape=None
) -> dict:
    """Convert ``src`` into the artifact ``out``; return the sidecar metadata.

    Args:
      src: checkpoint path (a HF model folder is accepted for 'hf_dinov2').
      out: artifact path (.npz); ``out + '.json'`` is the sidecar.
      arch: 'resnet18', 'resnet50', 'densenet121' or a DINOv2 name ('dinov2_vits14', ..., '_reg'
        variants).
      fmt: 'auto', 'moco_v2', 'torchvision', 'dinov2' (official .pth) or 'hf_dinov2'. DenseNets
        take 'auto' or 'torchvision'.
      include_fc: ResNets and DenseNets: keep the torchvision classifier (``fc`` / ``classifier``).
        None means: keep it for torchvision checkpoints that have one, never for MoCo-v2 (whose fc
        is the contrastive MLP).
      image_size: ViTs only: the input size the positional encoding is baked for.
      shape: timm-layout ViTs only, Python API only: overrides of the arch's VisionTransformer options (e.g.
        ``{'depth': 2}``) for reduced test models; the sidecar records the shape actually converted.

    Raises:
      FileNotFoundError if ``src`` does not exist; CheckpointError if it cannot be read safely;
      ValueError if its keys or shapes do not match ``arch``. Nothing is written at ``out`` then.
    """
    if arch not in FEATURE_DIMS:
        raise ValueError(f"unsupported arch {arch!r}; expected one of {sorted(FEATURE_DIMS)}")
    if fmt not in ALL_FORMATS:
        raise ValueError(f"unsupported format {fmt!r}; expected one of {list(ALL_FORMATS)}")
    if arch in VIT_ARCHS and (arch not in DINOV2_CONFIGS or fmt == "timm"):
        return _convert_timm_vit(src, out, arch, fmt, include_fc, image_size, shape)
    if arch in DINOV2_CONFIGS:
        return _convert_dinov2(src, out, arch, fmt, include_fc, image_size)
    if arch in CONVNEXT_CONFIGS:
        return _convert_convnext(src, out, arch, fmt, include_fc)
    if fmt in timm_vit_weights.FORMATS:
        raise ValueError(f"format {fmt!r} is for ViT and ConvNeXt archs, not {arch!r}")
    if arch in DENSENET_FEATURE_DIMS:
        return _convert_densenet(src, out, arch, fmt, include_fc)
    if fmt in dinov2_weights.FORMATS:
        raise ValueError(f"format {fmt!r} is for DINOv2 archs, not {arch!r}")
    checkpoint = _load_checkpoint(src)

    try:
        detected = resnet_weights.detect_format(checkpoint)
        state_dict = resnet_weights.unwrap_state_dict(checkpoint)
    except ValueError as error:
        raise ValueError(f"{src}: {error}") from error
    fmt = detected if fmt == "auto" else fmt

    if fmt == "moco_v2":
        state_dict = resnet_weights.extract_moco_v2_encoder_q(state_dict)
        if include_fc:
            raise ValueError("MoCo-v2 has no classifier to keep (its fc is the projection MLP)")
        include_fc = False
    else:
        state_dict = resnet_weights.strip_data_parallel_prefix(state_dict)
        if include_fc is None:
            include_fc = "fc.weight" in state_dict

    try:
        variables = resnet_weights.torchvision_resnet_to_flax(
            _tensors_to_numpy(state_dict), arch, include_fc=include_fc
        )
    except ValueError as error:
        raise ValueError(f"cannot convert {src} as a {fmt} {arch} checkpoint:\n{error}") from error

    num_classes = int(variables["params"]["fc"]["bias"].shape[0]) if include_fc else None
    meta = {
        "arch": arch,
        "feature_dim": FEATURE_DIMS[arch],
        "feature_key": "pre_logits",
        "num_classes": num_classes,
        "source": os.path.abspath(src),
        "source_format": fmt,
        "source_sha256": sha256_file(src),
        "num_params": artifact.count_parameters(variables),
    }
    return save_artifact(out, variables, meta)


def _convert_densenet(src, out, arch, fmt, include_fc):
    if fmt not in ("auto", "torchvision"):
        raise ValueError(f"format {fmt!r} is not for DenseNets; {arch} takes 'auto' or 'torchvision'")
    try:
        state_dict = resnet_weights.unwrap_state_dict(_load_checkpoint(src))
    except ValueError as error:
        raise ValueError(f"{src}: {error}") from error
    state_dict = resnet_weights.strip_data_parallel_prefix(_tensors_to_numpy(state_dict))
    legacy_keys = densenet_weights.is_legacy_state_dict(state_dict)
    try:
        variables = densenet_weights.torch_to_flax(state_dict, arch, include_classifier=include_fc)
    except ValueError as error:
        raise ValueError(f"cannot convert {src} as a torchvision {arch} checkpoint:\n{error}") from error

    classifier = variables["params"].get("classifier")
    meta = {
        "arch": arch,
        "family": densenet_weights.FAMILY,
        "feature_dim": DENSENET_FEATURE_DIMS[arch],
        "feature_key": densenet_weights.FEATURE_KEY,
        "num_classes": int(classifier["bias"].shape[0]) if classifier else None,
        **{
            key: (list(value) if isinstance(value, tuple) else value)
            for key, value in densenet_weights.ARCHS[arch].items()
        },
        "legacy_keys": legacy_keys,
        "source": os.path.abspath(src),
        "source_format": "torchvision",
        "source_sha256": sha256_file(src),
        "num_params": artifact.count_parameters(variables),
    }
    return save_artifact(out, variables, meta)


def _load_safetensors(src: str):
    """A HF ``.safetensors`` file (or the model folder holding one) as {name: numpy array}."""
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    path = os.path.join(src, HF_WEIGHTS_NAME) if os.path.isdir(src) else src
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Hugging Face weights not found: {path}")
    try:
        return load_file(path), path
    except Exception as error:  # pylint: disable=broad-except
        # safetensors raises its own SafetensorError (a plain Exception) for truncated/foreign files.
        raise CheckpointError(f"{path} is not a readable safetensors file: {type(error).__name__}: {error}") from error


def _strip_prefix(state_dict, prefix):
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def _convert_dinov2(src, out, arch, fmt, include_fc, image_size):
    if fmt not in ("auto", *dinov2_weights.FORMATS):
        raise ValueError(
            f"format {fmt!r} is not for DINOv2; DINOv2 archs take 'auto', "
            f"{', '.join(dinov2_weights.FORMATS)} or 'timm' (the register models)"
        )
    if include_fc:
        raise ValueError("DINOv2 backbones have no classifier to keep")
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise ValueError(
            f"--image_size={image_size} is not a positive multiple of the DINOv2 patch "
            f"size {PATCH_SIZE} (e.g. 224 = 16 x {PATCH_SIZE}, 518 = 37 x {PATCH_SIZE})"
        )
    if not os.path.exists(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if fmt == "auto":
        fmt = "hf_dinov2" if os.path.isdir(src) or src.endswith(".safetensors") else "dinov2"

    if fmt == "hf_dinov2":
        state_dict, weights_path = _load_safetensors(src)
        to_flax = dinov2_weights.hf_dinov2_to_flax
    else:
        try:
            state_dict = resnet_weights.unwrap_state_dict(_load_checkpoint(src))
        except ValueError as error:
            raise ValueError(f"{src}: {error}") from error
        state_dict = _strip_prefix(_tensors_to_numpy(state_dict), "module.")
        weights_path = src
        to_flax = dinov2_weights.official_dinov2_to_flax
    try:
        variables = to_flax(state_dict, arch, image_size)
    except ValueError as error:
        raise ValueError(f"cannot convert {weights_path} as a {fmt} {arch} checkpoint:\n{error}") from error

    embed_dim, depth, num_heads, registers = DINOV2_CONFIGS[arch]
    meta = {
        "arch": arch,
        "family": "vit",
        "feature_dim": embed_dim,
        "feature_key": "pre_logits",
        "num_classes": None,
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "num_register_tokens": registers,
        "depth": depth,
        "num_heads": num_heads,
        "pos_embed_interpolation": dinov2_weights.interpolation_settings(arch),
        "source": os.path.abspath(weights_path),
        "source_format": fmt,
        "source_sha256": sha256_file(weights_path),
        "num_params": artifact.count_parameters(variables),
    }
    return save_artifact(out, variables, meta)


def _read_weights(src: str):
    """(numpy state dict, weights file) of a .safetensors file / HF folder (no torch) or a torch checkpoint."""
    if not os.path.exists(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if os.path.isdir(src) or src.endswith(".safetensors"):
        return _load_safetensors(src)
    return _load_checkpoint(src), src


def _convert_timm_vit(src, out, arch, fmt, include_fc, image_size, shape):
    if fmt not in ("auto", *timm_vit_weights.FORMATS):
        raise ValueError(f"format {fmt!r} is not for {arch}; it takes 'auto', 'timm' or 'dinov3'")
    if include_fc:
        raise ValueError(f"{arch} teachers have no classifier to keep")
    options = {**vit_options(arch), **(shape or {})}
    patch = int(options["patch_size"])
    if image_size <= 0 or image_size % patch:
        raise ValueError(
            f"--image_size={image_size} is not a positive multiple of the {arch} patch size {patch} "
            f"(e.g. 224 = 14 x 16)"
        )
    checkpoint, weights_path = _read_weights(src)
    try:
        state_dict, container = timm_vit_weights.unwrap(checkpoint)
    except ValueError as error:
        raise ValueError(f"{weights_path}: {error}") from error
    state_dict = _tensors_to_numpy(state_dict)
    layout = timm_vit_weights.detect_layout(state_dict) if fmt == "auto" else fmt
    fold, normalisation = None, None
    if arch in SOURCE_NORMALISATION:
        normalisation, mean, std = SOURCE_NORMALISATION[arch]
        fold = (mean, std, image_norm.IMAGENET_MEAN, image_norm.IMAGENET_STD)
    try:
        variables, notes = timm_vit_weights.timm_vit_to_flax(state_dict, options, image_size, arch, layout, fold)
    except ValueError as error:
        raise ValueError(f"cannot convert {weights_path} as a {layout} {arch} checkpoint:\n{error}") from error
    meta = {
        "arch": arch,
        "family": "vit",
        "feature_dim": int(options["embed_dim"]),
        "feature_key": "pre_logits",
        "num_classes": None,
        "image_size": image_size,
        **{key: options[key] for key in VIT_OPTION_KEYS},
        **notes,
        # The artifact takes the pipeline's ImageNet-normalised images; a teacher trained on other statistics
        # has the change folded into its patch embedding.
        "input_normalisation": "imagenet",
        "input_normalisation_folded_from": normalisation,
        "source_container": container,
        "source": os.path.abspath(weights_path),
        "source_format": layout,
        "source_sha256": sha256_file(weights_path),
        "num_params": artifact.count_parameters(variables),
    }
    return save_artifact(out, variables, meta)


def _convert_convnext(src, out, arch, fmt, include_fc):
    if fmt not in ("auto", *convnext_weights.FORMATS):
        raise ValueError(f"format {fmt!r} is not for ConvNeXt; {arch} takes 'auto', 'torchvision' or 'timm'")
    if include_fc:
        raise ValueError("a ConvNeXt teacher artifact never keeps the classifier (its feature is the pooled trunk)")
    checkpoint, weights_path = _read_weights(src)
    try:
        state_dict = resnet_weights.strip_data_parallel_prefix(
            _tensors_to_numpy(resnet_weights.unwrap_state_dict(checkpoint))
        )
        variables, fmt = convnext_weights.convnext_to_flax(state_dict, arch, fmt)
    except ValueError as error:
        raise ValueError(f"cannot convert {weights_path} as a {arch} checkpoint:\n{error}") from error
    depths, dims = CONVNEXT_CONFIGS[arch]
    meta = {
        "arch": arch,
        "family": convnext_weights.FAMILY,
        "feature_dim": CONVNEXT_FEATURE_DIMS[arch],
        "feature_key": "pre_logits",
        "num_classes": None,
        "depths": list(depths),
        "dims": list(dims),
        "source": os.path.abspath(weights_path),
        "source_format": fmt,
        "source_sha256": sha256_file(weights_path),
        "num_params": artifact.count_parameters(variables),
    }
    return save_artifact(out, variables, meta)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    if not _SRC.value or not _OUT.value:
        raise app.UsageError("--src and --out are required")
    try:
        meta = convert(_SRC.value, _OUT.value, _ARCH.value, _FORMAT.value, image_size=_IMAGE_SIZE.value)
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        print(f"convert_teacher: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.abspath(_OUT.value)} (+ .json sidecar)")
    print(
        f"  arch={meta['arch']} format={meta['source_format']} feature_dim={meta['feature_dim']}"
        + (f" image_size={meta['image_size']}" if "image_size" in meta else "")
    )
    print(f"  parameters={meta['num_params']:,}")
    print(f"  sha256={meta['sha256']}")
    return 0


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/convert_teacher.py`."""
    app.run(main)


if __name__ == "__main__":
    run()
