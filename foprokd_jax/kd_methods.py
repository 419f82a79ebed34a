"""The FoPro-KD family behind the method interface: 'bsm' (long-tail baseline), 'ekd' (the released EKD)
and 'fopro' (EKD with the Fourier prompt generator and adversarial KD, a reconstruction: docs/fpg.md).

All three share the ResNet student of `models/ekd_student.py`, the torch-style Adam of `state.py` and the
reference "skin" input pipeline; they differ only in the compiled train step (`steps.py`, `fopro_step.py`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax import fpg_plots, losses, parallel, steps
from foprokd_jax import fopro_step
from foprokd_jax.data import pipeline
from foprokd_jax.methods import MethodParts
from foprokd_jax.models import build
from foprokd_jax.state import create_train_state, make_optimizer


def make_predict_step(student, mesh):
    """`predict_step(state, batch) -> logits (B, C)`: the student's raw `fc` logits, eval-mode BatchNorm.

    Raw logits, without the Balanced-Softmax prior (spec §13.7). The per-device logits are gathered so the
    output is replicated: every process can read the whole global batch (multi-host evaluation).
    """
    def per_device_predict(state, batch):
        x = steps.normalize_images(batch["image"])
        out = student.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
        return jax.lax.all_gather(out["z1"].astype(jnp.float32), parallel.DATA_AXIS, tiled=True)

    return parallel.data_parallel(per_device_predict, mesh, num_replicated=1, num_sharded=1)


def make_kd_train_iterator(config, dataset):
    """The reference training stream: shuffled, 'skin'-augmented (or not), optionally re-sampled."""
    return pipeline.make_train_iterator(
        dataset.sources["train"], config.input.batch_size, seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=config.input.worker_count,
        augment=config.input.augment == "skin", sampler=config.input.sampler,
        labels=np.asarray(dataset.train_labels))


def build_kd_method(config, mesh, dataset, steps_per_epoch: int) -> MethodParts:
    """Student (+ frozen teacher, + prompt for 'fopro'), replicated state and the compiled steps."""
    student, teacher, teacher_vars, teacher_meta = build.models_from_config(config, dataset.num_classes)
    optimizer = make_optimizer(config.optim)
    student_rng, prompt_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    init_vars = build.init_student(student, config, student_rng)
    cls_loss = losses.make_classification_loss(config.loss, dataset.train_counts, steps_per_epoch)
    on_eval = None
    if config.method == "fopro":
        prompt, explore_head = build.prompt_from_config(config, teacher_meta["feature_dim"], dataset.num_classes)
        fpg_optimizer = make_optimizer(config.fpg.optim)
        fpg_params = build.init_prompt(prompt, explore_head, teacher_meta["feature_dim"], config.input.image_size,
                                       prompt_rng)
        state = create_train_state(init_vars, optimizer, fpg_params, fpg_optimizer)
        train_step = fopro_step.make_fopro_train_step(
            student=student, teacher=teacher, prompt=prompt, explore_head=explore_head, cls_loss=cls_loss,
            optimizer=optimizer, fpg_optimizer=fpg_optimizer, free_u=config.loss.free_u,
            lambda_cls=config.fpg.lambda_cls, lambda_adv=config.fpg.lambda_adv, lambda_reg=config.fpg.lambda_reg,
            teacher_feature_key=config.teacher.feature_key, mesh=mesh,
            update_every=config.fpg.get("update_every", 1))
        selection_split = "val" if "val" in dataset.sources else "test"

        def on_eval(writer, step, state, dataset_):
            write_prompt_images(writer, step, prompt, state, dataset_.sources[selection_split])
    else:
        state = create_train_state(init_vars, optimizer)
        train_step = steps.make_train_step(student=student, teacher=teacher, cls_loss=cls_loss,
                                           optimizer=optimizer, method=config.method, free_u=config.loss.free_u,
                                           teacher_feature_key=config.teacher.feature_key, mesh=mesh)
    return MethodParts(
        state=parallel.replicate(state, mesh),
        frozen=parallel.replicate(teacher_vars, mesh) if teacher is not None else {},
        train_step=train_step, predict_step=make_predict_step(student, mesh),
        train_iterator=make_kd_train_iterator(config, dataset),
        meta={"teacher": teacher_meta}, on_eval=on_eval)


def write_prompt_images(writer, step, prompt, state, source, num_images: int = 6) -> None:
    """The learned gain spectrum and originals above prompted images (TensorBoard + workdir/images)."""
    images = np.stack([source[i]["image"] for i in range(min(num_images, len(source)))])
    visuals = fpg_plots.prompt_visuals(prompt, jax.device_get(state.fpg_params["prompt"]), images)
    writer.write_images(step, {"fpg/gain_spectrum": visuals["gain_png_array"],
                               "fpg/original_vs_prompted": visuals["side_by_side"]})
