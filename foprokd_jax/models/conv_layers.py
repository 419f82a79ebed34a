"""Conv / BatchNorm / activation building blocks shared by the torchvision-layout mobile students.

MobileNetV3 and EfficientNet (``models/mobilenet_v3.py``, ``models/efficientnet.py``) are built from
torchvision's ``Conv2dNormActivation`` (conv without bias -> BatchNorm -> optional activation) and a
squeeze-excitation block. These helpers reproduce them so the Flax modules match torchvision
(``torchvision/ops/misc.py``, https://github.com/pytorch/vision) to float32 rounding:

* padding is ``(kernel - 1) // 2`` on both sides, given as explicit (lo, hi) pairs: ``'SAME'`` pads
  asymmetrically for stride-2 layers on even inputs and would break parity with the torch weights;
* depthwise convs are grouped convs (``feature_group_count``), kernel HWIO with I = in / groups, which
  is torch's OIHW weight transposed;
* every conv is initialised like torchvision's model constructors do: ``kaiming_normal_(mode='fan_out')``
  (untruncated), zero bias;
* BatchNorm is ``flax.linen.BatchNorm`` with the same arguments as ``models/resnet.py``'s (only momentum
  and epsilon vary per architecture), so the whole family changes together in one place.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from foprokd_jax.models.torch_init import kaiming_fan_out_normal


def torch_to_flax_momentum(torch_momentum: float) -> float:
    """torch's BatchNorm momentum weighs the new batch; Flax's weighs the old running value."""
    return 1.0 - torch_momentum


def conv2d(
    features: int, kernel: int, stride: int, name: str, dtype: Any, groups: int = 1, use_bias: bool = False
) -> nn.Conv:
    """``torch.nn.Conv2d(..., padding=(kernel - 1) // 2, groups=groups)`` with torchvision's model init."""
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_fan_out_normal,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def batch_norm(
    train: bool, axis_name: Optional[str], name: str, dtype: Any, momentum: float, epsilon: float
) -> nn.BatchNorm:
    """The BatchNorm of ``models/resnet.py`` with a given (Flax) momentum and epsilon."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=jnp.float32,
        # float32 batch/running statistics under a bfloat16 compute dtype (mixed precision)
        force_float32_reductions=True,
        scale_init=nn.initializers.ones,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def hard_sigmoid(x):
    """``torch.nn.Hardsigmoid``: relu6(x + 3) / 6."""
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x):
    """``torch.nn.Hardswish``: x * relu6(x + 3) / 6."""
    return x * hard_sigmoid(x)


ACTIVATIONS = {"relu": nn.relu, "hardswish": hard_swish, "silu": nn.silu, None: lambda x: x}


class ConvBNAct(nn.Module):
    """torchvision ``Conv2dNormActivation``: conv (no bias) -> BatchNorm -> activation (or none).

    Submodules are ``conv`` and ``bn``: torch's ``<prefix>.0`` and ``<prefix>.1``.
    """

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    activation: Optional[str] = "relu"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = conv2d(self.features, self.kernel, self.stride, "conv", self.dtype, groups=self.groups)(x)
        x = batch_norm(train, self.bn_axis_name, "bn", self.dtype, self.bn_momentum, self.bn_epsilon)(x)
        return ACTIVATIONS[self.activation](x)


class SqueezeExcitation(nn.Module):
    """torchvision ``ops.SqueezeExcitation``: x * gate(fc2(act(fc1(mean_hw(x))))), fc1/fc2 biased 1x1 convs.

    MobileNetV3 uses ReLU + Hardsigmoid, EfficientNet SiLU + Sigmoid.
    """

    squeeze_features: int
    activation: str = "relu"
    gate: str = "hard_sigmoid"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)  # AdaptiveAvgPool2d(1)
        scale = conv2d(self.squeeze_features, 1, 1, "fc1", self.dtype, use_bias=True)(scale)
        scale = ACTIVATIONS[self.activation](scale)
        scale = conv2d(x.shape[-1], 1, 1, "fc2", self.dtype, use_bias=True)(scale)
        scale = hard_sigmoid(scale) if self.gate == "hard_sigmoid" else nn.sigmoid(scale)
        return x * scale
