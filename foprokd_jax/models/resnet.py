"""ResNet-18/50 in Flax Linen (NHWC) that reproduces torchvision's ``models/resnet.py`` exactly.

Architecture (He et al. 2016, as laid out in torchvision, which is also the MoCo-v2 backbone of
Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"):

  7x7/2 conv (pad 3, no bias) -> BN -> ReLU -> 3x3/2 max-pool (pad 1) -> layer1..layer4 -> GAP [-> fc]

* Bottleneck is the "V1.5" variant torchvision uses: the stride sits on the 3x3 conv, not the first 1x1.
* A block gets a projection shortcut (1x1 conv with the block's stride, then BN) whenever its output
  shape differs from its input shape.
* Every padding is an explicit (lo, hi) pair. ``'SAME'`` pads asymmetrically for stride-2 layers on
  even inputs and would silently break parity with the torch weights (https://github.com/google/flax/issues/963).
* BN uses momentum 0.9 (torch's momentum=0.1 counts the other way) and eps 1e-5.

Parameter names follow torchvision so that porting is a rename (see ``porting/resnet_weights.py``):
``conv1``, ``bn1``, ``fc`` and, per block,
``layer{i}_{j}/{conv1,bn1,conv2,bn2,conv3,bn3,downsample_conv,downsample_bn}``.
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from foprokd_jax.models.torch_init import kaiming_fan_out_normal, torch_dense

# torch.nn.BatchNorm2d(momentum=0.1) updates running = 0.9 * running + 0.1 * batch; Flax's momentum is
# the weight on the old value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _pad(amount: int):
    return ((amount, amount), (amount, amount))


def _make_conv(features, kernel, stride, name, dtype):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=_pad(kernel // 2),  # 7->3, 3->1, 1->0: what torchvision passes for each conv
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_fan_out_normal,
        name=name,
    )


def _make_bn(train, axis_name, name, dtype):
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=jnp.float32,
        # Explicit although it is Flax's default: with a bfloat16 compute dtype the batch mean/variance are
        # still reduced in float32 and the running statistics stored in float32 (mixed precision).
        force_float32_reductions=True,
        scale_init=nn.initializers.ones,
        bias_init=nn.initializers.zeros,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: two 3x3 convs, expansion 1."""

    features: int
    stride: int = 1
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(_make_conv, dtype=self.dtype)
        bn = functools.partial(_make_bn, train, self.bn_axis_name, dtype=self.dtype)
        out_features = self.features * self.expansion

        y = conv(self.features, 3, self.stride, "conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.features, 3, 1, "conv2")(y)
        y = bn("bn2")(y)

        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = conv(out_features, 1, self.stride, "downsample_conv")(x)
            shortcut = bn("downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (V1.5): 1x1 reduce, 3x3 with the stride, 1x1 expand (x4)."""

    features: int
    stride: int = 1
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(_make_conv, dtype=self.dtype)
        bn = functools.partial(_make_bn, train, self.bn_axis_name, dtype=self.dtype)
        out_features = self.features * self.expansion

        y = conv(self.features, 1, 1, "conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.features, 3, self.stride, "conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = conv(out_features, 1, 1, "conv3")(y)
        y = bn("bn3")(y)

        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = conv(out_features, 1, self.stride, "downsample_conv")(x)
            shortcut = bn("downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision-layout ResNet returning a feature dict.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
      block: 'basic' or 'bottleneck'.
      width: channels of the stem and of stage 1 (64 in torchvision); stage i has width * 2**(i-1).
      num_classes: adds the ``fc`` classifier and a ``'logits'`` output when set.
      bn_axis_name: mesh axis to average BN batch statistics over (synchronised BN under shard_map).
      dtype: compute dtype (float32, or bfloat16 on GPU/TPU). Parameters and BN statistics are always
        float32; ``'pre_logits'`` is pooled and returned in float32, the stem/stage maps and ``'logits'`` are in
        ``dtype``.

    ``__call__(x, train)`` takes an already-normalised float batch (B, H, W, 3) and returns
    ``{'stem', 'stage1'..'stage4', 'pre_logits'[, 'logits']}``. ``'stem'`` is the max-pool output
    (the input of layer1) and ``'pre_logits'`` the globally average-pooled final stage, shape (B, C):
    the feature torchvision exposes once ``fc`` is replaced by ``Identity`` (the MoCo-v2 teacher
    feature of docs/reference_semantics.md §6).
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    width: int = 64
    num_classes: Optional[int] = None
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        """Width of ``pre_logits``: 512 for ResNet-18, 2048 for ResNet-50 (at width 64)."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * BLOCKS[self.block].expansion

    @nn.compact
    def __call__(self, x, train: bool) -> Dict[str, jnp.ndarray]:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r}; expected one of {sorted(BLOCKS)}")
        block_cls = BLOCKS[self.block]
        features = {}

        x = jnp.asarray(x, self.dtype)
        x = _make_conv(self.width, 7, 2, "conv1", self.dtype)(x)
        x = _make_bn(train, self.bn_axis_name, "bn1", self.dtype)(x)
        x = nn.relu(x)
        # flax's max_pool pads with -inf (the reduction's identity), like torch's MaxPool2d(3, 2, 1).
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(1))
        features["stem"] = x

        for stage_index, num_blocks in enumerate(self.stage_sizes):
            stage_width = self.width * 2**stage_index
            for block_index in range(num_blocks):
                # torchvision strides the first block of every stage except layer1.
                stride = 2 if (stage_index > 0 and block_index == 0) else 1
                x = block_cls(
                    features=stage_width,
                    stride=stride,
                    bn_axis_name=self.bn_axis_name,
                    dtype=self.dtype,
                    name=f"layer{stage_index + 1}_{block_index}",
                )(x, train)
            features[f"stage{stage_index + 1}"] = x

        # Pool in float32: the feature handed to heads and losses is float32 whatever the compute dtype
        # (a no-op cast for float32 models, so the float32 path is unchanged).
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features["pre_logits"] = pooled
        if self.num_classes is not None:
            # In the compute dtype: this torchvision fc only serves ported classifiers, never a loss (the
            # student's heads live in EKDStudent, which returns float32).
            features["logits"] = torch_dense(self.num_classes, pooled.shape[-1], name="fc", dtype=self.dtype)(pooled)
        return features


def resnet18(**kwargs) -> ResNet:
    """torchvision ``resnet18`` layout: 11,176,512 trunk parameters (11,689,512 with a 1000-way fc)."""
    return ResNet(stage_sizes=(2, 2, 2, 2), block="basic", **kwargs)


def resnet50(**kwargs) -> ResNet:
    """torchvision ``resnet50`` layout: 23,508,032 trunk parameters (25,557,032 with a 1000-way fc)."""
    return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", **kwargs)


_REGISTRY: Dict[str, Callable[..., ResNet]] = {"resnet18": resnet18, "resnet50": resnet50}


def get_resnet(name: str, /, **kwargs) -> ResNet:
    """Build a ResNet by torchvision name ('resnet18' or 'resnet50')."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown ResNet {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
