"""The CRCKD train step (docs/crckd.md §R3-§R6, §R12) and the student's predict step, compiled data-parallel.

One step, per device (a `jax.shard_map` over 'data' under `jax.jit`, `parallel.data_parallel`):
1. EMA teacher on its own view, train-mode BN over the GLOBAL batch (bn_axis_name), no gradient; its
   updated BN statistics are discarded (docs/crckd.md G13).
2. Student forward; g_s = embed_s(f_s), g_t = embed_t(sg f_t) (only embed_t learns from L_CCD^T, G10).
3. CCD scores against the PRE-update memories of the other network, Z set on the first step from the
   global mean; NCE with P positives (`losses.nce_loss_per_example`).
4. Memory update with the embeddings and indices of the whole global batch (all_gather, tiled): every
   device applies the same update, so the banks do not depend on the device count (G8).
5. CRP against class centroids of the UPDATED memories; mean-teacher KL; class-weighted CE whose
   numerator and denominator are summed over the global batch (G12).
6. Staged weights from the traced epoch = step // steps_per_epoch (no recompilation), gradients averaged
   with pmean, coupled-L2 Adam, then the EMA with alpha = min(1 - 1/(step + 1), decay).
"""

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from foprokd_jax import image_norm, parallel
from foprokd_jax.methods.crckd import losses, memory_bank, schedule
from foprokd_jax.methods.crckd.state import CrckdState

