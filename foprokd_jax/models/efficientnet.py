"""EfficientNet-B0 in Flax Linen (NHWC), reproducing torchvision's ``models/efficientnet.py``.

Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
(https://arxiv.org/abs/1905.11946), in the layout of torchvision's ``efficientnet_b0``
(https://github.com/pytorch/vision):

  3x3/2 conv 3 -> 32 -> BN -> SiLU                                           features.0
  7 stages of MBConv blocks: [1x1 expand -> BN -> SiLU] -> kxk depthwise -> BN -> SiLU
                             -> squeeze-excitation (SiLU, Sigmoid) -> 1x1 project -> BN [+ x]
                                                                             features.1 .. features.7
  1x1 conv 320 -> 1280 -> BN -> SiLU                                         features.8
  global average pool -> 'pre_logits' (1280-d, the feature the EKD heads use)
  [classifier: Dropout -> Linear(1280, C)]

* BatchNorm is torch's default ``BatchNorm2d`` (eps 1e-5, momentum 0.1; Flax momentum 0.9): torchvision
  only uses eps 1e-3 for EfficientNet-V2.
* The squeeze width is ``max(1, block_input_channels // 4)`` (of the block's input, not its expansion).
* Init as torchvision: convs kaiming-normal fan-out with zero bias, BN ones/zeros, Linear
  U(+-1/sqrt(num_classes)) with zero bias.
* Not applied: torchvision's stochastic depth (``StochasticDepth(0.2 * block / 16, 'row')`` on each
  residual branch in training) and the classifier dropout. Both are identities at inference, so
  evaluation and ImageNet parity are exact; training from this module has no drop-path regulariser
  (the training steps pass no dropout RNG to the student).

Module names follow torchvision's indices: ``features_0``, ``features_{stage}_{block}`` for
``features.{stage}.{block}`` with ``expand``, ``depthwise``, ``se/{fc1,fc2}``, ``project``, then
``features_8`` and ``classifier_1``. ``porting/student_weights.py`` maps the torch keys onto them.
"""

import math
from typing import Any, Dict, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from foprokd_jax.models.conv_layers import ConvBNAct, SqueezeExcitation, torch_to_flax_momentum
from foprokd_jax.models.mobilenet_v3 import make_divisible

BN_MOMENTUM = torch_to_flax_momentum(0.1)
BN_EPSILON = 1e-5
STEM_CHANNELS = 32
FEATURE_DIM = 1280


class StageConfig(NamedTuple):
    """torchvision ``MBConvConfig`` at width_mult = depth_mult = 1 (EfficientNet-B0)."""

    expand_ratio: int
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int


# torchvision _efficientnet_conf('efficientnet_b0').
B0_STAGES = (
    StageConfig(1, 3, 1, 32, 16, 1),
    StageConfig(6, 3, 2, 16, 24, 2),
    StageConfig(6, 5, 2, 24, 40, 2),
    StageConfig(6, 3, 2, 40, 80, 3),
    StageConfig(6, 5, 1, 80, 112, 3),
    StageConfig(6, 5, 2, 112, 192, 4),
    StageConfig(6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    """torchvision ``MBConv`` (eval-mode stochastic depth, i.e. none)."""

    expand_ratio: int
    kernel: int
    stride: int
    out_channels: int
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv_bn = dict(bn_momentum=BN_MOMENTUM, bn_epsilon=BN_EPSILON, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
        in_channels = x.shape[-1]
        expanded = make_divisible(in_channels * self.expand_ratio, 8)
        y = x
        if expanded != in_channels:
            y = ConvBNAct(expanded, 1, activation="silu", name="expand", **conv_bn)(y, train)
        y = ConvBNAct(
            expanded, self.kernel, self.stride, groups=expanded, activation="silu", name="depthwise", **conv_bn
        )(y, train)
        y = SqueezeExcitation(max(1, in_channels // 4), "silu", "sigmoid", dtype=self.dtype, name="se")(y)
        y = ConvBNAct(self.out_channels, 1, activation=None, name="project", **conv_bn)(y, train)
        if self.stride == 1 and in_channels == self.out_channels:
            y = y + x
        return y


def _classifier_kernel_init(key, shape, dtype=jnp.float32):
    # torchvision EfficientNet.__init__: uniform_(weight, -1/sqrt(out_features), +1/sqrt(out_features)).
    bound = 1.0 / math.sqrt(shape[1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class EfficientNetB0(nn.Module):
    """torchvision ``efficientnet_b0``; returns ``{'features', 'pre_logits'[, 'logits']}``.

    ``x`` is an ImageNet-normalised NHWC float batch; ``'pre_logits'`` (B, 1280) is pooled in float32.
    """

    num_classes: Optional[int] = None
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    @nn.compact
    def __call__(self, x, train: bool) -> Dict[str, jnp.ndarray]:
        conv_bn = dict(bn_momentum=BN_MOMENTUM, bn_epsilon=BN_EPSILON, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        x = ConvBNAct(STEM_CHANNELS, 3, 2, activation="silu", name="features_0", **conv_bn)(x, train)
        for stage_index, stage in enumerate(B0_STAGES, start=1):
            for block_index in range(stage.num_layers):
                x = MBConv(
                    stage.expand_ratio,
                    stage.kernel,
                    stage.stride if block_index == 0 else 1,
                    stage.out_channels,
                    self.bn_axis_name,
                    self.dtype,
                    name=f"features_{stage_index}_{block_index}",
                )(x, train)
        x = ConvBNAct(FEATURE_DIM, 1, activation="silu", name=f"features_{len(B0_STAGES) + 1}", **conv_bn)(x, train)
        out = {"features": x, "pre_logits": jnp.mean(x.astype(jnp.float32), axis=(1, 2))}
        if self.num_classes is not None:
            out["logits"] = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=_classifier_kernel_init,
                bias_init=nn.initializers.zeros,
                name="classifier_1",
            )(out["pre_logits"])
        return out
