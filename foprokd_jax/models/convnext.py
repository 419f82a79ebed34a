"""ConvNeXt-T/S in Flax Linen (NHWC), matching torchvision's and timm's ConvNeXt in eval mode.

Reference: Liu et al., "A ConvNet for the 2020s", CVPR 2022 (github.com/facebookresearch/ConvNeXt); code in
torchvision ``torchvision/models/convnext.py`` (``CNBlock``, ``LayerNorm2d``) and timm
``timm/models/convnext.py`` (``ConvNeXtBlock``, ``NormMlpClassifierHead``).

  stem: 4x4/4 conv -> LayerNorm
  4 stages of ``depths[i]`` blocks at width ``dims[i]``; stages 2-4 start with LayerNorm -> 2x2/2 conv
  block: 7x7 depthwise conv (pad 3) -> LayerNorm -> Linear(4d) -> GELU -> Linear(d) -> * gamma -> + input
  head: global average pool -> LayerNorm = 'pre_logits' (the distilled feature; torchvision's
        ``classifier[0]``, timm's ``head.norm``; the final Linear is never part of a teacher artifact)

All LayerNorms have eps 1e-6 and normalise over channels, which is the last axis in NHWC (torchvision's
``LayerNorm2d`` permutes to get there). GELU is the exact (erf) one. Stochastic depth is off in eval mode.
Parameters are float32; ``dtype`` sets the compute precision.
"""

from typing import Any, Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

LN_EPSILON = 1e-6

# arch -> (depths, dims); torchvision convnext_tiny / convnext_small, timm convnext_tiny / convnext_small.
CONVNEXT_CONFIGS = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
}


def _norm(name, dtype):
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LN -> MLP (4x) -> LayerScale -> residual (torchvision ``CNBlock``)."""

    layerscale_init: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        y = nn.Conv(
            dim,
            (7, 7),
            padding=((3, 3), (3, 3)),
            feature_group_count=dim,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="dwconv",
        )(x)
        y = _norm("norm", self.dtype)(y)
        y = nn.Dense(4 * dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(y)
        gamma = self.param("gamma", nn.initializers.constant(self.layerscale_init), (dim,), jnp.float32)
        return x + y * gamma.astype(y.dtype)


class ConvNeXt(nn.Module):
    """Headless ConvNeXt; returns {'pre_logits': (B, dims[-1]) pooled + normed, 'features': last feature map}."""

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    layerscale_init: float = 1e-6
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        return int(self.dims[-1])

    @nn.compact
    def __call__(self, x, train: bool = False) -> Dict[str, Any]:
        del train  # frozen teacher: LayerNorm has no batch statistics and stochastic depth is off
        if len(self.depths) != len(self.dims):
            raise ValueError(f"ConvNeXt depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length")
        x = x.astype(self.dtype)
        x = nn.Conv(
            self.dims[0],
            (4, 4),
            strides=(4, 4),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="stem_conv",
        )(x)
        x = _norm("stem_norm", self.dtype)(x)
        for stage, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if stage:
                x = _norm(f"stages_{stage}_downsample_norm", self.dtype)(x)
                x = nn.Conv(
                    dim,
                    (2, 2),
                    strides=(2, 2),
                    padding="VALID",
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    name=f"stages_{stage}_downsample_conv",
                )(x)
            for index in range(depth):
                x = ConvNeXtBlock(self.layerscale_init, dtype=self.dtype, name=f"stages_{stage}_blocks_{index}")(x)
        pooled = _norm("head_norm", self.dtype)(x.mean(axis=(1, 2)))
        return {"pre_logits": pooled, "features": x}


def get_convnext(arch: str, dtype: Any = jnp.float32) -> ConvNeXt:
    """The ConvNeXt for ``arch`` ('convnext_tiny' or 'convnext_small')."""
    if arch not in CONVNEXT_CONFIGS:
        raise ValueError(f"unknown ConvNeXt arch {arch!r}; expected one of {sorted(CONVNEXT_CONFIGS)}")
    depths, dims = CONVNEXT_CONFIGS[arch]
    return ConvNeXt(depths=depths, dims=dims, dtype=dtype)
