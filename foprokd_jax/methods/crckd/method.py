"""`build(config, mesh, dataset, steps_per_epoch) -> MethodParts`: CRCKD behind the method interface.

Registered in `foprokd_jax/methods/__init__.py`. Reads `config.crckd.*` (`methods/crckd/config.py`,
docs/crckd.md), `config.input.{batch_size, image_size, worker_count, sampler}`, `config.seed`,
`config.total_epochs` / `config.total_steps` (the one-cycle length). The evaluated model is the student
(docs/crckd.md §R9); the EMA teacher, the memory banks and Z live in the checkpointed state.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax import parallel
from foprokd_jax.export import StudentSpec
from foprokd_jax.methods.crckd import data as crckd_data
from foprokd_jax.methods.crckd import losses, model, schedule, step
from foprokd_jax.methods.crckd.optimizer import make_optimizer
from foprokd_jax.methods.crckd.state import create_state
from foprokd_jax.methods.parts import MethodParts


def _n_data(cfg, n_train: int, counts: np.ndarray) -> int:
    """config.crckd.n_data resolved and checked against the dataset (the static checks are `config.validate`)."""
    n_data = n_train if cfg.n_data <= 0 else int(cfg.n_data)
    if n_data < n_train:
        # The reference crashes with a CUDA index error here (docs/crckd.md G5); refuse clearly instead.
        raise ValueError(
            f"config.crckd.n_data={cfg.n_data} is smaller than the {n_train} training examples: "
            "every example needs a memory slot (use -1 for the training-set size)"
        )
    if cfg.ce_class_weights == "inverse_frequency" and np.any(counts == 0):
        raise ValueError(
            f"class(es) {np.flatnonzero(counts == 0).tolist()} have no training example: inverse-"
            "frequency CE weights are undefined (config.crckd.ce_class_weights='none')"
        )
    return n_data


def _backbone_variables(cfg):
    """(DenseNet-121 ImageNet variables without the classifier, their sha256), or (None, None) for random init.

    The artifact's sha256 is verified on load (porting/artifact.py) and recorded in the run's metadata.
    """
    if not cfg.backbone_init:
        return None, None
    from foprokd_jax.porting import artifact
    from foprokd_jax.porting.densenet_weights import load_densenet_variables

    variables = load_densenet_variables(cfg.backbone_init, arch="densenet121", keep_classifier=False)
    with open(artifact.sidecar_path(cfg.backbone_init), encoding="utf-8") as handle:
        return variables, json.load(handle)["sha256"]


def build(config, mesh, dataset, steps_per_epoch: int) -> MethodParts:
    """Networks, replicated initial state, compiled train/predict steps and the two-view training stream.

    frozen = {'train_labels': int32 (N,), 'class_weights': float32 (C,)} (constants of the CRP centroids and
    the weighted CE), replicated on the mesh.
    """
    cfg = config.crckd
    train_labels = np.asarray(dataset.train_labels, np.int64)
    n_train = len(dataset.sources["train"])
    if len(train_labels) != n_train:
        raise ValueError(f"{dataset.name}: {len(train_labels)} train_labels for {n_train} training examples")
    counts = dataset.train_counts
    n_data = _n_data(cfg, n_train, counts)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
    total_steps = config.total_steps if config.total_steps > 0 else config.total_epochs * steps_per_epoch

    net = model.CrckdNet(
        num_classes=dataset.num_classes,
        feat_dim=cfg.feat_dim,
        growth_rate=cfg.growth_rate,
        block_config=tuple(cfg.block_config),
        num_init_features=cfg.num_init_features,
        bn_size=cfg.bn_size,
        bn_axis_name=parallel.DATA_AXIS,
    )
    embed = model.EmbedHead(cfg.feat_dim, cfg.feat_dim)
    one_cycle = schedule.OneCycle(
        total_steps=total_steps,
        max_lr=cfg.optim.max_lr,
        pct_start=cfg.optim.pct_start,
        div_factor=cfg.optim.div_factor,
        final_div_factor=cfg.optim.final_div_factor,
        base_momentum=cfg.optim.base_momentum,
        max_momentum=cfg.optim.max_momentum,
        steps_per_epoch=steps_per_epoch,
        epoch_start_lr=cfg.optim.epoch_start_lr,
    )
    optimizer = make_optimizer(one_cycle, weight_decay=cfg.optim.weight_decay, b2=cfg.optim.b2, eps=cfg.optim.eps)

    init_rng, bank_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    backbone, backbone_sha256 = _backbone_variables(cfg)
    params, batch_stats, teacher_params = model.init_params(net, embed, init_rng, config.input.image_size, backbone)
    if cfg.teacher_init == "student":
        teacher_params = jax.tree.map(jnp.array, params["net"])
    state = create_state(
        params,
        batch_stats,
        teacher_params,
        optimizer,
        bank_rng=bank_rng,
        n_data=n_data,
        feat_dim=cfg.feat_dim,
        z_s=cfg.z_s,
        z_t=cfg.z_t,
    )

    weights = schedule.LossWeights(
        ccd_weight_pre=cfg.ccd_weight_pre,
        ccd_weight_post=cfg.ccd_weight_post,
        crp_weight=cfg.crp_weight,
        consistency=cfg.consistency,
        consistency_rampup_epochs=cfg.consistency_rampup_epochs,
        begin_distill_epoch=cfg.begin_distill_epoch,
    )
    step_cfg = step.StepConfig(
        num_classes=dataset.num_classes,
        n_data=n_data,
        steps_per_epoch=steps_per_epoch,
        weights=weights,
        one_cycle=one_cycle,
        nce_p=cfg.nce_p,
        nce_t=cfg.nce_t,
        nce_m=cfg.nce_m,
        crp_relu_centroids=cfg.crp_relu_centroids,
        ema_decay=cfg.ema_decay,
    )
    class_weights = (
        losses.inverse_frequency_weights(counts)
        if cfg.ce_class_weights == "inverse_frequency"
        else jnp.ones((dataset.num_classes,), jnp.float32)
    )
    frozen = {"train_labels": jnp.asarray(train_labels, jnp.int32), "class_weights": class_weights}

    sampler = crckd_data.ContrastSampler(
        train_labels, dataset.num_classes, cfg.nce_p, cfg.nce_k, cfg.positive_mode, cfg.negative_mode
    )
    transform = crckd_data.TwoViewTransform(
        sampler,
        degrees=cfg.augment_degrees,
        translate=cfg.augment_translate,
        teacher_rot_flip=cfg.teacher_rot_flip,
        augment=cfg.augment,
    )
    train_iterator = crckd_data.make_train_iterator(
        dataset.sources["train"],
        transform,
        config.input.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.input.worker_count,
        sampler=config.input.sampler,
        labels=train_labels,
    )

    meta = {
        "crckd": {
            "n_data": n_data,
            "n_train": n_train,
            "noise_constant": cfg.nce_k / n_data,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "backbone_init": cfg.backbone_init or "random",
            "backbone_sha256": backbone_sha256,
            "eval_last_n_epochs": cfg.eval_last_n_epochs,
        }
    }
    return MethodParts(
        state=parallel.replicate(state, mesh),
        frozen=parallel.replicate(frozen, mesh),
        train_step=step.make_train_step(net=net, embed=embed, optimizer=optimizer, cfg=step_cfg, mesh=mesh),
        predict_step=step.make_predict_step(net, mesh),
        train_iterator=train_iterator,
        meta=meta,
        # The deployable model is the student network (docs/crckd.md §R9), without the embedding heads or banks.
        export_student=StudentSpec(net, _student_variables, "logits"),
    )


def _student_variables(state) -> dict:
    return {"params": state.params["net"], "batch_stats": state.batch_stats}
