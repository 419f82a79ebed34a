"""DINOv2 ViT-S/B/L 14 (optionally with register tokens) in Flax Linen, matching the official torch code.

Reference: Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision", and
Darcet et al. 2024, "Vision Transformers Need Registers"; code in facebookresearch/dinov2
``dinov2/models/vision_transformer.py`` and ``dinov2/layers/{block,attention,mlp,layer_scale}.py``.

Forward pass, as the official ``forward_features`` in eval mode:

  14x14/14 conv (VALID) -> flatten -> [CLS] + patches -> + pos_embed
  -> insert the register tokens right after CLS (they get no positional embedding)
  -> depth x pre-norm block:  x += ls1 * attn(norm1(x));  x += ls2 * mlp(norm2(x))
  -> final LayerNorm -> CLS (``x_norm_clstoken``), patch tokens (``x_norm_patchtokens``)

* LayerNorm eps 1e-6; GELU is the exact (erf) one, as torch.nn.GELU's default.
* The positional embedding is stored for this model's own grid (``image_size / 14`` squared). The
  official code resizes the 37x37 pre-training grid at run time; here that resize happens once at
  conversion time (``porting/dinov2_weights.py``), so the model only accepts ``image_size`` inputs.
* Attention logits and softmax run in float32 even with a bf16 ``dtype``, to keep the teacher's
  features stable under mixed precision.

Parameter names mirror the official ones (``patch_embed``, ``cls_token``, ``pos_embed``,
``register_tokens``, ``blocks_{i}/{norm1,attn,ls1,norm2,mlp,ls2}``, ``norm``); the fused ``qkv`` is
split into ``query/key/value`` so that the Hugging Face layout maps onto it without re-fusing.
"""
from typing import Any, Dict

import flax.linen as nn
import jax.numpy as jnp

PATCH_SIZE = 14
LN_EPSILON = 1e-6

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


def _layer_norm(name, dtype):
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features, name, dtype):
    # Init matches the official timm-style init (trunc normal 0.02, zero bias); real weights are
    # always loaded from an artifact, so this only matters for tests and shape inference.
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_trunc_normal_02,
                    bias_init=nn.initializers.zeros, name=name)


class LayerScale(nn.Module):
    """Per-channel scale on a residual branch (``ls1``/``ls2.gamma`` in the official code)."""

    init_value: float = 1e-5

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                           jnp.float32)
        return x * gamma.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v, q scaled by head_dim**-0.5 before q @ k^T."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, tokens, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {self.num_heads}")
        head_dim = dim // self.num_heads

        def heads(name):
            y = _dense(dim, name, self.dtype)(x)
            return y.reshape(batch, tokens, self.num_heads, head_dim)

        query, key, value = heads("query"), heads("key"), heads("value")
        query = query * (head_dim ** -0.5)
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
    """Pre-norm transformer block with LayerScale (official ``NestedTensorBlock`` in eval mode)."""

    num_heads: int
    mlp_ratio: float = 4.0
    layerscale_init: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        y = Attention(self.num_heads, dtype=self.dtype, name="attn")(
            _layer_norm("norm1", self.dtype)(x))
        x = x + LayerScale(self.layerscale_init, name="ls1")(y)
        y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
            _layer_norm("norm2", self.dtype)(x))
        return x + LayerScale(self.layerscale_init, name="ls2")(y)


class DinoV2ViT(nn.Module):
    """DINOv2 backbone; returns a dict with 'cls' (= 'pre_logits') and 'patch_tokens'."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = PATCH_SIZE
    mlp_ratio: float = 4.0
    num_register_tokens: int = 0
    image_size: int = 224
    layerscale_init: float = 1e-5
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    @property
    def grid_size(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the patch size "
                             f"{self.patch_size} (e.g. 224 = 16 x 14)")
        return self.image_size // self.patch_size

    @nn.compact
    def __call__(self, x, train: bool = False) -> Dict[str, Any]:
        del train  # frozen teacher: no dropout / drop-path at inference, same graph either way
        grid = self.grid_size
        if x.ndim != 4 or tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(
                f"DinoV2ViT was built for {self.image_size}x{self.image_size} NHWC inputs (its "
                f"positional embedding is baked for a {grid}x{grid} grid) but got shape "
                f"{tuple(x.shape)}; convert the teacher again with --image_size={x.shape[1]} "
                "or resize the input")
        batch = x.shape[0]
        dim = self.embed_dim

        x = nn.Conv(dim, (self.patch_size, self.patch_size),
                    strides=(self.patch_size, self.patch_size), padding="VALID",
                    dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed")(x)
        x = x.reshape(batch, grid * grid, dim)  # row-major, as torch's flatten(2).transpose(1, 2)

        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, dim), jnp.float32)
        pos_embed = self.param("pos_embed", _trunc_normal_02, (1, 1 + grid * grid, dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, dim)).astype(x.dtype), x], 1)
        x = x + pos_embed.astype(x.dtype)
        if self.num_register_tokens:
            # Official prepare_tokens_with_masks: registers go after CLS, after the pos-embed add.
            registers = self.param("register_tokens", nn.initializers.normal(1e-6),
                                   (1, self.num_register_tokens, dim), jnp.float32)
            registers = jnp.broadcast_to(registers, (batch, self.num_register_tokens, dim))
            x = jnp.concatenate([x[:, :1], registers.astype(x.dtype), x[:, 1:]], axis=1)

        for index in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, self.layerscale_init, dtype=self.dtype,
                      name=f"blocks_{index}")(x)

        x = _layer_norm("norm", self.dtype)(x)
        cls = x[:, 0]
        return {
            "cls": cls,
            "pre_logits": cls,
            "register_tokens": x[:, 1:1 + self.num_register_tokens],
            "patch_tokens": x[:, 1 + self.num_register_tokens:],
        }


def dinov2_vit(arch: str, image_size: int = 224, dtype: Any = jnp.float32) -> DinoV2ViT:
    """The DINOv2 model for ``arch`` ('dinov2_vit{s,b,l}14' with an optional '_reg' suffix)."""
    if arch not in DINOV2_CONFIGS:
        raise ValueError(f"unknown DINOv2 arch {arch!r}; expected one of {sorted(DINOV2_CONFIGS)}")
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise ValueError(f"image_size {image_size} must be a positive multiple of {PATCH_SIZE}")
    embed_dim, depth, num_heads, registers = DINOV2_CONFIGS[arch]
    return DinoV2ViT(embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                     num_register_tokens=registers, image_size=image_size, dtype=dtype)
