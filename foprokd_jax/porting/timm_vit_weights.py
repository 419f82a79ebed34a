"""timm-style ViT state dicts -> Flax variables for ``models/vit.py``'s ``VisionTransformer``. Pure numpy.

One importer for every ViT teacher whose weights come in (a variant of) the timm layout
(huggingface/pytorch-image-models ``timm/models/vision_transformer.py`` and ``eva.py``):

  timm ViT      cls_token  reg_token  pos_embed  patch_embed.proj.*  norm.* | fc_norm.*
                blocks.{i}.{norm1,norm2}.*  attn.qkv.{weight,bias} (fused q|k|v)  attn.proj.*
                ls{1,2}.gamma  mlp.fc{1,2}.*                      (DINOv2-reg, RETFound, BiomedCLIP)
  timm Eva      ... attn.qkv.weight  attn.q_bias  attn.v_bias (k has no bias)  gamma_1 / gamma_2
                                                                   (timm's DINOv3 port, vit_*_patch16_dinov3)
  DINOv3        storage_tokens (= registers)  attn.qkv.bias  attn.qkv.bias_mask  ls{1,2}.gamma
                rope_embed.periods  mask_token                     (facebookresearch/dinov3 .pth)

Containers are unwrapped first (``unwrap``): ``{'model': ...}`` (RETFound / MAE), ``{'state_dict': ...}``,
DataParallel ``module.`` and open_clip's ``visual.trunk.`` (BiomedCLIP's ``open_clip_pytorch_model.bin``;
the text tower and ``visual.head.proj`` are dropped). Heads (``head.*``), MAE decoders (``decoder_*``) and
mask tokens are not part of a teacher and are skipped.

* Fused qkv is split into query/key/value; a source with no q/k/v bias gets zeros (timm's DINOv3 port without
  ``_qkvb``; the k bias of Eva attention). DINOv3's ``bias_mask`` is applied, as its ``LinearKMaskedBias`` does.
* A position embedding without a CLS entry (timm ``no_embed_class=True``, e.g. the DINOv2-reg port) gets a zero
  CLS row; the checkpoint grid is resized to ``image_size / patch`` with timm's ``resample_abs_pos_embed``
  (bicubic, ``antialias=True``, ``size=grid``), which is also the official DINOv2-reg rule
  (``porting/dinov2_weights.resize_pos_embed``, checked against torch there).
* RoPE periods: a DINOv3 checkpoint's own ``rope_embed.periods`` are kept (the official model loads them with
  the weights); a timm state dict has none (timm recomputes them in float32), so the float32 ones are used.
* Mean-pooled models (RETFound): ``fc_norm`` is taken from the checkpoint; an MAE *pre-training* checkpoint has
  only the encoder's final ``norm``, which then becomes ``fc_norm`` (what timm does for MAE weights).
* ``fold_normalisation``: a teacher trained on other input statistics (BiomedCLIP: OpenAI-CLIP mean/std) gets
  the change of normalisation folded into the patch embedding, exactly (it is affine and the patch conv has no
  padding), so the artifact takes the pipeline's ImageNet-normalised images.
"""

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models import vit
from foprokd_jax.porting.dinov2_weights import resize_pos_embed

FORMATS = ("timm", "dinov3")
_MAX_LISTED = 60
_WRAPPERS = ("model", "state_dict", "model_ema", "module")
_SKIPPED = re.compile(r"^(head\.|decoder_|mask_token$|local_cls_norm\.|projectors\.)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_NORMS = {"weight": "scale", "bias": "bias"}
_LINEARS = {"attn.proj": ("attn", "proj"), "mlp.fc1": ("mlp", "fc1"), "mlp.fc2": ("mlp", "fc2")}
_LAYERSCALE = {"ls1.gamma": "ls1", "ls2.gamma": "ls2", "gamma_1": "ls1", "gamma_2": "ls2"}


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(hasattr(v, "shape") for v in obj.values())


def unwrap(checkpoint: Any) -> Tuple[Dict[str, Any], str]:
    """(state dict, container description) of a timm / MAE / open_clip / DINOv3 checkpoint object."""
    obj, container = checkpoint, []
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ValueError(
                "unrecognised checkpoint: no tensor state dict at the top level or under "
                f"{_WRAPPERS} (top-level keys: {sorted(map(str, obj))[:10]})"
            )
        container.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"unrecognised checkpoint of type {type(obj).__name__}")
    state = dict(obj)
    for prefix in ("module.",):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            container.append(prefix.rstrip("."))
    for prefix in ("visual.trunk.", "module.visual.trunk."):
        if any(k.startswith(prefix) for k in state):  # open_clip: keep the timm trunk of the vision tower
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            container.append(prefix.rstrip("."))
            break
    return state, "/".join(container) or "state dict"


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """'dinov3' for the official DINOv3 layout (``storage_tokens``), else 'timm'."""
    return "dinov3" if "storage_tokens" in state_dict else "timm"


