"""CRCKD's training state: everything that changes during training, checkpointed as one pytree.

Unlike the reference (docs/crckd.md §R9), the memory banks and the Z constants are part of the checkpoint, so a
resumed run continues exactly where it stopped.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from foprokd_jax.methods.crckd import memory_bank


@flax.struct.dataclass
class CrckdState:
    step: jnp.ndarray  # int32 scalar: optimizer steps taken (the EMA and every schedule read it)
    params: Any  # trainable: {'net': student DenseNet+fc+classifier, 'embed_s', 'embed_t'}
    batch_stats: Any  # student BN running statistics (the teacher's train-mode ones are discarded)
    opt_state: optax.OptState  # coupled-L2 Adam moments + schedule counts
    teacher_params: Any  # mean teacher: EMA of params['net'] (BN statistics are not averaged, docs/crckd.md §R3)
    mem_s: jnp.ndarray  # float32 (n_data, feat_dim): student-embedding memory (memory_v1)
    mem_t: jnp.ndarray  # float32 (n_data, feat_dim): teacher-embedding memory (memory_v2)
    z_s: jnp.ndarray  # float32 scalar: Z of the student-anchor scores; < 0 until the first step
    z_t: jnp.ndarray  # float32 scalar: Z of the teacher-anchor scores


def create_state(
    params,
    batch_stats,
    teacher_params,
    optimizer: optax.GradientTransformation,
    *,
    bank_rng: jax.Array,
    n_data: int,
    feat_dim: int,
    z_s: float = -1.0,
    z_t: float = -1.0,
) -> CrckdState:
    """Initial state; `z_s`/`z_t` > 0 fix the constants instead of setting them on the first step."""
    rng_s, rng_t = jax.random.split(bank_rng)
    return CrckdState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=optimizer.init(params),
        teacher_params=teacher_params,
        mem_s=memory_bank.init_bank(rng_s, n_data, feat_dim),
        mem_t=memory_bank.init_bank(rng_t, n_data, feat_dim),
        z_s=jnp.asarray(z_s, jnp.float32),
        z_t=jnp.asarray(z_t, jnp.float32),
    )
