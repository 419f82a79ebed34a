"""DINOv2 state dicts (official .pth or Hugging Face safetensors) -> Flax variables for ``models/vit.py``.

Pure numpy; the caller turns tensors into numpy arrays (``launch/convert_teacher.py``).

Official layout (facebookresearch/dinov2, ``dinov2_vit{s,b,l}14[_reg4]_pretrain.pth``)::

  cls_token (1,1,D)  pos_embed (1,1+37*37,D)  register_tokens (1,4,D)  mask_token (ignored)
  patch_embed.proj.{weight,bias}   norm.{weight,bias}
  blocks.{i}.{norm1,norm2}.*  attn.qkv.* (fused q|k|v)  attn.proj.*  ls{1,2}.gamma  mlp.fc{1,2}.*
  (with block_chunks > 0 the blocks are named blocks.{chunk}.{i}.*, i still the global index)

Hugging Face layout (transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``)::

  embeddings.{cls_token,position_embeddings,register_tokens,mask_token (ignored)}
  embeddings.patch_embeddings.projection.*   layernorm.*
  encoder.layer.{i}.{norm1,norm2}.*  attention.attention.{query,key,value}.*
  attention.output.dense.*  layer_scale{1,2}.lambda1  mlp.fc{1,2}.*

The positional embedding is resized from the checkpoint grid to ``image_size / 14`` exactly as the
official ``DinoVisionTransformer.interpolate_pos_encoding`` does at run time: ``F.interpolate(...,
mode='bicubic')`` with ``scale_factor=(g + 0.1) / M`` and no antialiasing for the original models
(interpolate_offset=0.1), and ``size=g`` with ``antialias=True`` for the register models (hub sets
interpolate_offset=0.0, interpolate_antialias=True). Both torch kernels are re-implemented below as
separable resampling matrices; tests check them against torch.
"""

import math
import re
from typing import Any, Dict, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.models.vit import DINOV2_CONFIGS, PATCH_SIZE, dinov2_vit

FORMATS = ("dinov2", "hf_dinov2")
_MAX_LISTED = 60


def interpolation_settings(arch: str) -> Dict[str, Any]:
    """(offset, antialias) that the official hub constructor passes for ``arch``."""
    if arch.endswith("_reg"):
        return {"interpolate_offset": 0.0, "interpolate_antialias": True}
    return {"interpolate_offset": 0.1, "interpolate_antialias": False}


# ----------------------------------------------------------------------------- pos-embed resize
_F32 = np.float32


def _torch_cubic_coefficients(frac):
    """torch ``get_cubic_upsample_coefficients`` (A=-0.75), evaluated in float32 in torch's order.

    The far-branch polynomial cancels heavily near |x| = 2, so float32 rounding moves the weights by
    ~1e-6; evaluating it exactly like torch keeps the baked pos-embed within float rounding of torch's.
    """
    a, one = _F32(-0.75), _F32(1.0)

    def near(x):
        return ((a + _F32(2)) * x - (a + _F32(3))) * x * x + one

    def far(x):
        return ((a * x - _F32(5) * a) * x + _F32(8) * a) * x - _F32(4) * a

    frac = _F32(frac)
    return [far(frac + one), near(frac), near(one - frac), far((one - frac) + one)]


def _torch_aa_cubic(x):
    """torch ``aa_filter`` for bicubic antialiasing (Keys a=-0.5, the PIL convention), float32."""
    a, x = _F32(-0.5), abs(_F32(x))
    if x < 1:
        return ((a + _F32(2)) * x - (a + _F32(3))) * x * x + _F32(1)
    if x < 2:
        return (((x - _F32(5)) * x + _F32(8)) * x - _F32(4)) * a
    return _F32(0)


def _bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """torch ``upsample_bicubic2d`` (align_corners=False) along one axis as an (out, in) matrix.

    ``scale`` is torch's source step: 1 / scale_factor when one was passed, else in / out. Source
    coordinates are computed in float32, as torch's CPU kernel does for float inputs; taps beyond the
    border re-use the edge sample (torch's ``upsample_get_value_bounded``).
    """
    step = _F32(scale)
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        src = _F32(float(step) * (i + 0.5) - 0.5)  # one rounding: torch's kernel compiles to an fma
        base = int(np.floor(src))
        for tap, weight in enumerate(_torch_cubic_coefficients(src - _F32(base))):
            matrix[i, min(max(base - 1 + tap, 0), in_size - 1)] += float(weight)
    return matrix


