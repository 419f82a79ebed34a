"""EKD's student objective, exactly as the released code computes it (`methods/free.py:285-373` of
github.com/xmed-lab/FoPro-KD; docs/reference_semantics.md §3.4):

    L = BSM(fc(h), y) + BSM(fc_free(p_free(h)), y) + free_u * mean(2 - 2 cos(p_free(h), f(x)))

with the frozen teacher f in inference mode on the same augmented batch x as the student. BSM is the
reference's choice; any long-tail loss of `losses.make_classification_loss` can take its place (docs/long_tail.md).
FoPro-KD's student minimises the same objective with the prompted teacher's features (`methods/fopro/step.py`).
"""

from typing import Callable, Optional

import jax.numpy as jnp

from foprokd_jax import losses, parallel
from foprokd_jax.methods.student_step import classification_terms, float32_outputs


def ekd_objective(
    out: dict,
    labels,
    cls_loss: Callable,
    free_u: float,
    teacher_feat: jnp.ndarray,
    step=None,
    axis_name: Optional[str] = parallel.DATA_AXIS,
):
    """The EKD loss from the student's outputs (h, z1, p, z2) and the teacher's features. Returns (loss, terms).

    `step` is the optimizer step count (DRW switches weights on it).
    """
    out = float32_outputs(out)
    terms = classification_terms(out, labels, cls_loss, step, axis_name)
    terms["loss_cls_free"] = losses.batch_mean(cls_loss, out["z2"], labels, step, axis_name)
    terms["loss_distill"] = jnp.mean(losses.normalized_feature_distance(out["p"], teacher_feat))
    loss = terms["loss_cls"] + terms["loss_cls_free"] + free_u * terms["loss_distill"]
    return loss, terms