class _ShapeError(ValueError):
    pass


def _linear(key, value):
    if np.ndim(value) != 2:
        raise _ShapeError(f"{key}: expected a 2-D weight, got shape {np.shape(value)}")
    return np.asarray(value).T  # torch (out, in) -> flax (in, out)


def _split3(key, value):
    if value.shape[0] % 3:
        raise _ShapeError(f"{key}: fused qkv of shape {value.shape} is not 3 x D rows")
    return np.split(np.asarray(value), 3, axis=0)


def _block_entries(prefix, rest, value, key, bias_masks):
    """Flax (path, array) entries of one block key, or None if the key is not a block parameter."""
    if rest in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
        module, field = rest.split(".")
        return [(prefix + (module, _NORMS[field]), value)]
    if rest == "attn.qkv.weight":
        return [
            (prefix + ("attn", name, "kernel"), _linear(key, part))
            for name, part in zip(("query", "key", "value"), _split3(key, value))
        ]
    if rest == "attn.qkv.bias":
        mask = bias_masks.get(key + "_mask")
        value = np.asarray(value) * (1.0 if mask is None else np.asarray(mask, np.float32))
        return [
            (prefix + ("attn", name, "bias"), part)
            for name, part in zip(("query", "key", "value"), _split3(key, value))
        ]
    if rest in ("attn.q_bias", "attn.v_bias"):
        return [(prefix + ("attn", "query" if rest == "attn.q_bias" else "value", "bias"), value)]
    if rest in _LAYERSCALE:
        return [(prefix + (_LAYERSCALE[rest], "gamma"), value)]
    module, _, field = rest.rpartition(".")
    if module in _LINEARS and field in ("weight", "bias"):
        leaf = "kernel" if field == "weight" else "bias"
        return [(prefix + _LINEARS[module] + (leaf,), _linear(key, value) if leaf == "kernel" else value)]
    return None


def _top_entries(key, value):
    if key in ("cls_token", "pos_embed"):
        return [((key,), value)]
    if key in ("reg_token", "register_tokens", "storage_tokens"):
        return [(("register_tokens",), value)]
    if key in ("rope_embed.periods", "rope.periods"):
        return [(("rope_periods",), value)]
    if key == "patch_embed.proj.weight":
        if np.ndim(value) != 4:
            raise _ShapeError(f"{key}: expected a 4-D conv weight, got shape {np.shape(value)}")
        return [(("patch_embed", "kernel"), np.transpose(value, (2, 3, 1, 0)))]  # OIHW -> HWIO
    if key == "patch_embed.proj.bias":
        return [(("patch_embed", "bias"), value)]
    module, _, field = key.rpartition(".")
    if module in ("norm", "fc_norm") and field in _NORMS:
        return [((module, _NORMS[field]), value)]
    return None


def expected_param_shapes(options: Mapping[str, Any], image_size: int) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Flattened {path: shape} of the Flax model's params, from ``jax.eval_shape`` (no compute)."""
    model = vit.VisionTransformer(image_size=image_size, **options)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    )
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _listing(title, items):
    items = sorted(items)
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def fold_input_normalisation(
    kernel: np.ndarray,
    bias: np.ndarray,
    source_mean: Sequence[float],
    source_std: Sequence[float],
    target_mean: Sequence[float],
    target_std: Sequence[float],
) -> Tuple[np.ndarray, np.ndarray]:
    """Patch-embed (HWIO kernel, bias) that gives on ``target``-normalised images what the original gives on
    ``source``-normalised ones: x_src = x_tgt * (std_t / std_s) + (mean_t - mean_s) / std_s per channel."""
    scale = np.asarray(target_std, np.float64) / np.asarray(source_std, np.float64)
    shift = (np.asarray(target_mean, np.float64) - np.asarray(source_mean, np.float64)) / np.asarray(
        source_std, np.float64
    )
    kernel64 = np.asarray(kernel, np.float64)
    new_bias = np.asarray(bias, np.float64) + np.einsum("hwco,c->o", kernel64, shift)
    return (kernel64 * scale[None, None, :, None]).astype(np.float32), new_bias.astype(np.float32)


