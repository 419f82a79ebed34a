"""The training state: one pytree holding everything that changes during training.

Frozen teachers are deliberately absent: they never change, so they are passed to the step as a separate
replicated argument and never checkpointed (their artifact path and sha256 are recorded instead).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: optimizer steps taken so far
    params: Any  # student parameters
    batch_stats: Any  # student BatchNorm running statistics
    opt_state: optax.OptState  # optimizer state (Adam moments and count)
    # FoPro-KD only (empty otherwise): Fourier prompt + explore-head parameters and their optimizer.
    fpg_params: Any = flax.struct.field(default_factory=dict)
    fpg_opt_state: Any = optax.EmptyState()


def make_optimizer(optim_config) -> optax.GradientTransformation:
    """Global-norm clipping before Adam, over all student parameters (heads included), as the reference.

    Reference (`methods/free.py:123-124,372`): `clip_grad_norm_(params, 5.0)` then `Adam(lr=3e-4,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0)`, constant learning rate.
    """
    parts = []
    if optim_config.clip_norm and optim_config.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_config.clip_norm))
    if optim_config.name != "adam":
        raise ValueError(f"Unknown optimizer {optim_config.name!r}; available: 'adam'.")
    parts.append(optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps))
    if optim_config.weight_decay:
        # torch Adam's weight_decay is L2 added to the gradient before the moments; the reference uses 0.
        raise ValueError("weight_decay > 0 is not supported for torch-style Adam here; the reference uses 0.")
    parts.append(optax.scale(-optim_config.lr))
    return optax.chain(*parts)


def create_train_state(
    variables: dict, optimizer: optax.GradientTransformation, fpg_params: Any = None, fpg_optimizer: Any = None
) -> TrainState:
    params = variables["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
    )
    if fpg_params is not None:
        state = state.replace(fpg_params=fpg_params, fpg_opt_state=fpg_optimizer.init(fpg_params))
    return state


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree, the restore target for Orbax."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)
