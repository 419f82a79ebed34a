"""DenseNet-BC in Flax Linen (NHWC), reproducing torchvision's ``models/densenet.py`` exactly.

Huang et al., "Densely Connected Convolutional Networks", CVPR 2017 (arXiv:1608.06993), as laid out in
torchvision; CRCKD's student and teacher backbone is its DenseNet-121 (docs/crckd.md §R2):

  features: conv0 7x7/2 (pad 3) -> norm0 -> ReLU -> pool0 3x3/2 max (pad 1)
            -> denseblock1 -> transition1 -> ... -> denseblock4 -> norm5
  head:     ReLU -> global average pool -> [classifier]

* Dense layer: norm1 -> ReLU -> conv1 (1x1, bn_size * growth) -> norm2 -> ReLU -> conv2 (3x3, pad 1,
  growth); its output is concatenated after all earlier feature maps of the block (channels last).
* Transition: norm -> ReLU -> conv (1x1, halves the channels) -> 2x2/2 average pool. torch's
  ``AvgPool2d(2, 2)`` has no padding and floors odd sizes, which is flax's 'VALID'.
* pool0: flax's ``max_pool`` pads with -inf (the reduction's identity), like torch's ``MaxPool2d``.
* Every conv is bias-free; BN uses eps 1e-5 and flax momentum 0.9 (= torch momentum 0.1).
* Init as torchvision's constructor: ``kaiming_normal_`` with its defaults (fan_in, gain sqrt(2)) on
  every conv (unlike torchvision's ResNet, which uses fan_out), BN weight 1 / bias 0, classifier
  weight left at torch's Linear default U(+-1/sqrt(fan_in)) and its bias set to 0.

Parameter paths mirror torchvision's state-dict keys with '.' -> '/' (see
``porting/densenet_weights.py``): ``features/conv0/kernel``, ``features/denseblock1/denselayer1/norm1/
scale``, ``features/transition1/conv/kernel``, ``features/norm5/...``, ``classifier/{kernel,bias}``.

Each dense layer concatenates only its own output onto the running feature map (one two-way concat per
layer), so the HLO grows linearly with depth; the stored activations are the same O(L^2) channels as
torchvision's non-memory-efficient forward.
"""

import functools
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from foprokd_jax.models.torch_init import torch_linear_kernel_init

# torch.nn.BatchNorm2d(momentum=0.1) updates running = 0.9 * running + 0.1 * batch; Flax's momentum is
# the weight on the old value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torch.nn.init.kaiming_normal_ defaults: mode='fan_in', nonlinearity='leaky_relu' with a=0, i.e. gain
# sqrt(2): an untruncated normal with std sqrt(2 / (in_channels * kh * kw)). jax's 'fan_in' for a HWIO
# kernel is I * kh * kw, the same number.
kaiming_fan_in_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Any) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        # Explicit symmetric padding: 'SAME' would pad stride-2 layers asymmetrically and break parity.
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_fan_in_normal,
        name=name,
    )


def _bn(train: bool, axis_name: Optional[str], name: str, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.ones,
        bias_init=nn.initializers.zeros,
        name=name,
    )


class DenseLayer(nn.Module):
    """torchvision ``_DenseLayer`` (drop_rate 0): returns only the ``growth_rate`` new channels."""

    growth_rate: int
    bn_size: int
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(_bn, train, self.bn_axis_name, dtype=self.dtype)
        y = nn.relu(bn("norm1")(x))
        y = _conv(self.bn_size * self.growth_rate, 1, 1, 0, "conv1", self.dtype)(y)
        y = nn.relu(bn("norm2")(y))
        return _conv(self.growth_rate, 3, 1, 1, "conv2", self.dtype)(y)


class DenseBlock(nn.Module):
    """torchvision ``_DenseBlock``: ``denselayer1..N``, each fed the concat of everything before it."""

    num_layers: int
    growth_rate: int
    bn_size: int
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for index in range(self.num_layers):
            new = DenseLayer(
                self.growth_rate, self.bn_size, self.bn_axis_name, self.dtype, name=f"denselayer{index + 1}"
            )(x, train)
            # Channel order matches torch.cat([init, new1, new2, ...], dim=1).
            x = jnp.concatenate([x, new], axis=-1)
        return x


