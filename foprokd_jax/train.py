"""`train_and_evaluate(config, workdir)`: wires data, models, steps, checkpoints and logging together.

The loop knows neither the method nor the benchmark: `data.registry.load_dataset` gives the splits and
`methods.build_method` the state, compiled steps and training stream (`MethodParts`).

Resumption: rerunning the same command with the same workdir restores the latest checkpoint (state,
optimizer, step and data-iterator position) and continues; a finished run goes straight to the final
report. Model selection: after training, the best checkpoint by balanced accuracy on the selection split
is restored and evaluated on the report split (`config.eval.protocol`; docs/reference_semantics.md §9,
docs/crckd.md §R9).

Faults (docs/reliability.md): a SIGKILL anywhere loses at most the steps since the last checkpoint (rerun
to resume, bitwise identical on CPU); SIGTERM saves a checkpoint at the next step boundary and raises
`TrainingPreempted`; a non-finite loss or gradient stops training before anything non-finite is saved.
Everything that can be checked is checked before the workdir is touched.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from foprokd_jax import (
    checkpointing,
    evaluation,
    fault_injection,
    finite_guard,
    methods,
    metric_writer,
    metrics,
    parallel,
    plots,
    preemption,
    progress,
)
from foprokd_jax.data import device_prefetch, pipeline, registry

# eval.protocol -> (split monitored during training and used for checkpoint selection, split reported).
# 'test_last' is CRCKD's protocol (docs/crckd.md §R9): no validation set, the test fold is monitored every epoch and
# the LAST checkpoint is reported (no selection), next to the mean of the last evaluations.
PROTOCOLS = {"val_test": ("val", "test"), "test_val": ("test", "val"), "test_last": ("test", "test")}

# Files that mark a folder as a training run (a workdir without config.json but with these is refused).
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "tb")


class WorkdirConflictError(ValueError):
    """The workdir holds another run (different config, or no readable config.json)."""


class TrainingPreempted(Exception):
    """SIGTERM arrived; a checkpoint of `step` was saved and training stopped. Rerun the command to resume."""

    def __init__(self, step: int, workdir: str):
        super().__init__(
            f"preempted (SIGTERM): checkpoint of step {step} saved in {workdir}/checkpoints; "
            "rerun the same command to resume"
        )
        self.step = step


def _config_dict(config) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def check_workdir(config, workdir: str, overwrite: bool = False) -> str:
    """Read-only look at the workdir: 'new', 'resume' (a run with this very config) or 'replace'.

    A run made with a different config, or run files without a readable config.json, is a conflict:
    WorkdirConflictError unless `overwrite`, in which case `prepare_workdir` moves the old run aside.
    """
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return "new"
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            reason = f"has an unreadable {path} ({e})"
        else:
            current, before = _flatten(_config_dict(config)), _flatten(previous)
            diff = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if not diff:
                return "resume"
            reason = f"holds a run made with a different config (keys differ: {diff})"
    elif any(os.path.exists(os.path.join(workdir, name)) for name in RUN_FILES):
        reason = "holds run files (checkpoints, metrics) but no config.json to tell which config made them"
    else:
        return "new"  # an existing folder with unrelated files: the run's files go beside them
    if overwrite:
        return "replace"
    raise WorkdirConflictError(
        f"{workdir} {reason}. Resume with the same config, choose a new --workdir, or pass "
        "--overwrite to move the old run aside (it is renamed, not deleted)."
    )


def prepare_workdir(config, workdir: str, status: str) -> None:
    """Applies `check_workdir`'s verdict: moves a replaced run aside, then writes config.json atomically.

    Only process 0 touches the disk; the other processes wait for it (the workdir must be shared).
    """
    parallel.sync_processes("prepare_workdir:start")
    if jax.process_index() == 0:
        if status == "replace":
            aside = f"{os.path.normpath(workdir)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            while os.path.exists(aside):
                aside += "_"
            os.rename(workdir, aside)  # atomic; nothing of the old run is deleted
            logging.warning("--overwrite: moved the previous run in %s to %s", workdir, aside)
        os.makedirs(workdir, exist_ok=True)
        if status != "resume":
            path = os.path.join(workdir, "config.json")
            with open(path + ".tmp", "w") as f:
                json.dump(_config_dict(config), f, indent=2, sort_keys=True)
            os.replace(path + ".tmp", path)
    parallel.sync_processes("prepare_workdir:done")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate_config(config) -> None:
    """Catches values that would otherwise fail late or, worse, silently change the experiment: the loop's own
    keys here, the method's keys in its package's `validate` (foprokd_jax/methods/)."""
    method = methods.get_method(config.method)  # ValueError listing the methods
    if config.eval.protocol not in PROTOCOLS:
        raise ValueError(f"config.eval.protocol={config.eval.protocol!r} is not one of {tuple(PROTOCOLS)}")
    method.validate(config)
    # Checked again where it is used; here so that a bad value fails before any data is prepared.
    device_prefetch.check_size(config.input.prefetch_to_device)


def check_protocol(config, dataset) -> tuple:
    """(selection split, report split) of config.eval.protocol, both present in the dataset."""
    selection_split, report_split = PROTOCOLS[config.eval.protocol]
    for split in (selection_split, report_split):
        if split not in dataset.sources:
            raise ValueError(
                f"config.eval.protocol={config.eval.protocol!r} needs a {split!r} split, but {dataset.name} has "
                f"only {sorted(dataset.sources)}. Use eval.protocol='test_last' (the CRCKD protocol) or carve "
                "a validation set from the training fold (input.val_fraction > 0)."
            )
    return selection_split, report_split


def load_dataset_once(input_config):
    """`registry.load_dataset`, prepared by process 0 first when several processes share the prepared folder.

    The first load of a benchmark writes its tfds copy; several hosts doing that into one shared folder at
    once would race. Process 0 loads (and prepares) first, the others wait for it, then load the copy
    (or prepare their own when `input.prepared_dir` is host-local).
    """
    if jax.process_count() == 1:
        return registry.load_dataset(input_config)
    dataset = registry.load_dataset(input_config) if jax.process_index() == 0 else None
    parallel.sync_processes("dataset_prepared")
    return dataset if dataset is not None else registry.load_dataset(input_config)


def train_and_evaluate(config, workdir: str, overwrite: bool = False) -> dict:
    """Trains (or resumes) the run of `config` in `workdir` and writes its final report.

    `overwrite`: if the workdir holds a run made with a different config, move it aside instead of refusing.
    Raises ValueError subclasses for bad inputs (before anything is written), FloatingPointError when a
    training metric becomes non-finite, TrainingPreempted after a SIGTERM checkpoint.
    """
    validate_config(config)
    mesh = parallel.make_mesh(None if config.num_devices <= 0 else config.num_devices)
    parallel.check_global_batch(config.input.batch_size, mesh, "config.input.batch_size")
    parallel.check_global_batch(config.input.eval_batch_size, mesh, "config.input.eval_batch_size")
    workdir_status = check_workdir(config, workdir, overwrite)
    is_chief = jax.process_index() == 0
    logging.info("Mesh: %s", parallel.device_count_summary(mesh))

    dataset = load_dataset_once(config.input)
    selection_split, report_split = check_protocol(config, dataset)
    logging.info("%s train class counts: %s", dataset.name, dataset.train_counts.tolist())
    steps_per_epoch = pipeline.steps_per_epoch(len(dataset.sources["train"]), config.input.batch_size)
    total_steps = config.total_steps if config.total_steps > 0 else config.total_epochs * steps_per_epoch
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch

    parts = methods.build_method(config, mesh, dataset, steps_per_epoch)
    state, train_iter = parts.state, parts.train_iterator
    prepare_workdir(config, workdir, workdir_status)
    with checkpointing.Checkpointer(workdir) as ckpt:
        start = ckpt.latest_step()
        if start is not None:
            state = ckpt.restore(start, state, train_iter)
            logging.info("Resuming from step %d of %d (%s)", start, total_steps, ckpt.step_dir(start))
        ckpt.write_metadata({**parts.meta, "dataset": dataset.describe})
        start = int(jax.device_get(state.step))
        if start < total_steps:
            try:
                state = _train_loop(
                    config,
                    parts,
                    state,
                    train_iter,
                    ckpt,
                    dataset,
                    mesh,
                    workdir,
                    start,
                    total_steps,
                    steps_per_epoch,
                    eval_every,
                    selection_split,
                    is_chief,
                )
            except FloatingPointError as e:
                ckpt.wait()
                last = ckpt.latest_step()
                kept = (
                    f"the last good checkpoint, step {last} ({ckpt.step_dir(last)}), is kept unchanged and a "
                    "rerun resumes from it"
                    if last is not None
                    else "no checkpoint had been saved yet"
                )
                raise FloatingPointError(
                    f"{e}. Training stopped; {kept}. Lower the learning rate or check the inputs."
                ) from None
        ckpt.wait()
        # 'test_last' reports the final model (no selection on the test split); otherwise the best one.
        final_step = ckpt.latest_step() if config.eval.protocol == "test_last" else ckpt.best_step()
        state = ckpt.restore(final_step, state)
    return final_report(
        parts, state, dataset, config, mesh, final_step, selection_split, report_split, workdir, is_chief
    )


def _train_loop(
    config,
    parts,
    state,
    train_iter,
    ckpt,
    dataset,
    mesh,
    workdir,
    start,
    total_steps,
    steps_per_epoch,
    eval_every,
    selection_split,
    is_chief,
):
    """Steps start+1..total_steps with logging, evaluation + checkpoint every `eval_every`, NaN guard, SIGTERM.

    The finite check of a step's metrics (a handful of scalars, one transfer) runs after the next step is
    dispatched, so it overlaps with device work; before logging, evaluating or saving it runs at once, so a
    non-finite state is never written.
    """
    guard = finite_guard.FiniteGuard(last_good_step=start)
    meter = progress.ProgressMeter(total_steps, start_step=start)
    pending = None  # (step, device metrics) not checked yet
    # The prefetcher's position is the one checkpointed: that of the last batch it handed to the step.
    batches = device_prefetch.DevicePrefetcher(
        train_iter, lambda b: parallel.host_batch_to_global(b, mesh), size=config.input.prefetch_to_device
    )
    with (
        metric_writer.MetricWriter(workdir, enabled=is_chief) as writer,
        preemption.PreemptionWatch() as sigterm,
        batches,
    ):
        for step in range(start + 1, total_steps + 1):
            batch = next(batches)
            if fault_injection.armed("nan", step):  # NaN parameters, as a diverged update would leave them
                state = jax.tree.map(lambda x: x * np.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
            state, step_metrics = parts.train_step(state, parts.frozen, batch)
            fault_injection.maybe_inject("step", step)
            fault_injection.maybe_inject("sigterm", step)
            if pending is not None:
                guard.check(*pending)
            pending = (step, step_metrics)
            is_log = step % config.log_every_steps == 0 or step == total_steps
            is_eval = step % eval_every == 0 or step == total_steps
            stop = sigterm.requested(step)
            if not (is_log or is_eval or stop):
                continue
            host_metrics = guard.check(*pending)
            pending = None
            if is_log:
                _write_train_scalars(writer, meter, config, step, steps_per_epoch, host_metrics)
            if is_eval:
                predict_step = _finite_predictions(parts.predict_step, selection_split, step)
                report = evaluation.split_metrics(
                    predict_step, state, dataset.sources[selection_split], dataset, config, mesh
                )
                writer.write_scalars(step, metrics.report_scalars(report, prefix=f"{selection_split}/"))
                logging.info("step %d: %s balanced accuracy %.4f", step, selection_split, report["bacc"])
                if parts.on_eval is not None and is_chief:
                    parts.on_eval(writer, step, state, dataset)
                ckpt.save(step, state, batches, report["bacc"])
                fault_injection.maybe_inject("checkpoint", step)
            if stop:
                if not is_eval:
                    ckpt.save(step, state, batches, None)  # not a candidate for the best checkpoint
                ckpt.wait()
                logging.warning("SIGTERM: saved the checkpoint of step %d, stopping", step)
                raise TrainingPreempted(step, workdir)
    return state


def _finite_predictions(predict_step, split: str, step: int):
    """`predict_step` that raises FloatingPointError on non-finite logits (eval-mode outputs can overflow
    while the training metrics are still finite), so a model that diverged is never checkpointed."""

    def checked(*args):
        logits = predict_step(*args)
        if not bool(jnp.all(jnp.isfinite(logits))):
            raise FloatingPointError(
                f"non-finite logits in the {split} evaluation at step {step} (the training "
                "metrics of that step were finite)"
            )
        fault_injection.maybe_inject("eval", step)
        return logits

    return checked


def _write_train_scalars(writer, meter, config, step, steps_per_epoch, host_metrics) -> None:
    scalars = {f"train/{k}": float(np.asarray(v)) for k, v in host_metrics.items()}
    timing = meter.update(step)
    for key in ("steps_per_sec", "eta_seconds"):
        if timing.get(key) is not None:
            scalars[f"train/{key}"] = timing[key]
    if timing.get("steps_per_sec"):
        scalars["train/images_per_sec"] = timing["steps_per_sec"] * config.input.batch_size
    scalars["train/epoch"] = step / steps_per_epoch
    writer.write_scalars(step, scalars)
    logging.info("%s | loss %.4f", meter.format(step), scalars["train/loss"])


def final_report(
    parts, state, dataset, config, mesh, final_step, selection_split, report_split, workdir, is_chief
) -> dict:
    """Evaluates the chosen checkpoint on both splits and writes results.json plus figures.

    The report split also gets calibration (ECE, Brier, NLL; temperature scaling fitted on the selection split
    when that is another split) and stratified bootstrap intervals (`evaluation.uncertainty_report`).
    """
    evaluated = {
        split: evaluation.predict_split(
            parts.predict_step, state, dataset.sources[split], config.input.eval_batch_size, mesh
        )
        for split in dict.fromkeys((selection_split, report_split))
    }
    reports = {split: evaluation.report_from_logits(*evaluated[split], dataset, config) for split in evaluated}
    fit = evaluated[selection_split] if selection_split != report_split else (None, None)
    reports[report_split].update(
        evaluation.uncertainty_report(
            *evaluated[report_split],
            list(dataset.class_names),
            *fit,
            fit_split=selection_split if selection_split != report_split else None,
        )
    )
    teacher = parts.meta.get("teacher")
    results = {
        "method": config.method,
        "dataset": dataset.name,
        "fold": config.input.fold,
        "imb": config.input.imb if dataset.name == "isic2019_lt" else None,
        "teacher": config.teacher.name if teacher else None,
        "seed": config.seed,
        "protocol": {"select_on": selection_split, "report_on": report_split, "name": config.eval.protocol},
        "best_step": final_step,
        "class_names": list(dataset.class_names),
        "train_class_counts": dataset.train_counts.tolist(),
        "dataset_info": dataset.describe,
        "method_info": parts.meta,
        "report": reports[report_split],
        "selection": reports[selection_split],
    }
    last_n = last_evals_to_average(parts, config)
    if last_n and is_chief:
        # CRCKD's reported number (docs/crckd.md §R9): each metric averaged over the final evaluations of the
        # monitored split, beside the single chosen checkpoint.
        results["last_evals_mean"] = metrics.mean_of_last_evals(
            os.path.join(workdir, "metrics.jsonl"), selection_split, last_n
        )
    if is_chief:
        path = os.path.join(workdir, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)
        plots.plot_training_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"))
        plots.plot_confusion_matrix(
            np.asarray(reports[report_split]["confusion"]),
            dataset.class_names,
            os.path.join(workdir, "confusion_matrix.png"),
        )
        report = reports[report_split]
        plots.plot_per_class_recall(
            report["per_class_recall"],
            dataset.train_counts,
            os.path.join(workdir, "per_class_recall.png"),
            config.eval.head_min,
            config.eval.tail_max,
            recall_intervals=report["bootstrap"]["per_class_recall"],
        )
        scaling = report["calibration"].get("temperature_scaling")
        plots.plot_reliability_diagram(
            report["calibration"]["bins"]["width"],
            os.path.join(workdir, "reliability_diagram.png"),
            after=scaling["after"]["bins"]["width"] if scaling else None,
        )
        logging.info(
            "Step %d | %s balanced accuracy %.4f | results in %s",
            final_step,
            report_split,
            reports[report_split]["bacc"],
            path,
        )
    return results


def last_evals_to_average(parts, config) -> int:
    """How many final evaluations results.json averages: CRCKD's `eval_last_n_epochs`, also used for any
    method run under its 'test_last' protocol; 0 (none) otherwise."""
    n = parts.meta.get("crckd", {}).get("eval_last_n_epochs")
    if n is None and config.eval.protocol == "test_last" and "crckd" in config:
        n = config.crckd.eval_last_n_epochs
    return int(n or 0)
