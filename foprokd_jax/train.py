"""`train_and_evaluate(config, workdir)`: wires data, models, steps, checkpoints and logging together.

Resumption: rerunning the same command with the same workdir restores the latest checkpoint (state,
optimizer, step and data-iterator position) and continues; a finished run goes straight to the final
report. Model selection: after training, the best checkpoint by balanced accuracy on the selection split
is restored and evaluated on the report split (`config.eval.protocol`, spec §9).
"""
import json
import os

import jax
import numpy as np
from absl import logging

from foprokd_jax import checkpointing, fopro_step, fpg_plots, losses, logging_utils, metrics, parallel, plots, steps
from foprokd_jax.data import isic_splits, pipeline, tfds_isic
from foprokd_jax.models import build
from foprokd_jax.state import create_train_state, make_optimizer

PROTOCOLS = {"val_test": ("val", "test"), "test_val": ("test", "val")}


def write_config_json(config, workdir: str) -> None:
    """Writes workdir/config.json; refuses to resume a workdir that was started with another config."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != current:
            diff = sorted(k for k in set(_flatten(previous)) | set(_flatten(current))
                          if _flatten(previous).get(k) != _flatten(current).get(k))
            raise ValueError(f"{workdir} holds a run made with a different config (keys differ: {diff}). "
                             "Resume with the same config, or choose a new --workdir.")
        return
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_data(config):
    """Split tables, the prepared image store and the per-split sources."""
    inp = config.input
    tables = {split: isic_splits.read_split(inp.split_dir, split, inp.fold, inp.imb)
              for split in ("train", "val", "test")}
    store = tfds_isic.prepare_isic(inp.image_root, inp.prepared_dir, inp.image_size)
    sources = {split: tfds_isic.IsicSplitSource(table, store) for split, table in tables.items()}
    counts = isic_splits.class_counts(tables["train"].labels, len(isic_splits.CLASS_NAMES))
    return tables, sources, counts


def evaluate(eval_step, state, source, config, mesh) -> np.ndarray:
    """Confusion matrix of the student's `fc` logits over a whole split (each example exactly once)."""
    num_classes = len(isic_splits.CLASS_NAMES)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for batch in pipeline.make_eval_batches(source, config.input.eval_batch_size,
                                            jax.process_index(), jax.process_count()):
        confusion += np.asarray(jax.device_get(eval_step(state, parallel.host_batch_to_global(batch, mesh))))
    return confusion


def write_prompt_images(writer, step, prompt, state, source, num_images: int = 6) -> None:
    """The learned gain spectrum and originals above prompted images (TensorBoard + workdir/images)."""
    images = np.stack([source[i]["image"] for i in range(min(num_images, len(source)))])
    visuals = fpg_plots.prompt_visuals(prompt, jax.device_get(state.fpg_params["prompt"]), images)
    writer.write_images(step, {"fpg/gain_spectrum": visuals["gain_png_array"],
                               "fpg/original_vs_prompted": visuals["side_by_side"]})


