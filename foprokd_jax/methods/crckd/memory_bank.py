"""The two CCD memory banks (student embeddings M_s, teacher embeddings M_t) and their update rule.

docs/crckd.md §R4.1 and §R4.5 (`ContrastMemory` in utils/memory.py): rows start i.i.d. U(-s, s) with s = 1/sqrt(D/3);
after the scores of a step are computed, the rows of the batch's samples become
`normalize(m * old + (1 - m) * new)` with m = nce_m = 0.5.

Data parallelism: the update is applied to the embeddings of the WHOLE global batch (gathered over the
'data' axis by the step), so every device holds the same banks whatever the device count.

Duplicate indices in one global batch (impossible with one pass over the data per epoch, but possible with a
re-sampling input pipeline) follow one deterministic rule: the LAST occurrence in global-batch order wins,
and its update starts from the pre-step row (updates are not chained). This is what a sequential
`index_copy_` does on CPU; on CUDA the reference's winner is unspecified.
"""

import math

import jax
import jax.numpy as jnp

from foprokd_jax.losses import l2_normalize


def init_bank(rng: jax.Array, num_rows: int, dim: int) -> jnp.ndarray:
    """U(-s, s) rows, s = 1/sqrt(dim/3): each row has an expected norm of about 1 (not normalised)."""
    bound = 1.0 / math.sqrt(dim / 3.0)
    return jax.random.uniform(rng, (num_rows, dim), jnp.float32, minval=-bound, maxval=bound)


def last_occurrence_mask(indices: jnp.ndarray) -> jnp.ndarray:
    """True where no LATER position of `indices` (B,) holds the same value. O(B^2), B = global batch."""
    same = indices[:, None] == indices[None, :]
    later = jnp.triu(jnp.ones(same.shape, bool), k=1)
    return ~jnp.any(same & later, axis=1)


def momentum_update(memory: jnp.ndarray, indices: jnp.ndarray, new_rows: jnp.ndarray, momentum: float) -> jnp.ndarray:
    """memory[i] <- normalize(m * memory[i] + (1 - m) * new) for every i in `indices` (no gradient).

    `indices` (B,) and `new_rows` (B, D) are the global batch; duplicates: last occurrence wins (module doc).
    """
    new_rows = jax.lax.stop_gradient(new_rows.astype(memory.dtype))
    updated = l2_normalize(momentum * memory[indices] + (1.0 - momentum) * new_rows)
    # Earlier duplicates are sent out of bounds and dropped, so the scatter has unique indices.
    keep = last_occurrence_mask(indices)
    targets = jnp.where(keep, indices, memory.shape[0])
    return memory.at[targets].set(updated, mode="drop", unique_indices=False)


def normalisation_constant(current_z: jnp.ndarray, mean_score: jnp.ndarray, n_data: int) -> jnp.ndarray:
    """Z: kept once set (> 0); on the first step (Z < 0) it becomes mean(exp scores) * n_data (docs/crckd.md §R4.3).

    `mean_score` must be the mean over the GLOBAL batch (the step passes a pmean); no gradient flows.
    """
    first = jax.lax.stop_gradient(mean_score) * float(n_data)
    return jnp.where(current_z < 0, first, current_z).astype(jnp.float32)
