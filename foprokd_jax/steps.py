"""Pure per-device train and eval steps for the 'bsm' and 'ekd' methods.

A step is a pure function of (state, frozen teacher variables, batch shard). `make_*_step` closes over
the static pieces (models, loss functions, optimizer) and compiles the step with
`parallel.data_parallel`: a `jax.shard_map` over the 'data' mesh under `jax.jit`, gradients and metrics
averaged with `lax.pmean`, student BatchNorm statistics synchronised through `bn_axis_name='data'`.

EKD follows the released code exactly (`methods/free.py:285-373`, spec §3.4):
    L = BSM(fc(h), y) + BSM(fc_free(p_free(h)), y) + free_u * mean(2 - 2 cos(p_free(h), f(x)))
with the frozen teacher f in inference mode on the same augmented batch x as the student. BSM is the
reference's choice; any long-tail loss of `losses.make_classification_loss` can take its place (spec §5).
"""
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from foprokd_jax import image_norm, losses, metrics, parallel
from foprokd_jax.state import TrainState

METHODS = ("bsm", "ekd")


def normalize_images(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 NHWC -> ImageNet-normalised floats. The pipeline ships uint8 (4x less host-to-device traffic)."""
    return image_norm.normalize_uint8(images, dtype)


def teacher_features(teacher: nn.Module, teacher_vars: dict, x: jnp.ndarray, feature_key: str) -> jnp.ndarray:
    """The frozen teacher's embedding in inference mode (BN running stats), with no gradient to it."""
    out = teacher.apply(teacher_vars, x, train=False)
    return jax.lax.stop_gradient(out[feature_key].astype(jnp.float32))


def float32_outputs(out: dict) -> dict:
    """Model outputs cast to float32, so that losses never run in a bfloat16 compute dtype (no-op in float32)."""
    return {name: value.astype(jnp.float32) for name, value in out.items()}


def student_objective(out: dict, labels, cls_loss: Callable, free_u: float,
                      teacher_feat: Optional[jnp.ndarray], step=None, axis_name: Optional[str] = parallel.DATA_AXIS):
    """The student's loss from its outputs: the long-tail loss on fc, plus (with a teacher) the EKD terms (§3.4).

    `teacher_feat=None` is the BSM-only baseline. Shared by the 'bsm'/'ekd' step and the FoPro-KD step
    (where the teacher sees the prompted image). `cls_loss(logits, labels, step)` is a
    `losses.make_classification_loss` loss, reduced by `losses.batch_mean` (a weighted loss is normalised by
    its weights summed over the global batch across `axis_name`). `step` is the optimizer step count (DRW).
    Returns (loss, terms).
    """
    out = float32_outputs(out)

    def cls_term(logits):
        return losses.batch_mean(cls_loss, logits, labels, step, axis_name)

    terms = {"loss_cls": cls_term(out["z1"])}
    loss = terms["loss_cls"]
    if teacher_feat is not None:
        terms["loss_cls_free"] = cls_term(out["z2"])
        terms["loss_distill"] = jnp.mean(losses.normalized_feature_distance(out["p"], teacher_feat))
        loss = loss + terms["loss_cls_free"] + free_u * terms["loss_distill"]
    return loss, terms


def train_loss(params, batch_stats, student: nn.Module, x, labels, cls_loss: Callable,
               method: str, free_u: float, teacher_feat: Optional[jnp.ndarray], step=None):
    """The per-device training objective. Returns (loss, (loss terms, new batch_stats, fc logits))."""
    out, mutated = student.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                 mutable=["batch_stats"])
    loss, terms = student_objective(out, labels, cls_loss, free_u, teacher_feat if method == "ekd" else None,
                                    step)
    return loss, (terms, mutated["batch_stats"], out["z1"])


def make_train_step(*, student: nn.Module, teacher: Optional[nn.Module], cls_loss: Callable,
                    optimizer: optax.GradientTransformation, method: str, free_u: float,
                    teacher_feature_key: str, mesh, donate: bool = True) -> Callable:
    """Builds `train_step(state, teacher_vars, batch) -> (state, metrics)`, compiled data-parallel.

    `batch` holds global arrays sharded along 'data': `image` uint8 (B,H,W,3) and `label` int32 (B,).
    For 'bsm', `teacher_vars` is ignored (pass an empty dict). `cls_loss(logits, labels, step)` gets the
    traced `state.step` (steps done before this one), so DRW switches weights without recompiling.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {METHODS}")
    if method == "ekd" and teacher is None:
        raise ValueError("method 'ekd' needs a teacher")

    def per_device_step(state: TrainState, teacher_vars, batch):
        x = normalize_images(batch["image"])
        labels = batch["label"].astype(jnp.int32)
        teacher_feat = (teacher_features(teacher, teacher_vars, x, teacher_feature_key)
                        if method == "ekd" else None)
        grad_fn = jax.value_and_grad(train_loss, has_aux=True)
        (loss, (terms, new_batch_stats, logits)), grads = grad_fn(
            state.params, state.batch_stats, student, x, labels, cls_loss, method, free_u, teacher_feat,
            state.step)
        # The per-device loss is a mean over an equal-sized shard, so the mean over devices of the
        # gradients is the gradient of the global-batch mean: the pmap-era recipe, device-count free.
        grads = parallel.pmean(grads)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        step_metrics = dict(terms, loss=loss,
                            train_accuracy=jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)))
        step_metrics = parallel.pmean(step_metrics)
        step_metrics["grad_norm"] = optax.tree.norm(grads)
        step_metrics["param_norm"] = optax.tree.norm(new_params)
        new_state = state.replace(step=state.step + 1, params=new_params, batch_stats=new_batch_stats,
                                  opt_state=new_opt_state)
        return new_state, step_metrics

    return parallel.data_parallel(per_device_step, mesh, num_replicated=2, num_sharded=1, donate_first=donate)


def make_eval_step(*, student: nn.Module, num_classes: int, mesh) -> Callable:
    """Builds `eval_step(state, batch) -> confusion (C, C)`: raw `fc` logits, argmax, masked counts.

    Evaluation uses the raw logits without the Balanced-Softmax prior (spec §13.7); padded examples
    (mask 0) are not counted, so every real example counts exactly once.
    """
    def per_device_eval(state: TrainState, batch):
        x = normalize_images(batch["image"])
        out = student.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
        confusion = metrics.confusion_update(jnp.zeros((num_classes, num_classes), jnp.int32), out["z1"],
                                             batch["label"].astype(jnp.int32), batch["mask"])
        return parallel.psum(confusion)

    return parallel.data_parallel(per_device_eval, mesh, num_replicated=1, num_sharded=1)