def validate_config(config) -> None:
    """Catches values that would otherwise fail late or, worse, silently change the experiment."""
    choices = {"method": (config.method, ("fopro", "ekd", "bsm")),
               "input.augment": (config.input.augment, ("skin", "none")),
               "eval.protocol": (config.eval.protocol, tuple(PROTOCOLS)),
               "teacher.dtype": (config.teacher.dtype, ("float32", "bfloat16"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"config.{key}={value!r} is not one of {allowed}")


def build_training(config, mesh, train_counts):
    """Student, replicated initial state, compiled train step (+ prompt and teacher for fopro/ekd)."""
    student, teacher, teacher_vars, teacher_meta = build.models_from_config(config)
    optimizer = make_optimizer(config.optim)
    student_rng, prompt_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    init_vars = build.init_student(student, config, student_rng)
    cls_loss = losses.make_classification_loss(config.loss.name, train_counts)
    if config.method == "fopro":
        prompt, explore_head = build.prompt_from_config(config, teacher_meta["feature_dim"])
        fpg_optimizer = make_optimizer(config.fpg.optim)
        fpg_params = build.init_prompt(prompt, explore_head, teacher_meta["feature_dim"], config.input.image_size,
                                       prompt_rng)
        state = create_train_state(init_vars, optimizer, fpg_params, fpg_optimizer)
        train_step = fopro_step.make_fopro_train_step(
            student=student, teacher=teacher, prompt=prompt, explore_head=explore_head, cls_loss=cls_loss,
            optimizer=optimizer, fpg_optimizer=fpg_optimizer, free_u=config.loss.free_u,
            lambda_cls=config.fpg.lambda_cls, lambda_adv=config.fpg.lambda_adv, lambda_reg=config.fpg.lambda_reg,
            teacher_feature_key=config.teacher.feature_key, mesh=mesh)
    else:
        prompt = None
        state = create_train_state(init_vars, optimizer)
        train_step = steps.make_train_step(student=student, teacher=teacher, cls_loss=cls_loss,
                                           optimizer=optimizer, method=config.method, free_u=config.loss.free_u,
                                           teacher_feature_key=config.teacher.feature_key, mesh=mesh)
    state = parallel.replicate(state, mesh)
    teacher_vars = parallel.replicate(teacher_vars, mesh) if teacher is not None else {}
    return student, state, train_step, prompt, teacher_vars, teacher_meta


def train_and_evaluate(config, workdir: str) -> dict:
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    write_config_json(config, workdir)
    is_chief = jax.process_index() == 0
    mesh = parallel.make_mesh(None if config.num_devices <= 0 else config.num_devices)
    parallel.check_global_batch(config.input.batch_size, mesh)
    parallel.check_global_batch(config.input.eval_batch_size, mesh)
    logging.info("Mesh: %s", parallel.device_count_summary(mesh))

    tables, sources, train_counts = load_data(config)
    logging.info("Train class counts (%s): %s", tables["train"].path, train_counts.tolist())
    steps_per_epoch = pipeline.steps_per_epoch(len(sources["train"]), config.input.batch_size)
    total_steps = config.total_steps if config.total_steps > 0 else config.total_epochs * steps_per_epoch
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch

    student, state, train_step, prompt, teacher_vars, teacher_meta = build_training(config, mesh, train_counts)
    eval_step = steps.make_eval_step(student=student, num_classes=len(isic_splits.CLASS_NAMES), mesh=mesh)
    train_iter = pipeline.make_train_iterator(
        sources["train"], config.input.batch_size, seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=config.input.worker_count,
        augment=config.input.augment == "skin")

    selection_split, report_split = PROTOCOLS[config.eval.protocol]
    metadata = {"teacher": teacher_meta, "train_csv": tables["train"].path}
    with logging_utils.MetricWriter(workdir, enabled=is_chief) as writer, \
            checkpointing.Checkpointer(workdir, metadata=metadata) as ckpt:
        start = ckpt.latest_step()
        if start is not None:
            state = ckpt.restore(start, state, train_iter)
            logging.info("Resuming from step %d of %d", start, total_steps)
        start = int(jax.device_get(state.step))
        progress = logging_utils.ProgressMeter(total_steps, start_step=start)
        last_good = start
        for step in range(start + 1, total_steps + 1):
            batch = parallel.host_batch_to_global(next(train_iter), mesh)
            state, train_metrics = train_step(state, teacher_vars, batch)
            if step % config.log_every_steps == 0 or step == total_steps:
                scalars = {f"train/{k}": float(v) for k, v in parallel.to_host(train_metrics).items()}
                last_good = logging_utils.check_finite(step, scalars, names=("loss", "grad_norm", "param_norm"),
                                                       last_good_step=last_good)
                timing = progress.update(step)
                for key in ("steps_per_sec", "eta_seconds"):
                    if timing.get(key) is not None:
                        scalars[f"train/{key}"] = timing[key]
                if timing.get("steps_per_sec"):
                    scalars["train/images_per_sec"] = timing["steps_per_sec"] * config.input.batch_size
                scalars["train/epoch"] = step / steps_per_epoch
                writer.write_scalars(step, scalars)
                logging.info("%s | loss %.4f", progress.format(step), scalars["train/loss"])
            if step % eval_every == 0 or step == total_steps:
                confusion = evaluate(eval_step, state, sources[selection_split], config, mesh)
                report = metrics.classification_report(confusion, train_counts, isic_splits.CLASS_NAMES,
                                                       config.eval.head_min, config.eval.tail_max)
                writer.write_scalars(step, metrics.report_scalars(report, prefix=f"{selection_split}/"))
                logging.info("step %d: %s balanced accuracy %.4f", step, selection_split, report["bacc"])
                if config.method == "fopro" and is_chief:
                    write_prompt_images(writer, step, prompt, state, sources[selection_split])
                ckpt.save(step, state, train_iter, report["bacc"])
        ckpt.wait()
        best_step = ckpt.best_step()
        state = ckpt.restore(best_step, state)
    return final_report(eval_step, state, sources, train_counts, config, mesh, best_step,
                        selection_split, report_split, teacher_meta, workdir, is_chief)


def final_report(eval_step, state, sources, train_counts, config, mesh, best_step, selection_split,
                 report_split, teacher_meta, workdir, is_chief) -> dict:
    """Evaluates the best checkpoint on both splits and writes results.json plus figures."""
    reports = {}
    for split in (selection_split, report_split):
        confusion = evaluate(eval_step, state, sources[split], config, mesh)
        reports[split] = metrics.classification_report(confusion, train_counts, isic_splits.CLASS_NAMES,
                                                        config.eval.head_min, config.eval.tail_max)
        reports[split]["confusion"] = confusion.tolist()
    results = {
        "method": config.method, "fold": config.input.fold, "imb": config.input.imb,
        "protocol": {"select_on": selection_split, "report_on": report_split, "name": config.eval.protocol},
        "best_step": best_step, "train_class_counts": np.asarray(train_counts).tolist(),
        "teacher": teacher_meta, "report": reports[report_split], "selection": reports[selection_split],
    }
    if is_chief:
        path = os.path.join(workdir, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)
        plots.plot_training_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"))
        plots.plot_confusion_matrix(np.asarray(reports[report_split]["confusion"]), isic_splits.CLASS_NAMES,
                                    os.path.join(workdir, "confusion_matrix.png"))
        plots.plot_per_class_recall(reports[report_split]["per_class_recall"], train_counts,
                                    os.path.join(workdir, "per_class_recall.png"))
        logging.info("Best step %d | %s balanced accuracy %.4f | results in %s", best_step, report_split,
                     reports[report_split]["bacc"], path)
    return results