def _antialiased_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """torch ``_upsample_bicubic2d_aa`` (PIL-style, a=-0.5, support widened by the scale)."""
    scale = _F32(scale)
    support = _F32(2) * scale if scale >= 1 else _F32(2)
    inv_scale = _F32(1) / scale if scale >= 1 else _F32(1)
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (_F32(i) + _F32(0.5))
        lo = max(int(center - support + _F32(0.5)), 0)  # int() truncates toward zero, like torch
        hi = min(int(center + support + _F32(0.5)), in_size)
        weights = [_torch_aa_cubic((_F32(j) - center + _F32(0.5)) * inv_scale) for j in range(lo, hi)]
        total = _F32(0)
        for weight in weights:
            total += weight
        if total != 0:
            weights = [weight / total for weight in weights]
        matrix[i, lo:hi] = [float(weight) for weight in weights]
    return matrix


def resize_pos_embed(
    pos_embed: np.ndarray, grid: int, interpolate_offset: float = 0.1, interpolate_antialias: bool = False
) -> np.ndarray:
    """Official ``interpolate_pos_encoding`` for a square ``grid``: (1, 1+M*M, D) -> (1, 1+grid^2, D)."""
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, 1 + M*M, D), got {pos_embed.shape}")
    num_patches = pos_embed.shape[1] - 1
    source_grid = int(math.isqrt(num_patches))
    if source_grid * source_grid != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid")
    if source_grid == grid:
        return np.asarray(pos_embed, np.float32)  # the official code skips interpolation here

    if interpolate_offset:
        # torch gets scale_factor=(grid + offset) / M, derives the output size as floor(M * s) and
        # maps coordinates with 1 / s, not M / grid: the offset shifts every sample slightly.
        scale_factor = float(grid + interpolate_offset) / source_grid
        out_size = int(math.floor(source_grid * scale_factor))
        step = 1.0 / scale_factor
    else:
        out_size, step = grid, source_grid / grid
    if out_size != grid:
        raise ValueError(f"interpolating a {source_grid}-grid pos_embed gives {out_size}, not {grid}")
    build = _antialiased_bicubic_matrix if interpolate_antialias else _bicubic_matrix
    matrix = build(source_grid, grid, step)

    patches = np.asarray(pos_embed[0, 1:], np.float64).reshape(source_grid, source_grid, -1)
    resized = np.einsum("ih,jw,hwd->ijd", matrix, matrix, patches)
    resized = resized.reshape(1, grid * grid, -1)
    return np.concatenate([pos_embed[:, :1].astype(np.float32), resized.astype(np.float32)], 1)


# ----------------------------------------------------------------------------- key mapping
def _linear(weight):
    return np.asarray(weight).T  # torch (out, in) -> flax (in, out)


def _check_ndim(key, value, ndim):
    if np.ndim(value) != ndim:
        raise _ShapeError(f"{key}: expected a {ndim}-D array, got shape {np.shape(value)}")


class _ShapeError(ValueError):
    pass


def _fused_qkv_entries(prefix: Tuple[str, ...], rest: str, value, key):
    """Official fused ``attn.qkv.*`` (rows ordered q|k|v) -> query/key/value entries, else None."""
    if rest == "attn.qkv.weight" or rest == "attn.qkv.bias":
        leaf = "kernel" if rest.endswith("weight") else "bias"
        _check_ndim(key, value, 2 if leaf == "kernel" else 1)
        if value.shape[0] % 3:
            raise _ShapeError(f"{key}: fused qkv of shape {value.shape} is not 3 x D rows")
        parts = np.split(np.asarray(value), 3, axis=0)
        return [
            (prefix + ("attn", name, leaf), _linear(part) if leaf == "kernel" else part)
            for name, part in zip(("query", "key", "value"), parts)
        ]
    return None


_NORM_LEAVES = {"weight": "scale", "bias": "bias"}


def _common_block_entry(prefix, module_path, field, value, key):
    """norm / linear / layer-scale keys shared by both layouts once renamed to flax names."""
    if module_path in ("norm1", "norm2") and field in _NORM_LEAVES:
        return [(prefix + (module_path, _NORM_LEAVES[field]), value)]
    if module_path in ("attn.proj", "mlp.fc1", "mlp.fc2", "attn.query", "attn.key", "attn.value"):
        scope = tuple(module_path.split("."))
        if field == "weight":
            _check_ndim(key, value, 2)
            return [(prefix + scope + ("kernel",), _linear(value))]
        if field == "bias":
            return [(prefix + scope + ("bias",), value)]
    if module_path in ("ls1", "ls2") and field == "gamma":
        return [(prefix + (module_path, "gamma"), value)]
    return None


_OFFICIAL_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "attention.attention.query": "attn.query",
    "attention.attention.key": "attn.key",
    "attention.attention.value": "attn.value",
    "attention.output.dense": "attn.proj",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}


