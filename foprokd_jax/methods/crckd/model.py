"""CRCKD's networks (docs/crckd.md §R2, networks/models.py and utils/CCD_CRP_loss.py of the reference).

* `CrckdNet` (student, and the EMA teacher with the same structure): DenseNet-121 features -> ReLU -> global
  average pool (1024) -> `fc_layer` Linear(1024 -> 128) = feature4 (no activation) -> `classifier`
  Linear(128 -> C). Both Linear layers: torch's default weight init, bias 0 (models.py zeroes every Linear
  bias of the DenseNet wrapper). Dropout is 0 in the reference and omitted; the block-3 and attention side
  branches never reach the loss and are left out (docs/crckd.md §R2).
* `EmbedHead` (`embed_s`, `embed_t`): Linear(128 -> 128) with torch's default weight AND bias init (the
  criterion's heads are outside the wrapper), then L2 normalisation without epsilon (`Normalize(2)`).
"""

import functools
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from foprokd_jax.losses import l2_normalize
from foprokd_jax.models.densenet import DenseNet
from foprokd_jax.models.torch_init import torch_dense, torch_linear_kernel_init


class CrckdNet(nn.Module):
    """DenseNet backbone + fc_layer + classifier; returns {'features': feature4 (B, feat_dim), 'logits'}."""

    num_classes: int
    feat_dim: int = 128
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        backbone = DenseNet(
            growth_rate=self.growth_rate,
            block_config=tuple(self.block_config),
            num_init_features=self.num_init_features,
            bn_size=self.bn_size,
            num_classes=None,
            bn_axis_name=self.bn_axis_name,
            dtype=self.dtype,
            name="densenet",
        )
        pooled = backbone(x, train)["features"]
        feature4 = self._linear(self.feat_dim, "fc_layer")(pooled)
        logits = self._linear(self.num_classes, "classifier")(feature4)
        return {"features": feature4.astype(jnp.float32), "logits": logits.astype(jnp.float32)}

    def _linear(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=torch_linear_kernel_init,
            bias_init=nn.initializers.zeros,
            name=name,
        )


class EmbedHead(nn.Module):
    """`Embed(dim_in, dim_out)`: Linear then L2 normalisation; the projection `Proj` of the paper's figure."""

    dim_in: int = 128
    dim_out: int = 128

    @nn.compact
    def __call__(self, x):
        return l2_normalize(torch_dense(self.dim_out, self.dim_in, name="linear")(x.astype(jnp.float32)))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_variables(module: nn.Module, rng: jax.Array, input_shape: tuple) -> dict:
    """`module.init` on zeros, jitted: one compile per (module, shape), cached across builds (the modules
    are hashable dataclasses), instead of eager op-by-op dispatch."""
    x = jnp.zeros(input_shape, jnp.float32)
    return module.init(rng, x, train=False) if isinstance(module, CrckdNet) else module.init(rng, x)


def init_params(net: CrckdNet, embed: EmbedHead, rng: jax.Array, image_size: int, backbone_variables=None):
    """(trainable params {'net', 'embed_s', 'embed_t'}, student batch_stats, teacher params).

    The teacher is created independently like the reference's `create_model(ema=True)` (its own random
    fc_layer/classifier; the same ImageNet backbone when one is loaded): docs/crckd.md G20. The EMA's first update
    (alpha = 0) makes it an exact copy of the student anyway.
    `backbone_variables`: {'params', 'batch_stats'} of a `DenseNet(num_classes=None)` (ImageNet init).
    """
    student_rng, teacher_rng, embed_s_rng, embed_t_rng = jax.random.split(rng, 4)
    student = _init_variables(net, student_rng, (1, image_size, image_size, 3))
    teacher = _init_variables(net, teacher_rng, (1, image_size, image_size, 3))
    if backbone_variables is not None:
        student = _with_backbone(student, backbone_variables)
        teacher = _with_backbone(teacher, backbone_variables)
    params = {
        "net": student["params"],
        "embed_s": _init_variables(embed, embed_s_rng, (1, embed.dim_in))["params"],
        "embed_t": _init_variables(embed, embed_t_rng, (1, embed.dim_in))["params"],
    }
    return params, student["batch_stats"], teacher["params"]


def _with_backbone(variables: dict, backbone_variables: dict) -> dict:
    """Replaces the 'densenet' subtree of params and batch_stats, checking every shape."""
    out = {}
    for collection in ("params", "batch_stats"):
        target = flax.core.unfreeze(variables[collection]["densenet"])
        loaded = flax.core.unfreeze(backbone_variables.get(collection, {}))
        if jax.tree_util.tree_structure(loaded) != jax.tree_util.tree_structure(target):
            raise ValueError(
                f"DenseNet backbone artifact: its {collection} tree does not match the model "
                "(another architecture, or the ImageNet classifier left in?)"
            )
        for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(target), jax.tree_util.tree_leaves(loaded)):
            if tuple(want.shape) != tuple(got.shape):
                raise ValueError(
                    f"DenseNet backbone artifact: {collection}{jax.tree_util.keystr(path)} has shape "
                    f"{tuple(got.shape)}, the model expects {tuple(want.shape)}"
                )
        out[collection] = dict(variables[collection], densenet=jax.tree.map(jnp.asarray, loaded))
    return out
