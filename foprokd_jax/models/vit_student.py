"""ViT-Ti/16 student in Flax Linen, reproducing timm's ``vit_tiny_patch16_224``.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (https://arxiv.org/abs/2010.11929); the Tiny
width is from Touvron et al. 2021 (DeiT, https://arxiv.org/abs/2012.12877). Layout of timm's
``VisionTransformer`` (https://github.com/huggingface/pytorch-image-models,
``timm/models/vision_transformer.py``) with class-token pooling and no LayerScale:

  16x16/16 conv (biased) -> flatten -> [CLS] + patches -> + pos_embed (CLS included)
  -> 12 x pre-norm block:  x += attn(norm1(x));  x += mlp(norm2(x))   (192-d, 3 heads, MLP 768)
  -> final LayerNorm -> CLS token = 'pre_logits' (192-d)  [-> head Linear(192, C)]

* LayerNorm eps 1e-6, exact (erf) GELU, fused ``qkv`` projection split as timm's
  ``reshape(B, N, 3, heads, head_dim)``; attention logits and softmax in float32 under bfloat16.
* ``pos_embed`` is stored for this model's own grid ((image_size / 16)**2 + 1 tokens): the converter
  (``porting/student_weights.py``) resamples timm's 14x14 grid for other input sizes once, as timm's
  ``resample_abs_pos_embed`` does when a model is created at another ``img_size``.
* Init as timm's default ``init_weights('')``: Linear weights trunc_normal(std=0.02) on [-2, 2] -- i.e.
  +-100 std, a plain normal in practice -- with zero bias, ``pos_embed`` the same, ``cls_token``
  N(0, 1e-6), the patch conv torch's default Conv2d init, LayerNorm ones/zeros. Dropout and drop-path
  are 0 in ``vit_tiny_patch16_224``, so train and eval graphs agree.

Names mirror timm's: ``patch_embed`` (``patch_embed.proj``), ``cls_token``, ``pos_embed``,
``blocks_{i}/{norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2}}``, ``norm``, ``head``.
"""

from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from foprokd_jax.models.torch_init import torch_linear_bias_init

PATCH_SIZE = 16
LN_EPSILON = 1e-6
VIT_TINY = dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)

_normal_02 = nn.initializers.normal(0.02)
# torch.nn.Conv2d.reset_parameters: kaiming_uniform_(a=sqrt(5)) == U(+-1/sqrt(fan_in)), fan_in = in*kh*kw.
_torch_conv_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_normal_02,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
    """timm ``Attention``: fused biased qkv, softmax(q k^T / sqrt(d)) v, output projection."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = _dense(3 * dim, "qkv", self.dtype)(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) * (head_dim**-0.5)
        weights = nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(batch, tokens, dim)
        return _dense(dim, "proj", self.dtype)(out)


class Mlp(nn.Module):
    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(_dense(self.hidden_dim, "fc1", self.dtype)(x), approximate=False)
        return _dense(x.shape[-1], "fc2", self.dtype)(y)


class Block(nn.Module):
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.num_heads, self.dtype, name="attn")(_layer_norm("norm1", self.dtype)(x))
        hidden = int(x.shape[-1] * self.mlp_ratio)
        return x + Mlp(hidden, self.dtype, name="mlp")(_layer_norm("norm2", self.dtype)(x))


class VisionTransformer(nn.Module):
    """timm-layout ViT with class-token pooling; returns ``{'tokens', 'pre_logits'[, 'logits']}``.

    ``x`` is a normalised NHWC batch of exactly ``image_size`` pixels (the positional embedding is
    baked for that grid). ``train`` is accepted for a uniform student interface; the graph is the same.
    """

    image_size: int = 224
    embed_dim: int = VIT_TINY["embed_dim"]
    depth: int = VIT_TINY["depth"]
    num_heads: int = VIT_TINY["num_heads"]
    mlp_ratio: float = VIT_TINY["mlp_ratio"]
    patch_size: int = PATCH_SIZE
    num_classes: Optional[int] = None
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    @property
    def grid_size(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(f"ViT image_size {self.image_size} must be a multiple of the patch size {self.patch_size}")
        return self.image_size // self.patch_size

    @nn.compact
    def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
        del train  # no dropout / drop-path in vit_tiny_patch16_224
        grid, dim = self.grid_size, self.embed_dim
        if x.ndim != 4 or tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this ViT was built for {self.image_size}x{self.image_size} NHWC inputs (its "
                f"positional embedding has a {grid}x{grid} grid), got shape {tuple(x.shape)}"
            )
        batch = x.shape[0]
        patch = self.patch_size
        fan_in = 3 * patch * patch
        x = nn.Conv(
            dim,
            (patch, patch),
            strides=(patch, patch),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=_torch_conv_default,
            bias_init=torch_linear_bias_init(fan_in),
            name="patch_embed",
        )(jnp.asarray(x, self.dtype))
        x = x.reshape(batch, grid * grid, dim)  # row-major, as torch's flatten(2).transpose(1, 2)
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, dim), jnp.float32)
        pos_embed = self.param("pos_embed", _normal_02, (1, 1 + grid * grid, dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, dim)).astype(x.dtype), x], axis=1)
        x = x + pos_embed.astype(x.dtype)
        for index in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{index}")(x)
        x = _layer_norm("norm", self.dtype)(x)
        out = {"tokens": x, "pre_logits": x[:, 0].astype(jnp.float32)}
        if self.num_classes is not None:
            out["logits"] = _dense(self.num_classes, "head", self.dtype)(out["pre_logits"])
        return out


def vit_tiny_patch16(image_size: int = 224, **kwargs) -> VisionTransformer:
    """timm ``vit_tiny_patch16_224`` at ``image_size`` (5,524,416 trunk parameters at 224 px)."""
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise ValueError(f"ViT-Ti/16 image_size {image_size} must be a positive multiple of {PATCH_SIZE}")
    return VisionTransformer(image_size=image_size, **VIT_TINY, **kwargs)
