"""Vision Transformers in Flax Linen: DINOv2 (+registers), timm-layout ViTs (RETFound, BiomedCLIP) and DINOv3.

One module, ``VisionTransformer``, covers every ViT teacher; its fields are the options in which they differ.
With its defaults it is DINOv2 exactly (``DinoV2ViT`` is the same class), so DINOv2 artifacts keep their graph.

References:
  * Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision", and Darcet et al. 2024,
    "Vision Transformers Need Registers"; facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``.
  * Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"; the timm layout (huggingface/pytorch-image-models
    ``timm/models/vision_transformer.py``), used by RETFound (Zhou et al., Nature 2023, MAE ViT-L/16,
    github.com/rmaphoh/RETFound_MAE) and BiomedCLIP's vision tower (Zhang et al. 2023, arXiv:2303.00915,
    open_clip's timm ``vit_base_patch16_224`` trunk).
  * Simeoni et al. 2025, "DINOv3", arXiv:2508.10104; facebookresearch/dinov3 ``dinov3/layers/rope_position_encoding.py``
    and timm's port ``timm/models/eva.py`` (``vit_*_patch16_dinov3``) + ``timm/layers/pos_embed_sincos.py``
    (``RotaryEmbeddingDinoV3``), which is the parity reference (tests/test_vit_teachers.py).

Forward pass (eval mode, no dropout / drop-path):

  p x p conv (VALID) -> flatten -> [CLS] + patches -> + pos_embed        ('learned'; CLS has an entry, 0 when
                                                                           the source layout gives it none)
  -> insert the register tokens right after CLS (they get no positional embedding)
  -> depth x pre-norm block:  x += ls1 * attn(norm1(x));  x += ls2 * mlp(norm2(x))
       ('rope': no pos_embed; q and k of the patch tokens are rotated in every attention instead)
  -> pooling 'cls':  final LayerNorm -> CLS token is 'pre_logits' (DINOv2, DINOv3, BiomedCLIP)
     pooling 'mean': mean of the patch tokens -> fc_norm is 'pre_logits' (RETFound; timm global_pool='avg')

* GELU is the exact (erf) one, as torch.nn.GELU's default. LayerNorm epsilon is a field (1e-6 DINOv2/timm,
  1e-5 DINOv3). ``layerscale_init=None`` means no LayerScale (plain timm ViTs).
* The learned positional embedding is stored for this model's own grid (``image_size / patch_size`` squared);
  the resize from the checkpoint's grid happens once at conversion (``porting/``), so the model accepts exactly
  ``image_size`` inputs.
* Attention logits and softmax run in float32 even with a bf16 ``dtype``, to keep the teacher's features
  stable under mixed precision.

Parameter names mirror the official DINOv2 ones (``patch_embed``, ``cls_token``, ``pos_embed``,
``register_tokens``, ``blocks_{i}/{norm1,attn,ls1,norm2,mlp,ls2}``, ``norm``, ``fc_norm``); fused ``qkv`` weights
are split into ``query/key/value`` at conversion (a source without a k bias gets a zero one).
"""

import math
from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

PATCH_SIZE = 14
LN_EPSILON = 1e-6
POSITION_ENCODINGS = ("learned", "rope")
POOLINGS = ("cls", "mean")

# arch -> (embed_dim, depth, num_heads, num_register_tokens); dinov2/hub/backbones.py + models/vits.
DINOV2_CONFIGS = {
    "dinov2_vits14": (384, 12, 6, 0),
    "dinov2_vitb14": (768, 12, 12, 0),
    "dinov2_vitl14": (1024, 24, 16, 0),
    "dinov2_vits14_reg": (384, 12, 6, 4),
    "dinov2_vitb14_reg": (768, 12, 12, 4),
    "dinov2_vitl14_reg": (1024, 24, 16, 4),
}

_trunc_normal_02 = nn.initializers.truncated_normal(stddev=0.02)


