"""PyTorch-default initialisers for Flax layers.

A from-scratch student has to start from the same distribution as the reference PyTorch code,
otherwise training dynamics (and results) drift (docs/reference_semantics.md §7 and §13.10):

* torchvision ResNets initialise every conv with ``kaiming_normal_(mode='fan_out',
  nonlinearity='relu')``: an *untruncated* normal with std ``sqrt(2 / fan_out)``, where
  ``fan_out = out_channels * kh * kw`` (torchvision ``models/resnet.py``).
* ``torch.nn.Linear`` (and therefore every head) uses ``kaiming_uniform_(a=sqrt(5))`` for the weight,
  which works out to U(-1/sqrt(fan_in), +1/sqrt(fan_in)), and the same bound for the bias
  (``torch/nn/modules/linear.py: reset_parameters``).

Flax's defaults differ (lecun_normal kernels, zero biases), hence these helpers.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# jax's 'normal' distribution in variance_scaling is a plain (untruncated) normal; 'truncated_normal'
# is the truncated one. For a HWIO conv kernel, jax computes fan_out = O * kh * kw, as torch does.
kaiming_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _uniform_symmetric(key, shape, dtype, bound):
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
    """Initialise a Flax Dense kernel of shape (fan_in, fan_out) like torch.nn.Linear's weight.

    torch draws weight ~ U(±1/sqrt(fan_in)); the Flax kernel is the transposed weight, so fan_in is
    the first axis here.
    """
    fan_in = shape[0]
    return _uniform_symmetric(key, shape, dtype, 1.0 / math.sqrt(fan_in))


def torch_linear_bias_init(fan_in: int):
    """Return a bias initialiser matching torch.nn.Linear: U(±1/sqrt(fan_in)).

    The bias shape alone does not tell us the layer's input width, so it has to be bound here.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return _uniform_symmetric(key, shape, dtype, bound)

    return init


def torch_dense(features: int, fan_in: int, name: Optional[str] = None, dtype: Any = jnp.float32):
    """An ``nn.Dense`` initialised like ``torch.nn.Linear(fan_in, features)``; params stay float32."""
    return nn.Dense(
        features,
        use_bias=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=torch_linear_kernel_init,
        bias_init=torch_linear_bias_init(fan_in),
        name=name,
    )