def timm_vit_to_flax(
    state_dict: Mapping[str, Any],
    options: Mapping[str, Any],
    image_size: int,
    arch: str = "vit",
    layout: Optional[str] = None,
    fold_normalisation: Optional[Tuple[Sequence[float], ...]] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A timm-layout (or official DINOv3) state dict -> (``{'params': ...}``, notes for the sidecar).

    ``options``: the VisionTransformer options (``vit.vit_options(arch)``, or reduced shapes in tests).
    ``fold_normalisation``: (source_mean, source_std, target_mean, target_std), see the module docstring.
    Every unexpected key, missing parameter and shape mismatch is listed in one ValueError.
    """
    patch = int(options["patch_size"])
    if image_size <= 0 or image_size % patch:
        raise ValueError(f"image_size {image_size} must be a positive multiple of the patch size {patch}")
    layout = layout or detect_layout(state_dict)
    expected = expected_param_shapes(options, image_size)
    bias_masks = {k: v for k, v in state_dict.items() if k.endswith("qkv.bias_mask")}

    converted, sources, unexpected, bad_shapes = {}, {}, [], []
    for key, value in state_dict.items():
        if _SKIPPED.match(key) or key in bias_masks or key.endswith(".k_bias"):
            continue
        value = np.asarray(value)
        try:
            match = _BLOCK.match(key)
            entries = (
                _block_entries((f"blocks_{int(match.group(1))}",), match.group(2), value, key, bias_masks)
                if match
                else _top_entries(key, value)
            )
        except _ShapeError as error:
            bad_shapes.append(str(error))
            continue
        if entries is None:
            unexpected.append(key)
            continue
        for path, array in entries:
            converted[path] = np.asarray(array, np.float32)
            sources[path] = key

    notes: Dict[str, Any] = {"source_layout": layout}
    filled = []
    for path, shape in expected.items():  # q/k/v biases a source without them implies (Eva's k), as zeros
        if (
            path[1:2] == ("attn",)
            and path[2:] in (("query", "bias"), ("key", "bias"), ("value", "bias"))
            and path not in converted
        ):
            converted[path], sources[path] = np.zeros(shape, np.float32), "(no bias in the source: zeros)"
            filled.append(path[2])
    if filled:
        notes["zero_attention_biases"] = sorted(set(filled))
    if ("fc_norm", "scale") in expected and ("fc_norm", "scale") not in converted:
        if ("norm", "scale") in converted:  # MAE pre-training checkpoint: its final norm becomes fc_norm
            for leaf in ("scale", "bias"):
                if ("norm", leaf) in converted:
                    converted[("fc_norm", leaf)] = converted.pop(("norm", leaf))
                    sources[("fc_norm", leaf)] = sources.pop(("norm", leaf))
            notes["fc_norm_from"] = "norm"
    elif ("fc_norm", "scale") in expected:
        notes["fc_norm_from"] = "fc_norm"
    if ("rope_periods",) in expected:
        notes["rope_periods"] = "checkpoint" if ("rope_periods",) in converted else "float32 (computed)"
        if ("rope_periods",) not in converted:
            head_dim = int(options["embed_dim"]) // int(options["num_heads"])
            converted[("rope_periods",)] = vit.rope_periods(head_dim, float(options["rope_base"]))
            sources[("rope_periods",)] = "(computed)"

    pos_path = ("pos_embed",)
    if pos_path in converted and pos_path in expected:
        pos = converted[pos_path]
        tokens = pos.shape[1] if pos.ndim == 3 else 0
        side = int(np.sqrt(tokens))
        if pos.ndim == 3 and side * side == tokens:  # no CLS entry (timm no_embed_class): CLS gets a zero row
            pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
            notes["pos_embed_cls_entry"] = "zero (source has none)"
        try:
            notes["pos_embed_source_grid"] = int(np.sqrt(pos.shape[1] - 1))
            converted[pos_path] = resize_pos_embed(
                pos, image_size // patch, interpolate_offset=0.0, interpolate_antialias=True
            )
        except ValueError as error:
            bad_shapes.append(f"{sources[pos_path]}: {error}")
            del converted[pos_path]

    if fold_normalisation is not None and ("patch_embed", "kernel") in converted:
        converted[("patch_embed", "kernel")], converted[("patch_embed", "bias")] = fold_input_normalisation(
            converted[("patch_embed", "kernel")], converted[("patch_embed", "bias")], *fold_normalisation
        )

    missing = [path for path in expected if path not in converted]
    unexpected += [f"{sources[path]} (-> {'/'.join(path)})" for path in converted if path not in expected]
    for path, shape in expected.items():
        if path in converted and converted[path].shape != shape:
            bad_shapes.append(
                f"{sources[path]} -> params/{'/'.join(path)}: checkpoint gives "
                f"{converted[path].shape}, {arch} needs {shape}"
            )
    if missing or unexpected or bad_shapes:
        parts = [f"the {layout} state dict does not match {arch} (image_size {image_size}):"]
        if unexpected:
            parts.append(_listing("unexpected checkpoint keys", unexpected))
        if missing:
            parts.append(_listing("missing from the checkpoint", ["params/" + "/".join(p) for p in missing]))
        if bad_shapes:
            parts.append(_listing("shape mismatches", bad_shapes))
        raise ValueError("\n".join(parts))
    converted = {path: value for path, value in converted.items() if path in expected}
    return {"params": flax.traverse_util.unflatten_dict(converted)}, notes