AXIS = parallel.DATA_AXIS


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step (a change recompiles, a new epoch does not)."""

    num_classes: int
    n_data: int  # memory rows; also the N of the noise constant K/N and of Z
    steps_per_epoch: int
    weights: schedule.LossWeights
    one_cycle: schedule.OneCycle  # only to log the LR/beta1 the optimiser uses at this step
    nce_p: int = 20
    nce_t: float = 0.07
    nce_m: float = 0.5
    crp_relu_centroids: bool = True
    ema_decay: float = 0.99


def _ema(teacher, student, alpha):
    return jax.tree.map(lambda t, s: alpha * t + (1.0 - alpha) * s, teacher, student)


def crckd_objective(
    params,
    state: CrckdState,
    frozen: dict,
    batch: dict,
    teacher_out: dict,
    *,
    net: nn.Module,
    embed: nn.Module,
    cfg: StepConfig,
):
    """The per-device objective; returns (loss, aux). aux: 'terms' (scalars), 'batch_stats' (student's new
    BN statistics), 'banks' (updated M_s, M_t), 'z' (Z_s, Z_t), 'embeddings' (g_s, g_t) and 'logits'
    (student, teacher) of this shard.

    Every term is a mean over this device's shard (equal shards), except the weighted CE whose global
    denominator is psum'ed: the pmean over devices of this loss is exactly the global-batch objective.
    """
    sg = jax.lax.stop_gradient
    x = image_norm.normalize_uint8(batch["image"])
    labels = batch["label"].astype(jnp.int32)
    contrast_idx = batch["contrast_idx"].astype(jnp.int32)
    out, mutated = net.apply(
        {"params": params["net"], "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    g_s = embed.apply({"params": params["embed_s"]}, out["features"])
    g_t = embed.apply({"params": params["embed_t"]}, teacher_out["features"])

    # CCD on the pre-update memories (constants): student anchors vs M_t, teacher anchors vs M_s.
    e_s = losses.contrast_exp_scores(g_s, sg(state.mem_t[contrast_idx]), cfg.nce_t)
    e_t = losses.contrast_exp_scores(g_t, sg(state.mem_s[contrast_idx]), cfg.nce_t)
    z_s = memory_bank.normalisation_constant(state.z_s, parallel.pmean(jnp.mean(sg(e_s))), cfg.n_data)
    z_t = memory_bank.normalisation_constant(state.z_t, parallel.pmean(jnp.mean(sg(e_t))), cfg.n_data)
    ccd_s = jnp.mean(losses.nce_loss_per_example(e_s / z_s, cfg.nce_p, cfg.n_data))
    ccd_t = jnp.mean(losses.nce_loss_per_example(e_t / z_t, cfg.nce_p, cfg.n_data))

    # Memory update with the whole global batch, then CRP on the updated banks' class centroids.
    all_index = jax.lax.all_gather(batch["index"].astype(jnp.int32), AXIS, tiled=True)
    mem_s = memory_bank.momentum_update(
        state.mem_s, all_index, jax.lax.all_gather(sg(g_s), AXIS, tiled=True), cfg.nce_m
    )
    mem_t = memory_bank.momentum_update(
        state.mem_t, all_index, jax.lax.all_gather(sg(g_t), AXIS, tiled=True), cfg.nce_m
    )
    train_labels = frozen["train_labels"]
    centroids_s = sg(losses.class_centroids(mem_s, train_labels, cfg.num_classes, cfg.crp_relu_centroids))
    centroids_t = sg(losses.class_centroids(mem_t, train_labels, cfg.num_classes, cfg.crp_relu_centroids))
    crp = jnp.mean(losses.crp_loss_per_example(g_s, sg(g_t), centroids_s, centroids_t, cfg.nce_t))

    kl = jnp.mean(losses.mean_teacher_kl_per_example(out["logits"], teacher_out["logits"]))
    ce_num, ce_w = losses.weighted_ce_terms(out["logits"], labels, frozen["class_weights"])
    num_devices = jax.lax.psum(1, AXIS)
    ce = jnp.sum(ce_num) * num_devices / parallel.psum(jnp.sum(ce_w))

    w = cfg.weights(state.step // cfg.steps_per_epoch)
    loss = w["ce"] * ce + w["ccd"] * (ccd_s + ccd_t) + w["kl"] * kl + w["crp"] * crp
    terms = {
        "loss": loss,
        "loss_ce": ce,
        "loss_ccd": ccd_s + ccd_t,
        "loss_ccd_s": ccd_s,
        "loss_ccd_t": ccd_t,
        "loss_crp": crp,
        "loss_kl": kl,
        "train_accuracy": jnp.mean((jnp.argmax(out["logits"], -1) == labels).astype(jnp.float32)),
    }
    terms.update({f"weight_{k}": v for k, v in w.items() if k != "ce"})
    return loss, {
        "terms": terms,
        "batch_stats": mutated["batch_stats"],
        "banks": (mem_s, mem_t),
        "z": (z_s, z_t),
        "embeddings": (g_s, g_t),
        "logits": (out["logits"], teacher_out["logits"]),
    }


def make_train_step(
    *,
    net: nn.Module,
    embed: nn.Module,
    optimizer: optax.GradientTransformation,
    cfg: StepConfig,
    mesh,
    donate: bool = True,
) -> Callable:
    """`train_step(state, frozen, batch) -> (state, metrics)`; frozen = {'train_labels', 'class_weights'}.

    batch (global, sharded on 'data'): image, image_teacher uint8 (B, S, S, 3); label, index int32 (B,);
    contrast_idx int32 (B, P + K) (crckd/data.py).
    """
    grad_fn = jax.value_and_grad(crckd_objective, has_aux=True)

    def per_device_step(state: CrckdState, frozen, batch):
        x_t = image_norm.normalize_uint8(batch["image_teacher"])
        # Train-mode BN on the teacher's own (global) batch; the running stats it would write are dropped.
        teacher_out, _ = net.apply(
            {"params": state.teacher_params, "batch_stats": state.batch_stats}, x_t, train=True, mutable=["batch_stats"]
        )
        teacher_out = jax.lax.stop_gradient(teacher_out)
        (_, aux), grads = grad_fn(state.params, state, frozen, batch, teacher_out, net=net, embed=embed, cfg=cfg)
        (mem_s, mem_t), (z_s, z_t) = aux["banks"], aux["z"]
        grads = parallel.pmean(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        alpha = schedule.ema_alpha(state.step, cfg.ema_decay)
        teacher_params = _ema(state.teacher_params, params["net"], alpha)
        metrics = parallel.pmean(aux["terms"])
        metrics.update(
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            ema_alpha=alpha,
            lr=cfg.one_cycle.learning_rate(state.step),
            beta1=cfg.one_cycle.beta1(state.step),
            z_s=z_s,
            z_t=z_t,
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=aux["batch_stats"],
            opt_state=opt_state,
            teacher_params=teacher_params,
            mem_s=mem_s,
            mem_t=mem_t,
            z_s=z_s,
            z_t=z_t,
        )
        return new_state, metrics

    return parallel.data_parallel(per_device_step, mesh, num_replicated=2, num_sharded=1, donate_first=donate)


def make_predict_step(net: nn.Module, mesh) -> Callable:
    """`predict_step(state, batch) -> logits (B, C)`: the STUDENT in eval mode (docs/crckd.md §R9), gathered."""

    def per_device_predict(state: CrckdState, batch):
        x = image_norm.normalize_uint8(batch["image"])
        out = net.apply({"params": state.params["net"], "batch_stats": state.batch_stats}, x, train=False)
        return jax.lax.all_gather(out["logits"].astype(jnp.float32), AXIS, tiled=True)

    return parallel.data_parallel(per_device_predict, mesh, num_replicated=1, num_sharded=1)