def _layer_norm(name, dtype, epsilon=LN_EPSILON):
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features, name, dtype):
    # Init matches the official timm-style init (trunc normal 0.02, zero bias); real weights are
    # always loaded from an artifact, so this only matters for tests and shape inference.
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_trunc_normal_02,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def rope_periods(head_dim: int, base: float = 100.0) -> np.ndarray:
    """DINOv3's RoPE periods ``base ** (2 i / (head_dim / 2))``, i < head_dim / 4, in float32 (as timm computes
    them; an official checkpoint stores its own copy, which the converter keeps)."""
    if head_dim % 4:
        raise ValueError(f"RoPE needs a head dim divisible by 4, got {head_dim}")
    exponents = 2.0 * np.arange(head_dim // 4, dtype=np.float32) / np.float32(head_dim // 2)
    return (np.float32(base) ** exponents).astype(np.float32)


def rope_sin_cos(periods, grid: int):
    """(sin, cos), each (grid*grid, head_dim), of DINOv3's 2-D RoPE on a square patch grid.

    Coordinates are the 0.5-centred patch positions divided by the grid side (normalize_coords='separate')
    and mapped to [-1, 1]; row ('ij') coordinate first. Angles ``2 pi c / period`` are laid out
    [rows | cols] and repeated twice ('rotate half' layout), as DINOv3's ``RopePositionEmbedding``.
    """
    axis = (jnp.arange(grid, dtype=jnp.float32) + 0.5) / grid
    rows, cols = jnp.meshgrid(axis, axis, indexing="ij")
    coords = 2.0 * jnp.stack([rows, cols], axis=-1).reshape(grid * grid, 2) - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.reshape(grid * grid, -1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def _rotate_half(x):
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)


def apply_rope(x, sin, cos, num_prefix_tokens: int):
    """Rotates the patch tokens of x (batch, tokens, heads, head_dim); prefix tokens (CLS, registers) are kept."""
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    sin, cos = sin[None, :, None, :], cos[None, :, None, :]
    rotated = patches.astype(jnp.float32) * cos + _rotate_half(patches.astype(jnp.float32)) * sin
    return jnp.concatenate([prefix, rotated.astype(x.dtype)], axis=1)


class LayerScale(nn.Module):
    """Per-channel scale on a residual branch (``ls1``/``ls2.gamma`` in the official code)."""

    init_value: float = 1e-5

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v, q scaled by head_dim**-0.5 before q @ k^T.

    ``rope``: optional (sin, cos, num_prefix_tokens); q and k of the tokens after the prefix are rotated.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, rope=None):
        batch, tokens, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {self.num_heads}")
        head_dim = dim // self.num_heads

        def heads(name):
            y = _dense(dim, name, self.dtype)(x)
            return y.reshape(batch, tokens, self.num_heads, head_dim)

        query, key, value = heads("query"), heads("key"), heads("value")
        if rope is not None:
            sin, cos, num_prefix = rope
            query, key = apply_rope(query, sin, cos, num_prefix), apply_rope(key, sin, cos, num_prefix)
        query = query * (head_dim**-0.5)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
        weights = nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(batch, tokens, dim)
        return _dense(dim, "proj", self.dtype)(out)


class Mlp(nn.Module):
    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = _dense(self.hidden_dim, "fc1", self.dtype)(x)
        y = nn.gelu(y, approximate=False)  # torch.nn.GELU() default is the exact erf form
        return _dense(x.shape[-1], "fc2", self.dtype)(y)


class Block(nn.Module):
    """Pre-norm transformer block, with LayerScale unless ``layerscale_init`` is None (official DINOv2
    ``NestedTensorBlock`` / timm ``Block`` / timm ``EvaBlock`` in eval mode)."""

    num_heads: int
    mlp_ratio: float = 4.0
    layerscale_init: Optional[float] = 1e-5
    norm_epsilon: float = LN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, rope=None):
        dim = x.shape[-1]

        def scaled(name, y):
            return y if self.layerscale_init is None else LayerScale(self.layerscale_init, name=name)(y)

        y = Attention(self.num_heads, dtype=self.dtype, name="attn")(
            _layer_norm("norm1", self.dtype, self.norm_epsilon)(x), rope
        )
        x = x + scaled("ls1", y)
        y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
            _layer_norm("norm2", self.dtype, self.norm_epsilon)(x)
        )
        return x + scaled("ls2", y)


