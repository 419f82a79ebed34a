"""Hinton et al.'s distillation loss (see the package docstring) from the student's and teacher's logits."""

from typing import Callable

import jax
import jax.numpy as jnp

from foprokd_jax.methods.student_step import classification_terms


def soft_kl(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
    """Per-example KL(softmax(t / tau) || softmax(z / tau)), (B,), in float32."""
    log_p_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)


def hinton_objective(
    out: dict, labels, teacher_logits: jnp.ndarray, cls_loss: Callable, temperature: float, alpha: float, step=None
):
    """(loss, terms) with terms loss_cls (long-tail loss on the labels) and loss_soft (tau^2 * mean KL)."""
    terms = classification_terms(out, labels, cls_loss, step)
    terms["loss_soft"] = temperature**2 * jnp.mean(soft_kl(out["z1"], teacher_logits, temperature))
    loss = (1.0 - alpha) * terms["loss_cls"] + alpha * terms["loss_soft"]
    return loss, terms