def _official_entries(key, value):
    top = {
        "cls_token": ("cls_token",),
        "pos_embed": ("pos_embed",),
        "register_tokens": ("register_tokens",),
        "patch_embed.proj.bias": ("patch_embed", "bias"),
        "norm.weight": ("norm", "scale"),
        "norm.bias": ("norm", "bias"),
    }
    if key in top:
        return [(top[key], value)]
    if key == "patch_embed.proj.weight":
        _check_ndim(key, value, 4)
        return [(("patch_embed", "kernel"), np.transpose(value, (2, 3, 1, 0)))]  # OIHW -> HWIO
    match = _OFFICIAL_BLOCK.match(key)
    if not match:
        return None
    index, rest = match.groups()
    prefix = (f"blocks_{int(index)}",)
    fused = _fused_qkv_entries(prefix, rest, value, key)
    if fused is not None:
        return fused
    module_path, _, field = rest.rpartition(".")
    return _common_block_entry(prefix, module_path, field, value, key)


def _hf_entries(key, value):
    top = {
        "embeddings.cls_token": ("cls_token",),
        "embeddings.position_embeddings": ("pos_embed",),
        "embeddings.register_tokens": ("register_tokens",),
        "embeddings.patch_embeddings.projection.bias": ("patch_embed", "bias"),
        "layernorm.weight": ("norm", "scale"),
        "layernorm.bias": ("norm", "bias"),
    }
    if key in top:
        return [(top[key], value)]
    if key == "embeddings.patch_embeddings.projection.weight":
        _check_ndim(key, value, 4)
        return [(("patch_embed", "kernel"), np.transpose(value, (2, 3, 1, 0)))]
    match = _HF_BLOCK.match(key)
    if not match:
        return None
    index, rest = match.groups()
    module_path, _, field = rest.rpartition(".")
    module_path = _HF_RENAMES.get(module_path, module_path)
    if module_path in ("ls1", "ls2") and field == "lambda1":
        field = "gamma"
    return _common_block_entry((f"blocks_{int(index)}",), module_path, field, value, key)


# ----------------------------------------------------------------------------- conversion
def expected_param_shapes(arch: str, image_size: int) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Flattened {path: shape} of the Flax model's params, from ``jax.eval_shape`` (no compute)."""
    model = dinov2_vit(arch, image_size=image_size)
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


def _convert(
    state_dict: Mapping[str, Any], arch: str, image_size: int, entries_fn, ignored: Tuple[str, ...], layout: str
) -> Dict[str, Any]:
    if arch not in DINOV2_CONFIGS:
        raise ValueError(f"unknown DINOv2 arch {arch!r}; expected one of {sorted(DINOV2_CONFIGS)}")
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise ValueError(f"image_size {image_size} must be a positive multiple of {PATCH_SIZE}")
    expected = expected_param_shapes(arch, image_size)

    converted, unexpected, bad_shapes, sources = {}, [], [], {}
    for key, value in state_dict.items():
        if key in ignored or key.startswith("classifier."):
            continue
        try:
            entries = entries_fn(key, np.asarray(value))
        except _ShapeError as error:
            bad_shapes.append(str(error))
            continue
        if entries is None:
            unexpected.append(key)
            continue
        for path, array in entries:
            converted[path] = np.asarray(array, np.float32)
            sources[path] = key

    grid = image_size // PATCH_SIZE
    pos_path = ("pos_embed",)
    if pos_path in converted:
        try:
            converted[pos_path] = resize_pos_embed(converted[pos_path], grid, **interpolation_settings(arch))
        except ValueError as error:
            bad_shapes.append(f"{sources[pos_path]}: {error}")
            del converted[pos_path]

    missing = [path for path in expected if path not in converted]
    extra = [path for path in converted if path not in expected]
    unexpected += [f"{sources[path]} (-> {'/'.join(path)})" for path in extra]
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
            parts.append(_listing("missing from the checkpoint", ["params/" + "/".join(path) for path in missing]))
        if bad_shapes:
            parts.append(_listing("shape mismatches", bad_shapes))
        raise ValueError("\n".join(parts))
    return {"params": flax.traverse_util.unflatten_dict(converted)}


def official_dinov2_to_flax(state_dict: Mapping[str, Any], arch: str, image_size: int = 224) -> Dict[str, Any]:
    """Official facebookresearch/dinov2 ``state_dict`` -> ``{'params': ...}`` for ``dinov2_vit``."""
    return _convert(state_dict, arch, image_size, _official_entries, ("mask_token",), "official DINOv2")


def hf_dinov2_to_flax(state_dict: Mapping[str, Any], arch: str, image_size: int = 224) -> Dict[str, Any]:
    """Hugging Face ``Dinov2Model`` safetensors ``state_dict`` -> ``{'params': ...}``.

    Keys may carry the ``dinov2.`` prefix of task models (e.g. ``Dinov2ForImageClassification``);
    their ``classifier.*`` head is dropped.
    """
    if state_dict and all(key.startswith("dinov2.") or key.startswith("classifier.") for key in state_dict):
        state_dict = {
            key[len("dinov2.") :] if key.startswith("dinov2.") else key: value for key, value in state_dict.items()
        }
    return _convert(state_dict, arch, image_size, _hf_entries, ("embeddings.mask_token",), "Hugging Face DINOv2")
