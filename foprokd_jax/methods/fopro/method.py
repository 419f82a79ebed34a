"""`build(config, mesh, dataset, steps_per_epoch) -> MethodParts` for 'fopro'."""

import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax.methods import resnet_student
from foprokd_jax.methods.fopro import plots
from foprokd_jax.methods.fopro import step as fopro_step
from foprokd_jax.methods.fopro.prompt import FourierPrompt
from foprokd_jax.models.ekd_student import classifier_head
from foprokd_jax.state import make_optimizer


def prompt_from_config(config, teacher_dim: int, num_classes: int):
    """The Fourier prompt generator and the explore head (Linear D_t -> C on teacher features)."""
    fpg = config.fpg
    prompt = FourierPrompt(
        variant=fpg.variant,
        alpha=fpg.alpha,
        num_bands=fpg.num_bands,
        share_channels=fpg.share_channels,
        hidden=fpg.hidden,
        depth=fpg.depth,
    )
    # Same head kind as the student's: LDAM's scale-30 margins assume cosine logits (docs/long_tail.md).
    explore_head = classifier_head(
        resnet_student.student_classifier(config), num_classes, teacher_dim, name="explore_head"
    )
    return prompt, explore_head


def init_prompt(prompt, explore_head, teacher_dim: int, image_size: int, rng: jax.Array) -> dict:
    """Identity prompt (zero log-gain) and a torch-initialised explore head."""
    prompt_rng, head_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return {
        "prompt": jax.jit(prompt.init)(prompt_rng, dummy)["params"],
        "explore_head": explore_head.init(head_rng, jnp.zeros((1, teacher_dim)))["params"],
    }


def build(config, mesh, dataset, steps_per_epoch: int):
    """EKD's student and teacher, plus the prompt and explore head with their own optimiser, the FoPro-KD step,
    and the prompt's images in TensorBoard after each evaluation."""
    teacher, teacher_vars, teacher_meta = resnet_student.build_feature_teacher(config)
    teacher_dim = teacher_meta["feature_dim"]
    student = resnet_student.build_student(config, dataset.num_classes, teacher_dim)
    optimizer = make_optimizer(config.optim)
    student_rng, prompt_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    prompt, explore_head = prompt_from_config(config, teacher_dim, dataset.num_classes)
    fpg_optimizer = make_optimizer(config.fpg.optim)
    fpg_params = init_prompt(prompt, explore_head, teacher_dim, config.input.image_size, prompt_rng)
    state = resnet_student.init_student_state(config, student, optimizer, student_rng, fpg_params, fpg_optimizer)
    train_step = fopro_step.make_fopro_train_step(
        student=student,
        teacher=teacher,
        prompt=prompt,
        explore_head=explore_head,
        cls_loss=resnet_student.classification_loss(config, dataset, steps_per_epoch),
        optimizer=optimizer,
        fpg_optimizer=fpg_optimizer,
        free_u=config.loss.free_u,
        lambda_cls=config.fpg.lambda_cls,
        lambda_adv=config.fpg.lambda_adv,
        lambda_reg=config.fpg.lambda_reg,
        teacher_feature_key=config.teacher.feature_key,
        mesh=mesh,
        update_every=config.fpg.update_every,
    )
    selection_split = "val" if "val" in dataset.sources else "test"

    def on_eval(writer, step, state, dataset_):
        write_prompt_images(writer, step, prompt, state, dataset_.sources[selection_split])

    return resnet_student.method_parts(
        config, mesh, dataset, student, state, teacher_vars, train_step, meta={"teacher": teacher_meta}, on_eval=on_eval
    )


def write_prompt_images(writer, step, prompt, state, source, num_images: int = 6) -> None:
    """The learned gain spectrum and originals above prompted images (TensorBoard + workdir/images)."""
    images = np.stack([source[i]["image"] for i in range(min(num_images, len(source)))])
    visuals = plots.prompt_visuals(prompt, jax.device_get(state.fpg_params["prompt"]), images)
    writer.write_images(
        step, {"fpg/gain_spectrum": visuals["gain_png_array"], "fpg/original_vs_prompted": visuals["side_by_side"]}
    )