class Transition(nn.Module):
    """torchvision ``_Transition``: norm -> ReLU -> 1x1 conv to ``features`` -> 2x2/2 average pool."""

    features: int
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(_bn(train, self.bn_axis_name, "norm", self.dtype)(x))
        x = _conv(self.features, 1, 1, 0, "conv", self.dtype)(x)
        # AvgPool2d(kernel_size=2, stride=2): no padding, odd sizes floor -> 'VALID'.
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class DenseNetFeatures(nn.Module):
    """torchvision ``DenseNet.features`` (the ``nn.Sequential`` ending in ``norm5``, before the ReLU)."""

    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(_bn, train, self.bn_axis_name, dtype=self.dtype)
        input_hw = x.shape[1:3]
        x = _conv(self.num_init_features, 7, 2, 3, "conv0", self.dtype)(x)
        x = nn.relu(bn("norm0")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        num_features = self.num_init_features
        for index, num_layers in enumerate(self.block_config):
            x = DenseBlock(
                num_layers, self.growth_rate, self.bn_size, self.bn_axis_name, self.dtype, name=f"denseblock{index + 1}"
            )(x, train)
            num_features += num_layers * self.growth_rate
            if index != len(self.block_config) - 1:
                num_features //= 2
                if min(x.shape[1:3]) < 2:
                    # A 2x2/2 'VALID' pool of a 1-px map is empty and the global mean becomes NaN.
                    raise ValueError(
                        f"DenseNet input of {input_hw[0]}x{input_hw[1]} px is too small: transition"
                        f"{index + 1} would pool a {x.shape[1]}x{x.shape[2]} map (DenseNet-121 needs "
                        "at least 29 px, torchvision's min_size)"
                    )
                x = Transition(num_features, self.bn_axis_name, self.dtype, name=f"transition{index + 1}")(x, train)
        return bn("norm5")(x)


def final_feature_dim(growth_rate: int, block_config: Sequence[int], num_init_features: int) -> int:
    """Channels after norm5: each block adds num_layers * growth, each transition halves (floor)."""
    num_features = num_init_features
    for index, num_layers in enumerate(block_config):
        num_features += num_layers * growth_rate
        if index != len(block_config) - 1:
            num_features //= 2
    return num_features


class DenseNet(nn.Module):
    """torchvision-layout DenseNet-BC returning a feature dict.

    Attributes:
      growth_rate, block_config, num_init_features, bn_size: as torchvision's ``DenseNet`` (k, layers
        per block, conv0 width, bottleneck factor). drop_rate is not supported (CRCKD uses 0).
      num_classes: adds the ``classifier`` Linear and a ``'logits'`` output when set.
      bn_axis_name: mesh axis to average BN batch statistics over (synchronised BN under shard_map).
      dtype: compute dtype. Parameters and BN statistics are always float32.

    ``__call__(x, train)`` takes an already-normalised float batch (B, H, W, 3) (at least 29 px, as
    torchvision's weights meta says, so every pool has an input) and returns ``{'features': (B, C),
    ['logits': (B, num_classes)]}``, ``features`` being ``adaptive_avg_pool2d(relu(self.features(x)))``
    flattened, exactly what torchvision's ``forward`` feeds its classifier.
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: Optional[int] = None
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        """Width of ``'features'``: 1024 for DenseNet-121."""
        return final_feature_dim(self.growth_rate, self.block_config, self.num_init_features)

    @nn.compact
    def __call__(self, x, train: bool) -> Dict[str, jnp.ndarray]:
        x = jnp.asarray(x, self.dtype)
        x = DenseNetFeatures(
            self.growth_rate,
            tuple(self.block_config),
            self.num_init_features,
            self.bn_size,
            self.bn_axis_name,
            self.dtype,
            name="features",
        )(x, train)
        pooled = jnp.mean(nn.relu(x), axis=(1, 2))
        out = {"features": pooled}
        if self.num_classes is not None:
            out["logits"] = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=torch_linear_kernel_init,  # torch's Linear default, kept by torchvision
                bias_init=nn.initializers.zeros,  # torchvision: nn.init.constant_(m.bias, 0)
                name="classifier",
            )(pooled)
        return out


def densenet121(**kwargs) -> DenseNet:
    """torchvision ``densenet121``: 1024-d features; 6,953,856 parameters (7,978,856 with 1000 classes)."""
    return DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4, **kwargs)
