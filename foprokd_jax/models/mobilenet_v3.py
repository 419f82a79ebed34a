"""MobileNetV3-Large in Flax Linen (NHWC), reproducing torchvision's ``models/mobilenetv3.py``.

Howard et al. 2019, "Searching for MobileNetV3" (https://arxiv.org/abs/1905.02244), in the layout of
torchvision's ``mobilenet_v3_large`` (https://github.com/pytorch/vision):

  3x3/2 conv -> BN -> Hardswish                                            features.0
  15 inverted residuals: [1x1 expand -> BN -> act] -> kxk depthwise -> BN -> act
                         [-> squeeze-excitation (ReLU, Hardsigmoid)] -> 1x1 project -> BN [+ x]
                                                                           features.1 .. features.15
  1x1 conv 160 -> 960 -> BN -> Hardswish                                   features.16
  global average pool -> 'pre_logits' (960-d, the feature the EKD heads use)
  [classifier: Linear(960, 1280) -> Hardswish -> Dropout -> Linear(1280, C)]

* BatchNorm is torchvision's ``BatchNorm2d(eps=0.001, momentum=0.01)`` (Flax momentum 0.99).
* The squeeze width is ``_make_divisible(expanded // 4, 8)``; a block is residual exactly when its
  stride is 1 and its input and output widths agree.
* Init as torchvision: convs kaiming-normal fan-out with zero bias, BN ones/zeros, Linear N(0, 0.01) with
  zero bias. Dropout (p=0.2, classifier only) is not applied: the student replaces the classifier.

Module names follow torchvision's indices: ``features_{i}`` for ``features.{i}``; inside a block
``expand``, ``depthwise``, ``se/{fc1,fc2}``, ``project`` (each conv/BN pair as ``conv``/``bn``), and
``classifier_0``/``classifier_3``. ``porting/student_weights.py`` maps the torch keys onto them.
"""

from typing import Any, Dict, NamedTuple, Optional

import flax.linen as nn
import jax.numpy as jnp

from foprokd_jax.models.conv_layers import ConvBNAct, SqueezeExcitation, hard_swish, torch_to_flax_momentum

BN_MOMENTUM = torch_to_flax_momentum(0.01)
BN_EPSILON = 1e-3
FEATURE_DIM = 960
HIDDEN_DIM = 1280


class BlockConfig(NamedTuple):
    """torchvision ``InvertedResidualConfig`` (width_mult 1, dilation 1)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str
    stride: int


def _hs(c_in, k, exp, out, se, stride):
    return BlockConfig(c_in, k, exp, out, se, "hardswish", stride)


def _re(c_in, k, exp, out, se, stride):
    return BlockConfig(c_in, k, exp, out, se, "relu", stride)


# torchvision _mobilenet_v3_conf('mobilenet_v3_large').
LARGE_BLOCKS = (
    _re(16, 3, 16, 16, False, 1),
    _re(16, 3, 64, 24, False, 2),
    _re(24, 3, 72, 24, False, 1),
    _re(24, 5, 72, 40, True, 2),
    _re(40, 5, 120, 40, True, 1),
    _re(40, 5, 120, 40, True, 1),
    _hs(40, 3, 240, 80, False, 2),
    _hs(80, 3, 200, 80, False, 1),
    _hs(80, 3, 184, 80, False, 1),
    _hs(80, 3, 184, 80, False, 1),
    _hs(80, 3, 480, 112, True, 1),
    _hs(112, 3, 672, 112, True, 1),
    _hs(112, 5, 672, 160, True, 2),
    _hs(160, 5, 960, 160, True, 1),
    _hs(160, 5, 960, 160, True, 1),
)


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision ``_make_divisible`` (from the TF MobileNet code): round to a multiple of `divisor`,
    never more than 10% below `value`."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """torchvision MobileNetV3 ``InvertedResidual``."""

    config: BlockConfig
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        cfg = self.config
        conv_bn = dict(bn_momentum=BN_MOMENTUM, bn_epsilon=BN_EPSILON, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
        y = x
        if cfg.expanded_channels != cfg.input_channels:
            y = ConvBNAct(cfg.expanded_channels, 1, activation=cfg.activation, name="expand", **conv_bn)(y, train)
        y = ConvBNAct(
            cfg.expanded_channels,
            cfg.kernel,
            cfg.stride,
            groups=cfg.expanded_channels,
            activation=cfg.activation,
            name="depthwise",
            **conv_bn,
        )(y, train)
        if cfg.use_se:
            y = SqueezeExcitation(
                make_divisible(cfg.expanded_channels // 4, 8), "relu", "hard_sigmoid", dtype=self.dtype, name="se"
            )(y)
        y = ConvBNAct(cfg.out_channels, 1, activation=None, name="project", **conv_bn)(y, train)
        if cfg.stride == 1 and cfg.input_channels == cfg.out_channels:
            y = y + x
        return y


def _classifier_dense(features: int, name: str, dtype: Any) -> nn.Dense:
    # torchvision MobileNetV3.__init__: nn.init.normal_(weight, 0, 0.01), zeros_(bias).
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(0.01),
        bias_init=nn.initializers.zeros,
        name=name,
    )


class MobileNetV3Large(nn.Module):
    """torchvision ``mobilenet_v3_large``; returns ``{'features', 'pre_logits'[, 'logits']}``.

    ``x`` is an ImageNet-normalised NHWC float batch. ``'pre_logits'`` (B, 960) is pooled in float32;
    ``num_classes`` adds torchvision's two-layer classifier and ``'logits'``.
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
        x = ConvBNAct(LARGE_BLOCKS[0].input_channels, 3, 2, activation="hardswish", name="features_0", **conv_bn)(
            x, train
        )
        for index, block in enumerate(LARGE_BLOCKS, start=1):
            x = InvertedResidual(block, self.bn_axis_name, self.dtype, name=f"features_{index}")(x, train)
        x = ConvBNAct(
            6 * LARGE_BLOCKS[-1].out_channels,
            1,
            activation="hardswish",
            name=f"features_{len(LARGE_BLOCKS) + 1}",
            **conv_bn,
        )(x, train)
        out = {"features": x, "pre_logits": jnp.mean(x.astype(jnp.float32), axis=(1, 2))}
        if self.num_classes is not None:
            y = _classifier_dense(HIDDEN_DIM, "classifier_0", self.dtype)(out["pre_logits"])
            y = hard_swish(y)  # classifier.1; Dropout (classifier.2) is inference-off
            out["logits"] = _classifier_dense(self.num_classes, "classifier_3", self.dtype)(y)
        return out