class VisionTransformer(nn.Module):
    """ViT backbone; returns a dict with 'pre_logits' (the distilled feature), 'cls', 'register_tokens' and
    'patch_tokens' (after the final norm for pooling 'cls'; before fc_norm, i.e. un-normalised, for 'mean').

    The defaults are DINOv2's (patch 14, LayerScale, eps 1e-6, learned pos-embed, CLS pooling).
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = PATCH_SIZE
    mlp_ratio: float = 4.0
    num_register_tokens: int = 0
    image_size: int = 224
    layerscale_init: Optional[float] = 1e-5
    norm_epsilon: float = LN_EPSILON
    position_encoding: str = "learned"  # 'learned' (absolute, baked grid) or 'rope' (DINOv3)
    rope_base: float = 100.0
    pooling: str = "cls"  # 'cls' (final norm, CLS token) or 'mean' (patch mean + fc_norm)
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    @property
    def grid_size(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of the patch size "
                f"{self.patch_size} (e.g. 224 = 16 x 14)"
            )
        return self.image_size // self.patch_size

    @nn.compact
    def __call__(self, x, train: bool = False) -> Dict[str, Any]:
        del train  # frozen teacher: no dropout / drop-path at inference, same graph either way
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding {self.position_encoding!r} is not one of {POSITION_ENCODINGS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        grid = self.grid_size
        if x.ndim != 4 or tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this ViT was built for {self.image_size}x{self.image_size} NHWC inputs (its "
                f"positional encoding is for a {grid}x{grid} grid) but got shape "
                f"{tuple(x.shape)}; convert the teacher again with --image_size={x.shape[1]} "
                "or resize the input"
            )
        batch = x.shape[0]
        dim = self.embed_dim

        x = nn.Conv(
            dim,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="patch_embed",
        )(x)
        x = x.reshape(batch, grid * grid, dim)  # row-major, as torch's flatten(2).transpose(1, 2)

        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, dim)).astype(x.dtype), x], 1)
        if self.position_encoding == "learned":
            pos_embed = self.param("pos_embed", _trunc_normal_02, (1, 1 + grid * grid, dim), jnp.float32)
            x = x + pos_embed.astype(x.dtype)
        if self.num_register_tokens:
            # Official prepare_tokens_with_masks: registers go after CLS, after the pos-embed add.
            registers = self.param(
                "register_tokens", nn.initializers.normal(1e-6), (1, self.num_register_tokens, dim), jnp.float32
            )
            registers = jnp.broadcast_to(registers, (batch, self.num_register_tokens, dim))
            x = jnp.concatenate([x[:, :1], registers.astype(x.dtype), x[:, 1:]], axis=1)
        rope = None
        if self.position_encoding == "rope":
            head_dim = dim // self.num_heads
            # A frozen constant, stored with the weights so an official checkpoint's own periods are used.
            periods = self.param("rope_periods", lambda *_: jnp.asarray(rope_periods(head_dim, self.rope_base)))
            sin, cos = rope_sin_cos(periods.astype(jnp.float32), grid)
            rope = (sin, cos, 1 + self.num_register_tokens)

        for index in range(self.depth):
            x = Block(
                self.num_heads,
                self.mlp_ratio,
                self.layerscale_init,
                self.norm_epsilon,
                dtype=self.dtype,
                name=f"blocks_{index}",
            )(x, rope)

        prefix = 1 + self.num_register_tokens
        if self.pooling == "mean":
            # timm global_pool='avg' with fc_norm (MAE / RETFound fine-tuning): no final norm on the tokens.
            pooled = _layer_norm("fc_norm", self.dtype, self.norm_epsilon)(x[:, prefix:].mean(axis=1))
        else:
            x = _layer_norm("norm", self.dtype, self.norm_epsilon)(x)
            pooled = x[:, 0]
        return {
            "cls": x[:, 0],
            "pre_logits": pooled,
            "register_tokens": x[:, 1:prefix],
            "patch_tokens": x[:, prefix:],
        }


# The DINOv2 defaults of VisionTransformer are the DINOv2 model; the old name stays for its artifacts and tests.
DinoV2ViT = VisionTransformer


def dinov2_vit(arch: str, image_size: int = 224, dtype: Any = jnp.float32) -> VisionTransformer:
    """The DINOv2 model for ``arch`` ('dinov2_vit{s,b,l}14' with an optional '_reg' suffix)."""
    if arch not in DINOV2_CONFIGS:
        raise ValueError(f"unknown DINOv2 arch {arch!r}; expected one of {sorted(DINOV2_CONFIGS)}")
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise ValueError(f"image_size {image_size} must be a positive multiple of {PATCH_SIZE}")
    embed_dim, depth, num_heads, registers = DINOV2_CONFIGS[arch]
    return VisionTransformer(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        num_register_tokens=registers,
        image_size=image_size,
        dtype=dtype,
    )


# arch -> VisionTransformer options of the ViT teachers imported from timm-style layouts
# (porting/timm_vit_weights.py). Unlisted options keep the DINOv2 defaults above.
_DINOV3 = dict(
    patch_size=16, num_register_tokens=4, norm_epsilon=1e-5, position_encoding="rope", rope_base=100.0
)  # timm eva.py vit_*_patch16_dinov3: rope_temperature=100, LayerNorm eps 1e-5
VIT_ARCHS: Dict[str, Dict[str, Any]] = {
    **{
        arch: dict(embed_dim=d, depth=n, num_heads=h, patch_size=PATCH_SIZE, num_register_tokens=r)
        for arch, (d, n, h, r) in DINOV2_CONFIGS.items()
        if r
    },
    # RETFound (MAE ViT-L/16): no LayerScale; fine-tuned with global_pool -> mean patch token + fc_norm.
    "retfound_vitl16": dict(
        embed_dim=1024, depth=24, num_heads=16, patch_size=16, layerscale_init=None, pooling="mean"
    ),
    # BiomedCLIP's vision tower: open_clip's timm vit_base_patch16_224 trunk, CLS token after the final norm.
    "biomedclip_vitb16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, layerscale_init=None),
    "dinov3_vits16": dict(embed_dim=384, depth=12, num_heads=6, **_DINOV3),
    "dinov3_vitb16": dict(embed_dim=768, depth=12, num_heads=12, **_DINOV3),
    "dinov3_vitl16": dict(embed_dim=1024, depth=24, num_heads=16, **_DINOV3),
}
# Sidecar keys that describe a VisionTransformer (written by the converter, read by teachers.build_teacher_module).
VIT_OPTION_KEYS = (
    "embed_dim",
    "depth",
    "num_heads",
    "patch_size",
    "mlp_ratio",
    "num_register_tokens",
    "layerscale_init",
    "norm_epsilon",
    "position_encoding",
    "rope_base",
    "pooling",
)


def vit_options(arch: str) -> Dict[str, Any]:
    """Every VisionTransformer option of ``arch`` (a VIT_ARCHS or DINOV2_CONFIGS name), defaults filled in."""
    if arch in VIT_ARCHS:
        given = VIT_ARCHS[arch]
    elif arch in DINOV2_CONFIGS:
        d, n, h, r = DINOV2_CONFIGS[arch]
        given = dict(embed_dim=d, depth=n, num_heads=h, num_register_tokens=r)
    else:
        raise ValueError(f"unknown ViT arch {arch!r}; expected one of {sorted({**VIT_ARCHS, **DINOV2_CONFIGS})}")
    defaults = {
        field: getattr(VisionTransformer, field)
        for field in VIT_OPTION_KEYS
        if field not in ("embed_dim", "depth", "num_heads")
    }
    return {**defaults, **given}
